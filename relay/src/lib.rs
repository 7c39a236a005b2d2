//! `tether-relay`: terminates device and service TLS connections and splices them into tunnels.
//!
//! A connection's life: [`listener`] accepts it under a connection cap and a pending-handshake cap;
//! [`handshake`] reads the ClientHello (SNI names the device), terminates TLS and, by ALPN, hands
//! it to [`device`] (an agent's long-lived HTTP/2 session), [`service`] (one tunnelled TCP
//! connection: CONNECT + token, then a spliced HTTP/2 stream to the agent) or [`mux`] (a
//! service's HTTP/2 connection: one CONNECT stream per tunnelled TCP connection). [`registry`] holds
//! live sessions, `tether_net::admin` serves metrics and health, and [`Relay::run`] drains on shutdown.
//!
//! Standalone mode is this crate with every device local. The fleet (Kubernetes membership, SNI
//! forwarding, revocation watch) plugs in at the routing point in [`handshake`] and through
//! [`RelayHandle::revoke`] (streams), [`RelayHandle::revoke_device`] / [`RelayHandle::lift_device`]
//! (devices) and [`RelayHandle::set_revoked`] (the whole set at once). Standalone mode revokes
//! through a watched file ([`revocation`]).

#![forbid(unsafe_code)]

pub mod args;
pub mod config;
pub mod device;
pub mod fleet;
mod forward;
pub mod handshake;
#[cfg(feature = "kubernetes")]
pub mod kubernetes;
pub mod listener;
pub mod metrics;
pub mod mux;
pub mod reason;
mod rebalance;
pub mod registry;
pub mod revocation;
pub mod service;
pub mod splice;
pub mod status;
pub mod tokens;

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::SystemTime,
};

pub use config::{FleetConfig, Limits, RelayConfig, TlsFiles};
use tokio::{net::TcpListener, sync::Semaphore};
use tokio_rustls::TlsAcceptor;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{metrics::Metrics, registry::Registry};

