//! A complete Tether system on loopback with fresh keys: a relay, and agents on demand.
//!
//! `tether demo`, the integration tests and the benchmark harness all start Tether this way, so
//! they exercise the same code paths as the binaries (real TLS, real sockets).

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use anyhow::Context;
use tether_agent::{Agent, AgentState, config::Target as AgentTarget};
use tether_net::{pki::Ca, tls};
use tether_proto::{name::DeviceKey, token::TokenSigner};
use tether_relay::{Limits, Relay, RelayConfig, RelayHandle, TlsFiles};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::{connect, standalone};

/// The relay domain of a testbed.
pub const RELAY_DOMAIN: &str = "tether.local";
/// The trust domain of a testbed.
pub const TRUST_DOMAIN: &str = "tether.local";
const DAY: Duration = Duration::from_secs(86_400);

/// A running relay with its keys in `dir`.
pub struct Testbed {
    /// Directory holding the standalone keys (see [`standalone::files`]).
    pub dir: PathBuf,
    /// The relay's data address.
    pub relay_addr: SocketAddr,
    /// The relay's admin address.
    pub admin_addr: SocketAddr,
    /// Control of the relay.
    pub relay: RelayHandle,
    /// The token signing key.
    pub signer: TokenSigner,
    ca: Ca,
    shutdown: CancellationToken,
    relay_task: tokio::task::JoinHandle<()>,
}

/// A running agent.
pub struct RunningAgent {
    /// The device it serves.
    pub device: DeviceKey,
    /// Its state.
    pub state: watch::Receiver<AgentState>,
    /// Stops it.
    pub shutdown: CancellationToken,
    /// Its task.
    pub task: tokio::task::JoinHandle<()>,
}

impl RunningAgent {
    /// Waits until the agent is connected (or `timeout`).
    ///
    /// # Errors
    /// When it does not connect in time.
    pub async fn connected(&mut self, timeout: Duration) -> anyhow::Result<()> {
        tokio::time::timeout(
            timeout,
            self.state.wait_for(|s| matches!(s, AgentState::Connected { .. })),
        )
        .await
        .context("agent did not connect in time")?
        .context("agent stopped")?;
        Ok(())
    }

    /// Stops the agent and waits for it.
    pub async fn stop(self) {
        self.shutdown.cancel();
        let _ = self.task.await;
    }
}

impl Testbed {
    /// Creates keys in `dir` (which must be empty or absent) and starts a relay on 127.0.0.1.
    ///
    /// # Errors
    /// Key generation, file or bind failures.
    pub async fn start(dir: &Path, limits: Limits) -> anyhow::Result<Self> {
        Self::start_with(dir, limits, |_| {}).await
    }

    /// As [`Testbed::start`], letting `configure` adjust the relay's configuration (e.g. a
    /// revocation file) before it binds.
    ///
    /// # Errors
    /// Key generation, file or bind failures.
    pub async fn start_with(
        dir: &Path,
        limits: Limits,
        configure: impl FnOnce(&mut RelayConfig),
    ) -> anyhow::Result<Self> {
        standalone::init(
            dir,
            &[RELAY_DOMAIN.to_owned(), "localhost".to_owned()],
            &[IpAddr::V4(Ipv4Addr::LOCALHOST)],
        )?;
        let read = |name: &str| std::fs::read_to_string(dir.join(name)).with_context(|| name.to_owned());
        let ca = Ca::from_pem(
            &read(standalone::files::CA_CERT)?,
            &read(standalone::files::CA_KEY)?,
        )?;
        let signer = TokenSigner::from_pkcs8_pem(&read(standalone::files::TOKEN_KEY)?)?;
        let files = TlsFiles {
            cert: &dir.join(standalone::files::RELAY_CERT),
            key: &dir.join(standalone::files::RELAY_KEY),
            client_ca: &dir.join(standalone::files::CA_CERT),
            token_public_key: &dir.join(standalone::files::TOKEN_PUB),
        };
        let loopback = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
        let mut config = RelayConfig::load(loopback, loopback, RELAY_DOMAIN, TRUST_DOMAIN, files, limits)?;
        configure(&mut config);
        let relay = Relay::bind(config).await?;
        let (relay_addr, admin_addr, handle) = (relay.local_addr(), relay.admin_addr(), relay.handle());
        let shutdown = CancellationToken::new();
        let relay_task = tokio::spawn(relay.run(shutdown.clone()));
        Ok(Self {
            dir: dir.to_owned(),
            relay_addr,
            admin_addr,
            relay: handle,
            signer,
            ca,
            shutdown,
            relay_task,
        })
    }

