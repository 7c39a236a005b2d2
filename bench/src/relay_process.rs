//! A `tether-relay` process with fresh standalone keys, for the memory scenarios: its resident
//! memory is read from `/proc/<pid>/status`, apart from the harness's own.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::Path,
    process::{Child, Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use tether_cli::{
    connect,
    standalone::{self, files},
    testbed::{RELAY_DOMAIN, TRUST_DOMAIN},
};
use tether_net::{pki::Ca, tls};
use tether_proto::{name::DeviceKey, token::TokenSigner};

use crate::proc_stats::{free_port, http_get, metric};

/// A running relay process; killed on drop.
pub struct RelayProcess {
    child: Child,
    /// Data address.
    pub addr: SocketAddr,
    /// Admin address.
    pub admin: SocketAddr,
    ca: Ca,
    signer: TokenSigner,
    dir: tempfile::TempDir,
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl RelayProcess {
    /// Creates keys and starts `bin` on loopback with production defaults, except that one stream
    /// token may carry up to 1,000 connections; waits until `/ready` answers.
    ///
    /// # Errors
    /// Key generation, a binary that does not start, or a relay not ready within 10 s.
    pub async fn start(bin: &Path) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new().prefix("tether-bench-relay-").tempdir()?;
        standalone::init(
            dir.path(),
            &[RELAY_DOMAIN.to_owned(), "localhost".to_owned()],
            &[IpAddr::V4(Ipv4Addr::LOCALHOST)],
        )?;
        let read =
            |name: &str| std::fs::read_to_string(dir.path().join(name)).with_context(|| name.to_owned());
        let ca = Ca::from_pem(&read(files::CA_CERT)?, &read(files::CA_KEY)?)?;
        let signer = TokenSigner::from_pkcs8_pem(&read(files::TOKEN_KEY)?)?;
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        let admin = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        let log = std::fs::File::create(dir.path().join("relay.log"))?;
        let path = |name: &str| dir.path().join(name);
        let child = Command::new(bin)
            .args([
                "--listen",
                &addr.to_string(),
                "--admin-listen",
                &admin.to_string(),
            ])
            .args(["--relay-domain", RELAY_DOMAIN, "--trust-domain", TRUST_DOMAIN])
            .arg("--tls-cert")
            .arg(path(files::RELAY_CERT))
            .arg("--tls-key")
            .arg(path(files::RELAY_KEY))
            .arg("--client-ca")
            .arg(path(files::CA_CERT))
            .arg("--token-public-key")
            .arg(path(files::TOKEN_PUB))
            .args([
                "--max-connections-per-stream",
                "1000",
                "--drain-grace",
                "0s",
                "--drain-deadline",
                "1s",
            ])
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| {
                format!(
                    "cannot run {} (build it: cargo build --release -p tether-relay)",
                    bin.display()
                )
            })?;
        let relay = Self {
            child,
            addr,
            admin,
            ca,
            signer,
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while http_get(admin, "/ready").await.is_err() {
            if Instant::now() > deadline {
                bail!(
                    "relay not ready within 10 s; see {}",
                    relay.dir.path().join("relay.log").display()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(relay)
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Devices with a live session, from the relay's metrics.
    ///
    /// # Errors
    /// When the metrics cannot be read.
    pub async fn connected_devices(&self) -> anyhow::Result<u64> {
        let text = http_get(self.admin, "/metrics").await?;
        Ok(metric(&text, "tether_relay_connected_devices").context("no connected_devices metric")? as u64)
    }

    /// Waits until at least `n` devices are connected; returns the count seen last.
    ///
    /// # Errors
    /// When fewer than `n` are connected after `limit`.
    pub async fn wait_devices(&self, n: u64, limit: Duration) -> anyhow::Result<u64> {
        let deadline = Instant::now() + limit;
        loop {
            let seen = self.connected_devices().await?;
            if seen >= n {
                return Ok(seen);
            }
            if Instant::now() > deadline {
                bail!("only {seen} of {n} devices connected after {limit:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The agent-side TLS configuration of a new device certificate for `device`.
    ///
    /// # Errors
    /// Issuing failures.
    pub fn device_tls(&self, device: &DeviceKey) -> anyhow::Result<Arc<rustls::ClientConfig>> {
        let issued = self
            .ca
            .issue_device(device, TRUST_DOMAIN, Duration::from_secs(86_400))?;
        let chain = tls::parse_certs("device cert", "bench", issued.cert_pem.as_bytes())?;
        let key = tls::parse_key("device key", "bench", issued.key_pem.as_bytes())?;
        let cas = tls::parse_certs("CA", "bench", self.ca.cert_pem().as_bytes())?;
        Ok(Arc::new(tls::agent_client_config(
            &cas,
            chain,
            key,
            RELAY_DOMAIN,
        )?))
    }

    /// A service-side target for `device:port`, with a fresh token.
    ///
    /// # Errors
    /// Token or CA errors.
    pub fn service_target(&self, device: &DeviceKey, port: u16) -> anyhow::Result<connect::Target> {
        let token = standalone::mint_with(
            &self.signer,
            &standalone::TokenRequest {
                device: device.clone(),
                port,
                ttl: Duration::from_secs(3600),
                audience: RELAY_DOMAIN.to_owned(),
                max_connections: None,
                idle_timeout: None,
            },
        )?;
        tether_cli::testbed::loopback_target(self.ca.cert_pem(), self.addr.port(), device, port, &token)
    }
}
