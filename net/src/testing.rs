//! Helpers for the workspace's tests (feature `test-util`; never in a shipped build).

use std::net::{Ipv4Addr, SocketAddr};

use tokio::{io::AsyncWriteExt, net::TcpListener};

/// Starts a TCP echo server on 127.0.0.1 and returns its address. Every connection gets its
/// bytes back until it half-closes; then the echo side closes too (so a client that waits for
/// EOF after its own shutdown sees it). Runs until the runtime stops.
///
/// # Errors
/// When no loopback port can be bound.
pub async fn echo_server() -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    Ok(addr)
}

/// Whether CI (`CI=true`) or the variable `require` demands a test part whose tools may be
/// missing: such a part then fails instead of printing a note and passing.
pub fn required(require: &str) -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true") || std::env::var_os(require).is_some_and(|v| !v.is_empty())
}
