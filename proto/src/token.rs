//! Stream tokens: short-lived, signed authorizations for one DeviceStream.
//!
//! A token is a compact JWS (RFC 7515) with a JWT claim set (RFC 7519), signed with Ed25519
//! (`"alg":"EdDSA"`, RFC 8037), so any JWT library can mint or inspect one. Verification is strict:
//! the algorithm is pinned (no `none`, no HMAC confusion), the token is bounded in size, time checks
//! take the caller's clock with a bounded skew, and every failure has its own [`TokenError`] kind.
//!
//! Why not a JWT crate: `jsonwebtoken`'s pure-Rust backend pulls in RSA (RUSTSEC-2023-0071) and
//! reads the system clock itself; the ~100 lines here keep the check pinned to one algorithm and
//! testable with an injected clock.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD as B64};
use ed25519_dalek::{
    Signature, Signer, SigningKey, VerifyingKey,
    pkcs8::{
        DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey, spki::der::pem::LineEnding,
    },
};
use serde::{Deserialize, Serialize};

use crate::name::{DeviceKey, NameError};

/// Longest token accepted. Real tokens are ~400 bytes; the bound stops a client making the relay
/// base64-decode and parse megabytes before authentication.
pub const MAX_TOKEN_LEN: usize = 4096;
/// Longest lifetime (`exp - nbf`) a token may claim. DeviceStream TTLs are capped at 24 h; a token
/// claiming more was not minted by us.
pub const MAX_LIFETIME_SECS: u64 = 24 * 3600;
/// Largest clock skew a verifier may be configured to tolerate.
pub const MAX_CLOCK_SKEW_SECS: u64 = 300;
/// The protected header every token carries.
const HEADER: &str = r#"{"alg":"EdDSA","typ":"JWT"}"#;

/// What a stream token grants: connections to one port of one device, within a time window.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StreamClaims {
    /// UID of the DeviceStream (JWT `jti`): revocation and per-stream limits key on it.
    #[serde(rename = "jti")]
    pub stream_uid: String,
    /// Namespace of the device.
    #[serde(rename = "ns")]
    pub namespace: String,
    /// Name of the device.
    #[serde(rename = "dev")]
    pub device: String,
    /// Target port on the device.
    pub port: u16,
    /// Audience: the relay domain the token is valid for.
    #[serde(rename = "aud")]
    pub audience: String,
    /// Issued at, seconds since the Unix epoch.
    #[serde(rename = "iat")]
    pub issued_at: u64,
    /// Not valid before, seconds since the Unix epoch.
    #[serde(rename = "nbf")]
    pub not_before: u64,
    /// Expiry, seconds since the Unix epoch.
    #[serde(rename = "exp")]
    pub expires_at: u64,
    /// Most concurrent connections the stream may carry (absent: relay default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<u32>,
    /// Seconds without a byte in either direction after which the relay closes a connection of
    /// the stream (absent: never), 1 to [`MAX_LIFETIME_SECS`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<u64>,
}

impl StreamClaims {
    /// The device the claims name.
    ///
    /// # Errors
    /// When the namespace or device name is not a DNS label.
    pub fn device_key(&self) -> Result<DeviceKey, NameError> {
        DeviceKey::new(&self.namespace, &self.device)
    }
}

/// Why a token was refused. [`TokenError::reason`] gives a stable metric/log label.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Longer than [`MAX_TOKEN_LEN`].
    #[error("token is longer than {MAX_TOKEN_LEN} bytes")]
    TooLarge,
    /// Not three base64url parts with JSON header and claims.
    #[error("token is malformed: {0}")]
    Malformed(&'static str),
    /// The header names an algorithm other than EdDSA, or extra critical parameters.
    #[error("token algorithm is not EdDSA")]
    UnsupportedAlgorithm,
    /// The signature does not verify with the relay's token key.
    #[error("token signature is invalid (forged, or signed by another key)")]
    BadSignature,
    /// `exp` has passed.
    #[error("token expired at {expires_at} (now {now})")]
    Expired {
        /// The token's expiry.
        expires_at: u64,
        /// The verifier's clock.
        now: u64,
    },
    /// `nbf` is in the future.
    #[error("token is not valid before {not_before} (now {now})")]
    NotYetValid {
        /// The token's start.
        not_before: u64,
        /// The verifier's clock.
        now: u64,
    },
    /// `aud` is not this relay's domain.
    #[error("token audience {got:?} is not {expected:?}")]
    WrongAudience {
        /// The token's audience.
        got: String,
        /// What the verifier expects.
        expected: String,
    },
    /// The claims are inconsistent (bad names, port 0, lifetime too long).
    #[error("token claims are invalid: {0}")]
    InvalidClaims(String),
}

