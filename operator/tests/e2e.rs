//! End to end: a Device and a DeviceStream applied with the operator running (under its
//! shipped RBAC); the device credentials and the stream token are taken from their Secrets,
//! written to files, and a real relay, agent and client (in-process, real TLS and sockets) carry
//! bytes through the tunnel to an echo service on the "device", and real OpenSSH (`ssh` to an
//! `sshd`, through a local forward) when `/usr/sbin/sshd` and `ssh` are installed and we are root.

mod opsupport;

use std::{collections::BTreeMap, net::Ipv4Addr, sync::Arc, time::Duration};

use anyhow::{Context as _, ensure};
use opsupport::{apply, secret_value, ssh::Sshd, start_operator};
use tether_api::{Device, DeviceStream, RelayPool};
use tether_net::tls;
use tether_proto::name::DeviceKey;
use tether_tests::testenv::{TestEnv, eventually};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio_util::sync::CancellationToken;

const DOMAIN: &str = "relay.test";
const WAIT: Duration = Duration::from_secs(30);

/// Builds a connect target from a DeviceStream's token Secret.
async fn target_from_secret(
    admin: &kube::Client,
    ns: &str,
    secret: &str,
    device: &DeviceKey,
    port: u16,
) -> anyhow::Result<tether_cli::connect::Target> {
    let token = eventually(WAIT, || secret_value(admin, ns, secret, "token")).await?;
    let server_name = secret_value(admin, ns, secret, "server-name").await?;
    ensure!(
        server_name == device.server_name(DOMAIN),
        "server-name {server_name}"
    );
    let endpoint = secret_value(admin, ns, secret, "endpoint").await?;
    let (host, relay_port) = endpoint.rsplit_once(':').context("endpoint host:port")?;
    let cas = tls::parse_certs(
        "CA",
        "token Secret",
        secret_value(admin, ns, secret, "ca.crt").await?.as_bytes(),
    )?;
    Ok(tether_cli::connect::Target {
        relay_host: host.to_owned(),
        relay_port: relay_port.parse()?,
        relay_domain: DOMAIN.to_owned(),
        tls: Arc::new(tls::service_client_config(&cas, DOMAIN)?),
        device: device.clone(),
        port,
        token: token.as_str().into(),
        proxy: None,
    })
}

