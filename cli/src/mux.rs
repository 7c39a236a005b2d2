//! The multiplexed service connection: one TLS connection to the relay speaking HTTP/2 (ALPN
//! `h2`), one `CONNECT` stream per tunnelled TCP connection, so a new tunnelled connection costs
//! one round trip to the agent instead of a TCP and TLS handshake (docs/protocol.md §3.2).
//!
//! The connection serves the one device its SNI names (the relay fleet routes it by SNI), so a
//! [`Mux`] belongs to one [`Target`]. It is dialled on first use, shared by every stream, kept
//! alive with PING, and replaced when it fails, when the relay sends GOAWAY (drain) or when a
//! stream is refused with `503 device_moving` (the device's owner changed: a new connection
//! reaches the new owner). Setups are retried as [`connect::open`] retries them.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use h2::client::SendRequest;
use http::{HeaderValue, Method, Request};
use tether_net::{
    h2io::{self, H2Stream},
    window,
};
use tether_proto::{ALPN_SERVICE_H2, HEADER_ERROR, HEADER_TRACEPARENT, head};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::connect::{self, ConnectError, Target};

/// Most bytes of a refusal's message read (the relay sends one line).
const MAX_REFUSAL_BODY: usize = 4096;
/// How long a refusal's message may take to arrive after its status.
const REFUSAL_BODY_TIMEOUT: Duration = Duration::from_secs(5);

/// A tunnelled TCP connection on the multiplexed connection.
pub type MuxStream = H2Stream;

/// One live HTTP/2 connection to the relay.
#[derive(Clone)]
struct Conn {
    send: SendRequest<Bytes>,
    /// Cancelled when the connection's task ends (closed, failed, keepalive lost).
    closed: CancellationToken,
    id: u64,
}

/// Opens streams to one target over one shared HTTP/2 connection.
pub struct Mux {
    target: Target,
    /// `target.tls` with ALPN `h2`.
    tls: Arc<rustls::ClientConfig>,
    conn: tokio::sync::Mutex<Option<Conn>>,
    /// Connections dialled so far (for logs and tests).
    dialled: AtomicU64,
}

impl std::fmt::Debug for Mux {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mux")
            .field("target", &self.target)
            .field("dialled", &self.dialled.load(Ordering::Relaxed))
            .finish()
    }
}

impl Mux {
    /// A multiplexer for `target`; nothing is dialled until the first [`Mux::open`].
    pub fn new(target: Target) -> Self {
        let mut tls = (*target.tls).clone();
        tls.alpn_protocols = vec![ALPN_SERVICE_H2.to_vec()];
        Self {
            target,
            tls: Arc::new(tls),
            conn: tokio::sync::Mutex::new(None),
            dialled: AtomicU64::new(0),
        }
    }

    /// How many connections to the relay this multiplexer has dialled.
    pub fn connections_dialled(&self) -> u64 {
        self.dialled.load(Ordering::Relaxed)
    }

    /// Opens one stream, retrying transient failures as [`connect::open`] does (a failed
    /// connection is replaced first).
    ///
    /// # Errors
    /// The last attempt's error. See [`ConnectError`].
    pub async fn open(&self) -> Result<MuxStream, ConnectError> {
        let span = tracing::info_span!("connect", device = %self.target.device, port = self.target.port);
        connect::retrying(|| self.open_once()).instrument(span).await
    }

    /// Opens one stream, once; a transient failure discards the connection it used.
    ///
    /// # Errors
    /// See [`ConnectError`].
    pub async fn open_once(&self) -> Result<MuxStream, ConnectError> {
        let conn = self.connection().await?;
        let result = self.request(&conn).await;
        if let Err(e) = &result
            && e.is_transient()
        {
            self.discard(conn.id).await;
        }
        result
    }

    /// The live connection, dialled if there is none (one dial at a time: concurrent callers wait
    /// for it and share it).
    async fn connection(&self) -> Result<Conn, ConnectError> {
        let mut slot = self.conn.lock().await;
        if let Some(conn) = slot.as_ref()
            && !conn.closed.is_cancelled()
        {
            return Ok(conn.clone());
        }
        let conn = self.dial().await?;
        *slot = Some(conn.clone());
        Ok(conn)
    }

    async fn discard(&self, id: u64) {
        let mut slot = self.conn.lock().await;
        if slot.as_ref().is_some_and(|c| c.id == id) {
            *slot = None;
        }
    }

