//! Who is connected: live device sessions, live connections per stream, and revoked streams and
//! devices.
//!
//! A reconnecting device atomically replaces its previous session: the new session is visible to
//! services the moment it is inserted, and the old one is cancelled in the same critical section,
//! which ends its streams (the #1 complaint about comparable systems is stale sessions).
//!
//! Revocation: a revoked device's session is cancelled at once (its connection closes, which
//! ends its streams) and it cannot register a new one until lifted; a revoked stream's live
//! connections are cut and new ones refused until the token's expiry.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use bytes::Bytes;
use tether_proto::name::DeviceKey;
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;

/// One live device connection, as seen by services.
#[derive(Debug)]
pub struct DeviceSession {
    /// Unique per connection, so a late cleanup of a replaced session cannot remove its successor.
    pub id: u64,
    /// Opens streams towards the agent. Dropping every clone lets h2 send GOAWAY once the
    /// connection's streams finish: that is how a session drains.
    pub send_request: h2::client::SendRequest<Bytes>,
    /// Bounds concurrent streams on this device.
    pub streams: Arc<Semaphore>,
    /// Cancelled when the session is replaced or the relay stops: ends the connection at once.
    pub closed: CancellationToken,
    /// The agent's self-reported version.
    pub agent_version: String,
    /// When the session started.
    pub since: std::time::Instant,
    /// The relay that forwards this connection, if it came through one: when that relay leaves
    /// the ring (it is draining), the device is asked to reconnect before the forwarder exits.
    pub via: Option<std::net::IpAddr>,
}

/// Why a connection to a stream was refused by the registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamRefusal {
    /// The stream was revoked (its DeviceStream deleted).
    Revoked,
    /// The stream already has its maximum of concurrent connections.
    TooManyConnections,
}

#[derive(Default)]
struct Inner {
    devices: HashMap<DeviceKey, Arc<DeviceSession>>,
    streams: HashMap<String, StreamEntry>,
    /// Revoked stream UIDs and until when (Unix seconds: the token's expiry) to remember them.
    revoked: HashMap<String, u64>,
    /// Revoked devices (disabled or deleted Devices; entries of a revocation file).
    revoked_devices: HashSet<DeviceKey>,
}

/// A device may not register a session: it is revoked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the device is revoked")]
pub struct DeviceRevoked;

struct StreamEntry {
    connections: u32,
    cancel: CancellationToken,
}

/// The relay's table of sessions and streams.
#[derive(Default)]
pub struct Registry {
    inner: Mutex<Inner>,
    /// Wakes services waiting for a device to connect.
    device_arrived: Notify,
}

