//! DeviceStream reconciler: validates streams, computes their relay, mints their tokens and
//! expires them.
//!
//! observe (Device, token Secret, RelayPool) → validate (TTL window; Device exists, is enabled
//! and allows the port; a RelayPool exists) → build (claims, Secret `<name>-tether-token` with
//! `token`, `ca.crt`, `endpoint`, `server-name`; status) → apply (server-side apply, controller
//! owner reference) → status (phase, endpoint, relay, tokenSecret, expiresAt, conditions,
//! Events).
//!
//! The token is minted once: while the Secret holds a token it is reused, so a second reconcile
//! changes nothing. At `expiresAt` the stream moves to `Expired` and the Secret is deleted (the
//! token's own `exp` claim makes it useless anyway); a stream that fails later (Device disabled
//! or deleted) loses its Secret too. Deleting the DeviceStream deletes the Secret through its
//! owner reference.

pub mod apply;
pub mod build;
pub mod observe;
pub mod status;
pub mod validate;

use std::{sync::Arc, time::Duration};

use futures_util::StreamExt as _;
use k8s_openapi::{
    api::{core::v1::Secret, discovery::v1::EndpointSlice},
    jiff::Timestamp,
};
use kube::{
    Api, ResourceExt,
    core::DeserializeGuard,
    runtime::{
        Controller,
        controller::Action,
        reflector::ObjectRef,
        watcher::{self, Config},
    },
};
use tether_api::{Device, DeviceStream, RelayPool, conditions::reasons};
use tether_proto::name::{DeviceKey, NameError};
use tokio_util::sync::CancellationToken;
use tracing::instrument;

use crate::{Context, controller::ReconcileError, k8s};
use validate::Verdict;

/// Controller name (metrics label, logs).
pub const CONTROLLER: &str = "devicestream";

