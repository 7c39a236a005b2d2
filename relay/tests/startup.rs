//! The relay refuses to start, with a message naming the file, when a required certificate, key or
//! token key is missing, empty or invalid (chisel CVE-2024-43798 was a fail-open auth setting).

use std::{net::SocketAddr, path::Path, process::Command};

use tether_net::pki::Ca;
use tether_proto::token::TokenSigner;

fn write(dir: &Path, name: &str, text: &str) {
    std::fs::write(dir.join(name), text).unwrap();
}

/// Writes a valid set of relay files into `dir`.
fn valid_files(dir: &Path) {
    let day = std::time::Duration::from_secs(86_400);
    let (ca, ca_files) = Ca::generate("test", day).unwrap();
    let relay = ca.issue_server(&["tether.local".into()], &[], day).unwrap();
    write(dir, "ca.crt", &ca_files.cert_pem);
    write(dir, "relay.crt", &relay.cert_pem);
    write(dir, "relay.key", &relay.key_pem);
    write(
        dir,
        "token.pub",
        &TokenSigner::generate().verifier().to_public_key_pem(),
    );
}

fn load(dir: &Path) -> Result<tether_relay::RelayConfig, tether_relay::config::ConfigError> {
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let files = tether_relay::TlsFiles {
        cert: &dir.join("relay.crt"),
        key: &dir.join("relay.key"),
        client_ca: &dir.join("ca.crt"),
        token_public_key: &dir.join("token.pub"),
    };
    tether_relay::RelayConfig::load(
        any,
        any,
        "tether.local",
        "tether.local",
        files,
        Default::default(),
    )
}

#[test]
fn each_bad_file_is_named_in_the_error() {
    let dir = tempfile::tempdir().unwrap();
    valid_files(dir.path());
    load(dir.path()).expect("valid files load");
    for (file, content, expect) in [
        ("token.pub", "", "token public key"),
        (
            "token.pub",
            "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
            "token public key",
        ),
        ("relay.key", "   \n", "is empty"),
        ("relay.crt", "not pem", "holds no valid PEM"),
        ("ca.crt", "", "client CA bundle"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        valid_files(dir.path());
        write(dir.path(), file, content);
        let err = load(dir.path()).expect_err(file).to_string();
        assert!(err.contains(expect) && err.contains(file), "{file}: {err}");
    }
    let dir = tempfile::tempdir().unwrap();
    valid_files(dir.path());
    std::fs::remove_file(dir.path().join("relay.key")).unwrap();
    let err = load(dir.path()).unwrap_err().to_string();
    assert!(
        err.contains("cannot read serving key") && err.contains("relay.key"),
        "{err}"
    );
}

#[test]
fn binary_exits_64_before_binding_when_a_key_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    valid_files(dir.path());
    std::fs::remove_file(dir.path().join("token.pub")).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_tether-relay"))
        .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        .arg("--tls-cert")
        .arg(dir.path().join("relay.crt"))
        .arg("--tls-key")
        .arg(dir.path().join("relay.key"))
        .arg("--client-ca")
        .arg(dir.path().join("ca.crt"))
        .arg("--token-public-key")
        .arg(dir.path().join("token.pub"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("token.pub"), "{stderr}");
}

fn relay_command(dir: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tether-relay"));
    cmd.args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        .arg("--tls-cert")
        .arg(dir.join("relay.crt"))
        .arg("--tls-key")
        .arg(dir.join("relay.key"))
        .arg("--client-ca")
        .arg(dir.join("ca.crt"))
        .arg("--token-public-key")
        .arg(dir.join("token.pub"));
    cmd
}

#[test]
fn an_invalid_revocation_file_stops_the_start_and_names_the_line() {
    let dir = tempfile::tempdir().unwrap();
    valid_files(dir.path());
    write(dir.path(), "revoked.txt", "device a/b\nstream x\n");
    let out = relay_command(dir.path())
        .arg("--revocation-file")
        .arg(dir.path().join("revoked.txt"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("revoked.txt line 2"), "{stderr}");
}

#[test]
fn logs_carry_no_colour_codes_when_not_on_a_terminal() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().unwrap();
    valid_files(dir.path());
    let mut child = relay_command(dir.path())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut seen = Vec::new();
    let ready = loop {
        match lines.next() {
            Some(Ok(line)) => {
                let done = line.contains("relay ready");
                seen.push(line);
                if done {
                    break true;
                }
            }
            _ => break false,
        }
    };
    let _ = child.kill();
    let _ = child.wait();
    assert!(ready, "no 'relay ready' line: {seen:?}");
    assert!(
        seen.iter().all(|l| !l.contains('\u{1b}')),
        "escape codes in piped logs: {seen:?}"
    );
}
