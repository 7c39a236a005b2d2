//! Service streams: one CONNECT request with a stream token, then one HTTP/2 stream to the
//! device, spliced byte for byte. [`serve`] is the HTTP/1.1 form (one TLS connection per stream);
//! [`crate::mux`] serves the HTTP/2 form with the same [`open`] and [`run`].

use std::{
    sync::Arc,
    time::{Duration, Instant as StdInstant},
};

use bytes::{Bytes, BytesMut};
use http::Request;
use tether_net::h2io::H2Stream;
use tether_proto::{
    HEADER_ERROR, HEADER_STREAM_UID, HEADER_TARGET_PORT, HEADER_TRACEPARENT,
    head::{self, ConnectRequest, HeadError, Parsed},
    name::DeviceKey,
    token::StreamClaims,
};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    time::timeout_at,
};
use tracing::Instrument;

use crate::{
    Shared,
    handshake::{Accepted, Failure, Tls, report},
    metrics::Side,
    reason::{Cut, Reason},
    registry::{ConnectionGuard, StreamRefusal},
    splice::{Activity, FirstByte, Metered, splice},
    unix_now,
};

/// A refusal sent to the service as an HTTP answer.
pub(crate) struct Refusal {
    /// Metric label and `Tether-Error` value; it has an HTTP status.
    pub reason: Reason,
    pub message: String,
}

impl Refusal {
    pub fn new(reason: Reason, message: impl ToString) -> Self {
        debug_assert!(reason.http_status().is_some(), "{reason} is not a stream refusal");
        Self {
            reason,
            message: message.to_string(),
        }
    }

    pub fn status(&self) -> u16 {
        // Every reason passed to `new` has a status (checked there, and by reason.rs's tests).
        self.reason.http_status().unwrap_or(500)
    }
}

/// Serves one HTTP/1.1 service connection: request head, authorization, stream setup, splice.
pub(crate) async fn serve(shared: Arc<Shared>, accepted: Box<Accepted>) {
    let Accepted {
        mut tls,
        sni_device,
        deadline,
        tls_timing,
        pending,
        ..
    } = *accepted;
    let (request, leftover) = match timeout_at(deadline, read_request(&mut tls)).await {
        Ok(Ok(ok)) => ok,
        Ok(Err(ReadError::Head(e))) => return refuse(&shared, tls, head_refusal(e)).await,
        Ok(Err(ReadError::Io(f))) => return report(&shared, f),
        Err(_) => {
            return report(
                &shared,
                Failure::new(Side::Service, Reason::HandshakeTimeout, "request head"),
            );
        }
    };
    drop(pending);
    let span = stream_span(&request, Some(tls_timing));
    async move {
        let opened = match open(&shared, &sni_device, &request).await {
            Ok(opened) => opened,
            Err(r) => return refuse(&shared, tls, r).await,
        };
        if let Err(e) = tls.write_all(head::encode_established()).await {
            return report(&shared, Failure::new(Side::Service, Reason::Io, e));
        }
        let _ = tls.flush().await;
        run(&shared, opened, tls, leftover).await;
    }
    .instrument(span)
    .await;
}

/// The refusal for a request that could not be parsed.
pub(crate) fn head_refusal(e: HeadError) -> Refusal {
    Refusal::new(Reason::from(&e), e)
}

/// The span of one stream (one tunnelled TCP connection), child of the client's trace; with the
/// TLS handshake as a `tls` span when the stream paid for one (HTTP/1.1; an HTTP/2 stream reuses
/// its connection's).
pub(crate) fn stream_span(
    request: &ConnectRequest,
    tls_timing: Option<(std::time::SystemTime, std::time::SystemTime)>,
) -> tracing::Span {
    let span = tracing::info_span!("stream", device = %request.device, port = request.port, uid = tracing::field::Empty);
    if let Some(tp) = request.traceparent.as_deref() {
        tether_net::telemetry::set_remote_parent(&span, tp);
    }
    if let Some((accepted, done)) = tls_timing {
        tether_net::telemetry::record_span(&span, "tls", accepted, done);
    }
    span
}

/// A stream the relay accepted: authorized, holding its connection and device slots, with its
/// HTTP/2 stream to the agent open. The caller answers the service (200) and then [`run`]s it.
pub(crate) struct Opened {
    claims: StreamClaims,
    guard: ConnectionGuard,
    device: H2Stream,
    _permit: tokio::sync::OwnedSemaphorePermit,
    started: StdInstant,
}

