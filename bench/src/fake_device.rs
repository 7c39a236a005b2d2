//! Lightweight device connections for the memory scenarios: TLS with a device certificate, the
//! preface, then an HTTP/2 server that answers keepalive PINGs and serves every stream with the
//! [`target`](crate::target) protocol itself (no local dial), so thousands fit in the harness.

use std::{
    net::{Ipv4Addr, SocketAddr},
    sync::{
        Arc,
        atomic::{AtomicU32, Ordering},
    },
    time::Duration,
};

use anyhow::{Context, bail};
use bytes::{Bytes, BytesMut};
use http::Response;
use rustls_pki_types::ServerName;
use tether_cli::testbed::RELAY_DOMAIN;
use tether_net::h2io::{self, H2Stream};
use tether_proto::{
    name::DeviceKey,
    preface::{Decoded, HEADER_LEN, Preface, PrefaceReply},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpSocket, TcpStream},
    task::JoinHandle,
};

/// Time allowed for TCP, TLS, the preface and the HTTP/2 handshake.
const HANDSHAKE_LIMIT: Duration = Duration::from_secs(20);

/// Loopback source addresses the devices are spread over. One source address has ~28,000
/// ephemeral ports towards one relay address, so 100,000 devices need several; 16 also keeps
/// each source well under the relay's per-source pending-handshake cap while filling up.
const SOURCE_ADDRESSES: u32 = 16;

/// Opens a TCP connection to `relay`, from the next of [`SOURCE_ADDRESSES`] loopback sources
/// when the relay is on IPv4 loopback.
async fn dial(relay: SocketAddr) -> std::io::Result<TcpStream> {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    match relay {
        SocketAddr::V4(v4) if v4.ip().is_loopback() => {
            let n = NEXT.fetch_add(1, Ordering::Relaxed) % SOURCE_ADDRESSES;
            let socket = TcpSocket::new_v4()?;
            socket.bind(SocketAddr::from((Ipv4Addr::new(127, 0, 1, 1 + n as u8), 0)))?;
            socket.connect(relay).await
        }
        _ => TcpStream::connect(relay).await,
    }
}

/// Connects `device` to the relay at `relay` with `tls`; the returned task serves the connection
/// until it ends or is aborted.
///
/// # Errors
/// Any handshake failure, or the relay refusing the device.
pub async fn connect(
    relay: SocketAddr,
    device: &DeviceKey,
    tls: Arc<rustls::ClientConfig>,
) -> anyhow::Result<JoinHandle<()>> {
    Ok(connect_with_ping(relay, device, tls).await?.0)
}

/// [`connect`], also returning the connection's PING sender (the instruction-count gate sends
/// keepalive rounds from the device side, a fixed number of them).
///
/// # Errors
/// As [`connect`].
pub async fn connect_with_ping(
    relay: SocketAddr,
    device: &DeviceKey,
    tls: Arc<rustls::ClientConfig>,
) -> anyhow::Result<(JoinHandle<()>, h2::PingPong)> {
    let mut conn = tokio::time::timeout(HANDSHAKE_LIMIT, async {
        let tcp = dial(relay).await?;
        tcp.set_nodelay(true)?;
        let name = ServerName::try_from(device.server_name(RELAY_DOMAIN))?;
        let mut tls = tokio_rustls::TlsConnector::from(tls).connect(name, tcp).await?;
        let mut out = BytesMut::new();
        Preface {
            agent_version: "tether-bench".into(),
            features: vec![],
        }
        .encode(&mut out);
        tls.write_all(&out).await?;
        tls.flush().await?;
        let mut buf = BytesMut::zeroed(HEADER_LEN);
        tls.read_exact(&mut buf).await?;
        let body = usize::from(u16::from_be_bytes([buf[9], buf[10]]));
        buf.resize(HEADER_LEN + body, 0);
        tls.read_exact(&mut buf[HEADER_LEN..]).await?;
        let reply = match PrefaceReply::decode(&mut buf)? {
            Decoded::Complete(reply) => reply,
            Decoded::Incomplete => bail!("incomplete preface reply"),
        };
        if !reply.accepted {
            bail!("relay refused {device}: {}", reply.message);
        }
        Ok(h2io::server_builder(h2io::DEFAULT_MAX_STREAMS)
            .handshake::<_, Bytes>(tls)
            .await?)
    })
    .await
    .context("device handshake: time bound exceeded")??;
    let ping = conn.ping_pong().context("PING sender already taken")?;
    Ok((tokio::spawn(serve(conn)), ping))
}

async fn serve<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    mut conn: h2::server::Connection<T, Bytes>,
) {
    // Polling `accept` drives the connection: PING answers, flow control, stream data.
    while let Some(Ok((req, mut respond))) = conn.accept().await {
        let Ok(send) = respond.send_response(Response::new(()), false) else {
            continue;
        };
        tokio::spawn(crate::target::serve(H2Stream::new(send, req.into_body())));
    }
}
