//! Device connections: identity from the verified client certificate, the preface exchange, then a
//! long-lived HTTP/2 session (relay = client) kept alive by PING and registered by device key.

use std::sync::{Arc, atomic::Ordering};

use bytes::BytesMut;
use tether_net::{
    h2io,
    tls::uri_sans,
    window::{self, Counted, Estimator, WindowUpdates},
};
use tether_proto::{
    name::DeviceKey,
    preface::{Decoded, Preface, PrefaceReply},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    sync::Semaphore,
    time::timeout_at,
};
use tracing::Instrument;

use crate::{
    Shared,
    handshake::{Accepted, Failure, Tls, report},
    metrics::Side,
    reason::Reason,
    registry::DeviceSession,
};

const RELAY_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Serves one device connection until it closes, is replaced, or the relay stops.
pub(crate) async fn serve(shared: Arc<Shared>, accepted: Box<Accepted>) {
    // The handshake's futures are large (TLS stream, preface, HTTP/2 handshake) but short-lived.
    // Boxed, they are freed once the session runs, so the task that lives as long as the device
    // holds only the session: with thousands of idle devices this is most of the relay's memory.
    let Some(session) = Box::pin(establish(&shared, accepted)).await else {
        return;
    };
    run_session(shared, session).await;
}

/// An established device connection, ready to carry streams.
struct Established {
    device: DeviceKey,
    agent_version: String,
    send_request: h2::client::SendRequest<bytes::Bytes>,
    via: Option<std::net::IpAddr>,
    /// Boxed: a future stores its arguments and its locals separately, so moving the HTTP/2
    /// connection (2.5 KB) into the session's future inline would hold it twice.
    conn: std::pin::Pin<Box<h2::client::Connection<Counted<Tls>, bytes::Bytes>>>,
    /// The adaptive receive window: fed by the keepalive, applied to `conn`.
    window: (Estimator, WindowUpdates),
}

/// Admits the device (identity, preface) and runs the HTTP/2 handshake, within the handshake
/// deadline. Failures are reported here; `None` means the connection is over.
async fn establish(shared: &Shared, accepted: Box<Accepted>) -> Option<Established> {
    let Accepted {
        mut tls,
        sni_device,
        deadline,
        tls_timing: _,
        pending,
        origin,
    } = *accepted;
    let admitted = timeout_at(deadline, admit(shared, &mut tls, sni_device)).await;
    let (device, preface) = match admitted {
        Ok(Ok(ok)) => ok,
        Ok(Err(f)) => {
            // Tell the agent why, best effort, then close.
            let mut reply = BytesMut::new();
            PrefaceReply {
                accepted: false,
                message: f.detail.clone(),
                relay_version: RELAY_VERSION.into(),
            }
            .encode(&mut reply);
            let _ = timeout_at(deadline, async {
                let _ = tls.write_all(&reply).await;
                let _ = tls.shutdown().await;
            })
            .await;
            report(shared, f);
            return None;
        }
        Err(_) => {
            report(
                shared,
                Failure::new(Side::Device, Reason::HandshakeTimeout, "device preface"),
            );
            return None;
        }
    };
    tether_net::dial::tune_device_socket(tls.get_ref().0.inner());
    let (io, estimator, updates) = window::measure(tls);
    let handshake = timeout_at(
        deadline,
        h2io::client_builder(shared.config.limits.max_streams_per_device).handshake(io),
    )
    .await;
    drop(pending);
    match handshake {
        Ok(Ok((send_request, conn))) => Some(Established {
            device,
            agent_version: preface.agent_version,
            send_request,
            via: origin.via,
            conn: Box::pin(conn),
            window: (estimator, updates),
        }),
        Ok(Err(e)) => {
            report(shared, Failure::new(Side::Device, Reason::Http2, e));
            None
        }
        Err(_) => {
            report(
                shared,
                Failure::new(Side::Device, Reason::HandshakeTimeout, "HTTP/2 handshake"),
            );
            None
        }
    }
}

