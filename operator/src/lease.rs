//! Leader election with a `coordination.k8s.io/v1` Lease (kube-runtime 5 has none built in).
//!
//! The timing is client-go's ([`LeaseTiming`]): the holder renews `renewTime` every retry period;
//! another replica takes over only after `renewTime + leaseDurationSeconds` has passed; the
//! holder itself stops leading once a *renew deadline*, shorter than the lease duration, has
//! passed since its last successful renewal (`crate::run`). Between the two lies the margin in
//! which no replica leads. Every write is a `replace` carrying the `resourceVersion` that was read,
//! so two replicas racing for an expired Lease cannot both win (the loser gets 409 Conflict). On
//! shutdown the holder releases the Lease (clears `holderIdentity`) so a successor starts at once
//! instead of waiting out the duration.
//!
//! # Caveats
//! Correctness relies on clocks agreeing, and on neither replica's clock being paused (a frozen
//! process, say SIGSTOP), within the margin `leaseDuration − renewDeadline`, as with client-go's
//! leader election.

use std::time::Duration;

use k8s_openapi::{
    api::coordination::v1::{Lease, LeaseSpec},
    apimachinery::pkg::apis::meta::v1::MicroTime,
    jiff::{SignedDuration, Timestamp},
};
use kube::{
    Api, Client,
    api::{ObjectMeta, PostParams},
};

/// Leader-election timing: `retry_period < renew_deadline < duration`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseTiming {
    /// How long the Lease is valid after a renewal (`leaseDurationSeconds`).
    pub duration: Duration,
    /// How long the holder may go without a successful renewal before it stops leading.
    pub renew_deadline: Duration,
    /// Time between attempts, and the longest any one attempt may take.
    pub retry_period: Duration,
}

impl LeaseTiming {
    /// Checks the order of the three and that `duration` is whole seconds (at least one).
    ///
    /// # Errors
    /// A message naming what is wrong.
    pub fn new(duration: Duration, renew_deadline: Duration, retry_period: Duration) -> Result<Self, String> {
        if duration.subsec_nanos() != 0 || duration.is_zero() {
            return Err(format!(
                "--lease-duration {duration:?} must be a whole number of seconds (the Lease stores seconds)"
            ));
        }
        if !(retry_period > Duration::ZERO && retry_period < renew_deadline && renew_deadline < duration) {
            return Err(format!(
                "leader election needs 0 < --retry-period ({retry_period:?}) < --renew-deadline \
                 ({renew_deadline:?}) < --lease-duration ({duration:?}): the leader must stop before a \
                 standby may take over"
            ));
        }
        Ok(Self {
            duration,
            renew_deadline,
            retry_period,
        })
    }
}

/// Why a Lease call failed.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    /// The API server refused the call.
    #[error("Lease API call failed: {0}")]
    Api(#[from] kube::Error),
    /// The call did not finish within its time budget (a hung connection).
    #[error("Lease API call timed out after {0:?}")]
    Timeout(Duration),
}

/// One replica's handle on the Lease.
#[derive(Clone)]
pub struct LeaseLock {
    api: Api<Lease>,
    name: String,
    identity: String,
    duration: Duration,
}

fn conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

impl LeaseLock {
    /// A lock on Lease `namespace/name` for this replica, `identity` (its pod name).
    pub fn new(client: Client, namespace: &str, name: &str, identity: &str, duration: Duration) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            name: name.into(),
            identity: identity.into(),
            duration,
        }
    }

    /// [`Self::try_acquire_or_renew`] bounded by `timeout`: a hung connection must not keep a
    /// leader waiting past its renew deadline.
    ///
    /// # Errors
    /// [`LeaseError::Timeout`], or API errors other than a lost race (409).
    pub async fn try_acquire_or_renew_within(&self, timeout: Duration) -> Result<bool, LeaseError> {
        tokio::time::timeout(timeout, self.try_acquire_or_renew())
            .await
            .map_err(|_| LeaseError::Timeout(timeout))?
            .map_err(LeaseError::Api)
    }

    /// [`Self::release`] bounded by `timeout`.
    ///
    /// # Errors
    /// [`LeaseError::Timeout`], or API errors.
    pub async fn release_within(&self, timeout: Duration) -> Result<(), LeaseError> {
        tokio::time::timeout(timeout, self.release())
            .await
            .map_err(|_| LeaseError::Timeout(timeout))?
            .map_err(LeaseError::Api)
    }

    /// Acquires the Lease if it is free or expired, or renews it if held by us.
    /// Returns whether we hold it afterwards. Unbounded: see
    /// [`Self::try_acquire_or_renew_within`].
    ///
    /// # Errors
    /// API errors other than a lost race (409).
    pub async fn try_acquire_or_renew(&self) -> Result<bool, kube::Error> {
        let now = Timestamp::now();
        let secs = i32::try_from(self.duration.as_secs()).unwrap_or(i32::MAX);
        let Some(lease) = self.api.get_opt(&self.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.identity.clone()),
                    lease_duration_seconds: Some(secs),
                    acquire_time: Some(MicroTime(now)),
                    renew_time: Some(MicroTime(now)),
                    lease_transitions: Some(0),
                    ..LeaseSpec::default()
                }),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(e) if conflict(&e) => Ok(false),
                Err(e) => Err(e),
            };
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.as_deref().filter(|h| !h.is_empty());
        let mine = holder == Some(self.identity.as_str());
        let expired = holder.is_none()
            || spec.renew_time.as_ref().is_none_or(|t| {
                let held = SignedDuration::from_secs(i64::from(spec.lease_duration_seconds.unwrap_or(secs)));
                t.0.checked_add(held).is_ok_and(|until| until < now)
            });
        if !mine && !expired {
            return Ok(false);
        }
        let mut next = lease;
        let mut spec = spec;
        if !mine {
            spec.acquire_time = Some(MicroTime(now));
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        }
        spec.holder_identity = Some(self.identity.clone());
        spec.lease_duration_seconds = Some(secs);
        spec.renew_time = Some(MicroTime(now));
        next.spec = Some(spec);
        match self.api.replace(&self.name, &PostParams::default(), &next).await {
            Ok(_) => Ok(true),
            Err(e) if conflict(&e) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Gives the Lease up if we hold it.
    ///
    /// # Errors
    /// API errors.
    pub async fn release(&self) -> Result<(), kube::Error> {
        let Some(mut lease) = self.api.get_opt(&self.name).await? else {
            return Ok(());
        };
        let Some(spec) = lease.spec.as_mut() else {
            return Ok(());
        };
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.renew_time = None;
        match self.api.replace(&self.name, &PostParams::default(), &lease).await {
            Ok(_) => Ok(()),
            Err(e) if conflict(&e) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timing_must_let_the_leader_stop_first() {
        let s = Duration::from_secs;
        assert!(LeaseTiming::new(s(15), s(10), s(2)).is_ok());
        assert!(LeaseTiming::new(s(3), s(2), Duration::from_millis(500)).is_ok());
        for (d, r, p) in [
            (s(15), s(15), s(2)),
            (s(10), s(15), s(2)),
            (s(15), s(2), s(2)),
            (s(15), s(10), s(0)),
        ] {
            let e = LeaseTiming::new(d, r, p).unwrap_err();
            assert!(e.contains("--renew-deadline"), "{e}");
        }
        assert!(LeaseTiming::new(Duration::from_millis(2500), s(1), Duration::from_millis(100)).is_err());
        assert!(LeaseTiming::new(Duration::ZERO, Duration::ZERO, Duration::ZERO).is_err());
    }
}
