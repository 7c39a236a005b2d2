//! Ring membership from the pool's EndpointSlices, by the definition the operator uses too
//! (`tether_api::members::from_endpoint_slices`).

use std::sync::Arc;

use futures_util::StreamExt;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::{
    Api, Client,
    runtime::{WatchStreamExt, reflector, watcher},
};
use tether_api::members::{SERVICE_NAME_LABEL, from_endpoint_slices, members_service};
use tokio_util::sync::CancellationToken;

use super::Settings;
use crate::fleet::{Fleet, Member};

/// Watches the members Service's EndpointSlices and feeds every change to `fleet`.
pub async fn run(client: Client, settings: Settings, fleet: Arc<Fleet>, shutdown: CancellationToken) {
    let api = Api::<EndpointSlice>::namespaced(client, &settings.namespace);
    let selector = format!("{SERVICE_NAME_LABEL}={}", members_service(&settings.pool));
    let (store, writer) = reflector::store();
    let events =
        reflector(writer, watcher(api, watcher::Config::default().labels(&selector))).default_backoff();
    futures_util::pin_mut!(events);
    let mut listed = false;
    loop {
        let event = tokio::select! {
            _ = shutdown.cancelled() => return,
            e = events.next() => e,
        };
        match event {
            Some(Ok(watcher::Event::InitDone)) => listed = true,
            Some(Ok(watcher::Event::Init | watcher::Event::InitApply(_))) => continue,
            Some(Ok(watcher::Event::Apply(_) | watcher::Event::Delete(_))) => {}
            Some(Err(e)) => {
                tracing::warn!(error = %e, "EndpointSlice watch failed; retrying");
                continue;
            }
            None => return,
        }
        if !listed {
            continue;
        }
        let slices = store.state();
        let members: Vec<Member> = from_endpoint_slices(slices.iter().map(AsRef::as_ref))
            .into_iter()
            .map(|m| Member {
                name: m.name,
                peer: m.peer,
            })
            .collect();
        fleet.set_members(members);
    }
}
