//! The first phase of every connection: read the ClientHello, decide where it goes (here, or the
//! owning relay: [`crate::forward`]), terminate TLS, and hand it to the device or service path by
//! ALPN — all under one deadline.

use std::{net::SocketAddr, sync::Arc, time::SystemTime};

use bytes::{Bytes, BytesMut};
use prometheus::IntGauge;
use tether_proto::{
    ALPN_DEVICE, ALPN_SERVICE_H2,
    client_hello::{self, Peeked},
    name::{DeviceKey, NameError},
};
use tokio::{
    io::AsyncReadExt,
    net::TcpStream,
    time::{Instant, timeout_at},
};
use tokio_rustls::server::TlsStream;

use tether_net::rewind::Rewind;

use crate::{
    Shared, device,
    fleet::Route,
    forward,
    listener::Admission,
    metrics::Side,
    mux,
    reason::{ForwardFailure, Reason},
    service,
};

/// Where a connection came from.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Origin {
    /// The client's address: the TCP peer, or for a forwarded connection the PROXY header's source.
    pub client: SocketAddr,
    /// The relay that forwarded it (received on the peer port): served here, never forwarded
    /// again. `None` for a direct connection.
    pub via: Option<std::net::IpAddr>,
}

/// The TLS stream type of an accepted connection.
pub(crate) type Tls = TlsStream<Rewind<TcpStream>>;

/// Why a connection failed before it became a session or a stream.
#[derive(Debug)]
pub(crate) struct Failure {
    pub side: Side,
    /// Low-cardinality metric label.
    pub reason: Reason,
    pub detail: String,
}

impl Failure {
    pub fn new(side: Side, reason: Reason, detail: impl ToString) -> Self {
        Self {
            side,
            reason,
            detail: detail.to_string(),
        }
    }
}

/// Holds a pending-handshake slot; released when the handshake phase ends.
pub(crate) struct Pending {
    _permit: Admission,
    gauge: IntGauge,
}

