//! Child processes of the run (relays, agents, clients, peers' servers): started with their
//! output in a log file, optionally inside a network namespace, killed when dropped; and the
//! readiness check every tunnel shares (an echoed byte through it).

use std::{
    ffi::OsStr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::{netns::Endpoint, target};

/// A running child process; killed on drop.
pub struct Proc {
    child: Child,
    /// What it is, for messages (`tether-relay`, `frps`, ...).
    pub name: String,
    /// Its stdout and stderr.
    pub log: PathBuf,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Proc {
    /// Starts `bin args..` with `RUST_LOG=warn` (peers that read it log as little as Tether),
    /// inside network namespace `ns` when given (`ip netns exec` execs the binary, so the pid is
    /// the binary's), output to `log`.
    ///
    /// # Errors
    /// When the binary cannot be started.
    pub fn spawn<I, S>(ns: Option<&str>, bin: &Path, args: I, log: &Path) -> anyhow::Result<Self>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        Self::spawn_env(ns, bin, args, log, &[])
    }

    /// [`Proc::spawn`] with extra environment variables.
    ///
    /// # Errors
    /// When the binary cannot be started.
    pub fn spawn_env<I, S>(
        ns: Option<&str>,
        bin: &Path,
        args: I,
        log: &Path,
        env: &[(&str, &str)],
    ) -> anyhow::Result<Self>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = match ns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(bin);
                c
            }
            None => Command::new(bin),
        };
        let out = std::fs::File::create(log).with_context(|| format!("create {}", log.display()))?;
        let child = cmd
            .args(args)
            .env("RUST_LOG", "warn")
            .env("NO_COLOR", "1")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("cannot run {}", bin.display()))?;
        let name = bin
            .file_name()
            .map_or_else(|| bin.display().to_string(), |n| n.to_string_lossy().into_owned());
        Ok(Self {
            child,
            name,
            log: log.to_owned(),
        })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Fails with the tail of its log when the process has exited.
    ///
    /// # Errors
    /// When it is no longer running.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(8).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            bail!("{} exited ({status}): {}", self.name, tail.join(" | "));
        }
        Ok(())
    }
}

/// Waits until a connection to `service` reaches the target (one echoed byte), checking that
/// `procs` are still running between attempts.
///
/// # Errors
/// When a process exits or nothing gets through within `limit`.
pub async fn wait_echo(service: &Endpoint, procs: &mut [&mut Proc], limit: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    let mut last = String::new();
    while Instant::now() < deadline {
        for p in procs.iter_mut() {
            p.check_alive()?;
        }
        let attempt = tokio::time::timeout(Duration::from_secs(2), async {
            let mut s = service.connect().await?;
            s.write_all(&[target::ECHO, b'x']).await?;
            let mut b = [0u8; 1];
            s.read_exact(&mut b).await?;
            Ok::<_, anyhow::Error>(())
        })
        .await;
        match attempt {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(e)) => last = format!("{e:#}"),
            Err(_) => last = "timed out".into(),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    bail!("tunnel to {service} not ready within {limit:?} (last error: {last})")
}

/// Runs `bin args..` to completion and returns its stdout.
///
/// # Errors
/// When it cannot run or exits unsuccessfully.
pub fn output<I, S>(bin: &str, args: I) -> anyhow::Result<String>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let out = Command::new(bin)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {bin}"))?;
    if !out.status.success() {
        bail!(
            "{bin} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