/// Sets a stream up, for either protocol: token check (SNI, target, token agree), the stream's
/// connection slot (revocation, `maxConnections`), the device's session and stream slot, and
/// the agent's answer. Runs inside the stream's span.
///
/// # Errors
/// The [`Refusal`] to answer; the caller sends it in its protocol's form and calls
/// [`refused`].
pub(crate) async fn open(
    shared: &Shared,
    sni_device: &Result<DeviceKey, tether_proto::name::NameError>,
    request: &ConnectRequest,
) -> Result<Opened, Refusal> {
    let started = StdInstant::now();
    let claims = tracing::info_span!("token_check").in_scope(|| authorize(shared, sni_device, request))?;
    tracing::Span::current().record("uid", claims.stream_uid.as_str());
    let spec_limit = shared
        .stream_limits
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(&claims.stream_uid)
        .copied();
    let limit = spec_limit
        .or(claims.max_connections)
        .unwrap_or(shared.config.limits.default_max_connections_per_stream);
    let guard = match shared.registry.open_connection(&claims.stream_uid, limit) {
        Ok(g) => g,
        Err(StreamRefusal::Revoked) => {
            return Err(Refusal::new(Reason::StreamRevoked, "the stream has been revoked"));
        }
        Err(StreamRefusal::TooManyConnections) => {
            let msg = format!("the stream already has its maximum of {limit} concurrent connections");
            return Err(Refusal::new(Reason::StreamConnectionLimit, msg));
        }
    };
    let (device, permit) = open_stream(shared, request, &claims).await?;
    Ok(Opened {
        claims,
        guard,
        device,
        _permit: permit,
        started,
    })
}

/// Splices an accepted stream with the service side (`service`: the TLS connection after the
/// HTTP/1.1 answer, or the service's HTTP/2 stream) until it ends or the relay cuts it;
/// `leftover` are bytes the service sent behind its request head. Counts and logs the stream.
pub(crate) async fn run<S>(shared: &Shared, opened: Opened, service: S, leftover: Bytes)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let Opened {
        claims,
        guard,
        device: mut h2,
        _permit,
        started,
    } = opened;
    let established_at = std::time::SystemTime::now();
    let m = &shared.metrics;
    let counters = shared.status.as_ref().map(|board| {
        let c = board.stream(&claims.stream_uid);
        board.connection(&claims.stream_uid, &c, true);
        c
    });
    m.stream_setups.with_label_values(&["ok"]).inc();
    m.setup_seconds.observe(started.elapsed().as_secs_f64());
    m.active_streams.inc();
    tracing::info!(setup_us = started.elapsed().as_micros() as u64, "stream open");
    let first_byte = Arc::new(std::sync::OnceLock::new());
    // Bytes the client sent right behind its request head belong to the tunnel.
    let result = async {
        if !leftover.is_empty() {
            m.bytes_to_device.inc_by(leftover.len() as u64);
            if let Some(c) = &counters {
                c.to_device
                    .fetch_add(leftover.len() as u64, std::sync::atomic::Ordering::Relaxed);
            }
            h2.write_all(&leftover).await?;
        }
        let activity = Arc::new(Activity::default());
        let mut service = Metered::new(service, m.bytes_to_device.clone(), activity.clone())
            .with_stream_counter(counters.as_ref().map(|c| c.to_device.clone()));
        let mut device = Metered::new(
            FirstByte::new(h2, first_byte.clone()),
            m.bytes_to_service.clone(),
            activity.clone(),
        )
        .with_stream_counter(counters.as_ref().map(|c| c.from_device.clone()));
        let idle = async {
            match claims.idle_timeout {
                Some(secs) => activity.idle_for(Duration::from_secs(secs)).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            res = splice(&mut service, &mut device) => res.map(Ended::Done),
            _ = guard.revoked().cancelled() => Ok(Ended::Cut(Cut::Revoked)),
            _ = shared.hard_stop.cancelled() => Ok(Ended::Cut(Cut::RelayShutdown)),
            _ = idle => Ok(Ended::Cut(Cut::IdleTimeout)),
        }
    }
    .await;
    m.active_streams.dec();
    if let (Some(board), Some(c)) = (&shared.status, &counters) {
        board.connection(&claims.stream_uid, c, false);
    }
    if let Some(at) = first_byte.get() {
        tether_net::telemetry::record_span(&tracing::Span::current(), "first_byte", established_at, *at);
    }
    match result {
        Ok(Ended::Done((up, down))) => tracing::info!(to_device = up, to_service = down, "stream closed"),
        Ok(Ended::Cut(why)) => {
            m.streams_cut.with_label_values(&[why.as_str()]).inc();
            tracing::info!(reason = why.as_str(), "stream closed by the relay");
        }
        Err(e) => tracing::info!(error = %e, "stream ended with an error"),
    }
    drop(guard);
}

