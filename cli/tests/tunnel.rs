//! In-process integration tests of the data plane: a real relay and real agents on 127.0.0.1 with
//! real TLS, driven through the same `connect` code the `tether` binary uses.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    time::{Duration, Instant},
};

use bytes::BytesMut;
use sha2::{Digest, Sha256};
use tether_cli::{
    connect::{self, ConnectError},
    testbed::{RELAY_DOMAIN, Testbed},
};
use tether_net::pki::Ca;
use tether_proto::{
    name::DeviceKey,
    preface::{Decoded, Preface, PrefaceReply},
    token::{StreamClaims, TokenSigner},
};
use tether_relay::Limits;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

const SECOND: Duration = Duration::from_secs(1);

fn device() -> DeviceKey {
    DeviceKey::parse("plant-a/pump-7").unwrap()
}

struct Setup {
    bed: Testbed,
    agent: tether_cli::testbed::RunningAgent,
    echo: SocketAddr,
    _dir: tempfile::TempDir,
}

/// A relay and one connected agent serving port 7 (echo).
async fn setup(limits: Limits) -> Setup {
    tether_net::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let bed = Testbed::start(&dir.path().join("pki"), limits).await.unwrap();
    let echo = tether_net::testing::echo_server().await.unwrap();
    let config = bed.agent_config(&device(), &BTreeMap::from([(7, echo)])).unwrap();
    let mut agent = bed.spawn_agent(config).unwrap();
    agent.connected(10 * SECOND).await.unwrap();
    Setup {
        bed,
        agent,
        echo,
        _dir: dir,
    }
}

impl Setup {
    fn target(&self, port: u16) -> connect::Target {
        let token = self.bed.token(&device(), port, Duration::from_secs(600)).unwrap();
        self.bed.target(&device(), port, &token).unwrap()
    }

    async fn metrics(&self) -> Scrape {
        scrape(self.bed.admin_addr).await
    }

