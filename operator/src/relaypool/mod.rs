//! The RelayPool reconciler: runs and scales the relay fleet.
//!
//! Pipeline per STYLE §2: [`observe`] (serving Secret, StatefulSet, ready members, load) →
//! [`validate`] (spec checks, scaling policy, certificate reuse) → [`autoscale::decide`] →
//! [`build`] (plain objects) → [`apply`] (server-side apply, controller owner references) →
//! [`status`] (replicas, members with load, conditions, Events).
//!
//! A pool `<pool>` owns: StatefulSet `<pool>` (members `<pool>-0`, `<pool>-1`, …), headless
//! Service `<pool>-members` (ring membership), public Service `<pool>`, PodDisruptionBudget
//! `<pool>`, ServiceAccount/Role/RoleBinding `<pool>-relay`, serving-certificate Secret
//! `<pool>-tls` and ConfigMap `<pool>-trust` (`ca.crt`, `token.pub`). Deleting the pool deletes
//! them through owner references (garbage collection); there is no finalizer because nothing
//! outside the cluster needs cleaning up.
//!
//! Ready members come from the headless Service's EndpointSlices (watched). Load is external
//! state (relays write it into Device and DeviceStream status), so besides the usual watches
//! every pool is reconciled when a Device or DeviceStream changes (at most once per
//! [`LOAD_TRIGGER_PERIOD`]) and at least every [`RESYNC_PERIOD`], or sooner while a scale-down
//! stabilization window runs.
//!
//! # RBAC this controller needs
//!
//! The same list as [`required_rbac_rules`]. Everything but the `tether.dev` and `events` rows is
//! needed in the operator's namespace only (a Role): RelayPools elsewhere are refused
//! (`Ready=False/WrongNamespace`, an Event, no certificate, no children), so their children, and
//! the operator's rights over them, never leave that namespace. The `tether.dev` rows are needed
//! wherever RelayPools, Devices and DeviceStreams are watched (deploy/operator/rbac.yaml grants
//! them cluster-wide).
//!
//! | apiGroup | resources | verbs |
//! |---|---|---|
//! | `tether.dev` | `relaypools` | get, list, watch |
//! | `tether.dev` | `relaypools/status` | patch |
//! | `tether.dev` | `devices`, `devicestreams` | get, list, watch (load; also granted to relays) |
//! | `apps` | `statefulsets` | get, list, watch, create, patch |
//! | `""` | `services`, `serviceaccounts`, `secrets`, `configmaps` | get, list, watch, create, patch |
//! | `policy` | `poddisruptionbudgets` | get, list, watch, create, patch |
//! | `rbac.authorization.k8s.io` | `roles`, `rolebindings` | get, list, watch, create, patch |
//! | `discovery.k8s.io` | `endpointslices` | get, list, watch (ready members; also granted to relays) |
//! | `events.k8s.io` | `events` | create, patch |
//!
//! Server-side apply of an absent object needs `create` besides `patch`. Nothing is deleted or
//! updated otherwise (children go with the pool through garbage collection). The operator may
//! only write the relays' Role because it holds every permission in it itself (RBAC escalation
//! check), which the `devices`, `devicestreams` and `endpointslices` rows above provide.

pub mod apply;
pub mod autoscale;
pub mod build;
pub mod observe;
pub mod status;
pub mod validate;

use std::{sync::Arc, time::Duration};

use futures_util::StreamExt;
use k8s_openapi::{
    api::{
        apps::v1::StatefulSet,
        core::v1::{ConfigMap, Secret, Service, ServiceAccount},
        discovery::v1::EndpointSlice,
        policy::v1::PodDisruptionBudget,
        rbac::v1::{PolicyRule, Role, RoleBinding},
    },
    jiff::Timestamp,
};
use kube::{
    Api, Resource, ResourceExt,
    core::DeserializeGuard,
    runtime::{
        Controller, WatchStreamExt, controller::Action, events::EventType, reflector, reflector::ObjectRef,
        watcher,
    },
};
use tether_api::{Device, DeviceStream, RelayPool, conditions::reasons};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument as _, info, instrument, warn};

