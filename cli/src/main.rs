//! `tether` binary: parses the command line and runs it; errors print on one line.

use clap::Parser;

#[tokio::main]
async fn main() {
    tether_net::install_crypto_provider();
    // Logs go to stderr: with --stdio, stdout carries the tunnel.
    let telemetry = tether_net::telemetry::init(
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        true,
        "tether",
    );
    let result = tether_cli::args::run(tether_cli::args::Cli::parse()).await;
    telemetry.shutdown();
    let code = match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("tether: {e:#}");
            1
        }
    };
    // Exit here rather than return: returning drops the runtime, which waits for its blocking
    // threads, and with --stdio one of them sits in a read(2) on stdin that only the parent's next
    // write or EOF ends. A stream the relay ended (device dead, revoked) then left `tether` and the
    // ssh that runs it as ProxyCommand hanging (found by scripts/e2e/factory.sh, dead peer).
    std::process::exit(code);
}
