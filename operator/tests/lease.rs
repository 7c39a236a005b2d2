//! Leader election and the admin port on the real API server: one of two operator replicas
//! leads, the other stands by and takes over when the leader shuts down (releasing the Lease);
//! `/live`, `/ready` and `/metrics` answer, each replica with its own metrics. And a leader cut
//! off from the API server (its connection black-holed) stops reconciling before the standby
//! starts leading.

mod opsupport;

use std::{collections::BTreeMap, net::SocketAddr, time::Duration};

use anyhow::{Context as _, ensure};
use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use opsupport::{apply, args, secret_value};
use tether_api::Device;
use tether_tests::testenv::{TestEnv, eventually};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio_util::sync::CancellationToken;

async fn http_get(addr: std::net::SocketAddr, path: &str) -> anyhow::Result<String> {
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await?;
    let mut out = String::new();
    s.read_to_string(&mut out).await?;
    Ok(out)
}

fn free_addr() -> anyhow::Result<std::net::SocketAddr> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

/// `/metrics` of the operator at `addr`, parsed (exact values, not substrings).
async fn scrape(addr: std::net::SocketAddr) -> anyhow::Result<BTreeMap<String, f64>> {
    let text = http_get(addr, "/metrics").await?;
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    tether_net::admin::parse_exposition(body).map_err(anyhow::Error::msg)
}

/// `tether_operator_leader` of the operator at `addr`.
async fn leader_gauge(addr: std::net::SocketAddr) -> anyhow::Result<f64> {
    scrape(addr)
        .await?
        .get("tether_operator_leader")
        .copied()
        .context("no tether_operator_leader")
}

/// CRDs and the shipped RBAC with operator and device namespace `ns`; the admin client and the
/// Lease API there.
fn install(env: &TestEnv, ns: &str) -> anyhow::Result<(kube::Client, Api<Lease>)> {
    opsupport::install_crds(env)?;
    opsupport::apply_shipped_rbac(env, ns)?;
    opsupport::bind_device_namespace(env, ns, ns)?;
    let admin = env.client();
    let leases = Api::namespaced(admin.clone(), ns);
    Ok((admin, leases))
}

/// Waits (30 s) until `identity` holds the Lease.
async fn wait_holder(api: &Api<Lease>, identity: &str) -> anyhow::Result<()> {
    eventually(Duration::from_secs(30), || async {
        let now = holder(api).await?;
        ensure!(
            now.as_deref() == Some(identity),
            "{identity} does not lead yet (holder {now:?})"
        );
        Ok(())
    })
    .await
}

async fn holder(api: &Api<Lease>) -> anyhow::Result<Option<String>> {
    Ok(api
        .get_opt("tether-operator")
        .await?
        .and_then(|l| l.spec)
        .and_then(|s| s.holder_identity))
}

