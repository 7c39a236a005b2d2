//! Tether's benchmark harness: seven scenarios on loopback and three (bulk, parallel, fairness)
//! across an impaired WAN link, each run against its baselines (direct TCP, direct TLS 1.3,
//! rathole, frp, chisel) in the same run, written to `docs/benchmarks.json` and
//! `docs/benchmarks.md`.
//!
//! * [`systems`]: the systems under test and how to open a connection through each;
//!   [`tether_process`], [`rathole`], [`frp`], [`chisel`] start them as processes.
//! * [`target`]: the target service behind every system, and its client side.
//! * [`scenario`]: one module per scenario.
//! * [`netns`], [`wan`]: namespaces and the impaired link of the WAN profile.
//! * [`relay_process`], [`bare`], [`fake_device`], [`proc_stats`], [`procs`]: separate processes,
//!   lightweight device connections and `/proc` readings.
//! * [`icount`]: the instruction-count gate's driver (callgrind).
//! * [`report`]: records, JSON and Markdown.

use std::{path::PathBuf, time::Instant};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};

pub mod bare;
pub mod chisel;
pub mod fake_device;
pub mod frp;
pub mod icount;
pub mod netns;
pub mod proc_stats;
pub mod procs;
pub mod profile;
pub mod rathole;
pub mod relay_process;
pub mod report;
pub mod scenario;
pub mod stats;
pub mod systems;
pub mod target;
pub mod tether_process;
pub mod tls_identity;
pub mod wan;

pub use profile::Profile;
pub use report::Results;

/// `tether-bench` flags.
#[derive(Debug, Parser)]
#[command(
    name = "tether-bench",
    about = "Benchmarks Tether against direct TCP, direct TLS, rathole, frp and chisel"
)]
pub struct Args {
    /// Tiny sizes: every scenario in seconds; asserts only that each produced sane numbers.
    #[arg(long)]
    pub smoke: bool,
    /// The `rathole` binary (0.5.0); without it the rathole systems are recorded as unavailable.
    #[arg(long)]
    pub rathole: Option<PathBuf>,
    /// The `frps` binary; with `--frpc`, measures frp's stcp mode.
    #[arg(long)]
    pub frps: Option<PathBuf>,
    /// The `frpc` binary.
    #[arg(long)]
    pub frpc: Option<PathBuf>,
    /// The `chisel` binary.
    #[arg(long)]
    pub chisel: Option<PathBuf>,
    /// The `tether-relay` binary (default: next to this binary).
    #[arg(long)]
    pub relay_bin: Option<PathBuf>,
    /// The `tether-agent` binary (default: next to this binary).
    #[arg(long)]
    pub agent_bin: Option<PathBuf>,
    /// The `tether` binary (default: next to this binary).
    #[arg(long)]
    pub cli_bin: Option<PathBuf>,
    /// The impairment wire (`scripts/netem/wire.py`); without it the WAN profile is skipped.
    #[arg(long)]
    pub wan_wire: Option<PathBuf>,
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
    /// Internal modes (separate processes the harness starts) and the instruction-count gate.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Internal subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// A bare rustls server (the memory baseline); prints its port on stdout.
    #[command(hide = true)]
    BareTlsServer(bare::ServerArgs),
    /// Drives a `tether-relay` (usually under callgrind) through the gate's fixed workload.
    Icount(icount::Args),
}

/// The WAN profile: scenarios 1, 2 and 7 across the impaired link, with every system that can
/// run there.
///
/// # Errors
/// When the link or a core system cannot start, or a scenario fails as a whole.
async fn run_wan(
    wire: &std::path::Path,
    p: &Profile,
    bins: &systems::Binaries,
    wanted: &dyn Fn(u8) -> bool,
    results: &mut Results,
) -> anyhow::Result<()> {
    let link = wan::WanLink::start(wire, &p.wan).context("WAN link")?;
    let systems = systems::Systems::start(bins, &link.place, "WAN profile: ", results).await?;
    eprintln!("WAN systems: {}", systems.labels().join(", "));
    let steps = [
        (1, scenario::bulk::WAN_NAME),
        (2, scenario::parallel::WAN_NAME),
        (7, scenario::fairness::WAN_NAME),
    ];
    for (n, name) in steps {
        if !wanted(n) {
            continue;
        }
        let t = Instant::now();
        eprintln!("scenario {name} ...");
        let outcome = match n {
            1 => scenario::bulk::run(name, p, p.wan_bulk_bytes, &systems, results).await,
            2 => scenario::parallel::run(name, p, p.wan_parallel_bytes_each, &systems, results).await,
            _ => scenario::fairness::run(name, p, p.wan_fairness, &systems, results).await,
        };
        outcome.with_context(|| format!("scenario {name}"))?;
        eprintln!("scenario {name} done in {:.1} s", t.elapsed().as_secs_f64());
    }
    systems.stop().await;
    drop(link);
    Ok(())
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
    let next_to_me = |name: &str| std::env::current_exe().map(|p| p.with_file_name(name));
    let bins = systems::Binaries {
        relay: args
            .relay_bin
            .clone()
            .map_or_else(|| next_to_me("tether-relay"), Ok)?,
        agent: args
            .agent_bin
            .clone()
            .map_or_else(|| next_to_me("tether-agent"), Ok)?,
        cli: args.cli_bin.clone().map_or_else(|| next_to_me("tether"), Ok)?,
        rathole: args.rathole.clone(),
        frps: args.frps.clone(),
        frpc: args.frpc.clone(),
        chisel: args.chisel.clone(),
    };
    let started = Instant::now();
    let mut results = Results::new(&profile, &bins);
    let systems = systems::Systems::start(&bins, &netns::Placement::loopback(), "", &mut results).await?;
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
        let p = &profile;
        let outcome = match n {
            1 => scenario::bulk::run(name, p, p.bulk_bytes, &systems, &mut results).await,
            2 => scenario::parallel::run(name, p, p.parallel_bytes_each, &systems, &mut results).await,
            3 => scenario::ping_pong::run(p, &systems, &mut results).await,
            4 => scenario::setup::run(p, &systems, &mut results).await,
            5 => scenario::idle::run(p, &bins.relay, &mut results).await,
            6 => scenario::active::run(p, &bins.relay, &systems, &mut results).await,
            _ => {
                let sizes = scenario::fairness::Sizes {
                    samples: p.fairness_samples,
                    warmup: p.ping_warmup,
                    bound: p.phase_timeout,
                };
                scenario::fairness::run(name, p, sizes, &systems, &mut results).await
            }
        };
        outcome.with_context(|| format!("scenario {name}"))?;
        eprintln!("scenario {name} done in {:.1} s", t.elapsed().as_secs_f64());
    }
    systems.stop().await;
    let wan_wanted = [1, 2, 7].into_iter().any(wanted);
    match &args.wan_wire {
        Some(wire) if wan_wanted => run_wan(wire, &profile, &bins, &wanted, &mut results).await?,
        Some(_) => {}
        None => results.note("WAN profile: no impairment wire given (--wan-wire); not measured"),
    }
    results.elapsed_secs = started.elapsed().as_secs_f64();
    eprintln!("{}", report::markdown_tables(&results));
    if args.smoke {
        let problems = results.sanity(&args.only, args.wan_wire.is_some());
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
