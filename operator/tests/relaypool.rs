//! The RelayPool reconciler against the real API server (scripts/test-k8s.sh): owned children with
//! owner references, idempotency, schema rejection, autoscaling from synthetic load in Device and
//! DeviceStream status, and garbage collection. The controller runs in-process under a
//! ServiceAccount holding exactly `relaypool::required_rbac_rules()` (in the test namespace), so a
//! permission missing from that list fails these tests. Skipped without the environment.

mod opsupport;

use std::{sync::Arc, time::Duration};

use anyhow::{Context as _, bail, ensure};
use k8s_openapi::{
    NamespaceResourceScope,
    api::{
        apps::v1::StatefulSet,
        core::v1::{ConfigMap, Secret, Service, ServiceAccount},
        discovery::v1::EndpointSlice,
        policy::v1::PodDisruptionBudget,
        rbac::v1::{Role, RoleBinding},
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{DeleteParams, ListParams, Patch, PatchParams, PostParams},
    runtime::events::{Recorder, Reporter},
};
use opsupport::{events_for, install_crds, kubectl_apply};
use serde_json::json;
use tether_api::{Device, DeviceStream, RelayPool};
use tether_operator::{
    Context,
    context::OperatorConfig,
    metrics::Metrics,
    relaypool::{self, names},
};
use tether_tests::testenv::{TestEnv, eventually};
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(30);

/// The RelayPool controller running in-process for one namespace.
struct Running {
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<()>,
    metrics: Arc<Metrics>,
}

impl Running {
    /// Reconciles the controller has started so far.
    fn reconciles(&self) -> u64 {
        self.metrics
            .reconciles
            .with_label_values(&[relaypool::CONTROLLER])
            .get()
    }

    /// Waits until a reconcile has started after the count `since` and finished (its duration
    /// observed, so its writes are done).
    async fn reconciled_since(&self, since: u64) -> anyhow::Result<()> {
        eventually(WAIT, || async {
            let done = self
                .metrics
                .duration
                .with_label_values(&[relaypool::CONTROLLER])
                .get_sample_count();
            ensure!(
                self.reconciles() > since && done > since,
                "no reconcile finished since {since} (started {}, finished {done})",
                self.reconciles()
            );
            Ok(())
        })
        .await
    }

    async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(30), self.task)
            .await
            .context("controller did not stop")??;
        Ok(())
    }
}

/// Grants ServiceAccount `relaypool-operator` exactly the controller's documented rules in `ns`
/// and starts the controller for `ns` (its operator namespace) under its token.
async fn start(env: &TestEnv, ns: &str) -> anyhow::Result<Running> {
    start_watching(env, ns, ns).await
}

/// As [`start`], with operator namespace `ns` but watching RelayPools in `watch` (where the
/// ServiceAccount gets the same rules).
async fn start_watching(env: &TestEnv, ns: &str, watch: &str) -> anyhow::Result<Running> {
    // Controller logs show with --nocapture (RUST_LOG overrides the filter).
    let filter =
        std::env::var("RUST_LOG").unwrap_or_else(|_| "tether_operator=debug,kube_runtime=info".into());
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter(filter)
        .try_init();
    install_crds(env)?;
    let admin = env.client();
    let role = Role {
        metadata: ObjectMeta {
            name: Some("relaypool-operator".into()),
            ..ObjectMeta::default()
        },
        rules: Some(relaypool::required_rbac_rules()),
    };
    let binding: RoleBinding = serde_json::from_value(json!({
        "metadata": {"name": "relaypool-operator"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "relaypool-operator"},
        "subjects": [{"kind": "ServiceAccount", "name": "relaypool-operator", "namespace": ns}],
    }))?;
    let mut scopes = vec![ns];
    if watch != ns {
        scopes.push(watch);
    }
    for scope in scopes {
        Api::<Role>::namespaced(admin.clone(), scope)
            .create(&PostParams::default(), &role)
            .await?;
        Api::<RoleBinding>::namespaced(admin.clone(), scope)
            .create(&PostParams::default(), &binding)
            .await?;
    }
    let client = env.service_account_client(ns, "relaypool-operator").await?;
    // Trust anchors are loaded by the operator's start-up code (not under test here): as admin.
    let trust = tether_operator::trust::load_or_create(&admin, ns).await?;
    // Its own registry: the test reads the controller's reconcile counter from it.
    let metrics = Arc::new(Metrics::register(&prometheus::Registry::new())?);
    let ctx = Context::new(
        client.clone(),
        Recorder::new(
            client,
            Reporter {
                controller: "tether-operator".into(),
                instance: None,
            },
        ),
        OperatorConfig {
            namespace: ns.to_owned(),
            trust_domain: "test.tether".into(),
        },
        trust,
        metrics.clone(),
    );
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(relaypool::controller_in(
        Arc::new(ctx),
        Some(watch.to_owned()),
        shutdown.clone(),
    ));
    Ok(Running {
        shutdown,
        task,
        metrics,
    })
}

