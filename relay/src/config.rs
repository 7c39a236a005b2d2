//! The relay's runtime configuration, built from CLI flags or directly by tests and `tether demo`.

use std::{net::SocketAddr, path::Path, sync::Arc, time::Duration};

use tether_net::tls;
use tether_proto::token::TokenVerifier;

/// Everything a relay needs to run.
#[derive(Clone, Debug)]
pub struct RelayConfig {
    /// Data port (devices and services), TLS.
    pub listen: SocketAddr,
    /// Admin port (`/metrics`, `/ready`, `/live`), plain HTTP.
    pub admin_listen: SocketAddr,
    /// DNS suffix of SNI names: clients send `<device>.<namespace>.<relay_domain>`; also the
    /// audience every stream token must carry.
    pub relay_domain: String,
    /// SPIFFE trust domain of device identities.
    pub trust_domain: String,
    /// TLS server configuration of service connections (serving certificate, client CA, ALPN,
    /// session tickets).
    pub tls: Arc<rustls::ServerConfig>,
    /// TLS server configuration of device connections: as `tls`, without session resumption
    /// (see [`tls::relay_device_server_config`]).
    pub device_tls: Arc<rustls::ServerConfig>,
    /// Verifies stream tokens (public key only).
    pub token_verifier: TokenVerifier,
    /// Bounds and timeouts.
    pub limits: Limits,
    /// Fleet membership (Kubernetes mode); `None` standalone: a ring of one.
    pub fleet: Option<FleetConfig>,
    /// Standalone revocation file, watched while the relay runs (see [`crate::revocation`]).
    pub revocation_file: Option<std::path::PathBuf>,
}

/// This relay's identity in a fleet.
#[derive(Clone, Debug)]
pub struct FleetConfig {
    /// Ring member name: the pod name.
    pub member_name: String,
    /// The peer port, where other members forward connections (PROXY v2 only, members only).
    pub peer_listen: SocketAddr,
    /// Source address for connections to peers (the pod IP), so they recognise a member.
    pub source_ip: Option<std::net::IpAddr>,
}

/// Bounds and timeouts. Every value has a default suitable for production.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Deadline for the whole handshake: ClientHello, TLS, and the preface or request head.
    pub handshake_timeout: Duration,
    /// Connections allowed in their handshake at once; beyond it new connections are dropped
    /// immediately, so a flood of silent clients costs a socket each, not a task each.
    pub max_pending_handshakes: usize,
    /// Connections one source (IPv4 address or IPv6 /64) may have in their handshake at once, so
    /// one host cannot hold every slot of `max_pending_handshakes`; besides, the last quarter of
    /// those slots only goes to sources with fewer than [`crate::listener::RESERVE_FAIR_SHARE`]
    /// pending. 256 lets one client open a burst of tunnelled connections (a port forward, a
    /// parallel scp); a NAT'd site whose devices all reconnect at once is spread out by the
    /// agents' jittered backoff.
    pub max_pending_handshakes_per_source: usize,
    /// Connections allowed at once in total (file descriptors are finite).
    pub max_connections: usize,
    /// How long a service waits for its device to connect (`deviceConnectTimeout`).
    pub device_connect_timeout: Duration,
    /// How long the agent has to answer a stream request (it dials its local target meanwhile).
    pub stream_setup_timeout: Duration,
    /// Concurrent streams per device.
    pub max_streams_per_device: u32,
    /// Concurrent connections per stream when the token does not say.
    pub default_max_connections_per_stream: u32,
    /// PING interval on device connections.
    pub keepalive_interval: Duration,
    /// Time a PING may go unanswered before the device is declared dead.
    pub keepalive_timeout: Duration,
    /// Clock skew tolerated when checking token times.
    pub clock_skew: Duration,
    /// After SIGTERM: keep accepting (while `/ready` says 503) so load balancers notice first.
    pub drain_grace: Duration,
    /// After the grace period: how long to let streams finish before closing them.
    pub drain_deadline: Duration,
}

