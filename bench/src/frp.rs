//! frp in its `stcp` mode, the same shape as Tether: the service connects to a visitor `frpc`
//! (service side), which reaches `frps` (the relay's role) over TLS; `frps` hands the stream to
//! the device-side `frpc`, also connected over TLS, which dials the target. Both legs are TLS
//! (Go's crypto/tls), and each `frpc` multiplexes its streams on one connection (`tcpMux`, yamux),
//! as Tether's device connection does. frp 0.65's defaults already are its strongest settings for
//! this shape: TLS on, tcpMux on, no extra `useEncryption`/`useCompression` layer; they are
//! written out anyway so the configuration says what was measured.

use std::{path::Path, time::Duration};

use anyhow::Context;

use crate::{
    netns::{Endpoint, Placement},
    proc_stats::free_port,
    procs::{Proc, output, wait_echo},
};

/// Starts frps, the device-side frpc and the visitor frpc; waits until a connection through the
/// visitor reaches `target`. Returns the service endpoint and the processes, frps first.
///
/// # Errors
/// When a binary cannot run or the tunnel does not work within 20 s.
pub async fn start(
    frps: &Path,
    frpc: &Path,
    target: &Endpoint,
    place: &Placement,
    dir: &Path,
) -> anyhow::Result<(Endpoint, Vec<Proc>)> {
    let dir = dir.join("frp");
    std::fs::create_dir_all(&dir)?;
    let control = place.svc_at(free_port()?);
    let service = place.svc_at(free_port()?);
    let common = |server: &Endpoint| {
        format!(
            "serverAddr = \"{}\"\nserverPort = {}\nloginFailExit = false\nlog.level = \"warn\"\n\
             auth.method = \"token\"\nauth.token = \"tether-bench\"\n\
             transport.protocol = \"tcp\"\ntransport.tcpMux = true\n\
             transport.tls.enable = true\n",
            server.addr.ip(),
            server.addr.port()
        )
    };
    let frps_toml = format!(
        "bindAddr = \"{}\"\nbindPort = {}\nlog.level = \"warn\"\n\
         auth.method = \"token\"\nauth.token = \"tether-bench\"\n\
         transport.tcpMux = true\ntransport.tls.force = true\n",
        control.addr.ip(),
        control.addr.port()
    );
    let device_toml = format!(
        "{}\n[[proxies]]\nname = \"bench\"\ntype = \"stcp\"\nsecretKey = \"tether-bench-stcp\"\n\
         localIP = \"{}\"\nlocalPort = {}\n\
         transport.useEncryption = false\ntransport.useCompression = false\n",
        common(&control),
        target.addr.ip(),
        target.addr.port()
    );
    let visitor_toml = format!(
        "{}\n[[visitors]]\nname = \"bench-visitor\"\ntype = \"stcp\"\nserverName = \"bench\"\n\
         secretKey = \"tether-bench-stcp\"\nbindAddr = \"{}\"\nbindPort = {}\n\
         transport.useEncryption = false\ntransport.useCompression = false\n",
        common(&control),
        service.addr.ip(),
        service.addr.port()
    );
    for (name, text) in [
        ("frps.toml", &frps_toml),
        ("device.toml", &device_toml),
        ("visitor.toml", &visitor_toml),
    ] {
        std::fs::write(dir.join(name), text)?;
    }
    let spawn = |bin: &Path, config: &str, ns: Option<&str>| {
        Proc::spawn(
            ns,
            bin,
            ["-c".into(), dir.join(format!("{config}.toml")).into_os_string()],
            &dir.join(format!("{config}.log")),
        )
    };
    let mut server = spawn(frps, "frps", place.svc())?;
    // frpc exits when frps is not there yet with loginFailExit = true; with false it retries, but
    // only after a back-off, so give frps a moment to listen.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut device = spawn(frpc, "device", place.dev())?;
    let mut visitor = spawn(frpc, "visitor", place.svc())?;
    wait_echo(
        &service,
        &mut [&mut server, &mut device, &mut visitor],
        Duration::from_secs(20),
    )
    .await
    .with_context(|| format!("logs in {}", dir.display()))?;
    Ok((service, vec![server, device, visitor]))
}

/// `frps --version`, if it runs.
pub fn version(frps: &Path) -> Option<String> {
    let text = output(&frps.to_string_lossy(), ["--version"]).ok()?;
    Some(format!("frp {}", text.trim()))
}
