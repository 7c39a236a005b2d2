//! The agent against a tiny in-process relay (TLS server + HTTP/2 client with reversed roles):
//! preface exchange, streams through a local echo server, refusals, reconnects and keepalive.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use bytes::{Bytes, BytesMut};
use h2::client::SendRequest;
use http::{Request, StatusCode};
use tempfile::TempDir;
use tether_agent::{Agent, AgentState, Config, config::Target};
use tether_net::{h2io::H2Stream, pki::Ca, tls};
use tether_proto::{
    HEADER_ERROR, HEADER_STREAM_UID, HEADER_TARGET_PORT,
    name::DeviceKey,
    preface::{Decoded, HEADER_LEN, Preface, PrefaceReply},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::watch,
    time::timeout,
};
use tokio_rustls::{TlsAcceptor, server::TlsStream};
use tokio_util::sync::CancellationToken;

const DAY: Duration = Duration::from_secs(86_400);
/// Generous bound for anything a test waits on, so a bug fails the test instead of hanging it.
const WAIT: Duration = Duration::from_secs(10);
const RELAY_DOMAIN: &str = "relay.test";

/// Test PKI written to a temporary directory, and a relay TLS acceptor.
struct Pki {
    dir: TempDir,
    acceptor: TlsAcceptor,
}

fn pki() -> Pki {
    // Agent logs go to the test's captured output (shown when a test fails).
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("tether_agent=debug"))
        .with_test_writer()
        .try_init();
    let (ca, _) = Ca::generate("test CA", DAY).unwrap();
    let server = ca.issue_server(&[RELAY_DOMAIN.into()], &[], DAY).unwrap();
    let device = ca
        .issue_device(
            &DeviceKey::parse("factory-1/pump-7").unwrap(),
            "tether.local",
            DAY,
        )
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ca.crt"), ca.cert_pem()).unwrap();
    std::fs::write(dir.path().join("device.crt"), &device.cert_pem).unwrap();
    std::fs::write(dir.path().join("device.key"), &device.key_pem).unwrap();
    let ca_certs = tls::parse_certs("ca", "test", ca.cert_pem().as_bytes()).unwrap();
    let config = tls::relay_server_config(
        tls::parse_certs("server", "test", server.cert_pem.as_bytes()).unwrap(),
        tls::parse_key("server key", "test", server.key_pem.as_bytes()).unwrap(),
        &ca_certs,
    )
    .unwrap();
    Pki {
        dir,
        acceptor: TlsAcceptor::from(Arc::new(config)),
    }
}

fn agent_config(pki: &Pki, relay_port: u16, allow: BTreeMap<u16, Target>) -> Config {
    let p = |f: &str| pki.dir.path().join(f);
    let mut config = Config::new(
        "127.0.0.1",
        relay_port,
        RELAY_DOMAIN,
        p("device.crt"),
        p("device.key"),
        p("ca.crt"),
    );
    config.allow = allow;
    config.backoff.base = Duration::from_millis(20);
    config.backoff.cap = Duration::from_millis(200);
    config.drain_timeout = Duration::from_secs(2);
    config.proxy_from_env = false;
    config
}

/// Accepts one device connection: TLS (checking SNI and the client certificate), then the preface.
async fn accept_device(listener: &TcpListener, acceptor: &TlsAcceptor, accept: bool) -> TlsStream<TcpStream> {
    let (tcp, _) = listener.accept().await.unwrap();
    let mut tls = acceptor.accept(tcp).await.unwrap();
    {
        let (_, conn) = tls.get_ref();
        assert_eq!(conn.server_name(), Some("pump-7.factory-1.relay.test"));
        assert!(
            conn.peer_certificates().is_some_and(|c| !c.is_empty()),
            "device sent no certificate"
        );
        assert_eq!(conn.alpn_protocol(), Some(tether_proto::ALPN_DEVICE));
    }
    let mut buf = BytesMut::zeroed(HEADER_LEN);
    tls.read_exact(&mut buf).await.unwrap();
    let len = usize::from(u16::from_be_bytes([buf[9], buf[10]]));
    buf.resize(HEADER_LEN + len, 0);
    tls.read_exact(&mut buf[HEADER_LEN..]).await.unwrap();
    let Decoded::Complete(preface) = Preface::decode(&mut buf).unwrap() else {
        panic!("incomplete preface")
    };
    assert_eq!(preface.agent_version, tether_agent::AGENT_VERSION);
    let reply = PrefaceReply {
        accepted: accept,
        message: if accept {
            String::new()
        } else {
            "device disabled".into()
        },
        relay_version: "test-relay".into(),
    };
    let mut out = BytesMut::new();
    reply.encode(&mut out);
    tls.write_all(&out).await.unwrap();
    tls.flush().await.unwrap();
    tls
}

/// Starts HTTP/2 as the client on an accepted device connection; returns the request handle and
/// the task driving the connection (abort it to drop the connection abruptly).
async fn start_h2(tls: TlsStream<TcpStream>) -> (SendRequest<Bytes>, tokio::task::JoinHandle<()>) {
    let (client, conn) = tether_net::h2io::client_builder(16)
        .handshake::<_, Bytes>(tls)
        .await
        .unwrap();
    let driver = tokio::spawn(async move {
        let _ = conn.await;
    });
    (client, driver)
}

