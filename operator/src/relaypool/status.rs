//! Status step: computes a RelayPool's status (pure; conditions through [`crate::conditions`]) and
//! writes it with [`k8s::patch_status`], as the Device and DeviceStream reconcilers do.

use k8s_openapi::{
    apimachinery::pkg::apis::meta::v1::{Condition, Time},
    jiff::Timestamp,
};
use tether_api::{
    RelayPool, RelayPoolStatus,
    conditions::{reasons, status as cond_status, types},
    relaypool::MemberLoad,
};

use super::{
    Error,
    autoscale::{Decision, member_ordinal},
    observe::Observed,
};
use crate::{
    Context,
    conditions::{Desired, merge},
    k8s,
};

/// The `Ready` condition, keeping its `lastTransitionTime` while its status is unchanged.
fn ready(
    previous: &RelayPoolStatus,
    status: &'static str,
    reason: &'static str,
    message: String,
    generation: Option<i64>,
    now: Timestamp,
) -> Vec<Condition> {
    merge(
        &previous.conditions,
        &[Desired::new(types::READY, status, reason, message)],
        generation,
        now,
    )
}

fn saturate(n: u64) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// Members to report: ordinals `0..replicas`, plus any other member that is ready or carries load
/// (e.g. one still draining after a scale-down), in ordinal order.
pub fn members(pool: &str, replicas: i32, observed: &Observed) -> Vec<MemberLoad> {
    let count = u32::try_from(replicas).unwrap_or(0);
    let mut ordinals: Vec<u32> = (0..count).collect();
    let per_member = observed.load.as_ref().map(|l| &l.per_member);
    let extra = observed
        .ready_members
        .iter()
        .chain(per_member.into_iter().flat_map(|m| m.keys()));
    ordinals.extend(extra.filter_map(|name| member_ordinal(pool, name)));
    ordinals.sort_unstable();
    ordinals.dedup();
    ordinals
        .into_iter()
        .map(|i| {
            let name = format!("{pool}-{i}");
            let load = per_member.and_then(|m| m.get(&name)).copied().unwrap_or_default();
            MemberLoad {
                ready: observed.ready_members.contains(&name),
                devices: saturate(load.devices),
                streams: saturate(load.streams),
                name,
            }
        })
        .collect()
}

/// The status after a successful reconcile.
pub fn compute(
    pool: &str,
    generation: Option<i64>,
    previous: &RelayPoolStatus,
    decision: &Decision,
    observed: &Observed,
    now: Timestamp,
) -> RelayPoolStatus {
    let ready = observed.ready_replicas();
    let wanted = decision.replicas;
    let message = format!("{ready} of {wanted} relays ready");
    let (status, reason) = if ready >= wanted {
        (cond_status::TRUE, reasons::READY)
    } else {
        (cond_status::FALSE, reasons::SCALING)
    };
    let conditions = self::ready(previous, status, reason, message, generation, now);
    let last_scale_time = if previous.replicas == Some(wanted) {
        previous.last_scale_time.clone()
    } else {
        Some(Time(now))
    };
    RelayPoolStatus {
        replicas: Some(wanted),
        ready_replicas: Some(ready),
        members: members(pool, wanted, observed),
        last_scale_time,
        low_load_since: decision.low_load_since.map(Time),
        observed_generation: generation,
        conditions,
    }
}

/// The status of a pool whose spec is invalid: what it had, with `Ready` False (`InvalidSpec`).
pub fn invalid(
    previous: &RelayPoolStatus,
    generation: Option<i64>,
    message: String,
    now: Timestamp,
) -> RelayPoolStatus {
    refused(previous, generation, reasons::INVALID_SPEC, message, now)
}

/// The status of a pool the operator refuses to serve: `Ready=False` with `reason`.
pub fn refused(
    previous: &RelayPoolStatus,
    generation: Option<i64>,
    reason: &'static str,
    message: String,
    now: Timestamp,
) -> RelayPoolStatus {
    RelayPoolStatus {
        observed_generation: generation,
        conditions: ready(previous, cond_status::FALSE, reason, message, generation, now),
        ..previous.clone()
    }
}

