//! The DeviceStream lifecycle as the plugin drives it: check the Device, create the stream
//! (generated name, owner label, TTL), wait for the operator with a watch, build the connect
//! target from the token Secret (read over the API, kept in memory), delete it.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use futures_util::StreamExt as _;
use k8s_openapi::api::{authentication::v1::SelfSubjectReview, core::v1::Secret};
use kube::{
    Api, ResourceExt,
    api::{DeleteParams, ObjectMeta, PostParams},
    runtime::watcher,
};
use tether_api::{Device, DeviceStream, DeviceStreamSpec, StreamPhase, conditions::types};
use tether_cli::connect::Target;
use tether_net::{dial::Proxy, tls};
use tether_proto::name::DeviceKey;

use crate::{
    Error, Result,
    cluster::{Cluster, STREAM_USER_ROLE, is_not_found},
};

/// Label on every DeviceStream the plugin creates: who asked (the username, made label-safe).
pub const OWNER_LABEL: &str = "tether.dev/owner";
/// Annotation with the full username (labels cannot hold every username).
pub const OWNER_ANNOTATION: &str = "tether.dev/owner";
/// Label marking the plugin's streams, for `kubectl get dstream -l app.kubernetes.io/created-by=kubectl-tether`.
pub const CREATED_BY: (&str, &str) = ("app.kubernetes.io/created-by", "kubectl-tether");

const STREAMS: &str = "devicestreams.tether.dev";
const DEVICES: &str = "devices.tether.dev";
const SECRETS: &str = "secrets";

/// Checks that `device` exists, is enabled and allows `port`, for an answer before any stream
/// is created. A user who may not read Devices skips the check: the operator's verdict on the
/// stream says the same, a little later.
///
/// # Errors
/// [`Error::DeviceNotFound`], [`Error::DeviceDisabled`], [`Error::PortNotAllowed`].
pub async fn check_device(cluster: &Cluster, device: &str, port: u16) -> Result<()> {
    let api: Api<Device> = Api::namespaced(cluster.client.clone(), &cluster.namespace);
    let found = match api.get_opt(device).await {
        Ok(found) => found,
        Err(kube::Error::Api(s)) if s.code == 403 => return Ok(()),
        Err(e) => return Err(cluster.api_error("get", DEVICES, STREAM_USER_ROLE)(e)),
    };
    let Some(found) = found else {
        return Err(Error::DeviceNotFound {
            name: device.to_owned(),
            namespace: cluster.namespace.clone(),
        });
    };
    if found.spec.disabled {
        return Err(Error::DeviceDisabled {
            name: device.to_owned(),
            namespace: cluster.namespace.clone(),
        });
    }
    if !found.spec.allowed_ports.contains(&i32::from(port)) {
        return Err(Error::PortNotAllowed {
            name: device.to_owned(),
            port,
            allowed: found.spec.allowed_ports,
        });
    }
    Ok(())
}

/// The requesting user's name (SelfSubjectReview, which every authenticated user may create),
/// or `None` if the API server will not say.
pub async fn whoami(cluster: &Cluster) -> Option<String> {
    let api: Api<SelfSubjectReview> = Api::all(cluster.client.clone());
    let review = api
        .create(&PostParams::default(), &SelfSubjectReview::default())
        .await
        .ok()?;
    review.status?.user_info?.username
}

/// `user` as a label value: at most 63 characters of `[A-Za-z0-9._-]`, starting and ending
/// alphanumeric (`system:serviceaccount:ns:sa` becomes `system.serviceaccount.ns.sa`).
pub fn label_value(user: &str) -> String {
    let mapped: String = user
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '.'
            }
        })
        .take(63)
        .collect();
    mapped
        .trim_matches(|c: char| !c.is_ascii_alphanumeric())
        .to_owned()
}

