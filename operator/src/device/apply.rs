//! Apply: server-side apply of the credentials Secret, skipped when nothing would change.

use k8s_openapi::api::core::v1::Secret;

use super::Error;
use crate::{Context, k8s};

/// Applies `desired` unless `current` already matches it; returns whether it wrote.
///
/// # Errors
/// [`Error::Apply`] when the API server refuses the patch.
pub async fn apply_credentials(
    ctx: &Context,
    current: Option<&Secret>,
    desired: &Secret,
) -> Result<bool, Error> {
    if k8s::secret_up_to_date(current, desired) {
        return Ok(false);
    }
    k8s::apply_secret(&ctx.client, desired)
        .await
        .map_err(Error::Apply)?;
    Ok(true)
}
