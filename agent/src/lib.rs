//! The Tether device agent: dials out to a relay, authenticates with its device certificate, and
//! serves the streams the relay opens to local target ports in its allowlist.
//!
//! * [`config`]: the TOML file merged with the flags ([`args`]) and the allowlist ([`allow`]),
//!   validated before anything is dialled.
//! * [`connector`]: TCP (direct or via `HTTPS_PROXY`), TLS 1.3, the preface, reconnect backoff.
//! * `session`: HTTP/2 with reversed roles (the agent is the server), keepalive, drain.
//! * `forward`: one stream — allowlist, local dial, splice.
//! * [`metrics`]: Prometheus counters, served on `metrics-listen` with the `metrics` feature.
//!
//! Run it in-process (tests, `tether demo`) with [`Agent`]:
//!
//! ```no_run
//! # async fn demo(config: tether_agent::Config) -> tether_agent::Result<()> {
//! let shutdown = tokio_util::sync::CancellationToken::new();
//! let agent = tether_agent::Agent::new(config)?; // loads certificates; fails before dialling
//! let mut state = agent.state();
//! let task = tokio::spawn(agent.run(shutdown.clone()));
//! state.wait_for(|s| matches!(s, tether_agent::AgentState::Connected { .. })).await.ok();
//! shutdown.cancel();
//! task.await.expect("agent task panicked")?;
//! # Ok(()) }
//! ```

#![forbid(unsafe_code)]

pub mod allow;
pub mod args;
pub mod config;
pub mod connector;
mod forward;
#[doc(hidden)]
pub mod fuzz;
pub mod metrics;
mod session;

use std::{sync::Arc, time::Duration};

use rustls_pki_types::ServerName;
use tether_net::{dial::Proxy, tls};
use tether_proto::name::DeviceKey;
use tokio::{
    sync::watch,
    time::{Instant, sleep, timeout},
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::{Instrument, info, info_span, warn};

pub use crate::config::{Args, Config, ConfigError};
use crate::{
    connector::{Backoff, Connector, jitter},
    forward::ForwardContext,
    session::{SessionEnd, SessionSettings},
};

/// This agent's version, sent in the preface and shown in Device status.
pub const AGENT_VERSION: &str = env!("CARGO_PKG_VERSION");

/// A device connection that stayed up this long is considered healthy, and the reconnect backoff
/// starts over. Shorter-lived connections keep counting as failures, so a relay that accepts and
/// then drops the agent at once is not hammered.
pub const STABLE_AFTER: Duration = Duration::from_secs(30);

/// Ceiling of the random delay before reconnecting after the relay ended the connection cleanly
/// (GOAWAY: a drain, or a ring change that moved the device to another relay): prompt, yet spread
/// so a relay's devices do not all hit their new owner in the same instant.
pub const RECONNECT_JITTER: Duration = Duration::from_secs(1);

/// Clean closes in a row, each soon after connecting, that still get a prompt reconnect. A ring
/// change moves a device once or twice; a relay that keeps accepting and closing at once is
/// broken, and past this the agent backs off as after a failure.
pub const MAX_PROMPT_RECONNECTS: u32 = 3;

/// Why the agent could not start. Everything here is detected before the first dial; once
/// running, connection failures are retried, logged and reflected in [`AgentState`], never
/// returned.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A certificate, key or CA bundle is missing, empty or unusable.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// `HTTPS_PROXY` is set but not a usable proxy URL.
    #[error(transparent)]
    Proxy(#[from] tether_net::dial::ProxyError),
    /// The device certificate does not match the configured device, or names no device.
    #[error("device identity: {0}")]
    Identity(String),
    /// The metrics listener could not be bound (or metrics could not be registered).
    #[error("metrics endpoint {addr}: {message}")]
    Metrics {
        /// The configured `metrics-listen` address, if any.
        addr: String,
        /// What failed.
        message: String,
    },
}

impl Error {
    /// A stable, low-cardinality label for logs and metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Config(_) => "config",
            Self::Tls(_) => "tls_material",
            Self::Proxy(_) => "proxy_config",
            Self::Identity(_) => "identity",
            Self::Metrics { .. } => "metrics",
        }
    }

    /// The process exit code for this error: every variant is a usage error (`EX_USAGE`, 64).
    pub fn exit_code(&self) -> u8 {
        64
    }
}

