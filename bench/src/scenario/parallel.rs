//! Scenario 2: parallel downloads (for Tether all on one device connection); aggregate
//! throughput and fairness (slowest stream's throughput over the fastest's).

use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::sync::watch;

use crate::{
    Profile, Results,
    stats::mib_per_sec,
    systems::{Dialer, System, Systems, dial_within},
    target,
};

/// Scenario name.
pub const NAME: &str = "2-parallel";

/// Runs the scenario for every system.
///
/// # Errors
/// Never for a failing system (that becomes a note).
pub async fn run(p: &Profile, systems: &Systems, results: &mut Results) -> anyhow::Result<()> {
    for (system, dialer) in systems.dialers() {
        match measure(p, dialer).await {
            Ok((aggregate, slowest, fastest)) => {
                results.add(NAME, *system, "aggregate_throughput", aggregate, "MiB/s");
                results.add(NAME, *system, "slowest_stream", slowest, "MiB/s");
                results.add(NAME, *system, "fastest_stream", fastest, "MiB/s");
                results.add(
                    NAME,
                    *system,
                    "fairness_slowest_over_fastest",
                    slowest / fastest,
                    "x",
                );
            }
            Err(e) => results.note(&format!("{NAME}: {} failed: {e:#}", system.label())),
        }
    }
    results.ratios(NAME, "aggregate_throughput", System::Tls);
    Ok(())
}

/// Returns (aggregate, slowest, fastest) in MiB/s.
async fn measure(p: &Profile, dialer: &Dialer) -> anyhow::Result<(f64, f64, f64)> {
    let (go, ready) = watch::channel(false);
    let mut tasks = Vec::with_capacity(p.parallel_streams);
    for _ in 0..p.parallel_streams {
        let mut s = dial_within(dialer, Duration::from_secs(10)).await?;
        let mut ready = ready.clone();
        let (bytes, limit) = (p.parallel_bytes_each, p.phase_timeout);
        tasks.push(tokio::spawn(async move {
            let _ = ready.wait_for(|go| *go).await;
            let deadline = Instant::now() + limit;
            target::download(&mut s, bytes, deadline).await?;
            Ok::<_, anyhow::Error>(Instant::now())
        }));
    }
    let start = Instant::now();
    go.send(true).context("streams gone")?;
    let mut per_stream = Vec::with_capacity(tasks.len());
    for t in tasks {
        let done = t.await??;
        per_stream.push(done.duration_since(start));
    }
    let slowest = per_stream.iter().max().copied().unwrap_or_default();
    let fastest = per_stream.iter().min().copied().unwrap_or_default();
    let total = p.parallel_bytes_each * p.parallel_streams as u64;
    Ok((
        mib_per_sec(total, slowest),
        mib_per_sec(p.parallel_bytes_each, slowest),
        mib_per_sec(p.parallel_bytes_each, fastest),
    ))
}
