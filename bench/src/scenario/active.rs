//! Scenario 6: many active streams at a low rate (64 bytes each way per interval per stream)
//! over a set of devices, on a separate `tether-relay` process: its resident memory per active
//! stream. Baselines: a bare rustls server process with as many active connections, and each
//! peer's server (rathole, frps, chisel) with as many active connections through its one client.

use std::{
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

use tether_proto::name::DeviceKey;
use tokio::{sync::watch, task::JoinHandle};

use super::{bounded_all, kib};
use crate::{
    Profile, Results,
    bare::BareProcess,
    fake_device,
    proc_stats::{cpu_over, rss_bytes},
    relay_process::RelayProcess,
    stats::Latencies,
    systems::{Dialer, System, Systems},
    target,
};

/// Scenario name.
pub const NAME: &str = "6-active-streams";

/// The device port the fake devices serve (they serve every port).
const PORT: u16 = 7;
/// Connections opened at once.
const CONCURRENCY: usize = 32;

/// Streams pinging at a low rate until stopped.
struct Load {
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<Vec<Duration>>>,
    failed: usize,
}

impl Load {
    /// Opens `count` connections, stream `i` through `dialers[i % len]`, each in echo mode and
    /// pinging every `interval` (staggered) until stopped or `limit` has passed.
    async fn start(
        dialers: Arc<Vec<Dialer>>,
        count: usize,
        interval: Duration,
        limit: Duration,
    ) -> anyhow::Result<Self> {
        let deadline = Instant::now() + limit;
        let (opened, failed, _) = bounded_all(count, CONCURRENCY, deadline, move |i| {
            let dialers = dialers.clone();
            async move {
                let mut s = dialers[i % dialers.len()].dial().await?;
                target::start_echo(&mut s).await?;
                target::round_trip(&mut s, &mut [1u8; target::PING_SIZE]).await?;
                Ok((i, s))
            }
        })
        .await?;
        let (stop, stopped) = watch::channel(false);
        let tasks = opened
            .into_iter()
            .map(|(i, mut s)| {
                let mut stopped = stopped.clone();
                let offset = interval.mul_f64(i as f64 / count as f64);
                let max_rounds = (limit.as_secs_f64() / interval.as_secs_f64()) as usize + 1;
                tokio::spawn(async move {
                    let mut rtts = Vec::new();
                    let mut msg = [1u8; target::PING_SIZE];
                    tokio::time::sleep(offset).await;
                    let mut ticker = tokio::time::interval(interval);
                    for _ in 0..max_rounds {
                        tokio::select! {
                            _ = stopped.wait_for(|s| *s) => break,
                            _ = ticker.tick() => {}
                        }
                        if Instant::now() > deadline {
                            break;
                        }
                        match target::round_trip(&mut s, &mut msg).await {
                            Ok(d) => rtts.push(d),
                            Err(_) => break,
                        }
                    }
                    rtts
                })
            })
            .collect();
        Ok(Self { stop, tasks, failed })
    }

    /// Stops the streams; returns their round-trip times.
    async fn finish(self) -> Latencies {
        let _ = self.stop.send(true);
        let mut all = Vec::new();
        for t in self.tasks {
            all.extend(t.await.unwrap_or_default());
        }
        Latencies::new(all)
    }
}

/// Measures the process `pid` while `count` streams through `dialers` are active; records
/// under `system`.
async fn measure(
    p: &Profile,
    pid: u32,
    dialers: Vec<Dialer>,
    system: &str,
    results: &mut Results,
) -> anyhow::Result<()> {
    tokio::time::sleep(p.settle).await;
    let rss0 = rss_bytes(pid)?;
    let load = Load::start(
        Arc::new(dialers),
        p.active_streams,
        p.active_interval,
        p.phase_timeout,
    )
    .await?;
    let streams = p.active_streams - load.failed;
    if load.failed > 0 {
        results.note(&format!(
            "{NAME}: {system}: {} of {} streams failed to open",
            load.failed, p.active_streams
        ));
    }
    tokio::time::sleep(p.settle).await;
    let rss1 = rss_bytes(pid)?;
    let cpu = cpu_over(pid, p.cpu_window).await?;
    let rtts = load.finish().await;
    results.add_labelled(NAME, system, "streams", streams as f64, "count");
    results.add_labelled(
        NAME,
        system,
        "rss_per_stream",
        kib(rss1.saturating_sub(rss0) as f64 / streams as f64),
        "KiB",
    );
    results.add_labelled(NAME, system, "cpu", cpu * 100.0, "% of a core");
    results.add_labelled(
        NAME,
        system,
        "rtt_p50_at_low_rate",
        rtts.percentile_us(50.0),
        "us",
    );
    results.add_labelled(
        NAME,
        system,
        "rtt_p99_at_low_rate",
        rtts.percentile_us(99.0),
        "us",
    );
    Ok(())
}

/// Runs the scenario: Tether's relay process, the bare TLS baseline, then each rathole server.
///
/// # Errors
/// When the relay cannot start or its devices do not connect.
pub async fn run(
    p: &Profile,
    relay_bin: &Path,
    systems: &Systems,
    results: &mut Results,
) -> anyhow::Result<()> {
    let relay = RelayProcess::start(relay_bin).await?;
    let mut devices = Vec::with_capacity(p.active_devices);
    let mut dialers = Vec::with_capacity(p.active_devices);
    for i in 0..p.active_devices {
        let device = DeviceKey::parse(&format!("active/device-{i}"))?;
        devices.push(fake_device::connect(relay.addr, &device, relay.device_tls(&device)?).await?);
        dialers.push(Dialer::Tether(Box::new(relay.service_target(&device, PORT)?)));
    }
    relay
        .wait_devices(p.active_devices as u64, p.phase_timeout)
        .await?;
    measure(p, relay.pid(), dialers, System::Tether.label(), results).await?;
    results.add(NAME, System::Tether, "devices", p.active_devices as f64, "count");
    for d in devices {
        d.abort();
    }
    drop(relay);

    let bare = BareProcess::start()?;
    measure(
        p,
        bare.pid(),
        vec![bare.dialer.clone()],
        System::Tls.label(),
        results,
    )
    .await?;
    drop(bare);

    // The peers' servers, with as many active connections through their one device-side client.
    let peers = systems.entries().iter().filter(|e| {
        !matches!(
            e.system,
            System::Tcp | System::Tls | System::Tether | System::TetherInproc
        )
    });
    for entry in peers {
        let (system, Some(pid)) = (entry.system, entry.server_pid) else {
            continue;
        };
        if let Err(e) = measure(p, pid, vec![entry.dialer.clone()], system.label(), results).await {
            results.note(&format!("{NAME}: {} failed: {e:#}", system.label()));
        }
    }
    results.ratios(NAME, "rss_per_stream", System::Tls);
    Ok(())
}