#[tokio::test]
async fn one_replica_leads_and_the_standby_takes_over() -> anyhow::Result<()> {
    let Some(env) = TestEnv::attach("one_replica_leads_and_the_standby_takes_over").await else {
        return Ok(());
    };
    env.with_temp_ns("op-lease", |env, ns| async move {
        let (admin, leases) = install(&env, &ns)?;
        let start = |identity: &'static str, addr| {
            let env = env.clone();
            let ns = ns.clone();
            async move {
                let client = env.service_account_client(&ns, "tether-operator").await?;
                let shutdown = CancellationToken::new();
                let mut a = args(&ns, &ns, identity);
                a.admin_addr = addr;
                let task = tokio::spawn(tether_operator::run_with_client(client, a, shutdown.clone()));
                anyhow::Ok((shutdown, task))
            }
        };
        let (addr_a, addr_b) = (free_addr()?, free_addr()?);
        let (stop_a, task_a) = start("replica-a", addr_a).await?;
        wait_holder(&leases, "replica-a").await?;
        let (stop_b, task_b) = start("replica-b", addr_b).await?;

        // Admin endpoints of the leader; the standby is ready too (rolling updates must proceed).
        let live = eventually(Duration::from_secs(10), || http_get(addr_a, "/live")).await?;
        ensure!(live.starts_with("HTTP/1.1 200"), "{live}");
        apply::<Device>(&admin, &ns, &format!(
            "apiVersion: tether.dev/v1alpha1\nkind: Device\nmetadata: {{name: pump, namespace: {ns}}}\nspec: {{allowedPorts: [22]}}\n"
        ))
        .await?;
        eventually(Duration::from_secs(30), || secret_value(&admin, &ns, "pump-tether-credentials", "tls.crt")).await?;
        let metrics = http_get(addr_a, "/metrics").await?;
        for name in [
            "tether_operator_reconciles_total{controller=\"device\"}",
            "tether_operator_reconcile_duration_seconds_bucket{controller=\"device\"",
        ] {
            ensure!(metrics.contains(name), "/metrics lacks {name}:\n{metrics}");
        }
        // Each replica serves its own registry: A leads and has reconciled, B has not.
        ensure!(leader_gauge(addr_a).await? == 1.0, "A does not report leading");
        ensure!(leader_gauge(addr_b).await? == 0.0, "B reports leading");
        let b = scrape(addr_b).await?;
        ensure!(
            !b.keys().any(|k| k.starts_with("tether_operator_reconciles_total")),
            "the standby reports reconciles: {b:?}"
        );
        eventually(Duration::from_secs(15), || async {
            let ready = http_get(addr_b, "/ready").await?;
            ensure!(ready.starts_with("HTTP/1.1 200"), "standby not ready: {ready}");
            Ok(())
        })
        .await?;
        tokio::time::sleep(Duration::from_secs(6)).await;
        ensure!(holder(&leases).await?.as_deref() == Some("replica-a"), "the standby stole the Lease");

        // Graceful shutdown releases the Lease; the standby takes over well before it would expire.
        stop_a.cancel();
        tokio::time::timeout(Duration::from_secs(20), task_a).await.context("leader did not stop")???;
        eventually(Duration::from_secs(12), || async {
            ensure!(holder(&leases).await?.as_deref() == Some("replica-b"), "b has not taken over");
            ensure!(leader_gauge(addr_b).await? == 1.0, "B does not report leading yet");
            Ok(())
        })
        .await?;
        stop_b.cancel();
        tokio::time::timeout(Duration::from_secs(20), task_b).await.context("standby did not stop")???;
        ensure!(holder(&leases).await?.is_none(), "Lease not released");
        opsupport::delete_shipped_rbac(&env, &ns);
        Ok(())
    })
    .await
}

/// A TCP forwarder to the API server that can black-hole the connection: while blocked it
/// forwards nothing either way and holds new connections (a partitioned network, or an API
/// server that stopped answering). Requests the leader sends meanwhile hang; nothing is refused.
struct Cutoff {
    addr: SocketAddr,
    blocked: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Cutoff {
    async fn start(upstream: SocketAddr) -> anyhow::Result<Self> {
        // The same IP as the API server, so its serving certificate (IP SAN) still matches.
        let listener = tokio::net::TcpListener::bind((upstream.ip(), 0)).await?;
        let addr = listener.local_addr()?;
        let (blocked, rx) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let rx = rx.clone();
                tokio::spawn(async move {
                    let mut gate = rx.clone();
                    if gate.wait_for(|b| !*b).await.is_err() {
                        return;
                    }
                    let Ok(outbound) = tokio::net::TcpStream::connect(upstream).await else {
                        return;
                    };
                    let (ri, wi) = inbound.into_split();
                    let (ro, wo) = outbound.into_split();
                    tokio::join!(pipe(ri, wo, rx.clone()), pipe(ro, wi, rx));
                });
            }
        });
        Ok(Self { addr, blocked, task })
    }

    fn block(&self) {
        self.blocked.send_replace(true);
    }
}