/// Creates a DeviceStream to `device`:`port` for `ttl`, named `<device>-<purpose>-<random>` by
/// the API server, labelled with its owner.
///
/// # Errors
/// [`Error::Forbidden`] without `create` on DeviceStreams, or another API error.
pub async fn create(
    cluster: &Cluster,
    device: &str,
    port: u16,
    ttl: Duration,
    purpose: &str,
) -> Result<DeviceStream> {
    let owner = whoami(cluster).await;
    let mut labels = BTreeMap::from([(CREATED_BY.0.to_owned(), CREATED_BY.1.to_owned())]);
    let mut annotations = BTreeMap::new();
    if let Some(owner) = &owner {
        let value = label_value(owner);
        if !value.is_empty() {
            labels.insert(OWNER_LABEL.to_owned(), value);
        }
        annotations.insert(OWNER_ANNOTATION.to_owned(), owner.clone());
    }
    let stream = DeviceStream {
        metadata: ObjectMeta {
            generate_name: Some(format!("{device}-{purpose}-")),
            namespace: Some(cluster.namespace.clone()),
            labels: Some(labels),
            annotations: Some(annotations),
            ..ObjectMeta::default()
        },
        spec: DeviceStreamSpec {
            device: device.to_owned(),
            port: i32::from(port),
            // Seconds: a Go/CEL duration the CRD's `duration(self)` rule parses.
            ttl: format!("{}s", ttl.as_secs()),
            max_connections: 4,
            idle_timeout: None,
        },
        status: None,
    };
    let api: Api<DeviceStream> = Api::namespaced(cluster.client.clone(), &cluster.namespace);
    let created = api
        .create(&PostParams::default(), &stream)
        .await
        .map_err(cluster.api_error("create", STREAMS, STREAM_USER_ROLE))?;
    tracing::info!(stream = created.name_any(), "created DeviceStream");
    Ok(created)
}

/// The `Ready` condition's reason and message, if any.
fn ready_condition(stream: &DeviceStream) -> Option<(String, String)> {
    stream
        .status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == types::READY)
        .map(|c| (c.reason.clone(), c.message.clone()))
}

/// What a status means for a waiting client.
enum Progress {
    Ready,
    Waiting(Option<String>),
}

fn progress(stream: &DeviceStream) -> Result<Progress> {
    let name = stream.name_any();
    match stream.status.as_ref().and_then(|s| s.phase) {
        Some(StreamPhase::Ready | StreamPhase::Active)
            if stream.status.as_ref().is_some_and(|s| s.token_secret.is_some()) =>
        {
            Ok(Progress::Ready)
        }
        Some(StreamPhase::Failed) => {
            let (reason, message) = ready_condition(stream).unwrap_or_default();
            Err(Error::StreamFailed {
                name,
                reason,
                message,
            })
        }
        Some(StreamPhase::Expired) => Err(Error::StreamExpired { name }),
        _ => Ok(Progress::Waiting(ready_condition(stream).map(|(_, m)| m))),
    }
}

/// Waits (a watch on this one object, not polling) until the operator makes stream `name`
/// Ready, or says why it cannot.
///
/// # Errors
/// [`Error::StreamFailed`] with the operator's message, [`Error::StreamExpired`],
/// [`Error::StreamDeleted`], [`Error::Timeout`] with the last Pending message.
pub async fn wait_ready(cluster: &Cluster, name: &str) -> Result<DeviceStream> {
    let api: Api<DeviceStream> = Api::namespaced(cluster.client.clone(), &cluster.namespace);
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut events = watcher::watcher(api, config).boxed();
    let mut last: Option<String> = None;
    let timeout = cluster.args.wait_timeout;
    let waited = tokio::time::timeout(timeout, async {
        while let Some(event) = events.next().await {
            let stream = match event {
                Ok(watcher::Event::Apply(s) | watcher::Event::InitApply(s)) => s,
                Ok(watcher::Event::Delete(_)) => {
                    return Err(Error::StreamDeleted {
                        name: name.to_owned(),
                    });
                }
                Ok(_) => continue,
                Err(watcher::Error::InitialListFailed(e) | watcher::Error::WatchStartFailed(e)) => {
                    return Err(cluster.api_error("watch", STREAMS, STREAM_USER_ROLE)(e));
                }
                // The watcher retries transient errors itself on the next poll.
                Err(e) => {
                    tracing::debug!(error = %e, "watch error");
                    continue;
                }
            };
            match progress(&stream)? {
                Progress::Ready => return Ok(stream),
                Progress::Waiting(message) => {
                    if message.is_some() && message != last {
                        eprintln!(
                            "waiting for DeviceStream {name}: {}",
                            message.as_deref().unwrap_or("")
                        );
                    }
                    last = message.or(last.take());
                }
            }
        }
        Err(Error::Malformed("the watch ended".into()))
    })
    .await;
    waited.unwrap_or_else(|_| {
        Err(Error::Timeout {
            what: format!("DeviceStream {name} is not Ready"),
            after: timeout,
            message: last.unwrap_or_else(|| {
                format!(
                    "it has no status: is the Tether operator running and watching namespace {:?}?",
                    cluster.namespace
                )
            }),
        })
    })
}

