//! Operator metrics: reconciles, errors by reason and reconcile durations, per controller; the
//! leader flag; trust-anchor expiry; the object inventory ([`inventory`]); process CPU/memory.
//!
//! One process-wide [`Metrics`] ([`metrics()`]) so every controller, including ones that only get
//! an `Arc<Context>`, can record without plumbing; [`registry()`] is what `/metrics` serves.

pub mod inventory;

use std::sync::{Arc, LazyLock};

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry};
use tokio::time::Instant;

use self::inventory::InventoryCollector;

/// The operator's metric families.
pub struct Metrics {
    /// `tether_operator_reconciles_total{controller}`.
    pub reconciles: IntCounterVec,
    /// `tether_operator_reconcile_errors_total{controller, reason}`; `reason` is an error's
    /// stable `metric_label()`.
    pub errors: IntCounterVec,
    /// `tether_operator_reconcile_duration_seconds{controller}`.
    pub duration: HistogramVec,
    /// `tether_operator_leader{}`: 1 while this replica holds the Lease.
    pub leader: prometheus::IntGauge,
    /// `tether_operator_trust_anchor_expiry_timestamp_seconds{anchor}`: when the CA certificate
    /// (`anchor="ca"`) stops being valid, Unix time; set once the anchors are loaded.
    pub trust_anchor_expiry: IntGaugeVec,
    /// DeviceStreams by phase, Devices by readiness, earliest device certificate expiry.
    pub inventory: Arc<InventoryCollector>,
}

/// Forwards to the shared [`InventoryCollector`] (the registry owns a box, the controllers a
/// handle).
struct SharedInventory(Arc<InventoryCollector>);

impl prometheus::core::Collector for SharedInventory {
    fn desc(&self) -> Vec<&prometheus::core::Desc> {
        self.0.desc()
    }
    fn collect(&self) -> Vec<prometheus::proto::MetricFamily> {
        self.0.collect()
    }
}

struct Global {
    registry: Registry,
    metrics: Metrics,
}

static GLOBAL: LazyLock<Global> = LazyLock::new(|| {
    let registry = Registry::new();
    // Names and label sets are constants, so construction and registration cannot fail unless a
    // name is registered twice, which this single initialiser rules out.
    let reconciles = IntCounterVec::new(
        Opts::new(
            "tether_operator_reconciles_total",
            "Reconciles run, per controller",
        ),
        &["controller"],
    )
    .expect("valid metric");
    let errors = IntCounterVec::new(
        Opts::new(
            "tether_operator_reconcile_errors_total",
            "Reconcile errors, per controller and reason",
        ),
        &["controller", "reason"],
    )
    .expect("valid metric");
    // Reconciles make a handful of API calls: 5 ms to ~10 s covers a fast local API server up to
    // a throttled one.
    let duration = HistogramVec::new(
        HistogramOpts::new(
            "tether_operator_reconcile_duration_seconds",
            "Reconcile duration, per controller",
        )
        .buckets(vec![
            0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
        ]),
        &["controller"],
    )
    .expect("valid metric");
    let leader = prometheus::IntGauge::new("tether_operator_leader", "1 while this replica holds the Lease")
        .expect("valid metric");
    let trust_anchor_expiry = IntGaugeVec::new(
        Opts::new(
            "tether_operator_trust_anchor_expiry_timestamp_seconds",
            "When a trust anchor certificate expires (Unix time), per anchor",
        ),
        &["anchor"],
    )
    .expect("valid metric");
    let inventory = Arc::new(InventoryCollector::new().expect("valid metrics"));
    for c in [
        Box::new(reconciles.clone()) as Box<dyn prometheus::core::Collector>,
        Box::new(errors.clone()),
        Box::new(duration.clone()),
        Box::new(leader.clone()),
        Box::new(trust_anchor_expiry.clone()),
        Box::new(SharedInventory(inventory.clone())),
    ] {
        registry.register(c).expect("metric registered once");
    }
    tether_net::admin::register_process_metrics(&registry).expect("process metrics registered once");
    Global {
        registry,
        metrics: Metrics {
            reconciles,
            errors,
            duration,
            leader,
            trust_anchor_expiry,
            inventory,
        },
    }
});

/// The process-wide metrics.
pub fn metrics() -> &'static Metrics {
    &GLOBAL.metrics
}

/// The registry served on `/metrics`.
pub fn registry() -> &'static Registry {
    &GLOBAL.registry
}

/// Counts a reconcile on creation and observes its duration on drop.
pub struct ReconcileTimer {
    controller: &'static str,
    start: Instant,
}

impl ReconcileTimer {
    /// Starts timing a reconcile of `controller`.
    pub fn start(controller: &'static str) -> Self {
        metrics().reconciles.with_label_values(&[controller]).inc();
        Self {
            controller,
            start: Instant::now(),
        }
    }
}

impl Drop for ReconcileTimer {
    fn drop(&mut self) {
        metrics()
            .duration
            .with_label_values(&[self.controller])
            .observe(self.start.elapsed().as_secs_f64());
    }
}

/// Counts a reconcile error of `controller` with the error's stable `reason` label.
pub fn record_error(controller: &'static str, reason: &'static str) {
    metrics().errors.with_label_values(&[controller, reason]).inc();
}