/// How an established connection ended.
enum Ended {
    /// Both directions finished: bytes to the device, bytes to the service.
    Done((u64, u64)),
    /// The relay closed it (revocation, idle timeout, shutdown).
    Cut(Cut),
}

enum ReadError {
    Head(HeadError),
    Io(Failure),
}

/// Reads the request head; returns it and any bytes that followed it.
async fn read_request(tls: &mut Tls) -> Result<(ConnectRequest, Bytes), ReadError> {
    let mut buf = BytesMut::with_capacity(1024);
    loop {
        match head::parse_connect(&buf) {
            Ok(Parsed::Complete(req, used)) => return Ok((req, buf.split_off(used).freeze())),
            Ok(Parsed::Incomplete) => {}
            Err(e) => return Err(ReadError::Head(e)),
        }
        // Never buffer more than the head limit (plus one read's slack).
        let room = head::MAX_HEAD_LEN + 1 - buf.len().min(head::MAX_HEAD_LEN);
        let mut chunk = vec![0u8; room.min(4096)];
        match tls.read(&mut chunk).await {
            Ok(0) => {
                return Err(ReadError::Io(Failure::new(
                    Side::Service,
                    Reason::ClosedEarly,
                    "closed before request head",
                )));
            }
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) => return Err(ReadError::Io(Failure::new(Side::Service, Reason::Io, e))),
        }
    }
}

/// Verifies the token and that SNI, CONNECT target and token name the same device and port.
fn authorize(
    shared: &Shared,
    sni_device: &Result<DeviceKey, tether_proto::name::NameError>,
    request: &ConnectRequest,
) -> Result<StreamClaims, Refusal> {
    let sni_device = sni_device.as_ref().map_err(|e| Refusal::new(Reason::BadSni, e))?;
    if *sni_device != request.device {
        return Err(Refusal::new(
            Reason::SniMismatch,
            format!(
                "TLS server name names {sni_device} but CONNECT names {}: a connection serves only the \
                 device its server name names (open another connection for {})",
                request.device, request.device
            ),
        ));
    }
    let config = &shared.config;
    let claims = shared
        .tokens
        .verify(
            &request.token,
            &config.relay_domain,
            unix_now(),
            config.limits.clock_skew.as_secs(),
        )
        .map_err(|e| Refusal::new(Reason::from(&e), e))?;
    if claims.namespace != request.device.namespace() || claims.device != request.device.name() {
        return Err(Refusal::new(
            Reason::TokenWrongDevice,
            format!(
                "the token is for {}/{}, not {}",
                claims.namespace, claims.device, request.device
            ),
        ));
    }
    if claims.port != request.port {
        return Err(Refusal::new(
            Reason::TokenWrongPort,
            format!("the token is for port {}, not {}", claims.port, request.port),
        ));
    }
    Ok(claims)
}

