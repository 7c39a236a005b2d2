//! One stream: check the requested port against the allowlist, dial the local target, answer the
//! relay, then splice the HTTP/2 stream and the TCP connection until both sides are done.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use bytes::Bytes;
use h2::{RecvStream, server::SendResponse};
use http::{Request, Response, StatusCode};
use tether_net::h2io::H2Stream;
use tether_proto::{HEADER_ERROR, HEADER_STREAM_UID, HEADER_TARGET_PORT, HEADER_TRACEPARENT};
use tokio::{net::TcpStream, time::timeout};
use tracing::{Instrument, debug, info, info_span, warn};

use crate::config::Target;

/// Refusal reason when the port is not in the agent's allowlist (`tether-error` header).
pub const ERROR_PORT_NOT_ALLOWED: &str = "port_not_allowed";
/// Refusal reason when the local target cannot be reached.
pub const ERROR_TARGET_UNREACHABLE: &str = "target_unreachable";
/// Refusal reason when the request lacks a valid target port.
pub const ERROR_BAD_REQUEST: &str = "bad_request";

/// Longest header value copied into logs: stream UIDs are 36-character UUIDs and traceparents 55
/// characters; anything longer is cut so a misbehaving peer cannot flood the log.
const MAX_LOGGED_HEADER: usize = 64;

/// What every stream task needs; shared by all streams of the agent.
#[derive(Debug)]
pub(crate) struct ForwardContext {
    pub(crate) allow: BTreeMap<u16, Target>,
    pub(crate) connect_timeout: Duration,
    pub(crate) metrics: crate::metrics::AgentMetrics,
}

fn header<'a>(req: &'a Request<RecvStream>, name: &str) -> Option<&'a str> {
    req.headers().get(name).and_then(|v| v.to_str().ok())
}

fn bounded(value: Option<&str>) -> String {
    value.unwrap_or("-").chars().take(MAX_LOGGED_HEADER).collect()
}

/// Serves one request from the relay. Runs as its own task; never panics on bad input.
pub(crate) async fn handle(req: Request<RecvStream>, respond: SendResponse<Bytes>, ctx: Arc<ForwardContext>) {
    let uid = bounded(header(&req, HEADER_STREAM_UID));
    let raw_port = header(&req, HEADER_TARGET_PORT);
    let port = raw_port
        .and_then(|p| p.trim().parse::<u16>().ok())
        .filter(|p| *p != 0);
    let span = info_span!(
        "stream",
        uid = %uid,
        port = %bounded(raw_port),
        traceparent = %bounded(header(&req, HEADER_TRACEPARENT)),
    );
    if let Some(tp) = header(&req, HEADER_TRACEPARENT) {
        tether_net::telemetry::set_remote_parent(&span, tp);
    }
    serve(req, respond, port, ctx).instrument(span).await;
}

async fn serve(
    req: Request<RecvStream>,
    mut respond: SendResponse<Bytes>,
    port: Option<u16>,
    ctx: Arc<ForwardContext>,
) {
    let Some(port) = port else {
        warn!("refusing stream: missing or invalid {HEADER_TARGET_PORT} header");
        refuse(&ctx, &mut respond, StatusCode::BAD_REQUEST, ERROR_BAD_REQUEST);
        return;
    };
    let Some(target) = ctx.allow.get(&port) else {
        // Device-side consent (DESIGN.md §2): whatever the relay says, only allowlisted ports.
        warn!("refusing stream: port not in the agent's allowlist");
        refuse(&ctx, &mut respond, StatusCode::FORBIDDEN, ERROR_PORT_NOT_ALLOWED);
        return;
    };
    let tcp = match timeout(
        ctx.connect_timeout,
        TcpStream::connect((target.host.as_str(), target.port)),
    )
    .instrument(info_span!("target_dial"))
    .await
    {
        Ok(Ok(tcp)) => tcp,
        Ok(Err(e)) => {
            warn!(%target, error = %e, "refusing stream: local target unreachable");
            refuse(
                &ctx,
                &mut respond,
                StatusCode::BAD_GATEWAY,
                ERROR_TARGET_UNREACHABLE,
            );
            return;
        }
        Err(_) => {
            warn!(%target, timeout = ?ctx.connect_timeout, "refusing stream: local target did not accept in time");
            refuse(
                &ctx,
                &mut respond,
                StatusCode::BAD_GATEWAY,
                ERROR_TARGET_UNREACHABLE,
            );
            return;
        }
    };
    // Interactive protocols (SSH, RDP) suffer from Nagle delays; the relay side sets it too.
    if let Err(e) = tcp.set_nodelay(true) {
        debug!(error = %e, "cannot set TCP_NODELAY on target connection");
    }
    let send = match respond.send_response(Response::new(()), false) {
        Ok(send) => send,
        Err(e) => {
            // The relay reset the stream or the connection went away while we dialled.
            debug!(error = %e, "stream gone before it was answered");
            return;
        }
    };
    info!(%target, "stream open");
    let m = &ctx.metrics;
    m.streams.with_label_values(&["ok"]).inc();
    m.active_streams.inc();
    let mut tunnel = H2Stream::new(send, req.into_body());
    let mut tcp = tcp;
    // copy_bidirectional keeps each direction running until its own EOF and propagates
    // half-close, unlike select! over two copies (which cuts the other direction short).
    let size = tether_net::h2io::SPLICE_BUFFER;
    match tokio::io::copy_bidirectional_with_sizes(&mut tunnel, &mut tcp, size, size).await {
        Ok((to_target, from_target)) => {
            m.bytes_to_target.inc_by(to_target);
            m.bytes_from_target.inc_by(from_target);
            info!(to_target, from_target, "stream closed")
        }
        Err(e) => info!(error = %e, "stream ended with an error"),
    }
    m.active_streams.dec();
}

fn refuse(ctx: &ForwardContext, respond: &mut SendResponse<Bytes>, status: StatusCode, reason: &'static str) {
    ctx.metrics.streams.with_label_values(&[reason]).inc();
    let mut resp = Response::new(());
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(HEADER_ERROR, http::HeaderValue::from_static(reason));
    if let Err(e) = respond.send_response(resp, true) {
        debug!(error = %e, "could not send refusal; stream already gone");
    }
}
