//! Scenario 1: one stream, a bulk transfer each way; throughput and its ratio to direct TLS.

use std::time::{Duration, Instant};

use crate::{
    Profile, Results,
    stats::mib_per_sec,
    systems::{System, Systems, dial_within},
    target,
};

/// Scenario name.
pub const NAME: &str = "1-bulk";

/// Runs the scenario for every system.
///
/// # Errors
/// Never for a failing system (that becomes a note); only for harness bugs.
pub async fn run(p: &Profile, systems: &Systems, results: &mut Results) -> anyhow::Result<()> {
    for (system, dialer) in systems.dialers() {
        for upload in [true, false] {
            let metric = if upload {
                "upload_throughput"
            } else {
                "download_throughput"
            };
            let outcome = async {
                let mut s = dial_within(dialer, Duration::from_secs(10)).await?;
                let deadline = Instant::now() + p.phase_timeout;
                if upload {
                    target::upload(&mut s, p.bulk_bytes, deadline).await
                } else {
                    target::download(&mut s, p.bulk_bytes, deadline).await
                }
            }
            .await;
            match outcome {
                Ok(d) => results.add(NAME, *system, metric, mib_per_sec(p.bulk_bytes, d), "MiB/s"),
                Err(e) => results.note(&format!("{NAME}: {} {metric} failed: {e:#}", system.label())),
            }
        }
    }
    results.ratios(NAME, "upload_throughput", System::Tls);
    results.ratios(NAME, "download_throughput", System::Tls);
    Ok(())
}
