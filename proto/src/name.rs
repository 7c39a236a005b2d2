//! Device keys, DNS-label validation, the SNI name scheme and the SPIFFE device identity.
//!
//! A device is addressed by `<namespace>/<name>`, both RFC 1123 DNS labels (as Kubernetes object
//! names of a `Device` must be). Clients put `<name>.<namespace>.<relay-domain>` in the TLS SNI so a
//! relay can route the connection before it terminates TLS.

use std::fmt;

/// Longest DNS label (RFC 1035 §2.3.4).
pub const MAX_LABEL_LEN: usize = 63;
/// Longest DNS name in text form (RFC 1035 §2.3.4: 255 octets on the wire, which is 253
/// characters written with dots and no trailing dot). Applies to SNI and to a configured domain.
pub const MAX_DNS_NAME_LEN: usize = 253;

/// Why a name was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// The label is empty or longer than 63 characters.
    #[error("{what} must be 1-63 characters, got {len}")]
    BadLength {
        /// Which part of the name.
        what: &'static str,
        /// Its length.
        len: usize,
    },
    /// The label contains something other than `a-z`, `0-9` and inner `-`.
    #[error(
        "{what} {value:?} must be a DNS label: lower-case letters, digits and '-', starting and ending with a letter or digit"
    )]
    NotDnsLabel {
        /// Which part of the name.
        what: &'static str,
        /// The offending value (already bounded in length).
        value: String,
    },
    /// The device key is not `<namespace>/<name>`.
    #[error("device must be written <namespace>/<name>, got {0:?}")]
    BadDeviceKey(String),
    /// The SNI does not end with the relay domain.
    #[error("server name {server_name:?} is not <device>.<namespace>.{relay_domain}")]
    NotUnderRelayDomain {
        /// The SNI sent by the client (bounded).
        server_name: String,
        /// The relay's domain.
        relay_domain: String,
    },
    /// The SNI is longer than a DNS name can be.
    #[error("server name is {0} characters, longer than a DNS name")]
    TooLong(usize),
    /// A configured domain is not a DNS name.
    #[error(
        "{what} {value:?} is not a DNS name: 1-{MAX_DNS_NAME_LEN} characters of dot-separated labels (lower-case letters, digits, inner '-')"
    )]
    BadDnsName {
        /// Which setting.
        what: &'static str,
        /// The offending value (bounded in length).
        value: String,
    },
    /// The certificate's URI SAN is not a Tether device identity.
    #[error("identity {0:?} is not spiffe://<trust-domain>/ns/<namespace>/device/<name>")]
    BadIdentity(String),
}

/// Checks that `value` is a DNS name of RFC 1123 labels (a relay or trust domain), naming `what`
/// in the error.
///
/// The limit is the whole name's, [`MAX_DNS_NAME_LEN`]: a device's SNI
/// `<name>.<namespace>.<domain>` must fit in it too, but that depends on the device and is
/// checked per name ([`DeviceKey::from_server_name`]; rustls on the client side), so no smaller
/// guess for the domain alone is right for every device.
///
/// # Errors
/// [`NameError::BadDnsName`].
pub fn validate_dns_name(what: &'static str, value: &str) -> Result<(), NameError> {
    let valid = !value.is_empty()
        && value.len() <= MAX_DNS_NAME_LEN
        && value.split('.').all(|l| validate_dns_label(what, l).is_ok());
    if valid {
        Ok(())
    } else {
        Err(NameError::BadDnsName {
            what,
            value: value.chars().take(MAX_DNS_NAME_LEN + 1).collect(),
        })
    }
}

/// Checks that `value` is an RFC 1123 DNS label, naming `what` in the error.
///
/// # Errors
/// [`NameError::BadLength`] or [`NameError::NotDnsLabel`].
pub fn validate_dns_label(what: &'static str, value: &str) -> Result<(), NameError> {
    if value.is_empty() || value.len() > MAX_LABEL_LEN {
        return Err(NameError::BadLength {
            what,
            len: value.len(),
        });
    }
    let bytes = value.as_bytes();
    let ok_inner = bytes
        .iter()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-');
    let ok_ends = bytes[0] != b'-' && bytes[bytes.len() - 1] != b'-';
    if ok_inner && ok_ends {
        Ok(())
    } else {
        Err(NameError::NotDnsLabel {
            what,
            value: value.chars().take(MAX_LABEL_LEN).collect(),
        })
    }
}

/// A device's address: its namespace and name, both DNS labels.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeviceKey {
    namespace: String,
    name: String,
}

impl DeviceKey {
    /// Builds a key after validating both parts.
    ///
    /// # Errors
    /// When either part is not a DNS label.
    pub fn new(namespace: &str, name: &str) -> Result<Self, NameError> {
        validate_dns_label("namespace", namespace)?;
        validate_dns_label("device name", name)?;
        Ok(Self {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        })
    }

    /// Parses `<namespace>/<name>`.
    ///
    /// # Errors
    /// When the text has no single `/` or either part is not a DNS label.
    pub fn parse(text: &str) -> Result<Self, NameError> {
        match text.split_once('/') {
            Some((ns, name)) if !name.contains('/') => Self::new(ns, name),
            _ => Err(NameError::BadDeviceKey(
                text.chars().take(2 * MAX_LABEL_LEN + 1).collect(),
            )),
        }
    }

    /// The namespace.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The device name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The SNI a client sends for this device: `<name>.<namespace>.<relay_domain>`.
    pub fn server_name(&self, relay_domain: &str) -> String {
        format!("{}.{}.{}", self.name, self.namespace, relay_domain)
    }

