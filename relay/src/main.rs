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
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let config = match Args::parse().into_config() {
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
    tokio::spawn(signals(shutdown.clone()));
    relay.run(shutdown).await;
    ExitCode::SUCCESS
}

/// First SIGTERM/SIGINT starts the drain; a second one exits at once.
async fn signals(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt()))
    else {
        tracing::error!("cannot install signal handlers");
        return;
    };
    tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
    tracing::info!("shutdown signal received; draining (send it again to exit at once)");
    shutdown.cancel();
    tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
    tracing::warn!("second signal: exiting now");
    std::process::exit(130);
}
