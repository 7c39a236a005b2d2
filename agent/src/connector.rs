//! Dialling the relay: TCP (directly or through `HTTPS_PROXY`), TLS 1.3 with the device
//! certificate, the versioned preface exchange, and the reconnect backoff.

use std::{io, sync::Arc, time::Duration};

use bytes::BytesMut;
use rand::Rng;
use rustls_pki_types::ServerName;
use tether_net::dial::{Proxy, dial};
use tether_proto::preface::{Decoded, HEADER_LEN, Preface, PrefaceError, PrefaceReply};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    time::timeout,
};
use tokio_rustls::{TlsConnector, client::TlsStream};

use crate::config::BackoffConfig;

/// Time allowed for the TLS handshake plus the preface exchange. A relay answers in one round
/// trip; 10 s covers slow satellite and cellular links while not hanging on a black hole.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why one attempt to connect to the relay failed. Every variant's message is written for the
/// operator reading the agent's log, and says what to check.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// TCP connect (or the proxy's `CONNECT`) failed.
    #[error("cannot reach relay {addr}: {source}")]
    Dial {
        /// The relay address.
        addr: String,
        /// The I/O error (a proxy refusal names the proxy and its HTTP status).
        #[source]
        source: io::Error,
    },
    /// The TLS handshake failed or the relay rejected the device certificate.
    #[error("TLS with relay {addr} failed: {reason}")]
    Tls {
        /// The relay address.
        addr: String,
        /// What went wrong, with a hint.
        reason: String,
    },
    /// TLS and the preface did not complete in time.
    #[error("relay {addr} did not complete the handshake within {HANDSHAKE_TIMEOUT:?}")]
    HandshakeTimeout {
        /// The relay address.
        addr: String,
    },
    /// The relay's reply is not a Tether preface reply.
    #[error("bad preface reply from relay {addr}: {source}")]
    Preface {
        /// The relay address.
        addr: String,
        /// The decoding error.
        #[source]
        source: PrefaceError,
    },
    /// The relay refused the device.
    #[error("relay {addr} refused the device: {message}")]
    Refused {
        /// The relay address.
        addr: String,
        /// The relay's reason.
        message: String,
    },
}

impl ConnectError {
    /// A stable, low-cardinality label for logs and metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Dial { source, .. } if source.kind() == io::ErrorKind::PermissionDenied => "proxy_refused",
            Self::Dial { .. } => "dial",
            Self::Tls { .. } => "tls",
            Self::HandshakeTimeout { .. } => "timeout",
            Self::Preface { .. } => "preface",
            Self::Refused { .. } => "refused",
        }
    }
}

/// Describes a TLS-level I/O error for an operator. In TLS 1.3 the relay checks the client
/// certificate after the client considers the handshake done, so its rejection (an alert) often
/// surfaces on the first read of the preface reply; both paths come through here.
fn describe_tls(e: &io::Error) -> String {
    use rustls::{AlertDescription as A, Error as R};
    match e.get_ref().and_then(|inner| inner.downcast_ref::<R>()) {
        Some(R::InvalidCertificate(cert_err)) => format!(
            "relay certificate rejected ({cert_err:?}): check `ca` and `relay-name` (the relay's certificate must name it)"
        ),
        Some(R::AlertReceived(alert @ (A::BadCertificate | A::UnknownCA | A::CertificateRequired))) => {
            format!(
                "relay rejected the device certificate ({alert:?}): is it issued by the CA the relay trusts and unexpired?"
            )
        }
        Some(R::AlertReceived(A::CertificateExpired)) => {
            "relay says the device certificate has expired".into()
        }
        Some(R::AlertReceived(A::CertificateRevoked)) => {
            "relay says the device certificate is revoked".into()
        }
        Some(R::AlertReceived(A::NoApplicationProtocol)) => {
            "relay does not speak the tether/1 protocol (ALPN mismatch): is this a Tether relay?".into()
        }
        Some(other) => other.to_string(),
        None if e.kind() == io::ErrorKind::UnexpectedEof => {
            "relay closed the connection during the handshake (often: device certificate not accepted)".into()
        }
        None => e.to_string(),
    }
}

