//! Per-connection activity and the watchdog that enforces `header_timeout` and `idle_timeout`.
//!
//! A connection is idle between requests, reading a head, or serving requests. Our HTTP/1.1
//! server (`http1`) reports heads starting and ending and bytes arriving; HTTP/2 connections
//! (`h2`) report bytes through [`WatchedIo`] and header blocks sent in pieces as heads; both
//! mark requests in and out
//! ([`Activity::start_request`], whose guard lives until the response ends). [`watchdog`]
//! sleeps until the nearest deadline: a stalled head (the first one counted from accept)
//! closes the connection, an idle one is closed gracefully. All state is a few relaxed
//! atomics per connection; the request path pays two atomic increments and a clock read.
//! [`WatchedIo`] also gathers an HTTP/2 connection's writes: the first write of a burst
//! waits one turn of the scheduler, so the responses of the streams that finish by then
//! leave in the same `writev`.

use std::future::{poll_fn, Future};
use std::io;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

/// What one client connection is doing, in milliseconds since it was accepted (plus one, so
/// that 0 can mean "none").
#[derive(Debug)]
pub(super) struct Activity {
    started: Instant,
    /// Requests whose responses have not finished.
    in_flight: AtomicU32,
    /// When the last response finished.
    idle_since: AtomicU64,
    /// When bytes last arrived from the client.
    last_read: AtomicU64,
    /// When the head being read began; 0 when none is (the first head counts from accept).
    head_since: AtomicU64,
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
    /// A fresh connection: its first head is due within the header timeout from now.
    pub(super) fn new() -> Activity {
        Activity {
            started: Instant::now(),
            in_flight: AtomicU32::new(0),
            idle_since: AtomicU64::new(1),
            last_read: AtomicU64::new(1),
            head_since: AtomicU64::new(1),
        }
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64 + 1
    }

    /// Marks a request as started; the guard marks it finished when dropped.
    pub(super) fn start_request(self: &Arc<Self>) -> RequestGuard {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        RequestGuard(self.clone())
    }

    /// No head is being read: the connection waits for its next request.
    pub(super) fn idle(&self) {
        self.head_since.store(0, Ordering::Relaxed);
    }

    /// Bytes of a head have arrived; its deadline counts from the first of them.
    pub(super) fn head_started(&self) {
        if self.head_since.load(Ordering::Relaxed) == 0 {
            self.head_since.store(self.now_ms(), Ordering::Relaxed);
        }
    }

    /// The head being read is complete (or refused).
    pub(super) fn head_ended(&self) {
        self.head_since.store(0, Ordering::Relaxed);
    }

    /// Bytes of a head arrived from the client (one clock read for both marks).
    pub(super) fn head_read(&self) {
        let now = self.now_ms();
        self.last_read.store(now, Ordering::Relaxed);
        if self.head_since.load(Ordering::Relaxed) == 0 {
            self.head_since.store(now, Ordering::Relaxed);
        }
    }

    /// Bytes arrived from the client.
    pub(super) fn read(&self) {
        self.last_read.store(self.now_ms(), Ordering::Relaxed);
    }