/// `examples/relaypool.yaml` moved into `ns`.
fn example_pool(ns: &str) -> anyhow::Result<RelayPool> {
    let text = std::fs::read_to_string(opsupport::repo().join("examples/relaypool.yaml"))?;
    let mut pool: RelayPool = serde_yaml::from_str(&text)?;
    pool.metadata.namespace = Some(ns.to_owned());
    Ok(pool)
}

async fn apply_pool(client: &Client, pool: &RelayPool) -> anyhow::Result<RelayPool> {
    let api = Api::<RelayPool>::namespaced(client.clone(), &pool.namespace().context("namespace")?);
    let params = PatchParams::apply(tether_tests::testenv::FIELD_MANAGER).force();
    Ok(api.patch(&pool.name_any(), &params, &Patch::Apply(pool)).await?)
}

/// Waits until the pool's status describes its current generation, and returns the pool.
async fn reconciled(client: &Client, ns: &str, name: &str) -> anyhow::Result<RelayPool> {
    let api = Api::<RelayPool>::namespaced(client.clone(), ns);
    eventually(WAIT, || async {
        let pool = api.get(name).await?;
        let observed = pool.status.as_ref().and_then(|s| s.observed_generation);
        ensure!(
            observed.is_some() && observed == pool.metadata.generation,
            "not reconciled yet: {:?}",
            pool.status
        );
        Ok(pool)
    })
    .await
}

async fn get<K>(client: &Client, ns: &str, name: &str) -> anyhow::Result<K>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    Api::<K>::namespaced(client.clone(), ns)
        .get(name)
        .await
        .with_context(|| format!("{} {name}", K::kind(&())))
}

/// Identity of every child for the idempotency check: resourceVersion for objects nobody else
/// writes; generation plus our field manager's timestamp for those a controller of the KCM
/// updates (StatefulSet and PDB status).
async fn child_versions(client: &Client, ns: &str, pool: &str) -> anyhow::Result<Vec<(String, String)>> {
    fn ours<K: Resource>(obj: &K) -> String {
        let m = obj.meta();
        let applied = m
            .managed_fields
            .iter()
            .flatten()
            .find(|f| f.manager.as_deref() == Some("tether-operator"));
        format!(
            "gen={:?} applied={:?}",
            m.generation,
            applied.and_then(|f| f.time.clone())
        )
    }
    let n = names(pool);
    let rv = |m: &ObjectMeta| m.resource_version.clone().unwrap_or_default();
    Ok(vec![
        (
            "sa".into(),
            rv(&get::<ServiceAccount>(client, ns, &n.service_account)
                .await?
                .metadata),
        ),
        (
            "role".into(),
            rv(&get::<Role>(client, ns, &n.service_account).await?.metadata),
        ),
        (
            "binding".into(),
            rv(&get::<RoleBinding>(client, ns, &n.service_account).await?.metadata),
        ),
        (
            "secret".into(),
            rv(&get::<Secret>(client, ns, &n.tls_secret).await?.metadata),
        ),
        (
            "trust".into(),
            rv(&get::<ConfigMap>(client, ns, &n.trust).await?.metadata),
        ),
        (
            "members".into(),
            rv(&get::<Service>(client, ns, &n.members_service).await?.metadata),
        ),
        (
            "public".into(),
            rv(&get::<Service>(client, ns, &n.public_service).await?.metadata),
        ),
        (
            "pdb".into(),
            ours(&get::<PodDisruptionBudget>(client, ns, &n.pdb).await?),
        ),
        (
            "sts".into(),
            ours(&get::<StatefulSet>(client, ns, &n.stateful_set).await?),
        ),
    ])
}