/// Full-jitter exponential backoff: the n-th consecutive failure waits a uniformly random time in
/// `[0, min(cap, base · 2ⁿ)]`. Full jitter spreads a fleet of devices that lost the same relay
/// evenly instead of in synchronized waves.
#[derive(Debug, Clone)]
pub struct Backoff {
    config: BackoffConfig,
    attempt: u32,
}

impl Backoff {
    /// A backoff with no failures yet.
    pub fn new(config: BackoffConfig) -> Self {
        Self { config, attempt: 0 }
    }

    /// Consecutive failures so far.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// The upper bound of the delay after `attempt` consecutive failures.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        // 2^31 · base overflows any sane Duration computation; the cap is reached long before.
        let factor = 1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX);
        self.config.base.saturating_mul(factor).min(self.config.cap)
    }

    /// The delay before the next attempt, counting one more failure.
    pub fn next_delay(&mut self) -> Duration {
        self.next_delay_with(&mut rand::thread_rng())
    }

    /// [`Backoff::next_delay`] with a caller-supplied random source (for tests).
    pub fn next_delay_with(&mut self, rng: &mut impl Rng) -> Duration {
        let ceiling = self.ceiling(self.attempt);
        self.attempt = self.attempt.saturating_add(1);
        jitter(ceiling, rng)
    }

    /// Forgets past failures (after a connection that proved stable).
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// A uniformly random duration in `[0, max]`.
pub fn jitter(max: Duration, rng: &mut impl Rng) -> Duration {
    let nanos = u64::try_from(max.as_nanos()).unwrap_or(u64::MAX);
    Duration::from_nanos(rng.gen_range(0..=nanos))
}

/// Everything needed to open a device connection; cheap to reuse for every attempt.
pub(crate) struct Connector {
    host: String,
    port: u16,
    addr: String,
    server_name: ServerName<'static>,
    tls: TlsConnector,
    proxy: Option<Proxy>,
}

/// An established device connection after an accepted preface.
pub(crate) struct Connected {
    pub(crate) stream: TlsStream<TcpStream>,
    pub(crate) relay_version: String,
}

impl Connector {
    pub(crate) fn new(
        host: String,
        port: u16,
        server_name: ServerName<'static>,
        tls: Arc<rustls::ClientConfig>,
        proxy: Option<Proxy>,
    ) -> Self {
        let addr = if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        Self {
            host,
            port,
            addr,
            server_name,
            tls: TlsConnector::from(tls),
            proxy,
        }
    }

    /// One attempt: TCP, TLS, preface. Not retried here; the caller owns the backoff.
    pub(crate) async fn connect(&self) -> Result<Connected, ConnectError> {
        let addr = || self.addr.clone();
        let tcp = dial(&self.host, self.port, self.proxy.as_ref())
            .await
            .map_err(|source| ConnectError::Dial { addr: addr(), source })?;
        tether_net::dial::tune_device_socket(&tcp);
        timeout(HANDSHAKE_TIMEOUT, self.handshake(tcp))
            .await
            .map_err(|_| ConnectError::HandshakeTimeout { addr: addr() })?
    }

