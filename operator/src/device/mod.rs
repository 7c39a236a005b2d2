//! Device reconciler: issues and renews each Device's client certificate.
//!
//! observe (credentials Secret, RelayPool) → validate (is the certificate missing, due for
//! renewal or from another CA?) → build (Secret `<name>-tether-credentials` with `tls.crt`,
//! `tls.key`, `ca.crt`, `device`, `relay-endpoint`, `relay-domain`; status) → apply (server-side
//! apply, controller owner reference; skipped when unchanged) → status (conditions `Ready`,
//! `CredentialsIssued`, `observedGeneration`, Events).
//!
//! A certificate is issued once and kept until `renewBeforeDays` before its expiry; the
//! reconciler requeues itself for that moment. A disabled Device keeps its credentials (the
//! agent may stay connected) but is `Ready=False/DeviceDisabled`, and its streams fail.

pub mod apply;
pub mod build;
pub mod observe;
pub mod status;
pub mod validate;

use std::{sync::Arc, time::Duration};

use futures_util::StreamExt as _;
use k8s_openapi::{api::core::v1::Secret, jiff::Timestamp};
use kube::{
    Api, ResourceExt,
    core::DeserializeGuard,
    runtime::{
        Controller,
        controller::Action,
        events::EventType,
        watcher::{self, Config},
    },
};
use tether_api::{Device, RelayPool};
use tether_proto::name::{DeviceKey, NameError};
use tokio_util::sync::CancellationToken;
use tracing::instrument;

use crate::{Context, controller::ReconcileError, k8s};
use validate::{CertAction, IssueReason};

/// Controller name (metrics label, logs).
pub const CONTROLLER: &str = "device";
/// Longest wait before a Device is looked at again even without changes: renewal is scheduled
/// exactly, this only bounds the effect of clock jumps.
const MAX_REQUEUE: Duration = Duration::from_secs(12 * 3600);

