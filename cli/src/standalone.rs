//! Standalone key tools: a file-based CA, token-signing key, relay certificate, device credentials
//! and stream tokens — the no-cluster equivalent of what the operator keeps in Secrets.
//!
//! Layout of a standalone directory:
//! `ca.crt`, `ca.key` (CA), `token.key`, `token.pub` (Ed25519 token keys), `relay.crt`, `relay.key`
//! (relay serving certificate). Private keys are written with mode 0600 and never overwritten.

use std::{
    fs,
    io::Write,
    net::IpAddr,
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use anyhow::{Context, bail};
use tether_net::pki::Ca;
use tether_proto::{
    name::DeviceKey,
    token::{StreamClaims, TokenSigner},
};

/// File names inside a standalone directory.
pub mod files {
    /// CA certificate (the trust bundle).
    pub const CA_CERT: &str = "ca.crt";
    /// CA private key.
    pub const CA_KEY: &str = "ca.key";
    /// Token signing key (PKCS#8 PEM).
    pub const TOKEN_KEY: &str = "token.key";
    /// Token verification key (SPKI PEM), for relays.
    pub const TOKEN_PUB: &str = "token.pub";
    /// Relay serving certificate.
    pub const RELAY_CERT: &str = "relay.crt";
    /// Relay serving key.
    pub const RELAY_KEY: &str = "relay.key";
}

/// CA lifetime: long, since rotating it means re-enrolling every device.
const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 86_400);
/// Relay certificate lifetime.
const RELAY_VALIDITY: Duration = Duration::from_secs(365 * 86_400);

/// Writes `contents` to `path`, refusing to replace an existing file; `secret` files get mode 0600.
pub fn write_new(path: &Path, contents: &str, secret: bool) -> anyhow::Result<()> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(if secret { 0o600 } else { 0o644 })
        .open(path)
        .with_context(|| format!("cannot create {} (it must not exist yet)", path.display()))?;
    f.write_all(contents.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))
}

fn read(dir: &Path, name: &str) -> anyhow::Result<String> {
    let path = dir.join(name);
    let text = fs::read_to_string(&path)
        .with_context(|| format!("cannot read {} (run `tether ca init` first?)", path.display()))?;
    if text.trim().is_empty() {
        bail!("{} is empty", path.display());
    }
    Ok(text)
}

/// Creates `dir` (and missing parents) with mode 0700 whatever the umask: it holds private keys.
/// An existing directory is left as it is.
fn create_private_dir(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("cannot create {}", dir.display()))
}

/// Creates a CA, a token key pair and a relay certificate for `relay_names` in `dir`.
///
/// # Errors
/// When a file already exists or cannot be written.
pub fn init(dir: &Path, relay_names: &[String], ips: &[IpAddr]) -> anyhow::Result<()> {
    create_private_dir(dir)?;
    for name in [
        files::CA_CERT,
        files::CA_KEY,
        files::TOKEN_KEY,
        files::TOKEN_PUB,
        files::RELAY_CERT,
        files::RELAY_KEY,
    ] {
        if dir.join(name).exists() {
            bail!(
                "{} already exists: refusing to overwrite trust anchors",
                dir.join(name).display()
            );
        }
    }
    let (ca, ca_files) = Ca::generate("Tether standalone CA", CA_VALIDITY)?;
    let signer = TokenSigner::generate();
    let relay = ca.issue_server(relay_names, ips, RELAY_VALIDITY)?;
    write_new(&dir.join(files::CA_CERT), &ca_files.cert_pem, false)?;
    write_new(&dir.join(files::CA_KEY), &ca_files.key_pem, true)?;
    write_new(&dir.join(files::TOKEN_KEY), &signer.to_pkcs8_pem(), true)?;
    write_new(
        &dir.join(files::TOKEN_PUB),
        &signer.verifier().to_public_key_pem(),
        false,
    )?;
    write_new(&dir.join(files::RELAY_CERT), &relay.cert_pem, false)?;
    write_new(&dir.join(files::RELAY_KEY), &relay.key_pem, true)?;
    Ok(())
}

