//! Leader election and the admin port on the real API server: one of two operator replicas
//! leads, the other stands by and takes over when the leader shuts down (releasing the Lease);
//! `/live`, `/ready` and `/metrics` answer.

mod opsupport;

use std::time::Duration;

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
        opsupport::install_crds(&env)?;
        opsupport::apply_shipped_rbac(&env, &ns)?;
        opsupport::bind_device_namespace(&env, &ns, &ns)?;
        let admin = env.client();
        let leases: Api<Lease> = Api::namespaced(admin.clone(), &ns);
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
        eventually(Duration::from_secs(30), || async {
            ensure!(holder(&leases).await?.as_deref() == Some("replica-a"), "a does not lead yet");
            Ok(())
        })
        .await?;
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
            "tether_operator_leader 1",
        ] {
            ensure!(metrics.contains(name), "/metrics lacks {name}:\n{metrics}");
        }
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