use self::{
    autoscale::Previous,
    build::{COMPONENT, TrustMaterial},
    observe::Caches,
};
use crate::{Context, controller::ReconcileError};

/// Controller name (metrics label, logs).
pub const CONTROLLER: &str = "relaypool";
/// How often every pool is reconciled even when nothing is watched to change: load is external.
pub const RESYNC_PERIOD: Duration = Duration::from_secs(30);
/// At most one load-triggered reconcile of all pools per this period: relays may update Device
/// and DeviceStream status often, and each pass only needs the newest totals.
pub const LOAD_TRIGGER_PERIOD: Duration = Duration::from_secs(1);

/// Why a reconcile failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading an input failed.
    #[error("reading {what}: {source}")]
    Observe {
        /// What was read.
        what: &'static str,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// The API server refused a child object.
    #[error("applying {kind} {name}: {source}")]
    Apply {
        /// Its kind.
        kind: String,
        /// Its name.
        name: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// The serving certificate could not be issued.
    #[error("issuing the relay serving certificate: {0}")]
    Certificate(#[source] tether_net::pki::PkiError),
    /// The status patch failed.
    #[error("patching RelayPool status: {0}")]
    Status(#[source] kube::Error),
    /// A child's name is taken by an object this pool does not control.
    #[error(
        "{kind} {name} already exists and is not owned by this RelayPool; the operator does not take it \
         over: rename the pool or remove that {kind}"
    )]
    ChildConflict {
        /// Its kind.
        kind: String,
        /// Its name.
        name: String,
    },
}

impl ReconcileError for Error {
    fn metric_label(&self) -> &'static str {
        match self {
            Self::Observe { .. } => "observe",
            Self::Apply { .. } => "apply",
            Self::Certificate(_) => "certificate",
            Self::Status(_) => "status",
            Self::ChildConflict { .. } => "child_conflict",
        }
    }
}

/// Names of everything pool `pool` owns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Names {
    /// StatefulSet (members are `<pool>-<ordinal>`).
    pub stateful_set: String,
    /// Headless Service.
    pub members_service: String,
    /// Public Service.
    pub public_service: String,
    /// PodDisruptionBudget.
    pub pdb: String,
    /// ServiceAccount, Role and RoleBinding.
    pub service_account: String,
    /// Serving certificate Secret.
    pub tls_secret: String,
    /// Trust ConfigMap.
    pub trust: String,
}

/// The names of pool `pool`'s children.
pub fn names(pool: &str) -> Names {
    Names {
        stateful_set: pool.to_owned(),
        members_service: format!("{pool}-members"),
        public_service: pool.to_owned(),
        pdb: pool.to_owned(),
        service_account: format!("{pool}-relay"),
        tls_secret: format!("{pool}-tls"),
        trust: format!("{pool}-trust"),
    }
}

/// The RBAC rules this controller needs (the table in the module docs), for the shipped RBAC and
/// for tests that run the controller with exactly these permissions.
pub fn required_rbac_rules() -> Vec<PolicyRule> {
    let rule = |group: &str, resources: &[&str], verbs: &[&str]| PolicyRule {
        api_groups: Some(vec![group.to_owned()]),
        resources: Some(resources.iter().map(|r| (*r).to_owned()).collect()),
        verbs: verbs.iter().map(|v| (*v).to_owned()).collect(),
        ..PolicyRule::default()
    };
    let read = ["get", "list", "watch"];
    let write = ["get", "list", "watch", "create", "patch"];
    vec![
        rule(tether_api::GROUP, &["relaypools"], &read),
        rule(tether_api::GROUP, &["relaypools/status"], &["patch"]),
        rule(tether_api::GROUP, &["devices", "devicestreams"], &read),
        rule("apps", &["statefulsets"], &write),
        rule(
            "",
            &["services", "serviceaccounts", "secrets", "configmaps"],
            &write,
        ),
        rule("policy", &["poddisruptionbudgets"], &write),
        rule("rbac.authorization.k8s.io", &["roles", "rolebindings"], &write),
        rule("discovery.k8s.io", &["endpointslices"], &read),
        rule("events.k8s.io", &["events"], &["create", "patch"]),
    ]
}