/// Why a DeviceStream reconcile failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The DeviceStream has no namespace or UID (cannot happen for stored objects).
    #[error("DeviceStream lacks {0}")]
    Incomplete(&'static str),
    /// The namespace or device name is not a DNS label.
    #[error("invalid device name: {0}")]
    InvalidName(#[source] NameError),
    /// Reading the Device, Secret or RelayPool failed.
    #[error("cannot read cluster state: {0}")]
    Observe(#[source] kube::Error),
    /// Applying or deleting the token Secret failed.
    #[error("cannot write the token Secret: {0}")]
    Apply(#[source] kube::Error),
    /// Patching the status failed.
    #[error("cannot patch DeviceStream status: {0}")]
    Status(#[source] kube::Error),
}

impl ReconcileError for Error {
    fn metric_label(&self) -> &'static str {
        match self {
            Self::Incomplete(_) => "incomplete",
            Self::InvalidName(_) => "invalid_name",
            Self::Observe(_) => "observe",
            Self::Apply(_) => "apply",
            Self::Status(_) => "status",
        }
    }
}

/// Reconciles one DeviceStream (wrapped by [`crate::controller::run`]: metrics, backoff).
///
/// # Errors
/// See [`Error`]; the controller retries with backoff.
#[instrument(skip(stream, ctx), fields(namespace = stream.namespace().unwrap_or_default(), name = stream.name_any()))]
pub async fn reconcile(stream: Arc<DeviceStream>, ctx: Arc<Context>) -> Result<Action, Error> {
    let (stream, ctx) = (stream.as_ref(), ctx.as_ref());
    let namespace = stream.namespace().ok_or(Error::Incomplete("a namespace"))?;
    let name = stream.name_any();
    let observed = observe::observe(ctx, &namespace, &name, &stream.spec.device).await?;
    let now = k8s::now_unix();

    let terms = validate::window(stream).and_then(|w| validate::idle_timeout(stream).map(|_| w));
    let (verdict, window) = match terms {
        Ok(w) => (
            validate::verdict(stream, w, observed.device.as_ref(), observed.relay.as_ref(), now),
            Some(w),
        ),
        Err(message) => (
            Verdict::Failed {
                reason: reasons::INVALID_SPEC,
                message,
            },
            None,
        ),
    };
    let secret_name = build::secret_name(&name);
    let mut route = None;
    match (&verdict, &observed.relay, window) {
        (Verdict::Serve, Some(relay), Some(window)) => {
            let key = DeviceKey::new(&namespace, &stream.spec.device).map_err(Error::InvalidName)?;
            let r = build::route(&key, relay);
            // Mint once: a token already in the Secret is kept while it is still right.
            let existing = validate::reusable_token(
                observed.secret.as_ref(),
                &ctx.trust.verifier(),
                stream,
                &relay.domain,
                now,
            );
            let token = match existing {
                Some(token) => token,
                None => {
                    let claims =
                        build::claims(stream, &key, relay, window, now).ok_or(Error::Incomplete("a UID"))?;
                    tracing::info!(expires_at = claims.expires_at, "minted stream token");
                    ctx.trust.signer.sign(&claims)
                }
            };
            let desired = build::token_secret(stream, &namespace, &token, ctx.trust.ca_pem(), &r);
            apply::apply_token(ctx, observed.secret.as_ref(), &desired).await?;
            route = Some(r);
        }
        (Verdict::Failed { .. } | Verdict::Expired, _, _)
            if apply::remove_token(ctx, observed.secret.as_ref(), &namespace, &secret_name).await? =>
        {
            tracing::info!(?verdict, "deleted token Secret");
        }
        _ => {}
    }
    let desired = build::status(stream, &verdict, window, route.as_ref(), Timestamp::now());
    status::update(ctx, stream, &desired).await?;

    Ok(match (verdict, window) {
        (Verdict::Expired, _) | (_, None) => Action::await_change(),
        // Wake up at expiry (+1 s so `now >= expires_at` holds) to move to Expired.
        (_, Some(w)) => Action::requeue(Duration::from_secs(
            (w.expires_at - k8s::now_unix() + 1).max(1).unsigned_abs(),
        )),
    })
}

/// Runs the DeviceStream controller until `shutdown` fires: watches DeviceStreams (in
/// `watch_namespace`, or all namespaces), their token Secrets, Devices (a changed Device
/// re-reconciles the streams naming it) and RelayPools in the operator's namespace.
pub async fn controller(ctx: Arc<Context>, watch_namespace: Option<String>, shutdown: CancellationToken) {
    let client = ctx.client.clone();
    // Secrets are watched only when scoped to one namespace: see the Device controller's docs
    // (cluster-wide Secret access is deliberately not granted).
    let (streams, secrets, devices) = match &watch_namespace {
        Some(ns) => (
            Api::<DeserializeGuard<DeviceStream>>::namespaced(client.clone(), ns),
            Some(Api::<Secret>::namespaced(client.clone(), ns)),
            Api::<DeserializeGuard<Device>>::namespaced(client.clone(), ns),
        ),
        None => (Api::all(client.clone()), None, Api::all(client.clone())),
    };
    let pools = Api::<RelayPool>::namespaced(client.clone(), &ctx.config.namespace);
    // A ring change (a relay ready or gone: the members Services' EndpointSlices) changes owners,
    // so every stream's `status.relay` is recomputed.
    let slices = Api::<EndpointSlice>::namespaced(client, &ctx.config.namespace);
    let pool_changes = futures_util::stream::select(
        watcher::watcher(pools, Config::default()).filter_map(|ev| async move { ev.ok().map(|_| ()) }),
        watcher::watcher(
            slices,
            Config::default().labels(tether_api::members::SERVICE_NAME_LABEL),
        )
        .filter_map(|ev| async move { ev.ok().map(|_| ()) }),
    );
    let controller = Controller::new(streams, Config::default());
    let store = controller.store();
    ctx.metrics.inventory.set_streams(store.clone());
    let controller = match secrets {
        Some(secrets) => controller.owns(
            secrets,
            Config::default().labels(&format!("{}={}", k8s::MANAGED_BY.0, k8s::MANAGED_BY.1)),
        ),
        None => controller,
    };
    let controller = controller
        .watches(
            devices,
            Config::default(),
            move |device: DeserializeGuard<Device>| {
                let ns = device.namespace();
                let name = device.name_any();
                store
                    .state()
                    .into_iter()
                    .filter(|s| s.namespace() == ns && s.0.as_ref().is_ok_and(|s| s.spec.device == name))
                    .map(|s| ObjectRef::from_obj(&*s))
                    .collect::<Vec<_>>()
            },
        )
        .reconcile_all_on(pool_changes);
    crate::controller::run(CONTROLLER, controller, ctx, shutdown, reconcile).await;
}
