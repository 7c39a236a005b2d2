//! Revocation and per-stream limits from DeviceStreams: deleting one (or its expiry) closes its
//! live connections within the watch's latency and refuses its token until the token would have
//! expired anyway; its spec's `maxConnections` applies to new connections.
//!
//! The watch is re-listed after every disconnect; a stream that vanished meanwhile (its `Delete`
//! event was missed) is revoked when the re-list ends without it.

use std::{
    collections::{HashMap, HashSet},
    sync::{Mutex, MutexGuard},
};

use futures_util::StreamExt;
use kube::{
    Api, Client, ResourceExt,
    runtime::{WatchStreamExt, watcher},
};
use tether_api::{DeviceStream, StreamPhase};
use tokio_util::sync::CancellationToken;

use crate::{RelayHandle, unix_now};

/// A token outlives its DeviceStream by at most the longest TTL (24 h): remember a revocation
/// that long when the stream's expiry is unknown.
const MAX_TOKEN_LIFETIME: u64 = 24 * 3600;

/// Where a stream's status lives, and when its token expires.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamRef {
    /// Namespace of the DeviceStream.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// Token expiry, Unix seconds, once the operator has issued one.
    pub expires_at: Option<u64>,
}

/// The DeviceStreams this relay knows, by UID (the token's `jti`).
#[derive(Default)]
pub struct Directory {
    streams: Mutex<HashMap<String, StreamRef>>,
}

impl Directory {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, StreamRef>> {
        self.streams.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The stream with `uid`, if known.
    pub fn get(&self, uid: &str) -> Option<StreamRef> {
        self.lock().get(uid).cloned()
    }
}

/// Watches every DeviceStream until `shutdown` fires.
pub async fn run(
    client: Client,
    relay: RelayHandle,
    directory: std::sync::Arc<Directory>,
    shutdown: CancellationToken,
) {
    let api = Api::<DeviceStream>::all(client);
    let events = watcher(api, watcher::Config::default()).default_backoff();
    futures_util::pin_mut!(events);
    // UIDs seen during the current re-list.
    let mut relisting: Option<HashSet<String>> = None;
    loop {
        let event = tokio::select! {
            _ = shutdown.cancelled() => return,
            e = events.next() => e,
        };
        match event {
            Some(Ok(watcher::Event::Apply(s))) => observe(&relay, &directory, &s),
            Some(Ok(watcher::Event::Delete(s))) => {
                if let Some(uid) = s.uid() {
                    revoke(&relay, &directory, &uid, "deleted");
                }
            }
            Some(Ok(watcher::Event::Init)) => relisting = Some(HashSet::new()),
            Some(Ok(watcher::Event::InitApply(s))) => {
                if let (Some(seen), Some(uid)) = (relisting.as_mut(), s.uid()) {
                    seen.insert(uid);
                }
                observe(&relay, &directory, &s);
            }
            Some(Ok(watcher::Event::InitDone)) => {
                if let Some(seen) = relisting.take() {
                    let gone: Vec<String> = directory
                        .lock()
                        .keys()
                        .filter(|uid| !seen.contains(*uid))
                        .cloned()
                        .collect();
                    for uid in gone {
                        revoke(&relay, &directory, &uid, "deleted while the watch was down");
                    }
                }
            }
            Some(Err(e)) => tracing::warn!(error = %e, "DeviceStream watch failed; retrying"),
            None => return,
        }
    }
}

fn observe(relay: &RelayHandle, directory: &Directory, stream: &DeviceStream) {
    let Some(uid) = stream.uid() else { return };
    let status = stream.status.as_ref();
    let expires_at = status
        .and_then(|s| s.expires_at.as_ref())
        .and_then(|t| u64::try_from(t.0.as_second()).ok());
    if status.and_then(|s| s.phase) == Some(StreamPhase::Expired) {
        directory.lock().insert(
            uid.clone(),
            StreamRef {
                namespace: stream.namespace().unwrap_or_default(),
                name: stream.name_any(),
                expires_at,
            },
        );
        return revoke(relay, directory, &uid, "expired");
    }
    relay.set_stream_limit(&uid, Some(stream.spec.max_connections));
    directory.lock().insert(
        uid,
        StreamRef {
            namespace: stream.namespace().unwrap_or_default(),
            name: stream.name_any(),
            expires_at,
        },
    );
}

fn revoke(relay: &RelayHandle, directory: &Directory, uid: &str, why: &str) {
    let known = directory.lock().remove(uid);
    let until = known
        .as_ref()
        .and_then(|s| s.expires_at)
        .unwrap_or_else(|| unix_now() + MAX_TOKEN_LIFETIME);
    relay.revoke(uid, until);
    relay.set_stream_limit(uid, None);
    if let Some(board) = relay.status_board() {
        board.forget_stream(uid);
    }
    tracing::info!(stream_uid = uid, reason = why, "stream revoked");
}
