//! The admin HTTP server of the relay and the operator, on its own port: `/metrics` (the
//! component's Prometheus registry), `/ready` (the component's readiness flag: false while starting
//! or draining, or for an operator without its trust anchors) and `/live`.
//!
//! The admin port must never take the data port down: connections are capped
//! ([`AdminLimits::max_connections`], so it holds a bounded number of file descriptors and the
//! rest stay for the data port), a request's headers must arrive within
//! [`AdminLimits::header_read_timeout`] (hyper only enforces this with a timer configured), and
//! no connection lives longer than [`AdminLimits::connection_timeout`]. Before these bounds, 100
//! half-sent requests stayed open indefinitely and, under a low descriptor limit, 306 of them
//! stopped the relay's data port from accepting.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::{body::Incoming, service::service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus::{Encoder, Registry, TextEncoder, process_collector::ProcessCollector};
use tokio::{net::TcpListener, sync::Semaphore};
use tokio_util::sync::CancellationToken;

/// Registers the standard `process_*` metrics of this process (`process_cpu_seconds_total`,
/// `process_resident_memory_bytes`, `process_open_fds`, ...) in `registry`: the dashboards' CPU
/// and memory panels read them. On non-Linux systems the collector reports nothing.
///
/// # Errors
/// When `registry` already holds process metrics.
pub fn register_process_metrics(registry: &Registry) -> prometheus::Result<()> {
    registry.register(Box::new(ProcessCollector::for_self()))
}

/// Bounds of the admin server. The defaults suit a Prometheus scraping every few seconds plus
/// kubelet probes, with room to spare.
#[derive(Clone, Debug)]
pub struct AdminLimits {
    /// Connections served at once; beyond it new ones are closed at once. 64 is an order of
    /// magnitude above what scrapers and probes use.
    pub max_connections: usize,
    /// Time a client has to send a request's headers.
    pub header_read_timeout: Duration,
    /// Longest life of one connection (keep-alive included): a scraper simply reconnects.
    pub connection_timeout: Duration,
}

impl Default for AdminLimits {
    fn default() -> Self {
        Self {
            max_connections: 64,
            header_read_timeout: Duration::from_secs(5),
            connection_timeout: Duration::from_secs(60),
        }
    }
}

/// Serves the admin endpoints with [`AdminLimits::default`] until `shutdown` fires. `ready` is
/// false while starting or draining.
pub async fn serve(
    listener: TcpListener,
    registry: Registry,
    ready: Arc<AtomicBool>,
    shutdown: CancellationToken,
) {
    serve_with(listener, registry, ready, shutdown, AdminLimits::default()).await;
}

/// Serves the admin endpoints within `limits` until `shutdown` fires.
pub async fn serve_with(
    listener: TcpListener,
    registry: Registry,
    ready: Arc<AtomicBool>,
    shutdown: CancellationToken,
    limits: AdminLimits,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    loop {
        let (stream, peer): (_, SocketAddr) = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            // Closing at once frees the descriptor now; queueing would hold it.
            tracing::debug!(%peer, "admin connection refused: limit reached");
            drop(stream);
            continue;
        };
        let registry = registry.clone();
        let ready = ready.clone();
        let (header_timeout, lifetime) = (limits.header_read_timeout, limits.connection_timeout);
        let stop = shutdown.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<Incoming>| {
                let answer = route(req.uri().path(), &registry, &ready);
                async move { Ok::<_, std::convert::Infallible>(answer) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout)
                .serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                _ = conn => {}
                () = tokio::time::sleep(lifetime) => {}
                () = stop.cancelled() => {}
            }
            drop(slot);
        });
    }
}

fn route(path: &str, registry: &Registry, ready: &AtomicBool) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match path {
        "/metrics" => {
            let mut buf = Vec::new();
            let encoder = TextEncoder::new();
            match encoder.encode(&registry.gather(), &mut buf) {
                Ok(()) => (StatusCode::OK, encoder.format_type().to_owned(), buf),
                Err(e) => (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "text/plain".into(),
                    e.to_string().into_bytes(),
                ),
            }
        }
        "/ready" if ready.load(Ordering::Relaxed) => {
            (StatusCode::OK, "text/plain".into(), b"ready\n".to_vec())
        }
        "/ready" => (
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain".into(),
            b"not ready\n".to_vec(),
        ),
        "/live" => (StatusCode::OK, "text/plain".into(), b"live\n".to_vec()),
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain".into(),
            b"not found\n".to_vec(),
        ),
    };
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    if let Ok(v) = http::HeaderValue::from_str(&content_type) {
        resp.headers_mut().insert(http::header::CONTENT_TYPE, v);
    }
    resp
}

