//! The status writer: what the data plane saw, written into `Device.status` (connected, relay,
//! lastSeen, agentVersion) and `DeviceStream.status` (bytes each way, open connections) by
//! server-side apply under [`super::FIELD_MANAGER`]. The operator owns every other status field,
//! so no field has two managers.
//!
//! Cost to the API server is bounded: reports coalesce per object (the latest state wins), and
//! writes are spaced to at most `status_writes_per_second` per relay. Connects and disconnects go
//! first; stream byte counts of busy streams are refreshed every [`BUSY_REFRESH`].

use std::{collections::HashMap, sync::Arc, time::Duration};

use k8s_openapi::jiff::Timestamp;
use kube::{
    Api, Client,
    api::{Patch, PatchParams},
};
use serde_json::json;
use tether_api::{Device, DeviceStream};
use tether_proto::name::DeviceKey;
use tokio_util::sync::CancellationToken;

use super::{FIELD_MANAGER, Settings, revocation::Directory};
use crate::{
    RelayHandle,
    status::{DeviceReport, StreamSnapshot},
};

/// How often the byte counts of streams with open connections are written.
pub const BUSY_REFRESH: Duration = Duration::from_secs(5);

/// Writes reports until `shutdown` fires.
pub async fn run(
    client: Client,
    settings: Settings,
    relay: RelayHandle,
    directory: Arc<Directory>,
    shutdown: CancellationToken,
) {
    let (Some(board), Some(fleet)) = (relay.status_board(), relay.fleet()) else {
        return;
    };
    let gap = Duration::from_secs(1) / settings.status_writes_per_second.max(1);
    let mut busy = tokio::time::interval(BUSY_REFRESH);
    busy.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let params = PatchParams::apply(FIELD_MANAGER);
    let mut devices: HashMap<DeviceKey, DeviceReport> = HashMap::new();
    loop {
        let refresh = tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = board.changed.notified() => false,
            _ = busy.tick() => true,
        };
        devices.extend(board.take_devices());
        let streams = board.take_streams(refresh);
        for (device, report) in devices.drain() {
            write_device(&client, &params, &fleet.self_name, &device, &report).await;
            tokio::time::sleep(gap).await;
        }
        for (uid, snap) in streams {
            // A stream the watch has not delivered yet is reported on its next change.
            let Some(stream) = directory.get(&uid) else {
                continue;
            };
            write_stream(&client, &params, &stream.namespace, &stream.name, snap).await;
            tokio::time::sleep(gap).await;
        }
    }
}

async fn write_device(
    client: &Client,
    params: &PatchParams,
    relay: &str,
    device: &DeviceKey,
    r: &DeviceReport,
) {
    let at = Timestamp::try_from(r.at).unwrap_or_else(|_| Timestamp::now());
    let patch = json!({
        "apiVersion": format!("{}/{}", tether_api::GROUP, tether_api::VERSION),
        "kind": "Device",
        "status": {
            "connected": r.connected,
            "relay": relay,
            "lastSeen": at.to_string(),
            "agentVersion": r.agent_version,
        },
    });
    let api = Api::<Device>::namespaced(client.clone(), device.namespace());
    match api
        .patch_status(device.name(), params, &Patch::Apply(patch))
        .await
    {
        Ok(_) => tracing::debug!(%device, connected = r.connected, "device status written"),
        // A device without a Device resource (deleted meanwhile, or standalone credentials).
        Err(kube::Error::Api(e)) if e.code == 404 => {}
        Err(e) => tracing::warn!(%device, error = %e, "cannot write device status"),
    }
}

async fn write_stream(client: &Client, params: &PatchParams, namespace: &str, name: &str, s: StreamSnapshot) {
    let patch = json!({
        "apiVersion": format!("{}/{}", tether_api::GROUP, tether_api::VERSION),
        "kind": "DeviceStream",
        "status": {
            "bytesToDevice": s.to_device,
            "bytesFromDevice": s.from_device,
            "connections": s.connections,
        },
    });
    let api = Api::<DeviceStream>::namespaced(client.clone(), namespace);
    match api.patch_status(name, params, &Patch::Apply(patch)).await {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 404 => {}
        Err(e) => {
            tracing::warn!(stream = %format_args!("{namespace}/{name}"), error = %e, "cannot write stream status")
        }
    }
}