impl Registry {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding this lock cannot leave the maps inconsistent (every critical
        // section is a single map operation), so poisoning is safe to ignore.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers `session` for `device`, returning the session it replaced (already cancelled).
    ///
    /// # Errors
    /// [`DeviceRevoked`] when the device is revoked (checked under the same lock as
    /// [`Registry::revoke_device`], so a revocation racing a reconnect cannot be missed).
    pub fn insert(
        &self,
        device: DeviceKey,
        session: Arc<DeviceSession>,
    ) -> Result<Option<Arc<DeviceSession>>, DeviceRevoked> {
        let mut inner = self.lock();
        if inner.revoked_devices.contains(&device) {
            return Err(DeviceRevoked);
        }
        let old = inner.devices.insert(device, session);
        drop(inner);
        if let Some(old) = &old {
            old.closed.cancel();
        }
        self.device_arrived.notify_waiters();
        Ok(old)
    }

    /// Whether `device` is revoked.
    pub fn is_device_revoked(&self, device: &DeviceKey) -> bool {
        self.lock().revoked_devices.contains(device)
    }

    /// Revokes `device`: closes its live session now and refuses new ones until
    /// [`Registry::lift_device`]. Returns whether a session was closed.
    pub fn revoke_device(&self, device: &DeviceKey) -> bool {
        let mut inner = self.lock();
        inner.revoked_devices.insert(device.clone());
        let session = inner.devices.remove(device);
        drop(inner);
        session.map(|s| s.closed.cancel()).is_some()
    }

    /// Lifts `device`'s revocation (e.g. its Device was enabled again).
    pub fn lift_device(&self, device: &DeviceKey) {
        self.lock().revoked_devices.remove(device);
    }

    /// Replaces the whole revoked set: devices and streams (UID → Unix second until which to
    /// refuse it). Newly revoked devices and streams are cut at once; entries absent from the
    /// new set are lifted. Used by whatever owns the complete list (a revocation file, a
    /// watcher's resync).
    pub fn set_revoked(&self, devices: HashSet<DeviceKey>, streams: HashMap<String, u64>, now: u64) {
        let mut inner = self.lock();
        let mut cut = Vec::new();
        for device in &devices {
            if let Some(session) = inner.devices.remove(device) {
                cut.push(session);
            }
        }
        for uid in streams.keys() {
            if let Some(entry) = inner.streams.get(uid) {
                entry.cancel.cancel();
            }
        }
        inner.revoked_devices = devices;
        inner.revoked = streams;
        inner.revoked.retain(|_, until| *until > now);
        drop(inner);
        for session in cut {
            session.closed.cancel();
        }
    }

    /// The revoked devices and streams (for tests and diagnostics).
    pub fn revoked(&self) -> (HashSet<DeviceKey>, HashMap<String, u64>) {
        let inner = self.lock();
        (inner.revoked_devices.clone(), inner.revoked.clone())
    }

    /// Removes `device`'s session if it is still the one with `id`; returns whether it was.
    pub fn remove(&self, device: &DeviceKey, id: u64) -> bool {
        let mut inner = self.lock();
        let current = inner.devices.get(device).is_some_and(|s| s.id == id);
        if current {
            inner.devices.remove(device);
        }
        current
    }

    /// The live session of `device`, if any.
    pub fn get(&self, device: &DeviceKey) -> Option<Arc<DeviceSession>> {
        self.lock().devices.get(device).cloned()
    }

    /// Waits up to `timeout` for `device` to have a session.
    pub async fn wait_for(&self, device: &DeviceKey, timeout: Duration) -> Option<Arc<DeviceSession>> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let arrived = self.device_arrived.notified();
            tokio::pin!(arrived);
            // Register interest before checking, so an insert between check and wait is not missed.
            arrived.as_mut().enable();
            if let Some(s) = self.get(device) {
                return Some(s);
            }
            if tokio::time::timeout_at(deadline, arrived).await.is_err() {
                return None;
            }
        }
    }

    /// Number of devices with a session.
    pub fn device_count(&self) -> usize {
        self.lock().devices.len()
    }

    /// Removes the sessions of devices for which `misplaced` says yes and hands them back: once
    /// the caller drops them, each connection sends GOAWAY after its streams finish (a device that
    /// another relay owns now reconnects and lands there).
    pub fn take_where(
        &self,
        mut misplaced: impl FnMut(&DeviceKey, &DeviceSession) -> bool,
    ) -> Vec<Arc<DeviceSession>> {
        let mut inner = self.lock();
        let keys: Vec<DeviceKey> = inner
            .devices
            .iter()
            .filter(|(k, s)| misplaced(k, s))
            .map(|(k, _)| k.clone())
            .collect();
        keys.iter().filter_map(|k| inner.devices.remove(k)).collect()
    }

    /// Removes every session (drain): their connections finish their streams, then close.
    pub fn drain_all(&self) -> Vec<Arc<DeviceSession>> {
        self.lock().devices.drain().map(|(_, s)| s).collect()
    }

    /// Admits one more connection of stream `uid`, allowing at most `limit` at once.
    ///
    /// # Errors
    /// When the stream is revoked or at its limit.
    pub fn open_connection(
        self: &Arc<Self>,
        uid: &str,
        limit: u32,
    ) -> Result<ConnectionGuard, StreamRefusal> {
        let mut inner = self.lock();
        if inner.revoked.contains_key(uid) {
            return Err(StreamRefusal::Revoked);
        }
        let entry = inner
            .streams
            .entry(uid.to_owned())
            .or_insert_with(|| StreamEntry {
                connections: 0,
                cancel: CancellationToken::new(),
            });
        if entry.connections >= limit {
            return Err(StreamRefusal::TooManyConnections);
        }
        entry.connections += 1;
        Ok(ConnectionGuard {
            registry: self.clone(),
            uid: uid.to_owned(),
            cancel: entry.cancel.clone(),
        })
    }

    /// Revokes stream `uid`: refuses new connections until `until` (Unix seconds) and closes the
    /// live ones now.
    pub fn revoke(&self, uid: &str, until: u64, now: u64) {
        let mut inner = self.lock();
        inner.revoked.retain(|_, until| *until > now);
        inner.revoked.insert(uid.to_owned(), until);
        if let Some(entry) = inner.streams.get(uid) {
            entry.cancel.cancel();
        }
    }
}

/// One admitted connection of a stream; dropping it frees the slot.
pub struct ConnectionGuard {
    registry: Arc<Registry>,
    uid: String,
    cancel: CancellationToken,
}

impl ConnectionGuard {
    /// Fires when the stream is revoked.
    pub fn revoked(&self) -> &CancellationToken {
        &self.cancel
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        let mut inner = self.registry.lock();
        if let Some(entry) = inner.streams.get_mut(&self.uid) {
            entry.connections -= 1;
            if entry.connections == 0 {
                inner.streams.remove(&self.uid);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_connection_limits_and_revocation() {
        let r = Arc::new(Registry::default());
        let a = r.open_connection("s1", 2).unwrap();
        let _b = r.open_connection("s1", 2).unwrap();
        assert_eq!(
            r.open_connection("s1", 2).err(),
            Some(StreamRefusal::TooManyConnections)
        );
        drop(a);
        let c = r.open_connection("s1", 2).unwrap();
        r.revoke("s1", 100, 10);
        assert!(c.revoked().is_cancelled());
        assert_eq!(r.open_connection("s1", 2).err(), Some(StreamRefusal::Revoked));
        // Expired revocations are forgotten on the next revoke.
        r.revoke("s2", 200, 150);
        assert!(r.open_connection("s1", 5).is_ok());
    }

    #[test]
    fn replacing_the_revoked_set_cuts_new_entries_and_lifts_old_ones() {
        let r = Arc::new(Registry::default());
        let live = r.open_connection("s1", 2).unwrap();
        let dev = DeviceKey::parse("ns/pump").unwrap();
        r.revoke("old", 1000, 10);
        r.set_revoked(
            HashSet::from([dev.clone()]),
            HashMap::from([("s1".to_owned(), 1000), ("expired".to_owned(), 5)]),
            10,
        );
        assert!(live.revoked().is_cancelled());
        assert!(r.is_device_revoked(&dev));
        let (devices, streams) = r.revoked();
        assert_eq!(devices.len(), 1);
        assert_eq!(
            streams.keys().collect::<Vec<_>>(),
            vec!["s1"],
            "old lifted, expired dropped"
        );
        assert!(r.open_connection("old", 2).is_ok());
        r.set_revoked(HashSet::new(), HashMap::new(), 10);
        assert!(!r.is_device_revoked(&dev));
    }
}