impl Drop for Cutoff {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Copies `from` to `to`, holding each chunk while the cutoff is blocked.
async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut gate: tokio::sync::watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if gate.wait_for(|b| !*b).await.is_err() || to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

#[tokio::test]
async fn a_leader_cut_off_from_the_api_stops_before_the_standby_leads() -> anyhow::Result<()> {
    let Some(env) = TestEnv::attach("a_leader_cut_off_from_the_api_stops_before_the_standby_leads").await
    else {
        return Ok(());
    };
    env.with_temp_ns("op-cutoff", |env, ns| async move {
        let (admin, leases) = install(&env, &ns)?;
        let url = &env.config().cluster_url;
        let upstream = tokio::net::lookup_host(format!(
            "{}:{}",
            url.host().context("API host")?.trim_matches(['[', ']']),
            url.port_u16().unwrap_or(443)
        ))
        .await?
        .next()
        .context("API address")?;
        let cutoff = Cutoff::start(upstream).await?;

        // Short timing (production: 15 s / 10 s / 2 s): the margin between the leader giving up
        // (renew deadline) and a standby taking over (lease duration) is 2 s.
        let quick = |identity: &str, addr| {
            let mut a = args(&ns, &ns, identity);
            a.admin_addr = addr;
            a.lease_duration = Duration::from_secs(4);
            a.renew_deadline = Some(Duration::from_secs(2));
            a.retry_period = Some(Duration::from_millis(500));
            a
        };
        // Replica A talks to the API server only through the cutoff.
        let token = env.service_account_token(&ns, "tether-operator").await?;
        let mut config = env.config().clone();
        config.cluster_url = format!("https://{}", cutoff.addr).parse()?;
        config.auth_info = kube::config::AuthInfo {
            token: Some(token.into()),
            ..kube::config::AuthInfo::default()
        };
        let client_a = kube::Client::try_from(config)?;
        let (addr_a, addr_b) = (free_addr()?, free_addr()?);
        let stop_a = CancellationToken::new();
        let task_a = tokio::spawn(tether_operator::run_with_client(
            client_a,
            quick("replica-a", addr_a),
            stop_a.clone(),
        ));
        wait_holder(&leases, "replica-a").await?;
        let device = |name: &str| {
            format!(
                "apiVersion: tether.dev/v1alpha1\nkind: Device\nmetadata: {{name: {name}, namespace: {ns}}}\n\
                 spec: {{allowedPorts: [22]}}\n"
            )
        };
        apply::<Device>(&admin, &ns, &device("pump-a")).await?;
        eventually(Duration::from_secs(30), || {
            secret_value(&admin, &ns, "pump-a-tether-credentials", "tls.crt")
        })
        .await
        .context("A reconciles")?;
        let client_b = env.service_account_client(&ns, "tether-operator").await?;
        let stop_b = CancellationToken::new();
        let task_b = tokio::spawn(tether_operator::run_with_client(
            client_b,
            quick("replica-b", addr_b),
            stop_b.clone(),
        ));
        eventually(Duration::from_secs(15), || async {
            let ready = http_get(addr_b, "/ready").await?;
            ensure!(ready.starts_with("HTTP/1.1 200"), "standby not ready: {ready}");
            ensure!(leader_gauge(addr_b).await? == 0.0, "B leads");
            Ok(())
        })
        .await?;

        // Cut A off. It must notice within its renew deadline and stop; B may only start once the
        // Lease has expired. "A stopped" is the first moment A's own gauge reads 0 or its admin
        // port is gone (polled, so it is if anything late, which only makes the check harder).
        let cut = k8s_openapi::jiff::Timestamp::now();
        cutoff.block();
        let a_stopped = eventually(Duration::from_secs(20), || async {
            match leader_gauge(addr_a).await {
                Ok(1.0) => anyhow::bail!("A still leads"),
                _ => Ok(k8s_openapi::jiff::Timestamp::now()),
            }
        })
        .await?;
        let result = tokio::time::timeout(Duration::from_secs(20), task_a)
            .await
            .context("A did not exit")??;
        ensure!(
            matches!(result, Err(tether_operator::RunError::LostLease)),
            "A must exit with LostLease (so the Deployment restarts it), got {result:?}"
        );
        let lease = eventually(Duration::from_secs(20), || async {
            let lease = leases.get("tether-operator").await?;
            let spec = lease.spec.clone().context("spec")?;
            ensure!(spec.holder_identity.as_deref() == Some("replica-b"), "b has not taken over");
            Ok(spec)
        })
        .await?;
        let b_started = lease.acquire_time.context("acquireTime")?.0;
        eprintln!(
            "cut at {cut}; A stopped leading by {a_stopped} (+{:?}); B acquired the Lease at {b_started} (+{:?})",
            a_stopped.duration_since(cut),
            b_started.duration_since(cut)
        );
        ensure!(
            a_stopped < b_started,
            "two leaders: A still led at {a_stopped}, B leads since {b_started}"
        );
        // B really leads: it reconciles a new Device.
        apply::<Device>(&admin, &ns, &device("pump-b")).await?;
        eventually(Duration::from_secs(30), || {
            secret_value(&admin, &ns, "pump-b-tether-credentials", "tls.crt")
        })
        .await
        .context("B reconciles")?;
        ensure!(leader_gauge(addr_b).await? == 1.0, "B does not report leading");
        stop_b.cancel();
        tokio::time::timeout(Duration::from_secs(20), task_b).await.context("B did not stop")???;
        drop(cutoff);
        opsupport::delete_shipped_rbac(&env, &ns);
        Ok(())
    })
    .await
}
