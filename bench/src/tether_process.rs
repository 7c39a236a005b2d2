//! Tether as users run it: `tether-relay`, `tether-agent` and `tether connect --listen` as three
//! processes. The service connects to `tether connect`'s listener (service side); each accepted
//! connection becomes a stream through the relay (service side) to the agent (device side),
//! which dials the target. Production defaults everywhere except `RUST_LOG=warn` (as for every
//! peer) and the relay flags of [`RelayProcess::start_at`].

use std::{path::Path, time::Duration};

use anyhow::Context;
use tether_cli::{standalone, testbed::TRUST_DOMAIN};
use tether_proto::name::DeviceKey;

use crate::{
    netns::{Endpoint, Placement},
    proc_stats::free_port,
    procs::{Proc, wait_echo},
    relay_process::RelayProcess,
};

/// The device port the agent maps to the target.
pub const TARGET_PORT: u16 = 7;

/// The binaries.
#[derive(Clone, Debug)]
pub struct Bins<'a> {
    /// `tether-relay`.
    pub relay: &'a Path,
    /// `tether-agent`.
    pub agent: &'a Path,
    /// `tether` (the CLI).
    pub cli: &'a Path,
}

/// The three running processes.
pub struct TetherProcesses {
    /// The relay.
    pub relay: RelayProcess,
    /// The agent and the `tether connect --listen` client.
    pub others: Vec<Proc>,
    /// Where services connect (`tether connect`'s listener).
    pub service: Endpoint,
}

impl TetherProcesses {
    /// Starts relay, agent and client, and waits until a connection through the client reaches
    /// `target`.
    ///
    /// # Errors
    /// A binary that does not start or a tunnel not working within 20 s.
    pub async fn start(bins: &Bins<'_>, target: &Endpoint, place: &Placement) -> anyhow::Result<Self> {
        let mut relay = RelayProcess::start_at(bins.relay, place, &[]).await?;
        let dir = relay.dir().to_owned();
        let device = DeviceKey::parse("bench/device-1")?;
        let dev_dir = standalone::issue_device(
            &dir,
            &device,
            TRUST_DOMAIN,
            &dir.join("device"),
            Duration::from_secs(86_400),
        )?;
        let agent_toml = format!(
            "relay = \"{}\"\nrelay-domain = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\nca = \"{}\"\n\
             allow = [ {{ port = {TARGET_PORT}, target = \"{}\" }} ]\nbackoff-base = \"200ms\"\n\
             backoff-cap = \"2s\"\nlog-level = \"warn\"\n",
            relay.addr,
            tether_cli::testbed::RELAY_DOMAIN,
            dev_dir.join("device.crt").display(),
            dev_dir.join("device.key").display(),
            dev_dir.join("ca.crt").display(),
            target.addr,
        );
        std::fs::write(dir.join("agent.toml"), agent_toml)?;
        let mut agent = Proc::spawn(
            place.dev(),
            bins.agent,
            ["--config".into(), dir.join("agent.toml").into_os_string()],
            &dir.join("agent.log"),
        )?;
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while relay.connected_devices().await.unwrap_or(0) < 1 {
            agent.check_alive()?;
            relay.proc_mut().check_alive()?;
            anyhow::ensure!(
                std::time::Instant::now() < deadline,
                "agent not connected within 20 s; see {}",
                dir.display()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        std::fs::write(dir.join("stream.token"), relay.token(&device, TARGET_PORT)?)?;
        let service = place.svc_at(free_port()?);
        let mut client = Proc::spawn(
            place.svc(),
            bins.cli,
            [
                "connect".into(),
                device.to_string().into(),
                "--port".into(),
                TARGET_PORT.to_string().into(),
                "--token-file".into(),
                dir.join("stream.token").into_os_string(),
                "--relay".into(),
                relay.addr.to_string().into(),
                "--ca".into(),
                dir.join(standalone::files::CA_CERT).into_os_string(),
                "--listen".into(),
                service.addr.to_string().into(),
            ]
            .into_iter()
            .collect::<Vec<std::ffi::OsString>>(),
            &dir.join("connect.log"),
        )?;
        wait_echo(&service, &mut [&mut agent, &mut client], Duration::from_secs(20))
            .await
            .with_context(|| format!("logs in {}", dir.display()))?;
        Ok(Self {
            relay,
            others: vec![agent, client],
            service,
        })
    }
}