/// Why a key could not be loaded.
#[derive(Debug, thiserror::Error)]
#[error("invalid Ed25519 {kind} key: {detail}")]
pub struct KeyError {
    kind: &'static str,
    detail: String,
}

/// Signs stream tokens (held by the operator or the standalone CLI only).
pub struct TokenSigner {
    key: SigningKey,
}

impl std::fmt::Debug for TokenSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenSigner(MASKED)")
    }
}

impl TokenSigner {
    /// Generates a fresh key from the OS random source.
    pub fn generate() -> Self {
        Self {
            key: SigningKey::generate(&mut rand::rngs::OsRng),
        }
    }

    /// Loads a PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`) Ed25519 key.
    ///
    /// # Errors
    /// When the PEM is not an Ed25519 PKCS#8 private key.
    pub fn from_pkcs8_pem(pem: &str) -> Result<Self, KeyError> {
        SigningKey::from_pkcs8_pem(pem)
            .map(|key| Self { key })
            .map_err(|e| KeyError {
                kind: "private",
                detail: e.to_string(),
            })
    }

    /// The key as PKCS#8 PEM. Secret: write it only to files with mode 0600 or to Secrets.
    pub fn to_pkcs8_pem(&self) -> String {
        self.key
            .to_pkcs8_pem(LineEnding::LF)
            .map(|pem| pem.to_string())
            .unwrap_or_default()
    }

    /// The matching public key.
    pub fn verifier(&self) -> TokenVerifier {
        TokenVerifier {
            key: self.key.verifying_key(),
        }
    }

    /// Signs `claims` into a compact JWS.
    pub fn sign(&self, claims: &StreamClaims) -> String {
        let payload = serde_json::to_vec(claims).unwrap_or_default();
        let signing_input = format!("{}.{}", B64.encode(HEADER), B64.encode(payload));
        let signature = self.key.sign(signing_input.as_bytes());
        format!("{signing_input}.{}", B64.encode(signature.to_bytes()))
    }
}

/// Verifies stream tokens (held by relays).
#[derive(Clone, Debug)]
pub struct TokenVerifier {
    key: VerifyingKey,
}

#[derive(Deserialize)]
struct Header {
    alg: String,
    #[serde(default)]
    crit: Option<serde_json::Value>,
}

impl TokenVerifier {
    /// Loads an SPKI PEM (`-----BEGIN PUBLIC KEY-----`) Ed25519 key.
    ///
    /// # Errors
    /// When the PEM is not an Ed25519 public key.
    pub fn from_public_key_pem(pem: &str) -> Result<Self, KeyError> {
        VerifyingKey::from_public_key_pem(pem)
            .map(|key| Self { key })
            .map_err(|e| KeyError {
                kind: "public",
                detail: e.to_string(),
            })
    }

    /// The key as SPKI PEM.
    pub fn to_public_key_pem(&self) -> String {
        self.key.to_public_key_pem(LineEnding::LF).unwrap_or_default()
    }

    /// Verifies `token` for `audience` at time `now` (Unix seconds), tolerating `skew_secs` of clock
    /// difference (clamped to [`MAX_CLOCK_SKEW_SECS`]).
    ///
    /// # Errors
    /// One [`TokenError`] per failure kind; the signature is checked before any claim is trusted.
    pub fn verify(
        &self,
        token: &str,
        audience: &str,
        now: u64,
        skew_secs: u64,
    ) -> Result<StreamClaims, TokenError> {
        let claims = self.verify_signature(token)?;
        check_claims(&claims, audience, now, skew_secs)?;
        Ok(claims)
    }

