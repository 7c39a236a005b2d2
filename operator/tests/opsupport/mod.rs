//! Shared helpers for the operator's tests against the real API server: install the CRDs, apply
//! the shipped RBAC into a test namespace, and run the operator in-process under its own
//! ServiceAccount token.

#![allow(dead_code)]

pub mod ssh;

use std::{path::PathBuf, time::Duration};

use anyhow::Context as _;
use k8s_openapi::api::core::v1::Secret;
use kube::{
    Api, Client, ResourceExt,
    api::{ListParams, Patch, PatchParams},
};
use tether_operator::args::{Args, Controller};
use tether_tests::testenv::{TempNs, TestEnv, run};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// The workspace root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Applies `crds/*.yaml` (server-side, so concurrent tests agree) and waits until served.
pub fn install_crds(env: &TestEnv) -> anyhow::Result<()> {
    run(env
        .kubectl()
        .args(["apply", "--server-side", "--force-conflicts", "-f"])
        .arg(repo().join("crds")))?;
    for crd in [
        "devices.tether.dev",
        "devicestreams.tether.dev",
        "relaypools.tether.dev",
    ] {
        run(env
            .kubectl()
            .args(["wait", "--for=condition=Established", "--timeout=60s"])
            .arg(format!("crd/{crd}")))?;
    }
    Ok(())
}

/// `kubectl apply -f -` with `yaml` on stdin; returns (success, stdout + stderr).
pub fn kubectl_apply(env: &TestEnv, yaml: &str, extra: &[&str]) -> anyhow::Result<(bool, String)> {
    use std::io::Write as _;
    let mut child = env
        .kubectl()
        .args(["apply", "-f", "-"])
        .args(extra)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    child.stdin.take().context("stdin")?.write_all(yaml.as_bytes())?;
    let out = child.wait_with_output()?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok((out.status.success(), text))
}

/// Name suffix for cluster-scoped RBAC objects of the test namespace `ns`.
fn cluster_name(name: &str, ns: &str) -> String {
    format!("{name}-{ns}")
}

/// Applies `deploy/operator/rbac.yaml` with the operator namespace replaced by `ns` and
/// cluster-scoped names suffixed with `-<ns>` (so tests run side by side).
pub fn apply_shipped_rbac(env: &TestEnv, ns: &str) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(repo().join("deploy/operator/rbac.yaml"))?;
    let mut docs = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let mut v: serde_json::Value = serde::Deserialize::deserialize(doc)?;
        // The relays' ClusterRole and binding are not the operator's (fleet tests bind their own).
        if v["metadata"]["labels"]["app.kubernetes.io/name"] == "tether-relay" {
            continue;
        }
        let kind = v["kind"].as_str().unwrap_or_default().to_owned();
        if matches!(kind.as_str(), "ClusterRole" | "ClusterRoleBinding") {
            let name = v["metadata"]["name"].as_str().unwrap_or_default().to_owned();
            v["metadata"]["name"] = cluster_name(&name, ns).into();
        } else {
            v["metadata"]["namespace"] = ns.into();
        }
        if kind == "ClusterRoleBinding" {
            let role = v["roleRef"]["name"].as_str().unwrap_or_default().to_owned();
            v["roleRef"]["name"] = cluster_name(&role, ns).into();
        }
        if let Some(subjects) = v["subjects"].as_array_mut() {
            for s in subjects {
                s["namespace"] = ns.into();
            }
        }
        docs.push(serde_yaml::to_string(&v)?);
    }
    let (ok, out) = kubectl_apply(env, &docs.join("---\n"), &[])?;
    anyhow::ensure!(ok, "applying the shipped RBAC failed: {out}");
    Ok(())
}