    /// Parses an SNI of the form `<name>.<namespace>.<relay_domain>` (case-insensitive, as DNS is).
    ///
    /// # Errors
    /// When the name is too long, is not under `relay_domain`, or has bad labels.
    pub fn from_server_name(server_name: &str, relay_domain: &str) -> Result<Self, NameError> {
        if server_name.len() > MAX_DNS_NAME_LEN {
            return Err(NameError::TooLong(server_name.len()));
        }
        let lower = server_name.to_ascii_lowercase();
        let domain = relay_domain.trim_end_matches('.').to_ascii_lowercase();
        let not_under = || NameError::NotUnderRelayDomain {
            server_name: lower.clone(),
            relay_domain: domain.clone(),
        };
        let prefix = lower
            .trim_end_matches('.')
            .strip_suffix(domain.as_str())
            .and_then(|p| p.strip_suffix('.'))
            .ok_or_else(not_under)?;
        let (name, namespace) = prefix.split_once('.').ok_or_else(not_under)?;
        if namespace.contains('.') {
            return Err(not_under());
        }
        Self::new(namespace, name)
    }

    /// The device's SPIFFE identity, carried as the URI SAN of its client certificate.
    pub fn spiffe_id(&self, trust_domain: &str) -> String {
        format!(
            "spiffe://{}/ns/{}/device/{}",
            trust_domain, self.namespace, self.name
        )
    }

    /// Parses a SPIFFE device identity issued for `trust_domain`.
    ///
    /// # Errors
    /// [`NameError::BadIdentity`] when the URI has another trust domain or shape.
    pub fn from_spiffe_id(uri: &str, trust_domain: &str) -> Result<Self, NameError> {
        let bad = || NameError::BadIdentity(uri.chars().take(MAX_DNS_NAME_LEN).collect());
        let path = uri
            .strip_prefix("spiffe://")
            .and_then(|rest| rest.strip_prefix(trust_domain))
            .and_then(|rest| rest.strip_prefix("/ns/"))
            .ok_or_else(bad)?;
        let (namespace, rest) = path.split_once('/').ok_or_else(bad)?;
        let name = rest.strip_prefix("device/").ok_or_else(bad)?;
        Self::new(namespace, name).map_err(|_| bad())
    }
}

impl fmt::Display for DeviceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_labels() {
        for ok in ["a", "pump-7", "0", &"x".repeat(63)] {
            validate_dns_label("n", ok).unwrap();
        }
        for bad in ["", "-a", "a-", "A", "a.b", "a_b", "ü", &"x".repeat(64)] {
            assert!(validate_dns_label("n", bad).is_err(), "{bad:?} accepted");
        }
    }

    /// 253 characters is the text form's limit (RFC 1035 §2.3.4), for a domain as for an SNI.
    #[test]
    fn dns_names() {
        let label = "x".repeat(63);
        let at_limit = format!("{label}.{label}.{label}.{}", "y".repeat(61));
        assert_eq!(at_limit.len(), MAX_DNS_NAME_LEN);
        for ok in ["local", "tether.local", "relay-1.example.com", at_limit.as_str()] {
            validate_dns_name("domain", ok).unwrap();
        }
        let over = format!("{at_limit}z");
        for bad in [
            "",
            ".",
            "a..b",
            "tether.local.",
            "Tether.local",
            "-a.b",
            "a_b.c",
            over.as_str(),
        ] {
            assert!(
                matches!(
                    validate_dns_name("domain", bad),
                    Err(NameError::BadDnsName { what: "domain", .. })
                ),
                "{bad:?} accepted"
            );
        }
    }

    #[test]
    fn device_key_round_trips() {
        let key = DeviceKey::parse("factory-1/pump-7").unwrap();
        assert_eq!(key.to_string(), "factory-1/pump-7");
        let sni = key.server_name("relay.example.com");
        assert_eq!(sni, "pump-7.factory-1.relay.example.com");
        assert_eq!(
            DeviceKey::from_server_name(&sni, "relay.example.com").unwrap(),
            key
        );
        assert_eq!(
            DeviceKey::from_server_name("PUMP-7.Factory-1.relay.example.com.", "relay.example.com").unwrap(),
            key
        );
        let id = key.spiffe_id("tether.local");
        assert_eq!(id, "spiffe://tether.local/ns/factory-1/device/pump-7");
        assert_eq!(DeviceKey::from_spiffe_id(&id, "tether.local").unwrap(), key);
    }

    #[test]
    fn bad_device_keys() {
        for bad in ["pump", "a/b/c", "/b", "a/", "A/b"] {
            assert!(DeviceKey::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn bad_server_names() {
        let d = "relay.example.com";
        for bad in [
            "relay.example.com",
            "pump.relay.example.com",
            "a.b.c.relay.example.com",
            "pump.ns.other.com",
            "pump.nsrelay.example.com",
            "-x.ns.relay.example.com",
            &format!("{}.ns.{d}", "a".repeat(300)),
        ] {
            assert!(DeviceKey::from_server_name(bad, d).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn bad_identities() {
        for bad in [
            "spiffe://other/ns/a/device/b",
            "spiffe://tether.local/ns/a/b",
            "spiffe://tether.local/ns/a/device/b/c",
            "https://tether.local/ns/a/device/b",
            "spiffe://tether.localx/ns/a/device/b",
        ] {
            assert!(
                DeviceKey::from_spiffe_id(bad, "tether.local").is_err(),
                "{bad:?} accepted"
            );
        }
    }
}
