//! A relay fleet for tests against the real API server: `tether-relay` *processes* in Kubernetes
//! mode on 127.0.0.2, 127.0.0.3, …, under exactly the RBAC the operator grants relays, with the
//! members EndpointSlice written by the test as the endpointslice controller would (same code
//! path as production), and in-process agents and service clients dialling whichever relay a
//! load balancer would have picked.

#![allow(dead_code)]

use std::{
    collections::{BTreeMap, HashMap},
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::Arc,
    time::Duration,
};

use anyhow::{Context as _, bail, ensure};
use k8s_openapi::api::{
    core::v1::ObjectReference,
    discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice},
    rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding, RoleRef, Subject},
};
use kube::{
    Api, Client,
    api::{DeleteParams, ObjectMeta, Patch, PatchParams},
    config::{AuthInfo, Kubeconfig, NamedAuthInfo},
};
use tether_agent::config::Target as AgentTarget;
use tether_cli::{connect, standalone, testbed};
use tether_net::{pki::Ca, tls};
use tether_operator::relaypool::build::{relay_cluster_rules, relay_rules};
use tether_proto::{
    name::DeviceKey,
    token::{StreamClaims, TokenSigner},
};
use tether_tests::testenv::{FIELD_MANAGER, TestEnv, eventually};

/// The pool name: its members Service is `fleet-members`.
pub const POOL: &str = "fleet";
/// Relay domain (SNI suffix, token audience) and trust domain.
pub const DOMAIN: &str = testbed::RELAY_DOMAIN;
const DAY: Duration = Duration::from_secs(86_400);

/// The relay binary built next to this test (scripts/test-k8s.sh builds it first).
pub fn relay_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe.parent().and_then(Path::parent).expect("target/<profile>");
    let bin = dir.join("tether-relay");
    assert!(
        bin.exists(),
        "{} is missing: build it first (`cargo build -p tether-relay`; scripts/test-k8s.sh does)",
        bin.display()
    );
    bin
}

/// Fails under CI when OpenSSH is missing instead of skipping its part.
pub fn require_ssh_in_ci(found: bool) -> anyhow::Result<()> {
    if !found && std::env::var_os("CI").is_some() {
        bail!("CI is set but sshd/ssh are unavailable: the real-OpenSSH part cannot be skipped");
    }
    Ok(())
}

/// One relay process.
pub struct RelayProc {
    /// Ring member name, `relay-<i>`.
    pub name: String,
    /// Its loopback address.
    pub ip: Ipv4Addr,
    child: Option<Child>,
    /// Its log.
    pub log: PathBuf,
}

impl RelayProc {
    /// Sends SIGTERM (drain).
    pub fn terminate(&self) {
        if let Some(c) = &self.child {
            let _ = Command::new("kill").args(["-TERM", &c.id().to_string()]).status();
        }
    }

