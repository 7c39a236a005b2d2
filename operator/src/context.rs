//! State shared by every reconciler.

use kube::{Client, runtime::events::Recorder};

use crate::trust::TrustAnchors;

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
}
