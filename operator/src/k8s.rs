//! Small helpers around the Kubernetes API shared by the reconcilers: server-side apply of owned
//! Secrets, server-side-apply status patches, Secret data access and Events.

use std::collections::BTreeMap;

use k8s_openapi::{ByteString, api::core::v1::Secret};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{DeleteParams, ObjectMeta, Patch, PatchParams},
    runtime::events::{Event, EventType},
};
use serde::{Serialize, de::DeserializeOwned};

use crate::{Context, FIELD_MANAGER, STATUS_FIELD_MANAGER};

/// Label put on every object the operator creates.
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "tether-operator");

/// The value of `key` in `secret` as UTF-8 text, if present, valid UTF-8 and not blank (every
/// Secret value the operator reads is PEM or a token: blank means unusable).
pub fn secret_str<'a>(secret: &'a Secret, key: &str) -> Option<&'a str> {
    secret
        .data
        .as_ref()?
        .get(key)
        .and_then(|b| std::str::from_utf8(&b.0).ok())
        .filter(|s| !s.trim().is_empty())
}

/// An `Opaque` Secret named `name` in `namespace`, controlled by `owner`, with string `data`.
pub fn owned_secret<K: Resource<DynamicType = ()>>(
    owner: &K,
    name: String,
    namespace: String,
    data: BTreeMap<String, String>,
) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(name),
            namespace: Some(namespace),
            labels: Some(BTreeMap::from([(
                MANAGED_BY.0.to_owned(),
                MANAGED_BY.1.to_owned(),
            )])),
            owner_references: owner.controller_owner_ref(&()).map(|r| vec![r]),
            ..ObjectMeta::default()
        },
        type_: Some("Opaque".into()),
        data: Some(
            data.into_iter()
                .map(|(k, v)| (k, ByteString(v.into_bytes())))
                .collect(),
        ),
        ..Secret::default()
    }
}

/// Whether `current` already holds exactly `desired`'s data and owner references, so applying
/// `desired` would change nothing (saves a write per reconcile).
pub fn secret_up_to_date(current: Option<&Secret>, desired: &Secret) -> bool {
    current.is_some_and(|c| {
        c.data == desired.data
            && c.metadata.owner_references.as_ref().is_some_and(|refs| {
                desired
                    .metadata
                    .owner_references
                    .iter()
                    .flatten()
                    .all(|d| refs.iter().any(|r| r.uid == d.uid))
            })
    })
}

/// Server-side applies `secret` (forcing ownership of its fields).
///
/// # Errors
/// When the API server refuses the patch.
pub async fn apply_secret(client: &Client, secret: &Secret) -> Result<Secret, kube::Error> {
    let ns = secret.metadata.namespace.clone().unwrap_or_default();
    let api: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let mut secret = secret.clone();
    secret.metadata.managed_fields = None;
    api.patch(
        &secret.name_any(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&serde_json::json!({
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": secret.metadata,
            "type": secret.type_,
            "data": secret.data,
        })),
    )
    .await
}

/// Deletes Secret `namespace/name`; absent is success.
///
/// # Errors
/// When the API server refuses the delete.
pub async fn delete_secret(client: &Client, namespace: &str, name: &str) -> Result<bool, kube::Error> {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    match api.delete(name, &DeleteParams::default()).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(false),
        Err(e) => Err(e),
    }
}

/// Server-side applies `status` to `obj`'s status subresource with the status field manager.
///
/// # Errors
/// When the API server refuses the patch.
pub async fn patch_status<K, S>(client: &Client, obj: &K, status: &S) -> Result<(), kube::Error>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
    S: Serialize,
{
    let api: Api<K> = Api::namespaced(client.clone(), &obj.namespace().unwrap_or_default());
    let patch = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": status,
    });
    api.patch_status(
        &obj.name_any(),
        &PatchParams::apply(STATUS_FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await
    .map(|_| ())
}

/// Publishes an Event about `obj`; failures are logged, never fatal (Events are best effort).
pub async fn publish<K: Resource<DynamicType = ()>>(
    ctx: &Context,
    obj: &K,
    type_: EventType,
    reason: &str,
    action: &str,
    note: String,
) {
    let event = Event {
        type_,
        reason: reason.into(),
        note: Some(note),
        action: action.into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&event, &obj.object_ref(&())).await {
        tracing::warn!(error = %e, reason, "cannot publish Event");
    }
}

/// Seconds since the Unix epoch.
pub fn now_unix() -> i64 {
    k8s_openapi::jiff::Timestamp::now().as_second()
}
