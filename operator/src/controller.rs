//! The controller wiring the Device, DeviceStream and RelayPool reconcilers share: the reconcile
//! wrapper (timer, objects that do not deserialize, backoff reset), the error policy (log, error
//! metric, per-object backoff) and running a `kube::runtime::Controller` until shutdown.
//!
//! A reconciler is then only `async fn reconcile(obj: Arc<K>, ctx: Arc<Context>) -> Result<Action,
//! E>` plus the watches it needs.

use std::{fmt::Debug, future::Future, sync::Arc};

use futures_util::StreamExt as _;
use kube::{
    Resource, ResourceExt,
    core::DeserializeGuard,
    runtime::{Controller, controller::Action},
};
use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::Context;

/// A reconcile error: any error with a stable, low-cardinality metric label.
pub trait ReconcileError: std::error::Error + Send + Sync + 'static {
    /// The `reason` label of `tether_operator_reconcile_errors_total`.
    fn metric_label(&self) -> &'static str;
}

/// Runs `controller` (already given its watches) with `reconcile` until `shutdown` fires, then
/// lets in-flight reconciles finish (`graceful_shutdown_on`).
///
/// Around `reconcile`: a [`crate::metrics::ReconcileTimer`] (count and duration per
/// `name`); an object that does not deserialize waits for its next change (the schema should make
/// that impossible, and retrying cannot help); success resets the object's backoff. On error:
/// a warning, the error counted by its [`ReconcileError::metric_label`], and a requeue after the
/// object's next backoff delay (1 s doubling to [`crate::backoff::MAX_BACKOFF`]).
pub async fn run<K, E, F, Fut>(
    name: &'static str,
    controller: Controller<DeserializeGuard<K>>,
    ctx: Arc<Context>,
    shutdown: CancellationToken,
    reconcile: F,
) where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    E: ReconcileError,
    F: Fn(Arc<K>, Arc<Context>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Action, E>> + Send + 'static,
{
    let reconciler = move |guard: Arc<DeserializeGuard<K>>, ctx: Arc<Context>| {
        let timer = ctx.metrics.reconcile_timer(name);
        let work = match &guard.0 {
            Ok(obj) => Some(reconcile(Arc::new(obj.clone()), ctx.clone())),
            Err(invalid) => {
                tracing::warn!(
                    controller = name,
                    name = guard.name_any(),
                    namespace = guard.namespace().unwrap_or_default(),
                    error = %invalid.error,
                    "object does not deserialize; waiting for a change"
                );
                None
            }
        };
        async move {
            let _timer = timer;
            let Some(work) = work else {
                return Ok(Action::await_change());
            };
            let action = work.await?;
            ctx.backoff
                .succeeded(name, guard.namespace().as_deref(), &guard.name_any());
            Ok::<_, E>(action)
        }
    };
    let error_policy = move |guard: Arc<DeserializeGuard<K>>, error: &E, ctx: Arc<Context>| {
        let (namespace, object) = (guard.namespace(), guard.name_any());
        tracing::warn!(
            controller = name,
            name = object,
            namespace = namespace.as_deref().unwrap_or_default(),
            label = error.metric_label(),
            %error,
            "reconcile failed; retrying with backoff"
        );
        ctx.metrics.record_error(name, error.metric_label());
        Action::requeue(ctx.backoff.failed(name, namespace.as_deref(), &object))
    };
    controller
        .graceful_shutdown_on(shutdown.cancelled_owned())
        .run(reconciler, error_policy, ctx)
        .for_each(|res| async move {
            match res {
                Ok((obj, _)) => tracing::debug!(%obj, "reconciled"),
                // Reconcile errors were logged by the error policy; the rest are watch hiccups
                // the controller retries itself.
                Err(e) => tracing::debug!(error = %e, "controller event"),
            }
        })
        .instrument(tracing::info_span!("controller", controller = name))
        .await;
    tracing::info!(controller = name, "controller stopped");
}
