//! An HTTP/2 stream as `AsyncRead + AsyncWrite`, and the HTTP/2 settings both ends of a device
//! connection use.
//!
//! Each tunnelled TCP connection is one HTTP/2 stream on the device connection. [`H2Stream`] lets
//! the usual tokio copy loops drive it while h2 does flow control: received data is released back
//! to the peer's window only as the reader takes it, so a slow consumer slows only its own stream.
//! `poll_shutdown` sends END_STREAM, which is TCP's half-close.

use std::{
    io,
    pin::Pin,
    task::{Context, Poll, ready},
    time::Duration,
};

use bytes::{Buf, Bytes};
use h2::{RecvStream, SendStream};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    time::Instant,
};

use crate::window::Estimator;

/// Per-stream receive window at the start ([`crate::window`] grows it on long paths). It bounds
/// how many bytes of one stream can be in flight on the shared device connection, i.e. how long
/// an interactive stream's next frame waits behind a bulk copy.
/// Measured on loopback (docs/benchmarks.md): 4 MiB gave ~30 ms interactive p99 next to a
/// saturating copy, 1 MiB ~4 ms, 256 KiB ~1.8 ms, with no loss of bulk throughput. On a 10 Mbit/s
/// device uplink 256 KiB is ~200 ms of queue (1 MiB would be ~0.8 s). The cost: one stream tops
/// out at ~5 MiB/s at 50 ms RTT unless the window grows, which the adaptive window does where
/// the path's bandwidth-delay product calls for it.
pub const STREAM_WINDOW: u32 = 256 * 1024;
/// Connection receive window, shared by all streams of one device connection: room for several
/// streams at full speed.
pub const CONNECTION_WINDOW: u32 = 16 * 1024 * 1024;
/// Largest DATA frame we accept. h2 writes one frame per write call and rustls seals at most
/// 16 KiB per record, so a 16 KiB frame (plus its 9-byte header) cost a full record, a 9-byte
/// record and a system call per 16 KiB. With 64 KiB frames filled by [`SPLICE_BUFFER`] a frame
/// is exactly four full records in one `writev` (docs/benchmarks.md "Bulk cycles"). An
/// interactive frame waits behind at most one such frame being written: ~60 µs at 1 GB/s.
pub const MAX_FRAME_SIZE: u32 = 64 * 1024;
/// How much unacknowledged data one stream may queue for sending.
pub const MAX_SEND_BUFFER: usize = 1024 * 1024;
/// Default cap on concurrent streams per device connection.
pub const DEFAULT_MAX_STREAMS: u32 = 256;
/// Default PING interval for dead-peer detection; well under the 60 s idle cut of common load
/// balancers (AWS ALB/NLB, Cloudflare's 270 s is longer).
pub const DEFAULT_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(20);
/// How long a PING may go unanswered before the peer is declared dead.
pub const DEFAULT_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// Copy buffer per direction when a tunnel's HTTP/2 stream is spliced to TCP (relay: to the
/// service; agent: to the local target; `tether connect`: to the local client). About 64 KiB:
/// fewer wake-ups, frames and system calls per byte than tokio's 8 KiB default (measured +23%
/// download and +36% for ten parallel streams, docs/benchmarks.md), and small enough that 10k
/// idle-to-busy streams stay cheap (the buffers exist only while splicing). 9 bytes short of
/// 64 KiB so that a full read plus its HTTP/2 frame header is four full TLS records.
pub const SPLICE_BUFFER: usize = 64 * 1024 - 9;

