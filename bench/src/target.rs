//! The target service behind every system, and the client side of its one-byte protocol.
//!
//! After connecting, the client sends a mode byte:
//! * [`ECHO`]: echo every byte until EOF (ping-pong, time to first byte, low-rate streams);
//! * [`UPLOAD`] + N (u64): the server reads N bytes and answers with N (u64);
//! * [`DOWNLOAD`] + N (u64): the server sends N bytes.
//!
//! Lengths are explicit so no measurement depends on half-close semantics of the system under
//! test. Every client helper runs under a deadline and fails past it.

use std::{
    io,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::TcpListener,
    time::timeout_at,
};

/// Mode byte: echo.
pub const ECHO: u8 = b'e';
/// Mode byte: the client uploads N bytes.
pub const UPLOAD: u8 = b'u';
/// Mode byte: the client downloads N bytes.
pub const DOWNLOAD: u8 = b'd';
/// Copy buffer size.
const CHUNK: usize = 64 * 1024;
/// Ping-pong message size.
pub const PING_SIZE: usize = 64;

fn payload() -> Vec<u8> {
    (0..CHUNK as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect()
}

/// Serves one connection of the target protocol.
///
/// # Errors
/// I/O errors and unknown modes.
pub async fn serve<S: AsyncRead + AsyncWrite + Unpin>(mut s: S) -> io::Result<()> {
    let mode = s.read_u8().await?;
    let mut buf = vec![0u8; CHUNK];
    match mode {
        ECHO => loop {
            let n = s.read(&mut buf).await?;
            if n == 0 {
                return s.shutdown().await;
            }
            s.write_all(&buf[..n]).await?;
            s.flush().await?;
        },
        UPLOAD => {
            let total = s.read_u64().await?;
            let mut left = total;
            while left > 0 {
                let want = left.min(CHUNK as u64) as usize;
                let n = s.read(&mut buf[..want]).await?;
                if n == 0 {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
                left -= n as u64;
            }
            s.write_u64(total).await?;
            s.flush().await?;
            // Wait for the client to close, so no reset races our answer.
            let _ = s.read(&mut buf).await;
            Ok(())
        }
        DOWNLOAD => {
            let total = s.read_u64().await?;
            let data = payload();
            let mut left = total;
            while left > 0 {
                let n = left.min(CHUNK as u64) as usize;
                s.write_all(&data[..n]).await?;
                left -= n as u64;
            }
            s.flush().await?;
            let _ = s.read(&mut buf).await;
            Ok(())
        }
        other => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("unknown mode {other}"),
        )),
    }
}

/// Serves the target protocol on every connection `listener` accepts (in the background).
pub fn serve_on(listener: TcpListener) {
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let _ = tcp.set_nodelay(true);
            tokio::spawn(serve(tcp));
        }
    });
}

async fn bounded<T>(
    deadline: Instant,
    what: &str,
    fut: impl Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    timeout_at(deadline.into(), fut)
        .await
        .with_context(|| format!("{what}: time bound exceeded"))?
}

/// Uploads `bytes`; returns the time from the first byte sent to the server's confirmation.
///
/// # Errors
/// I/O errors, a wrong count, or the deadline.
pub async fn upload<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    bytes: u64,
    deadline: Instant,
) -> anyhow::Result<Duration> {
    bounded(deadline, "upload", async {
        let data = payload();
        let started = Instant::now();
        s.write_u8(UPLOAD).await?;
        s.write_u64(bytes).await?;
        let mut left = bytes;
        while left > 0 {
            let n = left.min(CHUNK as u64) as usize;
            s.write_all(&data[..n]).await?;
            left -= n as u64;
        }
        s.flush().await?;
        let got = s.read_u64().await?;
        if got != bytes {
            bail!("server confirmed {got} bytes, sent {bytes}");
        }
        Ok(started.elapsed())
    })
    .await
}

/// Downloads `bytes`; returns the time from the request to the last byte.
///
/// # Errors
/// I/O errors, early EOF, or the deadline.
pub async fn download<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    bytes: u64,
    deadline: Instant,
) -> anyhow::Result<Duration> {
    bounded(deadline, "download", async {
        let started = Instant::now();
        s.write_u8(DOWNLOAD).await?;
        s.write_u64(bytes).await?;
        s.flush().await?;
        let mut buf = vec![0u8; CHUNK];
        let mut left = bytes;
        while left > 0 {
            let want = left.min(CHUNK as u64) as usize;
            let n = s.read(&mut buf[..want]).await?;
            if n == 0 {
                bail!("EOF with {left} bytes still to come");
            }
            left -= n as u64;
        }
        Ok(started.elapsed())
    })
    .await
}

/// Reads and discards a download of `bytes` until `stop` resolves (the saturating stream of
/// scenario 7); returns the bytes received.
///
/// # Errors
/// I/O errors or the deadline.
pub async fn drain_until<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    bytes: u64,
    stop: tokio::sync::watch::Receiver<bool>,
    deadline: Instant,
) -> anyhow::Result<u64> {
    let mut stop = stop;
    bounded(deadline, "saturating download", async {
        s.write_u8(DOWNLOAD).await?;
        s.write_u64(bytes).await?;
        s.flush().await?;
        let mut buf = vec![0u8; CHUNK];
        let mut got = 0u64;
        loop {
            tokio::select! {
                _ = stop.wait_for(|s| *s) => return Ok(got),
                n = s.read(&mut buf) => {
                    let n = n?;
                    if n == 0 {
                        return Ok(got);
                    }
                    got += n as u64;
                }
            }
        }
    })
    .await
}

/// Starts echo mode on an open connection.
///
/// # Errors
/// I/O errors.
pub async fn start_echo<S: AsyncWrite + Unpin>(s: &mut S) -> io::Result<()> {
    s.write_u8(ECHO).await?;
    s.flush().await
}

/// One round trip of a [`PING_SIZE`] message on a connection in echo mode.
///
/// # Errors
/// I/O errors.
pub async fn round_trip<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    msg: &mut [u8; PING_SIZE],
) -> io::Result<Duration> {
    let started = Instant::now();
    s.write_all(msg).await?;
    s.flush().await?;
    s.read_exact(msg).await?;
    Ok(started.elapsed())
}

/// Puts a connection in echo mode and makes `warmup` unmeasured round trips (fewer if the
/// deadline comes first).
///
/// # Errors
/// I/O errors or the deadline.
pub async fn warm_up<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    warmup: usize,
    deadline: Instant,
) -> anyhow::Result<()> {
    start_echo(s).await?;
    let mut msg = [0x5au8; PING_SIZE];
    for _ in 0..warmup {
        if Instant::now() >= deadline {
            break;
        }
        bounded(deadline, "ping-pong warm-up", async {
            Ok(round_trip(s, &mut msg).await?)
        })
        .await?;
    }
    Ok(())
}

/// Up to `samples` measured round trips on a connection in echo mode, appended to `out` (fewer
/// if the deadline comes first).
///
/// # Errors
/// I/O errors.
pub async fn sample<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    samples: usize,
    deadline: Instant,
    out: &mut Vec<Duration>,
) -> anyhow::Result<()> {
    let mut msg = [0x5au8; PING_SIZE];
    for _ in 0..samples {
        if Instant::now() >= deadline {
            break;
        }
        out.push(
            bounded(deadline, "ping-pong", async {
                Ok(round_trip(s, &mut msg).await?)
            })
            .await?,
        );
    }
    Ok(())
}