/// Whether `ns/name` of kind `K` is gone (404); other errors fail the check.
async fn gone<K>(client: &Client, ns: &str, name: &str) -> anyhow::Result<bool>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    Ok(Api::<K>::namespaced(client.clone(), ns)
        .get_opt(name)
        .await
        .with_context(|| format!("{} {name}", K::kind(&())))?
        .is_none())
}

fn check_owned(meta: &ObjectMeta, pool: &RelayPool, what: &str) -> anyhow::Result<()> {
    let owners = meta.owner_references.as_deref().unwrap_or_default();
    ensure!(
        owners.iter().any(|o| o.kind == "RelayPool"
            && o.name == pool.name_any()
            && Some(&o.uid) == pool.metadata.uid.as_ref()
            && o.controller == Some(true)),
        "{what} is not controlled by the RelayPool: {owners:?}"
    );
    Ok(())
}

#[tokio::test]
async fn relaypool_example_yields_owned_children_and_reconciles_idempotently() -> anyhow::Result<()> {
    let Some(env) =
        TestEnv::attach("relaypool_example_yields_owned_children_and_reconciles_idempotently").await
    else {
        return Ok(());
    };
    env.with_temp_ns("rp-children", |env, ns| async move {
        let ctl = start(&env, &ns).await?;
        let admin = env.client();
        apply_pool(&admin, &example_pool(&ns)?).await?;
        let pool = reconciled(&admin, &ns, "relays").await?;
        let n = names("relays");

        // StatefulSet: minReplicas relays (no load), stable member names, hardened pods.
        let sts: StatefulSet = get(&admin, &ns, &n.stateful_set).await?;
        check_owned(&sts.metadata, &pool, "StatefulSet")?;
        let spec = sts.spec.clone().context("sts spec")?;
        assert_eq!(spec.replicas, Some(2));
        assert_eq!(spec.service_name.as_deref(), Some("relays-members"));
        let pod = spec.template.spec.context("pod spec")?;
        assert_eq!(pod.service_account_name.as_deref(), Some("relays-relay"));
        let c = &pod.containers[0];
        let sc = c.security_context.clone().context("securityContext")?;
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        assert_eq!(sc.capabilities.and_then(|c| c.drop), Some(vec!["ALL".to_owned()]));

        // Services, PDB, RBAC, trust config and serving certificate, all controlled by the pool.
        let members: Service = get(&admin, &ns, &n.members_service).await?;
        check_owned(&members.metadata, &pool, "headless Service")?;
        let ms = members.spec.context("spec")?;
        assert_eq!(ms.cluster_ip.as_deref(), Some("None"));
        // false is the default, which the API server omits.
        assert_ne!(ms.publish_not_ready_addresses, Some(true));
        let public: Service = get(&admin, &ns, &n.public_service).await?;
        check_owned(&public.metadata, &pool, "public Service")?;
        assert_eq!(
            public.spec.as_ref().and_then(|s| s.type_.as_deref()),
            Some("LoadBalancer")
        );
        assert_eq!(
            public
                .metadata
                .annotations
                .as_ref()
                .map(|a| a["service.beta.kubernetes.io/aws-load-balancer-type"].as_str()),
            Some("nlb")
        );
        let pdb: PodDisruptionBudget = get(&admin, &ns, &n.pdb).await?;
        check_owned(&pdb.metadata, &pool, "PDB")?;
        let sa: ServiceAccount = get(&admin, &ns, &n.service_account).await?;
        check_owned(&sa.metadata, &pool, "ServiceAccount")?;
        let role: Role = get(&admin, &ns, &n.service_account).await?;
        check_owned(&role.metadata, &pool, "Role")?;
        let rules = role.rules.unwrap_or_default();
        assert!(
            rules.iter().all(|r| r.verbs == ["get", "list", "watch"]),
            "{rules:?}"
        );
        let binding: RoleBinding = get(&admin, &ns, &n.service_account).await?;
        check_owned(&binding.metadata, &pool, "RoleBinding")?;
        let trust: ConfigMap = get(&admin, &ns, &n.trust).await?;
        check_owned(&trust.metadata, &pool, "ConfigMap")?;
        let ca = opsupport::secret_value(&admin, &ns, tether_operator::trust::CA_SECRET, "tls.crt").await?;
        let trust_data = trust.data.unwrap_or_default();
        assert_eq!(trust_data.get("ca.crt"), Some(&ca));
        assert!(
            trust_data
                .get("token.pub")
                .is_some_and(|k| k.contains("BEGIN PUBLIC KEY"))
        );
        let secret: Secret = get(&admin, &ns, &n.tls_secret).await?;
        check_owned(&secret.metadata, &pool, "Secret")?;
        assert_eq!(secret.type_.as_deref(), Some("kubernetes.io/tls"));
        let cert = opsupport::secret_value(&admin, &ns, &n.tls_secret, "tls.crt").await?;
        let days_left = (tether_net::pki::not_after_unix(&cert)? - now_unix()) / 86_400;
        assert!(
            (88..=90).contains(&days_left),
            "serving cert valid for {days_left} days"
        );

        // Status: two relays asked for, none ready (no kubelet here), so Ready=False Scaling.
        let status = pool.status.clone().context("status")?;
        assert_eq!(status.replicas, Some(2));
        assert_eq!(status.ready_replicas, Some(0));
        assert_eq!(
            status.members.iter().map(|m| m.name.as_str()).collect::<Vec<_>>(),
            ["relays-0", "relays-1"]
        );
        let ready = status
            .conditions
            .iter()
            .find(|c| c.type_ == "Ready")
            .context("Ready condition")?;
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", "Scaling")
        );
        assert_eq!(ready.observed_generation, pool.metadata.generation);

        // A second reconcile changes nothing: touch the pool (a metadata change triggers a
        // reconcile) and compare every child afterwards.
        let before = child_versions(&admin, &ns, "relays").await?;
        let events_before = events_for(&admin, &ns, "relays").await?;
        let since = ctl.reconciles();
        let touch = json!({"metadata": {"annotations": {"test.tether.dev/touch": "1"}}});
        Api::<RelayPool>::namespaced(admin.clone(), &ns)
            .patch("relays", &PatchParams::default(), &Patch::Merge(&touch))
            .await?;
        // A reconcile after the touch must have run (else "nothing changed" proves nothing). The
        // children were applied seconds ago, so a rewrite would show in managedFields' times.
        ctl.reconciled_since(since).await?;
        let after = child_versions(&admin, &ns, "relays").await?;
        assert_eq!(before, after, "a second reconcile changed children");
        let pool_after: RelayPool = get(&admin, &ns, "relays").await?;
        assert_eq!(
            pool_after.status, pool.status,
            "a second reconcile changed status"
        );
        let issued = |e: &[(String, String)]| e.iter().filter(|(_, r)| r == "CertificateIssued").count();
        assert_eq!(
            issued(&events_for(&admin, &ns, "relays").await?),
            issued(&events_before)
        );
        assert_eq!(issued(&events_before), 1, "{events_before:?}");

        // Ready members come from the headless Service's EndpointSlices. The EndpointSlice
        // controller copies the Service's labels onto its slices, which is how the controller's
        // label-selected watch finds them; no pods run here, so add a slice with one ready relay.
        let slices = Api::<EndpointSlice>::namespaced(admin.clone(), &ns);
        let selector = "kubernetes.io/service-name=relays-members,app.kubernetes.io/component=relay,\
                        app.kubernetes.io/managed-by=tether-operator";
        eventually(WAIT, || async {
            let found = slices.list(&ListParams::default().labels(selector)).await?;
            ensure!(
                !found.items.is_empty(),
                "no EndpointSlice with the Service's labels yet"
            );
            Ok(())
        })
        .await?;
        let slice: EndpointSlice = serde_json::from_value(json!({
            "metadata": {"name": "relays-members-test", "labels": {
                "kubernetes.io/service-name": "relays-members",
                "endpointslice.kubernetes.io/managed-by": "tether-tests",
                "app.kubernetes.io/component": "relay",
                "app.kubernetes.io/managed-by": "tether-operator",
                "app.kubernetes.io/instance": "relays",
            }},
            "addressType": "IPv4",
            "endpoints": [
                {"addresses": ["10.0.0.1"], "conditions": {"ready": true},
                 "targetRef": {"kind": "Pod", "name": "relays-0", "namespace": ns}},
                {"addresses": ["10.0.0.2"], "conditions": {"ready": false},
                 "targetRef": {"kind": "Pod", "name": "relays-1", "namespace": ns}},
            ],
            "ports": [{"name": "data", "port": 8443, "protocol": "TCP"}],
        }))?;
        slices.create(&PostParams::default(), &slice).await?;
        eventually(WAIT, || async {
            let status = get::<RelayPool>(&admin, &ns, "relays")
                .await?
                .status
                .context("status")?;
            let ready: Vec<_> = status
                .members
                .iter()
                .map(|m| (m.name.as_str(), m.ready))
                .collect();
            ensure!(
                ready == [("relays-0", true), ("relays-1", false)],
                "members {ready:?}"
            );
            Ok(())
        })
        .await?;

        // A changed Service type is applied (the server drops the allocated node ports).
        let change = json!({"spec": {"service": {"type": "ClusterIP"}}});
        Api::<RelayPool>::namespaced(admin.clone(), &ns)
            .patch("relays", &PatchParams::default(), &Patch::Merge(&change))
            .await?;
        reconciled(&admin, &ns, "relays").await?;
        let public: Service = get(&admin, &ns, &n.public_service).await?;
        assert_eq!(
            public.spec.as_ref().and_then(|s| s.type_.as_deref()),
            Some("ClusterIP")
        );

        ctl.stop().await
    })
    .await
}

