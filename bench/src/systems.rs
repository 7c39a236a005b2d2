//! The systems under test, started once per profile, and how to open a connection through each.
//!
//! All of them reach the same [`target`](crate::target) service (device side):
//! * direct TCP: straight to the target;
//! * direct TLS: a rustls server process (Tether's provider) serving the target protocol itself
//!   ([`bare`](crate::bare));
//! * Tether: `tether connect --listen` → `tether-relay` → `tether-agent` → target, three
//!   processes ([`tether_process`](crate::tether_process));
//! * Tether in-process (loopback only): the harness opens streams itself and the relay and agent
//!   run inside the harness ([`Testbed`]): no client hop, no process boundaries, but shared
//!   tokio workers; kept because the difference to `tether` is what the client hop and separate
//!   processes cost;
//! * rathole `tcp` / `noise` / `tls`, frp `stcp` and chisel (reverse mode): each peer's server
//!   (service side) and device-side client forwarding a service port to the target.
//!
//! Every system but the in-process one names the process in the relay's role, whose CPU time
//! per GiB and per setup the throughput and setup scenarios report, and all its processes.

use std::{
    any::Any,
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use anyhow::Context as _;
use rustls_pki_types::ServerName;
use tether_cli::{
    connect,
    testbed::{RunningAgent, Testbed},
};
use tether_net::{pki::Ca, tls};
use tether_proto::name::DeviceKey;
use tether_relay::Limits;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::{
    Results,
    bare::BareProcess,
    chisel, frp,
    netns::{Endpoint, Placement},
    rathole::{self, Transport},
    target,
    tether_process::{self, TetherProcesses},
    tls_identity::TlsIdentity,
};

/// A connection to the target through some system.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}
/// A boxed [`Io`].
pub type BoxIo = Box<dyn Io>;

/// Which system a figure belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum System {
    /// Direct TCP to the target.
    Tcp,
    /// Direct TLS 1.3 to a rustls server process serving the target protocol.
    Tls,
    /// Tether as three processes: client, relay and agent, TLS on both legs.
    Tether,
    /// Tether with relay and agent inside the harness and no client process.
    TetherInproc,
    /// rathole 0.5.0 with the `tcp` transport (no encryption).
    RatholeTcp,
    /// rathole 0.5.0 with the `noise` transport (one leg).
    RatholeNoise,
    /// rathole 0.5.0 with the `tls` transport (one leg, OpenSSL).
    RatholeTls,
    /// frp in `stcp` mode: visitor → frps → frpc, TLS on both legs.
    Frp,
    /// chisel in reverse mode: server ← client, one TLS leg carrying SSH.
    Chisel,
}

impl System {
    /// The label used in the report.
    pub fn label(self) -> &'static str {
        match self {
            Self::Tcp => "direct-tcp",
            Self::Tls => "direct-tls",
            Self::Tether => "tether",
            Self::TetherInproc => "tether-inproc",
            Self::RatholeTcp => "rathole-tcp",
            Self::RatholeNoise => "rathole-noise",
            Self::RatholeTls => "rathole-tls",
            Self::Frp => "frp-stcp",
            Self::Chisel => "chisel",
        }
    }
}

/// How to open one connection to the target through a system.
#[derive(Clone)]
pub enum Dialer {
    /// Plain TCP to an endpoint (direct, or a tunnel's service port).
    Tcp(Endpoint),
    /// TLS 1.3 to the direct TLS server.
    Tls {
        /// Server endpoint.
        at: Endpoint,
        /// Client configuration trusting the server.
        config: Arc<rustls::ClientConfig>,
    },
    /// A Tether stream opened by the harness itself (in-process system).
    Tether(Box<connect::Target>),
}

impl Dialer {
    /// Opens a connection.
    ///
    /// # Errors
    /// Connect, handshake or stream setup failures.
    pub async fn dial(&self) -> anyhow::Result<BoxIo> {
        match self {
            Self::Tcp(at) => Ok(Box::new(at.connect().await?)),
            Self::Tls { at, config } => {
                let tcp = at.connect().await?;
                let name = ServerName::try_from("localhost")?;
                let tls = tokio_rustls::TlsConnector::from(config.clone())
                    .connect(name, tcp)
                    .await?;
                Ok(Box::new(tls))
            }
            Self::Tether(target) => {
                let stream = connect::open(target).await?;
                Ok(Box::new(tether_net::rewind::Rewind::new(
                    stream.early,
                    stream.tls,
                )))
            }
        }
    }
}

