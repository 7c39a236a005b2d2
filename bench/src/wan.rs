//! The WAN profile's link: two network namespaces (service side, device side) joined by the
//! userspace impairment wire (`scripts/netem/wire.py`: this kernel has no `sch_netem`), with a
//! delay each way and a rate cap. Namespaces and wire are removed when the [`WanLink`] drops.

use std::{
    net::{IpAddr, Ipv4Addr},
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use serde::Serialize;

use crate::{
    netns::Placement,
    procs::{Proc, output},
};

/// Service-side address on the wire.
const SVC_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
/// Device-side address on the wire.
const DEV_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);

/// The link's impairment.
#[derive(Clone, Debug, Serialize)]
pub struct WanConfig {
    /// One-way delay, milliseconds (each direction).
    pub delay_ms: f64,
    /// Rate cap per direction, Mbit/s.
    pub rate_mbit: f64,
}

/// Two namespaces and the wire between them.
pub struct WanLink {
    /// Where each side lives.
    pub place: Placement,
    wire: Option<Proc>,
    names: [String; 2],
    _dir: tempfile::TempDir,
}

impl Drop for WanLink {
    fn drop(&mut self) {
        drop(self.wire.take());
        for ns in &self.names {
            let _ = output("ip", ["netns", "del", ns]);
        }
    }
}

impl WanLink {
    /// Creates `tbench-svc-<pid>` and `tbench-dev-<pid>`, starts `wire` between them and waits
    /// for its `ready`.
    ///
    /// # Errors
    /// No permission for namespaces, or a wire that does not come up within 10 s.
    pub fn start(wire: &Path, config: &WanConfig) -> anyhow::Result<Self> {
        let pid = std::process::id();
        let names = [format!("tbench-svc-{pid}"), format!("tbench-dev-{pid}")];
        let dir = tempfile::Builder::new().prefix("tether-bench-wan-").tempdir()?;
        for ns in &names {
            output("ip", ["netns", "add", ns]).context("ip netns add (needs root)")?;
        }
        let mut link = Self {
            place: Placement {
                svc_ns: Some(Arc::from(names[0].as_str())),
                dev_ns: Some(Arc::from(names[1].as_str())),
                svc_ip: IpAddr::V4(SVC_IP),
                dev_ip: IpAddr::V4(DEV_IP),
            },
            wire: None,
            names: names.clone(),
            _dir: dir,
        };
        let log = link._dir.path().join("wire.log");
        let args: Vec<String> = vec![
            "--ns-a".into(),
            names[0].clone(),
            "--ip-a".into(),
            SVC_IP.to_string(),
            "--ns-b".into(),
            names[1].clone(),
            "--ip-b".into(),
            DEV_IP.to_string(),
            "--delay-ms".into(),
            config.delay_ms.to_string(),
            "--rate-mbit".into(),
            config.rate_mbit.to_string(),
        ];
        let mut proc = Proc::spawn(None, wire, args, &log)?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            proc.check_alive()?;
            if std::fs::read_to_string(&log)
                .unwrap_or_default()
                .lines()
                .any(|l| l.trim() == "ready")
            {
                break;
            }
            if Instant::now() > deadline {
                bail!("impairment wire not ready within 10 s; see {}", log.display());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        link.wire = Some(proc);
        Ok(link)
    }
}
