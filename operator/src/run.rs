//! The operator process: admin server, leader election, trust anchors, then the controllers.
//!
//! 1. `/live` answers at once; `/ready` turns 200 once this replica is a standby (the Lease is
//!    held by another replica) or leads with controllers running, so rolling updates proceed;
//!    `tether_operator_leader` says which replica leads. Metrics go to this operator's own
//!    `Registry` ([`Metrics::register`]), served on its `/metrics`.
//! 2. Leader election ([`crate::lease`]): only the Lease holder loads anchors and reconciles. The
//!    holder renews every `--retry-period`, each attempt bounded by the time left. When
//!    `--renew-deadline` (shorter than `--lease-duration`) passes without a successful renewal,
//!    or another replica holds the Lease, it **drops its controllers at once** (in-flight
//!    reconciles are cancelled, not awaited: a reconcile stuck on a dead connection must not
//!    outlive leadership) and [`run`] returns [`RunError::LostLease`], so the process exits
//!    non-zero and the Deployment restarts it as a standby with fresh state (client-go
//!    components exit the same way). A standby takes over only after `renewTime +
//!    leaseDuration`, by when the old leader has stopped: there is never a moment with two
//!    leaders, given clocks that agree within the margin.
//! 3. Trust anchors ([`crate::trust::load_or_create`]). When a Secret is malformed the operator
//!    never overwrites it: it logs the error, marks every Device and DeviceStream it watches
//!    `Ready=False/TrustAnchorInvalid` (with a Warning Event, [`crate::trust::report`]), and
//!    retries every `--trust-retry` until the Secret is fixed or deleted; controllers start only
//!    then.
//! 4. Device, DeviceStream and RelayPool controllers, until `shutdown` fires (SIGTERM/SIGINT in
//!    `main`); they finish in-flight reconciles, then the Lease is released.

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

use futures_util::future::join_all;
use kube::{
    Client,
    runtime::events::{Recorder, Reporter},
};
use prometheus::Registry;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::{
    Context,
    args::{Args, Controller},
    context::OperatorConfig,
    lease::{LeaseLock, LeaseTiming},
    metrics::Metrics,
    trust::{self, TrustAnchors, TrustError},
};

