//! An OpenSSL-made TLS identity for the peers that take their own (rathole's `tls` transport wants
//! a PKCS#12 file; chisel a PEM key and certificate): a self-signed ECDSA P-256 certificate
//! (Tether's key type) for `localhost` and the service-side addresses, made at run time.

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
};

use crate::procs::output;

/// The files of one identity.
#[derive(Clone, Debug)]
pub struct TlsIdentity {
    /// PEM private key.
    pub key: PathBuf,
    /// PEM certificate (also the trust root clients are given: it is self-signed).
    pub cert: PathBuf,
    /// PKCS#12 bundle of both.
    pub pkcs12: PathBuf,
    /// The bundle's password.
    pub password: String,
}

impl TlsIdentity {
    /// Generates an identity in `dir` valid for `localhost` and `ips`.
    ///
    /// # Errors
    /// When `openssl` is missing or fails.
    pub fn generate(dir: &Path, ips: &[IpAddr]) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let (key, cert, pkcs12) = (
            dir.join("key.pem"),
            dir.join("cert.pem"),
            dir.join("identity.p12"),
        );
        let mut san = String::from("subjectAltName=DNS:localhost");
        for ip in ips {
            san.push_str(&format!(",IP:{ip}"));
        }
        output(
            "openssl",
            [
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-days",
                "2",
                "-subj",
                "/CN=localhost",
                "-addext",
                &san,
                "-keyout",
            ]
            .map(std::ffi::OsString::from)
            .into_iter()
            .chain([key.clone().into(), "-out".into(), cert.clone().into()]),
        )?;
        let password = "tether-bench".to_owned();
        output(
            "openssl",
            [
                "pkcs12",
                "-export",
                "-passout",
                &format!("pass:{password}"),
                "-inkey",
            ]
            .map(std::ffi::OsString::from)
            .into_iter()
            .chain([
                key.clone().into(),
                "-in".into(),
                cert.clone().into(),
                "-out".into(),
                pkcs12.clone().into(),
            ]),
        )?;
        Ok(Self {
            key,
            cert,
            pkcs12,
            password,
        })
    }
}

/// `openssl version`, if it runs.
pub fn openssl_version() -> Option<String> {
    output("openssl", ["version"]).ok().map(|s| s.trim().to_owned())
}