/// Binds the device-namespace Secret rules of [`apply_shipped_rbac`] (operator namespace `ns`)
/// in `device_ns`, as deploy/operator/rbac.yaml tells an administrator to.
pub fn bind_device_namespace(env: &TestEnv, ns: &str, device_ns: &str) -> anyhow::Result<()> {
    let out = env
        .kubectl()
        .args([
            "create",
            "rolebinding",
            "tether-operator-device-secrets",
            "-n",
            device_ns,
        ])
        .arg(format!(
            "--clusterrole={}",
            cluster_name("tether-operator-device-secrets", ns)
        ))
        .arg(format!("--serviceaccount={ns}:tether-operator"))
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "binding the device-namespace RBAC failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// Deletes the cluster-scoped RBAC objects of [`apply_shipped_rbac`].
pub fn delete_shipped_rbac(env: &TestEnv, ns: &str) {
    let _ = env
        .kubectl()
        .args(["delete", "--ignore-not-found", "clusterrolebinding"])
        .arg(cluster_name("tether-operator", ns))
        .output();
    let _ = env
        .kubectl()
        .args(["delete", "--ignore-not-found", "clusterrole"])
        .arg(cluster_name("tether-operator", ns))
        .arg(cluster_name("tether-operator-device-secrets", ns))
        .output();
}

/// An operator running in-process.
pub struct Operator {
    /// The operator's namespace (trust anchors, Lease, RelayPool), distinct from the watched one
    /// so that RBAC is exercised across namespaces.
    pub ns: String,
    /// Stops it.
    pub shutdown: CancellationToken,
    /// Its task; `Ok` after a clean shutdown.
    pub task: JoinHandle<Result<(), tether_operator::RunError>>,
    /// Its admin listener (`/metrics`).
    pub admin: std::net::SocketAddr,
    env: TestEnv,
    _guard: TempNs,
}

impl Operator {
    /// Finished reconciles of `controller` (`tether_operator_reconcile_duration_seconds_count`,
    /// observed when a reconcile ends) from its `/metrics` (its own registry).
    pub async fn reconciles(&self, controller: &str) -> anyhow::Result<f64> {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let mut s = tokio::net::TcpStream::connect(self.admin).await?;
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await?;
        let mut text = String::new();
        s.read_to_string(&mut text).await?;
        let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        let samples = tether_net::admin::parse_exposition(body).map_err(anyhow::Error::msg)?;
        let key = format!("tether_operator_reconcile_duration_seconds_count{{controller=\"{controller}\"}}");
        Ok(samples.get(&key).copied().unwrap_or_default())
    }

    /// Waits until a reconcile of `controller` has finished since its count was `since`, so
    /// "nothing changed" checks after it mean something.
    pub async fn reconciled_since(&self, controller: &str, since: f64) -> anyhow::Result<()> {
        tether_tests::testenv::eventually(Duration::from_secs(30), || async {
            let now = self.reconciles(controller).await?;
            anyhow::ensure!(now > since, "no {controller} reconcile since {since}");
            Ok(())
        })
        .await
    }

    /// Stops the operator and checks it shut down cleanly.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        let res = tokio::time::timeout(Duration::from_secs(30), self.task).await;
        delete_shipped_rbac(&self.env, &self.ns);
        res.context("operator did not stop within 30 s")??
            .context("operator failed")?;
        Ok(())
    }
}

/// Test arguments: operator namespace `ns`, watching `watch_ns`, fast trust retry.
pub fn args(ns: &str, watch_ns: &str, identity: &str) -> Args {
    Args {
        namespace: ns.to_owned(),
        watch_namespace: Some(watch_ns.to_owned()),
        trust_domain: "test.tether".into(),
        admin_addr: "127.0.0.1:0".parse().expect("addr"),
        lease_name: "tether-operator".into(),
        identity: identity.into(),
        lease_duration: Duration::from_secs(15),
        renew_deadline: None,
        retry_period: None,
        trust_retry: Duration::from_secs(1),
        controllers: vec![Controller::Device, Controller::DeviceStream],
    }
}

/// A fresh namespace for the operator (deleted when the guard drops).
pub async fn operator_ns(env: &TestEnv) -> anyhow::Result<TempNs> {
    env.temp_ns("tether-sys").await
}

/// Starts the operator in a fresh namespace, watching `watch_ns`; see [`start_operator_in`].
pub async fn start_operator(env: &TestEnv, watch_ns: &str) -> anyhow::Result<Operator> {
    start_operator_in(env, operator_ns(env).await?, watch_ns).await
}

/// Applies the shipped RBAC into the operator namespace `op` and starts the Device and
/// DeviceStream controllers watching `watch_ns` under the `tether-operator` ServiceAccount's
/// token (so any permission missing from the YAML fails).
pub async fn start_operator_in(env: &TestEnv, op: TempNs, watch_ns: &str) -> anyhow::Result<Operator> {
    install_crds(env)?;
    let ns = op.name().to_owned();
    apply_shipped_rbac(env, &ns)?;
    bind_device_namespace(env, &ns, watch_ns)?;
    let client = env.service_account_client(&ns, "tether-operator").await?;
    let shutdown = CancellationToken::new();
    let mut args = args(&ns, watch_ns, "test-operator");
    args.admin_addr = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let admin = args.admin_addr;
    let task = tokio::spawn(tether_operator::run_with_client(client, args, shutdown.clone()));
    Ok(Operator {
        ns,
        shutdown,
        task,
        admin,
        env: env.clone(),
        _guard: op,
    })
}