impl Limits {
    /// The keepalive (and adaptive-window sampling) of one of the relay's HTTP/2 connections,
    /// device or multiplexed service, at this relay's interval and timeout.
    pub(crate) fn keepalive(
        &self,
        ping_pong: h2::PingPong,
        window: tether_net::window::Estimator,
    ) -> impl std::future::Future<Output = tether_net::h2io::PeerDead> + use<> {
        tether_net::h2io::keepalive(
            ping_pong,
            self.keepalive_interval,
            self.keepalive_timeout,
            Some(window),
        )
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            handshake_timeout: Duration::from_secs(10),
            max_pending_handshakes: 1024,
            max_pending_handshakes_per_source: 256,
            max_connections: 100_000,
            device_connect_timeout: Duration::from_secs(10),
            stream_setup_timeout: Duration::from_secs(10),
            max_streams_per_device: tether_net::h2io::DEFAULT_MAX_STREAMS,
            default_max_connections_per_stream: 16,
            keepalive_interval: tether_net::h2io::DEFAULT_KEEPALIVE_INTERVAL,
            keepalive_timeout: tether_net::h2io::DEFAULT_KEEPALIVE_TIMEOUT,
            clock_skew: Duration::from_secs(30),
            drain_grace: Duration::from_secs(5),
            drain_deadline: Duration::from_secs(30),
        }
    }
}

/// Why the configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A certificate, key or CA bundle is missing, empty, unreadable or invalid.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// The token public key is missing, empty, unreadable or invalid.
    #[error("token public key {path}: {detail}")]
    TokenKey {
        /// The file.
        path: String,
        /// What is wrong with it.
        detail: String,
    },
    /// Kubernetes mode is misconfigured (or this build lacks it).
    #[error("{0}")]
    Kubernetes(String),
    /// The revocation file is unreadable or invalid at start.
    #[error(transparent)]
    Revocation(#[from] crate::revocation::RevocationError),
    /// A domain is not a DNS name.
    #[error("{what} {value:?} is not a valid DNS name")]
    BadDomain {
        /// Which setting.
        what: &'static str,
        /// Its value.
        value: String,
    },
}

/// Paths of the files a relay loads at start.
#[derive(Clone, Debug)]
pub struct TlsFiles<'a> {
    /// Serving certificate chain, PEM.
    pub cert: &'a Path,
    /// Serving key, PEM.
    pub key: &'a Path,
    /// CA bundle that issues device certificates, PEM.
    pub client_ca: &'a Path,
    /// Ed25519 public key verifying stream tokens, SPKI PEM.
    pub token_public_key: &'a Path,
}

impl RelayConfig {
    /// Loads the TLS material and token key, failing with a message naming the file.
    ///
    /// # Errors
    /// A missing, empty, unreadable or invalid file, or a bad domain.
    pub fn load(
        listen: SocketAddr,
        admin_listen: SocketAddr,
        relay_domain: &str,
        trust_domain: &str,
        files: TlsFiles<'_>,
        limits: Limits,
    ) -> Result<Self, ConfigError> {
        for (what, value) in [("relay domain", relay_domain), ("trust domain", trust_domain)] {
            let valid = tether_proto::name::validate_dns_name(what, value).is_ok();
            if !valid {
                return Err(ConfigError::BadDomain {
                    what,
                    value: value.to_owned(),
                });
            }
        }
        let chain = tls::load_certs("serving certificate", files.cert)?;
        let key = tls::load_key("serving key", files.key)?;
        let client_cas = tls::load_certs("client CA bundle", files.client_ca)?;
        let token_pem =
            std::fs::read_to_string(files.token_public_key).map_err(|e| ConfigError::TokenKey {
                path: files.token_public_key.display().to_string(),
                detail: e.to_string(),
            })?;
        if token_pem.trim().is_empty() {
            return Err(ConfigError::TokenKey {
                path: files.token_public_key.display().to_string(),
                detail: "file is empty".into(),
            });
        }
        let token_verifier =
            TokenVerifier::from_public_key_pem(&token_pem).map_err(|e| ConfigError::TokenKey {
                path: files.token_public_key.display().to_string(),
                detail: e.to_string(),
            })?;
        let service_tls = tls::relay_server_config(chain, key, &client_cas)?;
        Ok(Self {
            listen,
            admin_listen,
            relay_domain: relay_domain.to_ascii_lowercase(),
            trust_domain: trust_domain.to_owned(),
            device_tls: Arc::new(tls::relay_device_server_config(&service_tls)),
            tls: Arc::new(service_tls),
            token_verifier,
            limits,
            fleet: None,
            revocation_file: None,
        })
    }
}
