//! Relay fleet autoscaling: pure functions from observed load and a RelayPool's scaling policy to
//! the number of relays to run.
//!
//! # Load signal
//!
//! Relays report what they carry in the status of the objects they serve, so the operator reads
//! load from there (no scraping of relay metrics):
//!
//! * a **device** counts when `Device.status.connected == true`;
//! * a **stream** counts when `DeviceStream.status.phase` is `Ready` or `Active`, or when
//!   `status.connections > 0` whatever the phase. `Ready` streams count although nothing is
//!   connected yet: a minted token is a client about to connect, and counting it lets the fleet
//!   grow *before* the connections arrive. Expired, failed and pending streams do not count.
//!
//! Objects are attributed to a pool through their `status.relay` (a member name `<pool>-<ordinal>`).
//! Objects with no relay yet count towards every pool (over-provisioning beats refusing
//! connections); objects owned by another pool's member are ignored. Load per member comes from the
//! same `status.relay` field.
//!
//! # Policy
//!
//! `desired = clamp(max(⌈streams / targetStreamsPerRelay⌉, ⌈devices / targetDevicesPerRelay⌉),
//! min, max)`.
//! Growing happens at once. Shrinking happens only after load has been below the current size
//! continuously for `scaleDownStabilization` (tracked in `status.lowLoadSince`); the fleet then
//! shrinks to the size the load needs at that moment. A change of `minReplicas`/`maxReplicas`
//! applies at once.

use std::{collections::BTreeMap, time::Duration};

use k8s_openapi::jiff::{SignedDuration, Timestamp};
use tether_api::{Device, DeviceStream, StreamPhase};

/// Load on a pool or on one member.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Load {
    /// Active streams (see the module docs for what counts).
    pub streams: u64,
    /// Connected devices.
    pub devices: u64,
}

/// Load attributed to one pool: the total and the share of each member named in `status.relay`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PoolLoad {
    /// Everything that counts towards the pool, attributed to a member or not.
    pub total: Load,
    /// Load per member name, for members named in some object's `status.relay`.
    pub per_member: BTreeMap<String, Load>,
}

/// Whether `relay` names a member of pool `pool`, i.e. is `<pool>-<ordinal>`.
pub fn is_member_of(pool: &str, relay: &str) -> bool {
    member_ordinal(pool, relay).is_some()
}

/// The StatefulSet ordinal of member `relay` of pool `pool`, if it is one.
pub fn member_ordinal(pool: &str, relay: &str) -> Option<u32> {
    let ordinal = relay.strip_prefix(pool)?.strip_prefix('-')?;
    if ordinal.is_empty() || !ordinal.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    ordinal.parse().ok()
}

/// Whether a Device counts as load: its agent is connected.
pub fn device_counts(device: &Device) -> bool {
    device.status.as_ref().is_some_and(|s| s.connected == Some(true))
}

/// Whether a DeviceStream counts as load: `Ready` or `Active`, or carrying connections.
pub fn stream_counts(stream: &DeviceStream) -> bool {
    stream.status.as_ref().is_some_and(|s| {
        matches!(s.phase, Some(StreamPhase::Ready | StreamPhase::Active)) || s.connections.unwrap_or(0) > 0
    })
}

/// Adds up the load of pool `pool` from every Device and DeviceStream (module docs: attribution).
pub fn pool_load<'a>(
    pool: &str,
    devices: impl IntoIterator<Item = &'a Device>,
    streams: impl IntoIterator<Item = &'a DeviceStream>,
) -> PoolLoad {
    let mut load = PoolLoad::default();
    let mut add = |relay: Option<&str>, bump: fn(&mut Load)| match relay {
        None => bump(&mut load.total),
        Some(r) if is_member_of(pool, r) => {
            bump(&mut load.total);
            bump(load.per_member.entry(r.to_owned()).or_default());
        }
        // Owned by another pool's member.
        Some(_) => {}
    };
    for d in devices.into_iter().filter(|d| device_counts(d)) {
        add(d.status.as_ref().and_then(|s| s.relay.as_deref()), |l| {
            l.devices += 1
        });
    }
    for s in streams.into_iter().filter(|s| stream_counts(s)) {
        add(s.status.as_ref().and_then(|s| s.relay.as_deref()), |l| {
            l.streams += 1
        });
    }
    load
}

