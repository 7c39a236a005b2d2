//! `tether-bench` binary: parses flags, installs the rustls provider and runs the harness.

use clap::Parser;
use tether_bench::{Args, Command};

fn main() -> anyhow::Result<()> {
    tether_net::install_crypto_provider();
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    match args.command {
        Some(Command::BareTlsServer(server)) => runtime.block_on(tether_bench::bare::serve(server)),
        Some(Command::Icount(icount)) => runtime.block_on(tether_bench::icount::run(icount)),
        None => runtime.block_on(tether_bench::run(args)),
    }
}
