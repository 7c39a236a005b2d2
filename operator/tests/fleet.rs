//! The relay fleet against a real API server: relay processes on 127.0.0.2, .3, … in Kubernetes
//! mode (ring from an EndpointSlice this test writes as the endpointslice controller would),
//! device agents and service clients dialling whichever relay a load balancer picked.
//!
//! Bounds asserted here: a deleted DeviceStream's connection closes within 2 s; a killed relay's
//! devices are back (and new streams to them succeed) within 15 s; a rolling restart of every
//! relay under steady setups fails none; a device's status says connected within 5 s.

mod fleetsupport;
mod opsupport;

use std::{collections::BTreeMap, net::SocketAddr, sync::Arc, time::Duration};

use anyhow::{Context as _, ensure};
use fleetsupport::{DOMAIN, Fleet, echo_once, echo_server, relay_ip, require_ssh_in_ci, value};
use opsupport::ssh::Sshd;
use tether_api::{Device, DeviceStream};
use tether_cli::connect;
use tether_proto::{
    head::{self, Parsed},
    name::DeviceKey,
    proxy_header,
};
use tether_tests::testenv::{TestEnv, eventually};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio_util::sync::CancellationToken;

/// Device namespace of the ring-only tests: fixed, so which devices move is deterministic.
const FACTORY: &str = "factory";

fn allow(port: u16, target: SocketAddr) -> BTreeMap<u16, SocketAddr> {
    BTreeMap::from([(port, target)])
}

async fn sum(fleet: &Fleet, series: &str) -> anyhow::Result<f64> {
    let mut total = 0.0;
    for (i, r) in fleet.relays.iter().enumerate() {
        if r.running() {
            total += value(&fleet.metrics(i).await?, series);
        }
    }
    Ok(total)
}