/// A rustls server configuration for `localhost` issued by `ca`, with Tether's provider and
/// TLS 1.3 only, plus a client configuration trusting it.
///
/// # Errors
/// Certificate issuing or rustls refusing the material.
pub fn direct_tls_configs(ca: &Ca) -> anyhow::Result<(rustls::ServerConfig, rustls::ClientConfig)> {
    let issued = ca.issue_server(
        &["localhost".into()],
        &[std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)],
        Duration::from_secs(86_400),
    )?;
    let chain = tls::parse_certs("cert", "direct TLS", issued.cert_pem.as_bytes())?;
    let key = tls::parse_key("key", "direct TLS", issued.key_pem.as_bytes())?;
    let server = rustls::ServerConfig::builder_with_provider(tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    let roots = tls::root_store(&tls::parse_certs("CA", "direct TLS", ca.cert_pem().as_bytes())?)?;
    let client = rustls::ClientConfig::builder_with_provider(tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok((server, client))
}

/// The binaries a run may use; a missing peer is recorded as a note.
#[derive(Clone, Debug, Default)]
pub struct Binaries {
    /// `tether-relay`.
    pub relay: PathBuf,
    /// `tether-agent`.
    pub agent: PathBuf,
    /// `tether`.
    pub cli: PathBuf,
    /// rathole 0.5.0.
    pub rathole: Option<PathBuf>,
    /// frps.
    pub frps: Option<PathBuf>,
    /// frpc.
    pub frpc: Option<PathBuf>,
    /// chisel.
    pub chisel: Option<PathBuf>,
}

/// One started system.
pub struct Entry {
    /// Which.
    pub system: System,
    /// How to connect through it.
    pub dialer: Dialer,
    /// The process in the relay's role (Tether's relay, the peer's server, the direct TLS server).
    pub server_pid: Option<u32>,
    /// Every process of the system.
    pub pids: Vec<u32>,
}

/// Every system of one profile, started.
pub struct Systems {
    entries: Vec<Entry>,
    /// The plain TCP target every system reaches.
    pub target: Endpoint,
    inproc: Option<(Testbed, RunningAgent)>,
    /// Processes and files kept alive until [`Systems::stop`].
    keep: Vec<Box<dyn Any + Send>>,
    _dir: tempfile::TempDir,
}

impl Systems {
    /// Starts the target and every system that can run at `place` (the in-process one only on
    /// loopback). A peer that fails to start is recorded as a note (prefixed `note_prefix`).
    ///
    /// # Errors
    /// When the target, the direct TLS server or Tether cannot start.
    pub async fn start(
        bins: &Binaries,
        place: &Placement,
        note_prefix: &str,
        results: &mut Results,
    ) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new().prefix("tether-bench-").tempdir()?;
        let listener = crate::netns::listen(place.dev(), place.dev_ip)?;
        let target = Endpoint {
            addr: listener.local_addr()?,
            ns: place.dev_ns.clone(),
        };
        target::serve_on(listener);
        let mut systems = Self {
            entries: Vec::new(),
            target: target.clone(),
            inproc: None,
            keep: Vec::new(),
            _dir: dir,
        };
        let dir = systems._dir.path().to_owned();
        // The direct systems are dialled from the service side, so on the WAN they cross the link.
        let from_svc = |at: &Endpoint| Endpoint {
            addr: at.addr,
            ns: place.svc_ns.clone(),
        };
        systems.push(System::Tcp, Dialer::Tcp(from_svc(&target)), None, Vec::new());

        let bare = BareProcess::start_at(place)?;
        let pid = bare.pid();
        let dialer = match &bare.dialer {
            Dialer::Tls { at, config } => Dialer::Tls {
                at: from_svc(at),
                config: config.clone(),
            },
            other => other.clone(),
        };
        systems.push(System::Tls, dialer, Some(pid), vec![pid]);
        systems.keep.push(Box::new(bare));

        let tether = TetherProcesses::start(
            &tether_process::Bins {
                relay: &bins.relay,
                agent: &bins.agent,
                cli: &bins.cli,
            },
            &target,
            place,
        )
        .await
        .context("tether processes")?;
        let relay_pid = tether.relay.pid();
        let mut pids = vec![relay_pid];
        pids.extend(tether.others.iter().map(|p| p.pid()));
        systems.push(
            System::Tether,
            Dialer::Tcp(tether.service.clone()),
            Some(relay_pid),
            pids,
        );
        systems.keep.push(Box::new(tether));

        if !place.is_wan() {
            let (bed, agent, dialer) = start_inproc(&dir, target.addr).await?;
            systems.push(System::TetherInproc, dialer, None, Vec::new());
            systems.inproc = Some((bed, agent));
        }

        let note = |results: &mut Results, what: &str| results.note(&format!("{note_prefix}{what}"));
        let identity = TlsIdentity::generate(&dir.join("peer-tls"), &[place.svc_ip]);
        if let Err(e) = &identity {
            note(results, &format!("peers' TLS identity (openssl) failed: {e:#}"));
        }
        let identity = identity.ok();
        match &bins.rathole {
            None => note(
                results,
                "rathole: no binary given (--rathole); rathole systems not measured",
            ),
            Some(bin) => {
                for (system, transport) in [
                    (System::RatholeTcp, Transport::Tcp),
                    (System::RatholeNoise, Transport::Noise),
                    (System::RatholeTls, Transport::Tls),
                ] {
                    let started =
                        rathole::start(bin, transport, &target, place, identity.as_ref(), &dir).await;
                    systems.push_peer(system, started, results, note_prefix);
                }
            }
        }
        match (&bins.frps, &bins.frpc) {
            (Some(frps), Some(frpc)) => {
                let started = frp::start(frps, frpc, &target, place, &dir).await;
                systems.push_peer(System::Frp, started, results, note_prefix);
            }
            _ => note(
                results,
                "frp: no binaries given (--frps, --frpc); frp not measured",
            ),
        }
        match (&bins.chisel, &identity) {
            (Some(bin), Some(id)) => {
                let started = chisel::start(bin, &target, place, id, &dir).await;
                systems.push_peer(System::Chisel, started, results, note_prefix);
            }
            (None, _) => note(results, "chisel: no binary given (--chisel); chisel not measured"),
            (Some(_), None) => note(results, "chisel: no TLS identity; chisel not measured"),
        }
        Ok(systems)
    }

    fn push(&mut self, system: System, dialer: Dialer, server_pid: Option<u32>, pids: Vec<u32>) {
        self.entries.push(Entry {
            system,
            dialer,
            server_pid,
            pids,
        });
    }

    fn push_peer(
        &mut self,
        system: System,
        started: anyhow::Result<(Endpoint, Vec<crate::procs::Proc>)>,
        results: &mut Results,
        note_prefix: &str,
    ) {
        match started {
            Ok((service, procs)) => {
                let pids: Vec<u32> = procs.iter().map(|p| p.pid()).collect();
                self.push(system, Dialer::Tcp(service), pids.first().copied(), pids);
                self.keep.push(Box::new(procs));
            }
            Err(e) => results.note(&format!(
                "{note_prefix}{}: failed to start: {e:#}",
                system.label()
            )),
        }
    }

    /// The systems that started, in report order.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// Labels of the systems that started.
    pub fn labels(&self) -> Vec<&'static str> {
        self.entries.iter().map(|e| e.system.label()).collect()
    }

    /// Stops everything.
    pub async fn stop(self) {
        if let Some((bed, agent)) = self.inproc {
            agent.stop().await;
            bed.stop().await;
        }
        drop(self.keep);
    }
}

