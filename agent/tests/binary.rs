//! The `tether-agent` binary: exit code 64 on bad configuration, graceful exit on SIGTERM.

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use tether_net::pki::Ca;
use tether_proto::name::DeviceKey;

const BIN: &str = env!("CARGO_BIN_EXE_tether-agent");
const DAY: Duration = Duration::from_secs(86_400);

#[test]
fn bad_config_exits_64_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("agent.toml");
    std::fs::write(
        &file,
        "relay = \"r:443\"\nrelay-domain = \"r\"\ncert = \"c\"\nkey = \"k\"\nca = \"a\"\nbogus = 1\n",
    )
    .unwrap();
    for args in [vec![], vec!["-c", file.to_str().unwrap()]] {
        let out = Command::new(BIN)
            .args(&args)
            .env_remove("RUST_LOG")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(64), "{args:?}");
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    }
    // Valid file, missing key file: also a usage error, naming the file.
    std::fs::write(
        &file,
        "relay = \"r:443\"\nrelay-domain = \"r\"\ncert = \"c\"\nkey = \"k\"\nca = \"a\"\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["-c", file.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cannot read"),
        "{out:?}"
    );
}

#[cfg(unix)]
#[test]
fn sigterm_stops_a_reconnecting_agent() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, _) = Ca::generate("test CA", DAY).unwrap();
    let device = ca
        .issue_device(
            &DeviceKey::parse("factory-1/pump-7").unwrap(),
            "tether.local",
            DAY,
        )
        .unwrap();
    let p = |f: &str| dir.path().join(f);
    std::fs::write(p("ca.crt"), ca.cert_pem()).unwrap();
    std::fs::write(p("d.crt"), &device.cert_pem).unwrap();
    std::fs::write(p("d.key"), &device.key_pem).unwrap();
    // Nothing listens on the relay port: the agent keeps backing off until told to stop.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = Command::new(BIN)
        .args([
            "--relay",
            &format!("127.0.0.1:{port}"),
            "--relay-domain",
            "relay.test",
            "--allow",
            "22",
        ])
        .args([
            "--cert",
            p("d.crt").to_str().unwrap(),
            "--key",
            p("d.key").to_str().unwrap(),
        ])
        .args(["--ca", p("ca.crt").to_str().unwrap()])
        .env_remove("HTTPS_PROXY")
        .env_remove("https_proxy")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert!(child.try_wait().unwrap().is_none(), "agent exited early");
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "{status:?}");
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "agent did not stop on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