/// Opens a stream for `port`; returns the status, the `tether-error` header and the stream on 200.
async fn open(
    client: &SendRequest<Bytes>,
    port: Option<&str>,
) -> (StatusCode, Option<String>, Option<H2Stream>) {
    let mut req = Request::post("https://device/").header(HEADER_STREAM_UID, "0f3c-test");
    if let Some(port) = port {
        req = req.header(HEADER_TARGET_PORT, port);
    }
    let mut client = client.clone().ready().await.unwrap();
    let (resp, send) = client.send_request(req.body(()).unwrap(), false).unwrap();
    let resp = timeout(WAIT, resp).await.unwrap().unwrap();
    let status = resp.status();
    let error = resp
        .headers()
        .get(HEADER_ERROR)
        .map(|v| v.to_str().unwrap().to_owned());
    let stream = (status == StatusCode::OK).then(|| H2Stream::new(send, resp.into_body()));
    (status, error, stream)
}

async fn wait_state(rx: &mut watch::Receiver<AgentState>, want: impl Fn(&AgentState) -> bool) -> AgentState {
    timeout(WAIT, rx.wait_for(|s| want(s)))
        .await
        .expect("timed out waiting for agent state")
        .unwrap()
        .clone()
}

async fn echo_round_trip(mut stream: H2Stream, payload: &[u8]) {
    stream.write_all(payload).await.unwrap();
    stream.shutdown().await.unwrap(); // half-close: the echo server sees EOF and closes too
    let mut back = Vec::new();
    timeout(WAIT, stream.read_to_end(&mut back))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(back, payload);
}

fn relay_listener() -> (std::net::TcpListener, u16) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    l.set_nonblocking(true).unwrap();
    (l, port)
}

#[tokio::test]
async fn serves_streams_refuses_and_shuts_down() {
    let pki = pki();
    let (std_listener, relay_port) = relay_listener();
    let listener = TcpListener::from_std(std_listener).unwrap();
    let echo = tether_net::testing::echo_server().await.unwrap().port();
    // A port that was free a moment ago: nothing listens there.
    let dead = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let allow = BTreeMap::from([
        (echo, Target::local(echo)),
        (
            2222,
            Target {
                host: "127.0.0.1".into(),
                port: echo,
            },
        ),
        (dead, Target::local(dead)),
    ]);
    let agent = Agent::new(agent_config(&pki, relay_port, allow)).unwrap();
    assert_eq!(
        agent.device().to_string(),
        "factory-1/pump-7",
        "device taken from the certificate"
    );
    let mut state = agent.state();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(agent.run(shutdown.clone()));

    let tls = timeout(WAIT, accept_device(&listener, &pki.acceptor, true))
        .await
        .unwrap();
    let (client, _driver) = start_h2(tls).await;
    let connected = wait_state(&mut state, |s| matches!(s, AgentState::Connected { .. })).await;
    assert_eq!(
        connected,
        AgentState::Connected {
            relay_version: "test-relay".into()
        }
    );

    // Allowed ports: bytes echo back through agent and target, half-close included.
    let (status, _, stream) = open(&client, Some(&echo.to_string())).await;
    assert_eq!(status, StatusCode::OK);
    echo_round_trip(stream.unwrap(), b"hello through the tunnel").await;
    let (status, _, stream) = open(&client, Some("2222")).await;
    assert_eq!(status, StatusCode::OK);
    let big: Vec<u8> = (0..2 * 1024 * 1024u32).map(|i| (i % 253) as u8).collect();
    echo_round_trip(stream.unwrap(), &big).await;

    // Refusals.
    let (status, error, _) = open(&client, Some("9")).await;
    assert_eq!(
        (status, error.as_deref()),
        (StatusCode::FORBIDDEN, Some("port_not_allowed"))
    );
    let (status, error, _) = open(&client, None).await;
    assert_eq!(
        (status, error.as_deref()),
        (StatusCode::BAD_REQUEST, Some("bad_request"))
    );
    let (status, error, _) = open(&client, Some("not-a-port")).await;
    assert_eq!(
        (status, error.as_deref()),
        (StatusCode::BAD_REQUEST, Some("bad_request"))
    );
    let (status, error, _) = open(&client, Some(&dead.to_string())).await;
    assert_eq!(
        (status, error.as_deref()),
        (StatusCode::BAD_GATEWAY, Some("target_unreachable"))
    );

    // Shutdown with a stream in flight: it keeps working until it ends, then the agent exits.
    let (status, _, stream) = open(&client, Some(&echo.to_string())).await;
    assert_eq!(status, StatusCode::OK);
    let mut stream = stream.unwrap();
    shutdown.cancel();
    tokio::time::sleep(Duration::from_millis(50)).await;
    stream.write_all(b"still here").await.unwrap();
    stream.shutdown().await.unwrap();
    let mut back = Vec::new();
    timeout(WAIT, stream.read_to_end(&mut back))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(back, b"still here");
    timeout(WAIT, task).await.unwrap().unwrap().unwrap();
    assert_eq!(*state.borrow(), AgentState::Stopped);
}

