//! `kubectl tether connect`: one stream on stdin/stdout (ssh `ProxyCommand`) or a local
//! listener, for an existing DeviceStream (`--stream`) or one created for the command's lifetime
//! (`--device --port`, usable straight from `~/.ssh/config`).

use kube::ResourceExt;
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

use crate::{Error, Result, args::ConnectArgs, cluster::Cluster, stream};

/// Connects; deletes the stream afterwards if this command created it.
///
/// # Errors
/// The stream is not usable, the relay refuses, or the local listener cannot bind.
pub async fn run(cluster: &Cluster, args: ConnectArgs) -> Result<()> {
    let (target, created) = match (&args.stream, &args.device, args.port) {
        (Some(name), _, _) => {
            let s = stream::get_ready(cluster, name).await?;
            (stream::target(cluster, &s).await?, None)
        }
        (None, Some(device), Some(port)) => {
            let (s, target) = stream::open(cluster, device, port, args.ttl, "connect").await?;
            (target, Some(s.name_any()))
        }
        _ => return Err(Error::Usage("give --stream, or --device with --port".into())),
    };
    let Some(name) = created else {
        return serve(target, &args).await;
    };
    // ssh ends its ProxyCommand with SIGHUP: a stream we created must still be deleted then.
    let mut hup = signal(SignalKind::hangup()).map_err(Error::io("signals"))?;
    let mut term = signal(SignalKind::terminate()).map_err(Error::io("signals"))?;
    let outcome = tokio::select! {
        outcome = serve(target, &args) => outcome,
        _ = hup.recv() => Ok(()),
        _ = term.recv() => Ok(()),
    };
    stream::delete(cluster, &name).await?;
    outcome
}

async fn serve(target: tether_cli::connect::Target, args: &ConnectArgs) -> Result<()> {
    if args.stdio {
        return tether_cli::connect::stdio(&target)
            .await
            .map_err(Error::from_connect);
    }
    let Some(addr) = args.listen else {
        return Err(Error::Usage("give --stdio or --listen".into()));
    };
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(Error::io(format!("cannot listen on {addr}")))?;
    let local = listener.local_addr().map_err(Error::io("local address"))?;
    eprintln!("Forwarding from {local} -> {}", target.port);
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        stop.cancel();
    });
    tether_cli::connect::listen(target, listener, shutdown).await;
    Ok(())
}