#[tokio::test]
async fn relaypool_with_unusable_name_reports_invalid_spec() -> anyhow::Result<()> {
    let Some(env) = TestEnv::attach("relaypool_with_unusable_name_reports_invalid_spec").await else {
        return Ok(());
    };
    env.with_temp_ns("rp-badname", |env, ns| async move {
        let ctl = start(&env, &ns).await?;
        let admin = env.client();
        // Valid for the API server, but too long for the StatefulSet's revision label.
        let name = format!("r{}", "e".repeat(59));
        let mut pool = example_pool(&ns)?;
        pool.metadata.name = Some(name.clone());
        apply_pool(&admin, &pool).await?;
        let pool = reconciled(&admin, &ns, &name).await?;
        let status = pool.status.context("status")?;
        let ready = status
            .conditions
            .iter()
            .find(|c| c.type_ == "Ready")
            .context("Ready")?;
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", "InvalidSpec")
        );
        assert!(
            ready.message.contains("at most 52 characters"),
            "{}",
            ready.message
        );
        assert_eq!(
            opsupport::wait_event(&admin, &ns, &name, "InvalidSpec").await?,
            "Warning"
        );
        let sts = Api::<StatefulSet>::namespaced(admin.clone(), &ns)
            .get_opt(&name)
            .await?;
        assert!(sts.is_none(), "nothing is built for an invalid pool");
        ctl.stop().await
    })
    .await
}

