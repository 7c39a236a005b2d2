//! Logging and trace export for Tether's binaries: one `tracing` subscriber with a log filter, and,
//! when built with the `otel` feature AND configured by the standard OpenTelemetry variables, an
//! OTLP/HTTP trace exporter (tracing-opentelemetry).
//!
//! Export is on only when `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`)
//! is set and neither `OTEL_SDK_DISABLED=true` nor `OTEL_TRACES_EXPORTER=none` says otherwise.
//! `OTEL_SERVICE_NAME` names the process (default: the binary's name), `OTEL_TRACES_SAMPLER`
//! (+ `_ARG`) picks the sampler (default `parentbased_always_on`), `OTEL_BSP_*` tune batching.
//! With the variables unset no layer is installed and nothing is exported: spans cost what they
//! cost for logging, nothing more.
//!
//! Trace context crosses processes as a W3C `traceparent` (`00-<trace id>-<span id>-<flags>`):
//! [`traceparent`] formats the current span's, [`set_remote_parent`] joins one. Token values are
//! never recorded in spans (no span in Tether has a token field).

use std::time::SystemTime;

use tracing::Span;
#[cfg(feature = "otel")]
static PROVIDER: std::sync::OnceLock<opentelemetry_sdk::trace::SdkTracerProvider> =
    std::sync::OnceLock::new();
use tracing_subscriber::{EnvFilter, Layer, layer::SubscriberExt, util::SubscriberInitExt};

/// Keeps the trace exporter alive; [`Telemetry::shutdown`] (or drop) flushes spans not yet sent,
/// which short-lived processes such as `tether connect --stdio` need.
#[must_use = "dropping it stops trace export"]
pub struct Telemetry {
    #[cfg(feature = "otel")]
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

impl Telemetry {
    /// Whether spans are being exported.
    pub fn exporting(&self) -> bool {
        #[cfg(feature = "otel")]
        return self.provider.is_some();
        #[cfg(not(feature = "otel"))]
        false
    }

