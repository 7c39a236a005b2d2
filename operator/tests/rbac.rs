//! The shipped RBAC (`deploy/operator/rbac.yaml`, generated from the Helm chart) grants what the
//! RelayPool controller declares it needs (`relaypool::required_rbac_rules`), the relays'
//! ClusterRole is exactly `relay_cluster_rules`, and nothing is granted twice by accident. Runs
//! without a cluster; the reconcile tests check the Device/DeviceStream side by running the
//! operator under exactly this RBAC.

mod opsupport;

use k8s_openapi::api::rbac::v1::{ClusterRole, PolicyRule};

fn shipped_cluster_role_named(name: &str) -> anyhow::Result<ClusterRole> {
    let text = std::fs::read_to_string(opsupport::repo().join("deploy/operator/rbac.yaml"))?;
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let v: serde_json::Value = serde::Deserialize::deserialize(doc)?;
        if v["kind"] == "ClusterRole" && v["metadata"]["name"] == name {
            return Ok(serde_json::from_value(v)?);
        }
    }
    anyhow::bail!("no ClusterRole {name} in rbac.yaml")
}

fn shipped_cluster_role() -> anyhow::Result<ClusterRole> {
    shipped_cluster_role_named("tether-operator")
}

#[test]
fn shipped_relay_cluster_role_is_what_relays_need() -> anyhow::Result<()> {
    use tether_operator::relaypool::build::{RELAY_CLUSTER_ROLE, relay_cluster_rules};
    let role = shipped_cluster_role_named(RELAY_CLUSTER_ROLE)?;
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
fn shipped_cluster_role_covers_the_relaypool_controller() -> anyhow::Result<()> {
    let role = shipped_cluster_role()?;
    let rules = role.rules.unwrap_or_default();
    for needed in tether_operator::relaypool::required_rbac_rules() {
        for group in needed.api_groups.iter().flatten() {
            for resource in needed.resources.iter().flatten() {
                for verb in &needed.verbs {
                    anyhow::ensure!(
                        grants(&rules, group, resource, verb),
                        "rbac.yaml lacks {verb} on {group}/{resource} needed by the RelayPool controller"
                    );
                }
            }
        }
    }
    // No wildcards: least privilege is checked rule by rule.
    for r in &rules {
        anyhow::ensure!(!r.verbs.iter().any(|v| v == "*"), "wildcard verb in {r:?}");
        anyhow::ensure!(
            !r.resources.iter().flatten().any(|x| x == "*"),
            "wildcard resource in {r:?}"
        );
    }
    Ok(())
}