/// Runs the RelayPool controller for all namespaces until `shutdown` is cancelled; see
/// [`controller_in`].
pub async fn controller(ctx: Arc<Context>, shutdown: CancellationToken) {
    controller_in(ctx, None, shutdown).await;
}

fn api<K>(client: &kube::Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// Runs the RelayPool controller until `shutdown` is cancelled, for RelayPools in
/// `watch_namespace` (all namespaces when `None`). Only pools in the operator's namespace
/// (`ctx.config.namespace`) are served; the others are refused with a condition and an Event.
/// Children are watched in the operator's namespace only.
///
/// Watches the RelayPools and the children they own (selected by labels
/// `app.kubernetes.io/component=relay` and `app.kubernetes.io/managed-by=tether-operator`), and
/// caches every Device and DeviceStream in the same scope for load.
pub async fn controller_in(ctx: Arc<Context>, watch_namespace: Option<String>, shutdown: CancellationToken) {
    let client = ctx.client.clone();
    let scope = watch_namespace.as_deref();
    let owned = watcher::Config::default().labels(&format!(
        "app.kubernetes.io/component={COMPONENT},app.kubernetes.io/managed-by={}",
        crate::FIELD_MANAGER
    ));

    // Load caches; any change in them triggers a (rate-limited) reconcile of every pool.
    let (devices, device_writer) = reflector::store::<Device>();
    let (streams, stream_writer) = reflector::store::<DeviceStream>();
    let changed = Arc::new(Notify::new());
    let device_events = reflector(
        device_writer,
        watcher(api::<Device>(&client, scope), watcher::Config::default()),
    )
    .default_backoff()
    .map(|e| e.map(|_| ()));
    let stream_events = reflector(
        stream_writer,
        watcher(api::<DeviceStream>(&client, scope), watcher::Config::default()),
    )
    .default_backoff()
    .map(|e| e.map(|_| ()));
    let feeder = {
        let (changed, shutdown) = (changed.clone(), shutdown.clone());
        async move {
            let mut events = std::pin::pin!(futures_util::stream::select(device_events, stream_events));
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    next = events.next() => match next {
                        Some(Ok(())) => changed.notify_one(),
                        Some(Err(e)) => warn!(error = %e, "RelayPool load watch failed; retrying"),
                        None => break,
                    },
                }
            }
        }
    };
    tokio::spawn(feeder.instrument(tracing::info_span!("relaypool_load_watch")));
    let load_trigger = futures_util::stream::unfold((changed, true), |(changed, first)| async move {
        if !first {
            tokio::time::sleep(LOAD_TRIGGER_PERIOD).await;
        }
        changed.notified().await;
        Some(((), (changed, false)))
    });

    // Children exist only in the operator's namespace (pools elsewhere are refused), so their
    // watches, and the operator's rights over them, stay there.
    let home = Some(ctx.config.namespace.as_str());
    let controller = Controller::new(
        api::<DeserializeGuard<RelayPool>>(&client, scope),
        watcher::Config::default(),
    );
    let caches = Caches {
        devices,
        streams,
        pools: controller.store(),
    };
    let controller = controller
        .owns(api::<StatefulSet>(&client, home), owned.clone())
        .owns(api::<Service>(&client, home), owned.clone())
        .owns(api::<PodDisruptionBudget>(&client, home), owned.clone())
        .owns(api::<ServiceAccount>(&client, home), owned.clone())
        .owns(api::<Role>(&client, home), owned.clone())
        .owns(api::<RoleBinding>(&client, home), owned.clone())
        .owns(api::<Secret>(&client, home), owned.clone())
        .owns(api::<ConfigMap>(&client, home), owned.clone())
        // Ring membership: the headless Service's EndpointSlices carry its labels (the EndpointSlice
        // controller copies them), so the same selector finds them; they are owned by the Service,
        // hence mapped to their pool by the instance label.
        .watches(api::<EndpointSlice>(&client, home), owned, |slice| {
            let pool = slice.labels().get("app.kubernetes.io/instance")?.clone();
            Some(ObjectRef::new(&pool).within(&slice.namespace()?))
        })
        .reconcile_all_on(load_trigger);
    // The caches are observe-step inputs like the API reads, so they go to `reconcile` alongside
    // the shared `Context` rather than in a wrapper of it.
    crate::controller::run(CONTROLLER, controller, ctx, shutdown, move |pool, ctx| {
        reconcile(pool, ctx, caches.clone())
    })
    .await;
}