    /// Flushes and stops the exporter (bounded by the SDK's export timeout).
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        #[cfg(feature = "otel")]
        if let Some(p) = self.provider.take()
            && let Err(e) = p.shutdown()
        {
            eprintln!("trace export shutdown: {e}");
        }
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Installs the global subscriber: logs filtered by `filter` (to stderr when `stderr`, else
/// stdout), plus OTLP export when configured (see the module docs). `service` is the default
/// `service.name`. A second call (tests) leaves the first subscriber in place.
pub fn init(filter: EnvFilter, stderr: bool, service: &'static str) -> Telemetry {
    // Colour codes only on a terminal: in files, the journal and log collectors they are noise,
    // and a device-controlled string must not be able to pass escape sequences along.
    use std::io::IsTerminal as _;
    let fmt = if stderr {
        tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(std::io::stderr().is_terminal())
            .with_filter(filter)
            .boxed()
    } else {
        tracing_subscriber::fmt::layer()
            .with_ansi(std::io::stdout().is_terminal())
            .with_filter(filter)
            .boxed()
    };
    #[cfg(feature = "otel")]
    {
        let (otel, provider) = match otel::provider(service) {
            Ok(Some(p)) => {
                let _ = PROVIDER.set(p.clone());
                (Some(otel::layer(&p, service)), Some(p))
            }
            Ok(None) => (None, None),
            Err(e) => {
                eprintln!("{service}: trace export disabled: {e}");
                (None, None)
            }
        };
        let _ = tracing_subscriber::registry().with(fmt).with(otel).try_init();
        Telemetry { provider }
    }
    #[cfg(not(feature = "otel"))]
    {
        let _ = service;
        let _ = tracing_subscriber::registry().with(fmt).try_init();
        Telemetry {}
    }
}

/// Exports the spans finished so far, blocking until sent (or the export timeout). For processes
/// that may be killed rather than stopped: ssh ends its ProxyCommand with SIGHUP.
pub fn flush() {
    #[cfg(feature = "otel")]
    if let Some(p) = PROVIDER.get() {
        let _ = p.force_flush();
    }
}

/// The W3C `traceparent` of `span`, when spans are exported and `span` is recorded.
pub fn traceparent(span: &Span) -> Option<String> {
    #[cfg(feature = "otel")]
    return otel::traceparent(span);
    #[cfg(not(feature = "otel"))]
    {
        let _ = span;
        None
    }
}

/// Makes `span` (not yet entered) a child of the remote span named by `traceparent`. Malformed
/// values are ignored: trace context is advisory and comes from the peer.
pub fn set_remote_parent(span: &Span, traceparent: &str) {
    #[cfg(feature = "otel")]
    otel::set_remote_parent(span, traceparent);
    #[cfg(not(feature = "otel"))]
    let _ = (span, traceparent);
}

/// Records a finished child span of `parent` that ran from `start` to `end` (for phases that
/// happen before the trace context is known, such as the TLS handshake that precedes the
/// request carrying `traceparent`).
pub fn record_span(parent: &Span, name: &'static str, start: SystemTime, end: SystemTime) {
    #[cfg(feature = "otel")]
    otel::record_span(parent, name, start, end);
    #[cfg(not(feature = "otel"))]
    let _ = (parent, name, start, end);
}

/// Parses a W3C `traceparent` (version 00): trace id, parent span id, flags. `None` for anything
/// else, including the all-zero ids the spec calls invalid.
pub fn parse_traceparent(value: &str) -> Option<([u8; 16], [u8; 8], u8)> {
    let mut parts = value.trim().split('-');
    let (version, trace, span, flags) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if version != "00" || parts.next().is_some() || trace.len() != 32 || span.len() != 16 || flags.len() != 2
    {
        return None;
    }
    let hex = |s: &str, out: &mut [u8]| -> Option<()> {
        for (i, b) in out.iter_mut().enumerate() {
            *b = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        Some(())
    };
    let (mut t, mut s, mut f) = ([0u8; 16], [0u8; 8], [0u8; 1]);
    hex(trace, &mut t)?;
    hex(span, &mut s)?;
    hex(flags, &mut f)?;
    (t != [0; 16] && s != [0; 8]).then_some((t, s, f[0]))
}

#[cfg(feature = "otel")]
mod otel {
    use std::time::SystemTime;

    use opentelemetry::{
        Context, KeyValue,
        trace::{
            Span as _, SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState, Tracer as _,
            TracerProvider as _,
        },
    };
    use opentelemetry_sdk::{Resource, trace::SdkTracerProvider};
    use tracing::Span;
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    use tracing_subscriber::{Layer, filter::filter_fn, registry::LookupSpan};

    fn env(name: &str) -> Option<String> {
        std::env::var(name).ok().filter(|v| !v.trim().is_empty())
    }

    /// A provider when the environment asks for export, `None` when it does not.
    pub(super) fn provider(service: &'static str) -> Result<Option<SdkTracerProvider>, String> {
        let endpoint =
            env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").or_else(|| env("OTEL_EXPORTER_OTLP_ENDPOINT"));
        let disabled = env("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true"))
            || env("OTEL_TRACES_EXPORTER").is_some_and(|v| v.eq_ignore_ascii_case("none"));
        if endpoint.is_none() || disabled {
            return Ok(None);
        }
        let protocol =
            env("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL").or_else(|| env("OTEL_EXPORTER_OTLP_PROTOCOL"));
        if let Some(p) = protocol.filter(|p| p != "http/protobuf") {
            return Err(format!(
                "OTEL_EXPORTER_OTLP_PROTOCOL={p} is not supported; Tether exports http/protobuf (port 4318)"
            ));
        }
        // The exporter reads the endpoint, headers and timeout variables itself.
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .build()
            .map_err(|e| e.to_string())?;
        let mut resource = Resource::builder();
        if env("OTEL_SERVICE_NAME").is_none() {
            resource = resource.with_service_name(service);
        }
        let resource = resource
            .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
            .build();
        // The builder's default sampler honours OTEL_TRACES_SAMPLER; the batch processor
        // exports from its own thread and honours OTEL_BSP_*.
        Ok(Some(
            SdkTracerProvider::builder()
                .with_resource(resource)
                .with_batch_exporter(exporter)
                .build(),
        ))
    }

    pub(super) fn layer<S>(
        provider: &SdkTracerProvider,
        service: &'static str,
    ) -> Box<dyn Layer<S> + Send + Sync>
    where
        S: tracing::Subscriber + for<'a> LookupSpan<'a> + Send + Sync,
    {
        opentelemetry::global::set_tracer_provider(provider.clone());
        // Tether's own info-level spans only: RUST_LOG governs the log output, not this, and the
        // HTTP client the exporter uses must not trace its own exports.
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer(service))
            .with_filter(filter_fn(|m| {
                m.target().starts_with("tether") && *m.level() <= tracing::Level::INFO
            }))
            .boxed()
    }

    pub(super) fn traceparent(span: &Span) -> Option<String> {
        let cx = span.context();
        let sc = cx.span().span_context().clone();
        sc.is_valid().then(|| {
            format!(
                "00-{}-{}-{:02x}",
                sc.trace_id(),
                sc.span_id(),
                sc.trace_flags().to_u8()
            )
        })
    }

    pub(super) fn set_remote_parent(span: &Span, traceparent: &str) {
        let Some((trace, parent, flags)) = super::parse_traceparent(traceparent) else {
            return;
        };
        let sc = SpanContext::new(
            TraceId::from_bytes(trace),
            SpanId::from_bytes(parent),
            TraceFlags::new(flags),
            true,
            TraceState::default(),
        );
        let _ = span.set_parent(Context::new().with_remote_span_context(sc));
    }

    pub(super) fn record_span(parent: &Span, name: &'static str, start: SystemTime, end: SystemTime) {
        let cx = parent.context();
        if !cx.span().span_context().is_valid() {
            return;
        }
        let tracer = opentelemetry::global::tracer("tether");
        let mut span = tracer
            .span_builder(name)
            .with_start_time(start)
            .start_with_context(&tracer, &cx);
        span.end_with_timestamp(end);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_parsing() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let (t, s, f) = parse_traceparent(tp).unwrap();
        assert_eq!(t[0], 0x4b);
        assert_eq!(s[7], 0xb7);
        assert_eq!(f, 1);
        for bad in [
            "",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",
            "00-4bf92f3577b34da6a3ce929d0e0e47zz-00f067aa0ba902b7-01",
        ] {
            assert!(parse_traceparent(bad).is_none(), "{bad}");
        }
    }

    /// Without the variables (and without the feature) nothing is exported and no context
    /// exists to propagate.
    #[test]
    fn off_without_configuration() {
        let t = Telemetry {
            #[cfg(feature = "otel")]
            provider: None,
        };
        assert!(!t.exporting());
        assert_eq!(traceparent(&tracing::info_span!("x")), None);
    }
}