/// Writes `desired` onto `pool` when it differs from its current status (server-side apply of
/// the status subresource, [`crate::STATUS_FIELD_MANAGER`]); returns whether it wrote.
///
/// # Errors
/// [`Error::Status`] when the API server refuses the patch.
pub async fn update(ctx: &Context, pool: &RelayPool, desired: &RelayPoolStatus) -> Result<bool, Error> {
    if pool.status.as_ref() == Some(desired) {
        return Ok(false);
    }
    k8s::patch_status(&ctx.client, pool, desired)
        .await
        .map_err(Error::Status)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::relaypool::autoscale::{Load, PoolLoad};
    use k8s_openapi::api::apps::v1::{StatefulSet, StatefulSetStatus};
    use std::collections::{BTreeMap, BTreeSet};

    fn at(s: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s).unwrap()
    }

    fn observed(ready: i32) -> Observed {
        Observed {
            stateful_set: Some(StatefulSet {
                status: Some(StatefulSetStatus {
                    ready_replicas: Some(ready),
                    replicas: 3,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ready_members: BTreeSet::from(["relays-0".to_owned(), "relays-4".to_owned()]),
            load: Some(PoolLoad {
                total: Load {
                    streams: 5,
                    devices: 9,
                },
                per_member: BTreeMap::from([
                    (
                        "relays-0".to_owned(),
                        Load {
                            streams: 2,
                            devices: 4,
                        },
                    ),
                    (
                        "relays-5".to_owned(),
                        Load {
                            streams: 1,
                            devices: 0,
                        },
                    ),
                ]),
            }),
            ..Default::default()
        }
    }

    fn decision(replicas: i32, since: Option<i64>) -> Decision {
        Decision {
            replicas,
            desired: Some(replicas),
            low_load_since: since.map(at),
            recheck_after: None,
        }
    }

    #[test]
    fn scaling_until_ready_then_ready() {
        let s = compute(
            "relays",
            Some(4),
            &RelayPoolStatus::default(),
            &decision(3, None),
            &observed(1),
            at(0),
        );
        assert_eq!(
            (s.replicas, s.ready_replicas, s.observed_generation),
            (Some(3), Some(1), Some(4))
        );
        assert_eq!(
            s.last_scale_time,
            Some(Time(at(0))),
            "first sizing counts as a scale"
        );
        let c = &s.conditions[0];
        assert_eq!(
            (c.type_.as_str(), c.status.as_str(), c.reason.as_str()),
            ("Ready", "False", "Scaling")
        );
        assert_eq!(c.message, "1 of 3 relays ready");
        assert_eq!(c.observed_generation, Some(4));

        let again = compute("relays", Some(4), &s, &decision(3, Some(5)), &observed(1), at(10));
        assert_eq!(
            again.conditions[0].last_transition_time,
            Time(at(0)),
            "unchanged status keeps its time"
        );
        assert_eq!(
            again.last_scale_time,
            Some(Time(at(0))),
            "same size keeps lastScaleTime"
        );
        assert_eq!(again.low_load_since, Some(Time(at(5))));

        let ready = compute(
            "relays",
            Some(4),
            &again,
            &decision(3, None),
            &observed(3),
            at(20),
        );
        let c = &ready.conditions[0];
        assert_eq!((c.status.as_str(), c.reason.as_str()), ("True", "Ready"));
        assert_eq!(c.last_transition_time, Time(at(20)));

        let grown = compute(
            "relays",
            Some(4),
            &ready,
            &decision(4, None),
            &observed(3),
            at(30),
        );
        assert_eq!(grown.last_scale_time, Some(Time(at(30))));
    }

    #[test]
    fn members_cover_replicas_and_loaded_or_ready_extras() {
        let m = members("relays", 3, &observed(1));
        let names: Vec<_> = m.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(
            names,
            ["relays-0", "relays-1", "relays-2", "relays-4", "relays-5"]
        );
        assert_eq!(
            m[0],
            MemberLoad {
                name: "relays-0".into(),
                ready: true,
                devices: 4,
                streams: 2
            }
        );
        assert_eq!(
            m[1],
            MemberLoad {
                name: "relays-1".into(),
                ready: false,
                devices: 0,
                streams: 0
            }
        );
        assert!(m[3].ready);
        assert_eq!(m[4].streams, 1);
    }

    #[test]
    fn invalid_keeps_sizes() {
        let s = compute(
            "relays",
            Some(1),
            &RelayPoolStatus::default(),
            &decision(2, None),
            &observed(2),
            at(0),
        );
        let bad = invalid(&s, Some(2), "nope".into(), at(5));
        assert_eq!((bad.replicas, bad.observed_generation), (Some(2), Some(2)));
        let c = &bad.conditions[0];
        assert_eq!(
            (c.status.as_str(), c.reason.as_str(), c.message.as_str()),
            ("False", "InvalidSpec", "nope")
        );
    }
}
