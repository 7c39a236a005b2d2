//! Device revocation from Devices: a Device set `disabled` or deleted has its live session closed
//! at once and its certificate refused until the Device exists and is enabled again.
//!
//! Only Devices this relay has seen are acted on: a device key with no Device resource (standalone
//! credentials) is left alone. A Device that vanished while the watch was down is revoked when the
//! re-list ends without it.

use std::collections::HashSet;

use futures_util::StreamExt;
use kube::{
    Api, Client, ResourceExt,
    runtime::{WatchStreamExt, watcher},
};
use tether_api::Device;
use tether_proto::name::DeviceKey;
use tokio_util::sync::CancellationToken;

use crate::RelayHandle;

/// Watches every Device until `shutdown` fires.
pub async fn run(client: Client, relay: RelayHandle, shutdown: CancellationToken) {
    let events = watcher(Api::<Device>::all(client), watcher::Config::default()).default_backoff();
    futures_util::pin_mut!(events);
    let mut known: HashSet<DeviceKey> = HashSet::new();
    let mut relisting: Option<HashSet<DeviceKey>> = None;
    loop {
        let event = tokio::select! {
            _ = shutdown.cancelled() => return,
            e = events.next() => e,
        };
        match event {
            Some(Ok(watcher::Event::Apply(d))) => observe(&relay, &mut known, &d),
            Some(Ok(watcher::Event::InitApply(d))) => {
                if let (Some(seen), Some(key)) = (relisting.as_mut(), key(&d)) {
                    seen.insert(key);
                }
                observe(&relay, &mut known, &d);
            }
            Some(Ok(watcher::Event::Delete(d))) => {
                if let Some(key) = key(&d) {
                    known.remove(&key);
                    revoke(&relay, &key, "deleted");
                }
            }
            Some(Ok(watcher::Event::Init)) => relisting = Some(HashSet::new()),
            Some(Ok(watcher::Event::InitDone)) => {
                if let Some(seen) = relisting.take() {
                    for key in known.difference(&seen).cloned().collect::<Vec<_>>() {
                        known.remove(&key);
                        revoke(&relay, &key, "deleted while the watch was down");
                    }
                }
            }
            Some(Err(e)) => tracing::warn!(error = %e, "Device watch failed; retrying"),
            None => return,
        }
    }
}

fn key(device: &Device) -> Option<DeviceKey> {
    DeviceKey::new(&device.namespace()?, &device.name_any()).ok()
}

fn observe(relay: &RelayHandle, known: &mut HashSet<DeviceKey>, device: &Device) {
    let Some(key) = key(device) else { return };
    if device.spec.disabled {
        revoke(relay, &key, "disabled");
    } else {
        relay.lift_device(&key);
    }
    known.insert(key);
}

fn revoke(relay: &RelayHandle, key: &DeviceKey, why: &str) {
    relay.revoke_device(key);
    tracing::info!(device = %key, reason = why, "device revoked");
}
