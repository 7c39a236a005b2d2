//! A `tether-relay` process with fresh standalone keys: the relay of the Tether system (see
//! [`tether_process`](crate::tether_process)) and of the memory scenarios, whose resident memory is
//! read from `/proc/<pid>/status`, apart from the harness's own.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::Path,
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

use crate::{
    netns::{Endpoint, Placement},
    proc_stats::{free_port, http_get, metric},
    procs::Proc,
};

/// A program that runs the relay (e.g. valgrind): the program, its flags, its environment.
pub type Wrapper<'a> = (&'a Path, &'a [std::ffi::OsString], &'a [(&'a str, &'a str)]);

/// A running relay process; killed on drop.
pub struct RelayProcess {
    proc: Proc,
    /// Data address (as reachable from the service side).
    pub addr: SocketAddr,
    /// Data endpoint, with its namespace.
    pub endpoint: Endpoint,
    /// Admin endpoint.
    pub admin: Endpoint,
    ca: Ca,
    signer: TokenSigner,
    dir: tempfile::TempDir,
}

impl RelayProcess {
    /// [`RelayProcess::start_at`] on loopback.
    ///
    /// # Errors
    /// As there.
    pub async fn start(bin: &Path) -> anyhow::Result<Self> {
        Self::start_at(bin, &Placement::loopback(), &[]).await
    }

    /// Creates keys and starts `bin` on the service side of `place` with production defaults,
    /// except that one stream token may carry up to 1,000 connections, no drain wait, and
    /// `extra` flags; waits until `/ready` answers.
    ///
    /// # Errors
    /// Key generation, a binary that does not start, or a relay not ready within 10 s.
    pub async fn start_at(bin: &Path, place: &Placement, extra: &[&str]) -> anyhow::Result<Self> {
        Self::start_wrapped(bin, place, extra, None).await
    }

    /// [`RelayProcess::start_at`], the relay run by `wrapper` (a program, its flags and its
    /// environment; e.g. valgrind) when given, with a minute to become ready.
    ///
    /// # Errors
    /// As there.
    pub async fn start_wrapped(
        bin: &Path,
        place: &Placement,
        extra: &[&str],
        wrapper: Option<Wrapper<'_>>,
    ) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new().prefix("tether-bench-relay-").tempdir()?;
        let mut ips = vec![IpAddr::V4(Ipv4Addr::LOCALHOST)];
        if place.svc_ip != ips[0] {
            ips.push(place.svc_ip);
        }
        standalone::init(
            dir.path(),
            &[RELAY_DOMAIN.to_owned(), "localhost".to_owned()],
            &ips,
        )?;
        let read =
            |name: &str| std::fs::read_to_string(dir.path().join(name)).with_context(|| name.to_owned());
        let ca = Ca::from_pem(&read(files::CA_CERT)?, &read(files::CA_KEY)?)?;
        let signer = TokenSigner::from_pkcs8_pem(&read(files::TOKEN_KEY)?)?;
        let endpoint = place.svc_at(free_port()?);
        let admin = place.svc_at(free_port()?);
        let path = |name: &str| dir.path().join(name).into_os_string();
        let mut args: Vec<std::ffi::OsString> = vec![
            "--listen".into(),
            endpoint.addr.to_string().into(),
            "--admin-listen".into(),
            admin.addr.to_string().into(),
            "--relay-domain".into(),
            RELAY_DOMAIN.into(),
            "--trust-domain".into(),
            TRUST_DOMAIN.into(),
            "--tls-cert".into(),
            path(files::RELAY_CERT),
            "--tls-key".into(),
            path(files::RELAY_KEY),
            "--client-ca".into(),
            path(files::CA_CERT),
            "--token-public-key".into(),
            path(files::TOKEN_PUB),
            "--max-connections-per-stream".into(),
            "1000".into(),
            "--drain-grace".into(),
            "0s".into(),
            "--drain-deadline".into(),
            "1s".into(),
        ];
        args.extend(extra.iter().map(Into::into));
        let log = dir.path().join("relay.log");
        let (proc, ready_limit) = match wrapper {
            None => (Proc::spawn(place.svc(), bin, args, &log), Duration::from_secs(10)),
            Some((program, flags, env)) => {
                let mut all = flags.to_vec();
                all.push(bin.into());
                all.extend(args);
                (
                    Proc::spawn_env(place.svc(), program, all, &log, env),
                    Duration::from_secs(60),
                )
            }
        };
        let proc = proc.context("build it: cargo build --release -p tether-relay")?;
        let mut relay = Self {
            proc,
            addr: endpoint.addr,
            endpoint,
            admin,
            ca,
            signer,
            dir,
        };
        let deadline = Instant::now() + ready_limit;
        while http_get(&relay.admin, "/ready").await.is_err() {
            relay.proc.check_alive()?;
            if Instant::now() > deadline {
                bail!(
                    "relay not ready within {ready_limit:?}; see {}",
                    relay.dir.path().join("relay.log").display()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(relay)
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// The directory holding its keys and log.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The process, to check that it still runs.
    pub fn proc_mut(&mut self) -> &mut Proc {
        &mut self.proc
    }

    /// Devices with a live session, from the relay's metrics.
    ///
    /// # Errors
    /// When the metrics cannot be read.
    pub async fn connected_devices(&self) -> anyhow::Result<u64> {
        let text = http_get(&self.admin, "/metrics").await?;
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
        let token = self.token(device, port)?;
        tether_cli::testbed::loopback_target(self.ca.cert_pem(), self.addr.port(), device, port, &token)
    }

    /// A fresh stream token for `device:port` (an hour, the relay's connection limit).
    ///
    /// # Errors
    /// Signing errors.
    pub fn token(&self, device: &DeviceKey, port: u16) -> anyhow::Result<String> {
        standalone::mint_with(
            &self.signer,
            &standalone::TokenRequest {
                device: device.clone(),
                port,
                ttl: Duration::from_secs(3600),
                audience: RELAY_DOMAIN.to_owned(),
                max_connections: None,
                idle_timeout: None,
            },
        )
    }
}
