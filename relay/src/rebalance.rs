//! Keeps each device on its owner: when the ring changes, sessions of devices another member owns
//! now are sent GOAWAY (their streams finish; the agent reconnects at once and lands on the new
//! owner). A periodic sweep catches sessions accepted while two rings disagreed.

use std::{sync::Arc, time::Duration};

use tokio_util::sync::CancellationToken;

use crate::{Shared, fleet::Fleet};

/// How often misplaced sessions are looked for between ring changes.
const SWEEP_INTERVAL: Duration = Duration::from_secs(5);
/// A session younger than this is left alone by the sweep (not by a ring change): it was accepted
/// by a relay whose ring may be a moment ahead of the forwarder's, and moving it at once would
/// only bounce it.
const SWEEP_MIN_AGE: Duration = Duration::from_secs(2);

/// Runs until `stop` fires.
pub(crate) async fn run(shared: Arc<Shared>, fleet: Arc<Fleet>, stop: CancellationToken) {
    let mut changes = fleet.subscribe();
    let mut sweep = tokio::time::interval(SWEEP_INTERVAL);
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let m = &shared.metrics;
    loop {
        let min_age = tokio::select! {
            _ = stop.cancelled() => return,
            changed = changes.changed() => {
                if changed.is_err() {
                    return;
                }
                let view = fleet.view();
                m.ring_changes.inc();
                m.ring_members.set(view.members.len() as i64);
                tracing::info!(members = ?view.members.iter().map(|m| m.name.as_str()).collect::<Vec<_>>(), "ring changed");
                Duration::ZERO
            }
            _ = sweep.tick() => SWEEP_MIN_AGE,
        };
        let moved = shared
            .registry
            .take_where(|device, session| session.since.elapsed() >= min_age && !fleet.owns(device));
        if !moved.is_empty() {
            m.devices_moved.inc_by(moved.len() as u64);
            m.connected_devices.set(shared.registry.device_count() as i64);
            tracing::info!(
                devices = moved.len(),
                "sent GOAWAY to devices another relay owns now"
            );
        }
        // Dropping the sessions drops their request handles: h2 sends GOAWAY once each
        // connection's streams are done.
        drop(moved);
    }
}
