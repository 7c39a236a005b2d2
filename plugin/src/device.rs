//! `kubectl tether device enroll|credentials`: create a Device, and export the bundle its agent
//! needs (certificate, key, CA, and an `agent.toml` with the relay endpoint the operator took
//! from the RelayPool) from the credentials Secret the operator issued.

use std::{
    io::Write as _,
    os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _},
    path::Path,
};

use futures_util::StreamExt as _;
use k8s_openapi::api::core::v1::Secret;
use kube::{
    Api,
    api::{Patch, PatchParams},
    runtime::watcher,
};
use serde::Serialize;
use tether_api::Device;

use crate::{
    Error, Result,
    args::{CredentialsArgs, EnrollArgs},
    cluster::{Cluster, DEVICE_ADMIN_ROLE, FIELD_MANAGER, is_not_found},
};

const DEVICES: &str = "devices.tether.dev";

/// Creates Device `name` or sets its allowed ports (server-side apply of `spec.allowedPorts`
/// only, so `disabled` and credential settings set by others are kept).
///
/// # Errors
/// [`Error::Forbidden`] without `patch` on Devices; the API server's validation message for a bad
/// name or port.
pub async fn enroll(cluster: &Cluster, args: EnrollArgs) -> Result<()> {
    let EnrollArgs { name, allow } = args;
    if allow.contains(&0) {
        return Err(Error::Usage("--allow: ports are 1-65535".into()));
    }
    let patch = serde_json::json!({
        "apiVersion": "tether.dev/v1alpha1",
        "kind": "Device",
        "metadata": { "name": name },
        "spec": { "allowedPorts": allow },
    });
    let api: Api<Device> = Api::namespaced(cluster.client.clone(), &cluster.namespace);
    api.patch(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await
    .map_err(cluster.api_error("patch", DEVICES, DEVICE_ADMIN_ROLE))?;
    let ports = allow.iter().map(u16::to_string).collect::<Vec<_>>().join(",");
    println!(
        "device/{name} enrolled in namespace {} (allowed ports {ports})",
        cluster.namespace
    );
    println!(
        "next: kubectl tether device credentials {name} -n {} --out DIR   (then copy DIR to the device)",
        cluster.namespace
    );
    Ok(())
}

/// `agent.toml` as written for the device (keys as in agent/src/config.rs).
#[derive(Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
struct AgentToml {
    relay: String,
    relay_domain: String,
    device: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    trust_domain: Option<String>,
    cert: String,
    key: String,
    ca: String,
    allow: Vec<i32>,
}

/// Waits for the credentials Secret of Device `name` and writes device.crt, device.key (0600),
/// ca.crt and agent.toml into `--out`.
///
/// # Errors
/// [`Error::DeviceNotFound`], [`Error::NoRelayPool`], [`Error::Forbidden`] without `get` on the
/// Secret, [`Error::Timeout`] when the operator issues nothing, file errors (existing files
/// without `--force`).
pub async fn credentials(cluster: &Cluster, args: CredentialsArgs) -> Result<()> {
    let CredentialsArgs {
        name,
        out,
        install_dir,
        force,
    } = args;
    let device = issued_device(cluster, &name).await?;
    if device.spec.disabled {
        eprintln!("warning: Device {name} is disabled: its agent will be refused until it is enabled");
    }
    let secret_name = device
        .status
        .as_ref()
        .and_then(|s| s.credentials_secret.clone())
        .ok_or_else(|| Error::Malformed(format!("Device {name} names no credentials Secret")))?;
    let secrets: Api<Secret> = Api::namespaced(cluster.client.clone(), &cluster.namespace);
    let secret =
        secrets
            .get(&secret_name)
            .await
            .map_err(cluster.api_error("get", "secrets", DEVICE_ADMIN_ROLE))?;
    let field = |key: &str| -> Option<String> {
        let bytes = secret.data.as_ref()?.get(key)?;
        String::from_utf8(bytes.0.clone())
            .ok()
            .filter(|s| !s.trim().is_empty())
    };
    let need = |key: &str| {
        field(key).ok_or_else(|| Error::Malformed(format!("credentials Secret {secret_name} has no {key:?}")))
    };
    let (Some(relay), Some(relay_domain)) = (field("relay-endpoint"), field("relay-domain")) else {
        return Err(Error::NoRelayPool { name });
    };
    let cert = need("tls.crt")?;
    let key = need("tls.key")?;
    let ca = need("ca.crt")?;
    let config = AgentToml {
        relay,
        relay_domain,
        device: need("device")?,
        trust_domain: trust_domain(&cert),
        cert: install_dir.join("device.crt").display().to_string(),
        key: install_dir.join("device.key").display().to_string(),
        ca: install_dir.join("ca.crt").display().to_string(),
        allow: device.spec.allowed_ports.clone(),
    };
    let toml = toml::to_string(&config).map_err(|e| Error::Malformed(format!("agent.toml: {e}")))?;
    let header = format!(
        "# Tether agent configuration for Device {}/{name}, written by `kubectl tether device credentials`.\n\
         # `allow` starts as the Device's allowed ports, served on 127.0.0.1; narrow it, or map a port to\n\
         # another address with {{ port = N, target = \"host:port\" }} (see docs/operations.md).\n",
        cluster.namespace
    );
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&out)
        .map_err(Error::io(format!("cannot create {}", out.display())))?;
    write_file(&out.join("device.crt"), &cert, 0o644, force)?;
    write_file(&out.join("device.key"), &key, 0o600, force)?;
    write_file(&out.join("ca.crt"), &ca, 0o644, force)?;
    write_file(&out.join("agent.toml"), &format!("{header}{toml}"), 0o644, force)?;
    println!(
        "wrote {dir}/device.crt, device.key (0600), ca.crt and agent.toml for Device {ns}/{name}; \
         install them in {install} on the device and run: tether-agent --config {install}/agent.toml",
        dir = out.display(),
        ns = cluster.namespace,
        install = install_dir.display(),
    );
    Ok(())
}

