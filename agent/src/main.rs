//! The `tether-agent` binary: parses flags and the config file, starts logging, turns SIGTERM or
//! SIGINT into a graceful shutdown, and runs the agent from the library.

use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser;
use tether_agent::{Agent, Args, Config};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

/// `EX_USAGE` from sysexits.h: the configuration is wrong; retrying will not help.
const EXIT_USAGE: u8 = 64;

fn main() -> ExitCode {
    let args = Args::parse();
    // Configuration errors are reported before anything else happens, on one line.
    let config = match Config::from_args(args) {
        Ok(config) => config,
        Err(e) => return usage_error(&e),
    };
    tether_net::install_crypto_provider();
    // RUST_LOG, when set, wins over the configured level (usual practice for Rust services).
    let filter = match std::env::var("RUST_LOG") {
        Ok(env) if !env.is_empty() => EnvFilter::try_new(env),
        _ => EnvFilter::try_new(&config.log_level),
    };
    let filter = match filter {
        Ok(filter) => filter,
        Err(e) => return usage_error(&format!("invalid log level: {e}")),
    };
    let telemetry = tether_net::telemetry::init(filter, false, "tether-agent");
    // Certificates, key and CA are loaded here, still before any dial.
    let agent = match Agent::new(config) {
        Ok(agent) => agent,
        Err(e) => return usage_error(&e),
    };
    let result = serve(agent);
    telemetry.shutdown();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tether-agent: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn usage_error(e: &dyn std::fmt::Display) -> ExitCode {
    eprintln!("tether-agent: {e}");
    ExitCode::from(EXIT_USAGE)
}

fn serve(agent: Agent) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(async {
        let shutdown = CancellationToken::new();
        let first = shutdown.clone();
        tokio::spawn(tether_net::signal::drain_then_exit(move |signal| {
            tracing::info!(
                signal,
                "shutting down: draining streams (signal again to exit at once)"
            );
            first.cancel();
        }));
        agent.run(shutdown).await.context("agent failed")
    })
}
