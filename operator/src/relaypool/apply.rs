//! Apply step: writes every child with server-side apply (forced, field manager
//! [`crate::FIELD_MANAGER`]). Applying the same objects again changes nothing on the server.

use std::fmt::Debug;

use k8s_openapi::NamespaceResourceScope;
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{Patch, PatchParams},
};
use serde::{Serialize, de::DeserializeOwned};

use super::{Error, build::Children};

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
/// [`Error::Apply`] naming the first object the API server refused.
pub async fn apply_all(client: &Client, namespace: &str, c: &Children) -> Result<(), Error> {
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
