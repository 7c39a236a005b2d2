//! `kubectl tether` end to end, invoked the way kubectl invokes it: the environment's real
//! `kubectl` finds `kubectl-tether` on PATH. The operator runs in-process under its shipped RBAC,
//! a real relay and agent run on loopback, the "device" serves real OpenSSH and an HTTP page.
//!
//! * a device admin (bound to `tether-device-admin`) enrols the Device and exports its
//!   credentials; the bundle's agent.toml starts the agent;
//! * a stream user (bound to `tether-stream-user`) runs `kubectl tether ssh` (remote output and
//!   exit code come back; the DeviceStream is gone afterwards), `port-forward` + curl, the tables,
//!   and cannot read the CA or token-key Secrets;
//! * a plugin killed with SIGKILL leaves its stream to the TTL, which expires it;
//! * errors: Device missing, port not allowed, RBAC denied (no binding; a stream user enrolling).

#[path = "../../operator/tests/opsupport/mod.rs"]
mod opsupport;

use std::{
    io::{BufRead as _, BufReader},
    net::{Ipv4Addr, SocketAddr},
    os::unix::{fs::PermissionsExt as _, process::CommandExt as _},
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::Duration,
};

use anyhow::{Context as _, ensure};
use k8s_openapi::api::core::v1::Secret;
use kube::{Api, Client, ResourceExt, api::ListParams};
use opsupport::{TestRelay, apply, kubectl_apply, ssh::Sshd, start_operator};
use tether_api::{DeviceStream, RelayPool, StreamPhase};
use tether_tests::testenv::{TestEnv, eventually};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio_util::sync::CancellationToken;

const DOMAIN: &str = "relay.test";
const WAIT: Duration = Duration::from_secs(30);
const PAGE: &str = "hello from the device's web page\n";

/// Runs `kubectl tether ...` as one user: kubectl from the environment, `kubectl-tether` on PATH.
struct User {
    kubectl: PathBuf,
    path: String,
    kubeconfig: PathBuf,
    ns: String,
}

impl User {
    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.kubectl);
        // Cluster flags first: everything after `--` belongs to ssh.
        cmd.arg("tether")
            .args(["--kubeconfig"])
            .arg(&self.kubeconfig)
            .args(["-n", &self.ns])
            .args(args)
            .env("PATH", &self.path)
            .env("RUST_LOG", "warn");
        cmd
    }

    /// Runs to completion (on a blocking thread: the in-process relay and agent keep running).
    async fn run(&self, args: &[&str]) -> anyhow::Result<Output> {
        let mut cmd = self.command(args);
        Ok(tokio::task::spawn_blocking(move || cmd.output()).await??)
    }

    /// Runs and expects failure with `needles` in stderr.
    async fn fails_with(&self, args: &[&str], needles: &[&str]) -> anyhow::Result<()> {
        let out = self.run(args).await?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        ensure!(!out.status.success(), "{args:?} succeeded; stderr: {stderr}");
        for n in needles {
            ensure!(stderr.contains(n), "{args:?}: stderr lacks {n:?}: {stderr}");
        }
        Ok(())
    }
}

/// A kubeconfig like the admin's, authenticating with `token` instead.
fn kubeconfig_with_token(admin: &Path, token: &str, out: &Path) -> anyhow::Result<PathBuf> {
    let mut kc: serde_yaml::Value = serde_yaml::from_str(&std::fs::read_to_string(admin)?)?;
    let users = kc["users"].as_sequence_mut().context("kubeconfig users")?;
    for u in users {
        u["user"] = serde_yaml::from_str(&format!("{{token: {token}}}"))?;
    }
    std::fs::write(out, serde_yaml::to_string(&kc)?)?;
    std::fs::set_permissions(out, std::fs::Permissions::from_mode(0o600))?;
    Ok(out.to_owned())
}

/// Applies a shipped ClusterRole (deploy/rbac/) renamed `<name>-<ns>` and binds it in `ns` to
/// ServiceAccount `sa`; returns the ClusterRole's name.
fn bind_shipped_role(env: &TestEnv, file: &str, ns: &str, sa: &str) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(opsupport::repo().join("deploy/rbac").join(file))?;
    let mut role: serde_json::Value = serde_yaml::from_str(&text)?;
    ensure!(role["kind"] == "ClusterRole", "{file} is not a ClusterRole");
    let name = format!("{}-{ns}", role["metadata"]["name"].as_str().context("name")?);
    role["metadata"]["name"] = name.clone().into();
    let binding = format!(
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata: {{name: {sa}, namespace: {ns}}}\n\
         roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: {name}}}\n\
         subjects: [{{kind: ServiceAccount, name: {sa}, namespace: {ns}}}]\n"
    );
    let (ok, out) = kubectl_apply(
        env,
        &format!("{}---\n{binding}", serde_yaml::to_string(&role)?),
        &[],
    )?;
    ensure!(ok, "applying {file}: {out}");
    Ok(name)
}