    /// The first half of [`Self::verify`]: size, structure, algorithm and signature, then the
    /// claims' JSON. The claims are authentic but not yet checked: pass them to [`check_claims`]
    /// before trusting them (a relay caches this half, which is the expensive one).
    ///
    /// # Errors
    /// [`TokenError::TooLarge`], [`TokenError::Malformed`], [`TokenError::UnsupportedAlgorithm`]
    /// or [`TokenError::BadSignature`].
    pub fn verify_signature(&self, token: &str) -> Result<StreamClaims, TokenError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::TooLarge);
        }
        let mut parts = token.split('.');
        let (Some(header), Some(payload), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Malformed("expected three dot-separated parts"));
        };
        let header: Header = B64
            .decode(header)
            .ok()
            .and_then(|h| serde_json::from_slice(&h).ok())
            .ok_or(TokenError::Malformed("header is not base64url JSON"))?;
        if header.alg != "EdDSA" || header.crit.is_some() {
            return Err(TokenError::UnsupportedAlgorithm);
        }
        let signature: [u8; 64] = B64
            .decode(signature)
            .ok()
            .and_then(|s| s.try_into().ok())
            .ok_or(TokenError::Malformed("signature is not 64 base64url bytes"))?;
        // Three parts were found above, so the token has a last '.'.
        let signing_input = token.rsplit_once('.').map_or("", |(input, _)| input);
        self.key
            .verify_strict(signing_input.as_bytes(), &Signature::from_bytes(&signature))
            .map_err(|_| TokenError::BadSignature)?;
        B64.decode(payload)
            .ok()
            .and_then(|p| serde_json::from_slice(&p).ok())
            .ok_or(TokenError::Malformed(
                "claims are not base64url JSON of the expected shape",
            ))
    }
}

