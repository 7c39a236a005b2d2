//! Build: token claims, the token Secret and the status, from plain data.

use std::collections::BTreeMap;

use k8s_openapi::{api::core::v1::Secret, apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};
use kube::ResourceExt;
use tether_api::{
    DeviceStream, DeviceStreamStatus, StreamPhase,
    conditions::{reasons, status, types},
    stream::StreamEndpoint,
};
use tether_proto::{name::DeviceKey, token::StreamClaims};

use super::validate::{Verdict, Window};
use crate::{
    conditions::{Desired, merge},
    fleet::RelayInfo,
    k8s::owned_secret,
};

/// The token Secret's name for DeviceStream `name`.
pub fn secret_name(name: &str) -> String {
    format!("{name}-tether-token")
}

/// Where a served stream connects.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    /// Relay `host:port`.
    pub endpoint: String,
    /// SNI `<device>.<namespace>.<relayDomain>`.
    pub server_name: String,
    /// Owning relay member, if the fleet has members.
    pub relay: Option<String>,
}

/// The route of `key` through `relay`.
pub fn route(key: &DeviceKey, relay: &RelayInfo) -> Route {
    Route {
        endpoint: relay.endpoint.clone(),
        server_name: key.server_name(&relay.domain),
        relay: relay.owner(&key.to_string()),
    }
}

/// The token claims: `jti` = the DeviceStream's UID, audience = the relay domain, window from
/// creation time and TTL.
pub fn claims(
    stream: &DeviceStream,
    key: &DeviceKey,
    relay: &RelayInfo,
    window: Window,
    now: i64,
) -> Option<StreamClaims> {
    Some(StreamClaims {
        stream_uid: stream.uid()?,
        namespace: key.namespace().to_owned(),
        device: key.name().to_owned(),
        port: u16::try_from(stream.spec.port).ok()?,
        audience: relay.domain.clone(),
        issued_at: u64::try_from(now).ok()?,
        not_before: u64::try_from(window.not_before).ok()?,
        expires_at: u64::try_from(window.expires_at).ok()?,
        max_connections: Some(stream.spec.max_connections),
        idle_timeout: super::validate::idle_timeout(stream).ok().flatten(),
    })
}

/// The token Secret: `token`, `ca.crt`, `endpoint`, `server-name`.
pub fn token_secret(
    stream: &DeviceStream,
    namespace: &str,
    token: &str,
    ca_pem: &str,
    route: &Route,
) -> Secret {
    let data = BTreeMap::from([
        ("token".to_owned(), token.to_owned()),
        ("ca.crt".to_owned(), ca_pem.to_owned()),
        ("endpoint".to_owned(), route.endpoint.clone()),
        ("server-name".to_owned(), route.server_name.clone()),
    ]);
    owned_secret(
        stream,
        secret_name(&stream.name_any()),
        namespace.to_owned(),
        data,
    )
}