/// Result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What the agent is doing, published on a [`watch`] channel (see [`Agent::state`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentState {
    /// Dialling the relay (TCP, TLS and preface in progress).
    Connecting,
    /// The relay accepted the preface; streams are being served.
    Connected {
        /// The relay's version from its preface reply.
        relay_version: String,
    },
    /// Waiting before the next attempt after a failure or a lost connection.
    Backoff {
        /// Consecutive failed attempts so far.
        attempt: u32,
        /// How long until the next attempt.
        retry_in: Duration,
    },
    /// [`Agent::run`] has returned (shutdown).
    Stopped,
}

/// A configured agent, ready to [`run`](Agent::run).
pub struct Agent {
    config: Config,
    device: DeviceKey,
    connector: Connector,
    state: watch::Sender<AgentState>,
    metrics: metrics::AgentMetrics,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("device", &self.device)
            .field("relay_host", &self.config.relay_host)
            .finish()
    }
}

impl Agent {
    /// Validates `config`, loads the certificates, key and CA bundle, resolves the device identity
    /// and reads `HTTPS_PROXY` — all before any network I/O.
    ///
    /// # Errors
    /// Invalid configuration, unreadable/empty/malformed TLS material, a key that does not match
    /// its certificate, a certificate naming another device, or a malformed `HTTPS_PROXY`.
    pub fn new(config: Config) -> Result<Self> {
        config.validate()?;
        let cas = tls::load_certs("CA bundle", &config.ca)?;
        let chain = tls::load_certs("device certificate", &config.cert)?;
        let key = tls::load_key("device private key", &config.key)?;
        let device = resolve_device(&config, &chain[0])?;
        let sni = device.server_name(&config.relay_domain);
        let server_name = ServerName::try_from(sni.clone()).map_err(|_| ConfigError::Invalid {
            key: "device",
            message: format!("SNI {sni:?} is not a DNS name"),
        })?;
        let client_config = tls::agent_client_config(&cas, chain, key, &config.relay_name)?;
        let proxy = if config.proxy_from_env {
            Proxy::from_env()?
        } else {
            None
        };
        let connector = Connector::new(
            config.relay_host.clone(),
            config.relay_port,
            server_name,
            Arc::new(client_config),
            proxy,
        );
        let (state, _) = watch::channel(AgentState::Connecting);
        let metrics = metrics::AgentMetrics::new().map_err(|e| Error::Metrics {
            addr: String::new(),
            message: e.to_string(),
        })?;
        Ok(Self {
            config,
            device,
            connector,
            state,
            metrics,
        })
    }

    /// The device this agent serves (configured, or taken from its certificate).
    pub fn device(&self) -> &DeviceKey {
        &self.device
    }

    /// The agent's metrics (tests read them; `metrics-listen` serves them).
    pub fn metrics(&self) -> &metrics::AgentMetrics {
        &self.metrics
    }

    /// A receiver of the agent's [`AgentState`]. Tests and `tether demo` wait on it, e.g.
    /// `rx.wait_for(|s| matches!(s, AgentState::Connected { .. }))`.
    pub fn state(&self) -> watch::Receiver<AgentState> {
        self.state.subscribe()
    }