/// Registers the session and keeps it alive until the connection ends, the keepalive finds the
/// peer dead, or the session is replaced or the relay stops.
async fn run_session(shared: Arc<Shared>, established: Established) {
    let Established {
        device,
        agent_version,
        send_request,
        via,
        mut conn,
        window: (estimator, mut updates),
    } = established;
    let limits = &shared.config.limits;
    let Some(ping_pong) = conn.ping_pong() else {
        return report(
            &shared,
            Failure::new(Side::Internal, Reason::Internal, "h2 ping handle taken"),
        );
    };
    let id = shared.next_session_id.fetch_add(1, Ordering::Relaxed);
    let closed = shared.hard_stop.child_token();
    let session = Arc::new(DeviceSession {
        id,
        send_request,
        streams: Arc::new(Semaphore::new(limits.max_streams_per_device as usize)),
        closed: closed.clone(),
        agent_version: agent_version.clone(),
        since: std::time::Instant::now(),
        via,
    });
    let span = tracing::info_span!("device", device = %device, session = id);
    async {
        match shared.registry.insert(device.clone(), session) {
            Ok(Some(_)) => {
                shared.metrics.sessions_replaced.inc();
                tracing::info!("device reconnected; replaced its previous session");
            }
            Ok(None) => {}
            // Revoked between admission and now: never registered.
            Err(e) => return report(&shared, Failure::new(Side::Device, Reason::DeviceRevoked, e)),
        }
        shared
            .metrics
            .connected_devices
            .set(shared.registry.device_count() as i64);
        // Debug formatting: the version is validated printable, and `?` escapes it regardless.
        tracing::info!(?agent_version, "device connected");
        if let Some(board) = &shared.status {
            board.device(&device, true, &agent_version);
        }
        let keepalive = limits.keepalive(ping_pong, estimator);
        tokio::pin!(keepalive);
        let why = loop {
            tokio::select! {
                res = &mut conn => break match res {
                    Ok(()) => "connection closed".to_owned(),
                    Err(e) => format!("connection error: {e}"),
                },
                dead = &mut keepalive => break dead.to_string(),
                _ = closed.cancelled() => break "session replaced or revoked, or relay stopping".to_owned(),
                w = updates.next() => updates.apply_client(&mut conn, w),
            }
        };
        let was_current = shared.registry.remove(&device, id);
        shared
            .metrics
            .connected_devices
            .set(shared.registry.device_count() as i64);
        // Only the session that was current, on the relay that still owns the device, reports a
        // disconnect: a replaced session's successor, or a moved device's new owner, reports it.
        if let Some(board) = &shared.status
            && was_current
            && shared.fleet.as_ref().is_none_or(|f| f.owns(&device))
        {
            board.device(&device, false, &agent_version);
        }
        tracing::info!(reason = %why, "device disconnected");
    }
    .instrument(span)
    .await;
}

/// Reads the preface and checks the certificate identity against the SNI.
async fn admit(
    shared: &Shared,
    tls: &mut Tls,
    sni_device: Result<DeviceKey, tether_proto::name::NameError>,
) -> Result<(DeviceKey, Preface), Failure> {
    let preface = read_preface(tls).await?;
    let sni_device = sni_device.map_err(|e| Failure::new(Side::Device, Reason::BadSni, e))?;
    let leaf = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .ok_or_else(|| {
            Failure::new(
                Side::Device,
                Reason::NoClientCertificate,
                "a device must present its client certificate",
            )
        })?;
    let trust_domain = &shared.config.trust_domain;
    let identities: Vec<DeviceKey> = uri_sans(leaf)
        .iter()
        .filter_map(|uri| DeviceKey::from_spiffe_id(uri, trust_domain).ok())
        .collect();
    match identities.as_slice() {
        [identity] if *identity == sni_device => {}
        [identity] => {
            return Err(Failure::new(
                Side::Device,
                Reason::IdentityMismatch,
                format!(
                    "certificate identity {identity} does not match the device named by SNI, {sni_device}"
                ),
            ));
        }
        _ => {
            return Err(Failure::new(
                Side::Device,
                Reason::BadIdentity,
                format!(
                    "certificate must carry exactly one device identity spiffe://{trust_domain}/ns/<ns>/device/<name>"
                ),
            ));
        }
    }
    if shared.registry.is_device_revoked(&sni_device) {
        return Err(Failure::new(
            Side::Device,
            Reason::DeviceRevoked,
            format!("device {sni_device} is revoked (disabled, deleted, or listed in the revocation file)"),
        ));
    }
    let mut reply = BytesMut::new();
    PrefaceReply {
        accepted: true,
        message: String::new(),
        relay_version: RELAY_VERSION.into(),
    }
    .encode(&mut reply);
    tls.write_all(&reply)
        .await
        .map_err(|e| Failure::new(Side::Device, Reason::Io, e))?;
    tls.flush()
        .await
        .map_err(|e| Failure::new(Side::Device, Reason::Io, e))?;
    Ok((sni_device, preface))
}

/// Reads exactly the preface: the HTTP/2 bytes that follow must stay in the stream for h2.
async fn read_preface(tls: &mut Tls) -> Result<Preface, Failure> {
    let io = |e: std::io::Error| Failure::new(Side::Device, Reason::Io, e);
    let mut header = [0u8; tether_proto::preface::HEADER_LEN];
    tls.read_exact(&mut header).await.map_err(io)?;
    // Validates magic, version and length before reading the body.
    let total = Preface::frame_len(&header).map_err(|e| Failure::new(Side::Device, Reason::BadPreface, e))?;
    let mut buf = BytesMut::zeroed(total);
    buf[..header.len()].copy_from_slice(&header);
    tls.read_exact(&mut buf[header.len()..]).await.map_err(io)?;
    match Preface::decode(&mut buf) {
        Ok(Decoded::Complete(p)) => Ok(p),
        Ok(Decoded::Incomplete) => Err(Failure::new(
            Side::Device,
            Reason::BadPreface,
            "incomplete preface",
        )),
        Err(e) => Err(Failure::new(Side::Device, Reason::BadPreface, e)),
    }
}
