//! Validate step: checks what the CRD schema cannot express and turns the spec into a scaling
//! policy; decides whether the existing serving certificate can be kept. Plain data only.

use std::time::Duration;

use k8s_openapi::{api::core::v1::Secret, apimachinery::pkg::apis::meta::v1::OwnerReference};
use kube::{Resource, ResourceExt};
use tether_api::{RelayPool, RelayPoolSpec};
use tether_net::pki::Issued;

use super::autoscale::Policy;
use super::build::DNS_NAMES_ANNOTATION;
use crate::k8s::secret_str;

/// Longest pool name: the StatefulSet adds `-<10-character revision hash>` to it in a label value
/// (at most 63 characters), so 52 is the most that works.
pub const MAX_POOL_NAME: usize = 52;
/// Lifetime of a relay serving certificate.
pub const CERT_VALIDITY: Duration = Duration::from_secs(90 * 86_400);
/// Renew a serving certificate once it has less than this left.
pub const CERT_RENEW_BEFORE: Duration = Duration::from_secs(30 * 86_400);

/// Why a RelayPool cannot be reconciled; shown in its `Ready` condition (reason `InvalidSpec`).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Invalid {
    /// The name cannot be used for Services and StatefulSet pods.
    #[error(
        "name {0:?} must be a DNS-1035 label of at most {MAX_POOL_NAME} characters (lower-case letters, \
         digits, '-', starting with a letter): it names the relay Services and pods"
    )]
    BadName(String),
    /// `maxReplicas` < `minReplicas` (the schema rejects this too).
    #[error("maxReplicas ({max}) must be at least minReplicas ({min})")]
    Bounds {
        /// minReplicas.
        min: i32,
        /// maxReplicas.
        max: i32,
    },
    /// `scaleDownStabilization` is not a duration this operator understands.
    #[error("scaleDownStabilization {0:?} is not a duration such as 30s, 5m or 1h30m")]
    Stabilization(String),
    /// The object lacks namespace or uid (never true for objects read from the API server).
    #[error("the RelayPool has no {0}")]
    Metadata(&'static str),
}

/// A RelayPool that passed validation.
#[derive(Clone, Debug)]
pub struct Valid {
    /// Pool name.
    pub name: String,
    /// Pool namespace.
    pub namespace: String,
    /// `metadata.generation`.
    pub generation: Option<i64>,
    /// Controller owner reference for every child.
    pub owner: OwnerReference,
    /// The spec.
    pub spec: RelayPoolSpec,
    /// The scaling policy.
    pub policy: Policy,
}

fn is_dns1035_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= MAX_POOL_NAME
        && b[0].is_ascii_lowercase()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[b.len() - 1] != b'-'
}

/// Checks `pool`.
///
/// # Errors
/// [`Invalid`] with a message a person can act on.
pub fn validate(pool: &RelayPool) -> Result<Valid, Invalid> {
    let name = pool.name_any();
    if !is_dns1035_label(&name) {
        return Err(Invalid::BadName(name));
    }
    let namespace = pool.namespace().ok_or(Invalid::Metadata("namespace"))?;
    let owner = pool.controller_owner_ref(&()).ok_or(Invalid::Metadata("uid"))?;
    let spec = &pool.spec;
    if spec.max_replicas < spec.min_replicas {
        return Err(Invalid::Bounds {
            min: spec.min_replicas,
            max: spec.max_replicas,
        });
    }
    let stabilization = crate::duration::parse(&spec.scale_down_stabilization)
        .map_err(|_| Invalid::Stabilization(spec.scale_down_stabilization.clone()))?;
    let policy = Policy {
        min_replicas: spec.min_replicas,
        max_replicas: spec.max_replicas,
        target_streams_per_relay: spec.target_streams_per_relay,
        target_devices_per_relay: spec.target_devices_per_relay,
        scale_down_stabilization: stabilization,
    };
    Ok(Valid {
        name,
        namespace,
        generation: pool.meta().generation,
        owner,
        spec: spec.clone(),
        policy,
    })
}