/// Reads the stream `name` (must be Ready or Active).
///
/// # Errors
/// [`Error::StreamNotFound`], or the stream's failure.
pub async fn get_ready(cluster: &Cluster, name: &str) -> Result<DeviceStream> {
    let api: Api<DeviceStream> = Api::namespaced(cluster.client.clone(), &cluster.namespace);
    let stream = api
        .get_opt(name)
        .await
        .map_err(cluster.api_error("get", STREAMS, STREAM_USER_ROLE))?
        .ok_or_else(|| Error::StreamNotFound {
            name: name.to_owned(),
            namespace: cluster.namespace.clone(),
        })?;
    match progress(&stream)? {
        Progress::Ready => Ok(stream),
        Progress::Waiting(message) => Err(Error::Usage(format!(
            "DeviceStream {name} is not Ready yet{}",
            message.map(|m| format!(": {m}")).unwrap_or_default()
        ))),
    }
}

/// The connect target of a Ready stream, from its token Secret (`token`, `ca.crt`, `endpoint`,
/// `server-name`). The token stays in memory.
///
/// # Errors
/// [`Error::Forbidden`] without `get` on Secrets, [`Error::Malformed`] for a Secret the operator
/// did not write.
pub async fn target(cluster: &Cluster, stream: &DeviceStream) -> Result<Target> {
    let name = stream.name_any();
    let secret_name = stream
        .status
        .as_ref()
        .and_then(|s| s.token_secret.clone())
        .ok_or_else(|| Error::Malformed(format!("DeviceStream {name} names no token Secret")))?;
    let api: Api<Secret> = Api::namespaced(cluster.client.clone(), &cluster.namespace);
    let secret = match api.get(&secret_name).await {
        Ok(s) => s,
        Err(e) if is_not_found(&e) => return Err(Error::StreamExpired { name }),
        Err(e) => return Err(cluster.api_error("get", SECRETS, STREAM_USER_ROLE)(e)),
    };
    let field = |key: &str| -> Result<String> {
        secret
            .data
            .as_ref()
            .and_then(|d| d.get(key))
            .and_then(|b| String::from_utf8(b.0.clone()).ok())
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .ok_or_else(|| Error::Malformed(format!("token Secret {secret_name} has no {key:?}")))
    };
    let device = DeviceKey::new(&cluster.namespace, &stream.spec.device)
        .map_err(|e| Error::Malformed(format!("DeviceStream {name}: {e}")))?;
    let endpoint = field("endpoint")?;
    let server_name = field("server-name")?;
    let prefix = format!("{}.{}.", device.name(), device.namespace());
    let relay_domain = server_name
        .strip_prefix(&prefix)
        .filter(|d| !d.is_empty())
        .ok_or_else(|| {
            Error::Malformed(format!(
                "server-name {server_name:?} is not {prefix}<relay domain>"
            ))
        })?
        .to_owned();
    let (host, port) = endpoint
        .rsplit_once(':')
        .and_then(|(h, p)| Some((h, p.parse::<u16>().ok()?)))
        .ok_or_else(|| Error::Malformed(format!("endpoint {endpoint:?} is not host:port")))?;
    let cas = tls::parse_certs("relay CA bundle", &secret_name, field("ca.crt")?.as_bytes())
        .map_err(|e| Error::Malformed(e.to_string()))?;
    // The relay's certificate carries the relay domain; SNI carries the device's name.
    let config =
        tls::service_client_config(&cas, &relay_domain).map_err(|e| Error::Malformed(e.to_string()))?;
    let port_num = u16::try_from(stream.spec.port)
        .map_err(|_| Error::Malformed(format!("DeviceStream {name} port {}", stream.spec.port)))?;
    Ok(Target {
        relay_host: host.trim_start_matches('[').trim_end_matches(']').to_owned(),
        relay_port: port,
        relay_domain,
        tls: Arc::new(config),
        device,
        port: port_num,
        token: field("token")?.into(),
        proxy: Proxy::from_env().map_err(|e| Error::Usage(format!("HTTPS_PROXY: {e}")))?,
    })
}

