//! Scenario 7: interactive fairness. Ping-pong on one stream, alone and then while another
//! stream through the same system (for Tether: the same device connection) downloads as fast as
//! it can; the loaded p99 over the unloaded p99. Samples are taken in rounds with the systems
//! interleaved, like scenario 3.

use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::{
    Profile, Results,
    stats::Latencies,
    systems::{BoxIo, Dialer, System, Systems, dial_within},
    target,
};

/// Scenario name.
pub const NAME: &str = "7-interactive-fairness";
/// The scenario's name in the WAN profile.
pub const WAN_NAME: &str = "7-interactive-fairness-wan";

/// Lets the saturating stream reach full speed before measuring.
const RAMP: Duration = Duration::from_millis(300);

/// One system's interactive connection and what it measured.
struct Probe {
    system: System,
    dialer: Dialer,
    interactive: BoxIo,
    unloaded: Vec<Duration>,
    loaded: Vec<Duration>,
    bulk_bytes: f64,
    bulk_secs: f64,
}

/// How many round trips and how long: loopback and WAN differ by three orders of magnitude.
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct Sizes {
    /// Measured round trips, unloaded and loaded each, per system.
    pub samples: usize,
    /// Unmeasured round trips first.
    pub warmup: usize,
    /// Bound on the whole scenario per system; each block gets an equal share.
    #[serde(serialize_with = "crate::profile::secs")]
    pub bound: Duration,
}

/// Runs the scenario for every system, recording under `name`.
///
/// # Errors
/// Never for a failing system (that becomes a note).
pub async fn run(
    name: &str,
    p: &Profile,
    sizes: Sizes,
    systems: &Systems,
    results: &mut Results,
) -> anyhow::Result<()> {
    let rounds = p.rounds.max(1);
    let per_round = sizes.samples.div_ceil(rounds);
    // Every block (unloaded or loaded, one system, one round) gets an equal share of the bound.
    let block_limit = sizes.bound / rounds as u32;
    let mut probes = Vec::new();
    for entry in systems.entries() {
        let (system, dialer) = (&entry.system, &entry.dialer);
        let opened = async {
            let mut s = dial_within(dialer, Duration::from_secs(10)).await?;
            target::warm_up(&mut s, sizes.warmup, Instant::now() + block_limit).await?;
            Ok::<_, anyhow::Error>(s)
        }
        .await;
        match opened {
            Ok(interactive) => probes.push(Probe {
                system: *system,
                dialer: dialer.clone(),
                interactive,
                unloaded: Vec::new(),
                loaded: Vec::new(),
                bulk_bytes: 0.0,
                bulk_secs: 0.0,
            }),
            Err(e) => results.note(&format!("{name}: {} failed: {e:#}", system.label())),
        }
    }
    for _ in 0..rounds {
        let mut failed = Vec::new();
        for (i, probe) in probes.iter_mut().enumerate() {
            if let Err(e) = round(probe, per_round, block_limit).await {
                results.note(&format!("{name}: {} failed: {e:#}", probe.system.label()));
                failed.push(i);
            }
        }
        for i in failed.into_iter().rev() {
            probes.remove(i);
        }
    }
    for probe in probes {
        let (system, unloaded, loaded) = (
            probe.system,
            Latencies::new(probe.unloaded),
            Latencies::new(probe.loaded),
        );
        if unloaded.is_empty() || loaded.is_empty() {
            results.note(&format!("{name}: {} produced no samples in time", system.label()));
            continue;
        }
        results.add(name, system, "p50_unloaded", unloaded.percentile_us(50.0), "us");
        results.add(name, system, "p99_unloaded", unloaded.percentile_us(99.0), "us");
        results.add(name, system, "p50_loaded", loaded.percentile_us(50.0), "us");
        results.add(name, system, "p99_loaded", loaded.percentile_us(99.0), "us");
        let ratio = loaded.percentile_us(99.0) / unloaded.percentile_us(99.0);
        results.add(name, system, "p99_loaded_vs_unloaded", ratio, "x");
        let bulk = probe.bulk_bytes / (1024.0 * 1024.0) / probe.bulk_secs.max(1e-9);
        results.add(name, system, "saturating_stream_throughput", bulk, "MiB/s");
    }
    // On a small machine the saturating stream also competes for CPU with the interactive one,
    // whatever the system; the loaded p99 against direct TLS's loaded p99 separates that from
    // queueing inside the system.
    results.ratios(name, "p99_loaded", System::Tls);
    Ok(())
}

/// One round for one system: an unloaded block, then a loaded block.
async fn round(probe: &mut Probe, samples: usize, limit: Duration) -> anyhow::Result<()> {
    target::sample(
        &mut probe.interactive,
        samples,
        Instant::now() + limit,
        &mut probe.unloaded,
    )
    .await?;

    let mut bulk = dial_within(&probe.dialer, Duration::from_secs(10)).await?;
    let (stop, stopped) = watch::channel(false);
    let saturating = tokio::spawn(async move {
        let started = Instant::now();
        let got = target::drain_until(&mut bulk, 1 << 50, stopped, started + limit + RAMP * 2).await?;
        Ok::<_, anyhow::Error>((got, started.elapsed()))
    });
    tokio::time::sleep(RAMP).await;
    let measured = target::sample(
        &mut probe.interactive,
        samples,
        Instant::now() + limit,
        &mut probe.loaded,
    )
    .await;
    let _ = stop.send(true);
    let (got, took) = saturating.await??;
    measured?;
    probe.bulk_bytes += got as f64;
    probe.bulk_secs += took.as_secs_f64();
    Ok(())
}
