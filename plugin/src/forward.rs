//! `kubectl tether port-forward`: a local listener whose every connection is tunnelled to a
//! device port, for the life of one DeviceStream. Ctrl-C (or SIGTERM) deletes the stream.

use std::{io::Write as _, net::SocketAddr, time::Duration};

use kube::ResourceExt;
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

use crate::{
    Error, Result,
    args::{PortForwardArgs, PortPair},
    cluster::Cluster,
    stream,
};

/// Forwards until Ctrl-C, SIGTERM or the stream's expiry, then deletes the stream.
///
/// # Errors
/// Bad ports, a local port in use, or a stream that cannot be made Ready.
pub async fn run(cluster: &Cluster, args: PortForwardArgs) -> Result<()> {
    let ports: PortPair = args.ports.parse().map_err(Error::Usage)?;
    // Bind first: a port in use fails before any stream exists.
    let addr = SocketAddr::new(args.address, ports.local);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(Error::io(format!("cannot listen on {addr}")))?;
    let local = listener.local_addr().map_err(Error::io("local address"))?;
    let (created, target) = stream::open(cluster, &args.device, ports.remote, args.ttl, "pf").await?;
    let name = created.name_any();
    println!("Forwarding from {local} -> {}", ports.remote);
    let _ = std::io::stdout().flush();
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    let until_expiry = expires_in(&created).unwrap_or(args.ttl);
    let stopper = tokio::spawn(async move {
        let (mut int, mut term) = match (signal(SignalKind::interrupt()), signal(SignalKind::terminate())) {
            (Ok(i), Ok(t)) => (i, t),
            _ => return stop.cancel(),
        };
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
            () = tokio::time::sleep(until_expiry) => {
                eprintln!("DeviceStream has expired; run the command again for a new one");
            }
        }
        stop.cancel();
    });
    tether_cli::connect::listen(target, listener, shutdown).await;
    stopper.abort();
    stream::delete(cluster, &name).await
}

/// Time left until the stream's `status.expiresAt`.
fn expires_in(stream: &tether_api::DeviceStream) -> Option<Duration> {
    let at = stream.status.as_ref()?.expires_at.as_ref()?.0.as_second();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?
        .as_secs();
    u64::try_from(at)
        .ok()
        .map(|at| Duration::from_secs(at.saturating_sub(now)))
}
