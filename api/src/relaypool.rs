//! The `RelayPool` resource: the relay fleet.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::core::v1::ResourceRequirements,
    apimachinery::pkg::apis::meta::v1::{Condition, Time},
};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

/// The relay fleet: a StatefulSet of relays behind a public Service, scaled by the operator
/// between `minReplicas` and `maxReplicas` from observed load.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "tether.dev",
    version = "v1alpha1",
    kind = "RelayPool",
    namespaced,
    status = "RelayPoolStatus",
    shortname = "rp",
    category = "tether",
    doc = "A horizontally scaled fleet of Tether relays.",
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(name = "Replicas", type_ = "integer", json_path = ".status.replicas"),
    printcolumn(name = "ReadyMembers", type_ = "integer", json_path = ".status.readyReplicas"),
    printcolumn(name = "Domain", type_ = "string", json_path = ".spec.relayDomain"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.maxReplicas >= self.minReplicas").message("maxReplicas must be at least minReplicas"))]
pub struct RelayPoolSpec {
    /// Fewest relays to run.
    #[serde(default = "default_min_replicas")]
    #[schemars(range(min = 1, max = 1000))]
    pub min_replicas: i32,
    /// Most relays to run.
    #[serde(default = "default_max_replicas")]
    #[schemars(range(min = 1, max = 1000))]
    pub max_replicas: i32,
    /// Scale so that each relay carries at most this many active streams.
    #[serde(default = "default_target_streams")]
    #[schemars(range(min = 1))]
    pub target_streams_per_relay: u32,
    /// Scale so that each relay holds at most this many connected devices.
    #[serde(default = "default_target_devices")]
    #[schemars(range(min = 1))]
    pub target_devices_per_relay: u32,
    /// How long load must stay low before the fleet shrinks (a duration such as `5m`).
    #[serde(default = "default_stabilization")]
    #[x_kube(validation = Rule::new("duration(self) >= duration('0s') && duration(self) <= duration('1h')").message("scaleDownStabilization must be between 0s and 1h"))]
    pub scale_down_stabilization: String,
    /// DNS suffix clients use in SNI (`<device>.<namespace>.<relayDomain>`) and the token audience.
    #[x_kube(validation = Rule::new("self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$') && size(self) <= 253").message("relayDomain must be a DNS name"))]
    pub relay_domain: String,
    /// Relay container image.
    #[serde(default = "default_image")]
    pub image: String,
    /// Compute resources of each relay.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// The public Service devices and clients connect to.
    #[serde(default)]
    pub service: PublicService,
}

/// The public Service of a RelayPool.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PublicService {
    /// Service type: `LoadBalancer`, `NodePort` or `ClusterIP`.
    #[serde(default = "default_service_type", rename = "type")]
    #[x_kube(validation = Rule::new("self in ['LoadBalancer', 'NodePort', 'ClusterIP']").message("type must be LoadBalancer, NodePort or ClusterIP"))]
    pub type_: String,
    /// Port exposed to devices and clients.
    #[serde(default = "default_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
    /// Annotations for the Service (e.g. cloud load-balancer settings).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

impl Default for PublicService {
    fn default() -> Self {
        Self {
            type_: default_service_type(),
            port: default_port(),
            annotations: BTreeMap::new(),
        }
    }
}

fn default_min_replicas() -> i32 {
    1
}
fn default_max_replicas() -> i32 {
    10
}
fn default_target_streams() -> u32 {
    1000
}
fn default_target_devices() -> u32 {
    5000
}
fn default_stabilization() -> String {
    "5m".into()
}
fn default_image() -> String {
    "ghcr.io/tether-dev/tether-relay:0.1.0".into()
}
fn default_service_type() -> String {
    "LoadBalancer".into()
}
fn default_port() -> i32 {
    443
}

/// Load observed on one relay member.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MemberLoad {
    /// Member (pod) name.
    pub name: String,
    /// Whether the member is ready.
    pub ready: bool,
    /// Devices connected to it.
    pub devices: u32,
    /// Active streams on it.
    pub streams: u32,
}

/// Observed state of a RelayPool.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RelayPoolStatus {
    /// Replicas the operator asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<i32>,
    /// Ready relay members.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_replicas: Option<i32>,
    /// Load per member.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub members: Vec<MemberLoad>,
    /// When the fleet last changed size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_scale_time: Option<Time>,
    /// Since when load has been low enough to shrink (scale-down stabilization).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub low_load_since: Option<Time>,
    /// The generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Conditions: `Ready`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}
