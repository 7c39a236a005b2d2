//! The operator process: admin server, leader election, trust anchors, then the controllers.
//!
//! 1. `/live` answers at once; `/ready` turns 200 once this replica is a standby (the Lease is
//!    held by another replica) or leads with controllers running, so rolling updates proceed;
//!    `tether_operator_leader` says which replica leads.
//! 2. Leader election ([`crate::lease`]): only the Lease holder loads anchors and reconciles. A
//!    replica that loses the Lease stops its controllers and [`run`] returns
//!    [`RunError::LostLease`] so the process restarts as a follower.
//! 3. Trust anchors ([`crate::trust::load_or_create`]). When a Secret is malformed the operator
//!    never overwrites it: it logs the error, marks every Device and DeviceStream it watches
//!    `Ready=False/TrustAnchorInvalid` (with a Warning Event), and retries every `--trust-retry`
//!    until the Secret is fixed or deleted; controllers start only then.
//! 4. Device, DeviceStream and RelayPool controllers, until `shutdown` fires (SIGTERM/SIGINT in
//!    `main`); the Lease is then released.

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

use futures_util::future::join_all;
use k8s_openapi::jiff::Timestamp;
use kube::{
    Api, Client, ResourceExt,
    api::ListParams,
    runtime::events::{EventType, Recorder, Reporter},
};
use tether_api::{
    Device, DeviceStatus, DeviceStream, DeviceStreamStatus,
    conditions::{reasons, status, types},
};
use tokio_util::sync::CancellationToken;

use crate::{
    Context,
    args::{Args, Controller},
    conditions::{Desired, find, merge},
    context::OperatorConfig,
    k8s,
    lease::LeaseLock,
    metrics,
    trust::{self, TrustAnchors, TrustError},
};