/// Deletes stream `name`; a stream already gone is fine. Revokes its token: relays close its
/// connections.
///
/// # Errors
/// [`Error::Forbidden`] without `delete` on DeviceStreams, or another API error.
pub async fn delete(cluster: &Cluster, name: &str) -> Result<()> {
    let api: Api<DeviceStream> = Api::namespaced(cluster.client.clone(), &cluster.namespace);
    match api.delete(name, &DeleteParams::default()).await {
        Ok(_) => Ok(()),
        Err(e) if is_not_found(&e) => Ok(()),
        Err(e) => Err(cluster.api_error("delete", STREAMS, STREAM_USER_ROLE)(e)),
    }
}

/// Creates a stream and waits until it is Ready; deletes it again when it cannot be used.
///
/// # Errors
/// See [`check_device`], [`create`], [`wait_ready`], [`target`].
pub async fn open(
    cluster: &Cluster,
    device: &str,
    port: u16,
    ttl: Duration,
    purpose: &str,
) -> Result<(DeviceStream, Target)> {
    check_device(cluster, device, port).await?;
    let created = create(cluster, device, port, ttl, purpose).await?;
    let name = created.name_any();
    let ready = async {
        let stream = wait_ready(cluster, &name).await?;
        let target = target(cluster, &stream).await?;
        Ok((stream, target))
    }
    .await;
    if ready.is_err()
        && let Err(e) = delete(cluster, &name).await
    {
        eprintln!("warning: could not delete DeviceStream {name}: {e}");
    }
    ready
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usernames_become_label_values() {
        assert_eq!(
            label_value("system:serviceaccount:ns:alice"),
            "system.serviceaccount.ns.alice"
        );
        assert_eq!(label_value("alice@example.com"), "alice.example.com");
        assert_eq!(label_value(":x:"), "x");
        assert_eq!(label_value(&"a".repeat(100)).len(), 63);
    }

    #[test]
    fn failed_and_expired_streams_say_why() {
        let stream: DeviceStream = serde_yaml::from_str(
            "apiVersion: tether.dev/v1alpha1\nkind: DeviceStream\nmetadata: {name: s, namespace: ns}\n\
             spec: {device: pump, port: 22, ttl: 30m}\nstatus: {phase: Failed, conditions: [{type: Ready, \
             status: 'False', reason: PortNotAllowed, message: 'port 22 is not allowed', lastTransitionTime: \
             '2026-01-01T00:00:00Z'}]}\n",
        )
        .expect("fixture");
        let Err(Error::StreamFailed { reason, message, .. }) = progress(&stream) else {
            panic!("not failed")
        };
        assert_eq!(
            (reason.as_str(), message.as_str()),
            ("PortNotAllowed", "port 22 is not allowed")
        );
        let mut ready = stream.clone();
        ready.status.as_mut().expect("status").phase = Some(StreamPhase::Ready);
        assert!(
            matches!(progress(&ready), Ok(Progress::Waiting(_))),
            "Ready without a Secret name waits"
        );
        ready.status.as_mut().expect("status").token_secret = Some("s-tether-token".into());
        assert!(matches!(progress(&ready), Ok(Progress::Ready)));
        ready.status.as_mut().expect("status").phase = Some(StreamPhase::Expired);
        assert!(matches!(progress(&ready), Err(Error::StreamExpired { .. })));
    }
}