/// Server-side applies a manifest (YAML) as the admin with the tests' field manager.
pub async fn apply<K>(client: &Client, ns: &str, yaml: &str) -> anyhow::Result<K>
where
    K: kube::Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + serde::Serialize
        + std::fmt::Debug,
{
    let obj: K = serde_yaml::from_str(yaml)?;
    let api: Api<K> = Api::namespaced(client.clone(), ns);
    Ok(api
        .patch(
            &obj.name_any(),
            &PatchParams::apply(tether_tests::testenv::FIELD_MANAGER).force(),
            &Patch::Apply(&obj),
        )
        .await?)
}

/// The string value of `key` in Secret `ns/name` (admin read).
pub async fn secret_value(client: &Client, ns: &str, name: &str, key: &str) -> anyhow::Result<String> {
    let s = Api::<Secret>::namespaced(client.clone(), ns).get(name).await?;
    let v = s
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .with_context(|| format!("Secret {name} has no {key}"))?;
    Ok(String::from_utf8(v.0.clone())?)
}

/// Events (events.k8s.io) in `ns` about object `name`, as `(type, reason)`.
pub async fn events_for(client: &Client, ns: &str, name: &str) -> anyhow::Result<Vec<(String, String)>> {
    let api: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(client.clone(), ns);
    Ok(api
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
        .map(|e| (e.type_.unwrap_or_default(), e.reason.unwrap_or_default()))
        .collect())
}

/// Waits until there is an Event about `name` with `reason`.
pub async fn wait_event(client: &Client, ns: &str, name: &str, reason: &str) -> anyhow::Result<String> {
    tether_tests::testenv::eventually(Duration::from_secs(30), || async {
        let events = events_for(client, ns, name).await?;
        events
            .iter()
            .find(|(_, r)| r == reason)
            .map(|(t, _)| t.clone())
            .with_context(|| format!("no Event {reason} for {name}; have {events:?}"))
    })
    .await
}

/// A relay process stand-in: a real `tether_relay::Relay` in-process on 127.0.0.1, trusting the
/// operator's CA and token key (read from its trust-anchor Secrets), as relays in tests run next
/// to the API server (there is no node).
pub struct TestRelay {
    /// Its service/device port.
    pub addr: std::net::SocketAddr,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl TestRelay {
    /// Starts a relay for `domain` with a serving certificate from the operator's CA in `op_ns`;
    /// its key files go to `dir`.
    pub async fn start(
        admin: &Client,
        op_ns: &str,
        domain: &str,
        dir: &std::path::Path,
    ) -> anyhow::Result<Self> {
        use std::net::{Ipv4Addr, SocketAddr};
        let wait = Duration::from_secs(30);
        let write = |name: &str, text: &str| -> anyhow::Result<PathBuf> {
            let p = dir.join(name);
            std::fs::write(&p, text)?;
            Ok(p)
        };
        let (ca_cert, ca_key) = tether_tests::testenv::eventually(wait, || async {
            Ok((
                secret_value(admin, op_ns, "tether-ca", "tls.crt").await?,
                secret_value(admin, op_ns, "tether-ca", "tls.key").await?,
            ))
        })
        .await?;
        let token_pub = tether_tests::testenv::eventually(wait, || {
            secret_value(admin, op_ns, "tether-token-key", "public.pem")
        })
        .await?;
        let ca = tether_net::pki::Ca::from_pem(&ca_cert, &ca_key)?;
        let serving = ca.issue_server(
            &[domain.to_owned()],
            &[Ipv4Addr::LOCALHOST.into()],
            Duration::from_secs(86_400),
        )?;
        let files = tether_relay::TlsFiles {
            cert: &write("relay.crt", &serving.cert_pem)?,
            key: &write("relay.key", &serving.key_pem)?,
            client_ca: &write("relay-ca.crt", &ca_cert)?,
            token_public_key: &write("token.pub", &token_pub)?,
        };
        let loopback = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
        let config = tether_relay::RelayConfig::load(
            loopback,
            loopback,
            domain,
            "test.tether",
            files,
            tether_relay::Limits::default(),
        )?;
        let relay = tether_relay::Relay::bind(config).await?;
        let addr = relay.local_addr();
        let stop = CancellationToken::new();
        let task = tokio::spawn(relay.run(stop.clone()));
        Ok(Self { addr, stop, task })
    }

    /// Stops the relay.
    pub async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}