/// An HTTP server answering every request with [`PAGE`].
async fn web_page() -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let reply = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{PAGE}",
                    PAGE.len()
                );
                let _ = s.write_all(reply.as_bytes()).await;
            });
        }
    });
    Ok(addr)
}

/// The plugin's DeviceStreams in `ns`, by name.
async fn plugin_streams(admin: &Client, ns: &str) -> anyhow::Result<Vec<DeviceStream>> {
    Ok(Api::<DeviceStream>::namespaced(admin.clone(), ns)
        .list(&ListParams::default().labels("app.kubernetes.io/created-by=kubectl-tether"))
        .await?
        .items)
}

fn kill(pid: u32, signal: &str) -> anyhow::Result<()> {
    let st = Command::new("kill").args([signal, &pid.to_string()]).status()?;
    ensure!(st.success(), "kill {signal} {pid} failed");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_tether_ssh_port_forward_credentials_and_rbac() -> anyhow::Result<()> {
    let Some(env) = TestEnv::attach("kubectl_tether_ssh_port_forward_credentials_and_rbac").await else {
        return Ok(());
    };
    env.with_temp_ns("kubectl-tether", |env, ns| async move {
        let dir = tempfile::tempdir()?;
        let Some(sshd) = Sshd::start(dir.path()).await? else {
            // test.sh installs OpenSSH and CI runs as root; a developer without them is told.
            eprintln!("skipped: kubectl tether ssh needs root, /usr/sbin/sshd and ssh");
            anyhow::ensure!(
                std::env::var("TETHER_REQUIRE_K8S").as_deref() != Ok("1"),
                "OpenSSH missing in CI"
            );
            return Ok(());
        };
        let operator = start_operator(&env, &ns).await?;
        let admin = env.client();
        let relay = TestRelay::start(&admin, &operator.ns, DOMAIN, dir.path()).await?;
        let op_ns = operator.ns.clone();
        apply::<RelayPool>(
            &admin,
            &op_ns,
            &format!(
                "apiVersion: tether.dev/v1alpha1\nkind: RelayPool\n\
             metadata: {{name: relays, namespace: {op_ns}, annotations: {{tether.dev/endpoint: '{}'}}}}\n\
             spec: {{relayDomain: {DOMAIN}, minReplicas: 1, maxReplicas: 2}}\n",
                relay.addr
            ),
        )
        .await?;

        // `kubectl` finds the plugin on PATH, as it would after `cp kubectl-tether /usr/local/bin`.
        let bin = dir.path().join("bin");
        std::fs::create_dir_all(&bin)?;
        std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_kubectl-tether"), bin.join("kubectl-tether"))?;
        let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
        let mut roles = Vec::new();
        let mut user = |sa: &str, role: Option<&str>| -> anyhow::Result<User> {
            if let Some(file) = role {
                roles.push(bind_shipped_role(&env, file, &ns, sa)?);
            }
            Ok(User {
                kubectl: env.tool("kubectl"),
                path: path.clone(),
                kubeconfig: dir.path().join(format!("{sa}.kubeconfig")),
                ns: ns.clone(),
            })
        };
        let carol = user("carol", Some("tether-device-admin.yaml"))?;
        let alice = user("alice", Some("tether-stream-user.yaml"))?;
        let bob = user("bob", None)?;
        for (u, sa) in [(&carol, "carol"), (&alice, "alice"), (&bob, "bob")] {
            let token = env.service_account_token(&ns, sa).await?;
            kubeconfig_with_token(env.kubeconfig(), &token, &u.kubeconfig)?;
        }

        let outcome = async {
            // Device admin: enrol, then export the agent bundle.
            let out = carol
                .run(&["device", "enroll", "pump", "--allow", "22,8080"])
                .await?;
            ensure!(
                out.status.success(),
                "enroll: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let bundle = dir.path().join("bundle");
            let b = bundle.display().to_string();
            let out = carol
                .run(&["device", "credentials", "pump", "--out", &b, "--install-dir", &b])
                .await?;
            ensure!(
                out.status.success(),
                "credentials: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let mode = std::fs::metadata(bundle.join("device.key"))?.permissions().mode() & 0o777;
            ensure!(mode == 0o600, "device.key mode {mode:o}");
            let toml = std::fs::read_to_string(bundle.join("agent.toml"))?;
            ensure!(
                toml.contains(&format!("relay = \"{}\"", relay.addr)),
                "agent.toml: {toml}"
            );
            ensure!(
                toml.contains(&format!("device = \"{ns}/pump\"")),
                "agent.toml: {toml}"
            );

            // The agent starts from that agent.toml (ports mapped to this test's servers, as the
            // real sshd and web server are not on 22 and 8080 here).
            let web = web_page().await?;
            let agent_config = tether_agent::Config::from_args(tether_agent::Args {
                config: Some(bundle.join("agent.toml")),
                allow: vec![format!("22=127.0.0.1:{}", sshd.port), format!("8080={web}")],
                ..tether_agent::Args::default()
            })?;
            let agent = tether_agent::Agent::new(agent_config)?;
            let mut state = agent.state();
            let stop_agent = CancellationToken::new();
            let agent_task = tokio::spawn(agent.run(stop_agent.clone()));
            tokio::time::timeout(
                WAIT,
                state.wait_for(|s| matches!(s, tether_agent::AgentState::Connected { .. })),
            )
            .await
            .context("the agent from agent.toml did not connect")??;

            let ssh_opts = sshd.client_options();
            let ssh_opts: Vec<&str> = ssh_opts.iter().map(String::as_str).collect();

            // A plugin killed with SIGKILL cannot delete its stream: the TTL (1m, the minimum)
            // expires it. Started first so its minute overlaps the rest of the test.
            let mut args = vec!["ssh", "root@pump", "--ttl", "1m", "--"];
            args.extend(&ssh_opts);
            args.push("sleep 300");
            let mut doomed = alice.command(&args);
            let doomed_log = dir.path().join("killed-plugin.log");
            doomed
                .process_group(0)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&doomed_log)?);
            let mut doomed = doomed.spawn()?;
            let doomed_stream = eventually(WAIT, || async {
                let streams = plugin_streams(&admin, &ns).await?;
                streams
                    .iter()
                    .find(|s| {
                        s.status
                            .as_ref()
                            .and_then(|st| st.phase)
                            .is_some_and(|p| matches!(p, StreamPhase::Ready | StreamPhase::Active))
                    })
                    .map(ResourceExt::name_any)
                    .context("no Ready stream yet")
            })
            .await
            .with_context(|| {
                format!(
                    "plugin stderr: {}",
                    std::fs::read_to_string(&doomed_log).unwrap_or_default()
                )
            })?;
            // Let ssh log in through it, then kill the whole process group (plugin and ssh).
            tokio::time::sleep(Duration::from_secs(2)).await;
            // `kubectl` execs the plugin, so its pid (and process group) is the plugin's.
            let st = Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", doomed.id())])
                .status()?;
            ensure!(st.success(), "kill -KILL the plugin's process group failed");
            let _ = doomed.wait();
            let stream = Api::<DeviceStream>::namespaced(admin.clone(), &ns)
                .get(&doomed_stream)
                .await?;
            let owner = stream
                .labels()
                .get("tether.dev/owner")
                .cloned()
                .unwrap_or_default();
            ensure!(
                owner == format!("system.serviceaccount.{ns}.alice"),
                "owner label {owner:?}"
            );

            // Stream user: ssh, with the remote output and exit code coming back.
            let mut args = vec!["ssh", "root@pump", "--"];
            args.extend(&ssh_opts);
            args.push("echo tether-ssh-ok; uname -s; exit 3");
            let out = alice.run(&args).await?;
            let stdout = String::from_utf8_lossy(&out.stdout);
            ensure!(
                stdout.contains("tether-ssh-ok") && stdout.contains("Linux"),
                "ssh stdout: {stdout}; stderr: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            ensure!(
                out.status.code() == Some(3),
                "exit code {:?}, want ssh's 3",
                out.status.code()
            );
            let left: Vec<String> = plugin_streams(&admin, &ns)
                .await?
                .iter()
                .map(ResourceExt::name_any)
                .filter(|n| *n != doomed_stream)
                .collect();
            ensure!(left.is_empty(), "streams left after ssh exited: {left:?}");

            // The `~/.ssh/config` form: plain ssh with `connect --device --port`, which creates a
            // stream for its own lifetime and deletes it afterwards.
            let proxy = format!(
                "{} tether --kubeconfig {} -n {ns} connect --device pump --port 22 --stdio",
                alice.kubectl.display(),
                alice.kubeconfig.display()
            );
            let mut ssh = Command::new("ssh");
            ssh.args(["-o", &format!("ProxyCommand={proxy}")])
                .args(&ssh_opts)
                .args(["root@pump", "echo via-ssh-config"])
                .env("PATH", &alice.path);
            let out = tokio::task::spawn_blocking(move || ssh.output()).await??;
            ensure!(
                String::from_utf8_lossy(&out.stdout).contains("via-ssh-config"),
                "ssh with connect --device: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let left: Vec<String> = plugin_streams(&admin, &ns)
                .await?
                .iter()
                .map(ResourceExt::name_any)
                .filter(|n| *n != doomed_stream)
                .collect();
            ensure!(left.is_empty(), "streams left after connect --device: {left:?}");

            // Tables.
            let out = alice.run(&["devices"]).await?;
            let table = String::from_utf8_lossy(&out.stdout);
            ensure!(
                out.status.success() && table.starts_with("NAME") && table.contains("pump"),
                "devices: {table}"
            );
            let out = alice.run(&["streams", "-o", "json"]).await?;
            let list: serde_json::Value = serde_json::from_slice(&out.stdout).context("streams -o json")?;
            ensure!(
                list["items"]
                    .as_array()
                    .is_some_and(|i| i.iter().any(|s| s["metadata"]["name"] == doomed_stream.as_str())),
                "streams: {list}"
            );

            // port-forward, then curl through it; SIGINT (Ctrl-C) deletes the stream.
            let mut pf = alice.command(&["port-forward", "pump", ":8080"]);
            let mut pf = pf.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?;
            let stdout = pf.stdout.take().context("stdout")?;
            let line = tokio::task::spawn_blocking(move || {
                let mut line = String::new();
                BufReader::new(stdout).read_line(&mut line).map(|_| line)
            })
            .await??;
            let local = line
                .strip_prefix("Forwarding from ")
                .and_then(|l| l.trim().strip_suffix(" -> 8080"))
                .with_context(|| format!("port-forward printed {line:?}"))?
                .to_owned();
            let curl = tokio::task::spawn_blocking(move || {
                Command::new("curl")
                    .args(["-sS", "--max-time", "20", &format!("http://{local}/")])
                    .output()
            })
            .await??;
            ensure!(
                String::from_utf8_lossy(&curl.stdout) == PAGE,
                "curl: {:?} {}",
                String::from_utf8_lossy(&curl.stdout),
                String::from_utf8_lossy(&curl.stderr)
            );
            kill(pf.id(), "-INT")?;
            let status = tokio::task::spawn_blocking(move || pf.wait()).await??;
            ensure!(status.success(), "port-forward exited with {status}");
            let left: Vec<String> = plugin_streams(&admin, &ns)
                .await?
                .iter()
                .map(ResourceExt::name_any)
                .filter(|n| *n != doomed_stream)
                .collect();
            ensure!(left.is_empty(), "streams left after port-forward: {left:?}");

            // Errors a person can act on.
            alice
                .fails_with(
                    &["ssh", "root@no-such-device"],
                    &["Device \"no-such-device\" does not exist", &ns],
                )
                .await?;
            alice
                .fails_with(
                    &["ssh", "-p", "2222", "root@pump"],
                    &["port 2222 is not allowed", "[22, 8080]"],
                )
                .await?;
            bob.fails_with(
                &["ssh", "root@pump"],
                &[
                    "RBAC denied",
                    "create devicestreams.tether.dev",
                    "tether-stream-user",
                ],
            )
            .await?;
            alice
                .fails_with(
                    &["device", "enroll", "other", "--allow", "22"],
                    &["RBAC denied", "patch devices.tether.dev", "tether-device-admin"],
                )
                .await?;

            // The stream user cannot read the trust anchors (other namespace) at all.
            let alice_client = env.service_account_client(&ns, "alice").await?;
            for secret in ["tether-ca", "tether-token-key"] {
                match Api::<Secret>::namespaced(alice_client.clone(), &op_ns)
                    .get(secret)
                    .await
                {
                    Err(kube::Error::Api(s)) if s.code == 403 => {}
                    other => anyhow::bail!(
                        "alice reading {op_ns}/{secret}: {:?}",
                        other.map(|s| s.name_any())
                    ),
                }
            }

            // The killed plugin's stream expires at its TTL, and its token Secret goes.
            let api = Api::<DeviceStream>::namespaced(admin.clone(), &ns);
            eventually(Duration::from_secs(90), || async {
                let s = api.get(&doomed_stream).await?;
                ensure!(
                    s.status.as_ref().and_then(|st| st.phase) == Some(StreamPhase::Expired),
                    "phase {:?}",
                    s.status.as_ref().and_then(|st| st.phase)
                );
                Ok(())
            })
            .await?;
            let secret = Api::<Secret>::namespaced(admin.clone(), &ns)
                .get_opt(&format!("{doomed_stream}-tether-token"))
                .await?;
            ensure!(
                secret.is_none(),
                "the expired stream's token Secret is still there"
            );

            stop_agent.cancel();
            let _ = agent_task.await;
            anyhow::Ok(())
        }
        .await;
        for role in roles {
            let _ = env
                .kubectl()
                .args(["delete", "--ignore-not-found", "clusterrole", &role])
                .output();
        }
        relay.stop().await;
        operator.stop().await?;
        outcome
    })
    .await
}
