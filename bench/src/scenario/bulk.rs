//! Scenario 1: one stream, a bulk transfer each way; throughput, its ratio to direct TLS, and the
//! CPU time the relay-role process (and all of the system's processes) spent per GiB.

use std::time::{Duration, Instant};

use super::{CpuMark, gib};
use crate::{
    Profile, Results,
    stats::mib_per_sec,
    systems::{System, Systems, dial_within},
    target,
};

/// Scenario name.
pub const NAME: &str = "1-bulk";
/// The scenario's name in the WAN profile.
pub const WAN_NAME: &str = "1-bulk-wan";

/// Runs the scenario for every system, moving `bytes` each way, recording under `name`.
///
/// # Errors
/// Never for a failing system (that becomes a note); only for harness bugs.
pub async fn run(
    name: &str,
    p: &Profile,
    bytes: u64,
    systems: &Systems,
    results: &mut Results,
) -> anyhow::Result<()> {
    for entry in systems.entries() {
        let system = entry.system;
        for dir in ["upload", "download"] {
            let metric = format!("{dir}_throughput");
            let outcome = async {
                let mut s = dial_within(&entry.dialer, Duration::from_secs(10)).await?;
                let mark = CpuMark::now(entry);
                let deadline = Instant::now() + p.phase_timeout;
                let took = if dir == "upload" {
                    target::upload(&mut s, bytes, deadline).await
                } else {
                    target::download(&mut s, bytes, deadline).await
                }?;
                Ok::<_, anyhow::Error>((took, mark))
            }
            .await;
            match outcome {
                Ok((d, mark)) => {
                    results.add(name, system, &metric, mib_per_sec(bytes, d), "MiB/s");
                    let prefix = format!("{dir}_");
                    mark.record_since(entry, results, name, &prefix, "per_gib", gib(bytes), 1.0, "s/GiB");
                }
                Err(e) => results.note(&format!("{name}: {} {metric} failed: {e:#}", system.label())),
            }
        }
    }
    results.ratios(name, "upload_throughput", System::Tls);
    results.ratios(name, "download_throughput", System::Tls);
    Ok(())
}