/// The desired status for `verdict`.
pub fn status(
    stream: &DeviceStream,
    verdict: &Verdict,
    window: Option<Window>,
    route: Option<&Route>,
    now: Timestamp,
) -> DeviceStreamStatus {
    let (phase, desired) = match verdict {
        Verdict::Serve => {
            let msg = route.map_or_else(String::new, |r| {
                format!(
                    "connect to {} with server name {}; token in Secret {}",
                    r.endpoint,
                    r.server_name,
                    secret_name(&stream.name_any())
                )
            });
            (
                StreamPhase::Ready,
                vec![
                    Desired::new(types::READY, status::TRUE, reasons::READY, msg),
                    Desired::new(types::TOKEN_ISSUED, status::TRUE, reasons::ISSUED, "token minted"),
                ],
            )
        }
        Verdict::Pending { reason, message } => (
            StreamPhase::Pending,
            vec![
                Desired::new(types::READY, status::FALSE, reason, message.clone()),
                Desired::new(
                    types::TOKEN_ISSUED,
                    status::FALSE,
                    reason,
                    "no token until the stream can be served",
                ),
            ],
        ),
        Verdict::Failed { reason, message } => (
            StreamPhase::Failed,
            vec![
                Desired::new(types::READY, status::FALSE, reason, message.clone()),
                Desired::new(
                    types::TOKEN_ISSUED,
                    status::FALSE,
                    reason,
                    "no token: the stream cannot be served",
                ),
            ],
        ),
        Verdict::Expired => (
            StreamPhase::Expired,
            vec![
                Desired::new(
                    types::READY,
                    status::FALSE,
                    reasons::EXPIRED,
                    "the TTL has passed; create a new DeviceStream",
                ),
                Desired::new(
                    types::TOKEN_ISSUED,
                    status::FALSE,
                    reasons::EXPIRED,
                    "the token expired and its Secret was deleted",
                ),
            ],
        ),
    };
    let serving = matches!(verdict, Verdict::Serve);
    // The owning relay reports open connections (`status.connections`, its field); a servable
    // stream with some is `Active`. The phase itself stays this operator's field alone.
    let open = stream.status.as_ref().and_then(|s| s.connections).unwrap_or(0);
    let phase = if serving && open > 0 {
        StreamPhase::Active
    } else {
        phase
    };
    let existing = stream
        .status
        .as_ref()
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default();
    let generation = stream.metadata.generation;
    DeviceStreamStatus {
        phase: Some(phase),
        endpoint: route.filter(|_| serving).map(|r| StreamEndpoint {
            address: r.endpoint.clone(),
            server_name: r.server_name.clone(),
        }),
        relay: route.filter(|_| serving).and_then(|r| r.relay.clone()),
        token_secret: serving.then(|| secret_name(&stream.name_any())),
        expires_at: window
            .and_then(|w| Timestamp::from_second(w.expires_at).ok())
            .map(Time),
        observed_generation: generation,
        conditions: merge(existing, &desired, generation, now),
        ..DeviceStreamStatus::default()
    }
}

/// Whether applying `desired` would change the fields this operator owns in `current`.
pub fn status_changed(current: Option<&DeviceStreamStatus>, desired: &DeviceStreamStatus) -> bool {
    let Some(c) = current else { return true };
    c.phase != desired.phase
        || c.endpoint != desired.endpoint
        || c.relay != desired.relay
        || c.token_secret != desired.token_secret
        || c.expires_at != desired.expires_at
        || c.observed_generation != desired.observed_generation
        || c.conditions != desired.conditions
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stream_with_open_connections_is_active_while_servable() {
        let mut stream: DeviceStream = serde_yaml::from_str(
            "apiVersion: tether.dev/v1alpha1\nkind: DeviceStream\n\
             metadata: {name: s, namespace: ns, uid: u1, creationTimestamp: '2026-01-01T00:00:00Z'}\n\
             spec: {device: pump, port: 22, ttl: 30m}\nstatus: {phase: Ready, connections: 2}\n",
        )
        .expect("fixture");
        let route = Route {
            endpoint: "r:443".into(),
            server_name: "pump.ns.r".into(),
            relay: Some("r-0".into()),
        };
        let st = status(
            &stream,
            &Verdict::Serve,
            None,
            Some(&route),
            Timestamp::UNIX_EPOCH,
        );
        assert_eq!(st.phase, Some(StreamPhase::Active));
        assert_eq!(st.token_secret.as_deref(), Some("s-tether-token"));
        let st = status(
            &stream,
            &Verdict::Expired,
            None,
            Some(&route),
            Timestamp::UNIX_EPOCH,
        );
        assert_eq!(st.phase, Some(StreamPhase::Expired));
        assert_eq!(st.endpoint, None);
        stream.status = None;
        let st = status(
            &stream,
            &Verdict::Serve,
            None,
            Some(&route),
            Timestamp::UNIX_EPOCH,
        );
        assert_eq!(st.phase, Some(StreamPhase::Ready));
    }
}