async fn wait_connected(fleet: &Fleet, n: usize, timeout: Duration) -> anyhow::Result<()> {
    eventually(timeout, || async {
        let have = sum(fleet, "tether_relay_connected_devices").await?;
        ensure!(have == n as f64, "{have} of {n} devices connected");
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_and_service_meet_on_the_owner_through_other_relays() -> anyhow::Result<()> {
    let Some(env) = TestEnv::attach("fleet_meet").await else {
        return Ok(());
    };
    env.with_temp_ns("fleet-meet", |env, ns| async move {
        let mut fleet = Fleet::start(&env, &ns, 3).await?;
        let result = async {
            let device = fleet.device_owned_by(FACTORY, 2);
            let echo = echo_server().await?;
            let dir = tempfile::tempdir()?;
            let sshd = Sshd::start(dir.path()).await?;
            require_ssh_in_ci(sshd.is_some())?;
            let mut allowed = allow(7, echo);
            if let Some(s) = &sshd {
                allowed.insert(22, SocketAddr::from(([127, 0, 0, 1], s.port)));
            }
            // The device lands on relay-0 and the service on relay-1: neither owns the device.
            let mut agent = fleet.agent(&device, 0, &allowed)?;
            agent.connected(Duration::from_secs(10)).await?;
            let token = fleet.token(&device, 7, "meet-echo");
            let mut stream = connect::open(&fleet.target(&device, 7, 1, &token)?).await?;
            echo_once(&mut stream, b"through two forwards").await?;
            drop(stream);
            if let Some(sshd) = &sshd {
                let token = fleet.token(&device, 22, "meet-ssh");
                let target = fleet.target(&device, 22, 1, &token)?;
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
                let local = listener.local_addr()?.port();
                let stop = CancellationToken::new();
                let forward = tokio::spawn(connect::listen(target, listener, stop.clone()));
                let out = sshd.run_ssh(local, "echo hello-from-the-fleet").await?;
                stop.cancel();
                let _ = forward.await;
                ensure!(out.trim() == "hello-from-the-fleet", "ssh printed {out:?}");
            }
            let (m0, m1, m2) = (
                fleet.metrics(0).await?,
                fleet.metrics(1).await?,
                fleet.metrics(2).await?,
            );
            let sent = r#"tether_relay_forwarded_connections_total{role="sent"}"#;
            let received = r#"tether_relay_forwarded_connections_total{role="received"}"#;
            let services = if sshd.is_some() { 2.0 } else { 1.0 };
            ensure!(value(&m0, sent) >= 1.0, "relay-0 forwarded the device");
            ensure!(
                value(&m1, sent) == services,
                "relay-1 forwarded {} services",
                value(&m1, sent)
            );
            ensure!(
                value(&m2, received) >= 1.0 + services,
                "relay-2 received the forwards"
            );
            ensure!(
                value(&m2, "tether_relay_connected_devices") == 1.0,
                "the owner holds the session"
            );
            ensure!(
                value(&m0, "tether_relay_connected_devices") == 0.0,
                "relay-0 holds no session"
            );
            ensure!(
                value(
                    &m1,
                    r#"tether_relay_forwarded_bytes_total{direction="from_owner"}"#
                ) > 0.0
            );
            ensure!(value(&m2, r#"tether_relay_stream_setups_total{result="ok"}"#) == services);
            agent.stop().await;
            Ok(())
        }
        .await;
        fleet.cleanup().await;
        result
    })
    .await
}

/// TLS + CONNECT as a service over an already open socket; returns the relay's status and reason.
async fn connect_over(
    fleet: &Fleet,
    tcp: tokio::net::TcpStream,
    device: &DeviceKey,
    token: &str,
) -> anyhow::Result<(u16, String)> {
    let target = fleet.target(device, 7, 0, token)?;
    let sni = rustls_pki_types::ServerName::try_from(device.server_name(DOMAIN))?;
    let mut tls = tokio_rustls::TlsConnector::from(target.tls.clone())
        .connect(sni, tcp)
        .await?;
    tls.write_all(&head::encode_connect(device, 7, token, None))
        .await?;
    tls.flush().await?;
    let mut buf = bytes::BytesMut::new();
    loop {
        if let Parsed::Complete(resp, _) = head::parse_response(&buf)? {
            return Ok((resp.status, resp.reason.unwrap_or_default()));
        }
        ensure!(tls.read_buf(&mut buf).await? > 0, "relay closed before answering");
    }
}

async fn socket_from(ip: std::net::Ipv4Addr, to: SocketAddr) -> anyhow::Result<tokio::net::TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(SocketAddr::from((ip, 0)))?;
    Ok(socket.connect(to).await?)
}

/// Whether the peer closes the connection without sending anything (within 5 s).
async fn closed_without_answer(mut tcp: tokio::net::TcpStream) -> bool {
    let mut b = [0u8; 1];
    matches!(
        tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut b)).await,
        Ok(Ok(0) | Err(_))
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_peer_port_admits_only_members_with_a_proxy_header_and_never_forwards_twice() -> anyhow::Result<()>
{
    let Some(env) = TestEnv::attach("fleet_peer").await else {
        return Ok(());
    };
    env.with_temp_ns("fleet-peer", |env, ns| async move {
        let mut fleet = Fleet::start(&env, &ns, 2).await?;
        let result = async {
            let peer0 = SocketAddr::from((relay_ip(0), fleet.peer_port));
            let header = proxy_header::encode(
                "192.0.2.1:4000".parse()?,
                SocketAddr::from((relay_ip(0), fleet.port)),
            );
            // A stranger (not a ring member's address) with a perfect header: dropped.
            let mut stranger = socket_from(relay_ip(7), peer0).await?;
            let _ = stranger.write_all(&header).await;
            ensure!(closed_without_answer(stranger).await, "a non-member was served");
            // A member's address without a PROXY header: dropped.
            let mut bare = socket_from(relay_ip(1), peer0).await?;
            bare.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await?;
            ensure!(
                closed_without_answer(bare).await,
                "a connection without a PROXY header was served"
            );
            let m = fleet.metrics(0).await?;
            ensure!(
                value(
                    &m,
                    r#"tether_relay_handshake_failures_total{reason="peer_not_member",side="unknown"}"#
                ) == 1.0
            );
            ensure!(
                value(
                    &m,
                    r#"tether_relay_handshake_failures_total{reason="bad_proxy_header",side="unknown"}"#
                ) == 1.0
            );
            // A forwarded connection for a device relay-1 owns, sent to relay-0: relay-0 serves it
            // (terminates TLS and answers) instead of forwarding it again.
            let device = fleet.device_owned_by(FACTORY, 1);
            let mut tcp = socket_from(relay_ip(1), peer0).await?;
            tcp.write_all(&header).await?;
            let token = fleet.token(&device, 7, "peer-test");
            let (status, reason) = connect_over(&fleet, tcp, &device, &token).await?;
            ensure!(
                (status, reason.as_str()) == (503, "device_moving"),
                "answer {status} {reason}"
            );
            let (m0, m1) = (fleet.metrics(0).await?, fleet.metrics(1).await?);
            ensure!(
                value(
                    &m0,
                    r#"tether_relay_forwarded_connections_total{role="received"}"#
                ) == 1.0
            );
            ensure!(
                value(&m0, r#"tether_relay_forwarded_connections_total{role="sent"}"#) == 0.0,
                "forwarded twice"
            );
            ensure!(
                value(
                    &m1,
                    r#"tether_relay_forwarded_connections_total{role="received"}"#
                ) == 0.0
            );
            Ok(())
        }
        .await;
        fleet.cleanup().await;
        result
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_relays_devices_rehome_and_other_streams_are_untouched() -> anyhow::Result<()> {
    let Some(env) = TestEnv::attach("fleet_kill").await else {
        return Ok(());
    };
    env.with_temp_ns("fleet-kill", |env, ns| async move {
        let mut fleet = Fleet::start(&env, &ns, 3).await?;
        let result = async {
            let echo = echo_server().await?;
            let devices: Vec<DeviceKey> = (0..30)
                .map(|i| DeviceKey::new(FACTORY, &format!("k-{i}")).unwrap())
                .collect();
            let mut agents = Vec::new();
            // They dial relay-0 and relay-1 only: a load balancer sends nothing to a dead pod, so
            // the killed relay-2 holds its devices only as their owner, through forwards.
            for (i, d) in devices.iter().enumerate() {
                agents.push(fleet.agent(d, i % 2, &allow(7, echo))?);
            }
            wait_connected(&fleet, devices.len(), Duration::from_secs(20)).await?;
            // A stream wholly on relay-0 (device and service dial its owner): must not notice.
            let steady = fleet.device_owned_by("steady", 0);
            let mut steady_agent = fleet.agent(&steady, 0, &allow(7, echo))?;
            steady_agent.connected(Duration::from_secs(10)).await?;
            let mut steady_stream =
                connect::open(&fleet.target(&steady, 7, 0, &fleet.token(&steady, 7, "steady"))?).await?;
            echo_once(&mut steady_stream, b"before").await?;

            let moved: Vec<&DeviceKey> = devices.iter().filter(|d| fleet.owner(d) == 2).collect();
            let killed_at = tokio::time::Instant::now();
            fleet.relays[2].kill();
            fleet.set_ready(2, false);
            fleet.publish().await?;
            wait_connected(&fleet, devices.len() + 1, Duration::from_secs(15)).await?;
            let rehomed = killed_at.elapsed();
            for d in &moved {
                let via = usize::from(d.name().len() % 2 == 0);
                let mut s = connect::open(&fleet.target(d, 7, via, &fleet.token(d, 7, "after-kill"))?)
                    .await
                    .with_context(|| format!("stream to re-homed {d}"))?;
                echo_once(&mut s, b"re-homed").await?;
            }
            let served = killed_at.elapsed();
            echo_once(&mut steady_stream, b"after").await?;
            eprintln!(
                "fleet_kill: {} of {} devices were on the killed relay; all connected again after {:?}, \
                 new streams to each succeeded by {:?}",
                moved.len(),
                devices.len(),
                rehomed,
                served
            );
            ensure!(served < Duration::from_secs(15), "re-homing took {served:?}");
            for a in agents {
                a.stop().await;
            }
            steady_agent.stop().await;
            Ok(())
        }
        .await;
        fleet.cleanup().await;
        result
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scaling_three_to_four_moves_about_a_quarter_without_cutting_streams() -> anyhow::Result<()> {
    let Some(env) = TestEnv::attach("fleet_scale").await else {
        return Ok(());
    };
    env.with_temp_ns("fleet-scale", |env, ns| async move {
        let mut fleet = Fleet::start(&env, &ns, 3).await?;
        let result = async {
            let echo = echo_server().await?;
            let devices: Vec<DeviceKey> = (0..200)
                .map(|i| DeviceKey::new(FACTORY, &format!("s-{i}")).unwrap())
                .collect();
            let mut agents = Vec::new();
            for (i, d) in devices.iter().enumerate() {
                agents.push(fleet.agent(d, i % 3, &allow(7, echo))?);
            }
            wait_connected(&fleet, devices.len(), Duration::from_secs(30)).await?;
            let names4 = ["relay-0", "relay-1", "relay-2", "relay-3"];
            let will_move: Vec<&DeviceKey> = devices
                .iter()
                .filter(|d| tether_proto::ring::owner(&d.to_string(), &names4) == Some("relay-3"))
                .collect();
            ensure!(
                (40..=60).contains(&will_move.len()),
                "{} of 200 move to the fourth relay",
                will_move.len()
            );
            // A stream in flight on a device that moves.
            let mover = will_move[0];
            let mut in_flight =
                connect::open(&fleet.target(mover, 7, 0, &fleet.token(mover, 7, "in-flight"))?).await?;
            echo_once(&mut in_flight, b"before scaling").await?;

            let new = fleet.add_relay().await?;
            fleet.publish().await?;
            for i in 0..4 {
                fleet.wait_ring(i, 4).await?;
            }
            eventually(Duration::from_secs(30), || async {
                let on_new = value(&fleet.metrics(new).await?, "tether_relay_connected_devices");
                ensure!(on_new == will_move.len() as f64, "{on_new} devices on relay-3");
                Ok(())
            })
            .await?;
            wait_connected(&fleet, devices.len(), Duration::from_secs(30)).await?;
            let moved = sum(&fleet, "tether_relay_devices_moved_total").await?;
            ensure!(
                moved == will_move.len() as f64,
                "{moved} sessions moved, expected {}",
                will_move.len()
            );
            echo_once(&mut in_flight, b"after scaling: the old session still carries it").await?;
            let mut fresh =
                connect::open(&fleet.target(mover, 7, 1, &fleet.token(mover, 7, "fresh"))?).await?;
            echo_once(&mut fresh, b"a new stream reaches the new owner").await?;
            eprintln!("fleet_scale: 3 -> 4 relays moved {moved} of 200 devices (expected 1/4 = 50)");
            for a in agents {
                a.stop().await;
            }
            Ok(())
        }
        .await;
        fleet.cleanup().await;
        result
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_devicestream_cuts_its_connection_within_two_seconds() -> anyhow::Result<()> {
    let Some(env) = TestEnv::attach("fleet_revoke").await else {
        return Ok(());
    };
    opsupport::install_crds(&env)?;
    env.with_temp_ns("fleet-revoke", |env, ns| async move {
        let mut fleet = Fleet::start(&env, &ns, 2).await?;
        let result = async {
            let admin = env.client();
            let stream: DeviceStream = opsupport::apply(
                &admin,
                &ns,
                "apiVersion: tether.dev/v1alpha1\nkind: DeviceStream\nmetadata: {name: doomed}\nspec: {device: pump, port: 7, ttl: 30m}\n",
            )
            .await?;
            let uid = stream.metadata.uid.clone().context("uid")?;
            let device = DeviceKey::new(&ns, "pump")?;
            let echo = echo_server().await?;
            let mut agent = fleet.agent(&device, 0, &allow(7, echo))?;
            agent.connected(Duration::from_secs(10)).await?;
            let token = fleet.token(&device, 7, &uid);
            let mut live = connect::open(&fleet.target(&device, 7, 1, &token)?).await?;
            echo_once(&mut live, b"alive").await?;
            let deleted_at = tokio::time::Instant::now();
            kube::Api::<DeviceStream>::namespaced(admin.clone(), &ns)
                .delete("doomed", &Default::default())
                .await?;
            let mut buf = [0u8; 16];
            let read = tokio::time::timeout(Duration::from_secs(5), live.tls.read(&mut buf)).await;
            let cut = deleted_at.elapsed();
            ensure!(matches!(read, Ok(Ok(0) | Err(_))), "the connection stayed open: {read:?}");
            ensure!(cut <= Duration::from_secs(2), "cut after {cut:?}");
            for via in [0, 1] {
                match connect::open(&fleet.target(&device, 7, via, &token)?).await {
                    Err(connect::ConnectError::Refused { status: 403, reason, .. }) if reason == "stream_revoked" => {}
                    other => anyhow::bail!("token still usable through relay-{via}: {:?}", other.map(|_| ())),
                }
            }
            eprintln!("fleet_revoke: connection closed {cut:?} after the DeviceStream was deleted");
            // The device side: disabling its Device cuts the session at once and refuses the
            // certificate until the Device is enabled again.
            let device_yaml = |disabled: bool| {
                format!("apiVersion: tether.dev/v1alpha1\nkind: Device\nmetadata: {{name: pump}}\nspec: {{allowedPorts: [7], disabled: {disabled}}}\n")
            };
            let _: Device = opsupport::apply(&admin, &ns, &device_yaml(false)).await?;
            wait_connected(&fleet, 1, Duration::from_secs(5)).await?;
            let disabled_at = tokio::time::Instant::now();
            let _: Device = opsupport::apply(&admin, &ns, &device_yaml(true)).await?;
            wait_connected(&fleet, 0, Duration::from_secs(5)).await?;
            let device_cut = disabled_at.elapsed();
            ensure!(device_cut <= Duration::from_secs(2), "device session cut after {device_cut:?}");
            tokio::time::sleep(Duration::from_secs(2)).await;
            ensure!(sum(&fleet, "tether_relay_connected_devices").await? == 0.0, "a disabled device reconnected");
            let _: Device = opsupport::apply(&admin, &ns, &device_yaml(false)).await?;
            wait_connected(&fleet, 1, Duration::from_secs(10)).await?;
            eprintln!("fleet_revoke: device session closed {device_cut:?} after its Device was disabled; back once enabled");
            agent.stop().await;
            Ok(())
        }
        .await;
        fleet.cleanup().await;
        result
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_under_steady_setups_fails_none() -> anyhow::Result<()> {
    let Some(env) = TestEnv::attach("fleet_roll").await else {
        return Ok(());
    };
    env.with_temp_ns("fleet-roll", |env, ns| async move {
        let mut fleet = Fleet::start(&env, &ns, 3).await?;
        let result = async {
            let echo = echo_server().await?;
            let devices: Vec<DeviceKey> = (0..12)
                .map(|i| DeviceKey::new(FACTORY, &format!("r-{i}")).unwrap())
                .collect();
            let mut agents = Vec::new();
            for (i, d) in devices.iter().enumerate() {
                agents.push(fleet.agent(d, i % 3, &allow(7, echo))?);
            }
            wait_connected(&fleet, devices.len(), Duration::from_secs(20)).await?;
            // The load: 20 setups per second, each through a relay the "load balancer" (the
            // EndpointSlice's ready set, as a Service would) offers at that moment.
            let ready: Arc<std::sync::Mutex<Vec<bool>>> = Arc::new(std::sync::Mutex::new(vec![true; 3]));
            let targets: Vec<Vec<connect::Target>> = devices
                .iter()
                .map(|d| {
                    (0..3)
                        .map(|via| fleet.target(d, 7, via, &fleet.token(d, 7, &format!("roll-{d}"))))
                        .collect()
                })
                .collect::<anyhow::Result<_>>()?;
            let stop = CancellationToken::new();
            let load = {
                let (ready, stop) = (ready.clone(), stop.clone());
                tokio::spawn(async move {
                    let (mut ok, mut failed) = (0u32, Vec::new());
                    let mut tick = tokio::time::interval(Duration::from_millis(50));
                    let mut n = 0usize;
                    let mut tasks = tokio::task::JoinSet::new();
                    while !stop.is_cancelled() {
                        tick.tick().await;
                        let choices: Vec<usize> = {
                            let r = ready.lock().unwrap();
                            (0..3).filter(|i| r[*i]).collect()
                        };
                        let target = targets[n % targets.len()][choices[n % choices.len()]].clone();
                        n += 1;
                        tasks.spawn(async move {
                            let mut s = connect::open(&target).await.map_err(|e| e.to_string())?;
                            echo_once(&mut s, b"ping").await.map_err(|e| e.to_string())
                        });
                        while let Some(done) = tasks.try_join_next() {
                            match done {
                                Ok(Ok(())) => ok += 1,
                                Ok(Err(e)) => failed.push(e),
                                Err(e) => failed.push(e.to_string()),
                            }
                        }
                    }
                    while let Some(done) = tasks.join_next().await {
                        match done {
                            Ok(Ok(())) => ok += 1,
                            Ok(Err(e)) => failed.push(e),
                            Err(e) => failed.push(e.to_string()),
                        }
                    }
                    (ok, failed)
                })
            };
            tokio::time::sleep(Duration::from_secs(2)).await;
            for i in 0..3 {
                // As the kubelet and endpointslice controller would: SIGTERM turns /ready 503,
                // the endpoint goes not-ready, the load balancer stops picking it.
                ready.lock().unwrap()[i] = false;
                fleet.set_ready(i, false);
                fleet.publish().await?;
                fleet.relays[i].terminate();
                fleet.relays[i].wait_exit(Duration::from_secs(30)).await?;
                fleet.restart(i).await?;
                fleet.set_ready(i, true);
                fleet.publish().await?;
                for j in 0..3 {
                    fleet.wait_ring(j, 3).await?;
                }
                ready.lock().unwrap()[i] = true;
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
            stop.cancel();
            let (ok, failed) = load.await?;
            eprintln!(
                "fleet_roll: rolling restart of 3 relays: {ok} setups succeeded, {} failed {failed:?}",
                failed.len()
            );
            ensure!(
                failed.is_empty(),
                "{} setups failed during the roll: {failed:?}",
                failed.len()
            );
            ensure!(ok > 100, "only {ok} setups ran");
            for a in agents {
                a.stop().await;
            }
            Ok(())
        }
        .await;
        fleet.cleanup().await;
        result
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_comes_from_the_data_plane_and_the_ring_without_field_fights() -> anyhow::Result<()> {
    let Some(env) = TestEnv::attach("fleet_status").await else {
        return Ok(());
    };
    env.with_temp_ns("fleet-devs", |env, ns| async move {
        let op_ns = opsupport::operator_ns(&env).await?;
        let op_name = op_ns.name().to_owned();
        let operator = opsupport::start_operator_in(&env, op_ns, &ns).await?;
        let mut fleet = Fleet::start(&env, &op_name, 2).await?;
        let result = async {
            let admin = env.client();
            let _: tether_api::RelayPool = opsupport::apply(
                &admin,
                &op_name,
                &format!(
                    "apiVersion: tether.dev/v1alpha1\nkind: RelayPool\nmetadata: {{name: {pool}, annotations: {{tether.dev/endpoint: '{ip}:{port}'}}}}\n\
                     spec: {{relayDomain: {DOMAIN}, minReplicas: 2, maxReplicas: 2}}\n",
                    pool = fleetsupport::POOL,
                    ip = relay_ip(0),
                    port = fleet.port
                ),
            )
            .await?;
            let _: Device = opsupport::apply(
                &admin,
                &ns,
                "apiVersion: tether.dev/v1alpha1\nkind: Device\nmetadata: {name: pump}\nspec: {allowedPorts: [7]}\n",
            )
            .await?;
            let _: DeviceStream = opsupport::apply(
                &admin,
                &ns,
                "apiVersion: tether.dev/v1alpha1\nkind: DeviceStream\nmetadata: {name: watch}\nspec: {device: pump, port: 7, ttl: 30m}\n",
            )
            .await?;
            let device = DeviceKey::new(&ns, "pump")?;
            let owner = fleet.relays[fleet.owner(&device)].name.clone();
            let streams = kube::Api::<DeviceStream>::namespaced(admin.clone(), &ns);
            let devices = kube::Api::<Device>::namespaced(admin.clone(), &ns);
            // The operator's owner is the relays' owner: the ring from the same EndpointSlice.
            let stream = eventually(Duration::from_secs(30), || async {
                let s = streams.get("watch").await?;
                let relay = s.status.as_ref().and_then(|st| st.relay.clone());
                ensure!(relay.as_deref() == Some(owner.as_str()), "status.relay {relay:?}, owner {owner}");
                Ok(s)
            })
            .await?;
            let uid = stream.metadata.uid.clone().context("uid")?;
            let echo = echo_server().await?;
            let mut agent = fleet.agent(&device, 1, &allow(7, echo))?;
            let connected_at = tokio::time::Instant::now();
            agent.connected(Duration::from_secs(10)).await?;
            eventually(Duration::from_secs(5), || async {
                let st = devices.get("pump").await?.status.context("no status")?;
                ensure!(st.connected == Some(true) && st.relay.as_deref() == Some(owner.as_str()), "{st:?}");
                ensure!(st.agent_version.as_deref() == Some(tether_agent::AGENT_VERSION));
                Ok(())
            })
            .await
            .context("Device.status.connected within 5 s")?;
            eprintln!("fleet_status: Device connected in status {:?} after the agent connected", connected_at.elapsed());
            let mut s = connect::open(&fleet.target(&device, 7, 0, &fleet.token(&device, 7, &uid))?).await?;
            echo_once(&mut s, b"counted bytes").await?;
            eventually(Duration::from_secs(15), || async {
                let st = streams.get("watch").await?.status.context("no status")?;
                ensure!(st.connections == Some(1), "connections {:?}", st.connections);
                ensure!(st.phase == Some(tether_api::StreamPhase::Active), "phase {:?}", st.phase);
                ensure!(st.bytes_to_device == Some(13) && st.bytes_from_device == Some(13), "{st:?}");
                Ok(())
            })
            .await?;
            drop(s);
            eventually(Duration::from_secs(15), || async {
                let st = streams.get("watch").await?.status.context("no status")?;
                ensure!(st.connections == Some(0) && st.phase == Some(tether_api::StreamPhase::Ready), "{st:?}");
                Ok(())
            })
            .await?;
            agent.stop().await;
            eventually(Duration::from_secs(5), || async {
                let st = devices.get("pump").await?.status.context("no status")?;
                ensure!(st.connected == Some(false), "{st:?}");
                Ok(())
            })
            .await?;
            // No field has two managers: the relays own what the data plane sees, the operator
            // the rest.
            let device_fields = devices.get("pump").await?.metadata.managed_fields;
            let stream_fields = streams.get("watch").await?.metadata.managed_fields;
            for (kind, fields, relays, operators) in [
                ("Device", device_fields, &["f:connected", "f:relay", "f:lastSeen", "f:agentVersion"][..], &["f:conditions", "f:credentialsSecret"][..]),
                ("DeviceStream", stream_fields, &["f:bytesToDevice", "f:bytesFromDevice", "f:connections"][..], &["f:phase", "f:relay", "f:conditions"][..]),
            ] {
                let fields = fields.unwrap_or_default();
                let of = |manager: &str| {
                    fields
                        .iter()
                        .filter(|f| f.manager.as_deref() == Some(manager) && f.subresource.as_deref() == Some("status"))
                        .map(|f| serde_json::to_string(&f.fields_v1).unwrap_or_default())
                        .collect::<String>()
                };
                let (relay, operator) = (of("tether-relay"), of(tether_operator::STATUS_FIELD_MANAGER));
                for f in relays {
                    let key = format!("\"{f}\"");
                    ensure!(relay.contains(&key) && !operator.contains(&key), "{kind}: {f} must be the relays' alone");
                }
                for f in operators {
                    let key = format!("\"{f}\"");
                    ensure!(operator.contains(&key) && !relay.contains(&key), "{kind}: {f} must be the operator's alone");
                }
            }
            Ok(())
        }
        .await;
        fleet.cleanup().await;
        operator.stop().await?;
        result
    })
    .await
}
