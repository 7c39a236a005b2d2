//! The `Device` resource: a device that may be reached through Tether.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

/// A device that may be reached through Tether. The operator issues its client certificate into
/// a Secret named `<name>-tether-credentials`.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "tether.dev",
    version = "v1alpha1",
    kind = "Device",
    namespaced,
    status = "DeviceStatus",
    shortname = "dev",
    category = "tether",
    doc = "A device reachable through Tether relays, addressed by <namespace>/<name>.",
    validation = Rule::new(crate::NAME_IS_DNS_LABEL).message("a Device name must be a DNS label (lower-case letters, digits, '-'; at most 63 characters)"),
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status"),
    printcolumn(name = "Connected", type_ = "boolean", json_path = ".status.connected"),
    printcolumn(name = "Relay", type_ = "string", json_path = ".status.relay"),
    printcolumn(name = "Disabled", type_ = "boolean", json_path = ".spec.disabled", priority = 1),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct DeviceSpec {
    /// Target ports on the device that DeviceStreams may use. The device's agent must also allow
    /// a port in its own configuration: a stream needs both.
    #[x_kube(validation = Rule::new("self.all(p, p >= 1 && p <= 65535)").message("ports must be 1-65535"))]
    #[schemars(length(max = 64))]
    pub allowed_ports: Vec<i32>,
    /// A disabled device gets no new streams; existing DeviceStreams fail.
    #[serde(default)]
    pub disabled: bool,
    /// Client-certificate settings.
    #[serde(default)]
    pub credentials: CredentialSettings,
}

/// How the device's client certificate is issued and renewed.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.renewBeforeDays < self.validityDays").message("renewBeforeDays must be less than validityDays"))]
pub struct CredentialSettings {
    /// Certificate lifetime in days.
    #[serde(default = "default_validity_days")]
    #[schemars(range(min = 1, max = 825))]
    pub validity_days: u32,
    /// Renew the certificate this many days before it expires.
    #[serde(default = "default_renew_before_days")]
    #[schemars(range(min = 1, max = 365))]
    pub renew_before_days: u32,
}

fn default_validity_days() -> u32 {
    90
}

fn default_renew_before_days() -> u32 {
    30
}

impl Default for CredentialSettings {
    fn default() -> Self {
        Self {
            validity_days: default_validity_days(),
            renew_before_days: default_renew_before_days(),
        }
    }
}

/// Observed state of a Device.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DeviceStatus {
    /// Whether the device's agent currently has a session on a relay.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connected: Option<bool>,
    /// The relay member that owns this device on the hash ring.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relay: Option<String>,
    /// When the device was last seen connected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seen: Option<Time>,
    /// The agent's self-reported version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_version: Option<String>,
    /// Active streams on the device's session (load signal for relay autoscaling).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_streams: Option<u32>,
    /// The Secret holding the device's certificate, key, CA bundle and relay endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret: Option<String>,
    /// When the current certificate expires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate_expires_at: Option<Time>,
    /// The generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Conditions: `Ready`, `CredentialsIssued`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}