#[tokio::test]
async fn device_and_stream_secrets_open_a_tunnel_through_a_real_relay_and_agent() -> anyhow::Result<()> {
    let Some(env) =
        TestEnv::attach("device_and_stream_secrets_open_a_tunnel_through_a_real_relay_and_agent").await
    else {
        return Ok(());
    };
    env.with_temp_ns("op-e2e", |env, ns| async move {
        let operator = start_operator(&env, &ns).await?;
        let admin = env.client();
        let dir = tempfile::tempdir()?;
        let write = |name: &str, text: &str| -> anyhow::Result<std::path::PathBuf> {
            let p = dir.path().join(name);
            std::fs::write(&p, text)?;
            Ok(p)
        };

        // The relay trusts the operator's CA and token key (from the trust-anchor Secrets).
        let relay = opsupport::TestRelay::start(&admin, &operator.ns, DOMAIN, dir.path()).await?;
        let relay_addr = relay.addr;

        // The user path: a RelayPool (advertising the local relay), a Device, a DeviceStream.
        let op_ns = &operator.ns;
        apply::<RelayPool>(&admin, op_ns, &format!(
            "apiVersion: tether.dev/v1alpha1\nkind: RelayPool\n\
             metadata: {{name: relays, namespace: {op_ns}, annotations: {{tether.dev/endpoint: '{relay_addr}'}}}}\n\
             spec: {{relayDomain: {DOMAIN}, minReplicas: 1, maxReplicas: 2}}\n"
        ))
        .await?;
        apply::<Device>(&admin, &ns, &format!(
            "apiVersion: tether.dev/v1alpha1\nkind: Device\nmetadata: {{name: pump-7, namespace: {ns}}}\n\
             spec: {{allowedPorts: [7, 22]}}\n"
        ))
        .await?;
        for (name, port) in [("pump-7-echo", 7), ("pump-7-ssh", 22)] {
            apply::<DeviceStream>(&admin, &ns, &format!(
                "apiVersion: tether.dev/v1alpha1\nkind: DeviceStream\nmetadata: {{name: {name}, namespace: {ns}}}\n\
                 spec: {{device: pump-7, port: {port}, ttl: 10m}}\n"
            ))
            .await?;
        }

        // The device: its credentials Secret, written to files, configures the agent.
        let creds = "pump-7-tether-credentials";
        let endpoint = eventually(WAIT, || secret_value(&admin, &ns, creds, "relay-endpoint")).await?;
        ensure!(endpoint == relay_addr.to_string(), "relay-endpoint {endpoint}");
        let relay_domain = secret_value(&admin, &ns, creds, "relay-domain").await?;
        let device: DeviceKey = DeviceKey::parse(&secret_value(&admin, &ns, creds, "device").await?)?;
        let (host, port) = endpoint.rsplit_once(':').context("endpoint host:port")?;
        let mut agent_config = tether_agent::Config::new(
            host,
            port.parse()?,
            relay_domain.clone(),
            write("device.crt", &secret_value(&admin, &ns, creds, "tls.crt").await?)?,
            write("device.key", &secret_value(&admin, &ns, creds, "tls.key").await?)?,
            write("device-ca.crt", &secret_value(&admin, &ns, creds, "ca.crt").await?)?,
        );
        agent_config.device = Some(device.clone());
        agent_config.proxy_from_env = false;
        let echo = tether_net::testing::echo_server().await?;
        let sshd = Sshd::start(dir.path()).await?;
        // Under CI the OpenSSH part must run: a missing sshd is a failure, not a note.
        ensure!(
            sshd.is_some() || !tether_net::testing::required("TETHER_REQUIRE_OPENSSH"),
            "OpenSSH part required (CI=true or TETHER_REQUIRE_OPENSSH) but it needs root, /usr/sbin/sshd and ssh"
        );
        let mut allow = BTreeMap::from([(7, tether_agent::config::Target { host: echo.ip().to_string(), port: echo.port() })]);
        if let Some(sshd) = &sshd {
            allow.insert(22, tether_agent::config::Target { host: "127.0.0.1".into(), port: sshd.port });
        }
        agent_config.allow = allow;
        let agent = tether_agent::Agent::new(agent_config)?;
        let mut state = agent.state();
        let stop_agent = CancellationToken::new();
        let agent_task = tokio::spawn(agent.run(stop_agent.clone()));
        tokio::time::timeout(WAIT, state.wait_for(|s| matches!(s, tether_agent::AgentState::Connected { .. })))
            .await
            .context("agent did not connect")??;

        // The user: the token Secret (token, endpoint, server name, CA) opens the stream.
        let target = target_from_secret(&admin, &ns, "pump-7-echo-tether-token", &device, 7).await?;
        let mut stream = tether_cli::connect::open(&target).await?;
        let msg = b"hello through the operator's credentials\n";
        stream.tls.write_all(msg).await?;
        stream.tls.flush().await?;
        let mut got = stream.early.to_vec();
        while got.len() < msg.len() {
            let mut buf = [0u8; 256];
            let n = tokio::time::timeout(WAIT, stream.tls.read(&mut buf)).await.context("echo timed out")??;
            ensure!(n > 0, "tunnel closed early");
            got.extend_from_slice(&buf[..n]);
        }
        ensure!(got == msg, "echo mismatch: {:?}", String::from_utf8_lossy(&got));

        // A token for another port is refused by the relay/agent (consent is per port).
        let mut wrong = target.clone();
        wrong.port = 2222;
        ensure!(tether_cli::connect::open(&wrong).await.is_err(), "a token for port 7 opened port 2222");

        // Real OpenSSH through a local forward (`tether connect --listen`) with the ssh stream's token.
        if let Some(sshd) = &sshd {
            let target = target_from_secret(&admin, &ns, "pump-7-ssh-tether-token", &device, 22).await?;
            let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
            let local = listener.local_addr()?;
            let stop_fwd = CancellationToken::new();
            let fwd = tokio::spawn(tether_cli::connect::listen(target, listener, stop_fwd.clone()));
            let out = sshd.run_ssh(local.port(), "echo tether-ssh-ok; uname -s").await?;
            ensure!(out.contains("tether-ssh-ok"), "ssh output: {out}");
            stop_fwd.cancel();
            let _ = fwd.await;
        } else {
            eprintln!("note: OpenSSH part skipped (needs root, /usr/sbin/sshd and ssh; CI requires it)");
        }

        drop(stream);
        stop_agent.cancel();
        let _ = agent_task.await;
        relay.stop().await;
        operator.stop().await
    })
    .await
}
