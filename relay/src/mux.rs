//! Multiplexed service connections: HTTP/2 (ALPN `h2`) with one `CONNECT` stream per tunnelled
//! TCP connection, so a client's new connection costs one round trip to the agent instead of a
//! TCP and TLS handshake.
//!
//! Each stream is authorized on its own by [`service::open`], exactly as an HTTP/1.1 request is
//! (token, SNI = target, revocation, `maxConnections`, device slots; refusals use the same status
//! and `tether-error` codes), and [`service::run`] splices, counts and cuts it. The connection
//! belongs to the device its SNI names: the relay may have received it through an SNI forward to
//! that device's owner, so a stream for another device is refused (`400 sni_mismatch`).
//!
//! The connection task drives h2 (its `accept` loop), keeps the peer alive with PING, and ends
//! when the client goes away, the keepalive fails or the relay stops. It sends GOAWAY, letting
//! open streams finish, when the relay drains, when the ring moved the device away
//! (`device_moving`: every later stream would be refused too), and after
//! [`MAX_REFUSALS_IN_A_ROW`] refused streams with no success between them.

use std::sync::{
    Arc,
    atomic::{AtomicU32, Ordering},
};

use bytes::Bytes;
use h2::{RecvStream, server::SendResponse};
use http::{Method, Response};
use prometheus::IntGauge;
use tether_net::{
    h2io::{self, H2Stream},
    window,
};
use tether_proto::{
    HEADER_ERROR, HEADER_TRACEPARENT,
    head::{self, ConnectRequest, HeadError},
    name::{DeviceKey, NameError},
};
use tokio::{task::JoinSet, time::timeout_at};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::{
    Shared,
    handshake::{Accepted, Failure, report},
    metrics::Side,
    reason::Reason,
    service::{self, Refusal},
};

/// Concurrent streams one service connection may carry (HTTP/2 `SETTINGS_MAX_CONCURRENT_STREAMS`).
/// Each token's `maxConnections` still applies per stream; this bounds one connection's share of
/// the relay.
pub const MAX_STREAMS_PER_CONNECTION: u32 = 256;

/// Refused streams in a row after which the relay closes a connection (GOAWAY; open streams
/// finish). On HTTP/1.1 every refusal costs the client a new TLS handshake; without this bound an
/// HTTP/2 client could try tokens at the rate of a round trip each, for free.
pub const MAX_REFUSALS_IN_A_ROW: u32 = 16;

/// Decrements the open-connections gauge when the connection ends.
struct Counted(IntGauge);

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// What the connection's streams share.
struct Connection {
    shared: Arc<Shared>,
    sni_device: Result<DeviceKey, NameError>,
    /// Cancelled to ask the connection loop for GOAWAY.
    goaway: CancellationToken,
    /// Streams refused since the last one that opened.
    refusals: AtomicU32,
}