    /// Issues credentials for `device` (into `<dir>/devices/<ns>-<name>-<n>`) and returns an agent
    /// configuration serving `allow` (device port → local target).
    ///
    /// # Errors
    /// Issuing or writing credentials.
    pub fn agent_config(
        &self,
        device: &DeviceKey,
        allow: &BTreeMap<u16, SocketAddr>,
    ) -> anyhow::Result<tether_agent::Config> {
        let issued = self.ca.issue_device(device, TRUST_DOMAIN, DAY)?;
        let out = (0..)
            .map(|n| {
                self.dir
                    .join("devices")
                    .join(format!("{}-{}-{n}", device.namespace(), device.name()))
            })
            .find(|p| !p.exists())
            .context("no free directory name")?;
        std::fs::create_dir_all(&out)?;
        standalone::write_new(&out.join("device.crt"), &issued.cert_pem, false)?;
        standalone::write_new(&out.join("device.key"), &issued.key_pem, true)?;
        standalone::write_new(&out.join("ca.crt"), self.ca.cert_pem(), false)?;
        let mut config = tether_agent::Config::new(
            "127.0.0.1",
            self.relay_addr.port(),
            RELAY_DOMAIN,
            out.join("device.crt"),
            out.join("device.key"),
            out.join("ca.crt"),
        );
        config.device = Some(device.clone());
        config.proxy_from_env = false;
        config.backoff.base = Duration::from_millis(50);
        config.backoff.cap = Duration::from_millis(500);
        for (port, target) in allow {
            config.allow.insert(
                *port,
                AgentTarget {
                    host: target.ip().to_string(),
                    port: target.port(),
                },
            );
        }
        Ok(config)
    }

    /// Starts an agent with `config` in this process.
    ///
    /// # Errors
    /// When the configuration is invalid.
    pub fn spawn_agent(&self, config: tether_agent::Config) -> anyhow::Result<RunningAgent> {
        let agent = Agent::new(config)?;
        let device = agent.device().clone();
        let state = agent.state();
        let shutdown = CancellationToken::new();
        let stop = shutdown.clone();
        let task = tokio::spawn(async move {
            if let Err(e) = agent.run(stop).await {
                tracing::warn!(error = %e, "agent stopped with an error");
            }
        });
        Ok(RunningAgent {
            device,
            state,
            shutdown,
            task,
        })
    }

    /// Signs a token for `device:port` valid for `ttl`.
    ///
    /// # Errors
    /// TTL out of bounds.
    pub fn token(&self, device: &DeviceKey, port: u16, ttl: Duration) -> anyhow::Result<String> {
        standalone::mint_with(
            &self.signer,
            &standalone::TokenRequest {
                device: device.clone(),
                port,
                ttl,
                audience: RELAY_DOMAIN.to_owned(),
                max_connections: None,
                idle_timeout: None,
            },
        )
    }

    /// A connect target for `device:port` with `token`.
    ///
    /// # Errors
    /// CA loading.
    pub fn target(&self, device: &DeviceKey, port: u16, token: &str) -> anyhow::Result<connect::Target> {
        loopback_target(self.ca.cert_pem(), self.relay_addr.port(), device, port, token)
    }

    /// The CA (to issue extra device certificates, e.g. short-lived ones).
    pub fn ca(&self) -> &Ca {
        &self.ca
    }

    /// The relay's CA certificate, PEM.
    pub fn ca_pem(&self) -> &str {
        self.ca.cert_pem()
    }

    /// Stops the relay (drain) and waits for it.
    pub async fn stop(self) {
        self.shutdown.cancel();
        let _ = self.relay_task.await;
    }
}

/// A connect target for `device:port` through a relay on `127.0.0.1:relay_port` whose certificate
/// was issued by `ca_pem` for [`RELAY_DOMAIN`] (testbeds and the benchmark's relay process).
///
/// # Errors
/// CA loading.
pub fn loopback_target(
    ca_pem: &str,
    relay_port: u16,
    device: &DeviceKey,
    port: u16,
    token: &str,
) -> anyhow::Result<connect::Target> {
    let cas = tls::parse_certs("CA", "loopback relay", ca_pem.as_bytes())?;
    Ok(connect::Target {
        relay_host: "127.0.0.1".into(),
        relay_port,
        relay_domain: RELAY_DOMAIN.into(),
        tls: Arc::new(tls::service_client_config(&cas, RELAY_DOMAIN)?),
        device: device.clone(),
        port,
        token: token.into(),
        proxy: None,
    })
}