    async fn handshake(&self, tcp: TcpStream) -> Result<Connected, ConnectError> {
        let tls_err = |e: io::Error| ConnectError::Tls {
            addr: self.addr.clone(),
            reason: describe_tls(&e),
        };
        let mut stream = self
            .tls
            .connect(self.server_name.clone(), tcp)
            .await
            .map_err(tls_err)?;

        let mut out = BytesMut::new();
        Preface {
            agent_version: crate::AGENT_VERSION.into(),
            features: vec![],
        }
        .encode(&mut out);
        stream.write_all(&out).await.map_err(tls_err)?;
        stream.flush().await.map_err(tls_err)?;

        // Read the reply byte-exactly (header, then the announced body) so that not one byte of
        // the HTTP/2 connection that follows is consumed here.
        let mut header = [0u8; HEADER_LEN];
        stream.read_exact(&mut header).await.map_err(tls_err)?;
        let preface_err = |source| ConnectError::Preface {
            addr: self.addr.clone(),
            source,
        };
        let total = PrefaceReply::frame_len(&header).map_err(preface_err)?;
        let mut buf = BytesMut::zeroed(total);
        buf[..HEADER_LEN].copy_from_slice(&header);
        stream.read_exact(&mut buf[HEADER_LEN..]).await.map_err(tls_err)?;
        let reply = match PrefaceReply::decode(&mut buf).map_err(preface_err)? {
            Decoded::Complete(reply) => reply,
            // The whole announced frame is in `buf`.
            Decoded::Incomplete => {
                return Err(preface_err(PrefaceError::BadBody(
                    "incomplete preface reply".into(),
                )));
            }
        };
        if !reply.accepted {
            let message = if reply.message.is_empty() {
                "no reason given".to_owned()
            } else {
                reply.message
            };
            return Err(ConnectError::Refused {
                addr: self.addr.clone(),
                message,
            });
        }
        Ok(Connected {
            stream,
            relay_version: reply.relay_version,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{SeedableRng, rngs::StdRng};

    #[test]
    fn backoff_stays_within_bounds_and_resets() {
        let config = BackoffConfig {
            base: Duration::from_millis(500),
            cap: Duration::from_secs(30),
        };
        let mut b = Backoff::new(config);
        let mut rng = StdRng::seed_from_u64(1);
        let expected = [500, 1000, 2000, 4000, 8000, 16000, 30000, 30000];
        for (attempt, ms) in expected.iter().enumerate() {
            assert_eq!(b.ceiling(attempt as u32), Duration::from_millis(*ms));
        }
        for _ in 0..1000 {
            let ceiling = b.ceiling(b.attempt());
            let d = b.next_delay_with(&mut rng);
            assert!(d <= ceiling && d <= config.cap, "{d:?} > {ceiling:?}");
        }
        assert_eq!(b.attempt(), 1000);
        assert_eq!(
            b.ceiling(u32::MAX),
            config.cap,
            "no overflow at huge attempt counts"
        );
        b.reset();
        assert_eq!(b.attempt(), 0);
        assert!(b.next_delay_with(&mut rng) <= config.base);
    }

    #[test]
    fn jitter_is_spread_over_the_range() {
        let mut rng = StdRng::seed_from_u64(2);
        let max = Duration::from_secs(1);
        let samples: Vec<_> = (0..1000).map(|_| jitter(max, &mut rng)).collect();
        assert!(samples.iter().all(|d| *d <= max));
        assert!(samples.iter().any(|d| *d < max / 10) && samples.iter().any(|d| *d > max * 9 / 10));
        assert_eq!(jitter(Duration::ZERO, &mut rng), Duration::ZERO);
    }

    #[test]
    fn tls_errors_are_explained() {
        let alert = io::Error::new(
            io::ErrorKind::InvalidData,
            rustls::Error::AlertReceived(rustls::AlertDescription::UnknownCA),
        );
        assert!(describe_tls(&alert).contains("rejected the device certificate"));
        let cert = io::Error::new(
            io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForName),
        );
        assert!(describe_tls(&cert).contains("relay-name"));
        let refused = ConnectError::Dial {
            addr: "r:443".into(),
            source: io::Error::new(
                io::ErrorKind::PermissionDenied,
                "proxy p:3128 refused CONNECT r:443: HTTP 407",
            ),
        };
        assert_eq!(refused.metric_label(), "proxy_refused");
        assert!(refused.to_string().contains("HTTP 407"));
    }
}
