//! The accept loop: caps connections and pending handshakes, and spawns one task per connection.
//!
//! Nothing slow happens here: a silent or slow client costs only its own task, bounded by the
//! handshake deadline (rathole #324 stalled every new connection behind one slow client).

use std::{net::SocketAddr, sync::Arc, time::Duration};

use tokio::{
    net::{TcpListener, TcpStream},
    sync::OwnedSemaphorePermit,
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::Instrument;

use crate::{
    Shared,
    handshake::{self, Origin},
    metrics::Side,
};

/// Accepts until `stop` fires. Accept errors (e.g. out of file descriptors) are retried with
/// backoff rather than ending the loop.
pub(crate) async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    tracker: TaskTracker,
    stop: CancellationToken,
) {
    let mut backoff = Duration::from_millis(10);
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((tcp, peer)) => {
                backoff = Duration::from_millis(10);
                admit(&shared, &tracker, tcp, peer);
            }
            Err(e) => {
                tracing::warn!(error = %e, ?backoff, "accept failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    }
}

fn admit(shared: &Arc<Shared>, tracker: &TaskTracker, tcp: TcpStream, peer: SocketAddr) {
    let Some((connection, pending)) = admit_permits(shared, peer) else {
        return;
    };
    let _ = tcp.set_nodelay(true);
    let shared = shared.clone();
    let origin = Origin {
        client: peer,
        via: None,
    };
    tracker.spawn(
        async move {
            handshake::handle(shared, tcp, pending, origin).await;
            drop(connection);
        }
        .instrument(tracing::info_span!("conn", %peer)),
    );
}

/// Takes a connection slot and a pending-handshake slot for a connection from `peer`, or counts
/// the refusal (the caller then drops the socket). Shared by the data and peer ports.
pub(crate) fn admit_permits(
    shared: &Arc<Shared>,
    peer: SocketAddr,
) -> Option<(OwnedSemaphorePermit, OwnedSemaphorePermit)> {
    let Ok(connection) = shared.connections.clone().try_acquire_owned() else {
        shared
            .metrics
            .handshake_failed(Side::Unknown, "too_many_connections");
        tracing::debug!(%peer, "refused: connection limit reached");
        return None;
    };
    let Ok(pending) = shared.pending.clone().try_acquire_owned() else {
        shared
            .metrics
            .handshake_failed(Side::Unknown, "too_many_pending_handshakes");
        tracing::debug!(%peer, "refused: pending-handshake limit reached");
        return None;
    };
    Some((connection, pending))
}