/// Why the operator stopped.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// No Kubernetes client configuration.
    #[error("cannot create a Kubernetes client: {0}")]
    Client(#[source] kube::Error),
    /// The admin port cannot be bound.
    #[error("cannot bind the admin listener {addr}: {source}")]
    Admin {
        /// The address.
        addr: std::net::SocketAddr,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// Another replica took the Lease, or renewing it kept failing.
    #[error("lost the leader Lease; restarting as a follower")]
    LostLease,
}

/// Runs the operator with the in-cluster (or kubeconfig) client until `shutdown` fires.
///
/// # Errors
/// See [`RunError`].
pub async fn run(args: Args, shutdown: CancellationToken) -> Result<(), RunError> {
    crate::telemetry::init();
    let client = Client::try_default().await.map_err(RunError::Client)?;
    run_with_client(client, args, shutdown).await
}

/// Runs the operator with `client` (tests pass a ServiceAccount-token client) until `shutdown`.
///
/// # Errors
/// See [`RunError`].
pub async fn run_with_client(
    client: Client,
    args: Args,
    shutdown: CancellationToken,
) -> Result<(), RunError> {
    let ready = Arc::new(AtomicBool::new(false));
    let listener = tokio::net::TcpListener::bind(args.admin_addr)
        .await
        .map_err(|source| RunError::Admin {
            addr: args.admin_addr,
            source,
        })?;
    tracing::info!(addr = %listener.local_addr().unwrap_or(args.admin_addr), "admin server listening");
    let admin = tokio::spawn(tether_net::admin::serve(
        listener,
        metrics::registry().clone(),
        ready.clone(),
        shutdown.child_token(),
    ));

    let lock = LeaseLock::new(
        client.clone(),
        &args.namespace,
        &args.lease_name,
        &args.identity,
        args.lease_duration,
    );
    let result = lead(&client, &args, &lock, &ready, &shutdown).await;
    ready.store(false, Ordering::Relaxed);
    metrics::metrics().leader.set(0);
    if let Err(e) = lock.release().await {
        tracing::warn!(error = %e, "cannot release the Lease");
    }
    shutdown.cancel();
    let _ = admin.await;
    result
}

async fn lead(
    client: &Client,
    args: &Args,
    lock: &LeaseLock,
    ready: &AtomicBool,
    shutdown: &CancellationToken,
) -> Result<(), RunError> {
    // Wait for leadership.
    loop {
        match lock.try_acquire_or_renew().await {
            Ok(true) => break,
            // A standby is healthy: ready, so rolling updates of the Deployment can proceed.
            Ok(false) => {
                ready.store(true, Ordering::Relaxed);
                tracing::debug!("another replica leads");
            }
            Err(e) => tracing::warn!(error = %e, "cannot acquire the Lease"),
        }
        tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            () = tokio::time::sleep(lock.retry_period()) => {}
        }
    }
    tracing::info!(identity = %args.identity, "acquired the Lease; leading");
    metrics::metrics().leader.set(1);

    // Stop everything when leadership is lost or on shutdown.
    let leading = shutdown.child_token();
    let lost = Arc::new(AtomicBool::new(false));
    let renewer = tokio::spawn(renew(lock.clone(), leading.clone(), lost.clone()));

    let reporter = Reporter {
        controller: "tether-operator".into(),
        instance: Some(args.identity.clone()),
    };
    let recorder = Recorder::new(client.clone(), reporter);
    let Some(trust) = load_trust(client, args, &recorder, &leading).await else {
        leading.cancel();
        let _ = renewer.await;
        return if lost.load(Ordering::Relaxed) {
            Err(RunError::LostLease)
        } else {
            Ok(())
        };
    };
    match tether_net::pki::not_after_unix(trust.ca_pem()) {
        Ok(t) => metrics::metrics()
            .trust_anchor_expiry
            .with_label_values(&["ca"])
            .set(t),
        Err(e) => tracing::warn!(error = %e, "cannot read the CA certificate's expiry"),
    }
    let ctx = Arc::new(Context {
        client: client.clone(),
        recorder,
        config: OperatorConfig {
            namespace: args.namespace.clone(),
            trust_domain: args.trust_domain.clone(),
        },
        trust,
    });
    ready.store(true, Ordering::Relaxed);
    let mut controllers: Vec<std::pin::Pin<Box<dyn Future<Output = ()> + Send>>> = Vec::new();
    let watch = args.watch_namespace.clone();
    if args.runs(Controller::Device) {
        controllers.push(Box::pin(crate::device::controller(
            ctx.clone(),
            watch.clone(),
            leading.clone(),
        )));
    }
    if args.runs(Controller::DeviceStream) {
        controllers.push(Box::pin(crate::stream::controller(
            ctx.clone(),
            watch,
            leading.clone(),
        )));
    }
    if args.runs(Controller::RelayPool) {
        controllers.push(Box::pin(crate::relaypool::controller(
            ctx.clone(),
            leading.clone(),
        )));
    }
    tracing::info!(controllers = ?args.controllers, "starting controllers");
    join_all(controllers).await;
    leading.cancel();
    let _ = renewer.await;
    if lost.load(Ordering::Relaxed) {
        Err(RunError::LostLease)
    } else {
        Ok(())
    }
}

/// Renews the Lease every retry period; cancels `leading` (setting `lost`) when another replica
/// holds it or renewals have failed for a whole lease duration.
async fn renew(lock: LeaseLock, leading: CancellationToken, lost: Arc<AtomicBool>) {
    let mut last_ok = tokio::time::Instant::now();
    loop {
        tokio::select! {
            () = leading.cancelled() => return,
            () = tokio::time::sleep(lock.retry_period()) => {}
        }
        match lock.try_acquire_or_renew().await {
            Ok(true) => last_ok = tokio::time::Instant::now(),
            Ok(false) => {
                tracing::error!("another replica holds the Lease; stopping controllers");
                break;
            }
            Err(e) if last_ok.elapsed() < lock.retry_period() * 3 => {
                tracing::warn!(error = %e, "Lease renewal failed")
            }
            Err(e) => {
                tracing::error!(error = %e, "Lease renewals failed for a whole lease duration; stopping controllers");
                break;
            }
        }
    }
    lost.store(true, Ordering::Relaxed);
    leading.cancel();
}