/// A RelayPool's scaling policy, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    /// Fewest relays.
    pub min_replicas: i32,
    /// Most relays.
    pub max_replicas: i32,
    /// Streams one relay should carry at most.
    pub target_streams_per_relay: u32,
    /// Devices one relay should hold at most.
    pub target_devices_per_relay: u32,
    /// How long load must stay below the current size before shrinking.
    pub scale_down_stabilization: Duration,
}

impl Policy {
    /// `n` clamped to `[min_replicas, max_replicas]` (never panics, even if min > max).
    pub fn bounded(&self, n: i64) -> i32 {
        let n = n
            .min(i64::from(self.max_replicas))
            .max(i64::from(self.min_replicas));
        i32::try_from(n).unwrap_or(self.max_replicas)
    }

    /// The number of relays `load` needs, within bounds.
    pub fn desired(&self, load: Load) -> i32 {
        let need = |amount: u64, per: u32| amount.div_ceil(u64::from(per.max(1)));
        let n = need(load.streams, self.target_streams_per_relay)
            .max(need(load.devices, self.target_devices_per_relay));
        self.bounded(i64::try_from(n).unwrap_or(i64::MAX))
    }
}

/// What the previous reconcile decided (from the RelayPool's status).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Previous {
    /// Replicas asked for last time; `None` for a new pool.
    pub replicas: Option<i32>,
    /// Since when load has been below `replicas`.
    pub low_load_since: Option<Timestamp>,
}

/// The outcome of [`decide`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    /// Relays to run now.
    pub replicas: i32,
    /// Relays the current load needs (`None` while load is unknown).
    pub desired: Option<i32>,
    /// Start of the current low-load period (goes to `status.lowLoadSince`).
    pub low_load_since: Option<Timestamp>,
    /// When to look again because a stabilization window is running.
    pub recheck_after: Option<Duration>,
}

impl Decision {
    /// The size change this decision makes compared with `previous`, as `(from, to)`.
    pub fn change(&self, previous: &Previous) -> Option<(Option<i32>, i32)> {
        (previous.replicas != Some(self.replicas)).then_some((previous.replicas, self.replicas))
    }
}

/// Decides the fleet size from `load` (`None` when not yet observed: keep the current size).
///
/// # Guarantees
/// The result is within the policy's bounds; it is larger than the previous size only if load or
/// bounds require it, and smaller only after load stayed low for the whole stabilization window,
/// or when `maxReplicas` was lowered.
pub fn decide(policy: &Policy, load: Option<Load>, previous: &Previous, now: Timestamp) -> Decision {
    let desired = load.map(|l| policy.desired(l));
    let Some(current) = previous.replicas else {
        // A new pool: start at what the load needs (or the minimum).
        let replicas = desired.unwrap_or(policy.min_replicas).max(policy.bounded(0));
        return Decision {
            replicas,
            desired,
            low_load_since: None,
            recheck_after: None,
        };
    };
    let current = policy.bounded(i64::from(current));
    let Some(want) = desired else {
        return Decision {
            replicas: current,
            desired,
            low_load_since: previous.low_load_since,
            recheck_after: None,
        };
    };
    if want >= current {
        return Decision {
            replicas: want,
            desired,
            low_load_since: None,
            recheck_after: None,
        };
    }
    // Load is below the current size: shrink once the window has passed. Kubernetes times have
    // whole seconds only, so a new period starts at the next whole second: rounding down would
    // shorten the window by up to a second.
    let since = previous.low_load_since.unwrap_or_else(|| ceil_to_second(now));
    let window = SignedDuration::try_from(policy.scale_down_stabilization).unwrap_or(SignedDuration::MAX);
    let remaining = window.saturating_sub(now.duration_since(since));
    if remaining <= SignedDuration::ZERO {
        return Decision {
            replicas: want,
            desired,
            low_load_since: None,
            recheck_after: None,
        };
    }
    // Look again just after the window ends.
    let recheck = Duration::try_from(remaining).unwrap_or(Duration::ZERO) + Duration::from_millis(100);
    Decision {
        replicas: current,
        desired,
        low_load_since: Some(since),
        recheck_after: Some(recheck),
    }
}

