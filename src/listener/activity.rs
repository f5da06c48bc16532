//! Per-connection activity and the watchdog that enforces `header_timeout` and `idle_timeout`.
//!
//! hyper's own header read timer starts whenever a connection waits for a request head, idle
//! keep-alive time included, so it cannot tell a slowloris client (sent part of a head, then
//! stalls) from a keep-alive client between requests. We track that distinction ourselves:
//! [`WatchedIo`] notes when the first byte of a new head arrives on a connection with no
//! request in progress, the service marks requests in and out ([`Activity::start_request`],
//! whose guard rides in the response body until the response ends), and [`watchdog`] sleeps
//! until the nearest deadline. A stalled head closes the connection; an idle one is closed
//! gracefully. All state is a few relaxed atomics per connection: the request path pays two
//! atomic increments and a clock read per request.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

use super::framing::{HeadScan, Verdict};

/// What one client connection is doing, in milliseconds since it was accepted.
#[derive(Debug)]
pub(super) struct Activity {
    started: Instant,
    /// Requests whose responses have not finished.
    in_flight: AtomicU32,
    /// When the connection last became idle (accept or the end of a response).
    idle_since: AtomicU64,
    /// When the first byte of a pending request head arrived; 0 when none is pending.
    head_since: AtomicU64,
    /// The client speaks HTTP/2: heads are frames, and pings arrive between requests.
    http2: AtomicBool,
    /// The head being read has ambiguous framing (see `framing`); taken by the next request.
    ambiguous: AtomicBool,
}

/// Why the watchdog ended a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Expiry {
    /// A request head took longer than `header_timeout`.
    Header,
    /// No request for `idle_timeout`.
    Idle,
}

// === impl Activity ===

impl Activity {
    /// A fresh connection, idle from now.
    pub(super) fn new() -> Activity {
        Activity {
            started: Instant::now(),
            in_flight: AtomicU32::new(0),
            idle_since: AtomicU64::new(0),
            head_since: AtomicU64::new(0),
            http2: AtomicBool::new(false),
            ambiguous: AtomicBool::new(false),
        }
    }

    fn now_ms(&self) -> u64 {
        // +1 so that 0 can mean "none" in `head_since`.
        self.started.elapsed().as_millis() as u64 + 1
    }

    /// Marks a request as started; the guard marks it finished when dropped.
    pub(super) fn start_request(self: &Arc<Self>) -> RequestGuard {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.head_since.store(0, Ordering::Relaxed);
        RequestGuard(self.clone())
    }

    /// Whether the request head just parsed had ambiguous framing; clears the mark.
    pub(super) fn take_ambiguous(&self) -> bool {
        self.ambiguous.load(Ordering::Relaxed) && self.ambiguous.swap(false, Ordering::Relaxed)
    }

    /// Notes bytes read; returns true when they start a new HTTP/1 request head.
    fn bytes_read(&self, first: &[u8]) -> bool {
        if self.in_flight.load(Ordering::Relaxed) != 0
            || self.head_since.load(Ordering::Relaxed) != 0
        {
            return false;
        }
        if first.starts_with(b"PRI * HTTP/2.0") {
            self.http2.store(true, Ordering::Relaxed);
        }
        if self.http2.load(Ordering::Relaxed) {
            return false;
        }
        self.head_since.store(self.now_ms(), Ordering::Relaxed);
        true
    }
}

impl Default for Activity {
    fn default() -> Self {
        Activity::new()
    }
}

/// Keeps a request counted on its connection until the response is done.
#[derive(Debug)]
pub struct RequestGuard(Arc<Activity>);

impl Drop for RequestGuard {
    fn drop(&mut self) {
        let now = self.0.now_ms();
        self.0.idle_since.store(now, Ordering::Relaxed);
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Resolves when the connection has stalled on a head or stayed idle too long.
pub(super) async fn watchdog(
    activity: &Activity,
    header_timeout: Duration,
    idle_timeout: Duration,
) -> Expiry {
    let header_ms = header_timeout.as_millis() as u64;
    let idle_ms = idle_timeout.as_millis() as u64;
    // Wake at least this often so a head that starts during a long idle wait is noticed.
    let tick = (header_ms.min(idle_ms) / 2).clamp(5, 1000);
    loop {
        let now = activity.now_ms();
        let wait = if activity.in_flight.load(Ordering::Relaxed) > 0 {
            tick
        } else {
            let head = activity.head_since.load(Ordering::Relaxed);
            if head != 0 {
                let due = head + header_ms;
                if now >= due {
                    return Expiry::Header;
                }
                due - now
            } else {
                let due = activity.idle_since.load(Ordering::Relaxed) + idle_ms;
                if now >= due {
                    return Expiry::Idle;
                }
                (due - now).min(tick)
            }
        };
        tokio::time::sleep(Duration::from_millis(wait)).await;
    }
}

/// A client stream that reports reads to its connection's [`Activity`] and scans the bytes
/// of each new request head for ambiguous framing.
#[derive(Debug)]
pub(super) struct WatchedIo<S> {
    inner: S,
    activity: Arc<Activity>,
    scan: HeadScan,
    /// A head began in an earlier read and has not ended yet.
    in_head: bool,
}

impl<S> WatchedIo<S> {
    /// Wraps `inner`.
    pub(super) fn new(inner: S, activity: Arc<Activity>) -> WatchedIo<S> {
        WatchedIo {
            inner,
            activity,
            scan: HeadScan::default(),
            in_head: false,
        }
    }

    fn inspect(&mut self, bytes: &[u8]) {
        let starts_head = self.activity.bytes_read(bytes);
        if starts_head && self.in_head {
            self.scan.reset();
        }
        if !(starts_head || self.in_head) {
            return;
        }
        match self.scan.feed(bytes) {
            Verdict::Partial => self.in_head = true,
            Verdict::Clean => self.in_head = false,
            Verdict::Ambiguous => {
                self.in_head = false;
                self.activity.ambiguous.store(true, Ordering::Relaxed);
            }
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for WatchedIo<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.inspect(&buf.filled()[before..]);
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for WatchedIo<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, data)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
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
}