/// The second half of [`TokenVerifier::verify`]: checks authentic claims for `audience` at time
/// `now` (Unix seconds), tolerating `skew_secs` of clock difference (clamped to
/// [`MAX_CLOCK_SKEW_SECS`]).
///
/// # Errors
/// [`TokenError::InvalidClaims`], [`TokenError::WrongAudience`], [`TokenError::Expired`] or
/// [`TokenError::NotYetValid`].
pub fn check_claims(
    claims: &StreamClaims,
    audience: &str,
    now: u64,
    skew_secs: u64,
) -> Result<(), TokenError> {
    let skew = skew_secs.min(MAX_CLOCK_SKEW_SECS);
    claims
        .device_key()
        .map_err(|e| TokenError::InvalidClaims(e.to_string()))?;
    if claims.port == 0 {
        return Err(TokenError::InvalidClaims("port 0".into()));
    }
    if claims.stream_uid.is_empty() || claims.stream_uid.len() > 128 {
        return Err(TokenError::InvalidClaims(
            "stream UID must be 1-128 characters".into(),
        ));
    }
    if claims.expires_at <= claims.not_before || claims.expires_at - claims.not_before > MAX_LIFETIME_SECS {
        return Err(TokenError::InvalidClaims(format!(
            "lifetime must be between 1 s and {MAX_LIFETIME_SECS} s"
        )));
    }
    if claims
        .idle_timeout
        .is_some_and(|t| t == 0 || t > MAX_LIFETIME_SECS)
    {
        return Err(TokenError::InvalidClaims(format!(
            "idle timeout must be between 1 s and {MAX_LIFETIME_SECS} s"
        )));
    }
    if claims.audience != audience {
        return Err(TokenError::WrongAudience {
            got: claims.audience.clone(),
            expected: audience.to_owned(),
        });
    }
    if now >= claims.expires_at.saturating_add(skew) {
        return Err(TokenError::Expired {
            expires_at: claims.expires_at,
            now,
        });
    }
    if now.saturating_add(skew) < claims.not_before {
        return Err(TokenError::NotYetValid {
            not_before: claims.not_before,
            now,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000;

    fn claims() -> StreamClaims {
        StreamClaims {
            stream_uid: "6f1c-uid".into(),
            namespace: "factory-1".into(),
            device: "pump-7".into(),
            port: 22,
            audience: "relay.example.com".into(),
            issued_at: NOW,
            not_before: NOW,
            expires_at: NOW + 600,
            max_connections: Some(4),
            idle_timeout: Some(300),
        }
    }

    #[test]
    fn sign_verify_round_trip_and_keys_reload() {
        let signer = TokenSigner::generate();
        let token = signer.sign(&claims());
        let signer = TokenSigner::from_pkcs8_pem(&signer.to_pkcs8_pem()).unwrap();
        let verifier = TokenVerifier::from_public_key_pem(&signer.verifier().to_public_key_pem()).unwrap();
        assert_eq!(
            verifier.verify(&token, "relay.example.com", NOW + 1, 30).unwrap(),
            claims()
        );
        assert_eq!(format!("{signer:?}"), "TokenSigner(MASKED)");
    }

    #[test]
    fn time_checks_with_bounded_skew() {
        let signer = TokenSigner::generate();
        let v = signer.verifier();
        let token = signer.sign(&claims());
        let aud = "relay.example.com";
        assert!(matches!(
            v.verify(&token, aud, NOW + 600, 0),
            Err(TokenError::Expired { .. })
        ));
        assert!(v.verify(&token, aud, NOW + 620, 30).is_ok());
        assert!(matches!(
            v.verify(&token, aud, NOW + 630, 30),
            Err(TokenError::Expired { .. })
        ));
        assert!(matches!(
            v.verify(&token, aud, NOW - 10, 0),
            Err(TokenError::NotYetValid { .. })
        ));
        assert!(v.verify(&token, aud, NOW - 10, 30).is_ok());
        // Skew is clamped: a huge tolerance cannot resurrect a day-old token.
        assert!(matches!(
            v.verify(&token, aud, NOW + 86_400, u64::MAX),
            Err(TokenError::Expired { .. })
        ));
    }

    #[test]
    fn rejects_forged_and_confused_tokens() {
        let signer = TokenSigner::generate();
        let v = signer.verifier();
        let aud = "relay.example.com";
        let other = TokenSigner::generate().sign(&claims());
        assert_eq!(v.verify(&other, aud, NOW, 0), Err(TokenError::BadSignature));
        let token = signer.sign(&claims());
        let (input, _) = token.rsplit_once('.').unwrap();
        // Tampered claims keep the old signature.
        let mut evil = claims();
        evil.port = 3389;
        let evil_payload = B64.encode(serde_json::to_vec(&evil).unwrap());
        let header = input.split('.').next().unwrap();
        let tampered = format!("{header}.{evil_payload}.{}", token.rsplit('.').next().unwrap());
        assert_eq!(v.verify(&tampered, aud, NOW, 0), Err(TokenError::BadSignature));
        // alg=none and HS256 are refused before any signature work.
        for alg in [
            r#"{"alg":"none"}"#,
            r#"{"alg":"HS256","typ":"JWT"}"#,
            r#"{"alg":"EdDSA","crit":["x"]}"#,
        ] {
            let forged = format!(
                "{}.{}.{}",
                B64.encode(alg),
                input.split('.').nth(1).unwrap(),
                B64.encode([0u8; 64])
            );
            assert_eq!(
                v.verify(&forged, aud, NOW, 0),
                Err(TokenError::UnsupportedAlgorithm)
            );
        }
        assert!(matches!(
            v.verify(&token, "other.example.com", NOW, 0),
            Err(TokenError::WrongAudience { .. })
        ));
        assert_eq!(
            v.verify(&"a".repeat(5000), aud, NOW, 0),
            Err(TokenError::TooLarge)
        );
        for junk in [
            "",
            "a.b",
            "a.b.c.d",
            "!!.!!.!!",
            &format!("{}.e30.AA", B64.encode(HEADER)),
        ] {
            assert!(
                matches!(v.verify(junk, aud, NOW, 0), Err(TokenError::Malformed(_))),
                "{junk}"
            );
        }
    }

    #[test]
    fn rejects_invalid_claims_even_when_signed() {
        let signer = TokenSigner::generate();
        let v = signer.verifier();
        let mut long = claims();
        long.expires_at = NOW + MAX_LIFETIME_SECS + 1;
        let mut port0 = claims();
        port0.port = 0;
        let mut bad_name = claims();
        bad_name.device = "Pump_7".into();
        let mut idle0 = claims();
        idle0.idle_timeout = Some(0);
        let mut idle_long = claims();
        idle_long.idle_timeout = Some(MAX_LIFETIME_SECS + 1);
        for c in [long, port0, bad_name, idle0, idle_long] {
            let t = signer.sign(&c);
            assert!(matches!(
                v.verify(&t, "relay.example.com", NOW, 0),
                Err(TokenError::InvalidClaims(_))
            ));
        }
    }
}
