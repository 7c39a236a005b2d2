//! Building status conditions: `observedGeneration` on each, `lastTransitionTime` kept while the
//! status is unchanged (STYLE.md §6).

use k8s_openapi::{
    apimachinery::pkg::apis::meta::v1::{Condition, Time},
    jiff::Timestamp,
};

/// A condition to set: type, status, reason and message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Desired {
    /// Condition type (`tether_api::conditions::types`).
    pub type_: &'static str,
    /// `True`, `False` or `Unknown` (`tether_api::conditions::status`).
    pub status: &'static str,
    /// CamelCase reason (`tether_api::conditions::reasons`).
    pub reason: &'static str,
    /// What a person should know or do.
    pub message: String,
}

impl Desired {
    /// A condition of `type_` with `status`, `reason` and `message`.
    pub fn new(
        type_: &'static str,
        status: &'static str,
        reason: &'static str,
        message: impl Into<String>,
    ) -> Self {
        Self {
            type_,
            status,
            reason,
            message: message.into(),
        }
    }
}

/// Turns `desired` into full conditions for `generation`, keeping each existing condition's
/// `lastTransitionTime` when its status did not change.
pub fn merge(
    existing: &[Condition],
    desired: &[Desired],
    generation: Option<i64>,
    now: Timestamp,
) -> Vec<Condition> {
    desired
        .iter()
        .map(|d| {
            let last_transition_time = existing
                .iter()
                .find(|c| c.type_ == d.type_ && c.status == d.status)
                .map_or_else(|| Time(now), |c| c.last_transition_time.clone());
            Condition {
                type_: d.type_.to_owned(),
                status: d.status.to_owned(),
                reason: d.reason.to_owned(),
                message: d.message.clone(),
                observed_generation: generation,
                last_transition_time,
            }
        })
        .collect()
}

/// The condition of `type_`, if present.
pub fn find<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_transition_time_while_status_is_unchanged() {
        let t0 = Timestamp::from_second(1_000).unwrap_or(Timestamp::UNIX_EPOCH);
        let t1 = Timestamp::from_second(2_000).unwrap_or(Timestamp::UNIX_EPOCH);
        let first = merge(&[], &[Desired::new("Ready", "False", "A", "a")], Some(1), t0);
        let same = merge(&first, &[Desired::new("Ready", "False", "B", "b")], Some(2), t1);
        assert_eq!(same[0].last_transition_time, Time(t0));
        assert_eq!(same[0].reason, "B");
        assert_eq!(same[0].observed_generation, Some(2));
        let flipped = merge(&same, &[Desired::new("Ready", "True", "Ready", "")], Some(2), t1);
        assert_eq!(flipped[0].last_transition_time, Time(t1));
    }
}
