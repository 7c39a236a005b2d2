//! Reporting unusable trust anchors on the objects they block: while a trust-anchor Secret is
//! malformed the operator does not reconcile, so it marks every Device and DeviceStream it
//! watches `Ready=False/TrustAnchorInvalid` (keeping their other status) with a Warning Event.

use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Condition, jiff::Timestamp};
use kube::{
    Api, Client, ResourceExt,
    api::ListParams,
    runtime::events::{EventType, Recorder},
};
use tether_api::{
    Device, DeviceStatus, DeviceStream, DeviceStreamStatus,
    conditions::{reasons, status, types},
};

use crate::{
    conditions::{Desired, find, merge},
    k8s,
};

/// Marks every watched Device and DeviceStream `Ready=False/TrustAnchorInvalid`.
///
/// Best effort: failures are logged, and the caller retries the anchors (and this) periodically.
/// An Event is published only when an object newly turns `TrustAnchorInvalid`.
pub async fn report_invalid(
    client: &Client,
    watch_namespace: Option<&str>,
    recorder: &Recorder,
    message: &str,
) {
    let ctx_events = EventSink { recorder };
    let (devices, streams): (Api<Device>, Api<DeviceStream>) = match watch_namespace {
        Some(ns) => (
            Api::namespaced(client.clone(), ns),
            Api::namespaced(client.clone(), ns),
        ),
        None => (Api::all(client.clone()), Api::all(client.clone())),
    };
    let ready = Desired::new(
        types::READY,
        status::FALSE,
        reasons::TRUST_ANCHOR_INVALID,
        message,
    );
    match devices.list(&ListParams::default()).await {
        Ok(list) => {
            for d in list.items {
                let current = d.status.clone().unwrap_or_default();
                let conditions = replace_ready(&current.conditions, &ready, d.metadata.generation);
                let desired = DeviceStatus {
                    credentials_secret: current.credentials_secret.clone(),
                    certificate_expires_at: current.certificate_expires_at.clone(),
                    observed_generation: d.metadata.generation,
                    conditions,
                    ..DeviceStatus::default()
                };
                ctx_events
                    .mark(client, &d, &current.conditions, &desired.conditions, &desired)
                    .await;
            }
        }
        Err(e) => tracing::warn!(error = %e, "cannot list Devices to report the trust anchor problem"),
    }
    match streams.list(&ListParams::default()).await {
        Ok(list) => {
            for s in list.items {
                let current = s.status.clone().unwrap_or_default();
                let conditions = replace_ready(&current.conditions, &ready, s.metadata.generation);
                let desired = DeviceStreamStatus {
                    phase: current.phase,
                    endpoint: current.endpoint.clone(),
                    relay: current.relay.clone(),
                    token_secret: current.token_secret.clone(),
                    expires_at: current.expires_at.clone(),
                    observed_generation: s.metadata.generation,
                    conditions,
                    ..DeviceStreamStatus::default()
                };
                ctx_events
                    .mark(client, &s, &current.conditions, &desired.conditions, &desired)
                    .await;
            }
        }
        Err(e) => tracing::warn!(error = %e, "cannot list DeviceStreams to report the trust anchor problem"),
    }
}

fn replace_ready(existing: &[Condition], ready: &Desired, generation: Option<i64>) -> Vec<Condition> {
    let mut out = merge(
        existing,
        std::slice::from_ref(ready),
        generation,
        Timestamp::now(),
    );
    out.extend(existing.iter().filter(|c| c.type_ != types::READY).cloned());
    out
}

struct EventSink<'a> {
    recorder: &'a Recorder,
}

impl EventSink<'_> {
    async fn mark<K, S>(
        &self,
        client: &Client,
        obj: &K,
        before: &[Condition],
        after: &[Condition],
        status: &S,
    ) where
        K: kube::Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug,
        S: serde::Serialize,
    {
        let (b, a) = (find(before, types::READY), find(after, types::READY));
        if b == a {
            return;
        }
        if let Err(e) = k8s::patch_status(client, obj, status).await {
            tracing::warn!(error = %e, name = obj.name_any(), "cannot report TrustAnchorInvalid");
            return;
        }
        if b.is_none_or(|b| b.reason != reasons::TRUST_ANCHOR_INVALID) {
            let event = kube::runtime::events::Event {
                type_: EventType::Warning,
                reason: reasons::TRUST_ANCHOR_INVALID.into(),
                note: a.map(|c| c.message.clone()),
                action: "LoadTrustAnchors".into(),
                secondary: None,
            };
            if let Err(e) = self.recorder.publish(&event, &obj.object_ref(&())).await {
                tracing::warn!(error = %e, "cannot publish Event");
            }
        }
    }
}