#[tokio::test]
async fn reconnects_after_drop_refusal_and_dead_keepalive() {
    let pki = pki();
    let (std_listener, relay_port) = relay_listener();
    let listener = TcpListener::from_std(std_listener).unwrap();
    let echo = tether_net::testing::echo_server().await.unwrap().port();
    let mut config = agent_config(&pki, relay_port, BTreeMap::from([(echo, Target::local(echo))]));
    config.keepalive_interval = Duration::from_millis(100);
    config.keepalive_timeout = Duration::from_millis(200);
    let agent = Agent::new(config).unwrap();
    let mut state = agent.state();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(agent.run(shutdown.clone()));

    // 1. The relay refuses the preface: the agent backs off and tries again.
    drop(
        timeout(WAIT, accept_device(&listener, &pki.acceptor, false))
            .await
            .unwrap(),
    );
    wait_state(&mut state, |s| matches!(s, AgentState::Backoff { .. })).await;

    // 2. Accepted, then the relay drops the connection abruptly: the agent reconnects.
    let tls = timeout(WAIT, accept_device(&listener, &pki.acceptor, true))
        .await
        .unwrap();
    let (client, driver) = start_h2(tls).await;
    wait_state(&mut state, |s| matches!(s, AgentState::Connected { .. })).await;
    let (status, _, _stream) = open(&client, Some(&echo.to_string())).await;
    assert_eq!(status, StatusCode::OK);
    driver.abort(); // drops the TCP connection with a stream open: no GOAWAY, no close_notify

    // 3. Accepted, HTTP/2 started, then the relay stops reading (a black-holed link): keepalive
    //    PINGs go unanswered and the agent gives up on the connection. The relay side stays open,
    //    so the only way the agent dials again (step 4) is by detecting the dead peer.
    let tls = timeout(WAIT, accept_device(&listener, &pki.acceptor, true))
        .await
        .unwrap();
    let (stalled_client, stalled_conn) = tether_net::h2io::client_builder(16)
        .handshake::<_, Bytes>(tls)
        .await
        .unwrap();

    // 4. And it comes back once more, serving streams again.
    let tls = timeout(WAIT, accept_device(&listener, &pki.acceptor, true))
        .await
        .unwrap();
    let (client, _driver) = start_h2(tls).await;
    wait_state(&mut state, |s| matches!(s, AgentState::Connected { .. })).await;
    let (status, _, stream) = open(&client, Some(&echo.to_string())).await;
    assert_eq!(status, StatusCode::OK);
    echo_round_trip(stream.unwrap(), b"again").await;
    drop((stalled_client, stalled_conn));

    shutdown.cancel();
    timeout(WAIT, task).await.unwrap().unwrap().unwrap();
}

#[tokio::test]
async fn wrong_ca_is_a_logged_retryable_failure() {
    let pki = pki();
    let other = self::pki(); // a relay certificate from a CA the agent does not trust
    let (std_listener, relay_port) = relay_listener();
    let listener = TcpListener::from_std(std_listener).unwrap();
    let agent = Agent::new(agent_config(&pki, relay_port, BTreeMap::new())).unwrap();
    let mut state = agent.state();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(agent.run(shutdown.clone()));
    let (tcp, _) = timeout(WAIT, listener.accept()).await.unwrap().unwrap();
    assert!(
        other.acceptor.accept(tcp).await.is_err(),
        "agent must reject an untrusted relay"
    );
    let s = wait_state(&mut state, |s| matches!(s, AgentState::Backoff { .. })).await;
    assert!(matches!(s, AgentState::Backoff { attempt: 1, .. }), "{s:?}");
    shutdown.cancel();
    timeout(WAIT, task).await.unwrap().unwrap().unwrap();
}

#[test]
fn bad_tls_material_fails_before_dialling() {
    let pki = pki();
    let mut config = agent_config(&pki, 1, BTreeMap::new());
    config.key = pki.dir.path().join("missing.key");
    let err = Agent::new(config.clone()).unwrap_err();
    assert_eq!(err.exit_code(), 64);
    assert!(err.to_string().contains("missing.key"), "{err}");
    std::fs::write(pki.dir.path().join("empty.crt"), "\n").unwrap();
    config.key = pki.dir.path().join("device.key");
    config.ca = pki.dir.path().join("empty.crt");
    assert!(
        Agent::new(config.clone())
            .unwrap_err()
            .to_string()
            .contains("is empty")
    );
    // The certificate names factory-1/pump-7; configuring another device is caught at start.
    config.ca = pki.dir.path().join("ca.crt");
    config.device = Some(DeviceKey::parse("factory-1/other").unwrap());
    let err = Agent::new(config).unwrap_err();
    assert!(err.to_string().contains("issued to factory-1/pump-7"), "{err}");
}
