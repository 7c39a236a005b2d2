//! The instruction-count gate: a fixed workload on the relay's hot paths, driven from this
//! process against a `tether-relay` running under `valgrind --tool=callgrind`, which counts the
//! relay's instructions per phase (`callgrind_control --zero` before, `--dump` after each):
//!
//! * `stream_setup`: one service stream through an established device connection: TLS 1.3
//!   handshake with the relay, CONNECT with a fresh token (signature verified, not cached),
//!   the HTTP/2 stream to the device, one echoed byte, close;
//! * `relay_64mib`: 64 MiB relayed one way (service → device) on a stream opened beforehand;
//! * `keepalive_1000`: 1,000 keepalive rounds on the idle device connection (PINGs from the
//!   device, as the agent sends them; the relay's own keepalive timer is set out of the way).
//!
//! Instruction counts barely move between runs on a noisy machine, where times do. The relay
//! runs with one tokio worker (`TOKIO_WORKER_THREADS=1`) so work stealing adds no variation.
//! The counts are compared with a committed baseline (`bench/icount-baseline.json`); the gate
//! fails when a phase exceeds its baseline by more than the threshold (see docs/benchmarks.md
//! for how the threshold was chosen and how to update the baseline on purpose).

use std::{
    collections::BTreeMap,
    ffi::OsString,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};
use tether_proto::name::DeviceKey;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::{fake_device, netns::Placement, procs::output, relay_process::RelayProcess, target};

/// Bytes relayed in the bulk phase.
const BULK_BYTES: u64 = 64 << 20;
/// Keepalive rounds.
const KEEPALIVE_ROUNDS: usize = 1_000;
/// The device port streams ask for (the fake device serves every port).
const PORT: u16 = 7;
/// Pause before each dump, so the work a phase set off (stream teardown, window updates) is
/// charged to it and not to the next.
const SETTLE: Duration = Duration::from_millis(500);

/// Flags of `tether-bench icount`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The `tether-relay` binary.
    #[arg(long)]
    pub relay_bin: PathBuf,
    /// Run the relay under callgrind and count (without: run the workload natively, a quick
    /// check that the driver works).
    #[arg(long)]
    pub callgrind: bool,
    /// Baseline file to compare with.
    #[arg(long)]
    pub baseline: Option<PathBuf>,
    /// Write the measured counts as a new baseline to `--baseline` instead of comparing.
    #[arg(long)]
    pub update: bool,
    /// Write the measured counts (JSON) here as well.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// A baseline file.
#[derive(Debug, Serialize, Deserialize)]
pub struct Baseline {
    /// Allowed growth per phase, percent.
    pub threshold_pct: f64,
    /// Why the threshold is what it is, and what the counts were measured with.
    pub note: String,
    /// Instructions (callgrind `Ir`) per phase.
    pub phases: BTreeMap<String, u64>,
}

/// Runs the workload and compares or updates.
///
/// # Errors
/// A workload failure, or (comparing) a phase over its baseline by more than the threshold.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let dir = tempfile::Builder::new().prefix("tether-icount-").tempdir()?;
    let out_file = dir.path().join("callgrind.out");
    let flags: Vec<OsString> = vec![
        "--tool=callgrind".into(),
        format!("--callgrind-out-file={}", out_file.display()).into(),
        // Counting starts at the first explicit zero; startup is not measured.
        "--collect-atstart=yes".into(),
    ];
    let valgrind = PathBuf::from("valgrind");
    let env = [("TOKIO_WORKER_THREADS", "1")];
    let wrapper = args
        .callgrind
        .then_some((valgrind.as_path(), flags.as_slice(), env.as_slice()));
    // The relay's own PINGs would fire on a timer, so a phase's count would depend on its length.
    let relay = RelayProcess::start_wrapped(
        &args.relay_bin,
        &Placement::loopback(),
        &["--keepalive-interval", "1h"],
        wrapper,
    )
    .await?;
    let pid = relay.pid();
    let counter = Counter {
        pid,
        enabled: args.callgrind,
        dir: dir.path().to_owned(),
    };

    let device = DeviceKey::parse("icount/device-1")?;
    let (device_task, mut ping) =
        fake_device::connect_with_ping(relay.addr, &device, relay.device_tls(&device)?).await?;
    relay.wait_devices(1, Duration::from_secs(60)).await?;
    let limit = Duration::from_secs(300);
    let mut bulk = open(&relay, &device).await?;
    // One unmeasured setup and round of each kind warms caches, pools and lazily built state.
    setup_once(&relay, &device).await?;
    ping.ping(h2::Ping::opaque()).await?;
    tokio::time::sleep(SETTLE).await;

    let mut phases = BTreeMap::new();
    counter.zero()?;
    setup_once(&relay, &device).await?;
    tokio::time::sleep(SETTLE).await;
    phases.insert("stream_setup".to_owned(), counter.dump(1)?);

    target::upload(&mut bulk, BULK_BYTES, Instant::now() + limit).await?;
    tokio::time::sleep(SETTLE).await;
    phases.insert("relay_64mib".to_owned(), counter.dump(2)?);

    for _ in 0..KEEPALIVE_ROUNDS {
        tokio::time::timeout(Duration::from_secs(30), ping.ping(h2::Ping::opaque()))
            .await
            .context("keepalive round: no PONG within 30 s")??;
    }
    tokio::time::sleep(SETTLE).await;
    phases.insert("keepalive_1000".to_owned(), counter.dump(3)?);
    device_task.abort();
    drop(bulk);
    drop(relay);

    for (phase, ir) in &phases {
        eprintln!("icount: {phase:<16} {ir:>14} instructions");
    }
    if let Some(out) = &args.out {
        std::fs::write(out, serde_json::to_string_pretty(&phases)? + "\n")?;
    }
    if !args.callgrind {
        eprintln!("icount: native run (no --callgrind): workload OK, nothing counted");
        return Ok(());
    }
    let Some(path) = &args.baseline else {
        return Ok(());
    };
    if args.update {
        let note = match std::fs::read_to_string(path) {
            Ok(text) => serde_json::from_str::<Baseline>(&text)
                .map(|b| (b.threshold_pct, b.note))
                .ok(),
            Err(_) => None,
        };
        let (threshold_pct, note) = note.unwrap_or((2.0, String::new()));
        let baseline = Baseline {
            threshold_pct,
            note,
            phases,
        };
        std::fs::write(path, serde_json::to_string_pretty(&baseline)? + "\n")?;
        eprintln!("icount: wrote {}", path.display());
        return Ok(());
    }
    compare(path, &phases)
}

