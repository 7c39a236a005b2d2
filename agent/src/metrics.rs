//! The agent's Prometheus metrics. They are always counted (a few atomics); they are served only
//! when the agent is built with the `metrics` feature and `metrics-listen` is set, so the default
//! agent binary carries no HTTP server.

use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry};

/// Stream results counted in `tether_agent_streams_total{result}`: `ok` or the refusal reason the
/// relay receives in `tether-error`.
pub const STREAM_RESULTS: [&str; 4] = [
    "ok",
    crate::forward::ERROR_PORT_NOT_ALLOWED,
    crate::forward::ERROR_TARGET_UNREACHABLE,
    crate::forward::ERROR_BAD_REQUEST,
];

/// All agent metrics, registered in their own [`Registry`].
#[derive(Clone)]
pub struct AgentMetrics {
    /// What `/metrics` serves.
    pub registry: Registry,
    /// 1 while the agent has a session with a relay.
    pub connected: IntGauge,
    /// Relay connection attempts by result (`ok` or the error's `metric_label`).
    pub connection_attempts: IntCounterVec,
    /// Streams currently spliced to a local target.
    pub active_streams: IntGauge,
    /// Streams by result.
    pub streams: IntCounterVec,
    /// Bytes written to local targets (counted when a stream ends).
    pub bytes_to_target: IntCounter,
    /// Bytes read from local targets (counted when a stream ends).
    pub bytes_from_target: IntCounter,
}

impl std::fmt::Debug for AgentMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentMetrics").finish_non_exhaustive()
    }
}

impl AgentMetrics {
    /// Creates and registers the metrics.
    ///
    /// # Errors
    /// Only on invalid metric names (constants here).
    pub fn new() -> prometheus::Result<Self> {
        let registry = Registry::new();
        let bytes = IntCounterVec::new(
            Opts::new(
                "tether_agent_bytes_total",
                "Bytes the agent moved between tunnels and local targets, by direction (counted when a stream ends).",
            ),
            &["direction"],
        )?;
        let m = Self {
            connected: IntGauge::new(
                "tether_agent_relay_connected",
                "1 while the agent has a session with a relay.",
            )?,
            connection_attempts: IntCounterVec::new(
                Opts::new(
                    "tether_agent_relay_connection_attempts_total",
                    "Attempts to connect to the relay, by result (ok or error kind).",
                ),
                &["result"],
            )?,
            active_streams: IntGauge::new(
                "tether_agent_active_streams",
                "Streams currently spliced to a local target.",
            )?,
            streams: IntCounterVec::new(
                Opts::new(
                    "tether_agent_streams_total",
                    "Streams the relay opened, by result (ok or refusal reason).",
                ),
                &["result"],
            )?,
            bytes_to_target: bytes.with_label_values(&["to_target"]),
            bytes_from_target: bytes.with_label_values(&["from_target"]),
            registry,
        };
        // Every result exists from the start, so rate() and dashboards see zeros, not gaps.
        for r in STREAM_RESULTS {
            m.streams.with_label_values(&[r]);
        }
        m.connection_attempts.with_label_values(&["ok"]);
        let r = &m.registry;
        r.register(Box::new(bytes))?;
        r.register(Box::new(m.connected.clone()))?;
        r.register(Box::new(m.connection_attempts.clone()))?;
        r.register(Box::new(m.active_streams.clone()))?;
        r.register(Box::new(m.streams.clone()))?;
        let info = IntGauge::with_opts(
            Opts::new("tether_agent_build_info", "Build information.")
                .const_label("version", env!("CARGO_PKG_VERSION")),
        )?;
        info.set(1);
        r.register(Box::new(info))?;
        Ok(m)
    }
}
