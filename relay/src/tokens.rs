//! Stream-token verification with a bounded cache of signatures already checked.
//!
//! A port forward or an SSH multiplexer opens many connections with one token; the Ed25519 check
//! is the expensive part of each setup, while the token's claims (expiry, audience, device) are
//! cheap and are checked on every use, cached or not. Only tokens whose signature verified under
//! this relay's key are cached, keyed by the whole token string.

use std::{collections::HashMap, sync::Mutex};

use tether_proto::token::{StreamClaims, TokenError, TokenVerifier, check_claims};

/// Tokens kept at most. Each entry is a token string (~400 bytes) and its claims, so the cache
/// stays under a few MiB.
pub const CAPACITY: usize = 4096;

/// Verifies stream tokens, remembering the ones whose signature is already known good.
#[derive(Debug)]
pub struct Tokens {
    verifier: TokenVerifier,
    verified: Mutex<HashMap<Box<str>, StreamClaims>>,
    capacity: usize,
}

impl Tokens {
    /// A cache of up to `capacity` tokens for `verifier`'s key.
    pub fn new(verifier: TokenVerifier, capacity: usize) -> Self {
        Self {
            verifier,
            verified: Mutex::new(HashMap::new()),
            capacity,
        }
    }

    /// Same contract as [`TokenVerifier::verify`]; the signature is checked once per token.
    ///
    /// # Errors
    /// As [`TokenVerifier::verify`].
    pub fn verify(
        &self,
        token: &str,
        audience: &str,
        now: u64,
        skew_secs: u64,
    ) -> Result<StreamClaims, TokenError> {
        let cached = self.lock().get(token).cloned();
        let claims = match cached {
            Some(claims) => claims,
            None => {
                let claims = self.verifier.verify_signature(token)?;
                self.remember(token, &claims, now, skew_secs);
                claims
            }
        };
        check_claims(&claims, audience, now, skew_secs)?;
        Ok(claims)
    }

    /// How many tokens are cached.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no token is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn remember(&self, token: &str, claims: &StreamClaims, now: u64, skew_secs: u64) {
        let mut verified = self.lock();
        if verified.len() >= self.capacity {
            // Expired tokens can never pass again; if every entry is still current, start over
            // rather than track recency: a miss only costs one signature check.
            verified.retain(|_, c| now < c.expires_at.saturating_add(skew_secs));
            if verified.len() >= self.capacity {
                verified.clear();
            }
        }
        verified.insert(token.into(), claims.clone());
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Box<str>, StreamClaims>> {
        // The map holds no invariant a panicking holder could break.
        self.verified
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use tether_proto::token::{StreamClaims, TokenError, TokenSigner};

    use super::Tokens;

    const NOW: u64 = 1_800_000_000;
    const AUD: &str = "relay.test";

    fn claims(uid: &str, expires_at: u64) -> StreamClaims {
        StreamClaims {
            stream_uid: uid.into(),
            namespace: "factory-1".into(),
            device: "pump".into(),
            port: 22,
            audience: AUD.into(),
            issued_at: NOW - 10,
            not_before: NOW - 10,
            expires_at,
            max_connections: None,
            idle_timeout: None,
        }
    }

    #[test]
    fn a_cached_token_still_expires() {
        let signer = TokenSigner::generate();
        let tokens = Tokens::new(signer.verifier(), 8);
        let token = signer.sign(&claims("a", NOW + 60));
        assert_eq!(tokens.verify(&token, AUD, NOW, 0).unwrap().stream_uid, "a");
        assert_eq!(tokens.len(), 1);
        assert!(matches!(
            tokens.verify(&token, AUD, NOW + 61, 0),
            Err(TokenError::Expired { .. })
        ));
        assert!(matches!(
            tokens.verify(&token, "other.relay", NOW, 0),
            Err(TokenError::WrongAudience { .. })
        ));
    }

    #[test]
    fn only_good_signatures_are_cached() {
        let signer = TokenSigner::generate();
        let tokens = Tokens::new(signer.verifier(), 8);
        let forged = TokenSigner::generate().sign(&claims("a", NOW + 60));
        for _ in 0..2 {
            assert_eq!(tokens.verify(&forged, AUD, NOW, 0), Err(TokenError::BadSignature));
        }
        assert!(tokens.is_empty());
        // Change the first signature character (every bit of it is significant).
        let token = signer.sign(&claims("a", NOW + 60));
        let at = token.rfind('.').unwrap() + 1;
        let swap = if token[at..].starts_with('A') { "B" } else { "A" };
        let tampered = format!("{}{swap}{}", &token[..at], &token[at + 1..]);
        assert_eq!(
            tokens.verify(&tampered, AUD, NOW, 0),
            Err(TokenError::BadSignature)
        );
        assert!(tokens.is_empty());
    }

    #[test]
    fn the_cache_stays_bounded() {
        let signer = TokenSigner::generate();
        let tokens = Tokens::new(signer.verifier(), 4);
        // Two expired-but-signed tokens are dropped first when the cache fills.
        for uid in ["old-1", "old-2"] {
            let _ = tokens.verify(&signer.sign(&claims(uid, NOW - 1)), AUD, NOW, 0);
        }
        for i in 0..2 {
            tokens
                .verify(&signer.sign(&claims(&format!("s-{i}"), NOW + 60)), AUD, NOW, 0)
                .unwrap();
        }
        assert_eq!(tokens.len(), 4);
        tokens
            .verify(&signer.sign(&claims("s-2", NOW + 60)), AUD, NOW, 0)
            .unwrap();
        assert_eq!(tokens.len(), 3, "the expired entries went");
        for i in 3..10 {
            tokens
                .verify(&signer.sign(&claims(&format!("s-{i}"), NOW + 60)), AUD, NOW, 0)
                .unwrap();
            assert!(tokens.len() <= 4);
        }
    }
}
