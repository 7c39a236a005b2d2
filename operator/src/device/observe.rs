//! Observe: the Device's credentials Secret and the relay fleet.

use k8s_openapi::api::core::v1::Secret;
use kube::Api;

use super::{Error, build::secret_name};
use crate::{Context, fleet::RelayInfo};

/// What the Device reconciler reads before deciding.
#[derive(Debug)]
pub struct Observed {
    /// The current credentials Secret, if any.
    pub secret: Option<Secret>,
    /// The relay fleet, if a RelayPool exists.
    pub relay: Option<RelayInfo>,
}

/// Reads the credentials Secret of `namespace/name` and the RelayPool.
///
/// # Errors
/// [`Error::Observe`] when a read fails.
pub async fn observe(ctx: &Context, namespace: &str, name: &str) -> Result<Observed, Error> {
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), namespace);
    let secret = secrets
        .get_opt(&secret_name(name))
        .await
        .map_err(Error::Observe)?;
    let relay = crate::fleet::observe(&ctx.client, &ctx.config.namespace)
        .await
        .map_err(Error::Observe)?;
    Ok(Observed { secret, relay })
}
