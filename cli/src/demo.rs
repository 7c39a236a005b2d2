//! `tether demo`: a relay, an agent and a target service on loopback with fresh keys; pushes bytes
//! through a tunnel, reports throughput against a direct connection, and prints how to SSH
//! through what it started.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use clap::Parser;
use sha2::{Digest, Sha256};
use tether_proto::name::DeviceKey;
use tether_relay::Limits;
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

use crate::{connect, testbed::Testbed};

/// The virtual port the demo's echo service is published on.
const ECHO_PORT: u16 = 7;

/// `tether demo` flags.
#[derive(Debug, Parser)]
pub struct DemoArgs {
    /// Directory for the demo's keys and tokens: created (mode 0700) if absent; an existing one
    /// must be empty, ours, and writable by nobody else (default: a fresh private directory under
    /// the temp dir, removed at exit).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// MiB to send through the tunnel (and back).
    #[arg(long, default_value_t = 256)]
    pub mib: u64,
    /// Local port of an SSH server the demo device should expose as its port 22.
    #[arg(long, default_value_t = 22)]
    pub ssh_port: u16,
    /// Exit after the transfer instead of waiting for Ctrl-C.
    #[arg(long)]
    pub no_wait: bool,
}

/// The directory for the demo's keys: `requested`, checked (see [`DemoArgs::dir`]), or a fresh
/// private one (the guard removes it). A predictable name under a shared temp dir would let
/// another local user create it first and read or swap the keys.
fn demo_dir(requested: Option<&std::path::Path>) -> anyhow::Result<(PathBuf, Option<tempfile::TempDir>)> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
    let Some(dir) = requested else {
        // A random name, created exclusively (fails if it exists), mode 0700 set at creation.
        let fresh = tempfile::Builder::new()
            .prefix("tether-demo-")
            .permissions(std::fs::Permissions::from_mode(0o700))
            .tempdir()?;
        return Ok((fresh.path().to_owned(), Some(fresh)));
    };
    match std::fs::symlink_metadata(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::DirBuilder::new()
                .mode(0o700)
                .create(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        Err(e) => return Err(e).with_context(|| format!("cannot inspect {}", dir.display())),
        Ok(meta) => {
            // symlink_metadata does not follow a link, so a link planted by
            // someone else is refused as "not a directory".
            if !meta.is_dir() {
                bail!("{} is not a directory", dir.display());
            }
            let me = std::fs::metadata("/proc/self")?.uid();
            if meta.uid() != me {
                bail!("{} belongs to another user; pass a new directory", dir.display());
            }
            if meta.permissions().mode() & 0o022 != 0 {
                bail!(
                    "{} is writable by other users; pass a new directory",
                    dir.display()
                );
            }
            if std::fs::read_dir(dir)?.next().is_some() {
                bail!("{} is not empty; pass --dir with a new directory", dir.display());
            }
        }
    }
    Ok((dir.to_owned(), None))
}

/// Runs the demo.
///
/// # Errors
/// Any failure to start a component or move the bytes.
pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let (dir, _fresh) = demo_dir(args.dir.as_deref())?;
    let echo = TcpListener::bind("127.0.0.1:0").await?;
    let echo_addr = echo.local_addr()?;
    tokio::spawn(serve_echo(echo));

    let limits = Limits {
        drain_grace: Duration::ZERO,
        drain_deadline: Duration::from_secs(2),
        ..Limits::default()
    };
    let bed = Testbed::start(&dir, limits).await?;
    println!(
        "relay      listening on {} (metrics: http://{}/metrics)",
        bed.relay_addr, bed.admin_addr
    );
    let device = DeviceKey::parse("demo/sensor-1")?;
    let ssh_target = SocketAddr::from(([127, 0, 0, 1], args.ssh_port));
    let allow = BTreeMap::from([(ECHO_PORT, echo_addr), (22, ssh_target)]);
    let mut agent = bed.spawn_agent(bed.agent_config(&device, &allow)?)?;
    agent.connected(Duration::from_secs(10)).await?;
    println!(
        "agent      {device} connected (serves port {ECHO_PORT} -> echo at {echo_addr}, port 22 -> {ssh_target})"
    );

    let bytes = args.mib * 1024 * 1024;
    let token = bed.token(&device, ECHO_PORT, Duration::from_secs(600))?;
    let stream = connect::open(&bed.target(&device, ECHO_PORT, &token)?).await?;
    let early = stream.early.clone();
    let tunnel = echo_round_trip(stream.tls, early.to_vec(), bytes)
        .await
        .context("tunnel transfer")?;
    let direct = echo_round_trip(TcpStream::connect(echo_addr).await?, Vec::new(), bytes).await?;
    println!(
        "stream     {} MiB each way through the tunnel in {:.2} s: {:.0} MiB/s per direction, SHA-256 verified",
        args.mib,
        tunnel.as_secs_f64(),
        args.mib as f64 / tunnel.as_secs_f64()
    );
    println!(
        "           (direct TCP to the same echo service: {:.0} MiB/s; tunnel = {:.2}x direct, with TLS on both legs)",
        args.mib as f64 / direct.as_secs_f64(),
        direct.as_secs_f64() / tunnel.as_secs_f64()
    );

    let ssh_token = dir.join("ssh.token");
    crate::standalone::write_new(
        &ssh_token,
        &format!("{}\n", bed.token(&device, 22, Duration::from_secs(3600))?),
        true,
    )?;
    let exe = std::env::current_exe().map_or_else(|_| "tether".into(), |p| p.display().to_string());
    println!();
    println!(
        "Try a real SSH session to the demo device (its port 22 is this machine's port {}):",
        args.ssh_port
    );
    println!(
        "  ssh -o ProxyCommand='{exe} connect {device} --port 22 --token-file {} --relay {} --ca {} --stdio' $USER@sensor-1",
        ssh_token.display(),
        bed.relay_addr,
        dir.join("ca.crt").display()
    );
    println!(
        "Or forward a local port:  {exe} connect {device} --port 22 --token-file {} --relay {} --ca {} --listen 127.0.0.1:2222",
        ssh_token.display(),
        bed.relay_addr,
        dir.join("ca.crt").display()
    );
    println!("Keys and tokens are in {}.", dir.display());
    if !args.no_wait {
        println!("Press Ctrl-C to stop.");
        tokio::signal::ctrl_c().await?;
    }
    agent.stop().await;
    bed.stop().await;
    println!("stopped");
    Ok(())
}