/// Why [`keepalive`] declared the peer dead.
#[derive(Debug, thiserror::Error)]
pub enum PeerDead {
    /// The PING could not be sent or its answer not received (the connection failed).
    #[error("keepalive PING failed: {0}")]
    PingFailed(#[source] h2::Error),
    /// The peer did not answer a PING in time.
    #[error("no keepalive PING answer within {0:?}")]
    NoAnswer(Duration),
}

/// Sends a PING every `interval` (the first one `interval` from now) and returns once one goes
/// unanswered for `ack_timeout` or fails. Both ends of a device connection use it, with
/// [`DEFAULT_KEEPALIVE_INTERVAL`] and [`DEFAULT_KEEPALIVE_TIMEOUT`] unless configured. The
/// connection must be polled concurrently (its task reads the PONG).
///
/// With an [`Estimator`] it also times the round trips for the adaptive window: one PING right
/// away (the path's round trip before any queue), then extra PINGs while data arrives, as the
/// estimator asks. Every answered PING proves the peer alive, so those count as keepalives.
pub async fn keepalive(
    mut ping_pong: h2::PingPong,
    interval: Duration,
    ack_timeout: Duration,
    mut window: Option<Estimator>,
) -> PeerDead {
    // A sleep after each answer, not a fixed-rate ticker: a slow PONG never queues PINGs.
    let mut next_keepalive = if window.is_some() {
        Instant::now()
    } else {
        Instant::now() + interval
    };
    loop {
        match &window {
            Some(estimator) => tokio::select! {
                _ = tokio::time::sleep_until(next_keepalive) => {}
                _ = estimator.sample_due() => {}
            },
            None => tokio::time::sleep_until(next_keepalive).await,
        }
        let before = window.as_ref().map_or(0, Estimator::received);
        let sent = Instant::now();
        match tokio::time::timeout(ack_timeout, ping_pong.ping(h2::Ping::opaque())).await {
            Ok(Ok(_pong)) => {}
            Ok(Err(e)) => return PeerDead::PingFailed(e),
            Err(_) => return PeerDead::NoAnswer(ack_timeout),
        }
        next_keepalive = Instant::now() + interval;
        if let Some(estimator) = &mut window {
            let bytes = estimator.received() - before;
            estimator.sample(bytes, sent.elapsed());
        }
    }
}

/// The h2 client builder for the relay side of a device connection.
pub fn client_builder(max_streams: u32) -> h2::client::Builder {
    let mut b = h2::client::Builder::new();
    b.initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(MAX_FRAME_SIZE)
        .max_send_buffer_size(MAX_SEND_BUFFER)
        .max_concurrent_streams(max_streams)
        .max_header_list_size(16 * 1024)
        // The relay never accepts pushes: the agent serves, it does not initiate.
        .enable_push(false);
    b
}

/// The h2 server builder for the agent side of a device connection.
pub fn server_builder(max_streams: u32) -> h2::server::Builder {
    let mut b = h2::server::Builder::new();
    b.initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(MAX_FRAME_SIZE)
        .max_send_buffer_size(MAX_SEND_BUFFER)
        .max_concurrent_streams(max_streams)
        .max_header_list_size(16 * 1024)
        // Bound resets a peer can make us process (rapid-reset, CVE-2023-44487).
        .max_concurrent_reset_streams(64)
        .max_pending_accept_reset_streams(64)
        .max_local_error_reset_streams(Some(256));
    b
}

/// One HTTP/2 stream of a device connection, read and written as a byte stream.
pub struct H2Stream {
    send: SendStream<Bytes>,
    recv: RecvStream,
    /// Data taken from h2 but not yet read by the caller.
    pending: Bytes,
    /// The peer ended its side (END_STREAM).
    recv_done: bool,
    /// A receive error that came after data the last read returned; the next read reports it.
    failed: Option<io::Error>,
}

impl H2Stream {
    /// Wraps the two halves of a stream.
    pub fn new(send: SendStream<Bytes>, recv: RecvStream) -> Self {
        Self {
            send,
            recv,
            pending: Bytes::new(),
            recv_done: false,
            failed: None,
        }
    }
}

impl std::fmt::Debug for H2Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H2Stream")
            .field("stream_id", &self.send.stream_id())
            .field("pending", &self.pending.len())
            .field("recv_done", &self.recv_done)
            .finish()
    }
}

fn h2_to_io(e: h2::Error) -> io::Error {
    if e.is_io() {
        e.into_io().unwrap_or_else(|| io::Error::other("h2 I/O error"))
    } else if e.reason() == Some(h2::Reason::NO_ERROR) || e.reason() == Some(h2::Reason::CANCEL) {
        io::Error::new(io::ErrorKind::ConnectionReset, e)
    } else {
        io::Error::other(e)
    }
}