#[tokio::test]
async fn relaypool_with_max_below_min_is_rejected_by_the_server() -> anyhow::Result<()> {
    let Some(env) = TestEnv::attach("relaypool_with_max_below_min_is_rejected_by_the_server").await else {
        return Ok(());
    };
    env.with_temp_ns("rp-invalid", |env, ns| async move {
        install_crds(&env)?;
        let yaml = format!(
            "apiVersion: tether.dev/v1alpha1\nkind: RelayPool\nmetadata: {{name: bad, namespace: {ns}}}\n\
             spec: {{relayDomain: relay.example.com, minReplicas: 3, maxReplicas: 2}}\n"
        );
        let (ok, out) = kubectl_apply(&env, &yaml, &[])?;
        assert!(!ok, "accepted: {out}");
        assert!(out.contains("maxReplicas must be at least minReplicas"), "{out}");
        let (ok, out) = kubectl_apply(&env, &yaml.replace("maxReplicas: 2", "maxReplicas: 3"), &[])?;
        assert!(ok, "{out}");
        anyhow::Ok(())
    })
    .await
}

fn now_unix() -> i64 {
    k8s_openapi::jiff::Timestamp::now().as_second()
}

async fn pool_replicas(client: &Client, ns: &str, name: &str) -> anyhow::Result<(Option<i32>, Option<i32>)> {
    let pool: RelayPool = get(client, ns, name).await?;
    let sts: StatefulSet = get(client, ns, name).await?;
    Ok((
        pool.status.and_then(|s| s.replicas),
        sts.spec.and_then(|s| s.replicas),
    ))
}

async fn wait_replicas(client: &Client, ns: &str, name: &str, want: i32) -> anyhow::Result<()> {
    eventually(WAIT, || async {
        let got = pool_replicas(client, ns, name).await?;
        ensure!(
            got == (Some(want), Some(want)),
            "(status, StatefulSet) replicas {got:?}, want {want}"
        );
        Ok(())
    })
    .await
}

async fn set_status<K>(client: &Client, ns: &str, name: &str, status: serde_json::Value) -> anyhow::Result<()>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    Api::<K>::namespaced(client.clone(), ns)
        .patch_status(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({ "status": status })),
        )
        .await?;
    Ok(())
}

