//! The metrics a real relay and a real agent export after known traffic, read the way Prometheus
//! reads them (the relay's `/metrics` over HTTP, the agent's registry through the same encoder),
//! parsed and compared value for value: the numbers the dashboards and alerts are built on.

use std::{collections::BTreeMap, net::SocketAddr, time::Duration};

use tether_cli::{connect, testbed::Testbed};
use tether_net::admin::parse_exposition;
use tether_proto::name::DeviceKey;
use tether_relay::Limits;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

/// Bytes sent through the tunnel; odd, so an off-by-one in counting shows.
const PAYLOAD: usize = 3 * 1024 * 1024 + 17;

/// A server that reads everything, then answers with a 5-byte trailer and closes.
async fn sink_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                while s.read(&mut buf).await.is_ok_and(|n| n > 0) {}
                let _ = s.write_all(b"done!").await;
                let _ = s.shutdown().await;
            });
        }
    });
    addr
}

async fn scrape(addr: SocketAddr) -> BTreeMap<String, f64> {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    let (head, body) = out.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    parse_exposition(body).unwrap()
}

fn value(m: &BTreeMap<String, f64>, series: &str) -> f64 {
    *m.get(series)
        .unwrap_or_else(|| panic!("{series} missing from {:#?}", m.keys().collect::<Vec<_>>()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_and_agent_count_exactly_what_went_through() {
    tether_net::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let bed = Testbed::start(&dir.path().join("pki"), Limits::default())
        .await
        .unwrap();
    let device = DeviceKey::parse("plant-a/pump-7").unwrap();
    let sink = sink_server().await;
    let config = bed.agent_config(&device, &BTreeMap::from([(9, sink)])).unwrap();
    let agent = tether_agent::Agent::new(config).unwrap();
    let agent_metrics = agent.metrics().clone();
    let mut state = agent.state();
    let stop = tokio_util::sync::CancellationToken::new();
    let agent_task = tokio::spawn(agent.run(stop.clone()));
    state
        .wait_for(|s| matches!(s, tether_agent::AgentState::Connected { .. }))
        .await
        .unwrap();

    // One stream carrying PAYLOAD bytes up and 5 back.
    let token = bed.token(&device, 9, Duration::from_secs(600)).unwrap();
    let stream = connect::open(&bed.target(&device, 9, &token).unwrap())
        .await
        .unwrap();
    let (mut r, mut w) = tokio::io::split(stream.tls);
    w.write_all(&vec![0x5a; PAYLOAD]).await.unwrap();
    w.shutdown().await.unwrap();
    let mut back = stream.early.to_vec();
    r.read_to_end(&mut back).await.unwrap();
    assert_eq!(back, b"done!");

    // Two refusals: a token for another port, and a port the agent does not allow.
    let wrong_port = bed.token(&device, 22, Duration::from_secs(600)).unwrap();
    assert!(
        connect::open(&bed.target(&device, 9, &wrong_port).unwrap())
            .await
            .is_err()
    );
    let not_allowed = bed.token(&device, 2222, Duration::from_secs(600)).unwrap();
    assert!(
        connect::open(&bed.target(&device, 2222, &not_allowed).unwrap())
            .await
            .is_err()
    );

    // The relay decrements active streams when both directions have ended; give it a moment.
    let mut relay = scrape(bed.admin_addr).await;
    for _ in 0..50 {
        if value(&relay, "tether_relay_active_streams") == 0.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        relay = scrape(bed.admin_addr).await;
    }
    let p = PAYLOAD as f64;
    assert_eq!(
        value(
            &relay,
            r#"tether_relay_bytes_total{direction="service_to_device"}"#
        ),
        p
    );
    assert_eq!(
        value(
            &relay,
            r#"tether_relay_bytes_total{direction="device_to_service"}"#
        ),
        5.0
    );
    assert_eq!(
        value(&relay, r#"tether_relay_stream_setups_total{result="ok"}"#),
        1.0
    );
    assert_eq!(
        value(
            &relay,
            r#"tether_relay_stream_setups_total{result="token_wrong_port"}"#
        ),
        1.0
    );
    assert_eq!(
        value(
            &relay,
            r#"tether_relay_stream_setups_total{result="device_port_not_allowed"}"#
        ),
        1.0
    );
    assert_eq!(value(&relay, "tether_relay_active_streams"), 0.0);
    assert_eq!(value(&relay, "tether_relay_connected_devices"), 1.0);
    assert_eq!(value(&relay, "tether_relay_pending_handshakes"), 0.0);
    // Only the successful setup is timed.
    assert_eq!(
        value(&relay, "tether_relay_stream_setup_duration_seconds_count"),
        1.0
    );
    assert_eq!(
        value(&relay, r#"tether_relay_build_info{version="0.1.0"}"#),
        1.0,
        "build info carries the crate version"
    );
    // Process metrics for the CPU and memory panels (Linux /proc).
    assert!(value(&relay, "process_resident_memory_bytes") > 0.0);
    assert!(relay.contains_key("process_cpu_seconds_total"));
    // No series carries a device or stream ID (cardinality).
    for series in relay.keys() {
        assert!(
            !series.contains("pump-7") && !series.contains("plant-a"),
            "{series}"
        );
    }

    // The agent saw one stream through and one refusal; bytes are counted when a stream ends.
    for _ in 0..50 {
        if agent_metrics.active_streams.get() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut buf = Vec::new();
    prometheus::Encoder::encode(
        &prometheus::TextEncoder::new(),
        &agent_metrics.registry.gather(),
        &mut buf,
    )
    .unwrap();
    let agent = parse_exposition(std::str::from_utf8(&buf).unwrap()).unwrap();
    assert_eq!(
        value(&agent, r#"tether_agent_bytes_total{direction="to_target"}"#),
        p
    );
    assert_eq!(
        value(&agent, r#"tether_agent_bytes_total{direction="from_target"}"#),
        5.0
    );
    assert_eq!(value(&agent, r#"tether_agent_streams_total{result="ok"}"#), 1.0);
    assert_eq!(
        value(&agent, r#"tether_agent_streams_total{result="port_not_allowed"}"#),
        1.0
    );
    assert_eq!(
        value(
            &agent,
            r#"tether_agent_streams_total{result="target_unreachable"}"#
        ),
        0.0
    );
    assert_eq!(value(&agent, "tether_agent_active_streams"), 0.0);
    assert_eq!(value(&agent, "tether_agent_relay_connected"), 1.0);
    assert_eq!(
        value(
            &agent,
            r#"tether_agent_relay_connection_attempts_total{result="ok"}"#
        ),
        1.0
    );

    stop.cancel();
    agent_task.await.unwrap().unwrap();
    assert_eq!(agent_metrics.connected.get(), 0);
    bed.stop().await;
}
