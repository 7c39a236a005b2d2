//! Fleet membership as this relay sees it: the ring of ready relays, who owns a device, and
//! which addresses may use the peer port.
//!
//! Standalone, there is no fleet and every device is local. In Kubernetes mode the members come
//! from the pool's EndpointSlices (`tether_api::members`, the definition the operator uses too)
//! through [`Fleet::set_members`]; anything else that produces a member list (tests, static
//! configuration) drives the same path.

use std::{
    collections::HashSet,
    net::{IpAddr, SocketAddr},
    sync::{Arc, RwLock},
};

use tether_proto::name::DeviceKey;
use tokio::sync::watch;

/// One ring member.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    /// Ring name (the relay's pod name).
    pub name: String,
    /// Its peer port, where forwarded connections go.
    pub peer: Option<SocketAddr>,
}

/// The ring at one moment.
#[derive(Debug, Default)]
pub struct RingView {
    /// Members, sorted by name.
    pub members: Vec<Member>,
    /// Member names, for [`tether_proto::ring::owner`].
    names: Vec<String>,
    /// Member addresses: the only sources the peer port accepts.
    addresses: HashSet<IpAddr>,
}

impl RingView {
    /// A view of `members`.
    pub fn new(mut members: Vec<Member>) -> Self {
        members.sort_by(|a, b| a.name.cmp(&b.name));
        members.dedup_by(|a, b| a.name == b.name);
        Self {
            names: members.iter().map(|m| m.name.clone()).collect(),
            addresses: members.iter().filter_map(|m| m.peer.map(|p| p.ip())).collect(),
            members,
        }
    }

    /// The owner of `device`, or `None` with no members.
    pub fn owner(&self, device: &DeviceKey) -> Option<&Member> {
        let name = tether_proto::ring::owner(&device.to_string(), &self.names)?;
        self.members.iter().find(|m| m.name == name)
    }
}

/// Where a new connection for a device goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// This relay serves it.
    Local,
    /// Another member owns the device: forward the raw bytes to its peer port.
    Forward {
        /// The owner's name.
        owner: String,
        /// The owner's peer port.
        peer: SocketAddr,
    },
    /// Another member owns the device but publishes no peer port: served here, and counted.
    OwnerUnreachable,
}

/// This relay's place in the fleet.
pub struct Fleet {
    /// This relay's member name.
    pub self_name: String,
    /// Source address for connections to peers (the pod IP): peers accept only member addresses.
    pub source_ip: Option<IpAddr>,
    view: RwLock<Arc<RingView>>,
    changed: watch::Sender<u64>,
}

impl std::fmt::Debug for Fleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fleet")
            .field("self_name", &self.self_name)
            .field("members", &self.view().members.len())
            .finish()
    }
}

impl Fleet {
    /// A fleet member named `self_name` with an empty ring (until the first membership update
    /// every device is served locally).
    pub fn new(self_name: impl Into<String>, source_ip: Option<IpAddr>) -> Self {
        Self {
            self_name: self_name.into(),
            source_ip,
            view: RwLock::new(Arc::new(RingView::default())),
            changed: watch::channel(0).0,
        }
    }

    /// The current ring.
    pub fn view(&self) -> Arc<RingView> {
        self.view.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Replaces the ring; returns whether the member set changed (and then notifies watchers).
    pub fn set_members(&self, members: Vec<Member>) -> bool {
        let next = RingView::new(members);
        {
            let mut view = self.view.write().unwrap_or_else(|p| p.into_inner());
            if view.members == next.members {
                return false;
            }
            *view = Arc::new(next);
        }
        self.changed.send_modify(|n| *n += 1);
        true
    }

    /// Fires on every ring change.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Where a connection for `device` goes. An empty ring, or one this relay owns, is local.
    pub fn route(&self, device: &DeviceKey) -> Route {
        let view = self.view();
        match view.owner(device) {
            None => Route::Local,
            Some(m) if m.name == self.self_name => Route::Local,
            Some(m) => match m.peer {
                Some(peer) => Route::Forward {
                    owner: m.name.clone(),
                    peer,
                },
                None => Route::OwnerUnreachable,
            },
        }
    }

    /// Whether this relay owns `device` (an empty ring owns nothing and everything: true).
    pub fn owns(&self, device: &DeviceKey) -> bool {
        self.view().owner(device).is_none_or(|m| m.name == self.self_name)
    }

    /// Whether `ip` belongs to a current member (the peer port's admission rule).
    pub fn is_member_address(&self, ip: IpAddr) -> bool {
        self.view().addresses.contains(&ip)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(name: &str, ip: &str) -> Member {
        Member {
            name: name.into(),
            peer: Some(SocketAddr::new(ip.parse().unwrap(), 8444)),
        }
    }

    #[test]
    fn routes_by_the_ring_and_admits_only_members() {
        let fleet = Fleet::new("relay-0", None);
        let device = DeviceKey::new("factory", "pump-1").unwrap();
        assert_eq!(fleet.route(&device), Route::Local, "empty ring: local");
        let rx = fleet.subscribe();
        assert!(fleet.set_members(vec![
            member("relay-1", "127.0.0.3"),
            member("relay-0", "127.0.0.2")
        ]));
        assert!(rx.has_changed().unwrap());
        assert!(!fleet.set_members(vec![
            member("relay-0", "127.0.0.2"),
            member("relay-1", "127.0.0.3")
        ]));
        let owner = tether_proto::ring::owner("factory/pump-1", &["relay-0", "relay-1"]).unwrap();
        match fleet.route(&device) {
            Route::Local => assert_eq!(owner, "relay-0"),
            Route::Forward { owner: o, peer } => {
                assert_eq!(
                    (o.as_str(), peer.ip().to_string().as_str()),
                    ("relay-1", "127.0.0.3")
                );
            }
            Route::OwnerUnreachable => panic!("every member has a peer port"),
        }
        assert_eq!(fleet.owns(&device), owner == "relay-0");
        assert!(fleet.is_member_address("127.0.0.3".parse().unwrap()));
        assert!(!fleet.is_member_address("127.0.0.9".parse().unwrap()));
    }
}
