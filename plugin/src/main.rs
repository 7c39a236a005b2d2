//! `kubectl-tether` binary: parses the command line, runs it, and exits with its code (ssh's own
//! exit code for `kubectl tether ssh`); errors print on one line.

use std::process::ExitCode;

use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    tether_net::install_crypto_provider();
    // Logs go to stderr: `connect --stdio` carries the tunnel on stdout.
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    match tether_plugin::run(tether_plugin::args::Cli::parse()).await {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("kubectl-tether: {e:#}");
            ExitCode::FAILURE
        }
    }
}
