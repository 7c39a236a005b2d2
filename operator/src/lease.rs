//! Leader election with a `coordination.k8s.io/v1` Lease (kube-runtime 5 has none built in).
//!
//! The holder renews `renewTime` every third of the lease duration; another replica takes over
//! only after `renewTime + leaseDurationSeconds` has passed. Every write is a `replace` carrying
//! the `resourceVersion` that was read, so two replicas racing for an expired Lease cannot both
//! win (the loser gets 409 Conflict). On shutdown the holder releases the Lease (clears
//! `holderIdentity`) so a successor starts at once instead of waiting out the duration.
//!
//! # Caveats
//! Correctness relies on clocks agreeing within a fraction of the lease duration, as with
//! client-go's leader election.

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

    /// How often the holder renews, and others retry: a third of the duration, so two renewals
    /// may fail before the Lease lapses.
    pub fn retry_period(&self) -> Duration {
        self.duration / 3
    }

    /// Acquires the Lease if it is free or expired, or renews it if held by us.
    /// Returns whether we hold it afterwards.
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