/// Errors of starting a relay.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A port could not be bound.
    #[error("cannot bind {what} {addr}: {source}")]
    Bind {
        /// Which port.
        what: &'static str,
        /// The address.
        addr: SocketAddr,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// Metrics could not be registered.
    #[error("metrics registration failed: {0}")]
    Metrics(#[from] prometheus::Error),
}

/// State shared by every connection task.
pub(crate) struct Shared {
    pub config: RelayConfig,
    /// TLS for service connections.
    pub acceptor: TlsAcceptor,
    /// TLS for device connections (no session resumption).
    pub device_acceptor: TlsAcceptor,
    pub registry: Arc<Registry>,
    pub metrics: Metrics,
    /// Verifies stream tokens (signatures cached).
    pub tokens: tokens::Tokens,
    /// Held by each connection in its handshake phase.
    pub pending: Arc<Semaphore>,
    /// Pending handshakes per source address.
    pub sources: Arc<listener::SourceLimiter>,
    /// Held by each connection for its whole life.
    pub connections: Arc<Semaphore>,
    /// Cancelled when the drain deadline passes: ends every remaining connection.
    pub hard_stop: CancellationToken,
    /// Cancelled when the relay stops accepting (drain): multiplexed service connections send
    /// GOAWAY, so clients open their next streams on a relay that stays.
    pub goaway: CancellationToken,
    /// Source of device session ids.
    pub next_session_id: AtomicU64,
    /// The relay fleet, in Kubernetes mode; `None` standalone (every device is local).
    pub fleet: Option<Arc<fleet::Fleet>>,
    /// Set once draining: new device connections are refused (so agents reconnect to a relay that
    /// stays), services are still served for the grace period.
    pub draining: AtomicBool,
    /// Reports for the status writer (in a fleet).
    pub status: Option<Arc<status::StatusBoard>>,
    /// Per-stream connection limits from DeviceStream specs (they may change after the token was
    /// minted); a token's own limit applies when a stream has none here.
    pub stream_limits: std::sync::Mutex<std::collections::HashMap<String, u32>>,
}

/// Seconds since the Unix epoch (token times are in these units).
pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A bound, not yet running relay.
pub struct Relay {
    shared: Arc<Shared>,
    listener: TcpListener,
    /// The peer port, in a fleet.
    peer: Option<TcpListener>,
    admin: TcpListener,
    registry: prometheus::Registry,
    ready: Arc<AtomicBool>,
}

/// Control of a running relay from outside its tasks (tests, the demo, the fleet's watchers).
#[derive(Clone)]
pub struct RelayHandle {
    shared: Arc<Shared>,
}

impl RelayHandle {
    /// Revokes a stream: refuses its new connections until `until` (Unix seconds; the token's
    /// expiry, after which the token is refused anyway) and closes its live ones.
    pub fn revoke(&self, stream_uid: &str, until: u64) {
        self.shared.registry.revoke(stream_uid, until, unix_now());
    }

    /// Revokes a device (its Device was disabled or deleted): closes its live session, which ends
    /// its streams, at once, and refuses its new connections (preface refused, reason
    /// `device_revoked`) until [`RelayHandle::lift_device`]. Returns whether a session was closed.
    ///
    /// # Guarantees
    /// The session is cancelled before this returns; its TCP connection closes as soon as its task
    /// runs (milliseconds), well within the 2 s DESIGN §2 promises.
    pub fn revoke_device(&self, device: &tether_proto::name::DeviceKey) -> bool {
        let closed = self.shared.registry.revoke_device(device);
        if closed {
            tracing::info!(%device, "device revoked; closed its session");
        }
        closed
    }

    /// Lifts a device's revocation (its Device was enabled again).
    pub fn lift_device(&self, device: &tether_proto::name::DeviceKey) {
        self.shared.registry.lift_device(device);
    }

    /// Replaces the whole revoked set, for an owner of the complete list (the revocation file,
    /// or a Kubernetes watcher after a resync): `devices` are revoked as by
    /// [`RelayHandle::revoke_device`], `streams` (stream UID → Unix second until which to refuse
    /// it) as by [`RelayHandle::revoke`]; every device or stream not in the new set is lifted.
    pub fn set_revoked(
        &self,
        devices: std::collections::HashSet<tether_proto::name::DeviceKey>,
        streams: std::collections::HashMap<String, u64>,
    ) {
        self.shared.registry.set_revoked(devices, streams, unix_now());
    }

    /// The revoked devices and streams (stream UID → until), for tests and diagnostics.
    pub fn revoked(
        &self,
    ) -> (
        std::collections::HashSet<tether_proto::name::DeviceKey>,
        std::collections::HashMap<String, u64>,
    ) {
        self.shared.registry.revoked()
    }

    /// Number of devices with a live session.
    pub fn connected_devices(&self) -> usize {
        self.shared.registry.device_count()
    }

    /// Whether `device` has a live session.
    pub fn is_connected(&self, device: &tether_proto::name::DeviceKey) -> bool {
        self.shared.registry.get(device).is_some()
    }

    /// The fleet membership, in a fleet: membership sources call [`fleet::Fleet::set_members`].
    pub fn fleet(&self) -> Option<Arc<fleet::Fleet>> {
        self.shared.fleet.clone()
    }

    /// The metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.shared.metrics
    }

    /// What the data plane reported, in a fleet (read by the status writer).
    pub fn status_board(&self) -> Option<Arc<status::StatusBoard>> {
        self.shared.status.clone()
    }

    /// Sets (or with `None` clears) stream `uid`'s connection limit from its DeviceStream spec.
    pub fn set_stream_limit(&self, uid: &str, limit: Option<u32>) {
        let mut limits = self
            .shared
            .stream_limits
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        match limit {
            Some(l) => limits.insert(uid.to_owned(), l),
            None => limits.remove(uid),
        };
    }

    /// This relay's configuration.
    pub fn config(&self) -> &RelayConfig {
        &self.shared.config
    }
}

impl Relay {
    /// Binds the data and admin ports.
    ///
    /// # Errors
    /// When a port cannot be bound or metrics cannot be registered.
    pub async fn bind(config: RelayConfig) -> Result<Self, Error> {
        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(|source| Error::Bind {
                what: "data port",
                addr: config.listen,
                source,
            })?;
        let admin = TcpListener::bind(config.admin_listen)
            .await
            .map_err(|source| Error::Bind {
                what: "admin port",
                addr: config.admin_listen,
                source,
            })?;
        let peer = match &config.fleet {
            Some(f) => Some(
                TcpListener::bind(f.peer_listen)
                    .await
                    .map_err(|source| Error::Bind {
                        what: "peer port",
                        addr: f.peer_listen,
                        source,
                    })?,
            ),
            None => None,
        };
        let fleet = config
            .fleet
            .as_ref()
            .map(|f| Arc::new(fleet::Fleet::new(f.member_name.clone(), f.source_ip)));
        let registry = prometheus::Registry::new();
        let metrics = Metrics::register(&registry)?;
        tether_net::admin::register_process_metrics(&registry)?;
        let shared = Arc::new(Shared {
            acceptor: TlsAcceptor::from(config.tls.clone()),
            device_acceptor: TlsAcceptor::from(config.device_tls.clone()),
            registry: Arc::new(Registry::default()),
            metrics,
            tokens: tokens::Tokens::new(config.token_verifier.clone(), tokens::CAPACITY),
            pending: Arc::new(Semaphore::new(config.limits.max_pending_handshakes)),
            sources: listener::SourceLimiter::new(config.limits.max_pending_handshakes_per_source),
            connections: Arc::new(Semaphore::new(config.limits.max_connections)),
            hard_stop: CancellationToken::new(),
            goaway: CancellationToken::new(),
            next_session_id: AtomicU64::new(1),
            draining: AtomicBool::new(false),
            status: fleet.as_ref().map(|_| Arc::new(status::StatusBoard::default())),
            stream_limits: Default::default(),
            fleet,
            config,
        });
        Ok(Self {
            shared,
            listener,
            peer,
            admin,
            registry,
            ready: Arc::new(AtomicBool::new(false)),
        })
    }