    /// Waits until `series` has `value` (a signal instead of a sleep), and returns the scrape.
    async fn metric_reaches(&self, series: &str, value: f64, within: Duration) -> Scrape {
        let deadline = Instant::now() + within;
        loop {
            let m = self.metrics().await;
            if m.0.get(series) == Some(&value) || Instant::now() >= deadline {
                return m;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// One parsed scrape of `/metrics`: series compared by exact value, never by substring (which let
/// `} 2` pass for 201).
struct Scrape(BTreeMap<String, f64>);

impl Scrape {
    /// The value of `series` written as the encoder writes it (labels sorted by name).
    fn get(&self, series: &str) -> f64 {
        *self
            .0
            .get(series)
            .unwrap_or_else(|| panic!("{series} missing from {:#?}", self.0.keys().collect::<Vec<_>>()))
    }
}

async fn scrape(addr: SocketAddr) -> Scrape {
    let response = http_get(addr, "/metrics").await;
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    Scrape(tether_net::admin::parse_exposition(body).unwrap())
}

async fn http_get(addr: SocketAddr, path: &str) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

fn refusal_reason(err: ConnectError) -> String {
    match err {
        ConnectError::Refused { reason, .. } => reason,
        other => panic!("expected a refusal, got {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_through_the_tunnel_and_metrics() {
    let s = setup(Limits::default()).await;
    let mut stream = connect::open(&s.target(7)).await.unwrap();
    stream.tls.write_all(b"hello device").await.unwrap();
    let mut got = stream.early.to_vec();
    while got.len() < 12 {
        let mut buf = [0u8; 64];
        let n = stream.tls.read(&mut buf).await.unwrap();
        assert!(n > 0, "tunnel closed early");
        got.extend_from_slice(&buf[..n]);
    }
    assert_eq!(got, b"hello device");
    drop(stream);
    let metrics = s.metrics().await;
    assert_eq!(metrics.get("tether_relay_connected_devices"), 1.0);
    assert_eq!(
        metrics.get(r#"tether_relay_stream_setups_total{result="ok"}"#),
        1.0
    );
    assert_eq!(
        metrics.get(r#"tether_relay_bytes_total{direction="service_to_device"}"#),
        12.0
    );
    assert!(
        http_get(s.bed.admin_addr, "/ready")
            .await
            .starts_with("HTTP/1.1 200")
    );
    assert!(
        http_get(s.bed.admin_addr, "/live")
            .await
            .starts_with("HTTP/1.1 200")
    );
}

/// Sends `bytes` one way and reads them back, comparing SHA-256 of both directions.
async fn transfer(target: &connect::Target, bytes: u64) -> Duration {
    let started = Instant::now();
    let stream = connect::open(target).await.unwrap();
    let early = stream.early.clone();
    let (mut r, mut w) = tokio::io::split(stream.tls);
    let writer = tokio::spawn(async move {
        let mut hash = Sha256::new();
        let mut block = vec![0u8; 256 * 1024];
        let mut sent = 0u64;
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        while sent < bytes {
            for b in block.iter_mut() {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *b = x as u8;
            }
            let n = (bytes - sent).min(block.len() as u64) as usize;
            w.write_all(&block[..n]).await.unwrap();
            hash.update(&block[..n]);
            sent += n as u64;
        }
        w.shutdown().await.unwrap();
        hash.finalize()
    });
    let mut hash = Sha256::new();
    hash.update(&early);
    let mut got = early.len() as u64;
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = r.read(&mut buf).await.unwrap();
        if n == 0 {
            break;
        }
        hash.update(&buf[..n]);
        got += n as u64;
    }
    assert_eq!(got, bytes, "byte count differs");
    assert_eq!(writer.await.unwrap(), hash.finalize(), "SHA-256 differs");
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_transfer_each_way_keeps_every_byte() {
    let s = setup(Limits::default()).await;
    // 256 MiB each way (the echo sends every byte back), checked with SHA-256.
    let took = transfer(&s.target(7), 256 * 1024 * 1024).await;
    eprintln!("256 MiB each way in {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_concurrent_streams_over_one_device_connection() {
    let s = setup(Limits::default()).await;
    // One stream token allowing 100 concurrent connections (the relay default is 16).
    let now = now();
    let mut c = claims(7, now, now + 600);
    c.max_connections = Some(100);
    let target = s.bed.target(&device(), 7, &s.bed.signer.sign(&c)).unwrap();
    let tasks: Vec<_> = (0..100)
        .map(|_| {
            let t = target.clone();
            tokio::spawn(async move { transfer(&t, 512 * 1024).await })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let metrics = s.metrics().await;
    assert_eq!(
        metrics.get(r#"tether_relay_stream_setups_total{result="ok"}"#),
        100.0
    );
    assert_eq!(
        metrics.get("tether_relay_device_sessions_replaced_total"),
        0.0,
        "one device connection only"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_close_lets_the_device_answer_after_client_eof() {
    tether_net::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let bed = Testbed::start(dir.path(), Limits::default()).await.unwrap();
    // A target that reads until EOF, then answers with what it counted.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut all = Vec::new();
        s.read_to_end(&mut all).await.unwrap();
        s.write_all(format!("got {} bytes", all.len()).as_bytes())
            .await
            .unwrap();
    });
    let mut agent = bed
        .spawn_agent(bed.agent_config(&device(), &BTreeMap::from([(9, addr)])).unwrap())
        .unwrap();
    agent.connected(10 * SECOND).await.unwrap();
    let token = bed.token(&device(), 9, Duration::from_secs(60)).unwrap();
    let mut stream = connect::open(&bed.target(&device(), 9, &token).unwrap())
        .await
        .unwrap();
    stream.tls.write_all(&[1u8; 100_000]).await.unwrap();
    // TLS-level half-close: the client's write side ends, its read side stays open.
    stream.tls.get_mut().1.send_close_notify();
    stream.tls.flush().await.unwrap();
    let mut answer = String::new();
    tokio::time::timeout(10 * SECOND, stream.tls.read_to_string(&mut answer))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(answer, "got 100000 bytes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnecting_device_replaces_its_stale_session() {
    let s = setup(Limits::default()).await;
    // A long-lived stream on the first session.
    let mut old_stream = connect::open(&s.target(7)).await.unwrap();
    // The same device connects again (e.g. after a NAT rebinding left the old connection dangling).
    let config = s
        .bed
        .agent_config(&device(), &BTreeMap::from([(7, s.echo)]))
        .unwrap();
    let mut second = s.bed.spawn_agent(config).unwrap();
    second.connected(10 * SECOND).await.unwrap();
    // The stale session's stream ends (EOF or reset) instead of hanging.
    let mut buf = [0u8; 16];
    let ended = tokio::time::timeout(10 * SECOND, old_stream.tls.read(&mut buf)).await;
    assert!(
        matches!(ended, Ok(Ok(0)) | Ok(Err(_))),
        "old stream still open: {ended:?}"
    );
    // New streams use the new session.
    let target = s.target(7);
    let Setup { bed, agent, .. } = s;
    agent.stop().await;
    let took = transfer(&target, 1024).await;
    assert!(took < 10 * SECOND);
    let metrics = scrape(bed.admin_addr).await;
    assert_eq!(metrics.get("tether_relay_device_sessions_replaced_total"), 1.0);
    assert_eq!(metrics.get("tether_relay_connected_devices"), 1.0);
    second.stop().await;
}

fn claims(port: u16, not_before: u64, expires_at: u64) -> StreamClaims {
    StreamClaims {
        stream_uid: "test-stream".into(),
        namespace: device().namespace().into(),
        device: device().name().into(),
        port,
        audience: RELAY_DOMAIN.into(),
        issued_at: not_before,
        not_before,
        expires_at,
        max_connections: None,
        idle_timeout: None,
    }
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tokens_are_refused_with_their_reason() {
    let s = setup(Limits::default()).await;
    let now = now();
    let forger = TokenSigner::generate();
    let mut other_device = claims(7, now, now + 600);
    other_device.device = "pump-8".into();
    let mut wrong_audience = claims(7, now, now + 600);
    wrong_audience.audience = "elsewhere.example".into();
    let cases = [
        (
            s.bed.signer.sign(&claims(7, now - 7200, now - 3600)),
            7,
            "token_expired",
        ),
        (
            s.bed.signer.sign(&claims(7, now + 3600, now + 7200)),
            7,
            "token_not_yet_valid",
        ),
        (forger.sign(&claims(7, now, now + 600)), 7, "token_signature"),
        (s.bed.signer.sign(&other_device), 7, "token_wrong_device"),
        (
            s.bed.signer.sign(&claims(22, now, now + 600)),
            7,
            "token_wrong_port",
        ),
        (s.bed.signer.sign(&wrong_audience), 7, "token_audience"),
        ("not-a-token".to_owned(), 7, "token_malformed"),
    ];
    for (token, port, reason) in cases {
        let err = connect::open(&s.bed.target(&device(), port, &token).unwrap())
            .await
            .err()
            .unwrap();
        assert_eq!(refusal_reason(err), reason);
    }
    // The relay is unharmed: a good token still works.
    transfer(&s.target(7), 1024).await;
    let metrics = s.metrics().await;
    assert_eq!(
        metrics.get(r#"tether_relay_stream_setups_total{result="token_expired"}"#),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_stream_connection_limit_and_revocation() {
    let s = setup(Limits::default()).await;
    let now = now();
    let mut c = claims(7, now, now + 600);
    c.max_connections = Some(1);
    let token = s.bed.signer.sign(&c);
    let target = s.bed.target(&device(), 7, &token).unwrap();
    let mut first = connect::open(&target).await.unwrap();
    let err = connect::open(&target).await.err().unwrap();
    assert_eq!(refusal_reason(err), "stream_connection_limit");
    // Revoking the stream closes its live connection and refuses new ones.
    s.bed.relay.revoke("test-stream", now + 600);
    let mut buf = [0u8; 8];
    let ended = tokio::time::timeout(10 * SECOND, first.tls.read(&mut buf)).await;
    assert!(
        matches!(ended, Ok(Ok(0)) | Ok(Err(_))),
        "revoked stream still open: {ended:?}"
    );
    let err = connect::open(&target).await.err().unwrap();
    assert_eq!(refusal_reason(err), "stream_revoked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_closed_and_busy_ones_are_not() {
    let s = setup(Limits::default()).await;
    let now = now();
    let mut c = claims(7, now, now + 600);
    c.idle_timeout = Some(1);
    let token = s.bed.signer.sign(&c);
    let target = s.bed.target(&device(), 7, &token).unwrap();
    let mut idle = connect::open(&target).await.unwrap();
    let mut busy = connect::open(&target).await.unwrap();
    let opened = Instant::now();
    // The busy connection echoes a byte every 200 ms for 2.5 s: well past the idle timeout.
    let busy_task = tokio::spawn(async move {
        let mut b = [0u8; 1];
        while opened.elapsed() < Duration::from_millis(2500) {
            busy.tls.write_all(b"x").await?;
            busy.tls.flush().await?;
            busy.tls.read_exact(&mut b).await?;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        anyhow::Ok(())
    });
    let mut buf = [0u8; 8];
    let ended = tokio::time::timeout(10 * SECOND, idle.tls.read(&mut buf)).await;
    assert!(
        matches!(ended, Ok(Ok(0)) | Ok(Err(_))),
        "idle connection still open: {ended:?}"
    );
    let after = opened.elapsed();
    assert!(
        after >= Duration::from_millis(900) && after < Duration::from_secs(5),
        "closed after {after:?}, not about 1-1.25 s"
    );
    busy_task
        .await
        .unwrap()
        .expect("the busy connection stayed open and kept echoing");
    let metrics = s.metrics().await;
    assert_eq!(
        metrics.get(r#"tether_relay_streams_closed_by_relay_total{reason="idle_timeout"}"#),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn port_outside_the_agents_allowlist_is_refused_by_the_device() {
    let s = setup(Limits::default()).await;
    let err = connect::open(&s.target(2222)).await.err().unwrap();
    assert_eq!(refusal_reason(err), "device_port_not_allowed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_device_times_out_with_a_clear_reason() {
    tether_net::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let limits = Limits {
        device_connect_timeout: Duration::from_millis(300),
        ..Limits::default()
    };
    let bed = Testbed::start(dir.path(), limits).await.unwrap();
    let token = bed.token(&device(), 7, Duration::from_secs(60)).unwrap();
    let started = Instant::now();
    let err = connect::open(&bed.target(&device(), 7, &token).unwrap())
        .await
        .err()
        .unwrap();
    assert_eq!(refusal_reason(err), "device_not_connected");
    assert!(started.elapsed() >= Duration::from_millis(300));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_waits_for_a_device_that_connects_late() {
    tether_net::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let bed = Testbed::start(dir.path(), Limits::default()).await.unwrap();
    let echo = tether_net::testing::echo_server().await.unwrap();
    let token = bed.token(&device(), 7, Duration::from_secs(60)).unwrap();
    let target = bed.target(&device(), 7, &token).unwrap();
    let client = tokio::spawn(async move { transfer(&target, 4096).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut agent = bed
        .spawn_agent(bed.agent_config(&device(), &BTreeMap::from([(7, echo)])).unwrap())
        .unwrap();
    agent.connected(10 * SECOND).await.unwrap();
    tokio::time::timeout(10 * SECOND, client).await.unwrap().unwrap();
}

/// A TCP connection to `dst` from source address `src` (any 127.0.0.0/8 address is local).
async fn connect_from(src: [u8; 4], dst: SocketAddr) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::from((src, 0))).unwrap();
    socket.connect(dst).await.unwrap()
}

/// An agent's TLS configuration for `device_cert` (keeps its session cache across connections).
fn device_tls(ca_pem: &str, device_cert: &tether_net::pki::Issued) -> std::sync::Arc<rustls::ClientConfig> {
    let cas = tether_net::tls::parse_certs("ca", "test", ca_pem.as_bytes()).unwrap();
    let chain = tether_net::tls::parse_certs("cert", "test", device_cert.cert_pem.as_bytes()).unwrap();
    let key = tether_net::tls::parse_key("key", "test", device_cert.key_pem.as_bytes()).unwrap();
    std::sync::Arc::new(tether_net::tls::agent_client_config(&cas, chain, key, RELAY_DOMAIN).unwrap())
}

/// Runs the device side of the protocol by hand with the given credentials; returns the relay's
/// preface reply.
async fn raw_device_handshake(
    relay: SocketAddr,
    ca_pem: &str,
    device_cert: &tether_net::pki::Issued,
    sni: &DeviceKey,
) -> PrefaceReply {
    device_handshake_with(relay, device_tls(ca_pem, device_cert), sni)
        .await
        .unwrap()
}

/// The device side of the handshake with `config`; `Err` when TLS fails, else the relay's reply.
async fn device_handshake_with(
    relay: SocketAddr,
    config: std::sync::Arc<rustls::ClientConfig>,
    sni: &DeviceKey,
) -> std::io::Result<PrefaceReply> {
    let tcp = TcpStream::connect(relay).await?;
    let name = rustls_pki_types::ServerName::try_from(sni.server_name(RELAY_DOMAIN)).unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await?;
    let mut out = BytesMut::new();
    Preface {
        agent_version: "test".into(),
        features: vec![],
    }
    .encode(&mut out);
    tls.write_all(&out).await?;
    let mut buf = BytesMut::new();
    loop {
        if let Decoded::Complete(reply) = PrefaceReply::decode(&mut buf).unwrap() {
            return Ok(reply);
        }
        if tls.read_buf(&mut buf).await? == 0 {
            return Err(std::io::Error::other("relay closed without a reply"));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_identity_comes_only_from_a_certificate_of_our_ca() {
    tether_net::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let bed = Testbed::start(dir.path(), Limits::default()).await.unwrap();
    let day = Duration::from_secs(86_400);
    // A certificate from another CA: the TLS handshake itself fails.
    let (rogue, _) = Ca::generate("rogue", day).unwrap();
    let rogue_cert = rogue.issue_device(&device(), "tether.local", day).unwrap();
    let result = tokio::spawn({
        let (addr, ca) = (bed.relay_addr, bed.ca_pem().to_owned());
        async move { raw_device_handshake(addr, &ca, &rogue_cert, &device()).await }
    })
    .await;
    assert!(
        result.is_err(),
        "a device certificate from another CA was accepted"
    );
    // Our CA, but the certificate names another device than the SNI: refused with a reason.
    let ours = Ca::from_pem(
        bed.ca_pem(),
        &std::fs::read_to_string(dir.path().join("ca.key")).unwrap(),
    )
    .unwrap();
    let cert = ours
        .issue_device(&DeviceKey::parse("plant-a/pump-8").unwrap(), "tether.local", day)
        .unwrap();
    let reply = raw_device_handshake(bed.relay_addr, bed.ca_pem(), &cert, &device()).await;
    assert!(!reply.accepted);
    assert!(reply.message.contains("does not match"), "{}", reply.message);
    // The right certificate is accepted.
    let cert = ours.issue_device(&device(), "tether.local", day).unwrap();
    assert!(
        raw_device_handshake(bed.relay_addr, bed.ca_pem(), &cert, &device())
            .await
            .accepted
    );
    let metrics = scrape(bed.admin_addr).await;
    assert_eq!(
        metrics.get(r#"tether_relay_handshake_failures_total{reason="identity_mismatch",side="device"}"#),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_and_garbage_clients_do_not_delay_a_legitimate_stream() {
    let limits = Limits {
        handshake_timeout: Duration::from_secs(2),
        ..Limits::default()
    };
    let s = setup(limits).await;
    let relay = s.bed.relay_addr;
    // 200 clients that connect and say nothing, and some that send garbage or half a ClientHello,
    // from other addresses than the legitimate client's (one address alone is capped lower).
    let mut idle = Vec::new();
    for i in 0..200 {
        idle.push(connect_from([127, 0, 0, 2 + (i % 4) as u8], relay).await);
    }
    for junk in [
        &b"GET / HTTP/1.1\r\n\r\n"[..],
        &[22, 3, 1, 0xff, 0xff, 1],
        &[0u8; 4096],
        &[22, 3, 1, 0, 10, 1, 0, 0],
    ] {
        let mut c = TcpStream::connect(relay).await.unwrap();
        c.write_all(junk).await.unwrap();
        idle.push(c);
    }
    let started = Instant::now();
    transfer(&s.target(7), 1024).await;
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(1),
        "legitimate stream took {took:?} behind silent clients"
    );
    // Once the handshake deadline passes the silent clients are cut off and counted.
    let metrics = s
        .metric_reaches("tether_relay_pending_handshakes", 0.0, 5 * SECOND)
        .await;
    // Exact counts: the 200 silent clients and the half ClientHello time out, the three
    // garbage openings are refused at once.
    let failures = |reason: &str| {
        metrics.get(&format!(
            r#"tether_relay_handshake_failures_total{{reason="{reason}",side="unknown"}}"#
        ))
    };
    assert_eq!(failures("handshake_timeout"), 201.0);
    assert_eq!(failures("bad_client_hello"), 3.0);
    assert_eq!(metrics.get("tether_relay_pending_handshakes"), 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_handshake_cap_refuses_excess_connections_immediately() {
    let limits = Limits {
        max_pending_handshakes: 5,
        ..Limits::default()
    };
    let s = setup(limits).await;
    let mut idle = Vec::new();
    for _ in 0..5 {
        idle.push(TcpStream::connect(s.bed.relay_addr).await.unwrap());
    }
    // All five hold their slot before the sixth comes.
    let held = s
        .metric_reaches("tether_relay_pending_handshakes", 5.0, 5 * SECOND)
        .await;
    assert_eq!(held.get("tether_relay_pending_handshakes"), 5.0);
    // The sixth is closed at once rather than queued.
    let mut sixth = TcpStream::connect(s.bed.relay_addr).await.unwrap();
    let mut buf = [0u8; 1];
    let closed = tokio::time::timeout(2 * SECOND, sixth.read(&mut buf)).await;
    assert!(matches!(closed, Ok(Ok(0)) | Ok(Err(_))), "{closed:?}");
    drop(idle);
    s.metric_reaches("tether_relay_pending_handshakes", 0.0, 5 * SECOND)
        .await;
    transfer(&s.target(7), 1024).await;
    let metrics = s.metrics().await;
    let failures = |reason: &str| {
        metrics.get(&format!(
            r#"tether_relay_handshake_failures_total{{reason="{reason}",side="unknown"}}"#
        ))
    };
    // The sixth was refused; the five idle ones closed before their ClientHello.
    assert_eq!(failures("too_many_pending_handshakes"), 1.0);
    assert_eq!(failures("closed_early"), 5.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_lets_streams_finish_then_stops() {
    let limits = Limits {
        drain_grace: Duration::ZERO,
        drain_deadline: 5 * SECOND,
        ..Limits::default()
    };
    let s = setup(limits).await;
    let mut stream = connect::open(&s.target(7)).await.unwrap();
    let Setup { bed, agent, .. } = s;
    let admin = bed.admin_addr;
    let stop = tokio::spawn(bed.stop());
    tokio::time::sleep(Duration::from_millis(200)).await;
    // During the drain the stream keeps working.
    stream.tls.write_all(b"still here").await.unwrap();
    let mut buf = [0u8; 10];
    stream.tls.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"still here");
    assert!(http_get(admin, "/ready").await.starts_with("HTTP/1.1 503"));
    drop(stream);
    tokio::time::timeout(10 * SECOND, stop)
        .await
        .expect("relay did not stop after its last stream")
        .unwrap();
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_source_cannot_take_every_pending_handshake_slot() {
    let s = setup(Limits::default()).await;
    let relay = s.bed.relay_addr;
    // 1,100 silent sockets from one address: more than the relay-wide cap of 1,024.
    let mut silent = Vec::new();
    for _ in 0..1100 {
        silent.push(connect_from([127, 0, 0, 9], relay).await);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // A service and a device from another address still get through, fast.
    let started = Instant::now();
    transfer(&s.target(7), 1024).await;
    let took = started.elapsed();
    assert!(took < SECOND, "service stream took {took:?}");
    let ca = s.bed.ca();
    let other = DeviceKey::parse("plant-a/pump-8").unwrap();
    let cert = ca
        .issue_device(&other, "tether.local", Duration::from_secs(600))
        .unwrap();
    let started = Instant::now();
    let reply = raw_device_handshake(relay, s.bed.ca_pem(), &cert, &other).await;
    let took = started.elapsed();
    assert!(reply.accepted, "{}", reply.message);
    assert!(took < SECOND, "device handshake took {took:?}");
    // Every socket beyond the source's share was refused.
    let refused =
        r#"tether_relay_handshake_failures_total{reason="too_many_pending_from_source",side="unknown"}"#;
    let expected = (1100 - Limits::default().max_pending_handshakes_per_source) as f64;
    let metrics = s.metric_reaches(refused, expected, 5 * SECOND).await;
    assert_eq!(metrics.get(refused), expected);
    drop(silent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_device_certificate_does_not_come_back_through_resumption() {
    tether_net::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let bed = Testbed::start(dir.path(), Limits::default()).await.unwrap();
    let cert = bed
        .ca()
        .issue_device(&device(), "tether.local", Duration::from_secs(3))
        .unwrap();
    // One client configuration, so its session cache (tickets) carries over, as an agent's does.
    let config = device_tls(bed.ca_pem(), &cert);
    let first = device_handshake_with(bed.relay_addr, config.clone(), &device())
        .await
        .unwrap();
    assert!(first.accepted, "{}", first.message);
    // A second connection while the certificate is valid also works.
    let again = device_handshake_with(bed.relay_addr, config.clone(), &device())
        .await
        .unwrap();
    assert!(again.accepted, "{}", again.message);
    tokio::time::sleep(Duration::from_secs(4)).await;
    // Expired now: the handshake must fail (no ticket may restore the old certificate).
    match device_handshake_with(bed.relay_addr, config, &device()).await {
        Err(_) => {}
        Ok(reply) => assert!(!reply.accepted, "an expired device certificate was accepted"),
    }
}

/// Waits until `cond` holds, for up to `within`.
async fn eventually(within: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cond()
}

fn agent_connected(agent: &tether_cli::testbed::RunningAgent) -> bool {
    matches!(*agent.state.borrow(), tether_agent::AgentState::Connected { .. })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_device_is_cut_and_refused_until_lifted() {
    let s = setup(Limits::default()).await;
    let mut stream = connect::open(&s.target(7)).await.unwrap();
    let revoked_at = Instant::now();
    assert!(s.bed.relay.revoke_device(&device()), "no live session was closed");
    // The live stream ends with the session, well within 2 s.
    let mut buf = [0u8; 8];
    let ended = tokio::time::timeout(2 * SECOND, stream.tls.read(&mut buf)).await;
    assert!(
        matches!(ended, Ok(Ok(0)) | Ok(Err(_))),
        "stream still open: {ended:?}"
    );
    assert!(eventually(2 * SECOND, || !agent_connected(&s.agent)).await);
    assert!(revoked_at.elapsed() < 2 * SECOND);
    // The agent keeps retrying and keeps being refused.
    tokio::time::sleep(SECOND).await;
    assert!(!s.bed.relay.is_connected(&device()));
    let metrics = s.metrics().await;
    // The agent retries with backoff, so the count is at least its first refused attempt.
    let refused =
        metrics.get(r#"tether_relay_handshake_failures_total{reason="device_revoked",side="device"}"#);
    assert!(refused >= 1.0, "device_revoked counted {refused} times");
    // Lifted: it reconnects by itself.
    s.bed.relay.lift_device(&device());
    assert!(eventually(5 * SECOND, || s.bed.relay.is_connected(&device())).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_revocation_file_cuts_devices_and_streams_and_survives_bad_edits() {
    tether_net::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("revoked.txt");
    std::fs::write(&file, "# nothing revoked yet\n").unwrap();
    let bed = Testbed::start_with(&dir.path().join("pki"), Limits::default(), |c| {
        c.revocation_file = Some(file.clone());
    })
    .await
    .unwrap();
    let echo = tether_net::testing::echo_server().await.unwrap();
    let mut agent = bed
        .spawn_agent(bed.agent_config(&device(), &BTreeMap::from([(7, echo)])).unwrap())
        .unwrap();
    agent.connected(10 * SECOND).await.unwrap();

    // A stream revoked by UID: its live connection is cut, new ones refused.
    let now = now();
    let token = bed.signer.sign(&claims(7, now, now + 600));
    let target = bed.target(&device(), 7, &token).unwrap();
    let mut live = connect::open(&target).await.unwrap();
    std::fs::write(&file, format!("stream test-stream {}\n", now + 600)).unwrap();
    let mut buf = [0u8; 8];
    let ended = tokio::time::timeout(3 * SECOND, live.tls.read(&mut buf)).await;
    assert!(
        matches!(ended, Ok(Ok(0)) | Ok(Err(_))),
        "revoked stream still open: {ended:?}"
    );
    assert_eq!(
        refusal_reason(connect::open(&target).await.err().unwrap()),
        "stream_revoked"
    );

    // A device: cut within the poll interval plus the 2 s promise.
    let edited = Instant::now();
    std::fs::write(&file, "device plant-a/pump-7\n").unwrap();
    assert!(eventually(3 * SECOND, || !bed.relay.is_connected(&device())).await);
    assert!(edited.elapsed() < 3 * SECOND);
    assert!(eventually(SECOND, || !agent_connected(&agent)).await);
    // The stream entry is gone from the file, so that revocation is lifted.
    assert!(bed.relay.revoked().1.is_empty());

    // A broken edit is ignored: the device stays revoked and the relay keeps serving.
    std::fs::write(&file, "device plant-a/pump-7\nrevoke everything please\n").unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(!bed.relay.is_connected(&device()));
    assert_eq!(bed.relay.revoked().0.len(), 1);
    // So is a deleted file.
    std::fs::remove_file(&file).unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(bed.relay.revoked().0.len(), 1);

    // An empty file lifts everything: the agent comes back by itself.
    std::fs::write(&file, "").unwrap();
    assert!(eventually(5 * SECOND, || bed.relay.is_connected(&device())).await);
    agent.stop().await;
    bed.stop().await;
}

/// Resident memory of this process (relay, agent and attackers all live here), KiB.
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_clients_from_several_addresses_do_not_lock_out_a_device() {
    let limits = Limits {
        handshake_timeout: 3 * SECOND,
        ..Limits::default()
    };
    let s = setup(limits).await;
    let relay = s.bed.relay_addr;
    let before = rss_kib();
    // 1,000 silent connections and 1,000 that drip a ClientHello a byte every 200 ms, spread over
    // eight addresses (127.0.0.2-9): together they are twice the relay-wide pending cap.
    let hello = std::fs::read(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../proto/fuzz/corpus/client_hello/real_openssl_tether1"),
    )
    .unwrap();
    let started = Instant::now();
    let mut silent = Vec::new();
    let mut drippers = Vec::new();
    for i in 0..1000u32 {
        silent.push(connect_from([127, 0, 0, 2 + (i % 8) as u8], relay).await);
        let mut c = connect_from([127, 0, 0, 2 + (i % 8) as u8], relay).await;
        let hello = hello.clone();
        drippers.push(tokio::spawn(async move {
            for b in hello {
                if c.write_all(&[b]).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // A device handshake from its own address completes quickly meanwhile.
    let other = DeviceKey::parse("plant-a/pump-8").unwrap();
    let cert = s
        .bed
        .ca()
        .issue_device(&other, "tether.local", Duration::from_secs(600))
        .unwrap();
    let t = Instant::now();
    let reply = raw_device_handshake(relay, s.bed.ca_pem(), &cert, &other).await;
    let took = t.elapsed();
    assert!(reply.accepted, "{}", reply.message);
    assert!(took < SECOND, "device handshake took {took:?} under attack");
    let during = rss_kib();
    // Stalled handshakes are closed at the deadline (3 s after they connected, plus slack).
    let mut buf = [0u8; 16];
    for c in silent.iter_mut().take(50) {
        let closed = tokio::time::timeout(5 * SECOND, c.read(&mut buf)).await;
        assert!(
            matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
            "silent client not closed: {closed:?}"
        );
    }
    assert!(started.elapsed() < 9 * SECOND);
    for d in drippers {
        d.abort();
    }
    tokio::time::sleep(SECOND).await;
    let metrics = s.metrics().await;
    assert_eq!(metrics.get("tether_relay_pending_handshakes"), 0.0);
    let growth_mib = during.saturating_sub(before) / 1024;
    println!(
        "hostile clients: device handshake {took:?}; RSS {} MiB before, {} MiB with 2,000 hostile \
         connections (+{growth_mib} MiB, client sockets and tasks included)",
        before / 1024,
        during / 1024
    );
    assert!(growth_mib < 64, "RSS grew by {growth_mib} MiB");
}
