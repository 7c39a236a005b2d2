//! Every reason the relay gives for refusing, failing or ending a connection: the one list of
//! metric label values and `Tether-Error` answers (docs/protocol.md and docs/operations.md list
//! them from here; a test below keeps them in step).

use tether_proto::{head::HeadError, token::TokenError};

/// Declares a label enum with `as_str()` and `ALL`, so a label is written exactly once.
macro_rules! labels {
    (
        $(#[$meta:meta])*
        pub enum $name:ident {
            $( $(#[$vmeta:meta])* $variant:ident = $label:literal, )+
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $( $(#[$vmeta])* $variant, )+
        }

        impl $name {
            /// Every value, in declaration order (pre-registering metrics, docs checks).
            pub const ALL: &[Self] = &[$(Self::$variant),+];

            /// The label value (metric label, and `Tether-Error` for a stream refusal).
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $label,)+
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

labels! {
    /// Why a connection was refused or failed before it became a device session or a stream
    /// (`tether_relay_handshake_failures_total{reason}`), or why a stream setup was refused
    /// (`tether_relay_stream_setups_total{result}` and the `Tether-Error` header the client
    /// reads; those have an [`http_status`](Reason::http_status)).
    pub enum Reason {
        // Admission (before any byte is read).
        /// The relay-wide connection cap is reached.
        TooManyConnections = "too_many_connections",
        /// The source address holds its share of pending handshakes.
        TooManyPendingFromSource = "too_many_pending_from_source",
        /// The relay-wide pending-handshake cap is reached.
        TooManyPendingHandshakes = "too_many_pending_handshakes",
        // The peer port (connections forwarded by fleet members).
        /// A connection on the peer port from an address that is not a ring member.
        PeerNotMember = "peer_not_member",
        /// The PROXY v2 header could not be read.
        ProxyHeaderIo = "proxy_header_io",
        /// The PROXY v2 header is invalid.
        BadProxyHeader = "bad_proxy_header",
        /// The PROXY v2 header did not arrive within the handshake timeout.
        ProxyHeaderTimeout = "proxy_header_timeout",
        // TLS and the handshake phase.
        /// The handshake phase (TLS, preface or request head) exceeded its deadline.
        HandshakeTimeout = "handshake_timeout",
        /// A device connected to a draining relay.
        RelayDraining = "relay_draining",
        /// The device's owning relay could not be reached to forward a service connection.
        OwnerUnreachable = "owner_unreachable",
        /// The TLS handshake failed.
        Tls = "tls",
        /// The first bytes are not a usable TLS ClientHello.
        BadClientHello = "bad_client_hello",
        /// The peer closed before its ClientHello or request head was complete.
        ClosedEarly = "closed_early",
        /// A read or write failed.
        Io = "io",
        /// The relay's own state was inconsistent (a bug).
        Internal = "internal",
        // Device admission.
        /// The device's preface is malformed or of an unsupported version.
        BadPreface = "bad_preface",
        /// The device presented no client certificate.
        NoClientCertificate = "no_client_certificate",
        /// The certificate's identity is not the device named by SNI.
        IdentityMismatch = "identity_mismatch",
        /// The certificate carries no, or more than one, device identity.
        BadIdentity = "bad_identity",
        /// The device is revoked.
        DeviceRevoked = "device_revoked",
        /// The HTTP/2 handshake with the agent failed.
        Http2 = "http2",
        // Both sides: a device's SNI is refused as a handshake failure, a service's as a 400.
        /// The TLS server name is not `<device>.<namespace>.<relay domain>`.
        BadSni = "bad_sni",
        // Stream setup refusals (answered to the service).
        /// The request head is malformed, or the CONNECT target is not `<device>.<ns>:<port>`.
        BadRequest = "bad_request",
        /// The SNI and the CONNECT target name different devices.
        SniMismatch = "sni_mismatch",
        /// No `Authorization: Bearer` header.
        MissingToken = "missing_token",
        /// The request is not CONNECT.
        MethodNotAllowed = "method_not_allowed",
        /// The request head is longer than its limit.
        HeadTooLarge = "head_too_large",
        /// The token is longer than its limit.
        TokenTooLarge = "token_too_large",
        /// The token is not a JWS of three base64url parts.
        TokenMalformed = "token_malformed",
        /// The token's algorithm is not EdDSA.
        TokenAlgorithm = "token_algorithm",
        /// The token's signature does not verify.
        TokenSignature = "token_signature",
        /// The token has expired.
        TokenExpired = "token_expired",
        /// The token is not valid yet.
        TokenNotYetValid = "token_not_yet_valid",
        /// The token's audience is not this relay's domain.
        TokenAudience = "token_audience",
        /// The token's claims are invalid.
        TokenClaims = "token_claims",
        /// The token is for another device.
        TokenWrongDevice = "token_wrong_device",
        /// The token is for another port.
        TokenWrongPort = "token_wrong_port",
        /// The stream has been revoked.
        StreamRevoked = "stream_revoked",
        /// The stream has its maximum of concurrent connections.
        StreamConnectionLimit = "stream_connection_limit",
        /// The device has its maximum of concurrent streams.
        DeviceStreamLimit = "device_stream_limit",
        /// The device did not connect in time.
        DeviceNotConnected = "device_not_connected",
        /// In a fleet: another relay owns the device now; the client retries.
        DeviceMoving = "device_moving",
        /// The device's session failed while the stream was opened.
        DeviceSessionLost = "device_session_lost",
        /// The agent did not answer the stream request in time.
        DeviceTimeout = "device_timeout",
        /// The agent does not allow the port.
        DevicePortNotAllowed = "device_port_not_allowed",
        /// The agent could not reach its local target.
        DeviceTargetUnreachable = "device_target_unreachable",
        /// The agent refused for another reason.
        DeviceRefused = "device_refused",
    }
}

impl Reason {
    /// The HTTP status a service receives with this reason, or `None` for a reason that only
    /// ends a connection (no HTTP answer: before TLS, or on the device side).
    pub fn http_status(self) -> Option<u16> {
        use Reason::*;
        Some(match self {
            BadRequest | BadSni | SniMismatch => 400,
            MissingToken | TokenTooLarge => 401,
            TokenMalformed | TokenAlgorithm | TokenSignature | TokenExpired | TokenNotYetValid
            | TokenAudience | TokenClaims | TokenWrongDevice | TokenWrongPort | StreamRevoked
            | DevicePortNotAllowed => 403,
            MethodNotAllowed => 405,
            StreamConnectionLimit | DeviceStreamLimit => 429,
            HeadTooLarge => 431,
            DeviceSessionLost | DeviceTargetUnreachable | DeviceRefused => 502,
            DeviceNotConnected | DeviceMoving => 503,
            DeviceTimeout => 504,
            TooManyConnections
            | TooManyPendingFromSource
            | TooManyPendingHandshakes
            | PeerNotMember
            | ProxyHeaderIo
            | BadProxyHeader
            | ProxyHeaderTimeout
            | HandshakeTimeout
            | RelayDraining
            | OwnerUnreachable
            | Tls
            | BadClientHello
            | ClosedEarly
            | Io
            | Internal
            | BadPreface
            | NoClientCertificate
            | IdentityMismatch
            | BadIdentity
            | DeviceRevoked
            | Http2 => return None,
        })
    }
}

impl From<&HeadError> for Reason {
    fn from(e: &HeadError) -> Self {
        match e {
            HeadError::TooLarge => Self::HeadTooLarge,
            HeadError::MissingToken => Self::MissingToken,
            HeadError::MethodNotAllowed(_) => Self::MethodNotAllowed,
            HeadError::Malformed(_) | HeadError::BadTarget(_) => Self::BadRequest,
        }
    }
}

impl From<&TokenError> for Reason {
    fn from(e: &TokenError) -> Self {
        match e {
            TokenError::TooLarge => Self::TokenTooLarge,
            TokenError::Malformed(_) => Self::TokenMalformed,
            TokenError::UnsupportedAlgorithm => Self::TokenAlgorithm,
            TokenError::BadSignature => Self::TokenSignature,
            TokenError::Expired { .. } => Self::TokenExpired,
            TokenError::NotYetValid { .. } => Self::TokenNotYetValid,
            TokenError::WrongAudience { .. } => Self::TokenAudience,
            TokenError::InvalidClaims(_) => Self::TokenClaims,
        }
    }
}

labels! {
    /// Why the relay ended an established stream (`tether_relay_streams_closed_by_relay_total`).
    pub enum Cut {
        /// The stream was revoked.
        Revoked = "revoked",
        /// No byte moved for the token's idle timeout.
        IdleTimeout = "idle_timeout",
        /// The relay's drain deadline passed.
        RelayShutdown = "relay_shutdown",
    }
}

labels! {
    /// Why a connection could not be forwarded to its owner
    /// (`tether_relay_forward_failures_total`).
    pub enum ForwardFailure {
        /// Dialling the owner's peer port failed.
        Dial = "dial",
        /// Dialling the owner's peer port timed out.
        DialTimeout = "dial_timeout",
        /// The owner closed the connection before the forwarded bytes were written.
        Write = "write",
        /// The owner is in the ring but published no peer port.
        NoPeerPort = "no_peer_port",
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    fn doc(name: &str) -> String {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/");
        std::fs::read_to_string(format!("{path}{name}")).expect("read docs")
    }

    /// Backticked words of `text`.
    fn quoted(text: &str) -> BTreeSet<&str> {
        text.split('`').skip(1).step_by(2).collect()
    }

    #[test]
    fn labels_are_unique_snake_case() {
        let all: Vec<&str> = Reason::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(
            all.iter().collect::<BTreeSet<_>>().len(),
            all.len(),
            "duplicate label"
        );
        for label in all
            .iter()
            .chain(Cut::ALL.iter().map(|c| c.as_str()).collect::<Vec<_>>().iter())
        {
            assert!(
                label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
                "{label}"
            );
        }
    }

    /// The protocol's refusal table lists exactly the reasons with a status, each under it.
    #[test]
    fn protocol_doc_lists_every_refusal_under_its_status() {
        let text = doc("protocol.md");
        // §3 only: §2 has the agent's own refusal table.
        let section = text
            .split("\n## ")
            .find(|s| s.starts_with("3."))
            .expect("protocol.md §3");
        let mut documented = BTreeSet::new();
        for line in section.lines() {
            let mut cells = line.split('|').map(str::trim).skip(1);
            let (Some(status), Some(reasons)) = (cells.next(), cells.next()) else {
                continue;
            };
            let Ok(status) = status.parse::<u16>() else {
                continue;
            };
            if !line.contains("`") || !(400..600).contains(&status) {
                continue;
            }
            for r in quoted(reasons) {
                documented.insert((r.to_owned(), status));
            }
        }
        let expected: BTreeSet<(String, u16)> = Reason::ALL
            .iter()
            .filter_map(|r| Some((r.as_str().to_owned(), r.http_status()?)))
            .collect();
        assert_eq!(documented, expected, "docs/protocol.md §3 refusal table");
    }

    /// The operations guide names every label of every relay metric's reason.
    #[test]
    fn operations_doc_names_every_reason() {
        let text = doc("operations.md");
        let words = quoted(&text);
        let labels = Reason::ALL
            .iter()
            .map(|r| r.as_str())
            .chain(Cut::ALL.iter().map(|c| c.as_str()))
            .chain(ForwardFailure::ALL.iter().map(|f| f.as_str()));
        let missing: Vec<&str> = labels.filter(|l| !words.contains(l)).collect();
        assert!(missing.is_empty(), "docs/operations.md does not name {missing:?}");
    }

    /// The statuses agree with the ones the proto crate gives its parse errors.
    #[test]
    fn head_errors_keep_their_status() {
        for e in [
            HeadError::TooLarge,
            HeadError::MissingToken,
            HeadError::MethodNotAllowed("GET".into()),
            HeadError::Malformed(String::new()),
            HeadError::BadTarget(String::new()),
        ] {
            assert_eq!(Reason::from(&e).http_status(), Some(e.status()), "{e}");
        }
    }

    #[test]
    fn an_oversized_token_is_401_and_other_token_errors_403() {
        assert_eq!(Reason::from(&TokenError::TooLarge).http_status(), Some(401));
        assert_eq!(Reason::from(&TokenError::BadSignature).http_status(), Some(403));
        assert_eq!(
            Reason::from(&TokenError::Expired {
                expires_at: 1,
                now: 2
            })
            .as_str(),
            "token_expired"
        );
    }
}
