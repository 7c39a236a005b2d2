//! rustls configurations for each role, and PEM loading with errors that name the file.
//!
//! All connections are TLS 1.3 only. A relay's certificate names the relay (`relay_name`), while
//! clients send `<device>.<namespace>.<relay-domain>` as SNI for routing; [`RelayNameVerifier`]
//! verifies the certificate chain as usual but against the relay's own name, so a single relay
//! certificate serves every device without per-namespace wildcards.

use std::{path::Path, sync::Arc};

use rustls::{
    ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme,
    client::{
        WebPkiServerVerifier,
        danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    },
    crypto::CryptoProvider,
    server::WebPkiClientVerifier,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime, pem::PemObject};
use tether_proto::{ALPN_DEVICE, ALPN_SERVICE, ALPN_SERVICE_H2};

/// Why TLS material could not be loaded or a configuration built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The file could not be read.
    #[error("cannot read {what} {path}: {source}")]
    Unreadable {
        /// What the file should hold.
        what: &'static str,
        /// Its path.
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file or value is empty.
    #[error("{what} {path} is empty")]
    Empty {
        /// What the file should hold.
        what: &'static str,
        /// Its path.
        path: String,
    },
    /// The PEM holds no usable item.
    #[error("{what} {path} holds no valid PEM {kind}")]
    BadPem {
        /// What the file should hold.
        what: &'static str,
        /// Its path.
        path: String,
        /// The PEM item expected.
        kind: &'static str,
    },
    /// rustls refused the material (e.g. a key that does not match the certificate).
    #[error("invalid TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// The client-certificate verifier could not be built (e.g. no CA certificates).
    #[error("invalid client CA bundle: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    /// The relay name is not a valid DNS name or IP address.
    #[error("invalid relay name {0:?}")]
    BadName(String),
}

/// Result type of this module.
pub type Result<T, E = TlsError> = std::result::Result<T, E>;

fn read_nonempty(what: &'static str, path: &Path) -> Result<Vec<u8>> {
    let bytes = std::fs::read(path).map_err(|source| TlsError::Unreadable {
        what,
        path: path.display().to_string(),
        source,
    })?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(TlsError::Empty {
            what,
            path: path.display().to_string(),
        });
    }
    Ok(bytes)
}

/// Parses PEM certificates; `what` and `origin` name them in errors.
///
/// # Errors
/// When the text holds no certificate.
pub fn parse_certs(what: &'static str, origin: &str, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>> {
    let certs: Vec<_> = CertificateDer::pem_slice_iter(pem)
        .filter_map(|c| c.ok())
        .collect();
    if certs.is_empty() {
        return Err(TlsError::BadPem {
            what,
            path: origin.to_owned(),
            kind: "CERTIFICATE",
        });
    }
    Ok(certs)
}

/// Parses a PEM private key (PKCS#8, SEC1 or PKCS#1).
///
/// # Errors
/// When the text holds no private key.
pub fn parse_key(what: &'static str, origin: &str, pem: &[u8]) -> Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|_| TlsError::BadPem {
        what,
        path: origin.to_owned(),
        kind: "PRIVATE KEY",
    })
}

/// Loads PEM certificates from a file.
///
/// # Errors
/// When the file is missing, unreadable, empty or holds no certificate.
pub fn load_certs(what: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    parse_certs(what, &path.display().to_string(), &read_nonempty(what, path)?)
}

/// Loads a PEM private key from a file.
///
/// # Errors
/// When the file is missing, unreadable, empty or holds no key.
pub fn load_key(what: &'static str, path: &Path) -> Result<PrivateKeyDer<'static>> {
    parse_key(what, &path.display().to_string(), &read_nonempty(what, path)?)
}

/// Builds a root store from CA certificates.
///
/// # Errors
/// When a certificate is not a usable trust anchor.
pub fn root_store(cas: &[CertificateDer<'static>]) -> Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    for ca in cas {
        roots.add(ca.clone())?;
    }
    Ok(roots)
}

/// The crypto provider: ring, with AES-128-GCM preferred (fastest with AES-NI, and as strong as we
/// need), then AES-256-GCM, then ChaCha20-Poly1305 for CPUs without AES instructions.
pub fn provider() -> Arc<CryptoProvider> {
    let mut provider = rustls::crypto::ring::default_provider();
    provider.cipher_suites.sort_by_key(|s| match s.suite() {
        rustls::CipherSuite::TLS13_AES_128_GCM_SHA256 => 0,
        rustls::CipherSuite::TLS13_AES_256_GCM_SHA384 => 1,
        _ => 2,
    });
    Arc::new(provider)
}

/// The relay's server configuration: TLS 1.3, every ALPN (`tether/1`, `h2`, `http/1.1`), client
/// certificates optional at the TLS layer (services authenticate with tokens) and required by the
/// relay for device connections.
///
/// # Errors
/// When the key does not match the certificate or the CA bundle is unusable.
pub fn relay_server_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    client_cas: &[CertificateDer<'static>],
) -> Result<ServerConfig> {
    let provider = provider();
    let verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::new(root_store(client_cas)?), provider.clone())
            .allow_unauthenticated()
            .build()?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)?;
    // Server preference order (rustls picks the first of these the client offers): a client
    // offering both `h2` and `http/1.1` gets the multiplexed form.
    config.alpn_protocols = vec![
        ALPN_DEVICE.to_vec(),
        ALPN_SERVICE_H2.to_vec(),
        ALPN_SERVICE.to_vec(),
    ];
    // Tickets let reconnecting agents and clients resume without a full handshake. A stateless
    // ticketer (rotating keys, ring) instead of the default 256-entry session cache, which many
    // clients would thrash.
    config.send_tls13_tickets = 2;
    config.ticketer = rustls::crypto::ring::Ticketer::new()?;
    Ok(config)
}