/// The name of the pool among `others` that already serves `pool`'s relay domain, if any: the
/// oldest pool with a domain keeps it (ties broken by name), every later one is refused. Two pools
/// with one domain would mean two certificates for one name and agents landing on either fleet.
pub fn relay_domain_owner<'a>(
    pool: &RelayPool,
    others: impl IntoIterator<Item = &'a RelayPool>,
) -> Option<String> {
    let domain = pool.spec.relay_domain.to_ascii_lowercase();
    let key = |p: &RelayPool| (p.creation_timestamp().map(|t| t.0), p.name_any());
    let mine = key(pool);
    others
        .into_iter()
        .filter(|o| o.namespace() == pool.namespace() && o.name_any() != pool.name_any())
        .filter(|o| o.spec.relay_domain.to_ascii_lowercase() == domain)
        // `None` creation times (never from the API server) sort first: refuse rather than serve.
        .filter(|o| key(o) < mine)
        .min_by_key(|o| key(o))
        .map(ResourceExt::name_any)
}

/// The certificate in `secret` if it can stay: complete, issued by the current CA (`ca.crt`
/// matches), for exactly `dns_names`, and valid for more than [`CERT_RENEW_BEFORE`] after
/// `now_unix`. `None` means: issue a new one. Keeping a good certificate is what makes reconciles
/// idempotent (no new key every pass).
pub fn reusable_certificate(
    secret: Option<&Secret>,
    dns_names: &[String],
    ca_pem: &str,
    now_unix: i64,
) -> Option<Issued> {
    let secret = secret?;
    let text = |k: &str| secret_str(secret, k);
    let (cert, key, ca) = (text("tls.crt")?, text("tls.key")?, text("ca.crt")?);
    if ca != ca_pem {
        return None;
    }
    let issued_for = secret.metadata.annotations.as_ref()?.get(DNS_NAMES_ANNOTATION)?;
    if *issued_for != dns_names.join(",") {
        return None;
    }
    let not_after = tether_net::pki::not_after_unix(cert).ok()?;
    let renew_before = i64::try_from(CERT_RENEW_BEFORE.as_secs()).unwrap_or(i64::MAX);
    (not_after.saturating_sub(now_unix) > renew_before).then(|| Issued {
        cert_pem: cert.to_owned(),
        key_pem: key.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::ByteString;
    use kube::api::ObjectMeta;
    use std::collections::BTreeMap;
    use tether_net::pki::Ca;

    fn pool(yaml_spec: &str) -> RelayPool {
        let doc = format!(
            "apiVersion: tether.dev/v1alpha1\nkind: RelayPool\n\
             metadata: {{name: relays, namespace: ns, uid: u1, generation: 2}}\nspec:\n{yaml_spec}"
        );
        serde_yaml::from_str(&doc).unwrap()
    }

    #[test]
    fn the_oldest_pool_keeps_a_relay_domain() {
        let at = |name: &str, domain: &str, created: &str| -> RelayPool {
            serde_yaml::from_str(&format!(
                "apiVersion: tether.dev/v1alpha1\nkind: RelayPool\nmetadata: {{name: {name}, namespace: ns, \
                 creationTimestamp: '{created}'}}\nspec: {{relayDomain: {domain}}}"
            ))
            .unwrap()
        };
        let a = at("a", "relay.example.com", "2026-01-01T00:00:00Z");
        let b = at("b", "Relay.Example.com", "2026-01-02T00:00:00Z");
        let c = at("c", "other.example.com", "2025-01-01T00:00:00Z");
        let all = [a.clone(), b.clone(), c.clone()];
        assert_eq!(relay_domain_owner(&a, &all), None);
        assert_eq!(relay_domain_owner(&b, &all).as_deref(), Some("a"));
        assert_eq!(relay_domain_owner(&c, &all), None);
        // Same second: the name decides, the same way for both.
        let a2 = at("a2", "relay.example.com", "2026-01-01T00:00:00Z");
        assert_eq!(relay_domain_owner(&a2, [&a]).as_deref(), Some("a"));
        assert_eq!(relay_domain_owner(&a, [&a2]), None);
    }

    #[test]
    fn defaults_become_a_policy() {
        let v = validate(&pool("  relayDomain: r.example\n")).unwrap();
        assert_eq!(
            (v.name.as_str(), v.namespace.as_str(), v.generation),
            ("relays", "ns", Some(2))
        );
        assert_eq!(v.owner.uid, "u1");
        assert_eq!(v.policy.min_replicas, 1);
        assert_eq!(v.policy.max_replicas, 10);
        assert_eq!(v.policy.scale_down_stabilization, Duration::from_secs(300));
    }

    #[test]
    fn durations() {
        for (s, d) in [
            ("2s", 2_000),
            ("1h30m", 5_400_000),
            ("0s", 0),
            ("0", 0),
            ("250ms", 250),
            ("1.5m", 90_000),
        ] {
            let v = validate(&pool(&format!(
                "  relayDomain: r.example\n  scaleDownStabilization: {s}\n"
            )))
            .unwrap();
            assert_eq!(v.policy.scale_down_stabilization, Duration::from_millis(d), "{s}");
        }
        for bad in ["soon", "-1s", "1d", "\"\""] {
            let e = validate(&pool(&format!(
                "  relayDomain: r.example\n  scaleDownStabilization: {bad}\n"
            )))
            .unwrap_err();
            assert_eq!(e, Invalid::Stabilization(bad.trim_matches('"').into()), "{bad}");
            assert!(e.to_string().contains("5m"));
        }
    }

    #[test]
    fn rejects_bounds_and_names() {
        let e = validate(&pool(
            "  relayDomain: r.example\n  minReplicas: 3\n  maxReplicas: 2\n",
        ))
        .unwrap_err();
        assert_eq!(e, Invalid::Bounds { min: 3, max: 2 });
        for bad in ["1relays", "Relays", "relays-", &"r".repeat(53)] {
            let mut p = pool("  relayDomain: r.example\n");
            p.metadata.name = Some(bad.to_owned());
            assert!(matches!(validate(&p), Err(Invalid::BadName(_))), "{bad}");
        }
        let mut p = pool("  relayDomain: r.example\n");
        p.metadata.name = Some("r".repeat(52));
        assert!(validate(&p).is_ok());
        p.metadata.uid = None;
        assert_eq!(validate(&p).unwrap_err(), Invalid::Metadata("uid"));
    }

    fn secret(cert: &Issued, ca: &str, names: &str) -> Secret {
        let b = |s: &str| ByteString(s.as_bytes().to_vec());
        Secret {
            metadata: ObjectMeta {
                annotations: Some(BTreeMap::from([(
                    DNS_NAMES_ANNOTATION.to_owned(),
                    names.to_owned(),
                )])),
                ..ObjectMeta::default()
            },
            data: Some(BTreeMap::from([
                ("tls.crt".to_owned(), b(&cert.cert_pem)),
                ("tls.key".to_owned(), b(&cert.key_pem)),
                ("ca.crt".to_owned(), b(ca)),
            ])),
            ..Secret::default()
        }
    }

    #[test]
    fn keeps_a_good_certificate_and_renews_otherwise() {
        let (ca, _) = Ca::generate("test", Duration::from_secs(86_400 * 400)).unwrap();
        let names = vec!["r.example".to_owned(), "*.r.example".to_owned()];
        let cert = ca.issue_server(&names, &[], CERT_VALIDITY).unwrap();
        let now = tether_net::pki::not_after_unix(&cert.cert_pem).unwrap() - CERT_VALIDITY.as_secs() as i64;
        let good = secret(&cert, ca.cert_pem(), "r.example,*.r.example");
        let kept = reusable_certificate(Some(&good), &names, ca.cert_pem(), now).unwrap();
        assert_eq!(kept.key_pem, cert.key_pem);
        // 31 days left: keep; 29 days left: renew.
        let day = 86_400;
        assert!(reusable_certificate(Some(&good), &names, ca.cert_pem(), now + 59 * day).is_some());
        assert!(reusable_certificate(Some(&good), &names, ca.cert_pem(), now + 61 * day).is_none());
        assert!(
            reusable_certificate(None, &names, ca.cert_pem(), now).is_none(),
            "absent"
        );
        assert!(
            reusable_certificate(Some(&good), &names[..1], ca.cert_pem(), now).is_none(),
            "names changed"
        );
        assert!(
            reusable_certificate(Some(&good), &names, "OTHER CA", now).is_none(),
            "CA rotated"
        );
        let mut broken = good.clone();
        broken
            .data
            .as_mut()
            .unwrap()
            .insert("tls.key".into(), ByteString(Vec::new()));
        assert!(
            reusable_certificate(Some(&broken), &names, ca.cert_pem(), now).is_none(),
            "empty key"
        );
        let garbage = secret(
            &Issued {
                cert_pem: "x".into(),
                key_pem: "y".into(),
            },
            ca.cert_pem(),
            "r.example,*.r.example",
        );
        assert!(
            reusable_certificate(Some(&garbage), &names, ca.cert_pem(), now).is_none(),
            "unparsable"
        );
    }
}
