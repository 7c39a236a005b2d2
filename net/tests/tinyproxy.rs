//! `dial` through a real tinyproxy with BasicAuth, listening on `[::1]` only, reached with
//! percent-encoded credentials.
//!
//! tinyproxy 1.11's config grammar takes only `[-A-Za-z0-9._]` in a BasicAuth password (a `+`,
//! `&`, `%` or `:` there is a syntax error), so the characters form decoding mangled are checked
//! byte for byte against a scripted proxy in `src/dial.rs`; this test proves the decoded bytes
//! and the bracket-less IPv6 address against a proxy that really enforces them.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use tether_net::dial::{Proxy, dial};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

const USER: &str = "e2e.user";
const PASS: &str = "Pa55-w.rd_x";

/// Every character of `s` percent-encoded, so the URL only works if the dialer decodes it.
fn encode_all(s: &str) -> String {
    s.bytes().map(|b| format!("%{b:02X}")).collect()
}

/// The tinyproxy binary, or `None` (a failure when CI or `TETHER_REQUIRE_TINYPROXY` requires it).
fn tinyproxy() -> Option<PathBuf> {
    let found = ["/usr/bin/tinyproxy", "/usr/sbin/tinyproxy"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists());
    let required = std::env::var("CI").is_ok_and(|v| v == "true")
        || std::env::var_os("TETHER_REQUIRE_TINYPROXY").is_some();
    if found.is_none() {
        assert!(
            !required,
            "tinyproxy is required (CI=true or TETHER_REQUIRE_TINYPROXY) but not installed"
        );
        eprintln!("NOTE: tinyproxy not installed (apt-get install tinyproxy); skipping");
    }
    found
}

struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start(bin: &Path, dir: &Path, port: u16, connect_port: u16) -> Running {
    let log = dir.join("tinyproxy.log");
    let mut conf = format!(
        "Port {port}\nListen ::1\nTimeout 30\nLogFile \"{}\"\nLogLevel Info\nMaxClients 10\n\
         ConnectPort {connect_port}\nBasicAuth {USER} {PASS}\n",
        log.display()
    );
    // tinyproxy drops root to `nobody`, which must be able to write its log.
    if nix_is_root() {
        conf.push_str("User nobody\nGroup nogroup\n");
        std::fs::write(&log, "").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&log, std::fs::Permissions::from_mode(0o666)).unwrap();
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let conf_path = dir.join("tinyproxy.conf");
    std::fs::write(&conf_path, conf).unwrap();
    let child = Command::new(bin)
        .arg("-d")
        .arg("-c")
        .arg(&conf_path)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start tinyproxy");
    Running(child)
}

fn nix_is_root() -> bool {
    // The owner of /proc/self is the effective uid; no libc call needed.
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

async fn wait_listening(port: u16, proxy: &mut Running) {
    for _ in 0..100 {
        if TcpStream::connect(("::1", port)).await.is_ok() {
            return;
        }
        if let Ok(Some(status)) = proxy.0.try_wait() {
            panic!("tinyproxy exited: {status}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("tinyproxy did not listen on [::1]:{port}");
}

#[tokio::test]
async fn dials_through_tinyproxy_on_ipv6_with_percent_encoded_basic_auth() {
    let Some(bin) = tinyproxy() else { return };
    let dir = tempfile::tempdir().unwrap();
    let target = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let target_port = target.local_addr().unwrap().port();
    // A free port for tinyproxy (it cannot be told to bind :0 and report the port).
    let port = std::net::TcpListener::bind("[::1]:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut proxy = start(&bin, dir.path(), port, target_port);
    wait_listening(port, &mut proxy).await;

    let url = |pass: &str| format!("http://{}:{}@[::1]:{port}", encode_all(USER), encode_all(pass));
    // The right credentials, every byte percent-encoded: tunnelled to the target.
    let good = Proxy::parse(&url(PASS), "").unwrap();
    let mut s = dial("127.0.0.1", target_port, Some(&good)).await.unwrap();
    let (mut t, _) = target.accept().await.unwrap();
    s.write_all(b"ping").await.unwrap();
    let mut got = [0u8; 4];
    t.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"ping");
    t.write_all(b"pong").await.unwrap();
    s.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"pong");

    // The proxy really checks them: tinyproxy answers a wrong password 401 and a missing
    // `Proxy-Authorization` 407.
    for (url, status) in [(url("Pa55-w.rd_y"), 401), (format!("http://[::1]:{port}"), 407)] {
        let bad = Proxy::parse(&url, "").unwrap();
        let err = dial("127.0.0.1", target_port, Some(&bad)).await.unwrap_err();
        assert!(
            err.to_string().contains(&format!("HTTP {status}")),
            "{url}: {err}"
        );
    }
}