    /// Kills it at once (a crashed pod).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Waits for the process to exit.
    pub async fn wait_exit(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        while let Some(c) = &mut self.child {
            if c.try_wait()?.is_some() {
                self.child = None;
                return Ok(());
            }
            ensure!(
                tokio::time::Instant::now() < deadline,
                "{} did not exit",
                self.name
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }

    /// Whether it is running.
    pub fn running(&self) -> bool {
        self.child.is_some()
    }
}

impl Drop for RelayProc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Parsed Prometheus exposition: series (`name{labels}` as printed) → value.
pub type Samples = HashMap<String, f64>;

/// The fleet.
pub struct Fleet {
    /// Namespace of the pool, its EndpointSlice and the relays' ServiceAccount.
    pub ns: String,
    /// The relays, by index.
    pub relays: Vec<RelayProc>,
    /// Data port (the same on every relay's address).
    pub port: u16,
    /// Peer port.
    pub peer_port: u16,
    /// Admin port.
    pub admin_port: u16,
    dir: tempfile::TempDir,
    ca: Ca,
    signer: TokenSigner,
    kubeconfig: PathBuf,
    client: Client,
    cluster_role: String,
    /// Which relays the EndpointSlice marks ready.
    ready: Vec<bool>,
    http: reqwest_free::Http,
}

/// The address of relay `i`: `$TETHER_FLEET_NET.<2+i>`, which scripts/test-k8s.sh puts on the
/// loopback interface of the private network namespace it runs the tests in (the API server
/// refuses 127.0.0.0/8 in EndpointSlices, and the host's interfaces are never changed).
pub fn relay_ip(i: usize) -> Ipv4Addr {
    let net = std::env::var("TETHER_FLEET_NET").unwrap_or_else(|_| "10.250.0".into());
    format!("{net}.{}", 2 + i)
        .parse()
        .expect("TETHER_FLEET_NET is three IPv4 octets")
}

/// Whether the fleet addresses exist here (only inside scripts/test-k8s.sh's namespace).
pub fn fleet_addresses_usable() -> bool {
    std::net::TcpListener::bind((relay_ip(0), 0)).is_ok()
}

fn free_port() -> anyhow::Result<u16> {
    // One port number free on 127.0.0.2 is free on the other loopback addresses in practice; a
    // clash fails the relay's bind loudly, not silently.
    Ok(std::net::TcpListener::bind((relay_ip(0), 0))?
        .local_addr()?
        .port())
}

impl Fleet {
    /// Keys, RBAC and `n` relays (all marked ready), in namespace `ns`.
    pub async fn start(env: &TestEnv, ns: &str, n: usize) -> anyhow::Result<Self> {
        ensure!(
            fleet_addresses_usable(),
            "relay address {} is not configured here: run the fleet tests through scripts/test-k8s.sh \
             (it runs them in a network namespace that has the addresses)",
            relay_ip(0)
        );
        let dir = tempfile::tempdir()?;
        let ips: Vec<IpAddr> = (0..8).map(|i| IpAddr::V4(relay_ip(i))).collect();
        standalone::init(dir.path(), &[DOMAIN.to_owned()], &ips)?;
        let read = |name: &str| std::fs::read_to_string(dir.path().join(name));
        let ca = Ca::from_pem(
            &read(standalone::files::CA_CERT)?,
            &read(standalone::files::CA_KEY)?,
        )?;
        let signer = TokenSigner::from_pkcs8_pem(&read(standalone::files::TOKEN_KEY)?)?;
        let client = env.client();
        let cluster_role = format!("tt-relay-{ns}");
        grant_relay_rbac(&client, ns, &cluster_role).await?;
        let token = env.service_account_token(ns, "relay").await?;
        let kubeconfig = dir.path().join("relay.kubeconfig");
        write_token_kubeconfig(env.kubeconfig(), &token, &kubeconfig)?;
        let mut fleet = Self {
            ns: ns.to_owned(),
            relays: Vec::new(),
            port: free_port()?,
            peer_port: free_port()?,
            admin_port: free_port()?,
            dir,
            ca,
            signer,
            kubeconfig,
            client,
            cluster_role,
            ready: Vec::new(),
            http: reqwest_free::Http,
        };
        for _ in 0..n {
            fleet.add_relay().await?;
        }
        fleet.publish().await?;
        for i in 0..n {
            fleet.wait_ring(i, n).await?;
        }
        Ok(fleet)
    }

    /// Starts one more relay process (index = current count), marked ready; call [`Fleet::publish`].
    pub async fn add_relay(&mut self) -> anyhow::Result<usize> {
        let i = self.relays.len();
        let proc = self.spawn(i)?;
        self.relays.push(proc);
        self.ready.push(true);
        self.wait_live(i).await?;
        Ok(i)
    }

    /// Restarts relay `i`'s process (after it exited) and waits until it serves.
    pub async fn restart(&mut self, i: usize) -> anyhow::Result<()> {
        self.relays[i] = self.spawn(i)?;
        self.wait_live(i).await
    }

    fn spawn(&self, i: usize) -> anyhow::Result<RelayProc> {
        let ip = relay_ip(i);
        let name = format!("relay-{i}");
        let d = self.dir.path();
        let log = d.join(format!("{name}.log"));
        let out = std::fs::OpenOptions::new().create(true).append(true).open(&log)?;
        let child = Command::new(relay_binary())
            .arg("--listen")
            .arg(format!("{ip}:{}", self.port))
            .arg("--admin-listen")
            .arg(format!("{ip}:{}", self.admin_port))
            .arg("--peer-listen")
            .arg(format!("{ip}:{}", self.peer_port))
            .arg("--relay-domain")
            .arg(DOMAIN)
            .arg("--trust-domain")
            .arg(testbed::TRUST_DOMAIN)
            .arg("--tls-cert")
            .arg(d.join(standalone::files::RELAY_CERT))
            .arg("--tls-key")
            .arg(d.join(standalone::files::RELAY_KEY))
            .arg("--client-ca")
            .arg(d.join(standalone::files::CA_CERT))
            .arg("--token-public-key")
            .arg(d.join(standalone::files::TOKEN_PUB))
            .args([
                "--kubernetes",
                "--pool",
                POOL,
                "--pod-name",
                &name,
                "--pod-namespace",
                &self.ns,
            ])
            .arg("--pod-ip")
            .arg(ip.to_string())
            .args([
                "--drain-grace",
                "2s",
                "--drain-deadline",
                "10s",
                "--keepalive-interval",
                "2s",
            ])
            .env("KUBECONFIG", &self.kubeconfig)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .context("starting tether-relay")?;
        Ok(RelayProc {
            name,
            ip,
            child: Some(child),
            log,
        })
    }

    async fn wait_live(&self, i: usize) -> anyhow::Result<()> {
        eventually(Duration::from_secs(20), || async {
            self.metrics(i).await.map(|_| ())
        })
        .await
        .with_context(|| format!("relay-{i} did not start; log:\n{}", self.log_tail(i)))
    }

    /// The last lines of relay `i`'s log.
    pub fn log_tail(&self, i: usize) -> String {
        let text = std::fs::read_to_string(&self.relays[i].log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// Marks relay `i` ready or not in the EndpointSlice (call [`Fleet::publish`]).
    pub fn set_ready(&mut self, i: usize, ready: bool) {
        self.ready[i] = ready;
    }

    /// Writes the members EndpointSlice: every started relay, with its readiness.
    pub async fn publish(&self) -> anyhow::Result<()> {
        let endpoints = self
            .relays
            .iter()
            .zip(&self.ready)
            .map(|(r, ready)| Endpoint {
                addresses: vec![r.ip.to_string()],
                conditions: Some(EndpointConditions {
                    ready: Some(*ready),
                    serving: Some(*ready),
                    terminating: Some(false),
                }),
                hostname: Some(r.name.clone()),
                target_ref: Some(ObjectReference {
                    kind: Some("Pod".into()),
                    name: Some(r.name.clone()),
                    namespace: Some(self.ns.clone()),
                    ..ObjectReference::default()
                }),
                ..Endpoint::default()
            })
            .collect();
        let port = |name: &str, port: u16| EndpointPort {
            name: Some(name.into()),
            port: Some(i32::from(port)),
            protocol: Some("TCP".into()),
            ..EndpointPort::default()
        };
        let slice = EndpointSlice {
            metadata: ObjectMeta {
                name: Some(format!("{POOL}-members-test")),
                labels: Some(BTreeMap::from([
                    (
                        tether_api::members::SERVICE_NAME_LABEL.to_owned(),
                        tether_api::members::members_service(POOL),
                    ),
                    (
                        "endpointslice.kubernetes.io/managed-by".to_owned(),
                        FIELD_MANAGER.to_owned(),
                    ),
                ])),
                ..ObjectMeta::default()
            },
            address_type: "IPv4".into(),
            endpoints: Some(endpoints),
            ports: Some(vec![
                port("data", self.port),
                port("peer", self.peer_port),
                port("admin", self.admin_port),
            ]),
        };
        Api::<EndpointSlice>::namespaced(self.client.clone(), &self.ns)
            .patch(
                &format!("{POOL}-members-test"),
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&slice),
            )
            .await?;
        Ok(())
    }

    /// Waits until relay `i` sees `n` ring members.
    pub async fn wait_ring(&self, i: usize, n: usize) -> anyhow::Result<()> {
        eventually(Duration::from_secs(20), || async {
            let m = self.metrics(i).await?;
            let have = value(&m, "tether_relay_ring_members");
            ensure!(have == n as f64, "relay-{i} sees {have} members, want {n}");
            Ok(())
        })
        .await
    }

    /// The ring member that owns `device` among the relays marked ready.
    pub fn owner(&self, device: &DeviceKey) -> usize {
        let names: Vec<&str> = self
            .relays
            .iter()
            .zip(&self.ready)
            .filter(|(_, r)| **r)
            .map(|(p, _)| p.name.as_str())
            .collect();
        let owner = tether_proto::ring::owner(&device.to_string(), &names).expect("members");
        self.relays
            .iter()
            .position(|r| r.name == owner)
            .expect("owner index")
    }

    /// A device name in `namespace` owned by relay `owner` (searching `pump-0`, `pump-1`, …).
    pub fn device_owned_by(&self, namespace: &str, owner: usize) -> DeviceKey {
        (0..)
            .map(|i| DeviceKey::new(namespace, &format!("pump-{i}")).expect("name"))
            .find(|d| self.owner(d) == owner)
            .expect("some device")
    }

    /// Relay `i`'s metrics.
    pub async fn metrics(&self, i: usize) -> anyhow::Result<Samples> {
        let addr = SocketAddr::from((relay_ip(i), self.admin_port));
        let body = self.http.get(addr, "/metrics").await?;
        Ok(parse_metrics(&body))
    }

    /// An agent for `device` dialling relay `via`, serving `allow`.
    pub fn agent(
        &self,
        device: &DeviceKey,
        via: usize,
        allow: &BTreeMap<u16, SocketAddr>,
    ) -> anyhow::Result<testbed::RunningAgent> {
        let issued = self.ca.issue_device(device, testbed::TRUST_DOMAIN, DAY)?;
        let out = self.dir.path().join(format!(
            "dev-{}-{}-{}",
            device.namespace(),
            device.name(),
            rand_suffix()
        ));
        std::fs::create_dir_all(&out)?;
        std::fs::write(out.join("device.crt"), &issued.cert_pem)?;
        std::fs::write(out.join("device.key"), &issued.key_pem)?;
        std::fs::write(out.join("ca.crt"), self.ca.cert_pem())?;
        let mut config = tether_agent::Config::new(
            relay_ip(via).to_string(),
            self.port,
            DOMAIN,
            out.join("device.crt"),
            out.join("device.key"),
            out.join("ca.crt"),
        );
        config.device = Some(device.clone());
        config.trust_domain = testbed::TRUST_DOMAIN.into();
        config.proxy_from_env = false;
        config.keepalive_interval = Duration::from_secs(2);
        config.keepalive_timeout = Duration::from_secs(2);
        config.backoff.base = Duration::from_millis(50);
        config.backoff.cap = Duration::from_millis(500);
        for (port, target) in allow {
            config.allow.insert(
                *port,
                AgentTarget {
                    host: target.ip().to_string(),
                    port: target.port(),
                },
            );
        }
        spawn_agent(config)
    }

    /// A token for `device:port` of stream `uid`, valid for an hour.
    pub fn token(&self, device: &DeviceKey, port: u16, uid: &str) -> String {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs();
        self.signer.sign(&StreamClaims {
            stream_uid: uid.to_owned(),
            namespace: device.namespace().to_owned(),
            device: device.name().to_owned(),
            port,
            audience: DOMAIN.to_owned(),
            issued_at: now,
            not_before: now - 5,
            expires_at: now + 3600,
            max_connections: Some(64),
            idle_timeout: None,
        })
    }

    /// A service-side target for `device:port` through relay `via`.
    pub fn target(
        &self,
        device: &DeviceKey,
        port: u16,
        via: usize,
        token: &str,
    ) -> anyhow::Result<connect::Target> {
        let cas = tls::parse_certs("CA", "fleet", self.ca.cert_pem().as_bytes())?;
        Ok(connect::Target {
            relay_host: relay_ip(via).to_string(),
            relay_port: self.port,
            relay_domain: DOMAIN.into(),
            tls: Arc::new(tls::service_client_config(&cas, DOMAIN)?),
            device: device.clone(),
            port,
            token: token.into(),
            proxy: None,
        })
    }

    /// Stops the relays, keeps their logs in `target/fleet-logs/<namespace>/` (for a failed run's
    /// post-mortem) and removes the cluster-scoped RBAC (the namespace takes the rest).
    pub async fn cleanup(&mut self) {
        for r in &mut self.relays {
            r.kill();
        }
        if let Some(target) = relay_binary().parent().and_then(Path::parent) {
            let keep = target.join("fleet-logs").join(&self.ns);
            if std::fs::create_dir_all(&keep).is_ok() {
                for r in &self.relays {
                    let _ = std::fs::copy(&r.log, keep.join(format!("{}.log", r.name)));
                }
            }
        }
        let dp = DeleteParams::default();
        let _ = Api::<ClusterRoleBinding>::all(self.client.clone())
            .delete(&self.cluster_role, &dp)
            .await;
        let _ = Api::<ClusterRole>::all(self.client.clone())
            .delete(&self.cluster_role, &dp)
            .await;
    }
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// Starts an in-process agent.
pub fn spawn_agent(config: tether_agent::Config) -> anyhow::Result<testbed::RunningAgent> {
    let agent = tether_agent::Agent::new(config)?;
    let device = agent.device().clone();
    let state = agent.state();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let stop = shutdown.clone();
    let task = tokio::spawn(async move {
        let _ = agent.run(stop).await;
    });
    Ok(testbed::RunningAgent {
        device,
        state,
        shutdown,
        task,
    })
}

/// The relays' RBAC exactly as the operator grants it: [`relay_rules`] in the pool's namespace,
/// [`relay_cluster_rules`] cluster-wide, bound to ServiceAccount `relay`.
async fn grant_relay_rbac(client: &Client, ns: &str, cluster_role: &str) -> anyhow::Result<()> {
    let pp = PatchParams::apply(FIELD_MANAGER).force();
    let subject = Subject {
        kind: "ServiceAccount".into(),
        name: "relay".into(),
        namespace: Some(ns.to_owned()),
        ..Subject::default()
    };
    let meta = |name: &str| ObjectMeta {
        name: Some(name.to_owned()),
        ..ObjectMeta::default()
    };
    Api::<Role>::namespaced(client.clone(), ns)
        .patch(
            "relay",
            &pp,
            &Patch::Apply(&Role {
                metadata: meta("relay"),
                rules: Some(relay_rules()),
            }),
        )
        .await?;
    Api::<RoleBinding>::namespaced(client.clone(), ns)
        .patch(
            "relay",
            &pp,
            &Patch::Apply(&RoleBinding {
                metadata: meta("relay"),
                role_ref: RoleRef {
                    api_group: Some("rbac.authorization.k8s.io".into()),
                    kind: "Role".into(),
                    name: "relay".into(),
                },
                subjects: Some(vec![subject.clone()]),
            }),
        )
        .await?;
    Api::<ClusterRole>::all(client.clone())
        .patch(
            cluster_role,
            &pp,
            &Patch::Apply(&ClusterRole {
                metadata: meta(cluster_role),
                rules: Some(relay_cluster_rules()),
                ..ClusterRole::default()
            }),
        )
        .await?;
    Api::<ClusterRoleBinding>::all(client.clone())
        .patch(
            cluster_role,
            &pp,
            &Patch::Apply(&ClusterRoleBinding {
                metadata: meta(cluster_role),
                role_ref: RoleRef {
                    api_group: Some("rbac.authorization.k8s.io".into()),
                    kind: "ClusterRole".into(),
                    name: cluster_role.to_owned(),
                },
                subjects: Some(vec![subject]),
            }),
        )
        .await?;
    Ok(())
}

/// A kubeconfig like the admin's, authenticating with `token` instead.
fn write_token_kubeconfig(admin: &Path, token: &str, out: &Path) -> anyhow::Result<()> {
    let mut config = Kubeconfig::read_from(admin)?;
    config.auth_infos = config
        .auth_infos
        .into_iter()
        .map(|a| NamedAuthInfo {
            auth_info: Some(AuthInfo {
                token: Some(token.to_owned().into()),
                ..AuthInfo::default()
            }),
            ..a
        })
        .collect();
    std::fs::write(out, serde_yaml::to_string(&config)?)?;
    Ok(())
}

/// Parses the text exposition format into series → value (exact, for exact comparisons).
pub fn parse_metrics(body: &str) -> Samples {
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (series, v) = l.rsplit_once(' ')?;
            Some((series.to_owned(), v.parse().ok()?))
        })
        .collect()
}

/// The value of `series` (0 when absent: counters start absent for unused label values).
pub fn value(samples: &Samples, series: &str) -> f64 {
    samples.get(series).copied().unwrap_or(0.0)
}

/// A minimal HTTP/1.1 GET over a TCP socket (the admin port is plain HTTP).
pub mod reqwest_free {
    use std::net::SocketAddr;

    use anyhow::ensure;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    /// The client.
    #[derive(Clone, Copy)]
    pub struct Http;

    impl Http {
        /// GETs `path` from `addr`; returns the body of a 200.
        pub async fn get(&self, addr: SocketAddr, path: &str) -> anyhow::Result<String> {
            let mut s = tokio::time::timeout(
                std::time::Duration::from_secs(2),
                tokio::net::TcpStream::connect(addr),
            )
            .await??;
            s.write_all(
                format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
            )
            .await?;
            let mut buf = Vec::new();
            tokio::time::timeout(std::time::Duration::from_secs(5), s.read_to_end(&mut buf)).await??;
            let text = String::from_utf8_lossy(&buf).into_owned();
            let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
            ensure!(head.starts_with("HTTP/1.1 200"), "GET {path}: {head}");
            Ok(body.to_owned())
        }
    }
}

/// An echo server on 127.0.0.1.
pub async fn echo_server() -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    Ok(addr)
}

/// Sends `msg` through an open stream and checks it echoes back.
pub async fn echo_once(stream: &mut connect::Stream, msg: &[u8]) -> anyhow::Result<()> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut got = stream.early.to_vec();
    stream.tls.write_all(msg).await?;
    stream.tls.flush().await?;
    let mut buf = [0u8; 4096];
    while got.len() < msg.len() {
        let n = tokio::time::timeout(Duration::from_secs(5), stream.tls.read(&mut buf)).await??;
        ensure!(n > 0, "tunnel closed early");
        got.extend_from_slice(&buf[..n]);
    }
    stream.early = bytes::Bytes::new();
    ensure!(got == msg, "echo mismatch");
    Ok(())
}