/// Reconciles one RelayPool (wrapped by [`crate::controller::run`]: metrics, backoff): refuse
/// pools outside the operator's namespace → validate → observe (API reads, `caches`) → refuse a
/// taken relay domain → autoscale decision → certificate → build → apply → status → Events.
///
/// # Errors
/// See [`Error`]; the controller retries with backoff.
#[instrument(skip_all, fields(pool = %pool.name_any(), namespace = pool.namespace().unwrap_or_default()))]
pub async fn reconcile(pool: Arc<RelayPool>, ctx: Arc<Context>, caches: Caches) -> Result<Action, Error> {
    let (pool, ctx) = (pool.as_ref(), ctx.as_ref());
    let client = &ctx.client;
    let now = Timestamp::now();
    let previous_status = pool.status.clone().unwrap_or_default();

    // Only the operator's namespace may hold RelayPools: a pool gets a serving certificate for
    // its relay domain signed by the cluster CA, and whoever holds one can impersonate the relay
    // to every agent. Refused before anything is read or issued.
    if pool.namespace().as_deref() != Some(ctx.config.namespace.as_str()) {
        let message = format!(
            "RelayPools are served only in the operator's namespace {:?}: a relay serving certificate \
             lets its holder impersonate the relay to every agent. No certificate or relays were created",
            ctx.config.namespace
        );
        refuse(
            ctx,
            pool,
            &previous_status,
            reasons::WRONG_NAMESPACE,
            message,
            now,
        )
        .await?;
        return Ok(Action::await_change());
    }

    // Validate first: an invalid spec needs no reads.
    let valid = match validate::validate(pool) {
        Ok(v) => v,
        Err(e) => {
            refuse(
                ctx,
                pool,
                &previous_status,
                reasons::INVALID_SPEC,
                e.to_string(),
                now,
            )
            .await?;
            return Ok(Action::await_change());
        }
    };
    let (ns, name) = (valid.namespace.as_str(), valid.name.as_str());

    // One pool per relay domain: the oldest keeps it. Rechecked every resync, so the later pool
    // starts once the older one is gone or changes its domain.
    if let Some(owner) = validate::relay_domain_owner(pool, &caches.pools()) {
        let message = format!(
            "relay domain {:?} is already served by RelayPool {owner:?}; one domain, one pool",
            valid.spec.relay_domain
        );
        refuse(
            ctx,
            pool,
            &previous_status,
            reasons::RELAY_DOMAIN_CONFLICT,
            message,
            now,
        )
        .await?;
        return Ok(Action::requeue(RESYNC_PERIOD));
    }

    let observed = observe::observe(client, &caches, ns, name).await?;

    let previous = Previous {
        replicas: previous_status.replicas.or(observed.current_replicas()),
        low_load_since: previous_status.low_load_since.as_ref().map(|t| t.0),
    };
    let decision = autoscale::decide(
        &valid.policy,
        observed.load.as_ref().map(|l| l.total),
        &previous,
        now,
    );

    let dns = build::dns_names(name, ns, &valid.spec.relay_domain);
    let ca_pem = ctx.trust.ca_pem();
    let cert =
        match validate::reusable_certificate(observed.tls_secret.as_ref(), &dns, ca_pem, now.as_second()) {
            Some(cert) => cert,
            None => {
                let cert = ctx
                    .trust
                    .ca
                    .issue_server(&dns, &[], validate::CERT_VALIDITY)
                    .map_err(Error::Certificate)?;
                let note = format!("issued a serving certificate for {}", dns.join(", "));
                crate::k8s::publish(
                    ctx,
                    pool,
                    EventType::Normal,
                    "CertificateIssued",
                    "IssueCertificate",
                    note,
                )
                .await;
                cert
            }
        };
    let token_public_key = ctx.trust.verifier().to_public_key_pem();
    let trust = TrustMaterial {
        ca_pem,
        token_public_key_pem: &token_public_key,
        trust_domain: &ctx.config.trust_domain,
    };
    let children = build::build(&valid, decision.replicas, &cert, &trust);

    match apply::apply_all(client, ns, &children).await {
        Err(e @ Error::ChildConflict { .. }) => {
            refuse(
                ctx,
                pool,
                &previous_status,
                reasons::CHILD_CONFLICT,
                e.to_string(),
                now,
            )
            .await?;
            return Ok(Action::requeue(RESYNC_PERIOD));
        }
        other => other?,
    }

    let new_status = status::compute(
        name,
        valid.generation,
        &previous_status,
        &decision,
        &observed,
        now,
    );
    status::update(ctx, pool, &new_status).await?;
    if let Some((from, to)) = decision.change(&previous) {
        let load = observed.load.as_ref().map(|l| l.total).unwrap_or_default();
        let load = format!(
            "{} active streams, {} connected devices",
            load.streams, load.devices
        );
        match from {
            Some(from) if to > from => {
                let note = format!("scaled up from {from} to {to} relays ({load})");
                info!(from, to, "{note}");
                crate::k8s::publish(ctx, pool, EventType::Normal, "ScaledUp", "Scale", note).await;
            }
            Some(from) => {
                let note = format!("scaled down from {from} to {to} relays ({load})");
                info!(from, to, "{note}");
                crate::k8s::publish(ctx, pool, EventType::Normal, "ScaledDown", "Scale", note).await;
            }
            None => {
                let note = format!("started with {to} relays ({load})");
                crate::k8s::publish(ctx, pool, EventType::Normal, "Scaled", "Scale", note).await;
            }
        }
    }

    let next = decision
        .recheck_after
        .map_or(RESYNC_PERIOD, |d| d.min(RESYNC_PERIOD));
    // Until the load caches have synced, look again soon rather than in a full period.
    let next = if observed.load.is_none() {
        next.min(Duration::from_secs(2))
    } else {
        next
    };
    Ok(Action::requeue(next))
}

