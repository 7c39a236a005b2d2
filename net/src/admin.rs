//! The admin HTTP server of the relay and the operator, on its own port: `/metrics` (the
//! component's Prometheus registry), `/ready` (the component's readiness flag: false while starting
//! or draining, or for an operator without its trust anchors) and `/live`.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::{body::Incoming, service::service_fn};
use hyper_util::rt::TokioIo;
use prometheus::{Encoder, Registry, TextEncoder, process_collector::ProcessCollector};
use tokio::net::TcpListener;
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

/// Serves the admin endpoints until `shutdown` fires. `ready` is false while starting or draining.
pub async fn serve(
    listener: TcpListener,
    registry: Registry,
    ready: Arc<AtomicBool>,
    shutdown: CancellationToken,
) {
    loop {
        let (stream, _peer): (_, SocketAddr) = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let registry = registry.clone();
        let ready = ready.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<Incoming>| {
                let answer = route(req.uri().path(), &registry, &ready);
                async move { Ok::<_, std::convert::Infallible>(answer) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
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
    use super::*;

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
}
