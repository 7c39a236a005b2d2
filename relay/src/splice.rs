//! Splices a service connection and a device stream, counting bytes as they flow.
//!
//! `copy_bidirectional` keeps each direction going until its own EOF and half-closes the other
//! side, so a client that shuts down its write side still receives the device's answer (bore's
//! `select!` over two copies cut it off).

use std::{
    io,
    pin::Pin,
    task::{Context, Poll},
};

use prometheus::IntCounter;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Buffer per direction. 64 KiB is four TLS records: fewer wake-ups per byte than tokio's 8 KiB
/// default, small enough that 10k idle-to-busy streams stay cheap (buffers exist only while
/// splicing).
pub const SPLICE_BUFFER: usize = 64 * 1024;

/// Counts bytes read from `inner` into a counter, live, so dashboards see throughput during a
/// long transfer rather than at its end.
pub struct Metered<S> {
    inner: S,
    read_bytes: IntCounter,
}

impl<S> Metered<S> {
    /// Wraps `inner`; bytes read from it go to `read_bytes`.
    pub fn new(inner: S, read_bytes: IntCounter) -> Self {
        Self { inner, read_bytes }
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
