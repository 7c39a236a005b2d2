//! Status: patch the Device's status (server-side apply, own field manager) and publish Events
//! for user-relevant transitions.

use kube::runtime::events::EventType;
use tether_api::{Device, DeviceStatus, conditions::types};

use super::{Error, build::status_changed};
use crate::{Context, conditions::find, k8s};

/// Patches `desired` onto `device` when it differs, and publishes a Warning Event when the
/// `Ready` condition newly turns False (or changes reason while False).
///
/// # Errors
/// [`Error::Status`] when the API server refuses the patch.
pub async fn update(ctx: &Context, device: &Device, desired: &DeviceStatus) -> Result<(), Error> {
    let current = device.status.as_ref();
    if !status_changed(current, desired) {
        return Ok(());
    }
    k8s::patch_status(&ctx.client, device, desired)
        .await
        .map_err(Error::Status)?;
    let before = current.and_then(|s| find(&s.conditions, types::READY));
    if let Some(ready) = find(&desired.conditions, types::READY)
        && ready.status != "True"
        && before.is_none_or(|b| b.status != ready.status || b.reason != ready.reason)
    {
        k8s::publish(
            ctx,
            device,
            EventType::Warning,
            &ready.reason,
            "Reconcile",
            ready.message.clone(),
        )
        .await;
    }
    Ok(())
}
