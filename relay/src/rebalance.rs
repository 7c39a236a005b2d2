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
        // Misplaced sessions, and sessions forwarded by a relay that left the ring: it is
        // draining and its forwarded connections end when it exits.
        let moved = shared.registry.take_where(|device, session| {
            let forwarder_left = session.via.is_some_and(|ip| !fleet.is_member_address(ip));
            session.since.elapsed() >= min_age && (!fleet.owns(device) || forwarder_left)
        });
        if !moved.is_empty() {
            m.devices_moved.inc_by(moved.len() as u64);
            m.connected_devices.set(shared.registry.device_count() as i64);
            tracing::info!(
                devices = moved.len(),
                "sent GOAWAY to devices another relay owns now"
            );
        }
        tell_to_reconnect(moved);
    }
}

/// How long an agent has to acknowledge the reconnect request.
const RECONNECT_ACK_TIMEOUT: Duration = Duration::from_secs(2);

/// Asks each session's agent to reconnect now (a `tether-control: reconnect` request, protocol
/// §2.3), then drops the session's request handle: h2 sends GOAWAY once the connection's in-flight
/// streams end, and they run to their end meanwhile. Without the request the agent would only
/// reconnect after its last stream ended, and a long SSH session would pin the device to a relay
/// that no longer owns it.
pub(crate) fn tell_to_reconnect(sessions: Vec<Arc<crate::registry::DeviceSession>>) {
    for session in sessions {
        let send_request = session.send_request.clone();
        drop(session);
        tokio::spawn(async move {
            let request = http::Request::post("/")
                .header(tether_proto::HEADER_CONTROL, tether_proto::CONTROL_RECONNECT)
                .body(());
            let Ok(request) = request else { return };
            let _ = tokio::time::timeout(RECONNECT_ACK_TIMEOUT, async move {
                let mut ready = send_request.ready().await.ok()?;
                let (response, _) = ready.send_request(request, true).ok()?;
                response.await.ok()
            })
            .await;
        });
    }
}