/// Why the operator stopped.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// No Kubernetes client configuration.
    #[error("cannot create a Kubernetes client: {0}")]
    Client(#[source] kube::Error),
    /// The leader-election flags are out of order.
    #[error("invalid leader-election timing: {0}")]
    LeaseTiming(String),
    /// The metric families cannot be registered (a name registered twice: a bug).
    #[error("cannot register metrics: {0}")]
    Metrics(#[source] prometheus::Error),
    /// The admin port cannot be bound.
    #[error("cannot bind the admin listener {addr}: {source}")]
    Admin {
        /// The address.
        addr: std::net::SocketAddr,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// Another replica took the Lease, or no renewal succeeded within the renew deadline; the
    /// controllers were stopped before a standby could take over.
    #[error("lost the leader Lease; controllers stopped, exiting so the replica restarts as a standby")]
    LostLease,
}

/// Runs the operator with the in-cluster (or kubeconfig) client until `shutdown` fires.
///
/// # Errors
/// See [`RunError`].
pub async fn run(args: Args, shutdown: CancellationToken) -> Result<(), RunError> {
    crate::telemetry::init();
    let client = Client::try_default().await.map_err(RunError::Client)?;
    run_with_client(client, args, shutdown).await
}

/// Runs the operator with `client` (tests pass a ServiceAccount-token client) until `shutdown`.
///
/// # Errors
/// See [`RunError`].
pub async fn run_with_client(
    client: Client,
    args: Args,
    shutdown: CancellationToken,
) -> Result<(), RunError> {
    let timing = args.lease_timing().map_err(RunError::LeaseTiming)?;
    let registry = Registry::new();
    let metrics = Arc::new(Metrics::register(&registry).map_err(RunError::Metrics)?);
    let ready = Arc::new(AtomicBool::new(false));
    let listener = tokio::net::TcpListener::bind(args.admin_addr)
        .await
        .map_err(|source| RunError::Admin {
            addr: args.admin_addr,
            source,
        })?;
    tracing::info!(addr = %listener.local_addr().unwrap_or(args.admin_addr), "admin server listening");
    let admin = tokio::spawn(tether_net::admin::serve(
        listener,
        registry,
        ready.clone(),
        shutdown.child_token(),
    ));

    let lock = LeaseLock::new(
        client.clone(),
        &args.namespace,
        &args.lease_name,
        &args.identity,
        timing.duration,
    );
    let replica = Replica {
        client: &client,
        args: &args,
        lock: &lock,
        timing,
        metrics: &metrics,
        ready: &ready,
    };
    let result = replica.lead(&shutdown).await;
    ready.store(false, Ordering::Relaxed);
    metrics.leader.set(0);
    if let Err(e) = lock.release_within(timing.retry_period).await {
        tracing::warn!(error = %e, "cannot release the Lease");
    }
    shutdown.cancel();
    let _ = admin.await;
    result
}

/// One operator replica's view of its process.
struct Replica<'a> {
    client: &'a Client,
    args: &'a Args,
    lock: &'a LeaseLock,
    timing: LeaseTiming,
    metrics: &'a Arc<Metrics>,
    ready: &'a AtomicBool,
}

impl Replica<'_> {
    /// Waits for the Lease, then leads until `shutdown` (`Ok`) or until leadership is lost
    /// ([`RunError::LostLease`]).
    async fn lead(&self, shutdown: &CancellationToken) -> Result<(), RunError> {
        let Some(acquired) = self.acquire(shutdown).await else {
            return Ok(());
        };
        tracing::info!(identity = %self.args.identity, "acquired the Lease; leading");
        self.metrics.leader.set(1);

        // `leading` stops the controllers gracefully (shutdown); `lost` drops them at once.
        let leading = shutdown.child_token();
        let lost = CancellationToken::new();
        let renewer = tokio::spawn(renew(
            self.lock.clone(),
            self.timing,
            acquired,
            leading.clone(),
            lost.clone(),
        ));
        let work = async {
            let recorder = Recorder::new(
                self.client.clone(),
                Reporter {
                    controller: "tether-operator".into(),
                    instance: Some(self.args.identity.clone()),
                },
            );
            let Some(trust) = self.load_trust(&recorder, &leading).await else {
                return;
            };
            self.controllers(recorder, trust, &leading).await;
        };
        tokio::select! {
            biased;
            () = lost.cancelled() => {
                // Dropping `work` cancels every in-flight reconcile here, before the renew
                // deadline has passed by more than a scheduling delay.
                tracing::error!("stopped reconciling: leadership lost");
            }
            () = work => {}
        }
        self.metrics.leader.set(0);
        leading.cancel();
        let _ = renewer.await;
        if lost.is_cancelled() {
            Err(RunError::LostLease)
        } else {
            Ok(())
        }
    }

    /// Retries every retry period until this replica holds the Lease (returns when the
    /// successful attempt started, which is no later than the `renewTime` it wrote) or `shutdown`.
    async fn acquire(&self, shutdown: &CancellationToken) -> Option<Instant> {
        self.metrics.leader.set(0);
        loop {
            let started = Instant::now();
            match self
                .lock
                .try_acquire_or_renew_within(self.timing.retry_period)
                .await
            {
                Ok(true) => return Some(started),
                // A standby is healthy: ready, so rolling updates of the Deployment can proceed.
                Ok(false) => {
                    self.ready.store(true, Ordering::Relaxed);
                    tracing::debug!("another replica leads");
                }
                Err(e) => tracing::warn!(error = %e, "cannot acquire the Lease"),
            }
            tokio::select! {
                () = shutdown.cancelled() => return None,
                () = tokio::time::sleep(self.timing.retry_period) => {}
            }
        }
    }

    /// Runs the enabled controllers until `leading` is cancelled.
    async fn controllers(&self, recorder: Recorder, trust: TrustAnchors, leading: &CancellationToken) {
        let args = self.args;
        match tether_net::pki::not_after_unix(trust.ca_pem()) {
            Ok(t) => self.metrics.trust_anchor_expiry.with_label_values(&["ca"]).set(t),
            Err(e) => tracing::warn!(error = %e, "cannot read the CA certificate's expiry"),
        }
        let ctx = Arc::new(Context::new(
            self.client.clone(),
            recorder,
            OperatorConfig {
                namespace: args.namespace.clone(),
                trust_domain: args.trust_domain.clone(),
            },
            trust,
            self.metrics.clone(),
        ));
        self.ready.store(true, Ordering::Relaxed);
        let mut controllers: Vec<std::pin::Pin<Box<dyn Future<Output = ()> + Send>>> = Vec::new();
        let watch = args.watch_namespace.clone();
        if args.runs(Controller::Device) {
            controllers.push(Box::pin(crate::device::controller(
                ctx.clone(),
                watch.clone(),
                leading.clone(),
            )));
        }
        if args.runs(Controller::DeviceStream) {
            controllers.push(Box::pin(crate::stream::controller(
                ctx.clone(),
                watch,
                leading.clone(),
            )));
        }
        if args.runs(Controller::RelayPool) {
            controllers.push(Box::pin(crate::relaypool::controller(
                ctx.clone(),
                leading.clone(),
            )));
        }
        tracing::info!(controllers = ?args.controllers, "starting controllers");
        join_all(controllers).await;
    }

    /// Loads the trust anchors, retrying until they load or `stop` fires (then `None`).
    async fn load_trust(&self, recorder: &Recorder, stop: &CancellationToken) -> Option<TrustAnchors> {
        let args = self.args;
        loop {
            match trust::load_or_create(self.client, &args.namespace).await {
                Ok(anchors) => return Some(anchors),
                Err(e @ TrustError::Malformed { .. }) => {
                    tracing::error!(error = %e, "trust anchor is malformed; not overwriting it. Reconciling is paused");
                    trust::report::report_invalid(
                        self.client,
                        args.watch_namespace.as_deref(),
                        recorder,
                        &e.to_string(),
                    )
                    .await;
                }
                Err(e) => tracing::warn!(error = %e, "cannot load trust anchors; retrying"),
            }
            tokio::select! {
                () = stop.cancelled() => return None,
                () = tokio::time::sleep(args.trust_retry) => {}
            }
        }
    }
}

