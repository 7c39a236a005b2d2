//! Percentiles and rates from raw samples.

use std::time::Duration;

/// Latency samples, sorted once for percentile queries.
#[derive(Debug, Clone)]
pub struct Latencies {
    sorted: Vec<Duration>,
}

impl Latencies {
    /// Takes ownership of `samples` and sorts them.
    pub fn new(mut samples: Vec<Duration>) -> Self {
        samples.sort_unstable();
        Self { sorted: samples }
    }

    /// Number of samples.
    pub fn len(&self) -> usize {
        self.sorted.len()
    }

    /// Whether there are no samples.
    pub fn is_empty(&self) -> bool {
        self.sorted.is_empty()
    }

    /// The `p`-th percentile (0–100) by nearest rank, in microseconds; NaN without samples.
    pub fn percentile_us(&self, p: f64) -> f64 {
        if self.sorted.is_empty() {
            return f64::NAN;
        }
        let rank = ((p / 100.0) * self.sorted.len() as f64).ceil() as usize;
        let idx = rank.clamp(1, self.sorted.len()) - 1;
        self.sorted[idx].as_secs_f64() * 1e6
    }
}

/// Bytes per second as MiB/s.
pub fn mib_per_sec(bytes: u64, elapsed: Duration) -> f64 {
    bytes as f64 / (1024.0 * 1024.0) / elapsed.as_secs_f64().max(1e-9)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let l = Latencies::new((1..=100).rev().map(Duration::from_micros).collect());
        assert_eq!(l.percentile_us(50.0), 50.0);
        assert_eq!(l.percentile_us(99.0), 99.0);
        assert_eq!(l.percentile_us(99.9), 100.0);
        assert_eq!(l.percentile_us(0.0), 1.0);
        assert!(Latencies::new(vec![]).percentile_us(50.0).is_nan());
    }
}
