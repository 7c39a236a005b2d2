//! Readings from `/proc` (resident memory, CPU time), free ports and a tiny HTTP GET for the
//! relay's metrics.

use std::{net::TcpListener, process::Command, sync::OnceLock, time::Duration};

use anyhow::{Context, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::netns::Endpoint;

/// Resident set size of `pid` in bytes (`VmRSS` of `/proc/<pid>/status`).
///
/// # Errors
/// When the process is gone or the file is unexpected.
pub fn rss_bytes(pid: u32) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status =
        std::fs::read_to_string(&path).with_context(|| format!("cannot read {path} (process gone?)"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .context("no VmRSS line")?;
    let kib: u64 = line.split_whitespace().nth(1).context("empty VmRSS")?.parse()?;
    Ok(kib * 1024)
}

/// User plus system CPU time of `pid`, in seconds.
///
/// # Errors
/// When the process is gone or the file is unexpected.
pub fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let path = format!("/proc/{pid}/stat");
    let stat =
        std::fs::read_to_string(&path).with_context(|| format!("cannot read {path} (process gone?)"))?;
    // The command name may hold spaces; fields after its closing parenthesis are fixed.
    let rest = stat.rsplit_once(')').context("malformed stat")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat; `rest` starts at field 3.
    let utime: f64 = fields.get(11).context("no utime")?.parse()?;
    let stime: f64 = fields.get(12).context("no stime")?.parse()?;
    Ok((utime + stime) / clock_ticks())
}

/// `CLK_TCK` (from `getconf`, else the usual 100).
fn clock_ticks() -> f64 {
    static TICKS: OnceLock<f64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// A port free on 127.0.0.1 right now.
///
/// # Errors
/// When binding fails.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// CPU use of `pid` over `window`, as a fraction of one core.
///
/// # Errors
/// When the process cannot be read.
pub async fn cpu_over(pid: u32, window: Duration) -> anyhow::Result<f64> {
    let before = cpu_seconds(pid)?;
    let started = std::time::Instant::now();
    tokio::time::sleep(window).await;
    Ok((cpu_seconds(pid)? - before) / started.elapsed().as_secs_f64())
}

/// Fetches `http://<addr><path>` (HTTP/1.0, whole body).
///
/// # Errors
/// Connection errors, timeouts, or a non-200 answer.
pub async fn http_get(at: &Endpoint, path: &str) -> anyhow::Result<String> {
    tokio::time::timeout(Duration::from_secs(5), async {
        let mut s = at.connect().await?;
        let addr = at.addr;
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
            .await?;
        let mut text = String::new();
        s.read_to_string(&mut text).await?;
        let (head, body) = text.split_once("\r\n\r\n").context("no HTTP head")?;
        if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
            bail!("GET {path}: {}", head.lines().next().unwrap_or_default());
        }
        Ok(body.to_owned())
    })
    .await
    .context("GET: time bound exceeded")?
}

/// The value of an unlabelled metric in Prometheus text format.
pub fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// A short description of this machine: CPU model, cores, kernel, memory.
pub fn machine() -> serde_json::Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")?
                .split_once(':')
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_owned();
    let mem_kib: u64 = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("MemTotal:")?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or(0);
    serde_json::json!({
        "cpu": model,
        "cores": cores,
        "kernel": kernel,
        "memory_gib": (mem_kib as f64 / 1024.0 / 1024.0 * 10.0).round() / 10.0,
        "loadavg": std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" "),
    })
}

/// The checkout's commit (`git rev-parse --short HEAD`), with `+dirty` when tracked files differ
/// from it; `unknown` outside a git checkout.
pub fn git_commit() -> String {
    let run = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    };
    match run(&["rev-parse", "--short", "HEAD"]) {
        Some(commit) => {
            let dirty =
                run(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty());
            if dirty { format!("{commit}+dirty") } else { commit }
        }
        None => "unknown".into(),
    }
}

/// `rustc --version`, if rustc is on the PATH.
pub fn rustc_version() -> String {
    Command::new("rustc")
        .arg("--version")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|| "unknown".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_process() {
        let pid = std::process::id();
        assert!(rss_bytes(pid).unwrap() > 0);
        assert!(cpu_seconds(pid).unwrap() >= 0.0);
        assert_eq!(metric("a_b 3\na 7\n", "a"), Some(7.0));
    }
}