impl Drop for Pending {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

/// A connection after TLS, before its device or service handshake.
pub(crate) struct Accepted {
    pub tls: Tls,
    /// The device named by SNI, or why the SNI is unusable (reported to the peer after TLS, so it
    /// gets a readable error instead of a dropped handshake).
    pub sni_device: Result<DeviceKey, NameError>,
    /// When the handshake phase must be over.
    pub deadline: Instant,
    /// When the connection was accepted and when its TLS handshake finished (the stream's trace
    /// gets a `tls` span for them once the request names the trace).
    pub tls_timing: (SystemTime, SystemTime),
    pub pending: Pending,
    pub origin: Origin,
}

/// Runs a connection from its first byte to its end.
pub(crate) async fn handle(shared: Arc<Shared>, tcp: TcpStream, permit: Admission, origin: Origin) {
    shared.metrics.pending_handshakes.inc();
    let pending = Pending {
        _permit: permit,
        gauge: shared.metrics.pending_handshakes.clone(),
    };
    let deadline = Instant::now() + shared.config.limits.handshake_timeout;
    let accepted_at = SystemTime::now();
    // Boxed straight away: the device or service future takes it, and a TLS stream kept in a
    // local here as well would be stored twice for the connection's lifetime.
    let accepted = match timeout_at(deadline, Box::pin(accept_tls(&shared, tcp, origin))).await {
        Ok(Ok(Some((tls, sni_device)))) => Box::new(Accepted {
            tls,
            sni_device,
            deadline,
            tls_timing: (accepted_at, SystemTime::now()),
            pending,
            origin,
        }),
        // Forwarded to the owning relay, and over.
        Ok(Ok(None)) => return,
        Ok(Err(f)) => return report(&shared, f),
        Err(_) => {
            return report(
                &shared,
                Failure::new(Side::Unknown, Reason::HandshakeTimeout, "TLS handshake"),
            );
        }
    };
    // Boxed: a service connection's future is large, and sharing the task with it would make
    // every idle device connection's task as large (see device::serve).
    match accepted.tls.get_ref().1.alpn_protocol() {
        Some(ALPN_DEVICE) => device::serve(shared, accepted).await,
        Some(ALPN_SERVICE_H2) => Box::pin(mux::serve(shared, accepted)).await,
        _ => Box::pin(service::serve(shared, accepted)).await,
    }
}

/// Logs and counts a failure.
pub(crate) fn report(shared: &Shared, f: Failure) {
    shared.metrics.handshake_failed(f.side, f.reason);
    tracing::info!(side = f.side.label(), reason = f.reason.as_str(), detail = %f.detail, "connection refused");
}

/// Peeks the ClientHello, then either forwards the connection to the device's owner (`None`) or
/// terminates TLS here.
async fn accept_tls(
    shared: &Shared,
    mut tcp: TcpStream,
    origin: Origin,
) -> Result<Option<(Tls, Result<DeviceKey, NameError>)>, Failure> {
    let (peeked, hello) = peek_client_hello(&mut tcp).await?;
    let side = if hello.alpn.iter().any(|p| p == ALPN_DEVICE) {
        Side::Device
    } else {
        Side::Service
    };
    let sni_device = match hello.server_name.as_deref() {
        Some(sni) => DeviceKey::from_server_name(sni, &shared.config.relay_domain),
        None => Err(NameError::NotUnderRelayDomain {
            server_name: String::new(),
            relay_domain: shared.config.relay_domain.clone(),
        }),
    };
    // A draining relay takes no new device sessions (an agent's reconnect must land on a relay
    // that stays); services are still served, or forwarded, until the grace period ends.
    if side == Side::Device && shared.draining.load(std::sync::atomic::Ordering::Relaxed) {
        return Err(Failure::new(side, Reason::RelayDraining, "the relay is draining"));
    }
    // The routing point. A connection another relay forwarded is served here whatever this
    // relay's ring says, so two rings that disagree for a moment cannot make a loop.
    let mut peeked = peeked;
    if let (Some(fleet), Ok(device), false) = (&shared.fleet, &sni_device, origin.via.is_some()) {
        match fleet.route(device) {
            Route::Local => {}
            Route::Forward { owner, peer } => {
                match forward::to_owner(shared, tcp, peeked, &origin, &owner, peer).await {
                    Ok(()) => return Ok(None),
                    // The owner is unreachable (gone, but still in the ring for a moment). A
                    // device is better served here until the ring catches up (it is moved then);
                    // a service is refused so that its client retries and reaches the new owner.
                    Err((back, bytes)) if side == Side::Device => (tcp, peeked) = (back, bytes),
                    Err(_) => {
                        return Err(Failure::new(
                            side,
                            Reason::OwnerUnreachable,
                            format!("owner {owner} at {peer}"),
                        ));
                    }
                }
            }
            Route::OwnerUnreachable => {
                shared
                    .metrics
                    .forward_failures
                    .with_label_values(&[ForwardFailure::NoPeerPort.as_str()])
                    .inc();
            }
        }
    }
    // Devices get a configuration without session resumption (their certificate is checked on
    // every connection); the choice follows the offered ALPN, so a hello without `tether/1`
    // cannot negotiate the device protocol.
    let acceptor = if side == Side::Device {
        &shared.device_acceptor
    } else {
        &shared.acceptor
    };
    let tls = acceptor
        .accept(Rewind::new(peeked, tcp))
        .await
        .map_err(|e| Failure::new(side, Reason::Tls, e))?;
    Ok(Some((tls, sni_device)))
}

/// Reads until `buf` holds a whole ClientHello (bounded by the parser), without consuming
/// anything TLS needs: the bytes are replayed into rustls or forwarded as they are.
async fn peek_client_hello(tcp: &mut TcpStream) -> Result<(Bytes, client_hello::ClientHelloInfo), Failure> {
    let mut buf = BytesMut::with_capacity(2048);
    // Each byte is parsed once: re-parsing the whole buffer per read was quadratic.
    let mut reassembler = client_hello::Reassembler::default();
    let hello = loop {
        match reassembler.push(&buf) {
            Ok(Peeked::Complete(hello)) => break hello,
            Ok(Peeked::Incomplete) => {}
            Err(e) => return Err(Failure::new(Side::Unknown, Reason::BadClientHello, e)),
        }
        match tcp.read_buf(&mut buf).await {
            Ok(0) => {
                return Err(Failure::new(
                    Side::Unknown,
                    Reason::ClosedEarly,
                    "peer closed before ClientHello",
                ));
            }
            Ok(_) => {}
            Err(e) => return Err(Failure::new(Side::Unknown, Reason::Io, e)),
        }
    };
    Ok((buf.freeze(), hello))
}

#[cfg(test)]
mod tests {
    /// The size of the future an async fn of four arguments returns, without calling it.
    fn future_size<A, B, C, D, Fut>(_: &impl FnOnce(A, B, C, D) -> Fut) -> usize {
        std::mem::size_of::<Fut>()
    }

    /// Every connection's task is as large as `handle`'s future, for as long as the connection
    /// lives: with 10,000 idle devices each KiB here is 10 MiB of relay memory (benchmark
    /// scenario 5). The handshake and service phases are boxed so the task holds only what an
    /// established device session needs; unboxed, it was 9.8 KB. The bound was 1 KiB until the
    /// adaptive window (`tether_net::window`) added its estimator to the keepalive and its
    /// update branch to the session loop (1,672 bytes): ~0.65 KiB per idle device, 2.6% of the
    /// 24.7 KiB measured per idle device, for WAN throughput 3x higher.
    #[test]
    fn the_per_connection_task_stays_small() {
        let size = future_size(&super::handle);
        assert!(size <= 1792, "handle's future grew to {size} bytes");
    }
}
