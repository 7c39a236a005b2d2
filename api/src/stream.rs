//! The `DeviceStream` resource: a request for a stream to one port of one device.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

/// A request for a stream to one port of one device, for a limited time. Creating it is how a
/// stream is requested; its status says where to connect and which Secret holds the token;
/// deleting it revokes the token.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "tether.dev",
    version = "v1alpha1",
    kind = "DeviceStream",
    namespaced,
    status = "DeviceStreamStatus",
    shortname = "dstream",
    category = "tether",
    doc = "A stream to one port of one Device for a limited time; its status says where to connect.",
    printcolumn(name = "Device", type_ = "string", json_path = ".spec.device"),
    printcolumn(name = "Port", type_ = "integer", json_path = ".spec.port"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Relay", type_ = "string", json_path = ".status.relay"),
    printcolumn(
        name = "Expires",
        type_ = "date",
        json_path = ".status.expiresAt",
        priority = 1
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
// The field's own `self == oldSelf` does not fire when the field is added or removed.
#[x_kube(validation = Rule::new("has(self.idleTimeout) == has(oldSelf.idleTimeout)").message("idleTimeout can be set only when the DeviceStream is created"))]
pub struct DeviceStreamSpec {
    /// Name of the Device (in the same namespace). Immutable.
    #[x_kube(validation = Rule::new("self == oldSelf").message("device is immutable; create a new DeviceStream"))]
    #[x_kube(validation = Rule::new("size(self) <= 63 && self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')").message("device must be a DNS label"))]
    pub device: String,
    /// Target port on the device, 1-65535. Immutable.
    #[x_kube(validation = Rule::new("self == oldSelf").message("port is immutable; create a new DeviceStream"))]
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
    /// How long the stream may be used, as a duration (e.g. `15m`, `1h`); 1m to 24h.
    #[serde(default = "default_ttl")]
    #[x_kube(validation = Rule::new("duration(self) >= duration('1m') && duration(self) <= duration('24h')").message("ttl must be between 1m and 24h"))]
    pub ttl: String,
    /// Most concurrent connections (tunnelled TCP connections) the stream may carry.
    #[serde(default = "default_max_connections")]
    #[schemars(range(min = 1, max = 1024))]
    pub max_connections: u32,
    /// Close a connection after this long without a byte in either direction, as a duration
    /// (e.g. `10m`); 10s to 24h. Absent: connections may stay idle until the TTL. Immutable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self == oldSelf").message("idleTimeout is immutable; create a new DeviceStream"))]
    #[x_kube(validation = Rule::new("duration(self) >= duration('10s') && duration(self) <= duration('24h')").message("idleTimeout must be between 10s and 24h"))]
    pub idle_timeout: Option<String>,
}

fn default_ttl() -> String {
    "1h".into()
}

fn default_max_connections() -> u32 {
    4
}

/// Lifecycle of a DeviceStream.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamPhase {
    /// Accepted, token not yet issued.
    Pending,
    /// Token issued; connect to `status.endpoint`.
    Ready,
    /// At least one connection is open.
    Active,
    /// The TTL has passed; the token no longer works.
    Expired,
    /// Cannot be served; see the `Ready` condition's reason and message.
    Failed,
}

/// Where a client connects.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct StreamEndpoint {
    /// Relay address, `host:port`.
    pub address: String,
    /// TLS server name (SNI) to send: `<device>.<namespace>.<relay-domain>`.
    pub server_name: String,
}

/// Observed state of a DeviceStream.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DeviceStreamStatus {
    /// Lifecycle phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<StreamPhase>,
    /// Where to connect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<StreamEndpoint>,
    /// The relay member that owns the device on the hash ring.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relay: Option<String>,
    /// The Secret (key `token`) holding the stream token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_secret: Option<String>,
    /// When the token expires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Time>,
    /// Bytes carried to the device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_to_device: Option<u64>,
    /// Bytes carried from the device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_from_device: Option<u64>,
    /// Connections currently open.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connections: Option<u32>,
    /// The generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Conditions: `Ready`, `TokenIssued`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}