/// Why a Device reconcile failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The Device has no namespace (cannot happen for a namespaced kind).
    #[error("Device has no namespace")]
    NotNamespaced,
    /// The Device's namespace or name is not a DNS label.
    #[error("invalid device name: {0}")]
    InvalidName(#[source] NameError),
    /// Reading the Secret or RelayPool failed.
    #[error("cannot read cluster state: {0}")]
    Observe(#[source] kube::Error),
    /// Issuing the certificate failed.
    #[error("cannot issue the device certificate: {0}")]
    Issue(#[source] tether_net::pki::PkiError),
    /// Applying the credentials Secret failed.
    #[error("cannot apply the credentials Secret: {0}")]
    Apply(#[source] kube::Error),
    /// Patching the status failed.
    #[error("cannot patch Device status: {0}")]
    Status(#[source] kube::Error),
}

impl ReconcileError for Error {
    fn metric_label(&self) -> &'static str {
        match self {
            Self::NotNamespaced => "not_namespaced",
            Self::InvalidName(_) => "invalid_name",
            Self::Observe(_) => "observe",
            Self::Issue(_) => "issue",
            Self::Apply(_) => "apply",
            Self::Status(_) => "status",
        }
    }
}

/// Reconciles one Device (wrapped by [`crate::controller::run`]: metrics, backoff).
///
/// # Errors
/// See [`Error`]; the controller retries with backoff.
#[instrument(skip(device, ctx), fields(namespace = device.namespace().unwrap_or_default(), name = device.name_any()))]
pub async fn reconcile(device: Arc<Device>, ctx: Arc<Context>) -> Result<Action, Error> {
    let (device, ctx) = (device.as_ref(), ctx.as_ref());
    let namespace = device.namespace().ok_or(Error::NotNamespaced)?;
    let name = device.name_any();
    let key = DeviceKey::new(&namespace, &name).map_err(Error::InvalidName)?;

    let observed = observe::observe(ctx, &namespace, &name).await?;
    let now = k8s::now_unix();
    let settings = &device.spec.credentials;
    let (cert_pem, key_pem, not_after, issued) =
        match validate::cert_action(settings, observed.secret.as_ref(), ctx.trust.ca_pem(), now) {
            CertAction::Keep {
                cert_pem,
                key_pem,
                not_after,
            } => (cert_pem, key_pem, not_after, None),
            CertAction::Issue(reason) => {
                let validity = Duration::from_secs(u64::from(settings.validity_days) * 86_400);
                let cert = ctx
                    .trust
                    .ca
                    .issue_device(&key, &ctx.config.trust_domain, validity)
                    .map_err(Error::Issue)?;
                let not_after = tether_net::pki::not_after_unix(&cert.cert_pem).map_err(Error::Issue)?;
                (cert.cert_pem, cert.key_pem, not_after, Some(reason))
            }
        };
    let desired = build::credentials_secret(
        device,
        &key,
        &cert_pem,
        &key_pem,
        ctx.trust.ca_pem(),
        observed.relay.as_ref(),
    );
    apply::apply_credentials(ctx, observed.secret.as_ref(), &desired).await?;
    if let Some(reason) = issued {
        let (event, verb) = match reason {
            IssueReason::Renew => ("CredentialsRenewed", "renewed"),
            IssueReason::Missing => ("CredentialsIssued", "issued"),
            IssueReason::CaChanged | IssueReason::Unreadable => ("CredentialsReissued", "reissued"),
        };
        tracing::info!(?reason, not_after, "device certificate {verb}");
        let note = format!(
            "client certificate {verb} into Secret {}, expires at {}",
            desired.name_any(),
            rfc3339(not_after)
        );
        k8s::publish(ctx, device, EventType::Normal, event, "IssueCredentials", note).await;
    }

    let status = build::status(device, observed.relay.as_ref(), not_after, Timestamp::now());
    status::update(ctx, device, &status).await?;

    let until_renewal = validate::renew_at(not_after, settings)
        .saturating_sub(k8s::now_unix())
        .max(1);
    Ok(Action::requeue(
        Duration::from_secs(until_renewal.unsigned_abs()).min(MAX_REQUEUE),
    ))
}

fn rfc3339(unix: i64) -> String {
    Timestamp::from_second(unix)
        .map(|t| t.to_string())
        .unwrap_or_else(|_| unix.to_string())
}

/// Runs the Device controller until `shutdown` fires: watches Devices (in `watch_namespace`, or
/// all namespaces), RelayPools in the operator's namespace (a changed relay endpoint
/// re-reconciles every Device), and, when scoped to one namespace, the Secrets Devices own.
///
/// Watching Secrets in every namespace would need cluster-wide Secret read access, which the
/// shipped RBAC deliberately does not grant (deploy/operator/rbac.yaml: Secret rights are bound
/// per device namespace). Unscoped, a changed or deleted credentials Secret is therefore repaired
/// at the Device's next reconcile (any Device change, a RelayPool change, or the renewal requeue)
/// rather than at once.
pub async fn controller(ctx: Arc<Context>, watch_namespace: Option<String>, shutdown: CancellationToken) {
    let client = ctx.client.clone();
    let (devices, secrets) = match &watch_namespace {
        Some(ns) => (
            Api::<DeserializeGuard<Device>>::namespaced(client.clone(), ns),
            Some(Api::<Secret>::namespaced(client.clone(), ns)),
        ),
        None => (Api::all(client.clone()), None),
    };
    let pools = Api::<RelayPool>::namespaced(client, &ctx.config.namespace);
    let pool_changes =
        watcher::watcher(pools, Config::default()).filter_map(|ev| async move { ev.ok().map(|_| ()) });
    let mut controller = Controller::new(devices, Config::default());
    ctx.metrics.inventory.set_devices(controller.store());
    if let Some(secrets) = secrets {
        controller = controller.owns(
            secrets,
            Config::default().labels(&format!("{}={}", k8s::MANAGED_BY.0, k8s::MANAGED_BY.1)),
        );
    }
    let controller = controller.reconcile_all_on(pool_changes);
    crate::controller::run(CONTROLLER, controller, ctx, shutdown, reconcile).await;
}
