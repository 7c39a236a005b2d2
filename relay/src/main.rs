//! `tether-relay` binary: parses flags, loads keys (refusing to start without them) and runs.

use std::process::ExitCode;

use clap::Parser;
use tether_relay::{Relay, args::Args};
use tokio_util::sync::CancellationToken;

/// `EX_USAGE`: bad configuration, detected before any port is bound.
const EX_USAGE: u8 = 64;

#[tokio::main]
async fn main() -> ExitCode {
    tether_net::install_crypto_provider();
    let telemetry = tether_net::telemetry::init(
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        false,
        "tether-relay",
    );
    let (config, kube) = match Args::parse().into_config() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("tether-relay: {e}");
            return ExitCode::from(EX_USAGE);
        }
    };
    tracing::info!(version = env!("CARGO_PKG_VERSION"), "starting tether-relay");
    let relay = match Relay::bind(config).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("tether-relay: {e}");
            return ExitCode::FAILURE;
        }
    };
    tracing::info!(data = %relay.local_addr(), admin = %relay.admin_addr(), "listening");
    let shutdown = CancellationToken::new();
    let first = shutdown.clone();
    tokio::spawn(tether_net::signal::drain_then_exit(move |signal| {
        tracing::info!(
            signal,
            "shutdown signal received; draining (send it again to exit at once)"
        );
        first.cancel();
    }));
    if let Some(kube) = kube
        && let Err(e) = start_kubernetes(kube, &relay, shutdown.clone()).await
    {
        eprintln!("tether-relay: {e}");
        return ExitCode::from(EX_USAGE);
    }
    relay.run(shutdown).await;
    telemetry.shutdown();
    ExitCode::SUCCESS
}

/// Starts the Kubernetes watchers and status writer beside the relay.
#[cfg(feature = "kubernetes")]
async fn start_kubernetes(
    kube: tether_relay::args::KubernetesArgs,
    relay: &Relay,
    shutdown: CancellationToken,
) -> Result<(), String> {
    let client = kube::Client::try_default()
        .await
        .map_err(|e| format!("Kubernetes mode: no usable in-cluster config or KUBECONFIG: {e}"))?;
    let settings = tether_relay::kubernetes::Settings {
        pool: kube.pool,
        namespace: kube.namespace,
        status_writes_per_second: kube.status_writes_per_second,
    };
    tracing::info!(pool = %settings.pool, namespace = %settings.namespace, "Kubernetes mode");
    tokio::spawn(tether_relay::kubernetes::run(
        client,
        settings,
        relay.handle(),
        shutdown,
    ));
    Ok(())
}

#[cfg(not(feature = "kubernetes"))]
async fn start_kubernetes(
    _: tether_relay::args::KubernetesArgs,
    _: &Relay,
    _: CancellationToken,
) -> Result<(), String> {
    Err("this build has no Kubernetes mode (cargo feature `kubernetes`)".into())
}
