//! The relay ring's members in Kubernetes terms — one definition for relays and operator alike.
//!
//! The members of a RelayPool's ring are the **ready, non-terminating** endpoints of its headless
//! members Service (`<pool>-members`), read from that Service's EndpointSlices. A member is named
//! by its pod (`targetRef.name`, else the endpoint's `hostname`, else its first address) — the
//! StatefulSet's stable names — and reached for forwarding at its first address on the port
//! named [`PEER_PORT_NAME`]. Relays and the operator both call [`from_endpoint_slices`], so
//! `DeviceStream.status.relay` names the pod that really serves the device.
//!
//! A draining relay turns not-ready first, so it leaves every ring before it stops (DESIGN §4).

use std::net::{IpAddr, SocketAddr};

use k8s_openapi::api::discovery::v1::EndpointSlice;

/// Label the endpointslice controller puts on every slice of a Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// Name of the members Service's port that relays forward raw connections to.
pub const PEER_PORT_NAME: &str = "peer";

/// The headless members Service of pool `pool`.
pub fn members_service(pool: &str) -> String {
    format!("{pool}-members")
}

/// One ring member.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    /// Ring name: the relay's pod name.
    pub name: String,
    /// Where its peer port listens, if the slice publishes one.
    pub peer: Option<SocketAddr>,
}

/// The ring members described by `slices` (all slices of one members Service), sorted by name and
/// without duplicates (an endpoint may briefly appear in two slices).
pub fn from_endpoint_slices<'a>(slices: impl IntoIterator<Item = &'a EndpointSlice>) -> Vec<Member> {
    let mut members = Vec::new();
    for slice in slices {
        let peer_port = slice
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(PEER_PORT_NAME))
            .and_then(|p| p.port)
            .and_then(|p| u16::try_from(p).ok());
        for endpoint in slice.endpoints.iter().flatten() {
            let conditions = endpoint.conditions.as_ref();
            // `ready` absent means unknown, which the API documents as ready; `terminating`
            // absent means not terminating.
            let ready = conditions.and_then(|c| c.ready).unwrap_or(true);
            let terminating = conditions.and_then(|c| c.terminating).unwrap_or(false);
            if !ready || terminating {
                continue;
            }
            let address = endpoint.addresses.first().and_then(|a| a.parse::<IpAddr>().ok());
            let name = endpoint
                .target_ref
                .as_ref()
                .and_then(|r| r.name.clone())
                .or_else(|| endpoint.hostname.clone())
                .or_else(|| address.map(|a| a.to_string()));
            let Some(name) = name else { continue };
            members.push(Member {
                name,
                peer: address.zip(peer_port).map(|(ip, port)| SocketAddr::new(ip, port)),
            });
        }
    }
    // By name; of duplicates, keep one that publishes a peer port.
    members.sort_by(|a, b| a.name.cmp(&b.name).then(b.peer.is_some().cmp(&a.peer.is_some())));
    members.dedup_by(|later, kept| later.name == kept.name);
    members
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slice(yaml: &str) -> EndpointSlice {
        serde_yaml::from_str(yaml).expect("fixture")
    }

    #[test]
    fn only_ready_non_terminating_endpoints_are_members() {
        let a = slice(
            r#"
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: relays-members-abc, labels: {kubernetes.io/service-name: relays-members}}
addressType: IPv4
ports: [{name: data, port: 8443}, {name: peer, port: 8444}]
endpoints:
- {addresses: [10.0.0.2], conditions: {ready: true}, targetRef: {kind: Pod, name: relays-0}}
- {addresses: [10.0.0.3], conditions: {ready: false}, targetRef: {kind: Pod, name: relays-1}}
- {addresses: [10.0.0.4], conditions: {ready: true, terminating: true}, targetRef: {kind: Pod, name: relays-2}}
- {addresses: [10.0.0.5], hostname: relays-3}
"#,
        );
        let b = slice(
            r#"
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: relays-members-def}
addressType: IPv4
endpoints:
- {addresses: [10.0.0.2], conditions: {ready: true}, targetRef: {kind: Pod, name: relays-0}}
- {addresses: [10.0.0.9], conditions: {ready: true}}
"#,
        );
        let members = from_endpoint_slices([&a, &b]);
        let names: Vec<_> = members.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["10.0.0.9", "relays-0", "relays-3"]);
        assert_eq!(members[1].peer, Some("10.0.0.2:8444".parse().unwrap()));
        assert_eq!(members[2].peer, Some("10.0.0.5:8444".parse().unwrap()));
        // The second slice publishes no peer port: its own endpoint has none, and its duplicate
        // of relays-0 gives way to the one that has.
        assert_eq!(members[0].peer, None);
    }

    #[test]
    fn no_slices_no_members() {
        assert!(from_endpoint_slices([]).is_empty());
    }
}
