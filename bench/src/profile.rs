//! Sizes and time bounds of a run: the full run the issue asks for, or a seconds-long smoke run.

use std::time::Duration;

use serde::Serialize;

use crate::{scenario::fairness::Sizes, wan::WanConfig};

/// How much work each scenario does, and how long any one measurement may take.
#[derive(Debug, Clone, Serialize)]
pub struct Profile {
    /// `full` or `smoke`.
    pub name: &'static str,
    /// Scenario 1: bytes per direction.
    pub bulk_bytes: u64,
    /// Scenario 2: parallel streams.
    pub parallel_streams: usize,
    /// Scenario 2: bytes per stream.
    pub parallel_bytes_each: u64,
    /// Scenarios 3 and 7: round trips before measuring.
    pub ping_warmup: usize,
    /// Scenario 3: measured round trips.
    pub ping_samples: usize,
    /// Scenario 7: measured round trips, unloaded and loaded.
    pub fairness_samples: usize,
    /// Scenarios 3 and 7: the samples are taken in this many rounds, the systems interleaved
    /// within each round, so a disturbance from outside (another process) hits every system.
    pub rounds: usize,
    /// Scenario 4: sequential setups (time to first byte).
    pub setup_sequential: usize,
    /// Scenario 4: setups for the rate measurement.
    pub setup_total: usize,
    /// Scenario 4: concurrent workers for the rate measurement.
    pub setup_concurrency: usize,
    /// Scenario 5: idle device connections.
    pub idle_devices: usize,
    /// Scenarios 5 and 6: wait after connecting before reading memory, so allocations settle.
    #[serde(serialize_with = "secs")]
    pub settle: Duration,
    /// Scenarios 5 and 6: how long to watch the relay's CPU.
    #[serde(serialize_with = "secs")]
    pub cpu_window: Duration,
    /// Scenario 6: devices.
    pub active_devices: usize,
    /// Scenario 6: active streams (spread evenly over the devices).
    pub active_streams: usize,
    /// Scenario 6: each stream sends 64 bytes this often.
    #[serde(serialize_with = "secs")]
    pub active_interval: Duration,
    /// Upper bound on any single measurement (one transfer, one sample loop, one setup phase).
    #[serde(serialize_with = "secs")]
    pub phase_timeout: Duration,
    /// WAN profile, scenario 1: bytes per direction.
    pub wan_bulk_bytes: u64,
    /// WAN profile, scenario 2: bytes per stream.
    pub wan_parallel_bytes_each: u64,
    /// WAN profile, scenario 7.
    pub wan_fairness: Sizes,
    /// WAN profile: the link.
    pub wan: WanConfig,
}

impl Profile {
    /// The figures the issue asks for (about 10 minutes on a 2-core machine).
    pub fn full() -> Self {
        Self {
            name: "full",
            bulk_bytes: 1 << 30,
            parallel_streams: 10,
            parallel_bytes_each: (1 << 30) / 10,
            ping_warmup: 1_000,
            ping_samples: 10_000,
            fairness_samples: 10_000,
            rounds: 5,
            setup_sequential: 2_000,
            setup_total: 5_000,
            setup_concurrency: 8,
            idle_devices: 10_000,
            settle: Duration::from_secs(2),
            cpu_window: Duration::from_secs(20),
            active_devices: 100,
            active_streams: 1_000,
            active_interval: Duration::from_millis(100),
            phase_timeout: Duration::from_secs(120),
            // ~5 s per direction at the 100 Mbit/s cap: long enough to leave slow start well behind.
            wan_bulk_bytes: 64 << 20,
            wan_parallel_bytes_each: 8 << 20,
            // Each round trip takes the 50 ms RTT at least, and loaded ones wait behind the
            // saturating stream's queue at the wire (up to ~0.5 s for frp in the last run): 200
            // samples are 10-100 s per system, and a warm-up of 1,000 (loopback's) would be 50 s.
            wan_fairness: Sizes {
                samples: 200,
                warmup: 20,
                bound: Duration::from_secs(300),
            },
            wan: WanConfig {
                delay_ms: 25.0,
                rate_mbit: 100.0,
            },
        }
    }

    /// Tiny sizes: the whole run takes seconds.
    pub fn smoke() -> Self {
        Self {
            name: "smoke",
            bulk_bytes: 4 << 20,
            parallel_streams: 10,
            parallel_bytes_each: 512 << 10,
            ping_warmup: 20,
            ping_samples: 200,
            fairness_samples: 200,
            rounds: 2,
            setup_sequential: 30,
            setup_total: 60,
            setup_concurrency: 4,
            idle_devices: 50,
            settle: Duration::from_millis(300),
            cpu_window: Duration::from_millis(500),
            active_devices: 4,
            active_streams: 20,
            active_interval: Duration::from_millis(50),
            phase_timeout: Duration::from_secs(30),
            wan_bulk_bytes: 1 << 20,
            wan_parallel_bytes_each: 256 << 10,
            wan_fairness: Sizes {
                samples: 8,
                warmup: 2,
                bound: Duration::from_secs(30),
            },
            wan: WanConfig {
                delay_ms: 25.0,
                rate_mbit: 100.0,
            },
        }
    }
}

/// Serializes a duration as seconds.
pub(crate) fn secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}
