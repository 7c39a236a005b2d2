//! Build: the desired credentials Secret and status, from plain data.

use std::collections::BTreeMap;

use k8s_openapi::{api::core::v1::Secret, apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};
use kube::ResourceExt;
use tether_api::{
    Device, DeviceStatus,
    conditions::{reasons, status, types},
};
use tether_proto::name::DeviceKey;

use crate::{
    conditions::{Desired, merge},
    fleet::RelayInfo,
    k8s::owned_secret,
};

/// The credentials Secret's name for Device `name`.
pub fn secret_name(name: &str) -> String {
    format!("{name}-tether-credentials")
}

/// The credentials Secret: `tls.crt`, `tls.key`, `ca.crt`, `device` and, once a RelayPool
/// exists, `relay-endpoint` and `relay-domain`.
pub fn credentials_secret(
    device: &Device,
    key: &DeviceKey,
    cert_pem: &str,
    key_pem: &str,
    ca_pem: &str,
    relay: Option<&RelayInfo>,
) -> Secret {
    let mut data = BTreeMap::from([
        ("tls.crt".to_owned(), cert_pem.to_owned()),
        ("tls.key".to_owned(), key_pem.to_owned()),
        ("ca.crt".to_owned(), ca_pem.to_owned()),
        ("device".to_owned(), key.to_string()),
    ]);
    if let Some(relay) = relay {
        data.insert("relay-endpoint".into(), relay.endpoint.clone());
        data.insert("relay-domain".into(), relay.domain.clone());
    }
    owned_secret(device, secret_name(key.name()), key.namespace().to_owned(), data)
}

/// The desired conditions.
pub fn conditions(device: &Device, relay: Option<&RelayInfo>) -> Vec<Desired> {
    let issued = Desired::new(
        types::CREDENTIALS_ISSUED,
        status::TRUE,
        reasons::ISSUED,
        format!(
            "client certificate is in Secret {}",
            secret_name(&device.name_any())
        ),
    );
    let ready = if device.spec.disabled {
        Desired::new(
            types::READY,
            status::FALSE,
            reasons::DEVICE_DISABLED,
            "the Device is disabled (spec.disabled); set it to false to allow new streams",
        )
    } else if relay.is_none() {
        Desired::new(
            types::READY,
            status::FALSE,
            reasons::NO_RELAY_POOL,
            "credentials are issued, but no RelayPool exists in the operator's namespace, so the Secret has no \
             relay endpoint yet; create a RelayPool",
        )
    } else {
        Desired::new(
            types::READY,
            status::TRUE,
            reasons::READY,
            "credentials issued; relay endpoint known",
        )
    };
    vec![ready, issued]
}

/// The desired status.
pub fn status(device: &Device, relay: Option<&RelayInfo>, not_after: i64, now: Timestamp) -> DeviceStatus {
    let existing = device
        .status
        .as_ref()
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default();
    let generation = device.metadata.generation;
    DeviceStatus {
        credentials_secret: Some(secret_name(&device.name_any())),
        certificate_expires_at: Timestamp::from_second(not_after).ok().map(Time),
        observed_generation: generation,
        conditions: merge(existing, &conditions(device, relay), generation, now),
        ..DeviceStatus::default()
    }
}

/// Whether applying `desired` would change `current` (compares only the fields this operator
/// owns, so relay-written fields such as `connected` don't cause writes).
pub fn status_changed(current: Option<&DeviceStatus>, desired: &DeviceStatus) -> bool {
    let Some(c) = current else { return true };
    c.credentials_secret != desired.credentials_secret
        || c.certificate_expires_at != desired.certificate_expires_at
        || c.observed_generation != desired.observed_generation
        || c.conditions != desired.conditions
}
