//! Scenario 3: 64-byte ping-pong on one stream per system after a warm-up; p50/p99/p99.9 round
//! trip and the latency added over direct TLS. Samples are taken in rounds with the systems
//! interleaved, so outside disturbances spread over all of them.

use std::time::{Duration, Instant};

use crate::{
    Profile, Results,
    stats::Latencies,
    systems::{BoxIo, System, Systems, dial_within},
    target,
};

/// Scenario name.
pub const NAME: &str = "3-ping-pong";

const PERCENTILES: [(&str, f64); 3] = [("p50", 50.0), ("p99", 99.0), ("p99_9", 99.9)];

/// Runs the scenario for every system.
///
/// # Errors
/// Never for a failing system (that becomes a note).
pub async fn run(p: &Profile, systems: &Systems, results: &mut Results) -> anyhow::Result<()> {
    let deadline = Instant::now() + p.phase_timeout;
    let mut open: Vec<(System, BoxIo, Vec<Duration>)> = Vec::new();
    for entry in systems.entries() {
        let (system, dialer) = (&entry.system, &entry.dialer);
        let opened = async {
            let mut s = dial_within(dialer, Duration::from_secs(10)).await?;
            target::warm_up(&mut s, p.ping_warmup, deadline).await?;
            Ok::<_, anyhow::Error>(s)
        }
        .await;
        match opened {
            Ok(s) => open.push((*system, s, Vec::with_capacity(p.ping_samples))),
            Err(e) => results.note(&format!("{NAME}: {} failed: {e:#}", system.label())),
        }
    }
    let per_round = p.ping_samples.div_ceil(p.rounds.max(1));
    for _ in 0..p.rounds.max(1) {
        let mut failed = Vec::new();
        for (i, (system, s, samples)) in open.iter_mut().enumerate() {
            let want = per_round.min(p.ping_samples - samples.len());
            if let Err(e) = target::sample(s, want, deadline, samples).await {
                results.note(&format!("{NAME}: {} failed: {e:#}", system.label()));
                failed.push(i);
            }
        }
        for i in failed.into_iter().rev() {
            open.remove(i);
        }
    }
    for (system, _, samples) in open {
        if samples.is_empty() {
            results.note(&format!("{NAME}: {} produced no sample in time", system.label()));
            continue;
        }
        let l = Latencies::new(samples);
        results.add(NAME, system, "samples", l.len() as f64, "count");
        for (name, pct) in PERCENTILES {
            results.add(NAME, system, name, l.percentile_us(pct), "us");
        }
    }
    let base = System::Tls.label();
    for system in systems.entries().iter().map(|e| &e.system) {
        if *system == System::Tls {
            continue;
        }
        for (name, _) in PERCENTILES {
            if let (Some(v), Some(b)) = (
                results.get(NAME, system.label(), name),
                results.get(NAME, base, name),
            ) {
                results.add(NAME, *system, &format!("added_{name}"), v - b, "us");
            }
        }
    }
    Ok(())
}
