//! The service side of a tunnel: open a stream through the relay, for `--stdio` (ssh
//! `ProxyCommand`: one HTTP/1.1 `CONNECT`, one TLS connection) or `--listen` (a local port
//! forward: one stream per accepted connection, all on one multiplexed HTTP/2 connection,
//! [`crate::mux`]).

use std::{net::SocketAddr, sync::Arc};

use bytes::{Bytes, BytesMut};
use rustls_pki_types::ServerName;
use tether_net::{
    dial::{Proxy, dial},
    h2io,
};
use tether_proto::{
    head::{self, Parsed},
    name::DeviceKey,
};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};
use tokio_rustls::{TlsConnector, client::TlsStream};
use tracing::Instrument;

use crate::mux::Mux;

/// Why a stream could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The relay could not be reached.
    #[error("cannot reach relay {relay}: {source}")]
    Dial {
        /// Relay address.
        relay: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// TLS with the relay failed (wrong CA or relay name?).
    #[error("TLS with relay {relay} failed (check --ca and --relay-name): {source}")]
    Tls {
        /// Relay address.
        relay: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The relay refused the stream.
    #[error("relay refused the stream: HTTP {status} {reason}: {message}")]
    Refused {
        /// HTTP status.
        status: u16,
        /// `Tether-Error` reason.
        reason: String,
        /// The relay's explanation.
        message: String,
    },
    /// The relay's answer was not HTTP.
    #[error("relay sent a malformed answer: {0}")]
    Protocol(String),
    /// The multiplexed connection failed, or was closed (GOAWAY), before the relay answered.
    #[error("relay connection lost before the relay answered: {0}")]
    Connection(String),
    /// I/O after setup.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
}

/// Where and how to open streams.
#[derive(Clone)]
pub struct Target {
    /// Relay host (name or IP) to dial.
    pub relay_host: String,
    /// Relay port.
    pub relay_port: u16,
    /// Relay domain: the SNI suffix.
    pub relay_domain: String,
    /// TLS configuration (trust bundle, relay name verification).
    pub tls: Arc<rustls::ClientConfig>,
    /// The device.
    pub device: DeviceKey,
    /// Its port.
    pub port: u16,
    /// The stream token. Secret: never logged.
    pub token: Arc<str>,
    /// HTTP proxy to go through, if any.
    pub proxy: Option<Proxy>,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target")
            .field("relay", &format_args!("{}:{}", self.relay_host, self.relay_port))
            .field("device", &self.device.to_string())
            .field("port", &self.port)
            .field("token", &"MASKED")
            .finish()
    }
}

/// An open stream: the TLS connection, and device bytes that arrived with the relay's answer.
pub struct Stream {
    /// The connection, carrying tunnel bytes.
    pub tls: TlsStream<TcpStream>,
    /// Bytes of the tunnel already read.
    pub early: Bytes,
}

/// How long [`open`] keeps retrying a setup that failed for a reason a relay fleet produces while
/// it changes (a relay draining or gone, a device moving between relays).
pub const RETRY_BUDGET: std::time::Duration = std::time::Duration::from_secs(10);
/// Most attempts within [`RETRY_BUDGET`].
pub const MAX_ATTEMPTS: u32 = 6;

impl ConnectError {
    /// Whether a new attempt may succeed: the relay was unreachable or closed before answering
    /// (a relay stopping, or forwarding to an owner that just left), or it said the device is
    /// moving to another relay (`503 device_moving`). Refusals about the token, the port or an
    /// offline device are final.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Dial { .. } | Self::Tls { .. } | Self::Connection(_) => true,
            Self::Protocol(m) => m.contains("before answering"),
            Self::Refused { status, reason, .. } => *status == 503 && reason == "device_moving",
            Self::Io(_) => false,
        }
    }
}

/// Opens one stream, retrying transient failures ([`ConnectError::is_transient`]) with backoff
/// for up to [`MAX_ATTEMPTS`] attempts within [`RETRY_BUDGET`], so a rolling restart or a ring
/// change is invisible to the user.
///
/// # Errors
/// The last attempt's error. See [`ConnectError`].
pub async fn open(target: &Target) -> Result<Stream, ConnectError> {
    // The root of the stream setup's trace, all attempts included; the relay and the agent join
    // it via `traceparent`.
    let span = tracing::info_span!("connect", device = %target.device, port = target.port);
    retrying(|| open_once(target)).instrument(span).await
}

