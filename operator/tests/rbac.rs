//! The shipped RBAC (`deploy/operator/rbac.yaml`): it grants what the RelayPool controller
//! declares it needs (`relaypool::required_rbac_rules`) in the operator's namespace, nothing on
//! Secrets or workloads cluster-wide, and — on the real API server — the operator's
//! ServiceAccount cannot read a Secret or create a StatefulSet outside the namespaces it is
//! bound in. The reconcile tests check the Device/DeviceStream side by running the operator
//! under exactly this RBAC.

mod opsupport;

use anyhow::ensure;
use k8s_openapi::api::{
    apps::v1::StatefulSet,
    core::v1::Secret,
    rbac::v1::{ClusterRole, PolicyRule, Role},
};
use kube::{
    Api,
    api::{ListParams, PostParams},
};
use serde_json::json;
use tether_tests::testenv::TestEnv;

fn shipped<K: serde::de::DeserializeOwned>(kind: &str, name: &str) -> anyhow::Result<K> {
    let text = std::fs::read_to_string(opsupport::repo().join("deploy/operator/rbac.yaml"))?;
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let v: serde_json::Value = serde::Deserialize::deserialize(doc)?;
        if v["kind"] == kind && v["metadata"]["name"] == name {
            return Ok(serde_json::from_value(v)?);
        }
    }
    anyhow::bail!("no {kind} {name} in rbac.yaml")
}

#[test]
fn shipped_relay_cluster_role_is_what_relays_need() -> anyhow::Result<()> {
    use tether_operator::relaypool::build::{RELAY_CLUSTER_ROLE, relay_cluster_rules};
    let role: ClusterRole = shipped("ClusterRole", RELAY_CLUSTER_ROLE)?;
    anyhow::ensure!(
        role.rules.unwrap_or_default() == relay_cluster_rules(),
        "charts/tether/templates/relay-rbac.yaml differs from relay_cluster_rules()"
    );
    Ok(())
}

fn grants(rules: &[PolicyRule], group: &str, resource: &str, verb: &str) -> bool {
    rules.iter().any(|r| {
        r.api_groups.iter().flatten().any(|g| g == group)
            && r.resources.iter().flatten().any(|x| x == resource)
            && r.verbs.iter().any(|v| v == verb)
    })
}

#[test]
fn shipped_rbac_covers_the_relaypool_controller_in_the_operator_namespace() -> anyhow::Result<()> {
    let cluster = shipped::<ClusterRole>("ClusterRole", "tether-operator")?
        .rules
        .unwrap_or_default();
    let home = shipped::<Role>("Role", "tether-operator")?
        .rules
        .unwrap_or_default();
    for needed in tether_operator::relaypool::required_rbac_rules() {
        for group in needed.api_groups.iter().flatten() {
            for resource in needed.resources.iter().flatten() {
                for verb in &needed.verbs {
                    ensure!(
                        grants(&home, group, resource, verb) || grants(&cluster, group, resource, verb),
                        "rbac.yaml lacks {verb} on {group}/{resource} needed by the RelayPool controller"
                    );
                }
            }
        }
    }
    // Cluster-wide: no Secrets and no workload objects at all.
    for (group, resource) in [
        ("", "secrets"),
        ("", "services"),
        ("", "serviceaccounts"),
        ("", "configmaps"),
        ("apps", "statefulsets"),
        ("policy", "poddisruptionbudgets"),
        ("rbac.authorization.k8s.io", "roles"),
        ("rbac.authorization.k8s.io", "rolebindings"),
    ] {
        for verb in ["get", "list", "watch", "create", "patch", "update", "delete"] {
            ensure!(
                !grants(&cluster, group, resource, verb),
                "the cluster-wide role grants {verb} on {group}/{resource}"
            );
        }
    }
    // No wildcards: least privilege is checked rule by rule.
    let device = shipped::<ClusterRole>("ClusterRole", "tether-operator-device-secrets")?
        .rules
        .unwrap_or_default();
    for r in cluster.iter().chain(&home).chain(&device) {
        ensure!(!r.verbs.iter().any(|v| v == "*"), "wildcard verb in {r:?}");
        ensure!(
            !r.resources.iter().flatten().any(|x| x == "*"),
            "wildcard resource in {r:?}"
        );
    }
    Ok(())
}

/// Whether `result` is the API server's 403.
fn forbidden<T: std::fmt::Debug>(result: Result<T, kube::Error>) -> anyhow::Result<()> {
    match result {
        Err(kube::Error::Api(e)) if e.code == 403 => Ok(()),
        other => anyhow::bail!("expected 403 Forbidden, got {other:?}"),
    }
}

fn statefulset(name: &str) -> anyhow::Result<StatefulSet> {
    Ok(serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "c", "image": "example.invalid/x"}]},
            },
        },
    }))?)
}

#[tokio::test]
async fn the_operator_account_cannot_read_secrets_or_create_workloads_elsewhere() -> anyhow::Result<()> {
    let Some(env) =
        TestEnv::attach("the_operator_account_cannot_read_secrets_or_create_workloads_elsewhere").await
    else {
        return Ok(());
    };
    env.with_temp_ns("rbac-op", |env, op| async move {
        let devices = env.temp_ns("rbac-dev").await?;
        let other = env.temp_ns("rbac-other").await?;
        let (devices, other) = (devices.name().to_owned(), other.name().to_owned());
        opsupport::install_crds(&env)?;
        opsupport::apply_shipped_rbac(&env, &op)?;
        opsupport::bind_device_namespace(&env, &op, &devices)?;
        let admin = env.client();
        let secret: Secret = serde_json::from_value(json!({
            "metadata": {"name": "database-password"},
            "stringData": {"password": "hunter2"},
        }))?;
        Api::<Secret>::namespaced(admin.clone(), &other)
            .create(&PostParams::default(), &secret)
            .await?;
        let sa = env.service_account_client(&op, "tether-operator").await;
        let sa = sa?;
        let result = async {
            // An unrelated namespace's Secret: neither readable nor listable, nor is any Secret
            // cluster-wide.
            forbidden(
                Api::<Secret>::namespaced(sa.clone(), &other)
                    .get("database-password")
                    .await,
            )?;
            forbidden(
                Api::<Secret>::namespaced(sa.clone(), &other)
                    .list(&ListParams::default())
                    .await,
            )?;
            forbidden(Api::<Secret>::all(sa.clone()).list(&ListParams::default()).await)?;
            // StatefulSets only in the operator's namespace (dry run: authorized, not created).
            let dry = PostParams {
                dry_run: true,
                ..PostParams::default()
            };
            for ns in [&other, &devices] {
                forbidden(
                    Api::<StatefulSet>::namespaced(sa.clone(), ns)
                        .create(&dry, &statefulset("relays")?)
                        .await,
                )?;
            }
            Api::<StatefulSet>::namespaced(sa.clone(), &op)
                .create(&dry, &statefulset("relays")?)
                .await?;
            // A bound device namespace: the operator's own Secrets work there.
            Api::<Secret>::namespaced(sa.clone(), &devices)
                .create(&dry, &secret)
                .await?;
            anyhow::Ok(())
        }
        .await;
        opsupport::delete_shipped_rbac(&env, &op);
        result
    })
    .await
}