/// Marks `pool` `Ready=False` with `reason` and publishes a Warning Event, once per distinct
/// message (a refused pool is not re-announced on every resync).
async fn refuse(
    ctx: &Context,
    pool: &RelayPool,
    previous: &tether_api::RelayPoolStatus,
    reason: &'static str,
    message: String,
    now: Timestamp,
) -> Result<(), Error> {
    let already = previous
        .conditions
        .iter()
        .any(|c| c.reason == reason && c.message == message);
    if already {
        return Ok(());
    }
    warn!(reason, "{message}");
    let refused = status::refused(previous, pool.meta().generation, reason, message.clone(), now);
    status::update(ctx, pool, &refused).await?;
    crate::k8s::publish(ctx, pool, EventType::Warning, reason, "Validate", message).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_kubernetes_limits() {
        let n = names(&"p".repeat(validate::MAX_POOL_NAME));
        assert!(n.members_service.len() <= 63, "Service names are DNS-1035 labels");
        assert!(n.service_account.len() <= 63);
        assert_eq!(names("relays").members_service, "relays-members");
    }

    #[test]
    fn rbac_covers_what_the_relay_role_grants() {
        // The operator must hold every permission it grants relays (RBAC escalation check).
        let mine = required_rbac_rules();
        for granted in build::relay_rules() {
            for resource in granted.resources.unwrap_or_default() {
                for verb in &granted.verbs {
                    assert!(
                        mine.iter()
                            .any(|r| r.resources.as_ref().is_some_and(|rs| rs.contains(&resource))
                                && r.api_groups == granted.api_groups
                                && r.verbs.contains(verb)),
                        "operator lacks {verb} {resource}"
                    );
                }
            }
        }
    }
}
