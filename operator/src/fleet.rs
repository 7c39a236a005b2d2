//! What Device and DeviceStream reconcilers need to know about the relay fleet: the relay
//! endpoint, domain and member names, read from the RelayPool in the operator's namespace.
//!
//! * **Endpoint**: `<relayDomain>:<spec.service.port>` (clients and agents resolve the relay domain
//!   to the public Service), unless the RelayPool carries the annotation [`ENDPOINT_ANNOTATION`]
//!   (`host:port`), which wins: for clusters whose public address is not the relay domain, and
//!   for tests that run a relay on a local port.
//! * **Members**: the ready, non-terminating endpoints of the pool's members Service, from its
//!   EndpointSlices — `tether_api::members::from_endpoint_slices`, the very function relays use,
//!   so `DeviceStream.status.relay` names the pod that really serves the device. No ready member:
//!   no owner (status says so until a relay is ready).
//! * With several RelayPools the first by name is used (one pool per cluster is the supported
//!   layout, DESIGN.md §5).

use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::{Api, ResourceExt, api::ListParams};
use tether_api::{
    RelayPool,
    members::{SERVICE_NAME_LABEL, from_endpoint_slices, members_service},
};

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
    /// Derives the fleet information from a RelayPool and its members Service's EndpointSlices.
    pub fn from_pool(pool: &RelayPool, slices: &[EndpointSlice]) -> Self {
        let name = pool.name_any();
        let endpoint = pool
            .annotations()
            .get(ENDPOINT_ANNOTATION)
            .filter(|e| !e.trim().is_empty())
            .cloned()
            .unwrap_or_else(|| format!("{}:{}", pool.spec.relay_domain, pool.spec.service.port));
        let members = from_endpoint_slices(slices).into_iter().map(|m| m.name).collect();
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

/// Reads the first RelayPool (by name) in `namespace` and its ring members.
///
/// # Errors
/// When a list fails.
pub async fn observe(client: &kube::Client, namespace: &str) -> Result<Option<RelayInfo>, kube::Error> {
    let mut pools = Api::<RelayPool>::namespaced(client.clone(), namespace)
        .list(&ListParams::default())
        .await?
        .items;
    pools.sort_by_key(ResourceExt::name_any);
    let Some(pool) = pools.first() else {
        return Ok(None);
    };
    let selector = format!("{SERVICE_NAME_LABEL}={}", members_service(&pool.name_any()));
    let slices = Api::<EndpointSlice>::namespaced(client.clone(), namespace)
        .list(&ListParams::default().labels(&selector))
        .await?
        .items;
    Ok(Some(RelayInfo::from_pool(pool, &slices)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(yaml: &str) -> RelayPool {
        serde_yaml::from_str(yaml).expect("fixture")
    }

    fn slice(yaml: &str) -> EndpointSlice {
        serde_yaml::from_str(yaml).expect("fixture")
    }

    #[test]
    fn members_are_ready_endpoints_and_endpoint_override_wins() {
        let p = pool(
            "apiVersion: tether.dev/v1alpha1\nkind: RelayPool\nmetadata: {name: relays, namespace: t}\n\
             spec: {relayDomain: relay.example.com, minReplicas: 2, maxReplicas: 5}\n",
        );
        let slices = [slice(
            "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: relays-members-x}\n\
             addressType: IPv4\nendpoints:\n\
             - {addresses: [10.0.0.2], conditions: {ready: true}, targetRef: {kind: Pod, name: relays-0}}\n\
             - {addresses: [10.0.0.3], conditions: {ready: false}, targetRef: {kind: Pod, name: relays-1}}\n\
             - {addresses: [10.0.0.4], conditions: {ready: true}, targetRef: {kind: Pod, name: relays-2}}\n",
        )];
        let info = RelayInfo::from_pool(&p, &slices);
        assert_eq!(
            info.members,
            ["relays-0", "relays-2"],
            "the not-ready relays-1 is no member"
        );
        assert_eq!(info.endpoint, "relay.example.com:443");
        assert!(info.owner("t/pump").is_some());
        assert_eq!(
            RelayInfo::from_pool(&p, &[]).owner("t/pump"),
            None,
            "no ready relay: no owner"
        );
        let p = pool(
            "apiVersion: tether.dev/v1alpha1\nkind: RelayPool\n\
             metadata: {name: relays, namespace: t, annotations: {tether.dev/endpoint: '127.0.0.1:4443'}}\n\
             spec: {relayDomain: relay.example.com, minReplicas: 2, maxReplicas: 5}\nstatus: {replicas: 3}\n",
        );
        assert_eq!(RelayInfo::from_pool(&p, &slices).endpoint, "127.0.0.1:4443");
    }
}
