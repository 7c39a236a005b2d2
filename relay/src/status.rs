//! What the data plane reports about devices and streams, collected for the Kubernetes status
//! writer: device connects and disconnects, and per-stream connection counts and bytes.
//!
//! Reports coalesce: a device that flaps ten times between two flushes costs one write with its
//! latest state. Standalone relays have no board (nothing is collected).

use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicU32, AtomicU64, Ordering},
    },
    time::SystemTime,
};

use tether_proto::name::DeviceKey;
use tokio::sync::Notify;

/// A device's state as last reported.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceReport {
    /// Whether it has a session here.
    pub connected: bool,
    /// Its agent's version (validated by the preface parser).
    pub agent_version: String,
    /// When this state began.
    pub at: SystemTime,
}

/// Live counters of one stream on this relay.
#[derive(Debug, Default)]
pub struct StreamCounters {
    /// Bytes carried to the device.
    pub to_device: Arc<AtomicU64>,
    /// Bytes carried from the device.
    pub from_device: Arc<AtomicU64>,
    /// Connections open now.
    pub connections: AtomicU32,
}

/// A stream's counters at one moment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StreamSnapshot {
    /// Bytes to the device.
    pub to_device: u64,
    /// Bytes from the device.
    pub from_device: u64,
    /// Open connections.
    pub connections: u32,
}

#[derive(Default)]
struct Board {
    devices: HashMap<DeviceKey, DeviceReport>,
    streams: HashMap<String, Arc<StreamCounters>>,
    /// Streams whose connection count changed since the last flush.
    changed_streams: HashSet<String>,
}

/// The collected reports.
#[derive(Default)]
pub struct StatusBoard {
    board: Mutex<Board>,
    /// Wakes the writer when a connect, disconnect or connection count change arrives.
    pub changed: Notify,
}

impl StatusBoard {
    fn lock(&self) -> MutexGuard<'_, Board> {
        self.board.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records a device's new state.
    pub fn device(&self, device: &DeviceKey, connected: bool, agent_version: &str) {
        self.lock().devices.insert(
            device.clone(),
            DeviceReport {
                connected,
                agent_version: agent_version.to_owned(),
                at: SystemTime::now(),
            },
        );
        self.changed.notify_one();
    }

    /// The counters of stream `uid`, created on first use.
    pub fn stream(&self, uid: &str) -> Arc<StreamCounters> {
        self.lock().streams.entry(uid.to_owned()).or_default().clone()
    }

    /// A connection of stream `uid` opened (`+1`) or closed (`-1`).
    pub fn connection(&self, uid: &str, counters: &StreamCounters, opened: bool) {
        if opened {
            counters.connections.fetch_add(1, Ordering::Relaxed);
        } else {
            counters.connections.fetch_sub(1, Ordering::Relaxed);
        }
        self.lock().changed_streams.insert(uid.to_owned());
        self.changed.notify_one();
    }

    /// Forgets stream `uid` (its DeviceStream is gone).
    pub fn forget_stream(&self, uid: &str) {
        let mut board = self.lock();
        board.streams.remove(uid);
        board.changed_streams.remove(uid);
    }

    /// Takes the device reports collected since the last call.
    pub fn take_devices(&self) -> HashMap<DeviceKey, DeviceReport> {
        std::mem::take(&mut self.lock().devices)
    }

    /// Streams to report: those whose connection count changed, and (with `busy`) every stream
    /// with an open connection, whose bytes are moving.
    pub fn take_streams(&self, busy: bool) -> Vec<(String, StreamSnapshot)> {
        let mut board = self.lock();
        let mut uids = std::mem::take(&mut board.changed_streams);
        if busy {
            uids.extend(
                board
                    .streams
                    .iter()
                    .filter(|(_, c)| c.connections.load(Ordering::Relaxed) > 0)
                    .map(|(uid, _)| uid.clone()),
            );
        }
        uids.into_iter()
            .filter_map(|uid| {
                let c = board.streams.get(&uid)?;
                let snap = StreamSnapshot {
                    to_device: c.to_device.load(Ordering::Relaxed),
                    from_device: c.from_device.load(Ordering::Relaxed),
                    connections: c.connections.load(Ordering::Relaxed),
                };
                Some((uid, snap))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_coalesce_and_busy_streams_are_reported() {
        let board = StatusBoard::default();
        let d = DeviceKey::new("f", "pump").unwrap();
        board.device(&d, true, "1.0");
        board.device(&d, false, "1.0");
        let devices = board.take_devices();
        assert_eq!(devices.len(), 1);
        assert!(!devices[&d].connected, "the latest state wins");
        assert!(board.take_devices().is_empty());

        let c = board.stream("uid-1");
        board.connection("uid-1", &c, true);
        c.to_device.fetch_add(10, Ordering::Relaxed);
        let s = board.take_streams(false);
        assert_eq!(
            s,
            [(
                "uid-1".to_owned(),
                StreamSnapshot {
                    to_device: 10,
                    from_device: 0,
                    connections: 1
                }
            )]
        );
        assert!(board.take_streams(false).is_empty(), "nothing changed since");
        assert_eq!(board.take_streams(true).len(), 1, "an open connection is busy");
        board.connection("uid-1", &c, false);
        assert_eq!(board.take_streams(false)[0].1.connections, 0);
        assert!(board.take_streams(true).is_empty());
        board.forget_stream("uid-1");
        assert!(board.lock().streams.is_empty());
    }
}
