//! Kubernetes mode (`--kubernetes`, cargo feature `kubernetes`): the relay reads its ring from the
//! pool's EndpointSlices, revokes streams and devices as their resources go, and reports device
//! and stream state into their status. The standalone path never touches this module.
//!
//! * [`members`]: EndpointSlices of `<pool>-members` → [`crate::fleet::Fleet::set_members`].
//! * [`revocation`]: DeviceStream deletion or expiry closes the stream's connections and refuses
//!   its token; its spec's `maxConnections` applies.
//! * [`devices`]: a Device disabled or deleted has its session closed and its certificate refused.
//! * [`writer`]: the status writer (server-side apply, field manager [`FIELD_MANAGER`],
//!   rate-limited).

pub mod devices;
pub mod members;
pub mod revocation;
pub mod writer;

use std::sync::Arc;

use kube::Client;
use tokio_util::sync::CancellationToken;

use crate::RelayHandle;

/// Field manager of every status field a relay writes. One name for every relay, so that a device
/// moving from one relay to another changes no field's owner.
pub const FIELD_MANAGER: &str = "tether-relay";

/// Where this relay sits in the cluster.
#[derive(Clone, Debug)]
pub struct Settings {
    /// The RelayPool's name: its members Service is `<pool>-members`.
    pub pool: String,
    /// The pool's (and this pod's) namespace.
    pub namespace: String,
    /// Status writes per second, at most (the bound on what this relay costs the API server).
    pub status_writes_per_second: u32,
}

/// Runs the watchers and the status writer until `shutdown` fires. Each restarts its watch with
/// backoff on API errors; none of them can stop the data plane.
pub async fn run(client: Client, settings: Settings, relay: RelayHandle, shutdown: CancellationToken) {
    let Some(fleet) = relay.fleet() else {
        tracing::error!("Kubernetes mode needs the fleet configuration (member name, peer port)");
        return;
    };
    let directory = Arc::new(revocation::Directory::default());
    let tasks = [
        tokio::spawn(members::run(
            client.clone(),
            settings.clone(),
            fleet,
            shutdown.clone(),
        )),
        tokio::spawn(revocation::run(
            client.clone(),
            relay.clone(),
            directory.clone(),
            shutdown.clone(),
        )),
        tokio::spawn(devices::run(client.clone(), relay.clone(), shutdown.clone())),
        tokio::spawn(writer::run(client, settings, relay, directory, shutdown)),
    ];
    for task in tasks {
        let _ = task.await;
    }
}
