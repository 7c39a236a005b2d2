//! Scenario 4: stream setup on an established device connection. Each setup is a new connection
//! through the system (for Tether: TCP + TLS to the relay, CONNECT with a token, a new HTTP/2
//! stream on the agent's existing device connection, the agent's dial to the target) until the
//! first echoed byte. Sequential setups give time to first byte; concurrent ones the rate, and the
//! CPU time per setup of the relay-role process and of all the system's processes.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::CpuMark;
use crate::{
    Profile, Results,
    stats::Latencies,
    systems::{Dialer, System, Systems},
    target,
};

/// Scenario name.
pub const NAME: &str = "4-stream-setup";

/// One setup: connect, send the echo mode and one byte, read it back. Returns the time taken.
async fn one(dialer: &Dialer, limit: Duration) -> anyhow::Result<Duration> {
    let started = Instant::now();
    tokio::time::timeout(limit, async {
        let mut s = dialer.dial().await?;
        s.write_all(&[target::ECHO, b'x']).await?;
        s.flush().await?;
        let mut b = [0u8; 1];
        s.read_exact(&mut b).await?;
        Ok::<_, anyhow::Error>(())
    })
    .await??;
    Ok(started.elapsed())
}

/// Runs the scenario for every system.
///
/// # Errors
/// Never for a failing system (that becomes a note).
pub async fn run(p: &Profile, systems: &Systems, results: &mut Results) -> anyhow::Result<()> {
    let limit = Duration::from_secs(10);
    for entry in systems.entries() {
        let (system, dialer) = (&entry.system, &entry.dialer);
        // Time to first byte, one setup at a time.
        let deadline = Instant::now() + p.phase_timeout;
        let (mut samples, mut failed, mut first_error) = (Vec::with_capacity(p.setup_sequential), 0, None);
        for _ in 0..p.setup_sequential {
            if Instant::now() >= deadline {
                break;
            }
            match one(dialer, limit).await {
                Ok(d) => samples.push(d),
                Err(e) => {
                    failed += 1;
                    first_error.get_or_insert(format!("{e:#}"));
                }
            }
        }
        if !samples.is_empty() {
            let l = Latencies::new(samples);
            results.add(NAME, *system, "ttfb_p50", l.percentile_us(50.0), "us");
            results.add(NAME, *system, "ttfb_p99", l.percentile_us(99.0), "us");
        }
        // Rate: concurrent workers until the total or the time bound.
        let done = Arc::new(AtomicUsize::new(0));
        let next = Arc::new(AtomicUsize::new(0));
        let errors = Arc::new(AtomicUsize::new(0));
        let mark = CpuMark::now(entry);
        let started = Instant::now();
        let deadline = started + p.phase_timeout;
        let workers: Vec<_> = (0..p.setup_concurrency)
            .map(|_| {
                let (dialer, done, next, errors, total) = (
                    dialer.clone(),
                    done.clone(),
                    next.clone(),
                    errors.clone(),
                    p.setup_total,
                );
                tokio::spawn(async move {
                    while next.fetch_add(1, Ordering::Relaxed) < total && Instant::now() < deadline {
                        match one(&dialer, limit).await {
                            Ok(_) => done.fetch_add(1, Ordering::Relaxed),
                            Err(_) => errors.fetch_add(1, Ordering::Relaxed),
                        };
                    }
                })
            })
            .collect();
        for w in workers {
            let _ = w.await;
        }
        let elapsed = started.elapsed();
        let ok = done.load(Ordering::Relaxed);
        failed += errors.load(Ordering::Relaxed);
        if ok > 0 {
            results.add(
                NAME,
                *system,
                "setups_per_sec",
                ok as f64 / elapsed.as_secs_f64(),
                "1/s",
            );
            mark.record_since(entry, results, NAME, "", "per_setup", ok as f64, 1e6, "us");
        }
        if failed > 0 {
            results.note(&format!(
                "{NAME}: {} had {failed} failed setups (first: {})",
                system.label(),
                first_error.unwrap_or_else(|| "in the rate phase".into())
            ));
        }
    }
    results.ratios(NAME, "setups_per_sec", System::Tls);
    results.ratios(NAME, "ttfb_p99", System::Tls);
    Ok(())
}