/// Parses Prometheus text exposition (what `/metrics` serves) into `series → value`, where a
/// series is written as the encoder writes it: `name` or `name{label="value",...}` (labels in
/// the encoder's order, which is sorted by name). Comment lines are skipped.
///
/// For tests and tools that compare exact values rather than substrings.
///
/// # Errors
/// A sample line without a value, or with a value that is not a number, names the line.
pub fn parse_exposition(text: &str) -> Result<std::collections::BTreeMap<String, f64>, String> {
    let mut out = std::collections::BTreeMap::new();
    for line in text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        // The value is the last space-separated field (label values may contain spaces).
        let (series, value) = line
            .rsplit_once(' ')
            .ok_or_else(|| format!("sample without a value: {line:?}"))?;
        let value = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().map_err(|_| format!("bad value in {line:?}"))?,
        };
        out.insert(series.to_owned(), value);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        net::TcpStream,
    };

    use super::*;

    /// Whether the server closes `conn` within `within`.
    async fn closed(conn: &mut TcpStream, within: Duration) -> bool {
        let mut buf = [0u8; 256];
        loop {
            match tokio::time::timeout(within, conn.read(&mut buf)).await {
                Ok(Ok(0) | Err(_)) => return true,
                Ok(Ok(_)) => {}
                Err(_) => return false,
            }
        }
    }

    #[test]
    fn parses_what_the_encoder_writes() {
        let registry = Registry::new();
        let c =
            prometheus::IntCounterVec::new(prometheus::Opts::new("t_total", "help"), &["a", "b"]).unwrap();
        registry.register(Box::new(c.clone())).unwrap();
        c.with_label_values(&["x y", "z"]).inc_by(7);
        register_process_metrics(&registry).unwrap();
        let mut buf = Vec::new();
        TextEncoder::new().encode(&registry.gather(), &mut buf).unwrap();
        let parsed = parse_exposition(std::str::from_utf8(&buf).unwrap()).unwrap();
        assert_eq!(parsed.get(r#"t_total{a="x y",b="z"}"#), Some(&7.0));
        // The process collector reports this process's resident memory on Linux.
        #[cfg(target_os = "linux")]
        assert!(parsed["process_resident_memory_bytes"] > 0.0);
        assert!(parse_exposition("lonely").is_err());
        assert!(parse_exposition("m{a=\"b\"} NaNx").is_err());
    }

    #[tokio::test]
    async fn half_sent_requests_time_out_and_connections_are_capped() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let limits = AdminLimits {
            max_connections: 4,
            header_read_timeout: Duration::from_millis(500),
            connection_timeout: Duration::from_secs(30),
        };
        tokio::spawn(serve_with(
            listener,
            Registry::new(),
            Arc::new(AtomicBool::new(true)),
            stop.clone(),
            limits,
        ));
        let mut half_sent = Vec::new();
        for _ in 0..4 {
            let mut c = TcpStream::connect(addr).await.unwrap();
            c.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
                .await
                .unwrap();
            half_sent.push(c);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        // A fifth connection is closed at once instead of holding a descriptor.
        let mut fifth = TcpStream::connect(addr).await.unwrap();
        assert!(
            closed(&mut fifth, Duration::from_millis(300)).await,
            "over-limit connection kept"
        );
        // The half-sent requests are cut at the header deadline.
        for c in &mut half_sent {
            assert!(
                closed(c, Duration::from_secs(3)).await,
                "half-sent request kept open"
            );
        }
        // Then the slots are free again.
        let mut c = TcpStream::connect(addr).await.unwrap();
        c.write_all(b"GET /live HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut answer = String::new();
        c.read_to_string(&mut answer).await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        stop.cancel();
    }
}
