//! chisel in reverse mode, the Tether-shaped topology: the device-side `chisel client` dials the
//! `chisel server` (the relay's role, service side) over TLS and asks it to listen for the
//! service (`R:` remote); each service connection becomes an SSH channel to the client, which
//! dials the target. One TLS leg (device↔server) carrying SSH over WebSocket, so chisel encrypts
//! that leg twice (SSH inside TLS) and the service's leg not at all. Settings: TLS with a
//! certificate the client verifies (`--tls-ca`), authentication on; chisel has no throughput
//! knobs beyond these.

use std::{path::Path, time::Duration};

use anyhow::Context;

use crate::{
    netns::{Endpoint, Placement},
    proc_stats::free_port,
    procs::{Proc, output, wait_echo},
    tls_identity::TlsIdentity,
};

/// Starts the server and the client; waits until a connection to the server's reverse port
/// reaches `target`. Returns the service endpoint and the processes, the server first.
///
/// # Errors
/// When chisel cannot run or the tunnel does not work within 20 s.
pub async fn start(
    bin: &Path,
    target: &Endpoint,
    place: &Placement,
    identity: &TlsIdentity,
    dir: &Path,
) -> anyhow::Result<(Endpoint, Vec<Proc>)> {
    let dir = dir.join("chisel");
    std::fs::create_dir_all(&dir)?;
    let control = place.svc_at(free_port()?);
    let service = place.svc_at(free_port()?);
    let auth = "bench:tether-bench";
    let mut server = Proc::spawn(
        place.svc(),
        bin,
        [
            "server".into(),
            "--host".into(),
            control.addr.ip().to_string().into(),
            "--port".into(),
            control.addr.port().to_string().into(),
            "--reverse".into(),
            "--auth".into(),
            auth.into(),
            "--tls-key".into(),
            identity.key.clone().into_os_string(),
            "--tls-cert".into(),
            identity.cert.clone().into_os_string(),
        ]
        .into_iter()
        .collect::<Vec<std::ffi::OsString>>(),
        &dir.join("server.log"),
    )?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let remote = format!(
        "R:{}:{}:{}:{}",
        service.addr.ip(),
        service.addr.port(),
        target.addr.ip(),
        target.addr.port()
    );
    let mut client = Proc::spawn(
        place.dev(),
        bin,
        [
            "client".into(),
            "--auth".into(),
            auth.into(),
            "--tls-ca".into(),
            identity.cert.clone().into_os_string(),
            format!("https://{}", control.addr).into(),
            remote.into(),
        ]
        .into_iter()
        .collect::<Vec<std::ffi::OsString>>(),
        &dir.join("client.log"),
    )?;
    wait_echo(&service, &mut [&mut server, &mut client], Duration::from_secs(20))
        .await
        .with_context(|| format!("logs in {}", dir.display()))?;
    Ok((service, vec![server, client]))
}

/// `chisel --version`, if it runs.
pub fn version(bin: &Path) -> Option<String> {
    let text = output(&bin.to_string_lossy(), ["--version"]).ok()?;
    Some(format!("chisel {}", text.trim()))
}
