//! Validate: decide, from plain data, whether the device certificate must be (re)issued.

use k8s_openapi::api::core::v1::Secret;
use tether_api::device::CredentialSettings;

use crate::k8s::secret_str;

/// Seconds per day.
const DAY: i64 = 86_400;

/// Why a certificate is issued.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IssueReason {
    /// No credentials Secret (or no certificate in it) yet.
    Missing,
    /// The certificate expires within `renewBeforeDays`.
    Renew,
    /// The certificate was issued by another CA (the CA Secret was replaced).
    CaChanged,
    /// The stored certificate or key cannot be read.
    Unreadable,
}

/// What to do with the certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CertAction {
    /// The current certificate stays; it expires at `not_after` (Unix seconds).
    Keep {
        /// Certificate PEM.
        cert_pem: String,
        /// Key PEM.
        key_pem: String,
        /// Expiry, Unix seconds.
        not_after: i64,
    },
    /// Issue a new certificate.
    Issue(IssueReason),
}

/// Decides whether the certificate in `secret` is still good at `now` (Unix seconds) under
/// `settings`, for the CA whose certificate is `ca_pem`.
pub fn cert_action(
    settings: &CredentialSettings,
    secret: Option<&Secret>,
    ca_pem: &str,
    now: i64,
) -> CertAction {
    let Some(secret) = secret else {
        return CertAction::Issue(IssueReason::Missing);
    };
    let (Some(cert), Some(key)) = (secret_str(secret, "tls.crt"), secret_str(secret, "tls.key")) else {
        return CertAction::Issue(IssueReason::Missing);
    };
    if secret_str(secret, "ca.crt") != Some(ca_pem) {
        return CertAction::Issue(IssueReason::CaChanged);
    }
    let Ok(not_after) = tether_net::pki::not_after_unix(cert) else {
        return CertAction::Issue(IssueReason::Unreadable);
    };
    if now >= renew_at(not_after, settings) {
        return CertAction::Issue(IssueReason::Renew);
    }
    CertAction::Keep {
        cert_pem: cert.to_owned(),
        key_pem: key.to_owned(),
        not_after,
    }
}

/// When a certificate expiring at `not_after` is due for renewal.
pub fn renew_at(not_after: i64, settings: &CredentialSettings) -> i64 {
    not_after - i64::from(settings.renew_before_days) * DAY
}

#[cfg(test)]
mod tests {
    use std::{collections::BTreeMap, time::Duration};

    use k8s_openapi::ByteString;
    use tether_net::pki::Ca;
    use tether_proto::name::DeviceKey;

    use super::*;

    fn secret(data: &[(&str, &str)]) -> Secret {
        Secret {
            data: Some(
                data.iter()
                    .map(|(k, v)| ((*k).to_owned(), ByteString(v.as_bytes().to_vec())))
                    .collect::<BTreeMap<_, _>>(),
            ),
            ..Secret::default()
        }
    }

    #[test]
    fn issues_when_missing_renews_when_due_and_keeps_otherwise() {
        let (ca, _) = Ca::generate("t", Duration::from_secs(86_400 * 365)).unwrap();
        let key = DeviceKey::new("ns", "pump").unwrap();
        let issued = ca
            .issue_device(&key, "example.org", Duration::from_secs(90 * 86_400))
            .unwrap();
        let settings = CredentialSettings::default();
        let now = crate::k8s::now_unix();
        assert_eq!(
            cert_action(&settings, None, ca.cert_pem(), now),
            CertAction::Issue(IssueReason::Missing)
        );
        let good = secret(&[
            ("tls.crt", &issued.cert_pem),
            ("tls.key", &issued.key_pem),
            ("ca.crt", ca.cert_pem()),
        ]);
        assert!(matches!(
            cert_action(&settings, Some(&good), ca.cert_pem(), now),
            CertAction::Keep { .. }
        ));
        // 61 days later the 90-day certificate is within the 30-day renewal window.
        let later = now + 61 * DAY;
        assert_eq!(
            cert_action(&settings, Some(&good), ca.cert_pem(), later),
            CertAction::Issue(IssueReason::Renew)
        );
        assert_eq!(
            cert_action(&settings, Some(&good), "other", now),
            CertAction::Issue(IssueReason::CaChanged)
        );
        let junk = secret(&[
            ("tls.crt", "junk"),
            ("tls.key", "junk"),
            ("ca.crt", ca.cert_pem()),
        ]);
        assert_eq!(
            cert_action(&settings, Some(&junk), ca.cert_pem(), now),
            CertAction::Issue(IssueReason::Unreadable)
        );
    }
}
