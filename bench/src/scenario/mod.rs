//! The seven scenarios of issue 5, one module each (1, 2 and 7 also in the WAN profile), and
//! helpers they share.

use std::{future::Future, time::Instant};

use anyhow::bail;
use tokio::task::JoinSet;

use crate::{Results, proc_stats::cpu_seconds, systems::Entry};

pub mod active;
pub mod bulk;
pub mod fairness;
pub mod idle;
pub mod parallel;
pub mod ping_pong;
pub mod setup;

/// Scenario names, in order (scenario `n` is `NAMES[n - 1]`).
pub const NAMES: [&str; 7] = [
    bulk::NAME,
    parallel::NAME,
    ping_pong::NAME,
    setup::NAME,
    idle::NAME,
    active::NAME,
    fairness::NAME,
];

/// The WAN profile's scenarios (1, 2 and 7 across the impaired link), in report order.
pub const WAN_NAMES: [&str; 3] = [bulk::WAN_NAME, parallel::WAN_NAME, fairness::WAN_NAME];

/// CPU time (seconds) used so far by a system's relay-role process and by all its processes;
/// `None` where the system has no process of its own (or one is gone).
#[derive(Clone, Copy, Debug)]
pub struct CpuMark {
    relay: Option<f64>,
    all: Option<f64>,
}

impl CpuMark {
    /// Reads `/proc/<pid>/stat` of the entry's processes now.
    pub fn now(entry: &Entry) -> Self {
        let relay = entry.server_pid.and_then(|pid| cpu_seconds(pid).ok());
        let all = if entry.pids.is_empty() {
            None
        } else {
            entry
                .pids
                .iter()
                .map(|pid| cpu_seconds(*pid).ok())
                .sum::<Option<f64>>()
        };
        Self { relay, all }
    }

    /// Records the CPU used since `self` divided by `per` as `<prefix>relay_cpu_<suffix>` and
    /// `<prefix>all_cpu_<suffix>` (value scaled by `scale`, in `unit`).
    #[allow(clippy::too_many_arguments)]
    pub fn record_since(
        &self,
        entry: &Entry,
        results: &mut Results,
        scenario: &str,
        prefix: &str,
        suffix: &str,
        per: f64,
        scale: f64,
        unit: &str,
    ) {
        let now = Self::now(entry);
        for (what, before, after) in [("relay", self.relay, now.relay), ("all", self.all, now.all)] {
            if let (Some(b), Some(a)) = (before, after) {
                results.add(
                    scenario,
                    entry.system,
                    &format!("{prefix}{what}_cpu_{suffix}"),
                    (a - b) / per * scale,
                    unit,
                );
            }
        }
    }
}

/// Bytes as GiB.
pub fn gib(bytes: u64) -> f64 {
    bytes as f64 / f64::from(1u32 << 30)
}

/// Runs `make(i)` for `i in 0..count` with at most `concurrency` in flight, stopping at
/// `deadline`; returns the successes and the number of failures (with the first error's text).
///
/// # Errors
/// When nothing succeeded.
pub async fn bounded_all<T, F, Fut>(
    count: usize,
    concurrency: usize,
    deadline: Instant,
    make: F,
) -> anyhow::Result<(Vec<T>, usize, Option<String>)>
where
    T: Send + 'static,
    F: Fn(usize) -> Fut,
    Fut: Future<Output = anyhow::Result<T>> + Send + 'static,
{
    let mut set = JoinSet::new();
    let (mut ok, mut failed, mut first_error) = (Vec::with_capacity(count), 0, None);
    let mut next = 0;
    while next < count || !set.is_empty() {
        while next < count && set.len() < concurrency && Instant::now() < deadline {
            set.spawn(make(next));
            next += 1;
        }
        if Instant::now() >= deadline && next < count {
            failed += count - next;
            first_error.get_or_insert_with(|| "time bound exceeded".to_owned());
            next = count;
        }
        let Some(joined) = set.join_next().await else {
            break;
        };
        match joined {
            Ok(Ok(v)) => ok.push(v),
            Ok(Err(e)) => {
                failed += 1;
                first_error.get_or_insert_with(|| format!("{e:#}"));
            }
            Err(e) => {
                failed += 1;
                first_error.get_or_insert_with(|| e.to_string());
            }
        }
    }
    if ok.is_empty() && count > 0 {
        bail!("all {count} attempts failed: {}", first_error.unwrap_or_default());
    }
    Ok((ok, failed, first_error))
}

/// Bytes as KiB.
pub fn kib(bytes: f64) -> f64 {
    bytes / 1024.0
}
