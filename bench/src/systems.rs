//! The systems under test, started once per run, and how to open a connection through each.
//!
//! All of them reach the same [`target`](crate::target) service:
//! * direct TCP: straight to the target;
//! * direct TLS: a rustls server (Tether's provider) in front of the same target code;
//! * Tether: service → relay → agent → target, relay and agent in this process ([`Testbed`]);
//! * rathole `tcp` / `noise`: a rathole server and client forwarding a service port to the target.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::Path,
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
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpStream,
};

use crate::{Results, rathole, target};

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
    /// Direct TLS 1.3 to a rustls server in front of the target.
    Tls,
    /// Tether: relay and agent, TLS on both legs.
    Tether,
    /// rathole 0.5.0 with the `tcp` transport (no encryption).
    RatholeTcp,
    /// rathole 0.5.0 with the `noise` transport.
    RatholeNoise,
}

impl System {
    /// Every system, in report order.
    pub const ALL: [Self; 5] = [
        Self::Tcp,
        Self::Tls,
        Self::Tether,
        Self::RatholeTcp,
        Self::RatholeNoise,
    ];

    /// The label used in the report.
    pub fn label(self) -> &'static str {
        match self {
            Self::Tcp => "direct-tcp",
            Self::Tls => "direct-tls",
            Self::Tether => "tether",
            Self::RatholeTcp => "rathole-tcp",
            Self::RatholeNoise => "rathole-noise",
        }
    }
}

/// How to open one connection to the target through a system.
#[derive(Clone)]
pub enum Dialer {
    /// Plain TCP to an address (direct, or a rathole service port).
    Tcp(SocketAddr),
    /// TLS 1.3 to the direct TLS server.
    Tls {
        /// Server address.
        addr: SocketAddr,
        /// Client configuration trusting the server.
        config: Arc<rustls::ClientConfig>,
    },
    /// A Tether stream.
    Tether(Box<connect::Target>),
}

impl Dialer {
    /// Opens a connection.
    ///
    /// # Errors
    /// Connect, handshake or stream setup failures.
    pub async fn dial(&self) -> anyhow::Result<BoxIo> {
        match self {
            Self::Tcp(addr) => {
                let tcp = TcpStream::connect(addr).await?;
                tcp.set_nodelay(true)?;
                Ok(Box::new(tcp))
            }
            Self::Tls { addr, config } => {
                let tcp = TcpStream::connect(addr).await?;
                tcp.set_nodelay(true)?;
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

/// The device port the Tether agent maps to the target.
const TARGET_PORT: u16 = 7;

/// A rustls server configuration for `localhost` issued by `ca`, with Tether's provider and
/// TLS 1.3 only, plus a client configuration trusting it.
///
/// # Errors
/// Certificate issuing or rustls refusing the material.
pub fn direct_tls_configs(ca: &Ca) -> anyhow::Result<(rustls::ServerConfig, rustls::ClientConfig)> {
    let issued = ca.issue_server(
        &["localhost".into()],
        &[IpAddr::V4(Ipv4Addr::LOCALHOST)],
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

/// Every system of the run, started.
pub struct Systems {
    dialers: Vec<(System, Dialer)>,
    /// The plain TCP target every system reaches.
    pub target: SocketAddr,
    /// The rathole pairs (their server processes are measured in scenario 6).
    pub rathole: Vec<(System, rathole::Pair)>,
    bed: Testbed,
    agent: RunningAgent,
    _dir: tempfile::TempDir,
}

impl Systems {
    /// Starts the target, the direct TLS server, Tether (relay + one agent) and, given a binary,
    /// rathole with both transports. A rathole failure is recorded as a note, not an error.
    ///
    /// # Errors
    /// When the target, TLS server or Tether cannot start.
    pub async fn start(rathole_bin: Option<&Path>, results: &mut Results) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new().prefix("tether-bench-").tempdir()?;
        let target = target::start_tcp().await?;
        let (ca, _) = Ca::generate("tether-bench direct TLS CA", Duration::from_secs(86_400))?;
        let (server, client) = direct_tls_configs(&ca)?;
        let tls_addr = target::start_tls(Arc::new(server)).await?;

        let limits = Limits {
            default_max_connections_per_stream: 100_000,
            max_streams_per_device: 4_096,
            drain_grace: Duration::ZERO,
            drain_deadline: Duration::from_secs(1),
            ..Limits::default()
        };
        let bed = Testbed::start(&dir.path().join("tether"), limits).await?;
        let device = DeviceKey::parse("bench/device-1")?;
        let mut config = bed.agent_config(&device, &BTreeMap::from([(TARGET_PORT, target)]))?;
        config.max_streams = 4_096;
        let mut agent = bed.spawn_agent(config)?;
        agent.connected(Duration::from_secs(10)).await?;
        let token = bed.token(&device, TARGET_PORT, Duration::from_secs(6 * 3600))?;
        let tether = bed.target(&device, TARGET_PORT, &token)?;

        let mut dialers = vec![
            (System::Tcp, Dialer::Tcp(target)),
            (
                System::Tls,
                Dialer::Tls {
                    addr: tls_addr,
                    config: Arc::new(client),
                },
            ),
            (System::Tether, Dialer::Tether(Box::new(tether))),
        ];
        let mut pairs = Vec::new();
        match rathole_bin {
            None => results.note("rathole: no binary given (--rathole); rathole systems not measured"),
            Some(bin) => {
                for (system, transport) in [(System::RatholeTcp, "tcp"), (System::RatholeNoise, "noise")] {
                    match rathole::Pair::start(bin, transport, target, dir.path()).await {
                        Ok(pair) => {
                            dialers.push((system, Dialer::Tcp(pair.service)));
                            pairs.push((system, pair));
                        }
                        Err(e) => results.note(&format!("rathole {transport}: failed to start: {e:#}")),
                    }
                }
            }
        }
        Ok(Self {
            dialers,
            target,
            rathole: pairs,
            bed,
            agent,
            _dir: dir,
        })
    }

    /// The systems that started, in report order, with their dialers.
    pub fn dialers(&self) -> &[(System, Dialer)] {
        &self.dialers
    }

    /// Labels of the systems that started.
    pub fn labels(&self) -> Vec<&'static str> {
        self.dialers.iter().map(|(s, _)| s.label()).collect()
    }

    /// The in-process relay's admin address (for its metrics).
    pub fn tether_admin(&self) -> SocketAddr {
        self.bed.admin_addr
    }

    /// Stops everything.
    pub async fn stop(self) {
        self.agent.stop().await;
        self.bed.stop().await;
        drop(self.rathole);
    }
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
