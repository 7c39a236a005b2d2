//! The seven scenarios of issue 5, one module each, and helpers they share.

use std::{future::Future, time::Instant};

use anyhow::bail;
use tokio::task::JoinSet;

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
