//! Scenario 5: many idle device connections with keepalive on a separate `tether-relay`
//! process: its resident memory per connection (delta RSS / N) and its idle CPU. The baseline is
//! a bare rustls server process holding as many idle TLS connections.

use std::{path::Path, sync::Arc, time::Instant};

use anyhow::Context;
use tether_proto::name::DeviceKey;

use super::{bounded_all, kib};
use crate::{
    Profile, Results,
    bare::BareProcess,
    fake_device,
    proc_stats::{cpu_over, rss_bytes},
    relay_process::RelayProcess,
    systems::System,
};

/// Scenario name.
pub const NAME: &str = "5-idle-devices";

/// Connections opened at once while filling up.
const CONCURRENCY: usize = 64;

/// Devices connected before the first reading, so one-off allocations (thread stacks, TLS
/// config, registry growth) are not charged to the measured connections.
fn warm(n: usize) -> usize {
    (n / 20).clamp(5, 200)
}

/// Runs the scenario: Tether's relay process, then the bare TLS baseline.
///
/// # Errors
/// When the relay cannot start or no device connects.
pub async fn run(p: &Profile, relay_bin: &Path, results: &mut Results) -> anyhow::Result<()> {
    let n = p.idle_devices;
    let (warm, total) = (warm(n), warm(n) + n);
    let relay = Arc::new(RelayProcess::start(relay_bin).await?);
    let issued = Instant::now();
    let creds = (0..total)
        .map(|i| {
            let device = DeviceKey::parse(&format!("idle/device-{i}"))?;
            let tls = relay.device_tls(&device)?;
            Ok((device, tls))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    eprintln!(
        "  issued {total} device certificates in {:.1} s",
        issued.elapsed().as_secs_f64()
    );
    let creds = Arc::new(creds);
    let connect = |range: std::ops::Range<usize>| {
        let (relay, creds) = (relay.clone(), creds.clone());
        bounded_all(
            range.len(),
            CONCURRENCY,
            Instant::now() + p.phase_timeout,
            move |i| {
                let (relay, creds) = (relay.clone(), creds.clone());
                let i = range.start + i;
                async move {
                    let (device, tls) = &creds[i];
                    fake_device::connect(relay.addr, device, tls.clone()).await
                }
            },
        )
    };
    let (mut devices, _, _) = connect(0..warm).await?;
    relay.wait_devices(warm as u64, p.phase_timeout).await?;
    tokio::time::sleep(p.settle).await;
    let rss0 = rss_bytes(relay.pid())?;
    let started = Instant::now();
    let (more, failed, first) = connect(warm..total).await?;
    let connect_secs = started.elapsed().as_secs_f64();
    devices.extend(more);
    let measured = devices.len() - warm;
    if failed > 0 {
        results.note(&format!(
            "{NAME}: {failed} of {n} device connections failed (first: {})",
            first.unwrap_or_default()
        ));
    }
    let seen = relay
        .wait_devices(devices.len() as u64, p.phase_timeout)
        .await
        .context("devices registered")?;
    tokio::time::sleep(p.settle).await;
    let rss1 = rss_bytes(relay.pid())?;
    let cpu = cpu_over(relay.pid(), p.cpu_window).await?;
    let t = System::Tether;
    results.add(NAME, t, "connections", measured as f64, "count");
    results.add(NAME, t, "connect_rate", measured as f64 / connect_secs, "1/s");
    results.add(
        NAME,
        t,
        "rss_per_connection",
        kib(rss1.saturating_sub(rss0) as f64 / measured as f64),
        "KiB",
    );
    results.add(NAME, t, "rss_total", rss1 as f64 / (1024.0 * 1024.0), "MiB");
    results.add(NAME, t, "idle_cpu", cpu * 100.0, "% of a core");
    eprintln!("  relay reports {seen} connected devices");
    for d in devices {
        d.abort();
    }
    drop(relay);

    // Baseline: the same number of idle TLS connections on a bare rustls server process.
    let bare = Arc::new(BareProcess::start()?);
    let open = |count: usize| {
        let bare = bare.clone();
        bounded_all(count, CONCURRENCY, Instant::now() + p.phase_timeout, move |_| {
            let bare = bare.clone();
            async move { bare.dialer.dial().await }
        })
    };
    let (mut conns, _, _) = open(warm).await?;
    tokio::time::sleep(p.settle).await;
    let rss0 = rss_bytes(bare.pid())?;
    let (more, failed, first) = open(n).await?;
    conns.extend(more);
    if failed > 0 {
        results.note(&format!(
            "{NAME}: {failed} of {n} bare TLS connections failed (first: {})",
            first.unwrap_or_default()
        ));
    }
    tokio::time::sleep(p.settle).await;
    let rss1 = rss_bytes(bare.pid())?;
    let cpu = cpu_over(bare.pid(), p.cpu_window).await?;
    let measured = conns.len() - warm;
    let b = System::Tls;
    results.add(NAME, b, "connections", measured as f64, "count");
    results.add(
        NAME,
        b,
        "rss_per_connection",
        kib(rss1.saturating_sub(rss0) as f64 / measured as f64),
        "KiB",
    );
    results.add(NAME, b, "rss_total", rss1 as f64 / (1024.0 * 1024.0), "MiB");
    results.add(NAME, b, "idle_cpu", cpu * 100.0, "% of a core");
    results.ratios(NAME, "rss_per_connection", System::Tls);
    drop(conns);
    Ok(())
}
