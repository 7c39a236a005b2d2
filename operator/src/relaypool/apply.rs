//! Apply step: writes every child with server-side apply (forced, field manager
//! [`crate::FIELD_MANAGER`]). Applying the same objects again changes nothing on the server.
//!
//! Forcing takes every field over, so it is only done to objects this pool already controls: a
//! child name that exists without this pool's controller owner reference (say a Service `web`
//! that predates a RelayPool `web`) is refused with [`Error::ChildConflict`] before anything is
//! written, instead of being rewritten with the operator's rights.

use std::fmt::Debug;

use k8s_openapi::NamespaceResourceScope;
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{Patch, PatchParams},
};
use serde::{Serialize, de::DeserializeOwned};

use super::{Error, build::Children};

/// Whether `existing` is controlled by the owner `desired` names (same uid, controller).
fn controlled_by_same_owner<K: Resource>(existing: &K, desired: &K) -> bool {
    let Some(ours) = desired
        .owner_references()
        .iter()
        .find(|o| o.controller == Some(true))
    else {
        return false;
    };
    existing
        .owner_references()
        .iter()
        .any(|o| o.controller == Some(true) && o.uid == ours.uid)
}

/// Fails when an object named like `obj` exists and is not controlled by `obj`'s owner.
async fn check_owned<K>(client: &Client, namespace: &str, obj: &K) -> Result<(), Error>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()> + Clone + Debug + DeserializeOwned,
{
    let name = obj.name_any();
    let existing = Api::<K>::namespaced(client.clone(), namespace)
        .get_opt(&name)
        .await
        .map_err(|source| Error::Observe {
            what: "an existing child",
            source,
        })?;
    match existing {
        Some(existing) if !controlled_by_same_owner(&existing, obj) => Err(Error::ChildConflict {
            kind: K::kind(&()).into_owned(),
            name,
        }),
        _ => Ok(()),
    }
}

async fn apply<K>(client: &Client, namespace: &str, obj: &K) -> Result<(), Error>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Clone
        + Debug
        + Serialize
        + DeserializeOwned,
{
    let name = obj.name_any();
    Api::<K>::namespaced(client.clone(), namespace)
        .patch(
            &name,
            &PatchParams::apply(crate::FIELD_MANAGER).force(),
            &Patch::Apply(obj),
        )
        .await
        .map_err(|source| Error::Apply {
            kind: K::kind(&()).into_owned(),
            name,
            source,
        })?;
    Ok(())
}

/// Applies every child. The ServiceAccount and RBAC go first, the StatefulSet last, so pods never
/// start without their account, certificate and configuration.
///
/// # Errors
/// [`Error::ChildConflict`] (nothing written) when a child's name is taken by an object this pool
/// does not control; [`Error::Apply`] naming the first object the API server refused.
pub async fn apply_all(client: &Client, namespace: &str, c: &Children) -> Result<(), Error> {
    check_owned(client, namespace, &c.service_account).await?;
    check_owned(client, namespace, &c.role).await?;
    check_owned(client, namespace, &c.role_binding).await?;
    check_owned(client, namespace, &c.tls_secret).await?;
    check_owned(client, namespace, &c.trust).await?;
    check_owned(client, namespace, &c.members_service).await?;
    check_owned(client, namespace, &c.public_service).await?;
    check_owned(client, namespace, &c.pdb).await?;
    check_owned(client, namespace, &c.stateful_set).await?;
    apply(client, namespace, &c.service_account).await?;
    apply(client, namespace, &c.role).await?;
    apply(client, namespace, &c.role_binding).await?;
    apply(client, namespace, &c.tls_secret).await?;
    apply(client, namespace, &c.trust).await?;
    apply(client, namespace, &c.members_service).await?;
    apply(client, namespace, &c.public_service).await?;
    apply(client, namespace, &c.pdb).await?;
    apply(client, namespace, &c.stateful_set).await
}