async fn serve_echo(listener: TcpListener) {
    while let Ok((mut s, _)) = listener.accept().await {
        tokio::spawn(async move {
            let _ = s.set_nodelay(true);
            let (mut r, mut w) = s.split();
            let _ = tokio::io::copy(&mut r, &mut w).await;
            let _ = w.shutdown().await;
        });
    }
}

/// Sends `bytes` of a pattern through an echo service and reads them back, comparing SHA-256.
async fn echo_round_trip<S>(stream: S, early: Vec<u8>, bytes: u64) -> anyhow::Result<Duration>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let started = Instant::now();
    let (mut r, mut w) = tokio::io::split(stream);
    let writer = tokio::spawn(async move {
        let chunk: Vec<u8> = (0..64 * 1024u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
            .collect();
        let mut hash = Sha256::new();
        let mut left = bytes;
        while left > 0 {
            let n = left.min(chunk.len() as u64) as usize;
            w.write_all(&chunk[..n]).await?;
            hash.update(&chunk[..n]);
            left -= n as u64;
        }
        w.shutdown().await?;
        Ok::<_, std::io::Error>(hash.finalize())
    });
    let mut hash = Sha256::new();
    hash.update(&early);
    let mut got = early.len() as u64;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = r.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        hash.update(&buf[..n]);
        got += n as u64;
    }
    let sent = writer.await??;
    if got != bytes || sent != hash.finalize() {
        bail!("echoed data differs: sent {bytes} bytes, got {got}");
    }
    Ok(started.elapsed())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{PermissionsExt, chown};

    use super::demo_dir;

    #[test]
    fn the_default_directory_is_fresh_and_private() {
        let (a, guard_a) = demo_dir(None).unwrap();
        let (b, _guard_b) = demo_dir(None).unwrap();
        assert_ne!(a, b, "names must not be predictable");
        let mode = std::fs::metadata(&a).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        drop(guard_a);
        assert!(!a.exists(), "removed at exit");
    }

    #[test]
    fn a_directory_others_could_have_prepared_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        // Absent: created private.
        let new = tmp.path().join("new");
        demo_dir(Some(&new)).unwrap();
        assert_eq!(
            std::fs::metadata(&new).unwrap().permissions().mode() & 0o777,
            0o700
        );
        // Empty but world-writable (e.g. made by someone else in /tmp): refused.
        let open = tmp.path().join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
        let err = demo_dir(Some(&open)).unwrap_err().to_string();
        assert!(err.contains("writable by other users"), "{err}");
        // Empty, private, but another user's (only root can set that up; CI runs as root).
        let theirs = tmp.path().join("theirs");
        std::fs::create_dir(&theirs).unwrap();
        std::fs::set_permissions(&theirs, std::fs::Permissions::from_mode(0o700)).unwrap();
        if chown(&theirs, Some(65_534), Some(65_534)).is_ok() {
            let err = demo_dir(Some(&theirs)).unwrap_err().to_string();
            assert!(err.contains("another user"), "{err}");
        }
        // A symlink to a directory: refused, it is not ours to trust.
        let link = tmp.path().join("link");
        std::os::unix::fs::symlink(&new, &link).unwrap();
        assert!(demo_dir(Some(&link)).is_err());
    }
}