/// Runs `attempt` until it succeeds, fails for good, or [`MAX_ATTEMPTS`] / [`RETRY_BUDGET`] run
/// out, waiting 50 ms, 100 ms, … (at most 2 s) between attempts.
pub(crate) async fn retrying<T, F, Fut>(mut once: F) -> Result<T, ConnectError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, ConnectError>>,
{
    let started = tokio::time::Instant::now();
    let mut delay = std::time::Duration::from_millis(50);
    let mut attempt = 1;
    loop {
        match once().await {
            Ok(s) => return Ok(s),
            Err(e)
                if e.is_transient() && attempt < MAX_ATTEMPTS && started.elapsed() + delay < RETRY_BUDGET =>
            {
                tracing::info!(error = %e, attempt, retry_in = ?delay, "stream setup failed; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(std::time::Duration::from_secs(2));
                attempt += 1;
            }
            Err(e) => return Err(e),
        }
    }
}

/// TCP to the target's relay (through the proxy, if any), then TLS with `tls` and the device's
/// SNI. Returns the stream and `host:port` of the relay for error messages. Shared by the
/// one-stream (HTTP/1.1) and the multiplexed (HTTP/2) connection.
pub(crate) async fn dial_tls(
    target: &Target,
    tls: Arc<rustls::ClientConfig>,
) -> Result<(TlsStream<TcpStream>, String), ConnectError> {
    let relay = format!("{}:{}", target.relay_host, target.relay_port);
    let tcp = dial(&target.relay_host, target.relay_port, target.proxy.as_ref())
        .instrument(tracing::info_span!("dial"))
        .await
        .map_err(|source| ConnectError::Dial {
            relay: relay.clone(),
            source,
        })?;
    let sni = ServerName::try_from(target.device.server_name(&target.relay_domain))
        .map_err(|e| ConnectError::Protocol(format!("bad server name: {e}")))?;
    let tls = TlsConnector::from(tls)
        .connect(sni, tcp)
        .instrument(tracing::info_span!("tls"))
        .await
        .map_err(|source| ConnectError::Tls {
            relay: relay.clone(),
            source,
        })?;
    Ok((tls, relay))
}

/// Opens one stream, once.
///
/// # Errors
/// See [`ConnectError`].
pub async fn open_once(target: &Target) -> Result<Stream, ConnectError> {
    let (mut tls, _) = dial_tls(target, target.tls.clone()).await?;
    let request_span = tracing::info_span!("request");
    let traceparent = tether_net::telemetry::traceparent(&request_span);
    async {
        tls.write_all(&head::encode_connect(
            &target.device,
            target.port,
            &target.token,
            traceparent.as_deref(),
        ))
        .await?;
        tls.flush().await?;
        read_answer(tls).await
    }
    .instrument(request_span)
    .await
}

/// Reads the relay's answer to CONNECT.
async fn read_answer(mut tls: TlsStream<TcpStream>) -> Result<Stream, ConnectError> {
    let mut buf = BytesMut::with_capacity(1024);
    loop {
        match head::parse_response(&buf) {
            Ok(Parsed::Complete(resp, used)) => {
                let rest = buf.split_off(used);
                if resp.status == 200 {
                    return Ok(Stream {
                        tls,
                        early: rest.freeze(),
                    });
                }
                let message = String::from_utf8_lossy(&rest).trim().to_owned();
                return Err(ConnectError::Refused {
                    status: resp.status,
                    reason: resp.reason.unwrap_or_default(),
                    message,
                });
            }
            Ok(Parsed::Incomplete) => {}
            Err(e) => return Err(ConnectError::Protocol(e.to_string())),
        }
        if tls.read_buf(&mut buf).await? == 0 {
            return Err(ConnectError::Protocol(
                "relay closed the connection before answering".into(),
            ));
        }
    }
}

/// Splices an open stream with a local byte stream until both directions end.
///
/// # Errors
/// I/O errors of either side.
pub async fn splice_with<L>(stream: Stream, local: &mut L) -> std::io::Result<(u64, u64)>
where
    L: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let Stream { mut tls, early } = stream;
    if !early.is_empty() {
        local.write_all(&early).await?;
        local.flush().await?;
    }
    splice(local, &mut tls).await
}

/// Copies both ways until both directions end, with [`h2io::SPLICE_BUFFER`]s.
async fn splice<L, R>(local: &mut L, remote: &mut R) -> std::io::Result<(u64, u64)>
where
    L: AsyncRead + AsyncWrite + Unpin + ?Sized,
    R: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    tokio::io::copy_bidirectional_with_sizes(local, remote, h2io::SPLICE_BUFFER, h2io::SPLICE_BUFFER).await
}

/// `--stdio`: one stream between stdin/stdout and the device (for ssh `ProxyCommand`).
///
/// # Errors
/// Setup or I/O errors.
pub async fn stdio(target: &Target) -> Result<(), ConnectError> {
    let stream = open(target).await?;
    // ssh may end its ProxyCommand with SIGHUP, before a normal exit could flush: send the
    // setup's spans now, off the async threads (an unreachable collector must not delay us).
    tokio::task::spawn_blocking(tether_net::telemetry::flush);
    let mut local = tokio::io::join(tokio::io::stdin(), tokio::io::stdout());
    splice_with(stream, &mut local).await?;
    Ok(())
}

/// `--listen`: every connection accepted on `listener` becomes one stream, all of them on one
/// multiplexed connection to the relay ([`Mux`]). Runs until `shutdown`.
pub async fn listen(target: Target, listener: TcpListener, shutdown: tokio_util::sync::CancellationToken) {
    let mux = Arc::new(Mux::new(target));
    loop {
        let (mut local, peer): (TcpStream, SocketAddr) = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let _ = local.set_nodelay(true);
        let mux = mux.clone();
        tokio::spawn(async move {
            match mux.open().await {
                Ok(mut stream) => match splice(&mut local, &mut stream).await {
                    Ok((up, down)) => {
                        tracing::info!(%peer, to_device = up, from_device = down, "connection closed")
                    }
                    Err(e) => tracing::info!(%peer, error = %e, "connection ended with an error"),
                },
                Err(e) => tracing::warn!(%peer, error = %e, "could not open a stream"),
            }
        });
    }
}