    /// When bytes last arrived, in milliseconds since accept: a clock that costs no clock
    /// read of its own.
    pub(super) fn last_read_ms(&self) -> u64 {
        self.last_read.load(Ordering::Relaxed)
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
///
/// While a request is in flight nothing expires (the route timeout bounds the upstream).
/// Otherwise a head in progress must end within `header_timeout` of its first byte, and a
/// connection with no head in progress is idle from its last response or last byte read (so a
/// body still uploading after an early answer counts as activity).
///
/// Every mark but a request's end is made by the task that polls this future, which polls it
/// again after each of its own polls; so the deadline is recomputed then, and a timer is
/// armed only when one is due and none earlier is armed (a later deadline is taken up when
/// the earlier timer fires). `requests_end_here` says the request guards are dropped by that
/// task too (our HTTP/1.1 server, and HTTP/2, whose streams run in the connection's task):
/// then a connection busy with a request needs no timer at all, and a request that arrives
/// with its connection and closes it arms none. Otherwise a busy connection is looked at
/// again every half of the shorter timeout.
pub(super) async fn watchdog(
    activity: &Activity,
    header_timeout: Duration,
    idle_timeout: Duration,
    requests_end_here: bool,
) -> Expiry {
    let header_ms = header_timeout.as_millis() as u64;
    let idle_ms = idle_timeout.as_millis() as u64;
    let recheck_ms = (header_ms.min(idle_ms) / 2).max(5);
    // Not registered with the timer until first polled, and reset before that.
    let mut timer = pin!(tokio::time::sleep_until(activity.started));
    // The deadline the timer is set for, in `now_ms` units.
    let mut armed: Option<u64> = None;
    poll_fn(|cx| loop {
        let (due, expiry) = if activity.in_flight.load(Ordering::Relaxed) > 0 {
            if requests_end_here {
                return Poll::Pending;
            }
            (
                armed.unwrap_or_else(|| activity.now_ms() + recheck_ms),
                None,
            )
        } else if activity.head_since.load(Ordering::Relaxed) != 0 {
            let head = activity.head_since.load(Ordering::Relaxed);
            (head + header_ms, Some(Expiry::Header))
        } else {
            let last = activity
                .idle_since
                .load(Ordering::Relaxed)
                .max(activity.last_read.load(Ordering::Relaxed));
            (last + idle_ms, Some(Expiry::Idle))
        };
        if armed.is_none_or(|at| at > due) {
            timer
                .as_mut()
                .reset(activity.started + Duration::from_millis(due - 1));
            armed = Some(due);
        }
        if timer.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        // The timer fired: at `due`, or at an earlier deadline since moved on.
        armed = None;
        if let Some(expiry) = expiry {
            if activity.now_ms() >= due {
                return Poll::Ready(expiry);
            }
        }
    })
    .await
}

/// An HTTP/2 client stream that reports reads to its connection's [`Activity`], after
/// handing out the bytes read before the protocol was known.
#[derive(Debug)]
pub(super) struct WatchedIo<S> {
    inner: S,
    activity: Arc<Activity>,
    /// Read while telling HTTP/1.1 from HTTP/2; already reported.
    read: Bytes,
    /// The next write has been put off once (see [`WatchedIo::poll_write`]).
    deferred: bool,
    /// Something was written since then.
    wrote: bool,
}

impl<S> WatchedIo<S> {
    /// Wraps `inner`, whose first bytes (already read from it) are `read`.
    pub(super) fn new(inner: S, activity: Arc<Activity>, read: Bytes) -> WatchedIo<S> {
        // HTTP/2 has no heads to time; only the idle limit applies.
        activity.idle();
        WatchedIo {
            inner,
            activity,
            read,
            deferred: false,
            wrote: false,
        }
    }

    /// Puts the first write of a burst off by one turn of the scheduler: the task wakes
    /// itself, which tokio treats as a yield (to the back of the run queue). Meanwhile the
    /// other connections run, and streams of this one whose upstream answers arrive in that
    /// turn finish too (`h2`); their responses then leave in the same `writev`, with
    /// one wake-up of the client instead of several.
    fn defer(&mut self, cx: &mut Context<'_>) -> bool {
        if self.deferred {
            return false;
        }
        self.deferred = true;
        self.wrote = false;
        cx.waker().wake_by_ref();
        true
    }

    /// Notes a write; `polled` is its outcome.
    fn wrote(&mut self, polled: &Poll<io::Result<usize>>) {
        if matches!(polled, Poll::Ready(Ok(n)) if *n > 0) {
            self.wrote = true;
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
        if !this.read.is_empty() {
            let n = buf.remaining().min(this.read.len());
            buf.put_slice(&this.read[..n]);
            this.read.advance(n);
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.activity.read();
        }
        if polled.is_pending() && this.wrote {
            // Everything there was read, after a write: the next write starts a new burst.
            this.deferred = false;
            this.wrote = false;
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
        let this = self.get_mut();
        if this.defer(cx) {
            return Poll::Pending;
        }
        let polled = Pin::new(&mut this.inner).poll_write(cx, data);
        this.wrote(&polled);
        polled
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
        let this = self.get_mut();
        if this.defer(cx) {
            return Poll::Pending;
        }
        let polled = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.wrote(&polled);
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn bytes_read_before_are_handed_out_first_then_the_socket() {
        let (mut client, server) = tokio::io::duplex(1024);
        let activity = Arc::new(Activity::new());
        let mut io = WatchedIo::new(server, activity.clone(), Bytes::from_static(b"PRI * "));
        assert_eq!(
            activity.head_since.load(Ordering::Relaxed),
            0,
            "no head timer"
        );
        client.write_all(b"HTTP/2.0").await.unwrap();
        let mut got = [0u8; 4];
        io.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"PRI ");
        let mut rest = [0u8; 64];
        let n = io.read(&mut rest).await.unwrap();
        assert_eq!(&rest[..n], b"* ");
        let n = io.read(&mut rest).await.unwrap();
        assert_eq!(&rest[..n], b"HTTP/2.0");
    }

    /// A waker that counts its wakes.
    struct Count(std::sync::atomic::AtomicUsize);

    impl std::task::Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[test]
    fn the_first_write_of_a_burst_waits_one_turn_and_wakes_its_task() {
        let (mut client, server) = tokio::io::duplex(1024);
        let mut io = WatchedIo::new(server, Arc::new(Activity::new()), Bytes::new());
        let count = Arc::new(Count(std::sync::atomic::AtomicUsize::new(0)));
        let waker = std::task::Waker::from(count.clone());
        let mut cx = Context::from_waker(&waker);
        let wakes = || count.0.load(Ordering::Relaxed);

        // Put off once, with a wake-up so the task comes back to it.
        assert!(Pin::new(&mut io).poll_write(&mut cx, b"one").is_pending());
        assert_eq!(wakes(), 1);
        // Then written, and so are the writes after it in the same burst.
        assert!(matches!(
            Pin::new(&mut io).poll_write(&mut cx, b"one"),
            Poll::Ready(Ok(3))
        ));
        let bufs = [io::IoSlice::new(b"two")];
        assert!(matches!(
            Pin::new(&mut io).poll_write_vectored(&mut cx, &bufs),
            Poll::Ready(Ok(3))
        ));
        assert_eq!(wakes(), 1);

        // A read that finds nothing ends the burst: the next write waits again.
        let mut scratch = [0u8; 16];
        let mut buf = ReadBuf::new(&mut scratch);
        assert!(Pin::new(&mut io).poll_read(&mut cx, &mut buf).is_pending());
        assert!(Pin::new(&mut io).poll_write(&mut cx, b"three").is_pending());
        assert_eq!(wakes(), 2);
        // A read that finds nothing before anything was written does not start another.
        let mut buf = ReadBuf::new(&mut scratch);
        assert!(Pin::new(&mut io).poll_read(&mut cx, &mut buf).is_pending());
        assert!(matches!(
            Pin::new(&mut io).poll_write(&mut cx, b"three"),
            Poll::Ready(Ok(5))
        ));

        let mut got = [0u8; 11];
        let mut read = ReadBuf::new(&mut got);
        let mut client_cx = Context::from_waker(std::task::Waker::noop());
        assert!(Pin::new(&mut client)
            .poll_read(&mut client_cx, &mut read)
            .is_ready());
        assert_eq!(read.filled(), b"onetwothree");
    }
}