#[tokio::test]
async fn relaypool_autoscales_with_load_bounds_and_stabilization() -> anyhow::Result<()> {
    let Some(env) = TestEnv::attach("relaypool_autoscales_with_load_bounds_and_stabilization").await else {
        return Ok(());
    };
    env.with_temp_ns("rp-scale", |env, ns| async move {
        let ctl = start(&env, &ns).await?;
        let admin = env.client();
        let pool: RelayPool = serde_yaml::from_str(&format!(
            "apiVersion: tether.dev/v1alpha1\nkind: RelayPool\nmetadata: {{name: fleet, namespace: {ns}}}\n\
             spec:\n  relayDomain: relay.test\n  minReplicas: 1\n  maxReplicas: 4\n  \
             targetStreamsPerRelay: 2\n  targetDevicesPerRelay: 3\n  scaleDownStabilization: 2s\n  \
             service: {{type: ClusterIP, port: 443}}\n"
        ))?;
        apply_pool(&admin, &pool).await?;
        wait_replicas(&admin, &ns, "fleet", 1)
            .await
            .context("no load: minReplicas")?;

        // 7 connected devices on fleet-0 → ⌈7/3⌉ = 3 relays.
        let devices = Api::<Device>::namespaced(admin.clone(), &ns);
        for i in 0..7 {
            let d: Device = serde_json::from_value(json!({
                "apiVersion": "tether.dev/v1alpha1", "kind": "Device",
                "metadata": {"name": format!("dev-{i}")}, "spec": {"allowedPorts": [22]},
            }))?;
            devices.create(&PostParams::default(), &d).await?;
            let status = json!({"connected": true, "relay": "fleet-0"});
            set_status::<Device>(&admin, &ns, &format!("dev-{i}"), status).await?;
        }
        wait_replicas(&admin, &ns, "fleet", 3)
            .await
            .context("7 devices")?;
        let status = get::<RelayPool>(&admin, &ns, "fleet")
            .await?
            .status
            .context("status")?;
        assert_eq!(status.members.len(), 3);
        assert_eq!((status.members[0].devices, status.members[0].streams), (7, 0));

        // 9 active streams on fleet-1 → ⌈9/2⌉ = 5, capped at maxReplicas 4. Streams of another
        // pool's relay and expired streams do not count.
        let streams = Api::<DeviceStream>::namespaced(admin.clone(), &ns);
        for i in 0..11 {
            let s: DeviceStream = serde_json::from_value(json!({
                "apiVersion": "tether.dev/v1alpha1", "kind": "DeviceStream",
                "metadata": {"name": format!("s-{i}")}, "spec": {"device": "dev-0", "port": 22},
            }))?;
            streams.create(&PostParams::default(), &s).await?;
            let status = match i {
                9 => json!({"phase": "Active", "relay": "elsewhere-0"}),
                10 => json!({"phase": "Expired", "relay": "fleet-1"}),
                _ => json!({"phase": "Active", "relay": "fleet-1", "connections": 1}),
            };
            set_status::<DeviceStream>(&admin, &ns, &format!("s-{i}"), status).await?;
        }
        wait_replicas(&admin, &ns, "fleet", 4)
            .await
            .context("9 streams, max 4")?;
        let status = get::<RelayPool>(&admin, &ns, "fleet")
            .await?
            .status
            .context("status")?;
        assert_eq!(status.members[1].streams, 9, "{:?}", status.members);
        let events = events_for(&admin, &ns, "fleet").await?;
        assert!(
            events.iter().any(|(t, r)| t == "Normal" && r == "ScaledUp"),
            "{events:?}"
        );

        // Load drops to nothing: the fleet stays at 4 for the 2 s window, then shrinks to 1.
        let dropped = tokio::time::Instant::now();
        for i in 0..7 {
            set_status::<Device>(&admin, &ns, &format!("dev-{i}"), json!({"connected": false})).await?;
        }
        for i in 0..9 {
            let status = json!({"phase": "Expired", "connections": 0});
            set_status::<DeviceStream>(&admin, &ns, &format!("s-{i}"), status).await?;
        }
        let since = eventually(WAIT, || async {
            let status = get::<RelayPool>(&admin, &ns, "fleet")
                .await?
                .status
                .context("status")?;
            let since = status
                .low_load_since
                .clone()
                .context("lowLoadSince not set yet")?;
            // The window has started but not passed: still 4 relays.
            if dropped.elapsed() < Duration::from_millis(1500) {
                ensure!(status.replicas == Some(4), "shrank inside the window: {status:?}");
            }
            Ok(since)
        })
        .await?;
        loop {
            let got = pool_replicas(&admin, &ns, "fleet").await?;
            if got == (Some(1), Some(1)) {
                break;
            }
            ensure!(
                got.0.is_some_and(|r| (1..=4).contains(&r)),
                "unexpected size {got:?}"
            );
            if dropped.elapsed() > WAIT {
                bail!("did not scale down within {WAIT:?}: {got:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        ensure!(
            dropped.elapsed() >= Duration::from_secs(2),
            "scaled down after {:?}",
            dropped.elapsed()
        );
        let status = get::<RelayPool>(&admin, &ns, "fleet")
            .await?
            .status
            .context("status")?;
        let scaled = status.last_scale_time.clone().context("lastScaleTime")?;
        ensure!(
            scaled.0.as_second() - since.0.as_second() >= 2,
            "scaled at {scaled:?}, low since {since:?}"
        );
        assert!(status.low_load_since.is_none(), "{status:?}");
        let events = events_for(&admin, &ns, "fleet").await?;
        assert!(
            events.iter().any(|(t, r)| t == "Normal" && r == "ScaledDown"),
            "{events:?}"
        );

        // Bounds apply at once: raising minReplicas grows the fleet without load.
        let mut raised = pool.clone();
        raised.spec.min_replicas = 2;
        apply_pool(&admin, &raised).await?;
        wait_replicas(&admin, &ns, "fleet", 2)
            .await
            .context("minReplicas 2")?;

        ctl.stop().await
    })
    .await
}

#[tokio::test]
async fn relaypool_children_are_garbage_collected_with_the_pool() -> anyhow::Result<()> {
    let Some(env) = TestEnv::attach("relaypool_children_are_garbage_collected_with_the_pool").await else {
        return Ok(());
    };
    env.with_temp_ns("rp-gc", |env, ns| async move {
        let ctl = start(&env, &ns).await?;
        let admin = env.client();
        apply_pool(&admin, &example_pool(&ns)?).await?;
        reconciled(&admin, &ns, "relays").await?;
        child_versions(&admin, &ns, "relays")
            .await
            .context("children exist")?;
        ctl.stop().await?;

        Api::<RelayPool>::namespaced(admin.clone(), &ns)
            .delete("relays", &DeleteParams::default())
            .await?;
        let n = names("relays");
        eventually(Duration::from_secs(60), || async {
            let mut left = Vec::new();
            let checks = [
                (
                    "StatefulSet",
                    gone::<StatefulSet>(&admin, &ns, &n.stateful_set).await?,
                ),
                (
                    "public Service",
                    gone::<Service>(&admin, &ns, &n.public_service).await?,
                ),
                (
                    "headless Service",
                    gone::<Service>(&admin, &ns, &n.members_service).await?,
                ),
                ("PDB", gone::<PodDisruptionBudget>(&admin, &ns, &n.pdb).await?),
                (
                    "ServiceAccount",
                    gone::<ServiceAccount>(&admin, &ns, &n.service_account).await?,
                ),
                ("Role", gone::<Role>(&admin, &ns, &n.service_account).await?),
                (
                    "RoleBinding",
                    gone::<RoleBinding>(&admin, &ns, &n.service_account).await?,
                ),
                ("Secret", gone::<Secret>(&admin, &ns, &n.tls_secret).await?),
                ("ConfigMap", gone::<ConfigMap>(&admin, &ns, &n.trust).await?),
            ];
            for (what, gone) in checks {
                if !gone {
                    left.push(what);
                }
            }
            ensure!(left.is_empty(), "not yet collected: {left:?}");
            Ok(())
        })
        .await
    })
    .await
}

/// The pool's `Ready` condition once it has one with `reason`.
async fn ready_with_reason(client: &Client, ns: &str, name: &str, reason: &str) -> anyhow::Result<String> {
    let api = Api::<RelayPool>::namespaced(client.clone(), ns);
    eventually(WAIT, || async {
        let pool = api.get(name).await?;
        let ready = pool
            .status
            .iter()
            .flat_map(|s| s.conditions.iter())
            .find(|c| c.type_ == "Ready" && c.status == "False" && c.reason == reason)
            .with_context(|| format!("no Ready=False/{reason} yet: {:?}", pool.status))?;
        Ok(ready.message.clone())
    })
    .await
}

#[tokio::test]
async fn relaypool_outside_the_operator_namespace_gets_no_certificate() -> anyhow::Result<()> {
    let Some(env) = TestEnv::attach("relaypool_outside_the_operator_namespace_gets_no_certificate").await
    else {
        return Ok(());
    };
    env.with_temp_ns("rp-home", |env, home| async move {
        let tenant_guard = env.temp_ns("rp-tenant").await?;
        let tenant = tenant_guard.name().to_owned();
        let ctl = start_watching(&env, &home, &tenant).await?;
        let admin = env.client();
        // A tenant asks for the production relay domain.
        apply_pool(&admin, &example_pool(&tenant)?).await?;
        let message = ready_with_reason(&admin, &tenant, "relays", "WrongNamespace").await?;
        assert!(message.contains(&home), "{message}");
        assert_eq!(
            opsupport::wait_event(&admin, &tenant, "relays", "WrongNamespace").await?,
            "Warning"
        );
        // Give a wrong reconcile time to act, then check nothing was issued or built anywhere.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let n = names("relays");
        for ns in [&tenant, &home] {
            let secret = Api::<Secret>::namespaced(admin.clone(), ns)
                .get_opt(&n.tls_secret)
                .await?;
            ensure!(secret.is_none(), "a serving certificate Secret exists in {ns}");
            let sts = Api::<StatefulSet>::namespaced(admin.clone(), ns)
                .get_opt(&n.stateful_set)
                .await?;
            ensure!(sts.is_none(), "relays were started in {ns}");
        }
        ctl.stop().await
    })
    .await
}

#[tokio::test]
async fn relaypool_does_not_take_over_objects_it_does_not_own() -> anyhow::Result<()> {
    let Some(env) = TestEnv::attach("relaypool_does_not_take_over_objects_it_does_not_own").await else {
        return Ok(());
    };
    env.with_temp_ns("rp-takeover", |env, ns| async move {
        let admin = env.client();
        // Someone's Service `web`, created before any RelayPool.
        let theirs: Service = serde_json::from_value(json!({
            "metadata": {"name": "web", "labels": {"app": "shop"}},
            "spec": {"selector": {"app": "shop"}, "ports": [{"name": "http", "port": 80}]},
        }))?;
        Api::<Service>::namespaced(admin.clone(), &ns)
            .create(&PostParams::default(), &theirs)
            .await?;
        let ctl = start(&env, &ns).await?;
        let mut pool = example_pool(&ns)?;
        pool.metadata.name = Some("web".into());
        apply_pool(&admin, &pool).await?;
        let message = ready_with_reason(&admin, &ns, "web", "ChildConflict").await?;
        assert!(message.contains("Service web"), "{message}");
        assert_eq!(
            opsupport::wait_event(&admin, &ns, "web", "ChildConflict").await?,
            "Warning"
        );
        // Their Service is untouched, and nothing of the pool was written (checked before any apply).
        let svc: Service = get(&admin, &ns, "web").await?;
        ensure!(svc.metadata.owner_references.is_none(), "{:?}", svc.metadata);
        ensure!(
            svc.labels().get("app").map(String::as_str) == Some("shop")
                && !svc.labels().contains_key("app.kubernetes.io/managed-by"),
            "labels rewritten: {:?}",
            svc.labels()
        );
        let ports = svc.spec.and_then(|s| s.ports).unwrap_or_default();
        ensure!(
            ports.len() == 1 && ports[0].port == 80,
            "ports rewritten: {ports:?}"
        );
        let secret = Api::<Secret>::namespaced(admin.clone(), &ns)
            .get_opt("web-tls")
            .await?;
        ensure!(
            secret.is_none(),
            "the serving certificate was written despite the conflict"
        );

        // A second pool for the same relay domain is refused too; the first keeps it. (Creation
        // times have one-second resolution, and a tie goes by name: make "older" unambiguous.)
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let mut second = example_pool(&ns)?;
        second.metadata.name = Some("relays2".into());
        apply_pool(&admin, &second).await?;
        let message = ready_with_reason(&admin, &ns, "relays2", "RelayDomainConflict").await?;
        assert!(message.contains("\"web\""), "{message}");
        ctl.stop().await
    })
    .await
}
