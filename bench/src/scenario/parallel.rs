//! Scenario 2: parallel downloads (for Tether all on one device connection); aggregate
//! throughput, fairness (slowest stream's throughput over the fastest's) and CPU time per GiB of
//! the relay-role process and of all the system's processes.

use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::sync::watch;

use super::{CpuMark, gib};
use crate::{
    Profile, Results,
    stats::mib_per_sec,
    systems::{Entry, System, Systems, dial_within},
    target,
};

/// Scenario name.
pub const NAME: &str = "2-parallel";
/// The scenario's name in the WAN profile.
pub const WAN_NAME: &str = "2-parallel-wan";

/// Runs the scenario for every system, each stream downloading `bytes_each`, recording under
/// `name`.
///
/// # Errors
/// Never for a failing system (that becomes a note).
pub async fn run(
    name: &str,
    p: &Profile,
    bytes_each: u64,
    systems: &Systems,
    results: &mut Results,
) -> anyhow::Result<()> {
    for entry in systems.entries() {
        let system = entry.system;
        match measure(p, bytes_each, entry).await {
            Ok((aggregate, slowest, fastest, mark)) => {
                results.add(name, system, "aggregate_throughput", aggregate, "MiB/s");
                results.add(name, system, "slowest_stream", slowest, "MiB/s");
                results.add(name, system, "fastest_stream", fastest, "MiB/s");
                results.add(
                    name,
                    system,
                    "fairness_slowest_over_fastest",
                    slowest / fastest,
                    "x",
                );
                let total = bytes_each * p.parallel_streams as u64;
                mark.record_since(entry, results, name, "", "per_gib", gib(total), 1.0, "s/GiB");
            }
            Err(e) => results.note(&format!("{name}: {} failed: {e:#}", system.label())),
        }
    }
    results.ratios(name, "aggregate_throughput", System::Tls);
    results.ratios(name, "relay_cpu_per_gib", System::Tls);
    Ok(())
}

/// Returns (aggregate, slowest, fastest) in MiB/s and the CPU mark taken at the start.
async fn measure(p: &Profile, bytes_each: u64, entry: &Entry) -> anyhow::Result<(f64, f64, f64, CpuMark)> {
    let (go, ready) = watch::channel(false);
    let mut tasks = Vec::with_capacity(p.parallel_streams);
    for _ in 0..p.parallel_streams {
        let mut s = dial_within(&entry.dialer, Duration::from_secs(10)).await?;
        let mut ready = ready.clone();
        let (bytes, limit) = (bytes_each, p.phase_timeout);
        tasks.push(tokio::spawn(async move {
            let _ = ready.wait_for(|go| *go).await;
            let deadline = Instant::now() + limit;
            target::download(&mut s, bytes, deadline).await?;
            Ok::<_, anyhow::Error>(Instant::now())
        }));
    }
    let mark = CpuMark::now(entry);
    let start = Instant::now();
    go.send(true).context("streams gone")?;
    let mut per_stream = Vec::with_capacity(tasks.len());
    for t in tasks {
        let done = t.await??;
        per_stream.push(done.duration_since(start));
    }
    let slowest = per_stream.iter().max().copied().unwrap_or_default();
    let fastest = per_stream.iter().min().copied().unwrap_or_default();
    let total = bytes_each * p.parallel_streams as u64;
    Ok((
        mib_per_sec(total, slowest),
        mib_per_sec(bytes_each, slowest),
        mib_per_sec(bytes_each, fastest),
        mark,
    ))
}