/// Serves one HTTP/2 service connection until it closes.
pub(crate) async fn serve(shared: Arc<Shared>, accepted: Box<Accepted>) {
    let Accepted {
        tls,
        sni_device,
        deadline,
        pending,
        ..
    } = *accepted;
    let (io, estimator, mut updates) = window::measure(tls);
    let handshake = timeout_at(
        deadline,
        h2io::server_builder(MAX_STREAMS_PER_CONNECTION).handshake::<_, Bytes>(io),
    )
    .await;
    let mut conn = match handshake {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => return report(&shared, Failure::new(Side::Service, Reason::Http2, e)),
        Err(_) => {
            return report(
                &shared,
                Failure::new(Side::Service, Reason::HandshakeTimeout, "HTTP/2 handshake"),
            );
        }
    };
    shared.metrics.multiplexed_connections.inc();
    let _counted = Counted(shared.metrics.multiplexed_connections.clone());
    let limits = &shared.config.limits;
    let Some(ping_pong) = conn.ping_pong() else {
        return report(
            &shared,
            Failure::new(Side::Internal, Reason::Internal, "h2 ping handle taken"),
        );
    };
    let keepalive = limits.keepalive(ping_pong, estimator);
    tokio::pin!(keepalive);
    let connection = Arc::new(Connection {
        shared: shared.clone(),
        sni_device,
        goaway: CancellationToken::new(),
        refusals: AtomicU32::new(0),
    });
    // Held until the first request arrives, as an HTTP/1.1 connection holds it until its head:
    // a connection that never asks for a stream ends at the handshake deadline.
    let mut pending = Some(pending);
    let mut streams = JoinSet::new();
    let mut closing = false;
    let why = loop {
        let next = tokio::select! {
            next = conn.accept() => next,
            Some(_) = streams.join_next(), if !streams.is_empty() => continue,
            dead = &mut keepalive => break dead.to_string(),
            w = updates.next() => {
                updates.apply_server(&mut conn, w);
                continue;
            }
            _ = connection.goaway.cancelled(), if !closing => {
                closing = true;
                conn.graceful_shutdown();
                continue;
            }
            _ = shared.goaway.cancelled(), if !closing => {
                closing = true;
                conn.graceful_shutdown();
                continue;
            }
            _ = shared.hard_stop.cancelled() => break "relay stopped".to_owned(),
            _ = tokio::time::sleep_until(deadline), if pending.is_some() => {
                report(&shared, Failure::new(Side::Service, Reason::HandshakeTimeout, "first HTTP/2 request"));
                return;
            }
        };
        match next {
            None => break "connection closed".to_owned(),
            Some(Err(e)) => break format!("connection error: {e}"),
            Some(Ok((request, respond))) => {
                pending = None;
                streams.spawn(stream(connection.clone(), request, respond));
            }
        }
    };
    tracing::debug!(reason = %why, streams = streams.len(), "service connection ended");
}

/// Serves one stream: parse, [`service::open`], answer, [`service::run`].
async fn stream(
    connection: Arc<Connection>,
    request: http::Request<RecvStream>,
    mut respond: SendResponse<Bytes>,
) {
    let shared = &connection.shared;
    let (parts, body) = request.into_parts();
    let request = match parse(&parts) {
        Ok(r) => r,
        Err(e) => return refuse(&connection, &mut respond, service::head_refusal(e)),
    };
    let span = service::stream_span(&request, None);
    async {
        match service::open(shared, &connection.sni_device, &request).await {
            Err(r) => refuse(&connection, &mut respond, r),
            Ok(opened) => {
                connection.refusals.store(0, Ordering::Relaxed);
                let send = match respond.send_response(Response::new(()), false) {
                    Ok(send) => send,
                    Err(e) => return report(shared, Failure::new(Side::Service, Reason::Http2, e)),
                };
                service::run(shared, opened, H2Stream::new(send, body), Bytes::new()).await;
            }
        }
    }
    .instrument(span)
    .await;
}

/// The request as [`ConnectRequest`]: a plain (RFC 9113 §8.5) `CONNECT` whose `:authority` is the
/// target, with the same `authorization` and `traceparent` headers as HTTP/1.1.
fn parse(parts: &http::request::Parts) -> Result<ConnectRequest, HeadError> {
    if parts.method != Method::CONNECT {
        return Err(HeadError::MethodNotAllowed(
            parts.method.as_str().chars().take(16).collect(),
        ));
    }
    let header = |name: &str| parts.headers.get(name).and_then(|v| v.to_str().ok());
    let authority = parts.uri.authority().map_or("", |a| a.as_str());
    head::connect_request(authority, header("authorization"), header(HEADER_TRACEPARENT))
}

/// Answers a refusal on the stream (status, `tether-error`, the message as the body) and counts
/// it; asks for GOAWAY when the connection can serve no more streams or has had too many
/// refused.
fn refuse(connection: &Connection, respond: &mut SendResponse<Bytes>, r: Refusal) {
    service::refused(&connection.shared, &r);
    let refused_in_a_row = connection.refusals.fetch_add(1, Ordering::Relaxed) + 1;
    if r.reason == Reason::DeviceMoving || refused_in_a_row >= MAX_REFUSALS_IN_A_ROW {
        connection.goaway.cancel();
    }
    let response = Response::builder()
        .status(r.status())
        .header(HEADER_ERROR, r.reason.as_str())
        .header(http::header::CONTENT_TYPE, "text/plain")
        .body(());
    let Ok(response) = response else { return };
    if let Ok(mut send) = respond.send_response(response, false) {
        let _ = send.send_data(Bytes::from(format!("{}\n", r.message)), true);
    }
}