/// Loads the trust anchors, retrying until they load or `stop` fires (then `None`).
async fn load_trust(
    client: &Client,
    args: &Args,
    recorder: &Recorder,
    stop: &CancellationToken,
) -> Option<TrustAnchors> {
    loop {
        match trust::load_or_create(client, &args.namespace).await {
            Ok(anchors) => return Some(anchors),
            Err(e @ TrustError::Malformed { .. }) => {
                tracing::error!(error = %e, "trust anchor is malformed; not overwriting it. Reconciling is paused");
                report_trust_invalid(client, args, recorder, &e.to_string()).await;
            }
            Err(e) => tracing::warn!(error = %e, "cannot load trust anchors; retrying"),
        }
        tokio::select! {
            () = stop.cancelled() => return None,
            () = tokio::time::sleep(args.trust_retry) => {}
        }
    }
}

/// Marks every watched Device and DeviceStream `Ready=False/TrustAnchorInvalid`.
async fn report_trust_invalid(client: &Client, args: &Args, recorder: &Recorder, message: &str) {
    let ctx_events = EventSink { recorder };
    let (devices, streams): (Api<Device>, Api<DeviceStream>) = match &args.watch_namespace {
        Some(ns) => (
            Api::namespaced(client.clone(), ns),
            Api::namespaced(client.clone(), ns),
        ),
        None => (Api::all(client.clone()), Api::all(client.clone())),
    };
    let ready = Desired::new(
        types::READY,
        status::FALSE,
        reasons::TRUST_ANCHOR_INVALID,
        message,
    );
    match devices.list(&ListParams::default()).await {
        Ok(list) => {
            for d in list.items {
                let current = d.status.clone().unwrap_or_default();
                let conditions = replace_ready(&current.conditions, &ready, d.metadata.generation);
                let desired = DeviceStatus {
                    credentials_secret: current.credentials_secret.clone(),
                    certificate_expires_at: current.certificate_expires_at.clone(),
                    observed_generation: d.metadata.generation,
                    conditions,
                    ..DeviceStatus::default()
                };
                ctx_events
                    .mark(client, &d, &current.conditions, &desired.conditions, &desired)
                    .await;
            }
        }
        Err(e) => tracing::warn!(error = %e, "cannot list Devices to report the trust anchor problem"),
    }
    match streams.list(&ListParams::default()).await {
        Ok(list) => {
            for s in list.items {
                let current = s.status.clone().unwrap_or_default();
                let conditions = replace_ready(&current.conditions, &ready, s.metadata.generation);
                let desired = DeviceStreamStatus {
                    phase: current.phase,
                    endpoint: current.endpoint.clone(),
                    relay: current.relay.clone(),
                    token_secret: current.token_secret.clone(),
                    expires_at: current.expires_at.clone(),
                    observed_generation: s.metadata.generation,
                    conditions,
                    ..DeviceStreamStatus::default()
                };
                ctx_events
                    .mark(client, &s, &current.conditions, &desired.conditions, &desired)
                    .await;
            }
        }
        Err(e) => tracing::warn!(error = %e, "cannot list DeviceStreams to report the trust anchor problem"),
    }
}

fn replace_ready(
    existing: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition],
    ready: &Desired,
    generation: Option<i64>,
) -> Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
    let mut out = merge(
        existing,
        std::slice::from_ref(ready),
        generation,
        Timestamp::now(),
    );
    out.extend(existing.iter().filter(|c| c.type_ != types::READY).cloned());
    out
}

struct EventSink<'a> {
    recorder: &'a Recorder,
}

impl EventSink<'_> {
    async fn mark<K, S>(
        &self,
        client: &Client,
        obj: &K,
        before: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition],
        after: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition],
        status: &S,
    ) where
        K: kube::Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug,
        S: serde::Serialize,
    {
        let (b, a) = (find(before, types::READY), find(after, types::READY));
        if b == a {
            return;
        }
        if let Err(e) = k8s::patch_status(client, obj, status).await {
            tracing::warn!(error = %e, name = obj.name_any(), "cannot report TrustAnchorInvalid");
            return;
        }
        if b.is_none_or(|b| b.reason != reasons::TRUST_ANCHOR_INVALID) {
            let event = kube::runtime::events::Event {
                type_: EventType::Warning,
                reason: reasons::TRUST_ANCHOR_INVALID.into(),
                note: a.map(|c| c.message.clone()),
                action: "LoadTrustAnchors".into(),
                secondary: None,
            };
            if let Err(e) = self.recorder.publish(&event, &obj.object_ref(&())).await {
                tracing::warn!(error = %e, "cannot publish Event");
            }
        }
    }
}