/// Renews the Lease every retry period until `leading` is cancelled. Cancels `lost` when another
/// replica holds the Lease, or when `timing.renew_deadline` has passed since the start of the last
/// successful renewal (`last_ok`; each attempt is bounded by the time left, so a hung call
/// cannot carry it past the deadline). A standby can only take over `leaseDuration` after that
/// renewal's `renewTime` (written after `last_ok`), which is later still.
async fn renew(
    lock: LeaseLock,
    timing: LeaseTiming,
    mut last_ok: Instant,
    leading: CancellationToken,
    lost: CancellationToken,
) {
    loop {
        let deadline = last_ok + timing.renew_deadline;
        tokio::select! {
            () = leading.cancelled() => return,
            () = tokio::time::sleep(timing.retry_period) => {}
            () = tokio::time::sleep_until(deadline) => {}
        }
        let started = Instant::now();
        let left = deadline.saturating_duration_since(started);
        if left.is_zero() {
            tracing::error!(
                renew_deadline = ?timing.renew_deadline,
                "no Lease renewal succeeded within the renew deadline; stopping controllers"
            );
            break;
        }
        match lock
            .try_acquire_or_renew_within(left.min(timing.retry_period))
            .await
        {
            Ok(true) => last_ok = started,
            Ok(false) => {
                tracing::error!("another replica holds the Lease; stopping controllers");
                break;
            }
            Err(e) => {
                tracing::warn!(error = %e, left = ?left, "Lease renewal failed; retrying until the renew deadline")
            }
        }
    }
    lost.cancel();
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// The renew loop gives up by the deadline even when every call hangs: the API server here
    /// is a socket that accepts connections (the kernel's backlog) and never answers.
    #[tokio::test]
    async fn a_hung_renewal_stops_leading_at_the_renew_deadline() {
        let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!("http://{}", silent.local_addr().expect("addr"));
        let client = Client::try_from(kube::Config::new(url.parse().expect("url"))).expect("client");
        let timing = LeaseTiming::new(
            Duration::from_secs(3),
            Duration::from_secs(1),
            Duration::from_millis(200),
        )
        .expect("valid");
        let lock = LeaseLock::new(client, "ns", "l", "me", timing.duration);
        let (leading, lost) = (CancellationToken::new(), CancellationToken::new());
        let start = Instant::now();
        renew(lock, timing, start, leading, lost.clone()).await;
        assert!(lost.is_cancelled());
        let took = start.elapsed();
        assert!(
            took >= timing.renew_deadline && took < timing.renew_deadline + Duration::from_millis(300),
            "gave up after {took:?}"
        );
    }
}
