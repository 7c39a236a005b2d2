//! Files holding secrets are private whatever the caller's umask: `tether ca init` and
//! `tether device issue` create their directories 0700 and keys 0600.

use std::{os::unix::fs::PermissionsExt, path::Path, process::Command};

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// Runs `tether <args>` under umask 000.
fn tether_with_umask_000(args: &[&str]) {
    let out = Command::new("sh")
        .arg("-c")
        .arg(r#"umask 000 && exec "$@""#)
        .arg("sh")
        .arg(env!("CARGO_BIN_EXE_tether"))
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn key_directories_are_private_under_umask_000() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("nested/home");
    let home_s = home.to_str().unwrap();
    tether_with_umask_000(&["ca", "init", "--dir", home_s]);
    assert_eq!(mode(&home), 0o700, "CA directory");
    assert_eq!(mode(&home.join("ca.key")), 0o600);
    let out = tmp.path().join("creds");
    tether_with_umask_000(&[
        "device",
        "issue",
        "plant/pump",
        "--dir",
        home_s,
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(mode(&out), 0o700, "device credentials directory");
    assert_eq!(mode(&out.join("device.key")), 0o600);
}
