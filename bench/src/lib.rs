//! Tether's benchmark harness: seven scenarios, each run against its baselines (direct TCP,
//! direct TLS 1.3, rathole) in the same run, written to `docs/benchmarks.json` and
//! `docs/benchmarks.md`.
//!
//! * [`systems`]: the systems under test and how to open a connection through each.
//! * [`target`]: the target service behind every system, and its client side.
//! * [`scenario`]: one module per scenario.
//! * [`relay_process`], [`bare`], [`fake_device`], [`proc_stats`]: the memory scenarios' separate
//!   processes, lightweight device connections and `/proc` readings.
//! * [`report`]: records, JSON and Markdown.

use std::{path::PathBuf, time::Instant};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};

pub mod bare;
pub mod fake_device;
pub mod proc_stats;
pub mod profile;
pub mod rathole;
pub mod relay_process;
pub mod report;
pub mod scenario;
pub mod stats;
pub mod systems;
pub mod target;

pub use profile::Profile;
pub use report::Results;

/// `tether-bench` flags.
#[derive(Debug, Parser)]
#[command(
    name = "tether-bench",
    about = "Benchmarks Tether against direct TCP, direct TLS and rathole"
)]
pub struct Args {
    /// Tiny sizes: every scenario in seconds; asserts only that each produced sane numbers.
    #[arg(long)]
    pub smoke: bool,
    /// The `rathole` binary (0.5.0); without it the rathole systems are recorded as unavailable.
    #[arg(long)]
    pub rathole: Option<PathBuf>,
    /// The `tether-relay` binary for the memory scenarios (default: next to this binary).
    #[arg(long)]
    pub relay_bin: Option<PathBuf>,
    /// Where to write the JSON results (default: docs/benchmarks.json, not written in smoke runs).
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Where to write the Markdown results (default: docs/benchmarks.md, not written in smoke runs).
    #[arg(long)]
    pub markdown: Option<PathBuf>,
    /// Idle device connections for scenario 5 (default: 10,000; 50 with `--smoke`).
    #[arg(long)]
    pub idle_devices: Option<usize>,
    /// Run only these scenarios (numbers 1-7, comma separated).
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<u8>,
    /// Internal modes (separate processes the harness starts).
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Internal subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// A bare rustls server (the memory baseline); prints its port on stdout.
    #[command(hide = true)]
    BareTlsServer(bare::ServerArgs),
}

/// Runs the selected scenarios and writes the report.
///
/// # Errors
/// A system that cannot start, a scenario that fails, or (smoke) a missing or insane figure.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let profile = if args.smoke {
        Profile::smoke()
    } else {
        Profile::full()
    };
    let profile = Profile {
        idle_devices: args.idle_devices.unwrap_or(profile.idle_devices),
        ..profile
    };
    let wanted = |n: u8| args.only.is_empty() || args.only.contains(&n);
    let relay_bin = match &args.relay_bin {
        Some(p) => p.clone(),
        None => std::env::current_exe()?.with_file_name("tether-relay"),
    };
    let started = Instant::now();
    let mut results = Results::new(&profile, args.rathole.as_deref());
    let systems = systems::Systems::start(args.rathole.as_deref(), &mut results).await?;
    eprintln!("systems: {}", systems.labels().join(", "));
    type Step = (u8, &'static str);
    let steps: [Step; 7] = [
        (1, scenario::bulk::NAME),
        (2, scenario::parallel::NAME),
        (3, scenario::ping_pong::NAME),
        (4, scenario::setup::NAME),
        (5, scenario::idle::NAME),
        (6, scenario::active::NAME),
        (7, scenario::fairness::NAME),
    ];
    for (n, name) in steps {
        if !wanted(n) {
            continue;
        }
        let t = Instant::now();
        eprintln!("scenario {name} ...");
        let outcome = match n {
            1 => scenario::bulk::run(&profile, &systems, &mut results).await,
            2 => scenario::parallel::run(&profile, &systems, &mut results).await,
            3 => scenario::ping_pong::run(&profile, &systems, &mut results).await,
            4 => scenario::setup::run(&profile, &systems, &mut results).await,
            5 => scenario::idle::run(&profile, &relay_bin, &mut results).await,
            6 => scenario::active::run(&profile, &relay_bin, &systems, &mut results).await,
            _ => scenario::fairness::run(&profile, &systems, &mut results).await,
        };
        outcome.with_context(|| format!("scenario {name}"))?;
        eprintln!("scenario {name} done in {:.1} s", t.elapsed().as_secs_f64());
    }
    systems.stop().await;
    results.elapsed_secs = started.elapsed().as_secs_f64();
    eprintln!("{}", report::markdown_tables(&results));
    if args.smoke {
        let problems = results.sanity(&args.only);
        if !problems.is_empty() {
            bail!("smoke run found problems:\n  {}", problems.join("\n  "));
        }
        eprintln!("smoke run OK: every scenario ran and produced sane figures");
    }
    let default_out = !args.smoke;
    if let Some(path) = args
        .json
        .clone()
        .or_else(|| default_out.then(|| PathBuf::from("docs/benchmarks.json")))
    {
        report::write_json(&results, &path)?;
        eprintln!("wrote {}", path.display());
    }
    if let Some(path) = args
        .markdown
        .clone()
        .or_else(|| default_out.then(|| PathBuf::from("docs/benchmarks.md")))
    {
        report::write_markdown(&results, &path)?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}
