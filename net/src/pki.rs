//! A small certificate authority: issues relay serving certificates and device client certificates.
//!
//! Keys are ECDSA P-256 (fast handshakes: ~3x RSA-2048 on our machines, see notes/anchors.md).
//! Device certificates carry the device's SPIFFE ID as their only URI SAN (DESIGN.md §2); the relay
//! takes a device's identity from nothing else.

use std::net::IpAddr;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use tether_proto::name::DeviceKey;
use time::{Duration, OffsetDateTime};

/// Why a certificate could not be issued or the CA loaded.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// rcgen refused the parameters or the PEM.
    #[error("certificate error: {0}")]
    Rcgen(#[from] rcgen::Error),
    /// The certificate could not be parsed.
    #[error("cannot parse certificate: {0}")]
    Parse(String),
}

/// A certificate and its private key, both PEM. The key is secret: never log it.
#[derive(Clone)]
pub struct Issued {
    /// The certificate, PEM.
    pub cert_pem: String,
    /// The private key, PKCS#8 PEM.
    pub key_pem: String,
}

impl std::fmt::Debug for Issued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issued")
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"MASKED")
            .finish()
    }
}

/// Backdating of `notBefore`, so a peer whose clock is slightly behind accepts a fresh certificate.
const BACKDATE: Duration = Duration::minutes(5);

/// A loaded CA: its certificate and signing key.
pub struct Ca {
    cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Ca(MASKED)")
    }
}

impl Ca {
    /// Generates a self-signed CA valid for `validity`.
    ///
    /// # Errors
    /// When key generation or signing fails.
    pub fn generate(common_name: &str, validity: std::time::Duration) -> Result<(Self, Issued), PkiError> {
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, common_name);
        params.distinguished_name.push(DnType::OrganizationName, "Tether");
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        set_validity(&mut params, validity);
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        let issued = Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        };
        Ok((
            Self {
                cert_pem: issued.cert_pem.clone(),
                issuer: Issuer::new(params, key),
            },
            issued,
        ))
    }

    /// Loads a CA from its PEM certificate and PEM private key.
    ///
    /// # Errors
    /// When either PEM is malformed.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, PkiError> {
        let key = KeyPair::from_pem(key_pem)?;
        let issuer = Issuer::from_ca_cert_pem(cert_pem, key)?;
        Ok(Self {
            cert_pem: cert_pem.to_owned(),
            issuer,
        })
    }

    /// The CA certificate, PEM (the trust bundle for relays, agents and clients).
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// Issues a device client certificate whose URI SAN is the device's SPIFFE ID.
    ///
    /// # Errors
    /// When key generation or signing fails.
    pub fn issue_device(
        &self,
        device: &DeviceKey,
        trust_domain: &str,
        validity: std::time::Duration,
    ) -> Result<Issued, PkiError> {
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, device.to_string());
        params.subject_alt_names = vec![SanType::URI(device.spiffe_id(trust_domain).try_into()?)];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        set_validity(&mut params, validity);
        self.sign(params)
    }

    /// Issues a relay serving certificate for `dns_names` and `ips`.
    ///
    /// # Errors
    /// When a name is invalid, or key generation or signing fails.
    pub fn issue_server(
        &self,
        dns_names: &[String],
        ips: &[IpAddr],
        validity: std::time::Duration,
    ) -> Result<Issued, PkiError> {
        let mut params = CertificateParams::new(dns_names.to_vec())?;
        params
            .subject_alt_names
            .extend(ips.iter().map(|ip| SanType::IpAddress(*ip)));
        params
            .distinguished_name
            .push(DnType::CommonName, dns_names.first().cloned().unwrap_or_default());
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        set_validity(&mut params, validity);
        self.sign(params)
    }

    fn sign(&self, params: CertificateParams) -> Result<Issued, PkiError> {
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

fn set_validity(params: &mut CertificateParams, validity: std::time::Duration) {
    let now = OffsetDateTime::now_utc();
    params.not_before = now - BACKDATE;
    params.not_after = now + Duration::seconds(validity.as_secs().min(i64::MAX as u64) as i64);
}

/// The `notAfter` of the first certificate in `pem`, as Unix seconds (for renewal decisions).
///
/// # Errors
/// When the PEM holds no parseable certificate.
pub fn not_after_unix(pem: &str) -> Result<i64, PkiError> {
    use x509_parser::prelude::*;
    let (_, pem) = parse_x509_pem(pem.as_bytes()).map_err(|e| PkiError::Parse(e.to_string()))?;
    let cert = pem.parse_x509().map_err(|e| PkiError::Parse(e.to_string()))?;
    Ok(cert.validity().not_after.timestamp())
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: std::time::Duration = std::time::Duration::from_secs(86_400);

    #[test]
    fn issues_device_identity_and_reloads() {
        let (ca, ca_pem) = Ca::generate("test CA", DAY).unwrap();
        let ca = Ca::from_pem(ca.cert_pem(), &ca_pem.key_pem).unwrap();
        let dev = DeviceKey::parse("factory-1/pump-7").unwrap();
        let issued = ca.issue_device(&dev, "tether.local", DAY).unwrap();
        let certs = crate::tls::parse_certs("device cert", "test", issued.cert_pem.as_bytes()).unwrap();
        assert_eq!(
            crate::tls::uri_sans(&certs[0]),
            vec![dev.spiffe_id("tether.local")]
        );
        let expiry = not_after_unix(&issued.cert_pem).unwrap();
        let now = OffsetDateTime::now_utc().unix_timestamp();
        assert!((now + 86_000..now + 86_500).contains(&expiry));
        assert!(!format!("{issued:?}").contains("PRIVATE"));
    }

    #[test]
    fn rejects_malformed_ca() {
        assert!(Ca::from_pem("not a cert", "not a key").is_err());
        let (_, a) = Ca::generate("a", DAY).unwrap();
        assert!(
            Ca::from_pem(
                "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
                &a.key_pem
            )
            .is_err()
        );
    }
}
