//! Splices a service connection and a device stream, counting bytes as they flow.
//!
//! `copy_bidirectional` keeps each direction going until its own EOF and half-closes the other
//! side, so a client that shuts down its write side still receives the device's answer (bore's
//! `select!` over two copies cut it off).

use std::{
    io,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use prometheus::IntCounter;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    time::Instant,
};

/// Buffer per direction (shared with the agent's side of the tunnel).
pub use tether_net::h2io::SPLICE_BUFFER;

/// Counts bytes read from `inner` into a counter, live, so dashboards see throughput during a
/// long transfer rather than at its end, and into the connection's own [`Activity`].
pub struct Metered<S> {
    inner: S,
    read_bytes: IntCounter,
    activity: Arc<Activity>,
    /// The stream's own counter, for its status (Kubernetes mode).
    stream_bytes: Option<Arc<AtomicU64>>,
}

impl<S> Metered<S> {
    /// Wraps `inner`; bytes read from it go to `read_bytes` and `activity`.
    pub fn new(inner: S, read_bytes: IntCounter, activity: Arc<Activity>) -> Self {
        Self {
            inner,
            read_bytes,
            activity,
            stream_bytes: None,
        }
    }

    /// Also counts into `counter` (the stream's bytes in this direction).
    pub fn with_stream_counter(mut self, counter: Option<Arc<AtomicU64>>) -> Self {
        self.stream_bytes = counter;
        self
    }
}

/// Notes when the first byte was read from `inner` (the stream trace's `first_byte` span).
pub struct FirstByte<S> {
    inner: S,
    at: Arc<std::sync::OnceLock<std::time::SystemTime>>,
}

impl<S> FirstByte<S> {
    /// Wraps `inner`; the time of its first non-empty read goes to `at`.
    pub fn new(inner: S, at: Arc<std::sync::OnceLock<std::time::SystemTime>>) -> Self {
        Self { inner, at }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for FirstByte<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let res = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before && self.at.get().is_none() {
            let _ = self.at.set(std::time::SystemTime::now());
        }
        res
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for FirstByte<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Bytes a connection has moved in either direction, for its idle timeout. Every byte spliced is
/// read from one side first, so counting reads counts all traffic.
#[derive(Debug, Default)]
pub struct Activity(AtomicU64);

impl Activity {
    fn add(&self, n: usize) {
        self.0.fetch_add(n as u64, Ordering::Relaxed);
    }

    fn bytes(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }

    /// Returns once no byte has moved for `idle` (checked every quarter of it, so the connection
    /// closes between `idle` and 1.25 × `idle` after its last byte).
    pub async fn idle_for(&self, idle: Duration) {
        let tick = (idle / 4).max(Duration::from_millis(10));
        let (mut seen, mut quiet_since) = (self.bytes(), Instant::now());
        loop {
            tokio::time::sleep(tick).await;
            let now = self.bytes();
            if now != seen {
                (seen, quiet_since) = (now, Instant::now());
            } else if quiet_since.elapsed() >= idle {
                return;
            }
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Metered<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let res = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if n > 0 {
            self.read_bytes.inc_by(n as u64);
            self.activity.add(n);
            if let Some(c) = &self.stream_bytes {
                c.fetch_add(n as u64, Ordering::Relaxed);
            }
        }
        res
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Metered<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Copies both ways until both directions end; returns (a→b, b→a) byte counts.
///
/// # Errors
/// The first I/O error of either side.
pub async fn splice<A, B>(a: &mut A, b: &mut B) -> io::Result<(u64, u64)>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    tokio::io::copy_bidirectional_with_sizes(a, b, SPLICE_BUFFER, SPLICE_BUFFER).await
}
