//! Observe: the stream's Device, its token Secret and the relay fleet.

use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use tether_api::Device;

use super::{Error, build::secret_name};
use crate::{Context, fleet::RelayInfo};

/// What the DeviceStream reconciler reads before deciding.
#[derive(Debug)]
pub struct Observed {
    /// The Device named by `spec.device`, if it exists.
    pub device: Option<Device>,
    /// The token Secret, if it exists.
    pub secret: Option<Secret>,
    /// The relay fleet, if a RelayPool exists.
    pub relay: Option<RelayInfo>,
}

/// Reads the Device `namespace/device`, the token Secret of stream `name` and the RelayPool.
///
/// # Errors
/// [`Error::Observe`] when a read fails.
pub async fn observe(ctx: &Context, namespace: &str, name: &str, device: &str) -> Result<Observed, Error> {
    let devices: Api<Device> = Api::namespaced(ctx.client.clone(), namespace);
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), namespace);
    let device = devices.get_opt(device).await.map_err(Error::Observe)?;
    let secret = secrets
        .get_opt(&secret_name(name))
        .await
        .map_err(Error::Observe)?;
    let relay = crate::fleet::observe(&ctx.client, &ctx.config.namespace)
        .await
        .map_err(Error::Observe)?;
    Ok(Observed {
        device,
        secret,
        relay,
    })
}
