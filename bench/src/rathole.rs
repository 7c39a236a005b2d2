//! rathole 0.5.0 in Tether's topology: a rathole server (the relay's role) and a rathole client
//! (the agent's role) forwarding one service port to the target, with the `tcp` or `noise`
//! transport. Both run as child processes, killed when the [`Pair`] is dropped.

use std::{
    net::SocketAddr,
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::{proc_stats::free_port, target};

/// A running rathole server and client.
pub struct Pair {
    /// The service port: connections here reach the target.
    pub service: SocketAddr,
    server: Child,
    client: Child,
}

impl Drop for Pair {
    fn drop(&mut self) {
        for child in [&mut self.server, &mut self.client] {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Pair {
    /// The server process id (its RSS is the relay-equivalent memory).
    pub fn server_pid(&self) -> u32 {
        self.server.id()
    }

    /// Starts a server and client with `transport` (`tcp` or `noise`) forwarding to `target`,
    /// and waits until a connection through them reaches the target.
    ///
    /// # Errors
    /// When rathole cannot run or the tunnel does not work within 15 s.
    pub async fn start(bin: &Path, transport: &str, target: SocketAddr, dir: &Path) -> anyhow::Result<Self> {
        let dir = dir.join(format!("rathole-{transport}"));
        std::fs::create_dir_all(&dir)?;
        let control = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        let service = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        let (server_noise, client_noise) = if transport == "noise" {
            let (private, public) = genkey(bin)?;
            (
                format!("[server.transport.noise]\nlocal_private_key = \"{private}\"\n"),
                format!("[client.transport.noise]\nremote_public_key = \"{public}\"\n"),
            )
        } else {
            (String::new(), String::new())
        };
        let server_toml = format!(
            "[server]\nbind_addr = \"{control}\"\n[server.transport]\ntype = \"{transport}\"\n{server_noise}\
             [server.services.bench]\ntoken = \"tether-bench\"\nbind_addr = \"{service}\"\n"
        );
        let client_toml = format!(
            "[client]\nremote_addr = \"{control}\"\n[client.transport]\ntype = \"{transport}\"\n{client_noise}\
             [client.services.bench]\ntoken = \"tether-bench\"\nlocal_addr = \"{target}\"\n"
        );
        std::fs::write(dir.join("server.toml"), server_toml)?;
        std::fs::write(dir.join("client.toml"), client_toml)?;
        let spawn = |role: &str| -> anyhow::Result<Child> {
            let log = std::fs::File::create(dir.join(format!("{role}.log")))?;
            Command::new(bin)
                .arg(format!("--{role}"))
                .arg(dir.join(format!("{role}.toml")))
                .env("RUST_LOG", "warn")
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()
                .with_context(|| format!("cannot run {}", bin.display()))
        };
        let server = spawn("server")?;
        let client = spawn("client")?;
        let pair = Self {
            service,
            server,
            client,
        };
        pair.wait_ready(Duration::from_secs(15))
            .await
            .with_context(|| format!("logs in {}", dir.display()))?;
        Ok(pair)
    }

    async fn wait_ready(&self, limit: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + limit;
        let mut last = String::new();
        while Instant::now() < deadline {
            let attempt = tokio::time::timeout(Duration::from_secs(1), async {
                let mut s = tokio::net::TcpStream::connect(self.service).await?;
                s.write_all(&[target::ECHO, b'x']).await?;
                let mut b = [0u8; 1];
                s.read_exact(&mut b).await?;
                Ok::<_, std::io::Error>(())
            })
            .await;
            match attempt {
                Ok(Ok(())) => return Ok(()),
                Ok(Err(e)) => last = e.to_string(),
                Err(_) => last = "timed out".into(),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        bail!("rathole tunnel not ready within {limit:?} (last error: {last})")
    }
}

/// Runs `rathole --genkey` and returns (private, public) base64 keys.
fn genkey(bin: &Path) -> anyhow::Result<(String, String)> {
    let out = Command::new(bin)
        .arg("--genkey")
        .output()
        .context("rathole --genkey")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let after = |label: &str| {
        text.lines()
            .skip_while(|l| !l.contains(label))
            .skip(1)
            .map(str::trim)
            .find(|l| !l.is_empty())
            .map(str::to_owned)
    };
    match (after("Private Key"), after("Public Key")) {
        (Some(private), Some(public)) => Ok((private, public)),
        _ => bail!("unexpected `rathole --genkey` output: {text}"),
    }
}

/// The version rathole reports (`rathole --version`), if it runs.
pub fn version(bin: &Path) -> Option<String> {
    let out = Command::new(bin).arg("--version").output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("Build Version:")
                .map(|v| format!("rathole {}", v.trim()))
        })
        .or_else(|| text.lines().next().map(|l| l.trim().to_owned()))
}
