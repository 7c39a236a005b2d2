//! The device connection once the preface is accepted: the agent is the HTTP/2 *server* on the
//! connection it dialled. This module runs the accept loop, spawns one task per stream, sends
//! keepalive PINGs, and drains on shutdown.

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use tether_net::window;
use tokio::{
    io::{AsyncRead, AsyncWrite},
    time::timeout,
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::{Instrument, debug, warn};

use crate::forward::{self, ForwardContext};

/// Settings of one device connection.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SessionSettings {
    pub(crate) max_streams: u32,
    pub(crate) keepalive_interval: Duration,
    pub(crate) keepalive_timeout: Duration,
    pub(crate) drain_timeout: Duration,
    pub(crate) handshake_timeout: Duration,
}

/// How a device connection ended.
#[derive(Debug)]
pub(crate) enum SessionEnd {
    /// Local shutdown was requested; streams were drained (or the deadline passed).
    Shutdown,
    /// The relay closed the connection cleanly: a GOAWAY drain after its streams finished, or a
    /// plain close. (h2 reports both the same way, as the end of the accept loop.)
    Closed,
    /// The relay asked the agent to reconnect (another relay serves the device now); the old
    /// connection still carries its in-flight streams.
    Moved,
    /// The connection broke: I/O error, protocol error, GOAWAY with an error, or keepalive timeout.
    Lost(String),
}

/// Serves HTTP/2 on `io` until the relay goes away, the connection breaks or `shutdown` fires.
/// Stream tasks are spawned on `tracker` so the caller can wait for them at exit.
pub(crate) async fn serve<S>(
    io: S,
    settings: SessionSettings,
    ctx: Arc<ForwardContext>,
    tracker: &TaskTracker,
    shutdown: &CancellationToken,
) -> SessionEnd
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (io, estimator, mut updates) = window::measure(io);
    let handshake = tether_net::h2io::server_builder(settings.max_streams).handshake::<_, Bytes>(io);
    let mut conn = tokio::select! {
        r = timeout(settings.handshake_timeout, handshake) => match r {
            Ok(Ok(conn)) => conn,
            Ok(Err(e)) => return SessionEnd::Lost(format!("HTTP/2 handshake with relay failed: {e}")),
            Err(_) => return SessionEnd::Lost("relay did not start HTTP/2 in time".into()),
        },
        _ = shutdown.cancelled() => return SessionEnd::Shutdown,
    };
    let keepalive = match conn.ping_pong() {
        Some(pp) => tether_net::h2io::keepalive(
            pp,
            settings.keepalive_interval,
            settings.keepalive_timeout,
            Some(estimator),
        ),
        // `ping_pong()` hands its handle out once; this is the first call, so it is present.
        None => return SessionEnd::Lost("HTTP/2 ping handle unavailable".into()),
    };
    tokio::pin!(keepalive);

    loop {
        tokio::select! {
            next = conn.accept() => match next {
                Some(Ok((req, mut respond))) if is_reconnect(&req) => {
                    // The relay moved this device elsewhere (ring change or drain). Reconnect now;
                    // the old connection keeps carrying its in-flight streams in the background
                    // until the relay closes it after they end.
                    let _ = respond.send_response(http::Response::new(()), true);
                    let ctx = ctx.clone();
                    let inner = tracker.clone();
                    tracker.spawn(
                        async move {
                            while let Some(Ok((req, respond))) = conn.accept().await {
                                inner.spawn(forward::handle(req, respond, ctx.clone()).in_current_span());
                            }
                        }
                        .in_current_span(),
                    );
                    return SessionEnd::Moved;
                }
                Some(Ok((req, respond))) => {
                    tracker.spawn(forward::handle(req, respond, ctx.clone()).in_current_span());
                }
                Some(Err(e)) => return SessionEnd::Lost(describe_h2(&e)),
                None => return SessionEnd::Closed,
            },
            dead = &mut keepalive => return SessionEnd::Lost(format!("relay: {dead}")),
            w = updates.next() => updates.apply_server(&mut conn, w),
            _ = shutdown.cancelled() => break,
        }
    }

    // Shutdown: GOAWAY tells the relay to open no new streams; keep driving the connection (the
    // accept loop is what moves stream data) until in-flight streams end or the deadline passes.
    conn.graceful_shutdown();
    let drain = async {
        while let Some(next) = conn.accept().await {
            match next {
                // Streams the relay opened before it saw our GOAWAY are still served.
                Ok((req, respond)) => {
                    tracker.spawn(forward::handle(req, respond, ctx.clone()).in_current_span());
                }
                Err(e) => {
                    debug!(error = %e, "device connection ended while draining");
                    break;
                }
            }
        }
    };
    if timeout(settings.drain_timeout, drain).await.is_err() {
        warn!(deadline = ?settings.drain_timeout, "drain deadline passed; closing streams still open");
    }
    SessionEnd::Shutdown
}

fn is_reconnect<B>(req: &http::Request<B>) -> bool {
    req.headers()
        .get(tether_proto::HEADER_CONTROL)
        .is_some_and(|v| v.as_bytes() == tether_proto::CONTROL_RECONNECT.as_bytes())
}

fn describe_h2(e: &h2::Error) -> String {
    if e.is_go_away() && e.is_remote() {
        format!("relay sent GOAWAY with error {:?}", e.reason())
    } else if e.is_io() {
        format!("device connection I/O error: {e}")
    } else {
        format!("HTTP/2 error on device connection: {e}")
    }
}
