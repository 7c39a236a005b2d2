//! Observe step: reads what a RelayPool's reconcile depends on besides the pool itself: the
//! existing serving Secret and StatefulSet, the ready ring members and the fleet's load.

use std::collections::BTreeSet;

use k8s_openapi::api::{apps::v1::StatefulSet, core::v1::Secret, discovery::v1::EndpointSlice};
use kube::{Api, Client, api::ListParams, core::DeserializeGuard, runtime::reflector::Store};
use tether_api::{Device, DeviceStream, RelayPool};

use super::autoscale::{PoolLoad, pool_load};
use super::{Error, names};

/// What the reconcile saw.
#[derive(Clone, Debug, Default)]
pub struct Observed {
    /// The serving certificate Secret, if it exists.
    pub tls_secret: Option<Secret>,
    /// The StatefulSet, if it exists.
    pub stateful_set: Option<StatefulSet>,
    /// Names of ready members (ready endpoints of the headless Service).
    pub ready_members: BTreeSet<String>,
    /// Load on the pool; `None` until the Device and DeviceStream caches have synced.
    pub load: Option<PoolLoad>,
}

impl Observed {
    /// `status.readyReplicas` of the StatefulSet (0 when absent).
    pub fn ready_replicas(&self) -> i32 {
        self.stateful_set
            .as_ref()
            .and_then(|s| s.status.as_ref())
            .and_then(|s| s.ready_replicas)
            .unwrap_or(0)
    }

    /// `spec.replicas` of the existing StatefulSet.
    pub fn current_replicas(&self) -> Option<i32> {
        self.stateful_set
            .as_ref()
            .and_then(|s| s.spec.as_ref())
            .and_then(|s| s.replicas)
    }
}

/// The watch caches observe reads besides the API: Devices and DeviceStreams (load) and every
/// RelayPool (relay-domain uniqueness), all in the controller's watch scope.
#[derive(Clone)]
pub struct Caches {
    /// Every Device.
    pub devices: Store<Device>,
    /// Every DeviceStream.
    pub streams: Store<DeviceStream>,
    /// Every RelayPool.
    pub pools: Store<DeserializeGuard<RelayPool>>,
}

impl Caches {
    /// Every RelayPool that deserializes.
    pub fn pools(&self) -> Vec<RelayPool> {
        self.pools
            .state()
            .iter()
            .filter_map(|p| p.0.as_ref().ok().cloned())
            .collect()
    }

    /// The load of pool `pool`, once both caches have synced.
    pub fn load(&self, pool: &str) -> Option<PoolLoad> {
        if synced(&self.devices) && synced(&self.streams) {
            let (devices, streams) = (self.devices.state(), self.streams.state());
            Some(pool_load(
                pool,
                devices.iter().map(AsRef::as_ref),
                streams.iter().map(AsRef::as_ref),
            ))
        } else {
            None
        }
    }
}

/// Whether `store` has received its initial list.
fn synced<K: kube::Resource + Clone + 'static>(store: &Store<K>) -> bool
where
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    use futures_util::FutureExt as _;
    store.wait_until_ready().now_or_never().is_some_and(|r| r.is_ok())
}

/// Reads the state of pool `pool` in `namespace`.
///
/// # Errors
/// [`Error::Observe`] when the API server refuses a read.
pub async fn observe(
    client: &Client,
    caches: &Caches,
    namespace: &str,
    pool: &str,
) -> Result<Observed, Error> {
    let n = names(pool);
    let err = |what: &'static str| move |source| Error::Observe { what, source };
    let tls_secret = Api::<Secret>::namespaced(client.clone(), namespace)
        .get_opt(&n.tls_secret)
        .await
        .map_err(err("Secret"))?;
    let stateful_set = Api::<StatefulSet>::namespaced(client.clone(), namespace)
        .get_opt(&n.stateful_set)
        .await
        .map_err(err("StatefulSet"))?;
    let slices = Api::<EndpointSlice>::namespaced(client.clone(), namespace)
        .list(&ListParams::default().labels(&format!("kubernetes.io/service-name={}", n.members_service)))
        .await
        .map_err(err("EndpointSlice"))?;
    Ok(Observed {
        tls_secret,
        stateful_set,
        ready_members: ready_members(&slices.items),
        load: caches.load(pool),
    })
}

/// Names of the ready endpoints in `slices`: the Pod a `targetRef` names, else the hostname.
/// An endpoint without `conditions.ready` counts as ready, as the EndpointSlice API specifies.
pub fn ready_members(slices: &[EndpointSlice]) -> BTreeSet<String> {
    slices
        .iter()
        .flat_map(|s| s.endpoints.iter().flatten())
        .filter(|e| e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true))
        .filter_map(|e| {
            e.target_ref
                .as_ref()
                .filter(|r| r.kind.as_deref() == Some("Pod"))
                .and_then(|r| r.name.clone())
                .or_else(|| e.hostname.clone())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_members_from_slices() {
        let slice: EndpointSlice = serde_yaml::from_str(
            r#"
metadata: {name: relays-members-abc}
addressType: IPv4
endpoints:
- addresses: [10.0.0.1]
  conditions: {ready: true}
  targetRef: {kind: Pod, name: relays-0}
- addresses: [10.0.0.2]
  conditions: {ready: false}
  targetRef: {kind: Pod, name: relays-1}
- addresses: [10.0.0.3]
  hostname: relays-2
- addresses: [10.0.0.4]
  conditions: {ready: true}
"#,
        )
        .unwrap();
        let got = ready_members(&[slice]);
        assert_eq!(got.into_iter().collect::<Vec<_>>(), ["relays-0", "relays-2"]);
    }
}