impl AsyncRead for H2Stream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        // Hands out every frame h2 already holds, up to the caller's buffer: the splice loops then
        // write 64 KiB to the target per system call instead of one 16 KiB frame.
        let start = buf.filled().len();
        loop {
            if !self.pending.is_empty() {
                let n = self.pending.len().min(buf.remaining());
                buf.put_slice(&self.pending[..n]);
                self.pending.advance(n);
                if buf.remaining() == 0 || !self.pending.is_empty() {
                    return Poll::Ready(Ok(()));
                }
            }
            if self.recv_done {
                return Poll::Ready(Ok(()));
            }
            let filled = buf.filled().len() > start;
            if let Some(e) = self.failed.take() {
                return Poll::Ready(Err(e));
            }
            match self.recv.poll_data(cx) {
                Poll::Ready(Some(Ok(data))) => {
                    // Reopen the peer's window for what we took out of h2: at most one frame is
                    // held here, so backpressure still reaches the sender.
                    let _ = self.recv.flow_control().release_capacity(data.len());
                    self.pending = data;
                }
                // The data already copied goes out first; the error on the next read.
                Poll::Ready(Some(Err(e))) if filled => {
                    self.failed = Some(h2_to_io(e));
                    return Poll::Ready(Ok(()));
                }
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(h2_to_io(e))),
                Poll::Ready(None) => self.recv_done = true,
                Poll::Pending if filled => return Poll::Ready(Ok(())),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl AsyncWrite for H2Stream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        self.send.reserve_capacity(buf.len());
        loop {
            match ready!(self.send.poll_capacity(cx)) {
                Some(Ok(0)) => continue,
                Some(Ok(n)) => {
                    let n = n.min(buf.len());
                    self.send
                        .send_data(Bytes::copy_from_slice(&buf[..n]), false)
                        .map_err(h2_to_io)?;
                    return Poll::Ready(Ok(n));
                }
                Some(Err(e)) => return Poll::Ready(Err(h2_to_io(e))),
                None => return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into())),
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // h2 flushes frames from its connection task; nothing is buffered here.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.send.reserve_capacity(0);
        Poll::Ready(self.send.send_data(Bytes::new(), true).map_err(h2_to_io))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{Request, Response};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// An h2 client and server over an in-memory pipe; returns (client stream, server stream).
    async fn pair() -> (H2Stream, H2Stream) {
        let (a, b) = tokio::io::duplex(1 << 20);
        let server = tokio::spawn(async move {
            let mut conn = server_builder(8).handshake::<_, Bytes>(b).await.unwrap();
            let (req, mut respond) = conn.accept().await.unwrap().unwrap();
            let send = respond.send_response(Response::new(()), false).unwrap();
            tokio::spawn(async move { while conn.accept().await.is_some() {} });
            H2Stream::new(send, req.into_body())
        });
        let (mut client, conn) = client_builder(8).handshake::<_, Bytes>(a).await.unwrap();
        tokio::spawn(conn);
        let (resp, send) = client
            .send_request(Request::post("/").body(()).unwrap(), false)
            .unwrap();
        let server = server.await.unwrap();
        let recv = resp.await.unwrap().into_body();
        (H2Stream::new(send, recv), server)
    }

    #[tokio::test]
    async fn bytes_flow_both_ways_with_half_close() {
        let (mut c, mut s) = pair().await;
        let big: Vec<u8> = (0..8 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
        let expect = big.clone();
        let writer = tokio::spawn(async move {
            c.write_all(&big).await.unwrap();
            c.shutdown().await.unwrap(); // half-close: the server sees EOF ...
            let mut back = Vec::new();
            c.read_to_end(&mut back).await.unwrap(); // ... and can still answer.
            back
        });
        let mut got = Vec::new();
        s.read_to_end(&mut got).await.unwrap();
        assert!(got == expect, "payload differs");
        s.write_all(b"done").await.unwrap();
        s.shutdown().await.unwrap();
        assert_eq!(writer.await.unwrap(), b"done");
    }
}
