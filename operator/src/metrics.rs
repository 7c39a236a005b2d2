//! Operator metrics: reconciles, errors by reason and reconcile durations, per controller; the
//! leader flag; trust-anchor expiry; the object inventory ([`inventory`]); process CPU/memory.
//!
//! No globals (STYLE.md): [`Metrics::register`] registers into the `Registry` the operator's
//! `/metrics` serves, and the reconcilers reach the families through their `Context`.

pub mod inventory;

use std::sync::Arc;

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};
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
    pub leader: IntGauge,
    /// `tether_operator_trust_anchor_expiry_timestamp_seconds{anchor}`: when the CA certificate
    /// (`anchor="ca"`) stops being valid, Unix time; set once the anchors are loaded.
    pub trust_anchor_expiry: IntGaugeVec,
    /// DeviceStreams by phase, Devices by readiness, earliest device certificate expiry.
    pub inventory: Arc<InventoryCollector>,
}

/// Forwards to the shared [`InventoryCollector`] (the registry owns a box, the controllers a
/// handle through their `Context`).
struct SharedInventory(Arc<InventoryCollector>);

impl prometheus::core::Collector for SharedInventory {
    fn desc(&self) -> Vec<&prometheus::core::Desc> {
        self.0.desc()
    }
    fn collect(&self) -> Vec<prometheus::proto::MetricFamily> {
        self.0.collect()
    }
}

impl Metrics {
    /// Creates the operator's metric families and registers them, with the process CPU/memory
    /// collector, into `registry` (the one this operator's `/metrics` serves). Each operator gets
    /// its own registry, so two operators in one process (tests) keep separate numbers.
    ///
    /// # Errors
    /// When a family is already registered in `registry` (registering twice).
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let reconciles = IntCounterVec::new(
            Opts::new(
                "tether_operator_reconciles_total",
                "Reconciles run, per controller",
            ),
            &["controller"],
        )?;
        let errors = IntCounterVec::new(
            Opts::new(
                "tether_operator_reconcile_errors_total",
                "Reconcile errors, per controller and reason",
            ),
            &["controller", "reason"],
        )?;
        // Reconciles make a handful of API calls: 5 ms to ~10 s covers a fast local API server up
        // to a throttled one.
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "tether_operator_reconcile_duration_seconds",
                "Reconcile duration, per controller",
            )
            .buckets(vec![
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
            &["controller"],
        )?;
        let leader = IntGauge::new("tether_operator_leader", "1 while this replica holds the Lease")?;
        let trust_anchor_expiry = IntGaugeVec::new(
            Opts::new(
                "tether_operator_trust_anchor_expiry_timestamp_seconds",
                "When a trust anchor certificate expires (Unix time), per anchor",
            ),
            &["anchor"],
        )?;
        let inventory = Arc::new(InventoryCollector::new()?);
        registry.register(Box::new(reconciles.clone()))?;
        registry.register(Box::new(errors.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        registry.register(Box::new(leader.clone()))?;
        registry.register(Box::new(trust_anchor_expiry.clone()))?;
        registry.register(Box::new(SharedInventory(inventory.clone())))?;
        tether_net::admin::register_process_metrics(registry)?;
        Ok(Self {
            reconciles,
            errors,
            duration,
            leader,
            trust_anchor_expiry,
            inventory,
        })
    }

    /// Counts a reconcile of `controller` now and observes its duration when the timer drops.
    pub fn reconcile_timer(&self, controller: &str) -> ReconcileTimer {
        self.reconciles.with_label_values(&[controller]).inc();
        ReconcileTimer {
            histogram: self.duration.with_label_values(&[controller]),
            start: Instant::now(),
        }
    }

    /// Counts a reconcile error of `controller` with the error's stable `reason` label.
    pub fn record_error(&self, controller: &str, reason: &str) {
        self.errors.with_label_values(&[controller, reason]).inc();
    }
}

/// Observes a reconcile's duration on drop (controller-rs `ReconcileMeasurer`), so early
/// returns and errors are timed too.
pub struct ReconcileTimer {
    histogram: Histogram,
    start: Instant,
}

impl Drop for ReconcileTimer {
    fn drop(&mut self) {
        self.histogram.observe(self.start.elapsed().as_secs_f64());
    }
}