/// Reads Device `name`, waiting (a watch) until the operator has recorded its credentials Secret.
async fn issued_device(cluster: &Cluster, name: &str) -> Result<Device> {
    let api: Api<Device> = Api::namespaced(cluster.client.clone(), &cluster.namespace);
    let issued = |d: &Device| d.status.as_ref().is_some_and(|s| s.credentials_secret.is_some());
    match api.get(name).await {
        Ok(d) if issued(&d) => return Ok(d),
        Ok(_) => {}
        Err(e) if is_not_found(&e) => {
            return Err(Error::DeviceNotFound {
                name: name.to_owned(),
                namespace: cluster.namespace.clone(),
            });
        }
        Err(e) => return Err(cluster.api_error("get", DEVICES, DEVICE_ADMIN_ROLE)(e)),
    }
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut events = watcher::watcher(api, config).boxed();
    let timeout = cluster.args.wait_timeout;
    let waited = tokio::time::timeout(timeout, async {
        while let Some(event) = events.next().await {
            match event {
                Ok(watcher::Event::Apply(d) | watcher::Event::InitApply(d)) if issued(&d) => return Ok(d),
                Ok(watcher::Event::Delete(_)) => {
                    return Err(Error::DeviceNotFound {
                        name: name.to_owned(),
                        namespace: cluster.namespace.clone(),
                    });
                }
                Err(watcher::Error::InitialListFailed(e) | watcher::Error::WatchStartFailed(e)) => {
                    return Err(cluster.api_error("watch", DEVICES, DEVICE_ADMIN_ROLE)(e));
                }
                _ => {}
            }
        }
        Err(Error::Malformed("the watch ended".into()))
    })
    .await;
    waited.unwrap_or_else(|_| {
        Err(Error::Timeout {
            what: format!("Device {name} has no credentials"),
            after: timeout,
            message: format!(
                "is the Tether operator running and watching namespace {:?}?",
                cluster.namespace
            ),
        })
    })
}

/// The SPIFFE trust domain in the certificate's URI SAN (`spiffe://<td>/ns/...`), so the agent
/// checks its identity in the right domain.
fn trust_domain(cert_pem: &str) -> Option<String> {
    let certs = tether_net::tls::parse_certs("device certificate", "Secret", cert_pem.as_bytes()).ok()?;
    tether_net::tls::uri_sans(certs.first()?)
        .iter()
        .find_map(|uri| Some(uri.strip_prefix("spiffe://")?.split_once("/ns/")?.0.to_owned()))
}

/// Writes `text` to `path` with `mode` from the first byte (no window with wider permissions).
fn write_file(path: &Path, text: &str, mode: u32, force: bool) -> Result<()> {
    if force {
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(format!("cannot replace {}", path.display()))(e)),
        }
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| {
            let what = if e.kind() == std::io::ErrorKind::AlreadyExists {
                format!("{} exists (use --force to replace it)", path.display())
            } else {
                format!("cannot write {}", path.display())
            };
            Error::io(what)(e)
        })?;
    file.write_all(text.as_bytes())
        .map_err(Error::io(format!("cannot write {}", path.display())))
}
