//! Validate: decide, from plain data, whether a DeviceStream can be served, and its time window.

use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt as _;
use tether_api::{Device, DeviceStream, conditions::reasons};
use tether_proto::token::TokenVerifier;

use crate::{fleet::RelayInfo, k8s::secret_str};

/// The stream's validity window, Unix seconds: `[not_before, expires_at)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    /// The DeviceStream's creation time.
    pub not_before: i64,
    /// Creation time plus `spec.ttl`.
    pub expires_at: i64,
}

/// What to do with a DeviceStream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Mint (once) and publish the token.
    Serve,
    /// Not servable yet (e.g. no RelayPool); may become servable without a spec change.
    Pending {
        /// Condition reason.
        reason: &'static str,
        /// What to do about it.
        message: String,
    },
    /// Cannot be served; the token Secret is removed.
    Failed {
        /// Condition reason.
        reason: &'static str,
        /// What to do about it.
        message: String,
    },
    /// The TTL has passed; the token Secret is removed.
    Expired,
}

/// The window of `stream`, or a message saying why its TTL is unusable.
pub fn window(stream: &DeviceStream) -> Result<Window, String> {
    let created = stream
        .metadata
        .creation_timestamp
        .as_ref()
        .map(|t| t.0.as_second())
        .ok_or("no creationTimestamp")?;
    let ttl =
        crate::duration::parse(&stream.spec.ttl).map_err(|e| format!("ttl {:?}: {e}", stream.spec.ttl))?;
    let ttl = i64::try_from(ttl.as_secs()).map_err(|_| "ttl too large".to_owned())?;
    if ttl < 1 || ttl.unsigned_abs() > tether_proto::token::MAX_LIFETIME_SECS {
        return Err(format!("ttl {:?} is outside 1s..24h", stream.spec.ttl));
    }
    Ok(Window {
        not_before: created,
        expires_at: created + ttl,
    })
}

/// `spec.idleTimeout` in seconds (`None`: none), or a message saying why it is unusable.
pub fn idle_timeout(stream: &DeviceStream) -> Result<Option<u64>, String> {
    let Some(text) = &stream.spec.idle_timeout else {
        return Ok(None);
    };
    let secs = crate::duration::parse(text)
        .map_err(|e| format!("idleTimeout {text:?}: {e}"))?
        .as_secs();
    if !(1..=tether_proto::token::MAX_LIFETIME_SECS).contains(&secs) {
        return Err(format!("idleTimeout {text:?} is outside 1s..24h"));
    }
    Ok(Some(secs))
}

/// Decides what to do with `stream` at `now` given its Device and the relay fleet.
pub fn verdict(
    stream: &DeviceStream,
    window: Window,
    device: Option<&Device>,
    relay: Option<&RelayInfo>,
    now: i64,
) -> Verdict {
    if now >= window.expires_at {
        return Verdict::Expired;
    }
    let name = &stream.spec.device;
    let Some(device) = device else {
        return Verdict::Failed {
            reason: reasons::DEVICE_NOT_FOUND,
            message: format!(
                "Device {name:?} does not exist in this namespace; create it or fix spec.device"
            ),
        };
    };
    if device.spec.disabled {
        return Verdict::Failed {
            reason: reasons::DEVICE_DISABLED,
            message: format!("Device {name:?} is disabled (spec.disabled); enable it to use this stream"),
        };
    }
    if !device.spec.allowed_ports.contains(&stream.spec.port) {
        return Verdict::Failed {
            reason: reasons::PORT_NOT_ALLOWED,
            message: format!(
                "port {} is not in Device {name:?} spec.allowedPorts {:?}; add it there or use an allowed port",
                stream.spec.port, device.spec.allowed_ports
            ),
        };
    }
    if relay.is_none() {
        return Verdict::Pending {
            reason: reasons::NO_RELAY_POOL,
            message: "no RelayPool exists in the operator's namespace; create one to get a relay endpoint and token".into(),
        };
    }
    Verdict::Serve
}