    /// The bound data address.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().unwrap_or(self.shared.config.listen)
    }

    /// The bound peer-port address, in a fleet.
    pub fn peer_addr(&self) -> Option<SocketAddr> {
        self.peer.as_ref().and_then(|p| p.local_addr().ok())
    }

    /// The bound admin address.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin.local_addr().unwrap_or(self.shared.config.admin_listen)
    }

    /// A handle for revocations and state queries.
    pub fn handle(&self) -> RelayHandle {
        RelayHandle {
            shared: self.shared.clone(),
        }
    }

    /// The metrics registry (for embedding processes that serve their own metrics).
    pub fn metrics_registry(&self) -> prometheus::Registry {
        self.registry.clone()
    }

    /// Serves until `shutdown` fires, then drains: `/ready` turns 503, connections are still
    /// accepted for `drain_grace`, then devices get GOAWAY (their sessions close once their streams
    /// finish) and the relay waits up to `drain_deadline` before closing what is left.
    pub async fn run(self, shutdown: CancellationToken) {
        let Self {
            shared,
            listener,
            peer,
            admin,
            registry,
            ready,
        } = self;
        let admin_stop = CancellationToken::new();
        let admin_task = tokio::spawn(tether_net::admin::serve(
            admin,
            registry,
            ready.clone(),
            admin_stop.clone(),
        ));
        // Revocations are in force before the first connection is accepted.
        let revocations = shared.config.revocation_file.clone().map(|path| {
            let relay = RelayHandle {
                shared: shared.clone(),
            };
            match revocation::load(&path) {
                Ok(set) => relay.set_revoked(set.devices, set.streams),
                Err(e) => tracing::error!(error = %e, "revocation file not applied"),
            }
            tokio::spawn(revocation::watch(path, relay, admin_stop.clone()))
        });
        let tracker = TaskTracker::new();
        let stop_accepting = CancellationToken::new();
        let accept_task = tokio::spawn(listener::accept_loop(
            listener,
            shared.clone(),
            tracker.clone(),
            stop_accepting.clone(),
        ));
        let peer_task = peer.map(|peer| {
            tokio::spawn(forward::peer_accept_loop(
                peer,
                shared.clone(),
                tracker.clone(),
                stop_accepting.clone(),
            ))
        });
        let rebalance_task = shared
            .fleet
            .clone()
            .map(|fleet| tokio::spawn(rebalance::run(shared.clone(), fleet, stop_accepting.clone())));
        ready.store(true, Ordering::Relaxed);
        tracing::info!(relay_domain = %shared.config.relay_domain, "relay ready");

        shutdown.cancelled().await;
        ready.store(false, Ordering::Relaxed);
        shared.draining.store(true, Ordering::Relaxed);
        shared.metrics.draining.set(1);
        let limits = &shared.config.limits;
        tracing::info!(grace = ?limits.drain_grace, deadline = ?limits.drain_deadline, "draining: not ready");
        tokio::time::sleep(limits.drain_grace).await;
        stop_accepting.cancel();
        shared.goaway.cancel();
        let _ = accept_task.await;
        for task in [peer_task, rebalance_task].into_iter().flatten() {
            let _ = task.await;
        }
        let sessions = shared.registry.drain_all();
        shared.metrics.connected_devices.set(0);
        tracing::info!(
            devices = sessions.len(),
            "sent GOAWAY to devices; waiting for streams to finish"
        );
        rebalance::tell_to_reconnect(sessions);
        tracker.close();
        if tokio::time::timeout(limits.drain_deadline, tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                streams = shared.metrics.active_streams.get(),
                "drain deadline passed; closing remaining connections"
            );
            shared.hard_stop.cancel();
            tracker.wait().await;
        }
        admin_stop.cancel();
        let _ = admin_task.await;
        if let Some(task) = revocations {
            let _ = task.await;
        }
        tracing::info!("relay stopped");
    }
}