/// The in-process relay and agent (the previous harness's Tether system).
async fn start_inproc(
    dir: &Path,
    target: std::net::SocketAddr,
) -> anyhow::Result<(Testbed, RunningAgent, Dialer)> {
    let limits = Limits {
        default_max_connections_per_stream: 100_000,
        max_streams_per_device: 4_096,
        drain_grace: Duration::ZERO,
        drain_deadline: Duration::from_secs(1),
        ..Limits::default()
    };
    let bed = Testbed::start(&dir.join("tether-inproc"), limits).await?;
    let device = DeviceKey::parse("bench/device-inproc")?;
    let port = tether_process::TARGET_PORT;
    let mut config = bed.agent_config(&device, &BTreeMap::from([(port, target)]))?;
    config.max_streams = 4_096;
    let mut agent = bed.spawn_agent(config)?;
    agent.connected(Duration::from_secs(10)).await?;
    let token = bed.token(&device, port, Duration::from_secs(6 * 3600))?;
    let tether = bed.target(&device, port, &token)?;
    Ok((bed, agent, Dialer::Tether(Box::new(tether))))
}

/// Dials with a bound on the time it may take.
///
/// # Errors
/// Dial failures or the timeout.
pub async fn dial_within(dialer: &Dialer, limit: Duration) -> anyhow::Result<BoxIo> {
    tokio::time::timeout(limit, dialer.dial())
        .await
        .context("dial: time bound exceeded")?
}