/// `t` rounded up to a whole second.
pub fn ceil_to_second(t: Timestamp) -> Timestamp {
    let s = t.as_second();
    let whole = if t.subsec_nanosecond() > 0 {
        s.saturating_add(1)
    } else {
        s
    };
    Timestamp::from_second(whole).unwrap_or(t)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tether_api::{DeviceSpec, DeviceStatus, DeviceStreamSpec, DeviceStreamStatus};

    fn policy() -> Policy {
        Policy {
            min_replicas: 2,
            max_replicas: 10,
            target_streams_per_relay: 100,
            target_devices_per_relay: 1000,
            scale_down_stabilization: Duration::from_secs(300),
        }
    }

    fn at(s: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s).unwrap()
    }

    fn load(streams: u64, devices: u64) -> Option<Load> {
        Some(Load { streams, devices })
    }

    fn prev(replicas: i32, since: Option<i64>) -> Previous {
        Previous {
            replicas: Some(replicas),
            low_load_since: since.map(at),
        }
    }

    #[test]
    fn desired_is_the_larger_need_within_bounds() {
        let p = policy();
        assert_eq!(p.desired(Load::default()), 2, "min");
        assert_eq!(
            p.desired(Load {
                streams: 301,
                devices: 0
            }),
            4,
            "ceil streams"
        );
        assert_eq!(
            p.desired(Load {
                streams: 300,
                devices: 0
            }),
            3,
            "exact"
        );
        assert_eq!(
            p.desired(Load {
                streams: 10,
                devices: 5001
            }),
            6,
            "devices dominate"
        );
        assert_eq!(
            p.desired(Load {
                streams: 5000,
                devices: 0
            }),
            10,
            "max"
        );
        assert_eq!(
            p.desired(Load {
                streams: u64::MAX,
                devices: u64::MAX
            }),
            10,
            "no overflow"
        );
        let odd = Policy {
            min_replicas: 5,
            max_replicas: 3,
            ..p
        };
        assert_eq!(odd.desired(Load::default()), 5, "min > max does not panic");
    }

    #[test]
    fn new_pool_starts_at_need() {
        let d = decide(&policy(), load(450, 0), &Previous::default(), at(0));
        assert_eq!((d.replicas, d.desired, d.low_load_since), (5, Some(5), None));
        let d = decide(&policy(), None, &Previous::default(), at(0));
        assert_eq!(d.replicas, 2, "unknown load starts at min");
    }

    #[test]
    fn scales_up_at_once_and_clears_low_load() {
        let d = decide(&policy(), load(700, 0), &prev(3, Some(-100)), at(0));
        assert_eq!((d.replicas, d.low_load_since, d.recheck_after), (7, None, None));
        assert_eq!(d.change(&prev(3, None)), Some((Some(3), 7)));
    }

    #[test]
    fn steady_load_changes_nothing() {
        let d = decide(&policy(), load(300, 0), &prev(3, Some(-5)), at(0));
        assert_eq!((d.replicas, d.low_load_since), (3, None));
        assert_eq!(d.change(&prev(3, None)), None);
    }

    #[test]
    fn scale_down_waits_for_the_window() {
        let p = policy();
        // Load drops: the window starts, size stays.
        let d = decide(&p, load(100, 0), &prev(5, None), at(0));
        assert_eq!((d.replicas, d.low_load_since), (5, Some(at(0))));
        assert_eq!(d.recheck_after, Some(Duration::from_millis(300_100)));
        // Still low 299 s later: keep waiting.
        let d = decide(&p, load(100, 0), &prev(5, Some(0)), at(299));
        assert_eq!((d.replicas, d.low_load_since), (5, Some(at(0))));
        assert_eq!(d.recheck_after, Some(Duration::from_millis(1_100)));
        // Window passed: shrink to what the load needs now.
        let d = decide(&p, load(250, 0), &prev(5, Some(0)), at(300));
        assert_eq!((d.replicas, d.low_load_since, d.recheck_after), (3, None, None));
    }

    #[test]
    fn a_load_spike_resets_the_window() {
        let p = policy();
        let d = decide(&p, load(500, 0), &prev(5, Some(0)), at(200));
        assert_eq!((d.replicas, d.low_load_since), (5, None));
        let d = decide(&p, load(100, 0), &prev(5, None), at(250));
        assert_eq!(d.low_load_since, Some(at(250)), "a new window starts");
    }

    #[test]
    fn subsecond_start_rounds_up() {
        let now = at(0).checked_add(SignedDuration::from_millis(300)).unwrap();
        let d = decide(&policy(), load(0, 0), &prev(5, None), now);
        assert_eq!(d.low_load_since, Some(at(1)));
        assert_eq!(d.recheck_after, Some(Duration::from_millis(300_800)));
    }

    #[test]
    fn zero_window_shrinks_at_once() {
        let p = Policy {
            scale_down_stabilization: Duration::ZERO,
            ..policy()
        };
        let d = decide(&p, load(0, 0), &prev(5, None), at(0));
        assert_eq!((d.replicas, d.low_load_since), (2, None));
    }

    #[test]
    fn bounds_apply_at_once() {
        let p = Policy {
            min_replicas: 4,
            max_replicas: 6,
            ..policy()
        };
        let d = decide(&p, load(0, 0), &prev(2, Some(0)), at(1));
        assert_eq!(d.replicas, 4, "raised min");
        let d = decide(&p, load(900, 0), &prev(9, None), at(1));
        assert_eq!(d.replicas, 6, "lowered max");
        let d = decide(&p, None, &prev(9, Some(0)), at(1));
        assert_eq!(
            (d.replicas, d.low_load_since),
            (6, Some(at(0))),
            "unknown load keeps the window"
        );
    }

    fn device(relay: Option<&str>, connected: bool) -> Device {
        let mut d = Device::new(
            "d",
            DeviceSpec {
                allowed_ports: vec![22],
                disabled: false,
                credentials: Default::default(),
            },
        );
        d.status = Some(DeviceStatus {
            connected: Some(connected),
            relay: relay.map(Into::into),
            ..Default::default()
        });
        d
    }

    fn stream(relay: Option<&str>, phase: StreamPhase, connections: Option<u32>) -> DeviceStream {
        let mut s = DeviceStream::new(
            "s",
            DeviceStreamSpec {
                device: "d".into(),
                port: 22,
                ttl: "1h".into(),
                max_connections: 4,
                idle_timeout: None,
            },
        );
        s.status = Some(DeviceStreamStatus {
            phase: Some(phase),
            relay: relay.map(Into::into),
            connections,
            ..Default::default()
        });
        s
    }

    #[test]
    fn membership_by_name() {
        assert_eq!(member_ordinal("relays", "relays-12"), Some(12));
        assert!(!is_member_of("relays", "relays-"));
        assert!(!is_member_of("relays", "relays-a"));
        assert!(!is_member_of("relays", "relays-x-1"));
        assert!(!is_member_of("relays", "other-0"));
        assert!(!is_member_of("relays", "relays0"));
    }

    #[test]
    fn load_counts_connected_devices_and_live_streams() {
        let devices = [
            device(Some("relays-0"), true),
            device(Some("relays-0"), true),
            device(Some("relays-1"), false),
            device(None, true),
            device(Some("other-0"), true),
        ];
        let mut undone = device(None, true);
        undone.status = None;
        let streams = [
            stream(Some("relays-1"), StreamPhase::Active, Some(2)),
            stream(Some("relays-1"), StreamPhase::Ready, None),
            stream(Some("relays-1"), StreamPhase::Expired, Some(1)),
            stream(Some("relays-1"), StreamPhase::Expired, None),
            stream(Some("relays-0"), StreamPhase::Pending, None),
            stream(Some("relays-0"), StreamPhase::Failed, Some(0)),
            stream(Some("other-1"), StreamPhase::Active, None),
        ];
        let load = pool_load("relays", devices.iter().chain([&undone]), &streams);
        assert_eq!(
            load.total,
            Load {
                streams: 3,
                devices: 3
            }
        );
        assert_eq!(
            load.per_member["relays-0"],
            Load {
                streams: 0,
                devices: 2
            }
        );
        assert_eq!(
            load.per_member["relays-1"],
            Load {
                streams: 3,
                devices: 0
            }
        );
        assert_eq!(load.per_member.len(), 2);
    }
}