/// The token in `secret` if it can stay (no re-mint per reconcile, so a second reconcile changes
/// nothing): it verifies with the current key (a rotated token key re-mints) for the current
/// `relay_domain` at `now`, and names this stream's UID, device, port and idle timeout (any
/// change re-mints). `None` means: mint a new one.
pub fn reusable_token(
    secret: Option<&Secret>,
    verifier: &TokenVerifier,
    stream: &DeviceStream,
    relay_domain: &str,
    now: i64,
) -> Option<String> {
    let token = secret_str(secret?, "token")?;
    let claims = verifier
        .verify(token, relay_domain, u64::try_from(now).unwrap_or_default(), 0)
        .ok()?;
    let uid = stream.uid().unwrap_or_default();
    let same = claims.stream_uid == uid
        && claims.device == stream.spec.device
        && i32::from(claims.port) == stream.spec.port
        && claims.idle_timeout == idle_timeout(stream).ok().flatten();
    same.then(|| token.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(port: i32) -> DeviceStream {
        serde_yaml::from_str(&format!(
            "apiVersion: tether.dev/v1alpha1\nkind: DeviceStream\n\
             metadata: {{name: s, namespace: ns, uid: u1, creationTimestamp: '2026-01-01T00:00:00Z'}}\n\
             spec: {{device: pump, port: {port}, ttl: 30m}}\n"
        ))
        .expect("fixture")
    }

    fn device(disabled: bool) -> Device {
        serde_yaml::from_str(&format!(
            "apiVersion: tether.dev/v1alpha1\nkind: Device\nmetadata: {{name: pump, namespace: ns}}\n\
             spec: {{allowedPorts: [22], disabled: {disabled}}}\n"
        ))
        .expect("fixture")
    }

    fn relay() -> RelayInfo {
        RelayInfo {
            pool: "r".into(),
            domain: "relay.test".into(),
            endpoint: "relay.test:443".into(),
            members: vec!["r-0".into()],
        }
    }

    #[test]
    fn a_token_is_reused_only_while_it_matches() {
        use k8s_openapi::ByteString;
        use tether_proto::{name::DeviceKey, token::TokenSigner};
        let s = stream(22);
        let w = window(&s).unwrap();
        let now = w.not_before + 10;
        let key = DeviceKey::new("ns", "pump").unwrap();
        let signer = TokenSigner::generate();
        let token = signer.sign(&crate::stream::build::claims(&s, &key, &relay(), w, now).unwrap());
        let secret = Secret {
            data: Some([("token".to_owned(), ByteString(token.clone().into_bytes()))].into()),
            ..Secret::default()
        };
        let verifier = signer.verifier();
        let reuse = |s: &DeviceStream, v: &TokenVerifier, domain: &str, at: i64| {
            reusable_token(Some(&secret), v, s, domain, at)
        };
        assert_eq!(reuse(&s, &verifier, "relay.test", now), Some(token));
        assert_eq!(
            reusable_token(None, &verifier, &s, "relay.test", now),
            None,
            "no Secret"
        );
        assert_eq!(
            reuse(&s, &verifier, "other.test", now),
            None,
            "relay domain changed"
        );
        assert_eq!(
            reuse(&s, &TokenSigner::generate().verifier(), "relay.test", now),
            None,
            "key rotated"
        );
        assert_eq!(
            reuse(&s, &verifier, "relay.test", w.expires_at + 1),
            None,
            "expired"
        );
        assert_eq!(
            reuse(&stream(80), &verifier, "relay.test", now),
            None,
            "port changed"
        );
        let mut idle = s.clone();
        idle.spec.idle_timeout = Some("15m".into());
        assert_eq!(
            reuse(&idle, &verifier, "relay.test", now),
            None,
            "idle timeout changed"
        );
        let mut other = s.clone();
        other.metadata.uid = Some("u2".into());
        assert_eq!(
            reuse(&other, &verifier, "relay.test", now),
            None,
            "another stream"
        );
    }

    #[test]
    fn idle_timeout_is_optional_and_bounded() {
        assert_eq!(idle_timeout(&stream(22)), Ok(None));
        let mut s = stream(22);
        s.spec.idle_timeout = Some("15m".into());
        assert_eq!(idle_timeout(&s), Ok(Some(900)));
        s.spec.idle_timeout = Some("1h30m".into());
        assert_eq!(idle_timeout(&s), Ok(Some(5400)));
        for bad in ["0s", "25h", "soon", "1d", "-1m", ""] {
            s.spec.idle_timeout = Some(bad.into());
            assert!(idle_timeout(&s).is_err(), "{bad}");
        }
    }

    #[test]
    fn window_and_verdicts() {
        let s = stream(22);
        let w = window(&s).unwrap();
        assert_eq!(w.expires_at - w.not_before, 1800);
        let now = w.not_before + 10;
        assert_eq!(
            verdict(&s, w, Some(&device(false)), Some(&relay()), now),
            Verdict::Serve
        );
        assert_eq!(
            verdict(&s, w, Some(&device(false)), Some(&relay()), w.expires_at),
            Verdict::Expired
        );
        let reason = |v| match v {
            Verdict::Failed { reason, .. } | Verdict::Pending { reason, .. } => reason,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            reason(verdict(&s, w, None, Some(&relay()), now)),
            reasons::DEVICE_NOT_FOUND
        );
        assert_eq!(
            reason(verdict(&s, w, Some(&device(true)), Some(&relay()), now)),
            reasons::DEVICE_DISABLED
        );
        assert_eq!(
            reason(verdict(&stream(80), w, Some(&device(false)), Some(&relay()), now)),
            reasons::PORT_NOT_ALLOWED
        );
        assert_eq!(
            reason(verdict(&s, w, Some(&device(false)), None, now)),
            reasons::NO_RELAY_POOL
        );
    }
}