    /// Dials the relay: TCP (through the proxy, if any), TLS with ALPN `h2`, the HTTP/2
    /// handshake; spawns the connection's task.
    async fn dial(&self) -> Result<Conn, ConnectError> {
        let (tls, relay) = connect::dial_tls(&self.target, self.tls.clone()).await?;
        if tls.get_ref().1.alpn_protocol() != Some(ALPN_SERVICE_H2) {
            return Err(ConnectError::Protocol(format!(
                "relay {relay} does not offer multiplexed connections (ALPN h2)"
            )));
        }
        let (io, estimator, mut updates) = window::measure(tls);
        let (send, mut connection) = h2io::client_builder(h2io::DEFAULT_MAX_STREAMS)
            .handshake::<_, Bytes>(io)
            .await
            .map_err(|e| ConnectError::Connection(format!("HTTP/2 handshake with {relay}: {e}")))?;
        let closed = CancellationToken::new();
        let id = self.dialled.fetch_add(1, Ordering::Relaxed) + 1;
        let ping_pong = connection.ping_pong();
        let done = closed.clone();
        tokio::spawn(
            async move {
                // PINGs as a device connection does: an idle port forward keeps its connection
                // (and NAT state), and a dead relay is noticed before the next stream finds out.
                let keepalive = async {
                    match ping_pong {
                        Some(p) => h2io::keepalive(
                            p,
                            h2io::DEFAULT_KEEPALIVE_INTERVAL,
                            h2io::DEFAULT_KEEPALIVE_TIMEOUT,
                            Some(estimator),
                        )
                        .await
                        .to_string(),
                        None => std::future::pending().await,
                    }
                };
                tokio::pin!(keepalive);
                let why = loop {
                    tokio::select! {
                        res = &mut connection => {
                            break res.err().map_or("closed".to_owned(), |e| e.to_string());
                        }
                        dead = &mut keepalive => break dead,
                        w = updates.next() => updates.apply_client(&mut connection, w),
                    }
                };
                tracing::debug!(reason = %why, "relay connection ended");
                done.cancel();
            }
            .instrument(tracing::info_span!("relay_connection", id)),
        );
        tracing::debug!(%relay, id, "relay connection open");
        Ok(Conn { send, closed, id })
    }

    /// Sends the CONNECT request on `conn` and waits for the relay's answer.
    async fn request(&self, conn: &Conn) -> Result<MuxStream, ConnectError> {
        let target = &self.target;
        let lost = |e: h2::Error| ConnectError::Connection(e.to_string());
        let request_span = tracing::info_span!("request");
        let traceparent = tether_net::telemetry::traceparent(&request_span);
        async {
            let mut authorization = HeaderValue::from_str(&format!("Bearer {}", target.token))
                .map_err(|_| ConnectError::Protocol("the token is not a valid header value".into()))?;
            // HPACK never-indexed: the token is a secret (RFC 7541 §7.1.3).
            authorization.set_sensitive(true);
            let mut request = Request::builder()
                .method(Method::CONNECT)
                .uri(head::connect_target(&target.device, target.port))
                .header(http::header::AUTHORIZATION, authorization);
            if let Some(tp) = traceparent.as_deref() {
                request = request.header(HEADER_TRACEPARENT, tp);
            }
            let request = request
                .body(())
                .map_err(|e| ConnectError::Protocol(e.to_string()))?;
            let mut send_request = conn.send.clone().ready().await.map_err(lost)?;
            let (response, send) = send_request.send_request(request, false).map_err(lost)?;
            let response = response.await.map_err(lost)?;
            let status = response.status().as_u16();
            let reason = response
                .headers()
                .get(HEADER_ERROR)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let body = response.into_body();
            if status == 200 {
                return Ok(H2Stream::new(send, body));
            }
            let message = read_message(body).await;
            Err(ConnectError::Refused {
                status,
                reason: reason.unwrap_or_default(),
                message,
            })
        }
        .instrument(request_span)
        .await
    }
}

/// A refusal's message (its body), bounded; what arrived if the stream ends early.
async fn read_message(mut body: h2::RecvStream) -> String {
    let mut message = Vec::new();
    let _ = tokio::time::timeout(REFUSAL_BODY_TIMEOUT, async {
        while let Some(Ok(chunk)) = body.data().await {
            let _ = body.flow_control().release_capacity(chunk.len());
            let room = MAX_REFUSAL_BODY - message.len();
            message.extend_from_slice(&chunk[..chunk.len().min(room)]);
            if message.len() >= MAX_REFUSAL_BODY {
                break;
            }
        }
    })
    .await;
    String::from_utf8_lossy(&message).trim().to_owned()
}
