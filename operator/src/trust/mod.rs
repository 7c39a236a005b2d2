//! Trust anchors: the CA (issues relay serving and device client certificates) and the Ed25519
//! stream-token signing key, each in a Secret in the operator's namespace.
//!
//! They are created when absent and never overwritten: a Secret that exists but is malformed is
//! an error the operator reports (condition `TrustAnchorInvalid`) rather than silently replacing
//! the trust every device and relay depends on ([`report`] marks the objects it blocks).

pub mod report;

use std::{collections::BTreeMap, time::Duration};

use k8s_openapi::{ByteString, api::core::v1::Secret};
use kube::{
    Api, Client,
    api::{ObjectMeta, PostParams},
};
use tether_net::pki::Ca;

use crate::k8s::secret_str;
use tether_proto::token::{TokenSigner, TokenVerifier};

/// Secret holding the CA (`tls.crt`, `tls.key`).
pub const CA_SECRET: &str = "tether-ca";
/// Secret holding the token keys (`private.pem`, `public.pem`).
pub const TOKEN_KEY_SECRET: &str = "tether-token-key";
/// CA lifetime.
const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 86_400);

/// Why the trust anchors are unusable.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    /// The API server refused a read or create.
    #[error("Kubernetes API error on Secret {name}: {source}")]
    Api {
        /// The Secret.
        name: &'static str,
        /// The error.
        #[source]
        source: kube::Error,
    },
    /// The Secret exists but cannot be used; it is never overwritten.
    #[error(
        "Secret {namespace}/{name} is malformed ({detail}); fix or delete it to let the operator recreate it"
    )]
    Malformed {
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: &'static str,
        /// What is wrong.
        detail: String,
    },
    /// Generating new anchors failed.
    #[error("cannot generate trust anchors: {0}")]
    Generate(String),
}

/// The loaded CA and token key.
pub struct TrustAnchors {
    /// The CA.
    pub ca: Ca,
    /// Signs stream tokens.
    pub signer: TokenSigner,
}

impl TrustAnchors {
    /// The CA certificate, PEM (the trust bundle).
    pub fn ca_pem(&self) -> &str {
        self.ca.cert_pem()
    }

    /// The token verification key (for relays).
    pub fn verifier(&self) -> TokenVerifier {
        self.signer.verifier()
    }
}

fn secret(name: &'static str, namespace: &str, data: [(&str, &str); 2]) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(namespace.into()),
            labels: Some(BTreeMap::from([(
                "app.kubernetes.io/managed-by".into(),
                "tether-operator".into(),
            )])),
            ..ObjectMeta::default()
        },
        type_: Some("Opaque".into()),
        data: Some(
            data.iter()
                .map(|(k, v)| ((*k).to_owned(), ByteString(v.as_bytes().to_vec())))
                .collect(),
        ),
        ..Secret::default()
    }
}

/// Reads `name`, creating it with `make()` when absent. Create (not apply) is used so an existing
/// Secret is never overwritten, and two operator replicas racing at start agree on one winner.
async fn get_or_create(
    api: &Api<Secret>,
    name: &'static str,
    make: impl FnOnce() -> Result<Secret, TrustError>,
) -> Result<Secret, TrustError> {
    if let Some(s) = api
        .get_opt(name)
        .await
        .map_err(|source| TrustError::Api { name, source })?
    {
        return Ok(s);
    }
    match api.create(&PostParams::default(), &make()?).await {
        Ok(s) => {
            tracing::info!(secret = name, "created trust anchor");
            Ok(s)
        }
        Err(kube::Error::Api(e)) if e.code == 409 => api
            .get(name)
            .await
            .map_err(|source| TrustError::Api { name, source }),
        Err(source) => Err(TrustError::Api { name, source }),
    }
}

/// Loads the CA and token key from `namespace`, creating whichever is absent.
///
/// # Errors
/// API errors, or a Secret that exists but is malformed.
pub async fn load_or_create(client: &Client, namespace: &str) -> Result<TrustAnchors, TrustError> {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let malformed = |name, detail: String| TrustError::Malformed {
        namespace: namespace.into(),
        name,
        detail,
    };

    let ca_secret = get_or_create(&api, CA_SECRET, || {
        let (_, issued) =
            Ca::generate("Tether CA", CA_VALIDITY).map_err(|e| TrustError::Generate(e.to_string()))?;
        Ok(secret(
            CA_SECRET,
            namespace,
            [("tls.crt", &issued.cert_pem), ("tls.key", &issued.key_pem)],
        ))
    })
    .await?;
    let (Some(cert), Some(key)) = (
        secret_str(&ca_secret, "tls.crt"),
        secret_str(&ca_secret, "tls.key"),
    ) else {
        return Err(malformed(
            CA_SECRET,
            "keys tls.crt and tls.key must both be present and non-empty".into(),
        ));
    };
    let ca = Ca::from_pem(cert, key).map_err(|e| malformed(CA_SECRET, e.to_string()))?;

    let key_secret = get_or_create(&api, TOKEN_KEY_SECRET, || {
        let signer = TokenSigner::generate();
        let public = signer.verifier().to_public_key_pem();
        Ok(secret(
            TOKEN_KEY_SECRET,
            namespace,
            [("private.pem", &signer.to_pkcs8_pem()), ("public.pem", &public)],
        ))
    })
    .await?;
    let private = secret_str(&key_secret, "private.pem").ok_or_else(|| {
        malformed(
            TOKEN_KEY_SECRET,
            "key private.pem must be present and non-empty".into(),
        )
    })?;
    let signer =
        TokenSigner::from_pkcs8_pem(private).map_err(|e| malformed(TOKEN_KEY_SECRET, e.to_string()))?;
    Ok(TrustAnchors { ca, signer })
}
