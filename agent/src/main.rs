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
/// Exit code after a second signal (128 + SIGINT), as shells report an interrupted program.
const EXIT_INTERRUPTED: i32 = 130;

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
    // Colour codes only on a terminal: in files and the journal they are noise at best.
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .init();
    // Certificates, key and CA are loaded here, still before any dial.
    let agent = match Agent::new(config) {
        Ok(agent) => agent,
        Err(e) => return usage_error(&e),
    };
    match serve(agent) {
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
        tokio::spawn(watch_signals(shutdown.clone()));
        agent.run(shutdown).await.context("agent failed")
    })
}

/// First SIGTERM/SIGINT: graceful shutdown. Second: exit at once.
async fn watch_signals(shutdown: CancellationToken) {
    let mut count = 0;
    loop {
        let name = match next_signal().await {
            Ok(name) => name,
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for signals; stop the agent with SIGKILL");
                return;
            }
        };
        count += 1;
        if count == 1 {
            tracing::info!(
                signal = name,
                "shutting down: draining streams (signal again to exit at once)"
            );
            shutdown.cancel();
        } else {
            tracing::warn!(signal = name, "second signal: exiting now");
            std::process::exit(EXIT_INTERRUPTED);
        }
    }
}

#[cfg(unix)]
async fn next_signal() -> std::io::Result<&'static str> {
    use tokio::signal::unix::{SignalKind, signal};
    // Re-registering per call is cheap and keeps this function self-contained.
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    })
}

#[cfg(not(unix))]
async fn next_signal() -> std::io::Result<&'static str> {
    tokio::signal::ctrl_c().await.map(|()| "Ctrl-C")
}
