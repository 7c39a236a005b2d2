//! The multiplexed (HTTP/2) service connection against a real relay and agent on loopback: many
//! tunnelled connections on one TLS connection, each authorized on its own.
//!
//! Two clients drive it: the [`Mux`] that `tether connect --listen` and the kubectl plugin use,
//! and a bare h2 client written from docs/protocol.md (as a third party would), which can put
//! streams of different tokens, and of another device, on one connection.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use bytes::Bytes;
use tether_cli::{
    connect::{ConnectError, Target},
    mux::Mux,
    testbed::{RELAY_DOMAIN, Testbed},
};
use tether_net::{h2io::H2Stream, tls};
use tether_proto::{ALPN_SERVICE_H2, head, name::DeviceKey, token::StreamClaims};
use tether_relay::Limits;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

const SECOND: Duration = Duration::from_secs(1);

fn device() -> DeviceKey {
    DeviceKey::parse("plant-a/pump-7").unwrap()
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn claims(uid: &str, device: &DeviceKey, not_before: u64, expires_at: u64) -> StreamClaims {
    StreamClaims {
        stream_uid: uid.into(),
        namespace: device.namespace().into(),
        device: device.name().into(),
        port: 7,
        audience: RELAY_DOMAIN.into(),
        issued_at: not_before,
        not_before,
        expires_at,
        max_connections: Some(64),
        idle_timeout: None,
    }
}

struct Setup {
    bed: Testbed,
    _agents: Vec<tether_cli::testbed::RunningAgent>,
    _dir: tempfile::TempDir,
}

/// A relay and agents for `devices`, each serving port 7 (echo).
async fn setup(devices: &[DeviceKey]) -> Setup {
    tether_net::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let bed = Testbed::start(&dir.path().join("pki"), Limits::default())
        .await
        .unwrap();
    let echo = tether_net::testing::echo_server().await.unwrap();
    let mut agents = Vec::new();
    for d in devices {
        let config = bed.agent_config(d, &BTreeMap::from([(7, echo)])).unwrap();
        let mut agent = bed.spawn_agent(config).unwrap();
        agent.connected(10 * SECOND).await.unwrap();
        agents.push(agent);
    }
    Setup {
        bed,
        _agents: agents,
        _dir: dir,
    }
}

impl Setup {
    fn target(&self, token: &str) -> Target {
        self.bed.target(&device(), 7, token).unwrap()
    }

    /// The value of an unlabelled metric (or one written with its labels).
    async fn metric(&self, name: &str) -> f64 {
        let mut s = TcpStream::connect(self.bed.admin_addr).await.unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no metric {name} in\n{out}"))
    }
}

/// Writes `msg`, reads the echo back.
async fn echo(stream: &mut H2Stream, msg: &[u8]) {
    stream.write_all(msg).await.unwrap();
    let mut got = vec![0u8; msg.len()];
    tokio::time::timeout(10 * SECOND, stream.read_exact(&mut got))
        .await
        .expect("echo timed out")
        .unwrap();
    assert_eq!(got, msg);
}

fn refusal(err: ConnectError) -> (u16, String) {
    match err {
        ConnectError::Refused { status, reason, .. } => (status, reason),
        other => panic!("expected a refusal, got {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tunnelled_connections_share_one_tls_connection() {
    let s = setup(&[device()]).await;
    let now = now();
    let mux = Arc::new(Mux::new(s.target(&s.bed.signer.sign(&claims(
        "shared",
        &device(),
        now,
        now + 600,
    )))));
    // Ten concurrent connections, then ten more one after another, each with its own bytes.
    let tasks: Vec<_> = (0..10u8)
        .map(|i| {
            let mux = mux.clone();
            tokio::spawn(async move {
                let mut stream = mux.open().await.unwrap();
                echo(&mut stream, &vec![i; 256 * 1024]).await;
                stream
            })
        })
        .collect();
    let mut open = Vec::new();
    for t in tasks {
        open.push(t.await.unwrap());
    }
    for i in 0..10u8 {
        let mut stream = mux.open().await.unwrap();
        echo(&mut stream, &[i; 100]).await;
        // A half-close still gets the device's answer and its EOF.
        stream.shutdown().await.unwrap();
        let mut rest = Vec::new();
        stream.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty());
    }
    assert_eq!(mux.connections_dialled(), 1);
    assert_eq!(s.metric("tether_relay_active_streams").await, 10.0);
    drop(open);
    // One device connection and one service connection: 20 streams paid no handshake.
    assert_eq!(s.metric("tether_relay_connections_accepted_total").await, 2.0);
    assert_eq!(s.metric("tether_relay_multiplexed_connections").await, 1.0);
    assert_eq!(
        s.metric(r#"tether_relay_stream_setups_total{result="ok"}"#).await,
        20.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_token_fails_its_stream_and_the_others_continue() {
    let s = setup(&[device()]).await;
    let now = now();
    // A good token and one past its expiry (and the relay's clock skew), on one connection.
    let good = s.bed.signer.sign(&claims("good", &device(), now, now + 600));
    let expired = s
        .bed
        .signer
        .sign(&claims("old", &device(), now - 7200, now - 3600));
    let mut raw = RawClient::connect(&s, &device()).await;
    let mut first = raw.open(&good).await.unwrap();
    echo(&mut first, b"before").await;
    assert_eq!(raw.open(&expired).await.unwrap_err().1, "token_expired");
    echo(&mut first, b"after").await;
    let mut second = raw.open(&good).await.unwrap();
    echo(&mut second, b"second").await;
    assert_eq!(s.metric("tether_relay_connections_accepted_total").await, 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_one_stream_cuts_only_its_connections_on_a_shared_connection() {
    let s = setup(&[device()]).await;
    let now = now();
    let keep = s.bed.signer.sign(&claims("keep", &device(), now, now + 600));
    let cut = s.bed.signer.sign(&claims("cut", &device(), now, now + 600));
    let mut raw = RawClient::connect(&s, &device()).await;
    let mut kept = raw.open(&keep).await.unwrap();
    let mut doomed = raw.open(&cut).await.unwrap();
    echo(&mut kept, b"one").await;
    echo(&mut doomed, b"two").await;
    s.bed.relay.revoke("cut", now + 600);
    let mut buf = [0u8; 8];
    let ended = tokio::time::timeout(5 * SECOND, doomed.read(&mut buf)).await;
    assert!(
        matches!(ended, Ok(Ok(0) | Err(_))),
        "revoked stream still open: {ended:?}"
    );
    assert_eq!(raw.open(&cut).await.unwrap_err(), (403, "stream_revoked".into()));
    echo(&mut kept, b"still here").await;
    let mut again = raw.open(&keep).await.unwrap();
    echo(&mut again, b"and new ones too").await;
    assert_eq!(s.metric("tether_relay_connections_accepted_total").await, 2.0);
    assert_eq!(
        s.metric(r#"tether_relay_streams_closed_by_relay_total{reason="revoked"}"#)
            .await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_for_another_device_is_refused_on_the_connection() {
    let other = DeviceKey::parse("plant-a/pump-8").unwrap();
    let s = setup(&[device(), other.clone()]).await;
    let now = now();
    // A valid token for the other device, on a connection whose SNI names the first.
    let token = s.bed.signer.sign(&claims("other", &other, now, now + 600));
    let mut raw = RawClient::connect(&s, &device()).await;
    let err = raw.open_for(&other, &token).await.unwrap_err();
    assert_eq!(err, (400, "sni_mismatch".into()));
    // The same token on a connection for its own device works.
    let mut own = RawClient::connect(&s, &other).await;
    let mut stream = own.open_for(&other, &token).await.unwrap();
    echo(&mut stream, b"right device").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_keep_their_codes_and_the_connection() {
    let s = setup(&[device()]).await;
    let now = now();
    let mux = Mux::new(s.target("not-a-token"));
    assert_eq!(
        refusal(mux.open().await.unwrap_err()),
        (403, "token_malformed".into())
    );
    let mut c = claims("limited", &device(), now, now + 600);
    c.max_connections = Some(1);
    let mux = Mux::new(s.target(&s.bed.signer.sign(&c)));
    let mut only = mux.open().await.unwrap();
    assert_eq!(
        refusal(mux.open().await.unwrap_err()),
        (429, "stream_connection_limit".into())
    );
    echo(&mut only, b"the first still works").await;
    assert_eq!(mux.connections_dialled(), 1);
}

/// A bare HTTP/2 service client, as docs/protocol.md §3.2 describes it.
struct RawClient {
    send: h2::client::SendRequest<Bytes>,
}

impl RawClient {
    /// TLS with SNI `device`'s name and ALPN `h2`, then the HTTP/2 handshake.
    async fn connect(s: &Setup, device: &DeviceKey) -> Self {
        let cas = tls::parse_certs("CA", "test", s.bed.ca_pem().as_bytes()).unwrap();
        let mut config = tls::service_client_config(&cas, RELAY_DOMAIN).unwrap();
        config.alpn_protocols = vec![ALPN_SERVICE_H2.to_vec()];
        let tcp = TcpStream::connect(s.bed.relay_addr).await.unwrap();
        let sni = rustls_pki_types::ServerName::try_from(device.server_name(RELAY_DOMAIN)).unwrap();
        let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(sni, tcp)
            .await
            .unwrap();
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(ALPN_SERVICE_H2));
        let (send, conn) = h2::client::handshake(tls).await.unwrap();
        tokio::spawn(conn);
        Self { send }
    }

    async fn open(&mut self, token: &str) -> Result<H2Stream, (u16, String)> {
        self.open_for(&device(), token).await
    }

    /// `CONNECT <device>:7` with `token`; the stream, or the refusal's status and reason.
    async fn open_for(&mut self, device: &DeviceKey, token: &str) -> Result<H2Stream, (u16, String)> {
        let request = http::Request::builder()
            .method(http::Method::CONNECT)
            .uri(head::connect_target(device, 7))
            .header("authorization", format!("Bearer {token}"))
            .body(())
            .unwrap();
        let mut send = self.send.clone().ready().await.unwrap();
        let (response, stream) = send.send_request(request, false).unwrap();
        let response = response.await.unwrap();
        let status = response.status().as_u16();
        if status == 200 {
            return Ok(H2Stream::new(stream, response.into_body()));
        }
        let reason = response.headers()["tether-error"].to_str().unwrap().to_owned();
        Err((status, reason))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_refusals_end_the_connection_and_the_client_redials() {
    let s = setup(&[device()]).await;
    let mux = Mux::new(s.target("not-a-token"));
    for _ in 0..tether_relay::mux::MAX_REFUSALS_IN_A_ROW {
        assert_eq!(refusal(mux.open().await.unwrap_err()).1, "token_malformed");
    }
    assert_eq!(mux.connections_dialled(), 1);
    // The relay sent GOAWAY after the last refusal: the next stream needs a new connection, and
    // still gets its own answer (not a connection error).
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(refusal(mux.open().await.unwrap_err()).1, "token_malformed");
    assert_eq!(mux.connections_dialled(), 2);
    assert_eq!(s.metric("tether_relay_connections_accepted_total").await, 3.0);
}