    /// Connects, serves streams and reconnects until `shutdown` is cancelled; then stops
    /// accepting, lets in-flight streams finish (up to the drain timeout) and returns.
    ///
    /// # Errors
    /// [`Error::Metrics`] when `metrics-listen` cannot be bound (before anything is dialled).
    pub async fn run(self, shutdown: CancellationToken) -> Result<()> {
        let Self {
            config,
            device,
            connector,
            state,
            metrics,
        } = self;
        let admin = serve_metrics(&config, &metrics, &state, &shutdown).await?;
        let span = info_span!("agent", device = %device);
        run_loop(&config, &connector, &state, &metrics, &shutdown)
            .instrument(span)
            .await;
        state.send_replace(AgentState::Stopped);
        if let Some(admin) = admin {
            let _ = admin.await;
        }
        Ok(())
    }
}

/// Runs an agent with `config` until `shutdown` is cancelled. See [`Agent`] to observe its state.
///
/// # Errors
/// As [`Agent::new`].
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<()> {
    Agent::new(config)?.run(shutdown).await
}

fn resolve_device(config: &Config, leaf: &rustls_pki_types::CertificateDer<'_>) -> Result<DeviceKey> {
    let td = &config.trust_domain;
    let sans = tls::uri_sans(leaf);
    let from_cert: Vec<DeviceKey> = sans
        .iter()
        .filter_map(|u| DeviceKey::from_spiffe_id(u, td).ok())
        .collect();
    match &config.device {
        Some(device) if from_cert.is_empty() || from_cert.contains(device) => {
            if from_cert.is_empty() {
                // Possibly another trust domain; the relay has the last word.
                warn!(%device, trust_domain = %td, "device certificate carries no device identity in this trust domain");
            }
            Ok(device.clone())
        }
        Some(device) => Err(Error::Identity(format!(
            "certificate {} is issued to {} but the configured device is {device}",
            config.cert.display(),
            from_cert[0]
        ))),
        None => from_cert.into_iter().next().ok_or_else(|| {
            Error::Identity(format!(
                "certificate {} has no URI SAN spiffe://{td}/ns/<namespace>/device/<name>; set `device` or `trust-domain`",
                config.cert.display()
            ))
        }),
    }
}

/// Starts the metrics server when `metrics-listen` is set; it stops with `shutdown`. `/ready` is
/// 200 while the agent has a relay session.
#[cfg(feature = "metrics")]
async fn serve_metrics(
    config: &Config,
    metrics: &metrics::AgentMetrics,
    state: &watch::Sender<AgentState>,
    shutdown: &CancellationToken,
) -> Result<Option<tokio::task::JoinHandle<()>>> {
    use std::sync::atomic::{AtomicBool, Ordering};
    let Some(addr) = config.metrics_listen else {
        return Ok(None);
    };
    let fail = |message: String| Error::Metrics {
        addr: addr.to_string(),
        message,
    };
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| fail(e.to_string()))?;
    tether_net::admin::register_process_metrics(&metrics.registry).map_err(|e| fail(e.to_string()))?;
    info!(addr = %listener.local_addr().unwrap_or(addr), "serving metrics");
    let ready = Arc::new(AtomicBool::new(false));
    let mut rx = state.subscribe();
    let flag = ready.clone();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        loop {
            flag.store(
                matches!(*rx.borrow_and_update(), AgentState::Connected { .. }),
                Ordering::Relaxed,
            );
            tokio::select! {
                changed = rx.changed() => if changed.is_err() { return },
                () = stop.cancelled() => return,
            }
        }
    });
    Ok(Some(tokio::spawn(tether_net::admin::serve(
        listener,
        metrics.registry.clone(),
        ready,
        shutdown.clone(),
    ))))
}

/// Without the `metrics` feature `metrics-listen` is refused by [`Config::validate`].
#[cfg(not(feature = "metrics"))]
async fn serve_metrics(
    _config: &Config,
    _metrics: &metrics::AgentMetrics,
    _state: &watch::Sender<AgentState>,
    _shutdown: &CancellationToken,
) -> Result<Option<tokio::task::JoinHandle<()>>> {
    Ok(None)
}

