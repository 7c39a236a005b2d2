//! Layer-4 forwarding between relays: a relay that does not own a connection's device sends the
//! raw bytes (the peeked ClientHello first) to the owner's peer port behind a PROXY v2 header, and
//! stays out of the crypto; the owner terminates TLS end to end.
//!
//! The peer port admits only connections from current ring members that start with a PROXY v2
//! header; what it receives is served, never forwarded again — so a moment of disagreement
//! between two relays' rings costs at most one extra hop, never a loop.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use bytes::Bytes;
use tether_proto::proxy_header;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpSocket, TcpStream},
    time::{Instant, timeout, timeout_at},
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::Instrument;

use crate::{
    Shared,
    handshake::{self, Origin},
    metrics::Side,
    reason::{ForwardFailure, Reason},
    splice::{Activity, Metered},
};

/// How long dialling the owner may take: peers are on the cluster network, so a slow dial means
/// the owner is gone and the client is better off retrying.
const DIAL_TIMEOUT: Duration = Duration::from_secs(3);
/// Copy buffer per direction of a forwarded connection. Most forwarded connections are idle
/// device sessions that live for hours, so this is small (tokio's default) rather than the
/// splice's 64 KiB: 16 KiB per forwarded device instead of 128.
const FORWARD_BUFFER: usize = 8 * 1024;

/// Forwards `tcp`, whose first bytes `peeked` were already read, to the owner's `peer` port.
/// Runs until both directions end. Returns `Err(tcp, peeked)` untouched when the owner cannot be
/// reached, so the caller may serve it locally instead.
pub(crate) async fn to_owner(
    shared: &Shared,
    mut tcp: TcpStream,
    peeked: Bytes,
    origin: &Origin,
    owner: &str,
    peer: SocketAddr,
) -> Result<(), (TcpStream, Bytes)> {
    let m = &shared.metrics;
    let upstream = match timeout(DIAL_TIMEOUT, dial(peer, shared)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            m.forward_failures
                .with_label_values(&[ForwardFailure::Dial.as_str()])
                .inc();
            tracing::warn!(%owner, %peer, error = %e, "cannot reach the owning relay");
            return Err((tcp, peeked));
        }
        Err(_) => {
            m.forward_failures
                .with_label_values(&[ForwardFailure::DialTimeout.as_str()])
                .inc();
            tracing::warn!(%owner, %peer, "dialling the owning relay timed out");
            return Err((tcp, peeked));
        }
    };
    let _ = upstream.set_nodelay(true);
    let destination = tcp.local_addr().unwrap_or(peer);
    let mut first = proxy_header::encode(origin.client, destination);
    first.extend_from_slice(&peeked);
    let mut upstream = upstream;
    if let Err(e) = upstream.write_all(&first).await {
        m.forward_failures
            .with_label_values(&[ForwardFailure::Write.as_str()])
            .inc();
        tracing::warn!(%owner, error = %e, "owning relay closed the forwarded connection");
        return Err((tcp, peeked));
    }
    m.forwarded_connections.with_label_values(&["sent"]).inc();
    m.forwarded_to_owner.inc_by(peeked.len() as u64);
    tracing::debug!(%owner, %peer, "forwarding to the owning relay");
    let activity = Arc::new(Activity::default());
    let mut client = Metered::new(&mut tcp, m.forwarded_to_owner.clone(), activity.clone());
    let mut owner_side = Metered::new(&mut upstream, m.forwarded_from_owner.clone(), activity);
    tokio::select! {
        res = tokio::io::copy_bidirectional_with_sizes(&mut client, &mut owner_side, FORWARD_BUFFER, FORWARD_BUFFER) => {
            if let Err(e) = res {
                tracing::debug!(%owner, error = %e, "forwarded connection ended with an error");
            }
        }
        _ = shared.hard_stop.cancelled() => {}
    }
    Ok(())
}

/// Dials `peer` from this relay's own address, so the owner recognises a ring member.
async fn dial(peer: SocketAddr, shared: &Shared) -> std::io::Result<TcpStream> {
    let socket = if peer.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if let Some(ip) = shared.fleet.as_ref().and_then(|f| f.source_ip)
        && ip.is_ipv4() == peer.is_ipv4()
    {
        socket.bind(SocketAddr::new(ip, 0))?;
    }
    socket.connect(peer).await
}

/// Accepts forwarded connections on the peer port until `stop` fires.
pub(crate) async fn peer_accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    tracker: TaskTracker,
    stop: CancellationToken,
) {
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => return,
            a = listener.accept() => a,
        };
        let (tcp, from) = match accepted {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "peer accept failed; retrying");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let member = shared
            .fleet
            .as_ref()
            .is_some_and(|f| f.is_member_address(from.ip()));
        if !member {
            shared
                .metrics
                .handshake_failed(Side::Unknown, Reason::PeerNotMember);
            tracing::info!(%from, "peer port: refused a connection from a non-member address");
            continue;
        }
        // Only a connection slot until the PROXY header names the real client: the per-source
        // pending-handshake cap applies to that client, not to the forwarding relay (which
        // speaks for many), so a reconnect storm through one forwarder is not throttled as one
        // source. Members are trusted to send the header at once (handshake deadline).
        let Ok(connection) = shared.connections.clone().try_acquire_owned() else {
            shared
                .metrics
                .handshake_failed(Side::Unknown, Reason::TooManyConnections);
            continue;
        };
        let shared = shared.clone();
        tracker.spawn(
            async move {
                let deadline = Instant::now() + shared.config.limits.handshake_timeout;
                let mut tcp = tcp;
                match timeout_at(deadline, read_proxy_header(&mut tcp)).await {
                    Ok(Ok(header)) => {
                        shared.metrics.forwarded_connections.with_label_values(&["received"]).inc();
                        let Ok(pending) = crate::listener::admit_pending(&shared, header.source.ip()) else {
                            return;
                        };
                        let origin = Origin {
                            client: header.source,
                            via: Some(from.ip()),
                        };
                        let _ = tcp.set_nodelay(true);
                        handshake::handle(shared, tcp, pending, origin).await;
                    }
                    Ok(Err(reason)) => {
                        shared.metrics.handshake_failed(Side::Unknown, reason);
                        tracing::info!(%from, reason = reason.as_str(), "peer port: refused a connection without a valid PROXY v2 header");
                    }
                    Err(_) => shared.metrics.handshake_failed(Side::Unknown, Reason::ProxyHeaderTimeout),
                }
                drop(connection);
            }
            .instrument(tracing::info_span!("peer", %from)),
        );
    }
}

/// Reads exactly the PROXY v2 header: the TLS bytes behind it stay in the socket.
async fn read_proxy_header(tcp: &mut TcpStream) -> Result<proxy_header::ProxyHeader, Reason> {
    let mut fixed = [0u8; proxy_header::FIXED_LEN];
    tcp.read_exact(&mut fixed)
        .await
        .map_err(|_| Reason::ProxyHeaderIo)?;
    let total = proxy_header::announced_len(&fixed).map_err(|_| Reason::BadProxyHeader)?;
    let mut header = vec![0u8; total];
    header[..proxy_header::FIXED_LEN].copy_from_slice(&fixed);
    tcp.read_exact(&mut header[proxy_header::FIXED_LEN..])
        .await
        .map_err(|_| Reason::ProxyHeaderIo)?;
    proxy_header::decode(&header).map_err(|_| Reason::BadProxyHeader)
}
