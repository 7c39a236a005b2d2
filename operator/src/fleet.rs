//! What Device and DeviceStream reconcilers need to know about the relay fleet: the relay
//! endpoint, domain and member names, read from the RelayPool in the operator's namespace.
//!
//! * **Endpoint**: `<relayDomain>:<spec.service.port>` (clients and agents resolve the relay domain
//!   to the public Service), unless the RelayPool carries the annotation [`ENDPOINT_ANNOTATION`]
//!   (`host:port`), which wins: for clusters whose public address is not the relay domain, and
//!   for tests that run a relay on a local port.
//! * **Members**: the StatefulSet pod names `<pool>-0 .. <pool>-(N-1)`, with N =
//!   `status.replicas` (what the operator asked the StatefulSet for) or, before the RelayPool
//!   reconciler has written status, `spec.minReplicas`. Names, not readiness: the ring must agree
//!   with the relays', which hash over the StatefulSet's stable member names.
//! * With several RelayPools the first by name is used (one pool per cluster is the supported
//!   layout, DESIGN.md §5).

use kube::{Api, ResourceExt, api::ListParams};
use tether_api::RelayPool;

/// RelayPool annotation overriding the advertised relay endpoint (`host:port`).
pub const ENDPOINT_ANNOTATION: &str = "tether.dev/endpoint";

/// The relay fleet as seen by devices and streams.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RelayInfo {
    /// The RelayPool's name.
    pub pool: String,
    /// DNS suffix of SNI names; token audience.
    pub domain: String,
    /// `host:port` clients and agents dial.
    pub endpoint: String,
    /// Ring member names.
    pub members: Vec<String>,
}

impl RelayInfo {
    /// Derives the fleet information from a RelayPool.
    pub fn from_pool(pool: &RelayPool) -> Self {
        let name = pool.name_any();
        let endpoint = pool
            .annotations()
            .get(ENDPOINT_ANNOTATION)
            .filter(|e| !e.trim().is_empty())
            .cloned()
            .unwrap_or_else(|| format!("{}:{}", pool.spec.relay_domain, pool.spec.service.port));
        let replicas = pool
            .status
            .as_ref()
            .and_then(|s| s.replicas)
            .unwrap_or(pool.spec.min_replicas)
            .max(0);
        let members = (0..replicas).map(|i| format!("{name}-{i}")).collect();
        Self {
            pool: name,
            domain: pool.spec.relay_domain.clone(),
            endpoint,
            members,
        }
    }

    /// The member owning `device_key` (`<namespace>/<name>`) on the rendezvous ring.
    pub fn owner(&self, device_key: &str) -> Option<String> {
        tether_proto::ring::owner(device_key, &self.members).map(str::to_owned)
    }
}

/// Reads the first RelayPool (by name) in `namespace`.
///
/// # Errors
/// When the list fails.
pub async fn observe(client: &kube::Client, namespace: &str) -> Result<Option<RelayInfo>, kube::Error> {
    let mut pools = Api::<RelayPool>::namespaced(client.clone(), namespace)
        .list(&ListParams::default())
        .await?
        .items;
    pools.sort_by_key(ResourceExt::name_any);
    Ok(pools.first().map(RelayInfo::from_pool))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(yaml: &str) -> RelayPool {
        serde_yaml::from_str(yaml).expect("fixture")
    }

    #[test]
    fn members_from_status_or_min_replicas_and_endpoint_override() {
        let p = pool(
            "apiVersion: tether.dev/v1alpha1\nkind: RelayPool\nmetadata: {name: relays, namespace: t}\n\
             spec: {relayDomain: relay.example.com, minReplicas: 2, maxReplicas: 5}\n",
        );
        let info = RelayInfo::from_pool(&p);
        assert_eq!(info.members, ["relays-0", "relays-1"]);
        assert_eq!(info.endpoint, "relay.example.com:443");
        assert!(info.owner("t/pump").is_some());
        let p = pool(
            "apiVersion: tether.dev/v1alpha1\nkind: RelayPool\n\
             metadata: {name: relays, namespace: t, annotations: {tether.dev/endpoint: '127.0.0.1:4443'}}\n\
             spec: {relayDomain: relay.example.com, minReplicas: 2, maxReplicas: 5}\nstatus: {replicas: 3}\n",
        );
        let info = RelayInfo::from_pool(&p);
        assert_eq!(info.members.len(), 3);
        assert_eq!(info.endpoint, "127.0.0.1:4443");
    }
}