/// Waits for the device, takes a stream slot and opens an HTTP/2 stream to the agent.
async fn open_stream(
    shared: &Shared,
    request: &ConnectRequest,
    claims: &StreamClaims,
) -> Result<(H2Stream, tokio::sync::OwnedSemaphorePermit), Refusal> {
    let limits = &shared.config.limits;
    let session = wait_for_device(shared, &request.device, limits.device_connect_timeout)
        .instrument(tracing::info_span!("device_wait"))
        .await?;
    let permit = session.streams.clone().try_acquire_owned().map_err(|_| {
        Refusal::new(
            Reason::DeviceStreamLimit,
            format!(
                "device has its maximum of {} streams",
                limits.max_streams_per_device
            ),
        )
    })?;
    let dial_span = tracing::info_span!("agent_dial");
    let mut req = Request::post("/")
        .header(HEADER_TARGET_PORT, request.port)
        .header(HEADER_STREAM_UID, &claims.stream_uid);
    // The agent's span joins this relay's `agent_dial` span; a relay that exports no traces
    // passes the client's context through unchanged.
    let traceparent = tether_net::telemetry::traceparent(&dial_span).or_else(|| request.traceparent.clone());
    if let Some(tp) = traceparent.as_deref().filter(|tp| tp.len() <= 256) {
        req = req.header(HEADER_TRACEPARENT, tp);
    }
    let req = req.body(()).map_err(|e| Refusal::new(Reason::BadRequest, e))?;
    let deadline = tokio::time::Instant::now() + limits.stream_setup_timeout;
    let gone = |e: h2::Error| {
        Refusal::new(
            Reason::DeviceSessionLost,
            format!("device connection failed: {e}"),
        )
    };
    let send_request = session.send_request.clone();
    drop(session);
    let opened = timeout_at(deadline, async {
        let mut ready = send_request.ready().await.map_err(gone)?;
        let (response, send) = ready.send_request(req, false).map_err(gone)?;
        let response = response.await.map_err(gone)?;
        Ok::<_, Refusal>((response, send))
    })
    .instrument(dial_span)
    .await
    .map_err(|_| {
        Refusal::new(
            Reason::DeviceTimeout,
            format!("device did not answer within {:?}", limits.stream_setup_timeout),
        )
    })??;
    let (response, send) = opened;
    let status = response.status().as_u16();
    if status != 200 {
        let agent_reason = response
            .headers()
            .get(HEADER_ERROR)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("refused")
            .chars()
            .take(64)
            .collect::<String>();
        return Err(match agent_reason.as_str() {
            "port_not_allowed" => Refusal::new(
                Reason::DevicePortNotAllowed,
                format!("the device does not allow port {}", request.port),
            ),
            "target_unreachable" => Refusal::new(
                Reason::DeviceTargetUnreachable,
                format!("the device could not reach its local port {}", request.port),
            ),
            _ => Refusal::new(
                Reason::DeviceRefused,
                format!("the device refused the stream: HTTP {status} {agent_reason}"),
            ),
        });
    }
    Ok((H2Stream::new(send, response.into_body()), permit))
}

/// Waits up to `timeout` for `device`'s session. In a fleet, a device that another member owns
/// (now, or since a ring change during the wait) will connect there, not here: the service is
/// told at once (`device_moving`, 503) so its client retries and reaches the owner.
async fn wait_for_device(
    shared: &Shared,
    device: &DeviceKey,
    timeout: Duration,
) -> Result<Arc<crate::registry::DeviceSession>, Refusal> {
    let moving = || {
        Refusal::new(
            Reason::DeviceMoving,
            format!("device {device} is served by another relay now; retry"),
        )
    };
    let Some(fleet) = &shared.fleet else {
        return shared
            .registry
            .wait_for(device, timeout)
            .await
            .ok_or_else(|| not_connected(device, timeout));
    };
    let deadline = tokio::time::Instant::now() + timeout;
    let mut ring = fleet.subscribe();
    loop {
        if let Some(session) = shared.registry.get(device) {
            return Ok(session);
        }
        if !fleet.owns(device) {
            return Err(moving());
        }
        let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
        tokio::select! {
            found = shared.registry.wait_for(device, remaining) => {
                return found.ok_or_else(|| not_connected(device, timeout));
            }
            _ = ring.changed() => {}
        }
    }
}

fn not_connected(device: &DeviceKey, timeout: Duration) -> Refusal {
    Refusal::new(
        Reason::DeviceNotConnected,
        format!("device {device} did not connect within {timeout:?}"),
    )
}

/// Counts and logs a refused stream setup.
pub(crate) fn refused(shared: &Shared, r: &Refusal) {
    let (status, reason) = (r.status(), r.reason.as_str());
    shared.metrics.stream_setups.with_label_values(&[reason]).inc();
    tracing::info!(status, reason, detail = %r.message, "stream refused");
}

/// Answers a refusal over HTTP/1.1 and closes.
async fn refuse(shared: &Shared, mut tls: Tls, r: Refusal) {
    refused(shared, &r);
    let (status, reason) = (r.status(), r.reason.as_str());
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), async {
        let _ = tls
            .write_all(&head::encode_refusal(status, reason, &r.message))
            .await;
        let _ = tls.shutdown().await;
    })
    .await;
}