/// Compares `phases` with the baseline at `path`; fails on a regression over the threshold.
fn compare(path: &Path, phases: &BTreeMap<String, u64>) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
    let baseline: Baseline =
        serde_json::from_str(&text).with_context(|| format!("parse {}", path.display()))?;
    let mut regressions = Vec::new();
    eprintln!(
        "icount: {:<16} {:>14} {:>14} {:>8}",
        "phase", "baseline", "now", "change"
    );
    for (phase, now) in phases {
        let Some(base) = baseline.phases.get(phase) else {
            bail!("phase {phase} is not in {}; update the baseline", path.display());
        };
        let change = (*now as f64 / *base as f64 - 1.0) * 100.0;
        eprintln!("icount: {phase:<16} {base:>14} {now:>14} {change:>+7.2}%");
        if change > baseline.threshold_pct {
            regressions.push(format!("{phase} {change:+.2}%"));
        } else if change < -baseline.threshold_pct {
            eprintln!(
                "icount: {phase} improved by more than {}%: consider updating the baseline \
                 (scripts/icount.sh --update)",
                baseline.threshold_pct
            );
        }
    }
    if !regressions.is_empty() {
        bail!(
            "instruction counts grew beyond {}% of the baseline: {} (if intended, update it: \
             scripts/icount.sh --update, and say why in the commit)",
            baseline.threshold_pct,
            regressions.join(", ")
        );
    }
    eprintln!("icount: within {}% of the baseline", baseline.threshold_pct);
    Ok(())
}

/// Opens a stream with a fresh token (so the relay verifies its signature).
async fn open(relay: &RelayProcess, device: &DeviceKey) -> anyhow::Result<crate::systems::BoxIo> {
    let target = relay.service_target(device, PORT)?;
    crate::systems::Dialer::Tether(Box::new(target)).dial().await
}

/// One stream setup until the first echoed byte, then close.
async fn setup_once(relay: &RelayProcess, device: &DeviceKey) -> anyhow::Result<()> {
    let mut s = open(relay, device).await?;
    s.write_all(&[target::ECHO, b'x']).await?;
    s.flush().await?;
    let mut b = [0u8; 1];
    s.read_exact(&mut b).await?;
    s.shutdown().await?;
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut rest)).await;
    Ok(())
}

/// Talks to callgrind in the relay process.
struct Counter {
    pid: u32,
    enabled: bool,
    dir: PathBuf,
}

impl Counter {
    /// Zeroes the counters.
    fn zero(&self) -> anyhow::Result<()> {
        if self.enabled {
            output("callgrind_control", ["--zero".to_owned(), self.pid.to_string()])?;
        }
        Ok(())
    }

    /// Dumps the counters (the `n`th dump since start) and returns the instructions since the
    /// last zero or dump.
    fn dump(&self, n: u32) -> anyhow::Result<u64> {
        if !self.enabled {
            return Ok(0);
        }
        output("callgrind_control", ["--dump".to_owned(), self.pid.to_string()])?;
        let file = self.dir.join(format!("callgrind.out.{n}"));
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(text) = std::fs::read_to_string(&file)
                && let Some(ir) = text.lines().find_map(|l| {
                    l.strip_prefix("summary:")
                        .or_else(|| l.strip_prefix("totals:"))
                        .and_then(|v| v.split_whitespace().next()?.parse().ok())
                })
            {
                return Ok(ir);
            }
            if Instant::now() > deadline {
                bail!("no complete callgrind dump {} within 30 s", file.display());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}
