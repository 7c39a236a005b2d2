//! `tether` binary: parses the command line and runs it; errors print on one line.

use std::process::ExitCode;

use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    tether_net::install_crypto_provider();
    // Logs go to stderr: with --stdio, stdout carries the tunnel.
    let telemetry = tether_net::telemetry::init(
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        true,
        "tether",
    );
    let result = tether_cli::args::run(tether_cli::args::Cli::parse()).await;
    telemetry.shutdown();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tether: {e:#}");
            ExitCode::FAILURE
        }
    }
}
