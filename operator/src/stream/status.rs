//! Status: patch the DeviceStream's status (server-side apply, own field manager) and publish
//! Events when its phase changes.

use kube::runtime::events::EventType;
use tether_api::{DeviceStream, DeviceStreamStatus, StreamPhase, conditions::types};

use super::{Error, build::status_changed};
use crate::{Context, conditions::find, k8s};

/// Patches `desired` onto `stream` when it differs; publishes an Event when the phase or the
/// `Ready` reason changes (Normal for Ready/Expired, Warning for Pending/Failed).
///
/// # Errors
/// [`Error::Status`] when the API server refuses the patch.
pub async fn update(ctx: &Context, stream: &DeviceStream, desired: &DeviceStreamStatus) -> Result<(), Error> {
    let current = stream.status.as_ref();
    if !status_changed(current, desired) {
        return Ok(());
    }
    k8s::patch_status(&ctx.client, stream, desired)
        .await
        .map_err(Error::Status)?;
    let before = current.and_then(|s| find(&s.conditions, types::READY));
    if let Some(ready) = find(&desired.conditions, types::READY)
        && before.is_none_or(|b| b.status != ready.status || b.reason != ready.reason)
    {
        let type_ = match desired.phase {
            Some(StreamPhase::Ready | StreamPhase::Active | StreamPhase::Expired) => EventType::Normal,
            _ => EventType::Warning,
        };
        let reason = if ready.reason == tether_api::conditions::reasons::READY {
            "TokenIssued"
        } else {
            ready.reason.as_str()
        };
        k8s::publish(ctx, stream, type_, reason, "Reconcile", ready.message.clone()).await;
    }
    Ok(())
}
