//! The adaptive HTTP/2 receive window: grows a connection's per-stream window to twice the path's
//! bandwidth-delay product, measured with the keepalive's PINGs.
//!
//! A fixed 256 KiB stream window keeps interactive streams fast on a LAN but caps one stream at
//! 256 KiB per round trip: ~5 MB/s at 50 ms, where the link may carry 12.5 (docs/benchmarks.md,
//! WAN profile). hyper solves it by timing PINGs; this does the same with one change. hyper
//! takes the bytes received during one PING round trip as the product, but that round trip
//! includes the queue the window itself builds, so on a fast local link the window can grow by
//! queueing alone. Here the product is the best bandwidth seen times the *smallest* round trip
//! seen (the path without queue, as BBR models it): on loopback that stays far below 256 KiB and
//! the window never grows; on a long path it doubles per sample until the link is full.
//!
//! [`measure`] wraps the connection's I/O to count the bytes it receives, and returns the
//! [`Estimator`] that the keepalive loop feeds with PING round trips (it sends extra PINGs while
//! data flows, backing off to one per 10 s once the window is stable) and the [`WindowUpdates`]
//! that the connection's owner applies with `set_initial_window_size` (all streams, open ones
//! too) and `set_target_window_size`. Windows only grow, as in hyper.

use std::{
    io,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    sync::{Notify, watch},
    time::Instant,
};

use crate::h2io::{CONNECTION_WINDOW, STREAM_WINDOW};

/// The largest per-stream window the estimate may set: 8 MiB, twice the product of 1 Gbit/s
/// and 32 ms, or 100 Mbit/s and 330 ms. It is also what one stream can make the receiver hold
/// when its consumer stops reading.
pub const MAX_STREAM_WINDOW: u32 = 8 * 1024 * 1024;

/// First pause between samples once the window is stable; it grows 4x per stable sample.
const FIRST_PAUSE: Duration = Duration::from_millis(100);
/// Smallest read that starts a sample.
const SAMPLE_TRIGGER: usize = 4096;
/// Pause after a sample in which the sender did not fill the window.
const APP_LIMITED_PAUSE: Duration = Duration::from_millis(250);
/// Longest pause between samples while data flows.
const MAX_PAUSE: Duration = Duration::from_secs(10);

/// New window sizes for the connection's owner to apply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    /// For `set_initial_window_size`: every stream's receive window.
    pub stream: u32,
    /// For `set_target_window_size`: the connection's receive window.
    pub connection: u32,
}

/// What the I/O wrapper and the estimator share.
#[derive(Debug, Default)]
struct Received {
    bytes: AtomicU64,
    /// The estimator waits for the next bulk-sized read ([`SAMPLE_TRIGGER`]) to start a sample.
    armed: AtomicBool,
    data: Notify,
}

/// Wraps a connection's I/O; returns the counting wrapper, the estimator for the keepalive loop
/// and the updates for the connection's owner.
pub fn measure<T>(io: T) -> (Counted<T>, Estimator, WindowUpdates) {
    let received = Arc::new(Received::default());
    let (tx, rx) = watch::channel(Window {
        stream: STREAM_WINDOW,
        connection: CONNECTION_WINDOW,
    });
    let estimator = Estimator {
        received: received.clone(),
        updates: tx,
        estimate: Estimate::default(),
    };
    (
        Counted { inner: io, received },
        estimator,
        WindowUpdates { rx, retry: None },
    )
}

/// The connection's I/O, counting the bytes read from it.
#[derive(Debug)]
pub struct Counted<T> {
    inner: T,
    received: Arc<Received>,
}