/// The relay's configuration for device connections (ClientHellos offering ALPN `tether/1`):
/// `service`'s certificate and client verifier, ALPN `tether/1` only, and **no session
/// resumption**. A resumed TLS 1.3 session restores the client certificate from the ticket
/// without checking it again, and each resumption issues fresh tickets carrying the same
/// certificate, so an expired (or soon: revoked) device certificate would live on for as long as
/// the relay's ticket keys do. A device connects once and stays connected; the full handshake
/// it pays on reconnect is cheap next to that.
pub fn relay_device_server_config(service: &ServerConfig) -> ServerConfig {
    let mut config = service.clone();
    config.alpn_protocols = vec![ALPN_DEVICE.to_vec()];
    config.send_tls13_tickets = 0;
    // Neither tickets (a ticketer that never decrypts, so a ticket from a service connection is
    // not accepted here either) nor a stateful session cache.
    config.ticketer = Arc::new(NoTickets);
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    config
}

/// A ticketer that issues and accepts no tickets.
#[derive(Debug)]
struct NoTickets;

impl rustls::server::ProducesTickets for NoTickets {
    fn enabled(&self) -> bool {
        false
    }

    fn lifetime(&self) -> u32 {
        0
    }

    fn encrypt(&self, _plain: &[u8]) -> Option<Vec<u8>> {
        None
    }

    fn decrypt(&self, _cipher: &[u8]) -> Option<Vec<u8>> {
        None
    }
}

/// The agent's client configuration: its device certificate, ALPN `tether/1`, relay verified by
/// `relay_name`.
///
/// # Errors
/// When the key does not match, the CA bundle is unusable or the name is invalid.
pub fn agent_client_config(
    relay_cas: &[CertificateDer<'static>],
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    relay_name: &str,
) -> Result<ClientConfig> {
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(RelayNameVerifier::new(relay_cas, relay_name)?)
        .with_client_auth_cert(chain, key)?;
    config.alpn_protocols = vec![ALPN_DEVICE.to_vec()];
    Ok(config)
}

/// A service client's configuration: no client certificate, ALPN `http/1.1`, relay verified by
/// `relay_name`.
///
/// # Errors
/// When the CA bundle is unusable or the name is invalid.
pub fn service_client_config(
    relay_cas: &[CertificateDer<'static>],
    relay_name: &str,
) -> Result<ClientConfig> {
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(RelayNameVerifier::new(relay_cas, relay_name)?)
        .with_no_client_auth();
    config.alpn_protocols = vec![ALPN_SERVICE.to_vec()];
    Ok(config)
}

/// Verifies the relay's certificate chain with webpki, against the relay's own name rather than
/// the SNI (which names the device). Everything else (chain, validity, signatures) is webpki's.
#[derive(Debug)]
pub struct RelayNameVerifier {
    inner: Arc<WebPkiServerVerifier>,
    relay_name: ServerName<'static>,
}

impl RelayNameVerifier {
    /// A verifier trusting `cas` for certificates naming `relay_name`.
    ///
    /// # Errors
    /// When `relay_name` is not a DNS name or IP address, or `cas` is unusable.
    pub fn new(cas: &[CertificateDer<'static>], relay_name: &str) -> Result<Arc<Self>> {
        let relay_name = ServerName::try_from(relay_name.to_owned())
            .map_err(|_| TlsError::BadName(relay_name.to_owned()))?;
        let inner = WebPkiServerVerifier::builder_with_provider(Arc::new(root_store(cas)?), provider())
            .build()
            .map_err(|e| TlsError::Rustls(rustls::Error::General(e.to_string())))?;
        Ok(Arc::new(Self { inner, relay_name }))
    }
}

impl ServerCertVerifier for RelayNameVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _sni: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.inner
            .verify_server_cert(end_entity, intermediates, &self.relay_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// The URI SANs of a (verified) leaf certificate.
pub fn uri_sans(leaf: &CertificateDer<'_>) -> Vec<String> {
    use x509_parser::prelude::*;
    let Ok((_, cert)) = X509Certificate::from_der(leaf) else {
        return Vec::new();
    };
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::URI(uri) => Some((*uri).to_owned()),
            _ => None,
        })
        .collect()
}
