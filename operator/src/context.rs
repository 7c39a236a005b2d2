//! State shared by every reconciler: one `Context` per operator (controller-rs style), so two
//! operators in one process share nothing.

use std::sync::Arc;

use kube::{Client, runtime::events::Recorder};

use crate::{backoff::Backoff, metrics::Metrics, trust::TrustAnchors};

/// Operator-wide settings.
#[derive(Clone, Debug)]
pub struct OperatorConfig {
    /// Namespace the operator runs in: trust-anchor Secrets live here.
    pub namespace: String,
    /// SPIFFE trust domain of device identities.
    pub trust_domain: String,
}

/// What every reconcile gets.
pub struct Context {
    /// Kubernetes client.
    pub client: Client,
    /// Publishes Kubernetes Events.
    pub recorder: Recorder,
    /// Operator-wide settings.
    pub config: OperatorConfig,
    /// The CA and token key (loaded or created at start).
    pub trust: TrustAnchors,
    /// This operator's metric families (registered in the registry its `/metrics` serves).
    pub metrics: Arc<Metrics>,
    /// Retry delays of failing objects.
    pub backoff: Backoff,
}

impl Context {
    /// A context with no failures recorded yet.
    pub fn new(
        client: Client,
        recorder: Recorder,
        config: OperatorConfig,
        trust: TrustAnchors,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            client,
            recorder,
            config,
            trust,
            metrics,
            backoff: Backoff::default(),
        }
    }
}
