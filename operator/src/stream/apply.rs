//! Apply: publish the token Secret (minted once) or remove it when the stream cannot be used.

use k8s_openapi::api::core::v1::Secret;

use super::Error;
use crate::{Context, k8s};

/// Applies `desired` unless `current` already matches it; returns whether it wrote.
///
/// # Errors
/// [`Error::Apply`] when the API server refuses the patch.
pub async fn apply_token(ctx: &Context, current: Option<&Secret>, desired: &Secret) -> Result<bool, Error> {
    if k8s::secret_up_to_date(current, desired) {
        return Ok(false);
    }
    k8s::apply_secret(&ctx.client, desired)
        .await
        .map_err(Error::Apply)?;
    Ok(true)
}

/// Deletes the token Secret if it exists; returns whether it did.
///
/// # Errors
/// [`Error::Apply`] when the API server refuses the delete.
pub async fn remove_token(
    ctx: &Context,
    current: Option<&Secret>,
    namespace: &str,
    name: &str,
) -> Result<bool, Error> {
    if current.is_none() {
        return Ok(false);
    }
    k8s::delete_secret(&ctx.client, namespace, name)
        .await
        .map_err(Error::Apply)
}