/// Issues credentials for `device` into `out`: `device.crt`, `device.key`, `ca.crt`.
///
/// # Errors
/// When the CA cannot be loaded or a file exists.
pub fn issue_device(
    dir: &Path,
    device: &DeviceKey,
    trust_domain: &str,
    out: &Path,
    validity: Duration,
) -> anyhow::Result<PathBuf> {
    let ca =
        Ca::from_pem(&read(dir, files::CA_CERT)?, &read(dir, files::CA_KEY)?).context("invalid CA files")?;
    let issued = ca.issue_device(device, trust_domain, validity)?;
    create_private_dir(out)?;
    write_new(&out.join("device.crt"), &issued.cert_pem, false)?;
    write_new(&out.join("device.key"), &issued.key_pem, true)?;
    write_new(&out.join("ca.crt"), ca.cert_pem(), false)?;
    Ok(out.to_owned())
}

/// What a standalone token grants.
#[derive(Debug, Clone)]
pub struct TokenRequest {
    /// The device.
    pub device: DeviceKey,
    /// Its port.
    pub port: u16,
    /// Lifetime.
    pub ttl: Duration,
    /// Audience: the relay domain.
    pub audience: String,
    /// Concurrent connections allowed.
    pub max_connections: Option<u32>,
    /// Close a connection after this long without traffic.
    pub idle_timeout: Option<Duration>,
}

/// Signs a stream token with the standalone token key in `dir`.
///
/// # Errors
/// When the key cannot be loaded or the TTL is out of bounds.
pub fn mint_token(dir: &Path, req: &TokenRequest) -> anyhow::Result<String> {
    let signer = TokenSigner::from_pkcs8_pem(&read(dir, files::TOKEN_KEY)?).context("invalid token key")?;
    mint_with(&signer, req)
}

/// The verifier of the token key in `dir` (to read back a token just minted).
///
/// # Errors
/// When the key cannot be read or parsed.
pub fn verifier(dir: &Path) -> anyhow::Result<tether_proto::token::TokenVerifier> {
    let signer = TokenSigner::from_pkcs8_pem(&read(dir, files::TOKEN_KEY)?).context("invalid token key")?;
    Ok(signer.verifier())
}

/// Signs a stream token with `signer`.
///
/// # Errors
/// When the TTL is zero or longer than a token may live.
pub fn mint_with(signer: &TokenSigner, req: &TokenRequest) -> anyhow::Result<String> {
    let ttl = req.ttl.as_secs();
    if ttl == 0 || ttl > tether_proto::token::MAX_LIFETIME_SECS {
        bail!("--ttl must be between 1s and 24h");
    }
    let idle_timeout = req.idle_timeout.map(|d| d.as_secs());
    if idle_timeout.is_some_and(|t| t == 0 || t > tether_proto::token::MAX_LIFETIME_SECS) {
        bail!("--idle-timeout must be between 1s and 24h");
    }
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)?
        .as_secs();
    let claims = StreamClaims {
        stream_uid: format!("standalone-{}", hex::encode(rand::random::<[u8; 12]>())),
        namespace: req.device.namespace().to_owned(),
        device: req.device.name().to_owned(),
        port: req.port,
        audience: req.audience.clone(),
        issued_at: now,
        not_before: now,
        expires_at: now + ttl,
        max_connections: req.max_connections,
        idle_timeout,
    };
    Ok(signer.sign(&claims))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tether_proto::{name::DeviceKey, token::TokenSigner};

    use super::{TokenRequest, mint_with};

    fn request(idle_timeout: Option<Duration>) -> TokenRequest {
        TokenRequest {
            device: DeviceKey::parse("factory-1/pump-7").unwrap(),
            port: 22,
            ttl: Duration::from_secs(3600),
            audience: "relay.test".into(),
            max_connections: None,
            idle_timeout,
        }
    }

    #[test]
    fn the_idle_timeout_is_bounded_and_signed_into_the_token() {
        let signer = TokenSigner::generate();
        for bad in [Duration::ZERO, Duration::from_secs(25 * 3600)] {
            let err = mint_with(&signer, &request(Some(bad))).unwrap_err();
            assert!(err.to_string().contains("--idle-timeout"), "{err}");
        }
        let token = mint_with(&signer, &request(Some(Duration::from_secs(900)))).unwrap();
        let claims = signer.verifier().verify_signature(&token).unwrap();
        assert_eq!(claims.idle_timeout, Some(900));
        let token = mint_with(&signer, &request(None)).unwrap();
        assert_eq!(
            signer.verifier().verify_signature(&token).unwrap().idle_timeout,
            None
        );
    }
}
