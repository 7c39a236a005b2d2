//! The accept loop: caps connections and pending handshakes (in total and per source address),
//! and spawns one task per connection.
//!
//! Nothing slow happens here: a silent or slow client costs only its own task, bounded by the
//! handshake deadline (rathole #324 stalled every new connection behind one slow client). The
//! per-source cap keeps one address from holding every pending slot: without it, 1,100 silent
//! sockets from one host refused every legitimate device and service.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv6Addr, SocketAddr},
    sync::{Arc, Mutex},
    time::Duration,
};

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
    reason::Reason,
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

/// The pending-handshake slots a connection holds until its handshake phase ends.
pub(crate) struct Admission {
    /// One of the relay-wide slots.
    pub _global: OwnedSemaphorePermit,
    /// One of its source's slots.
    pub _source: SourcePermit,
}

/// Counts pending handshakes per source, refusing a source at its limit.
///
/// A source is an IPv4 address, or an IPv6 /64 (one host usually owns a whole /64, so counting
/// single IPv6 addresses would limit nothing). The caller passes the *client's* address: the TCP
/// peer, or the address a trusted PROXY header carries for a forwarded connection.
#[derive(Debug)]
pub struct SourceLimiter {
    limit: usize,
    counts: Mutex<HashMap<IpAddr, usize>>,
}

impl SourceLimiter {
    /// A limiter allowing `limit` pending handshakes per source.
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(Self {
            limit,
            counts: Mutex::new(HashMap::new()),
        })
    }

    /// Takes one of `client`'s slots, or `None` when it holds all of them.
    pub fn try_acquire(self: &Arc<Self>, client: IpAddr) -> Option<SourcePermit> {
        let source = source_of(client);
        let mut counts = self.lock();
        let count = counts.entry(source).or_insert(0);
        if *count >= self.limit {
            return None;
        }
        let held_before = *count;
        *count += 1;
        Some(SourcePermit {
            limiter: self.clone(),
            source,
            held_before,
        })
    }

    /// Sources with at least one pending handshake (the map never holds zero counts).
    pub fn sources(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, usize>> {
        // Every critical section is one map update: nothing to repair after a panic.
        self.counts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The source an address counts against: itself for IPv4 (IPv4-mapped IPv6 included), its /64
/// for IPv6.
fn source_of(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => {
            let prefix = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(Ipv6Addr::from(prefix))
        }
    }
}

/// One pending-handshake slot of a source; dropping it frees the slot.
#[derive(Debug)]
pub struct SourcePermit {
    limiter: Arc<SourceLimiter>,
    source: IpAddr,
    held_before: usize,
}

impl SourcePermit {
    /// How many pending handshakes the source already held when this one was admitted.
    pub fn held_before(&self) -> usize {
        self.held_before
    }
}

/// Pending handshakes a source may hold and still use the reserved last quarter of the relay-wide
/// slots: a flood from a few addresses fills at most three quarters, and the rest stays for
/// sources with only a handful of handshakes in flight (a device or a service reconnecting).
pub const RESERVE_FAIR_SHARE: usize = 8;

/// Whether a source already holding `held` pending handshakes may take one of the relay-wide
/// slots when `available` of `total` are free.
pub fn may_take_global_slot(held: usize, available: usize, total: usize) -> bool {
    held < RESERVE_FAIR_SHARE || available > total / 4
}

impl Drop for SourcePermit {
    fn drop(&mut self) {
        let mut counts = self.limiter.lock();
        if let Some(count) = counts.get_mut(&self.source) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.source);
            }
        }
    }
}

/// Takes the pending-handshake slots of a connection from `client`: one of its source's, then a
/// relay-wide one (the reserved last quarter only for quiet sources). A refusal is counted under
/// its metric reason, which is returned. `client` is the TCP peer, or the client address of a
/// trusted PROXY header (a connection forwarded by a ring member counts against the original
/// client, not the forwarding relay).
pub(crate) fn admit_pending(shared: &Shared, client: IpAddr) -> Result<Admission, Reason> {
    let refuse = |reason: Reason| {
        shared.metrics.handshake_failed(Side::Unknown, reason);
        Err(reason)
    };
    // The source's cap first: a source at its limit must not take a global slot meanwhile.
    let Some(source) = shared.sources.try_acquire(client) else {
        return refuse(Reason::TooManyPendingFromSource);
    };
    let total = shared.config.limits.max_pending_handshakes;
    if !may_take_global_slot(source.held_before(), shared.pending.available_permits(), total) {
        return refuse(Reason::TooManyPendingFromSource);
    }
    let Ok(global) = shared.pending.clone().try_acquire_owned() else {
        return refuse(Reason::TooManyPendingHandshakes);
    };
    Ok(Admission {
        _global: global,
        _source: source,
    })
}

fn admit(shared: &Arc<Shared>, tracker: &TaskTracker, tcp: TcpStream, peer: SocketAddr) {
    let Some((connection, pending)) = admit_permits(shared, peer) else {
        return;
    };
    shared.metrics.connections_accepted.inc();
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
) -> Option<(OwnedSemaphorePermit, Admission)> {
    let Ok(connection) = shared.connections.clone().try_acquire_owned() else {
        shared
            .metrics
            .handshake_failed(Side::Unknown, Reason::TooManyConnections);
        tracing::debug!(%peer, "refused: connection limit reached");
        return None;
    };
    let Ok(pending) = admit_pending(shared, peer.ip()) else {
        tracing::debug!(%peer, "refused: pending-handshake limit reached (this source's or the relay's)");
        return None;
    };
    Some((connection, pending))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_source_has_its_own_limit() {
        let limiter = SourceLimiter::new(2);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let (a1, _a2) = (limiter.try_acquire(a).unwrap(), limiter.try_acquire(a).unwrap());
        assert!(limiter.try_acquire(a).is_none());
        // The same address written as IPv4-mapped IPv6 is the same source.
        assert!(limiter.try_acquire("::ffff:192.0.2.1".parse().unwrap()).is_none());
        assert!(limiter.try_acquire(b).is_some());
        drop(a1);
        assert!(limiter.try_acquire(a).is_some());
    }

    #[test]
    fn the_last_quarter_is_reserved_for_quiet_sources() {
        assert!(may_take_global_slot(100, 257, 1024));
        assert!(!may_take_global_slot(100, 256, 1024));
        assert!(may_take_global_slot(RESERVE_FAIR_SHARE - 1, 1, 1024));
    }

    #[test]
    fn ipv6_counts_per_64_and_the_map_empties() {
        let limiter = SourceLimiter::new(1);
        let held = limiter.try_acquire("2001:db8:1:2::1".parse().unwrap()).unwrap();
        assert!(
            limiter
                .try_acquire("2001:db8:1:2:ffff::9".parse().unwrap())
                .is_none()
        );
        assert!(limiter.try_acquire("2001:db8:1:3::1".parse().unwrap()).is_some());
        drop(held);
        assert_eq!(limiter.sources(), 0);
    }
}