async fn run_loop(
    config: &Config,
    connector: &Connector,
    state: &watch::Sender<AgentState>,
    metrics: &metrics::AgentMetrics,
    shutdown: &CancellationToken,
) {
    info!(
        version = AGENT_VERSION,
        relay = %format_args!("{}:{}", config.relay_host, config.relay_port),
        relay_name = %config.relay_name,
        allow = ?config.allow.keys().collect::<Vec<_>>(),
        "starting agent"
    );
    if config.allow.is_empty() {
        warn!("the allowlist is empty: every stream will be refused");
    }
    let ctx = Arc::new(ForwardContext {
        allow: config.allow.clone(),
        connect_timeout: config.target_connect_timeout,
        metrics: metrics.clone(),
    });
    let settings = SessionSettings {
        max_streams: config.max_streams,
        keepalive_interval: config.keepalive_interval,
        keepalive_timeout: config.keepalive_timeout,
        drain_timeout: config.drain_timeout,
        handshake_timeout: connector::HANDSHAKE_TIMEOUT,
    };
    let tracker = TaskTracker::new();
    let mut backoff = Backoff::new(config.backoff);
    let mut quick_closes = 0u32;

    while !shutdown.is_cancelled() {
        state.send_replace(AgentState::Connecting);
        let attempt = tokio::select! {
            r = connector.connect() => r,
            _ = shutdown.cancelled() => break,
        };
        let delay = match attempt {
            Err(e) => {
                metrics
                    .connection_attempts
                    .with_label_values(&[e.metric_label()])
                    .inc();
                let delay = backoff.next_delay();
                warn!(error = %e, kind = e.metric_label(), attempt = backoff.attempt(), retry_in = ?delay,
                    "cannot connect to relay");
                delay
            }
            Ok(connected) => {
                metrics.connection_attempts.with_label_values(&["ok"]).inc();
                metrics.connected.set(1);
                info!(relay_version = %connected.relay_version, "connected to relay");
                state.send_replace(AgentState::Connected {
                    relay_version: connected.relay_version,
                });
                let since = Instant::now();
                let end = session::serve(connected.stream, settings, ctx.clone(), &tracker, shutdown).await;
                metrics.connected.set(0);
                let stable = since.elapsed() >= STABLE_AFTER;
                if stable {
                    backoff.reset();
                    quick_closes = 0;
                }
                match end {
                    SessionEnd::Shutdown => break,
                    SessionEnd::Moved => {
                        let delay = jitter(RECONNECT_JITTER, &mut rand::thread_rng());
                        info!(retry_in = ?delay, "relay moved the device to another relay; reconnecting");
                        delay
                    }
                    SessionEnd::Closed if stable || quick_closes < MAX_PROMPT_RECONNECTS => {
                        if !stable {
                            quick_closes += 1;
                        }
                        let delay = jitter(RECONNECT_JITTER, &mut rand::thread_rng());
                        info!(retry_in = ?delay, "relay closed the device connection (drain or move); reconnecting");
                        delay
                    }
                    SessionEnd::Closed => {
                        let delay = backoff.next_delay();
                        warn!(retry_in = ?delay, uptime = ?since.elapsed(),
                            "relay closed the device connection soon after accepting it; backing off");
                        delay
                    }
                    SessionEnd::Lost(reason) => {
                        let delay = backoff.next_delay();
                        warn!(%reason, retry_in = ?delay, "device connection lost; reconnecting");
                        delay
                    }
                }
            }
        };
        state.send_replace(AgentState::Backoff {
            attempt: backoff.attempt(),
            retry_in: delay,
        });
        tokio::select! {
            _ = sleep(delay) => {}
            _ = shutdown.cancelled() => break,
        }
    }

    // The session already drained its connection; what is left are stream tasks whose
    // connection is gone, which end as soon as their next read or write fails.
    tracker.close();
    if timeout(config.drain_timeout, tracker.wait()).await.is_err() {
        warn!(
            open = tracker.len(),
            "streams still open at the drain deadline; abandoning them"
        );
    }
    info!("agent stopped");
}