impl<T> Counted<T> {
    /// The wrapped stream.
    pub fn get_ref(&self) -> &T {
        &self.inner
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Counted<T> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let res = Pin::new(&mut this.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if n > 0 {
            this.received.bytes.fetch_add(n as u64, Ordering::Relaxed);
            // Only a read of bulk size starts a sample: a keepalive PING (39 bytes with its TLS
            // record) or a keystroke says nothing about the window, and on an idle device
            // connection a sample PING per keepalive would double the relay's keepalive work.
            if n >= SAMPLE_TRIGGER
                && this.received.armed.load(Ordering::Relaxed)
                && this.received.armed.swap(false, Ordering::AcqRel)
            {
                this.received.data.notify_one();
            }
        }
        res
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Counted<T> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// The connection owner's end: yields each new window once.
#[derive(Debug)]
pub struct WindowUpdates {
    rx: watch::Receiver<Window>,
    /// A window h2 could not take yet (its previous SETTINGS is not acknowledged).
    retry: Option<Window>,
}

/// How long to wait before offering a window again that h2 refused while its previous SETTINGS
/// was unacknowledged (about one round trip on the paths where windows grow).
const RETRY_AFTER: Duration = Duration::from_millis(20);

impl WindowUpdates {
    /// The next new window; pending forever once the estimator is gone (its connection is
    /// ending), so a `select!` branch on it never spins.
    pub async fn next(&mut self) -> Window {
        if let Some(w) = self.retry.take() {
            tokio::time::sleep(RETRY_AFTER).await;
            // A newer estimate replaces the refused one.
            return if self.rx.has_changed().unwrap_or(false) {
                *self.rx.borrow_and_update()
            } else {
                w
            };
        }
        match self.rx.changed().await {
            Ok(()) => *self.rx.borrow_and_update(),
            Err(_) => std::future::pending().await,
        }
    }

    /// Applies `w` to a client connection (the relay's device connection, `tether connect`'s).
    pub fn apply_client<T, B>(&mut self, conn: &mut h2::client::Connection<T, B>, w: Window)
    where
        T: AsyncRead + AsyncWrite + Unpin,
        B: bytes::Buf,
    {
        conn.set_target_window_size(w.connection);
        self.settle(w, conn.set_initial_window_size(w.stream));
    }

    /// Applies `w` to a server connection (the agent's device connection, the relay's
    /// multiplexed service connection).
    pub fn apply_server<T, B>(&mut self, conn: &mut h2::server::Connection<T, B>, w: Window)
    where
        T: AsyncRead + AsyncWrite + Unpin,
        B: bytes::Buf,
    {
        conn.set_target_window_size(w.connection);
        self.settle(w, conn.set_initial_window_size(w.stream));
    }

    fn settle(&mut self, w: Window, sent: Result<(), h2::Error>) {
        // h2 sends one SETTINGS at a time; the only other failure is a size over 2^31-1, which
        // MAX_STREAM_WINDOW is not.
        if sent.is_err() {
            self.retry = Some(w);
        }
    }
}

/// The keepalive loop's end: decides when to sample and turns samples into windows.
#[derive(Debug)]
pub struct Estimator {
    received: Arc<Received>,
    updates: watch::Sender<Window>,
    estimate: Estimate,
}

impl Estimator {
    /// Bytes received so far on the connection.
    pub fn received(&self) -> u64 {
        self.received.bytes.load(Ordering::Relaxed)
    }

    /// Returns when a sample should start: the pause since the last one has passed and data is
    /// arriving. Pending forever once the window is at its maximum.
    pub async fn sample_due(&self) {
        if self.estimate.window >= MAX_STREAM_WINDOW {
            return std::future::pending().await;
        }
        tokio::time::sleep_until(self.estimate.next_at).await;
        let notified = self.received.data.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        self.received.armed.store(true, Ordering::Release);
        notified.await;
    }

    /// Feeds one PING round trip and the bytes received during it; sends a new window when the
    /// estimate calls for a larger one.
    pub fn sample(&mut self, bytes: u64, rtt: Duration) {
        if let Some(stream) = self.estimate.update(bytes, rtt, Instant::now()) {
            let window = Window {
                stream,
                connection: CONNECTION_WINDOW.max(stream.saturating_mul(2)),
            };
            tracing::debug!(?window, min_rtt = ?self.estimate.min_rtt, "HTTP/2 window grows");
            let _ = self.updates.send(window);
        }
    }
}

/// The estimate itself, apart from I/O and clocks so it can be tested.
#[derive(Debug)]
struct Estimate {
    min_rtt: Option<Duration>,
    /// Best bandwidth seen, bytes per second.
    max_bandwidth: f64,
    /// The stream window in force.
    window: u32,
    pause: Duration,
    next_at: Instant,
}

impl Default for Estimate {
    fn default() -> Self {
        Self {
            min_rtt: None,
            max_bandwidth: 0.0,
            window: STREAM_WINDOW,
            pause: FIRST_PAUSE,
            next_at: Instant::now(),
        }
    }
}

impl Estimate {
    /// Returns the new stream window, if it grows.
    fn update(&mut self, bytes: u64, rtt: Duration, now: Instant) -> Option<u32> {
        let rtt = rtt.max(Duration::from_micros(1));
        self.min_rtt = Some(self.min_rtt.map_or(rtt, |m| m.min(rtt)));
        if bytes == 0 {
            // An idle keepalive: it refines the path's round trip, nothing else.
            return None;
        }
        self.max_bandwidth = self.max_bandwidth.max(bytes as f64 / rtt.as_secs_f64());
        let product = self.max_bandwidth * self.min_rtt.unwrap_or(rtt).as_secs_f64();
        let wanted = (2.0 * product).min(f64::from(MAX_STREAM_WINDOW)) as u32;
        // Grow by at least an eighth, so noise does not send a SETTINGS frame per sample.
        if wanted > self.window.saturating_add(self.window / 8) {
            self.window = wanted;
            self.pause = FIRST_PAUSE;
            self.next_at = now; // sample again at once: the link may take more
            Some(wanted)
        } else if bytes < u64::from(self.window / 2) {
            // The sender did not use the window (an interactive stream, a slow target): this says
            // nothing about the path, so do not back off; a bulk transfer starting later is then
            // noticed within APP_LIMITED_PAUSE.
            self.next_at = now + APP_LIMITED_PAUSE;
            None
        } else {
            self.next_at = now + self.pause;
            self.pause = (self.pause * 4).min(MAX_PAUSE);
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KIB: u64 = 1024;

    /// End to end through h2: a grown window reaches the peer as SETTINGS and enlarges the send
    /// window of a stream that is already open.
    #[tokio::test]
    async fn a_new_window_reaches_an_open_stream_of_the_peer() {
        use bytes::Bytes;
        let (a, b) = tokio::io::duplex(1 << 20);
        let (io, mut estimator, mut updates) = measure(b);
        let server = tokio::spawn(async move {
            let mut conn = crate::h2io::server_builder(8)
                .handshake::<_, Bytes>(io)
                .await
                .unwrap();
            let (_req, mut respond) = conn.accept().await.unwrap().unwrap();
            let _send = respond.send_response(http::Response::new(()), false).unwrap();
            // The estimate: 1 MB per 50 ms round trip, twice over (the path is long and fat).
            estimator.sample(0, Duration::from_millis(50));
            estimator.sample(1_000_000, Duration::from_millis(50));
            // Applied as the connection's owner does: the first attempt may find h2's own
            // handshake SETTINGS still unacknowledged, and is then retried.
            let mut last = None;
            loop {
                tokio::select! {
                    w = updates.next() => {
                        updates.apply_server(&mut conn, w);
                        last = Some(w);
                    }
                    next = conn.accept() => if next.is_none() { break last.unwrap() },
                }
            }
        });
        let (mut client, conn) = crate::h2io::client_builder(8)
            .handshake::<_, Bytes>(a)
            .await
            .unwrap();
        tokio::spawn(conn);
        let (response, mut send) = client
            .send_request(http::Request::post("/").body(()).unwrap(), false)
            .unwrap();
        send.reserve_capacity(MAX_STREAM_WINDOW as usize);
        let mut capacity = 0;
        for _ in 0..200 {
            capacity = std::future::poll_fn(|cx| send.poll_capacity(cx))
                .await
                .unwrap()
                .unwrap();
            if capacity > STREAM_WINDOW as usize {
                break;
            }
        }
        assert!(
            capacity > STREAM_WINDOW as usize,
            "send capacity stayed at {capacity}"
        );
        // h2 hands out at most its send buffer (1 MiB) at once: above 256 KiB proves the window.
        assert!(capacity <= crate::h2io::MAX_SEND_BUFFER);
        drop((send, response, client)); // the connection ends, and with it the server's loop
        let w = server.await.unwrap();
        assert_eq!(w.stream, 2_000_000, "twice the product of 20 MB/s and 50 ms");
    }

    #[test]
    fn a_long_fat_path_doubles_the_window_until_the_link_is_full() {
        // 50 ms round trip, a link of 12.5 MB/s (100 Mbit/s): the product is 625 kB.
        let mut e = Estimate::default();
        let now = Instant::now();
        assert_eq!(
            e.update(0, Duration::from_millis(50), now),
            None,
            "idle: round trip only"
        );
        let mut windows = vec![];
        for _ in 0..10 {
            // Window-limited: one window per round trip, or the link's rate once the window
            // exceeds the product (the queue then adds to the round trip).
            let w = u64::from(e.window);
            let (bytes, rtt) = if w <= 625_000 {
                (w, 50.0)
            } else {
                (625_000, 50.0 * w as f64 / 625_000.0)
            };
            if let Some(w) = e.update(bytes, Duration::from_secs_f64(rtt / 1000.0), now) {
                windows.push(w);
            }
        }
        assert_eq!(windows, vec![512 * 1024, 1024 * 1024], "doubling per sample");
        assert!(
            e.window >= 625_000,
            "the window covers the product: the link is full"
        );
        assert!(e.next_at > now, "stable: the next sample waits");
    }

    #[test]
    fn a_fast_local_link_keeps_the_default_window_even_with_queueing() {
        // Loopback: 60 µs without queue, but a saturating stream's PINGs wait behind its window.
        let mut e = Estimate::default();
        let now = Instant::now();
        e.update(0, Duration::from_micros(60), now);
        for _ in 0..20 {
            assert_eq!(e.update(256 * KIB, Duration::from_millis(1), now), None);
        }
        assert_eq!(e.window, STREAM_WINDOW);
    }

    #[test]
    fn samples_of_an_unused_window_do_not_delay_the_next_one() {
        let mut e = Estimate::default();
        let now = Instant::now();
        e.update(0, Duration::from_millis(50), now);
        for _ in 0..10 {
            // An interactive stream: a few kilobytes per round trip.
            assert_eq!(e.update(4 * KIB, Duration::from_millis(50), now), None);
            assert_eq!(e.next_at - now, APP_LIMITED_PAUSE);
        }
        // A bulk transfer then starts: the window grows at the next sample.
        assert_eq!(
            e.update(256 * KIB, Duration::from_millis(50), now),
            Some(512 * 1024)
        );
    }

    #[test]
    fn the_window_stops_at_its_maximum_and_pauses_back_off() {
        let mut e = Estimate::default();
        let now = Instant::now();
        e.update(0, Duration::from_millis(300), now);
        let mut grown = vec![];
        while e.window < MAX_STREAM_WINDOW && grown.len() < 20 {
            let w = u64::from(e.window);
            grown.extend(e.update(w, Duration::from_millis(300), now));
        }
        assert_eq!(grown.last(), Some(&MAX_STREAM_WINDOW));
        assert_eq!(grown.len(), 5, "256 KiB doubles five times to 8 MiB");
        let mut pauses = vec![];
        for _ in 0..5 {
            e.update(u64::from(MAX_STREAM_WINDOW), Duration::from_millis(300), now);
            pauses.push(e.next_at - now);
        }
        assert_eq!(pauses[0], FIRST_PAUSE);
        assert_eq!(pauses[1], FIRST_PAUSE * 4);
        assert_eq!(*pauses.last().unwrap(), MAX_PAUSE);
    }
}
