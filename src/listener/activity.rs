//! Per-connection activity and the watchdog that enforces `header_timeout` and `idle_timeout`.
//!
//! hyper's own header read timer starts whenever a connection waits for a request head, idle
//! keep-alive time included, so it cannot tell a slowloris client (sent part of a head, then
//! stalls) from a keep-alive client between requests. We track that distinction ourselves:
//! [`WatchedIo`] feeds every byte read to the connection's `Framing`, which knows where each
//! request head starts and ends; the service marks requests in and out
//! ([`Activity::start_request`], whose guard rides in the response body until the response
//! ends); and [`watchdog`] sleeps until the nearest deadline. A stalled head (the first one
//! counted from accept) closes the connection; an idle one is closed gracefully. The framing
//! walk also yields each head's smuggling verdict, queued in order so pipelined requests each
//! get their own. All state is a few relaxed atomics per connection; the request path pays
//! two atomic increments and a clock read per request.

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

use super::framing::{Event, Framing};

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
    /// Request heads that ended so far; a head's index is its position in this count.
    heads: AtomicU64,
    /// Requests handed to the service so far (same order as `heads`).
    taken: AtomicU64,
    /// Indices of heads with ambiguous framing, oldest first; `ambiguous_len` mirrors its
    /// length so the request path checks one atomic instead of taking the lock.
    ambiguous: Mutex<VecDeque<u64>>,
    ambiguous_len: AtomicU32,
    /// The client switched to HTTP/2: no HTTP/1 heads, so nothing for [`WatchedIo`] to fix.
    http2: AtomicBool,
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
            heads: AtomicU64::new(0),
            taken: AtomicU64::new(0),
            ambiguous: Mutex::new(VecDeque::new()),
            ambiguous_len: AtomicU32::new(0),
            http2: AtomicBool::new(false),
        }
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64 + 1
    }

    /// Marks a request as started; the guard marks it finished when dropped. Returns
    /// whether the request's head had ambiguous framing.
    pub(super) fn start_request(self: &Arc<Self>) -> (RequestGuard, bool) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        let index = self.taken.fetch_add(1, Ordering::Relaxed);
        let ambiguous =
            self.ambiguous_len.load(Ordering::Relaxed) > 0 && self.take_ambiguous(index);
        (RequestGuard(self.clone()), ambiguous)
    }

    /// Whether a response written now can only be hyper's own refusal of a head: no request
    /// is being served, and a head arrived (or is arriving) that never became a request.
    fn head_refused(&self) -> bool {
        self.in_flight.load(Ordering::Relaxed) == 0
            && !self.http2.load(Ordering::Relaxed)
            && (self.head_since.load(Ordering::Relaxed) != 0
                || self.heads.load(Ordering::Relaxed) > self.taken.load(Ordering::Relaxed))
    }

    fn take_ambiguous(&self, index: u64) -> bool {
        let mut queue = self.ambiguous.lock().unwrap_or_else(|e| e.into_inner());
        // Indices below ours belong to heads hyper refused before they reached the service.
        while queue.front().is_some_and(|i| *i < index) {
            queue.pop_front();
        }
        let mine = queue.front() == Some(&index);
        if mine {
            queue.pop_front();
        }
        self.ambiguous_len
            .store(queue.len() as u32, Ordering::Relaxed);
        mine
    }

    fn on_event(&self, event: Event) {
        match event {
            Event::HeadStarted => {
                if self.head_since.load(Ordering::Relaxed) == 0 {
                    self.head_since.store(self.now_ms(), Ordering::Relaxed);
                }
            }
            Event::HeadEnded { ambiguous, .. } => {
                self.head_since.store(0, Ordering::Relaxed);
                let index = self.heads.fetch_add(1, Ordering::Relaxed);
                if ambiguous {
                    let mut queue = self.ambiguous.lock().unwrap_or_else(|e| e.into_inner());
                    queue.push_back(index);
                    self.ambiguous_len
                        .store(queue.len() as u32, Ordering::Relaxed);
                }
            }
            Event::BodyEnded => {}
            // HTTP/2 has no heads to time; only the idle limit applies.
            Event::Http2 => {
                self.head_since.store(0, Ordering::Relaxed);
                self.http2.store(true, Ordering::Relaxed);
            }
        }
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
pub(super) async fn watchdog(
    activity: &Activity,
    header_timeout: Duration,
    idle_timeout: Duration,
) -> Expiry {
    let header_ms = header_timeout.as_millis() as u64;
    let idle_ms = idle_timeout.as_millis() as u64;
    // Changes happen without waking us, so re-check at least this often; a stalled head is
    // then caught within 1.5x its timeout.
    let tick = (header_ms.min(idle_ms) / 2).max(5);
    loop {
        let now = activity.now_ms();
        let wait = if activity.in_flight.load(Ordering::Relaxed) > 0 {
            tick
        } else {
            let head = activity.head_since.load(Ordering::Relaxed);
            let (due, expiry) = if head != 0 {
                (head + header_ms, Expiry::Header)
            } else {
                let last = activity
                    .idle_since
                    .load(Ordering::Relaxed)
                    .max(activity.last_read.load(Ordering::Relaxed));
                (last + idle_ms, Expiry::Idle)
            };
            if now >= due {
                return expiry;
            }
            (due - now).min(tick)
        };
        tokio::time::sleep(Duration::from_millis(wait)).await;
    }
}

/// A client stream that reports reads to its connection's [`Activity`] through the
/// connection's [`Framing`].
///
/// It also completes the answers hyper's HTTP/1 parser sends on its own, before any request
/// reaches the proxy: `431` for a head past `max_header_bytes` and `400` for a head it cannot
/// parse (obs-fold, a bad `Content-Length`, ...). hyper writes them with an empty body; SPEC
/// section 4 wants every proxy answer to say what it is and to be counted. Such a write is
/// recognised by its shape (`HTTP/1.1 400`/`431` with `content-length: 0` and, unlike every
/// answer of the proxy's service, no `x-request-id`) at a moment when
/// no request is being served but a head arrived that never became one, and is replaced by
/// the same status with a `text/plain` body, `connection: close` and a fresh `x-request-id`
/// (SPEC section 4: every answer carries one), counted in `switchyard_requests_total` with
/// `route=""` and `pool=""`.
#[derive(Debug)]
pub(super) struct WatchedIo<S> {
    inner: S,
    activity: Arc<Activity>,
    framing: Framing,
    /// The listener's name, for counting the answers replaced here.
    listener: Arc<str>,
    /// A replacement answer and how much of it is written.
    pending: Option<(Vec<u8>, usize)>,
    /// Bytes read ahead of a short read (see [`READ_AHEAD`]), and how many were handed out.
    stash: Option<(Box<[u8]>, usize)>,
    /// Where replacement answers take their `x-request-id` (see [`WatchedIo::with_request_ids`]).
    shared: Option<Arc<crate::snapshot::Shared>>,
}

/// A read asking for fewer bytes than this reads up to [`READ_AHEAD`] bytes from the socket
/// and keeps the rest for the next read. hyper-util's auto builder reads exactly the 24 bytes
/// of the HTTP/2 preface to tell HTTP/1 from h2c; without this, every connection would make a
/// second `recvfrom` for the rest of its first request.
const SHORT_READ: usize = 512;
/// Most bytes read ahead of a short read (on the stack; only the surplus is copied out).
const READ_AHEAD: usize = 4096;
/// The start of the `x-request-id` line that every answer of the proxy's service has.
const X_REQUEST_ID: &[u8] = b"x-request-id:";

impl<S> WatchedIo<S> {
    /// Wraps `inner`, a connection of `listener`.
    pub(super) fn new(inner: S, activity: Arc<Activity>, listener: Arc<str>) -> WatchedIo<S> {
        WatchedIo {
            inner,
            activity,
            framing: Framing::default(),
            listener,
            pending: None,
            stash: None,
            shared: None,
        }
    }

    /// Gives replacement answers an `x-request-id` from `shared`'s generator.
    pub(super) fn with_request_ids(mut self, shared: Arc<crate::snapshot::Shared>) -> WatchedIo<S> {
        self.shared = Some(shared);
        self
    }

    /// The full answer to write instead of `data`, when `data` is hyper's bodiless refusal.
    fn refusal(&self, data: &[u8]) -> Option<Vec<u8>> {
        if !data.starts_with(b"HTTP/1.1 4") || !self.activity.head_refused() {
            return None;
        }
        let (status, reason, text) = match data.get(9..13)? {
            b"400 " => (
                400,
                "Bad Request",
                "400 bad request: the request head is malformed\n",
            ),
            b"431 " => (
                431,
                "Request Header Fields Too Large",
                "431 request header fields too large\n",
            ),
            _ => return None,
        };
        let head_end = data.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
        let head = std::str::from_utf8(&data[..head_end]).ok()?;
        let bodiless = head
            .split("\r\n")
            .any(|line| line.eq_ignore_ascii_case("content-length: 0"));
        // Every answer of the proxy's service carries `x-request-id`; hyper's refusals do
        // not. The counters alone cannot tell them apart when the next head is pipelined: a
        // bodiless upstream 400 ends its request (the guard drops) before hyper writes it.
        let from_service = head.split("\r\n").any(|line| {
            line.len() > X_REQUEST_ID.len()
                && line.as_bytes()[..X_REQUEST_ID.len()].eq_ignore_ascii_case(X_REQUEST_ID)
        });
        if !bodiless || from_service || head_end != data.len() {
            return None;
        }
        crate::metrics::record_request(&self.listener, None, status, Duration::ZERO);
        let id = self.shared.as_ref().map(|shared| shared.request_ids.next());
        let id = id.as_ref().and_then(|id| id.to_str().ok());
        let id_line = id.map_or(String::new(), |id| format!("x-request-id: {id}\r\n"));
        Some(
            format!(
                "HTTP/1.1 {status} {reason}\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\n{id_line}\r\n{text}",
                text.len()
            )
            .into_bytes(),
        )
    }
}

impl<S: AsyncWrite + Unpin> WatchedIo<S> {
    /// Writes what is left of a replacement answer.
    fn poll_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some((bytes, written)) = self.pending.as_mut() {
            if *written == bytes.len() {
                self.pending = None;
                break;
            }
            match Pin::new(&mut self.inner).poll_write(cx, &bytes[*written..]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => *written += n,
                Poll::Ready(Err(error)) => return Poll::Ready(Err(error)),
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(Ok(()))
    }

    /// Takes `data` as written when it is hyper's refusal, queueing the full answer instead.
    fn replace(&mut self, cx: &mut Context<'_>, data: &[u8]) -> Option<Poll<io::Result<usize>>> {
        let answer = self.refusal(data)?;
        self.pending = Some((answer, 0));
        // What cannot be written now is written by the flush hyper does next.
        Some(match self.poll_pending(cx) {
            Poll::Ready(Err(error)) => Poll::Ready(Err(error)),
            _ => Poll::Ready(Ok(data.len())),
        })
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for WatchedIo<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some((bytes, taken)) = this.stash.as_mut() {
            // Already fed to the framing when they were read from the socket.
            let n = buf.remaining().min(bytes.len() - *taken);
            buf.put_slice(&bytes[*taken..*taken + n]);
            *taken += n;
            if *taken == bytes.len() {
                this.stash = None;
            }
            return Poll::Ready(Ok(()));
        }
        if buf.remaining() < SHORT_READ && buf.remaining() > 0 {
            return this.read_ahead(cx, buf);
        }
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.observe(&buf.filled()[before..]);
        }
        polled
    }
}

impl<S: AsyncRead + Unpin> WatchedIo<S> {
    /// Reports bytes just read from the client to the activity and the framing.
    fn observe(&mut self, bytes: &[u8]) {
        let activity = &self.activity;
        activity
            .last_read
            .store(activity.now_ms(), Ordering::Relaxed);
        self.framing
            .feed(bytes, &mut |event| activity.on_event(event));
    }

    /// A short read: reads up to [`READ_AHEAD`] bytes, hands out what `buf` takes and stashes
    /// the rest for the next read.
    fn read_ahead(&mut self, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let mut space = [std::mem::MaybeUninit::<u8>::uninit(); READ_AHEAD];
        let mut ahead = ReadBuf::uninit(&mut space);
        std::task::ready!(Pin::new(&mut self.inner).poll_read(cx, &mut ahead))?;
        let read = ahead.filled();
        if read.is_empty() {
            return Poll::Ready(Ok(()));
        }
        self.observe(read);
        let n = buf.remaining().min(read.len());
        buf.put_slice(&read[..n]);
        if n < read.len() {
            self.stash = Some((read[n..].into(), 0));
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for WatchedIo<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if let Err(error) = std::task::ready!(this.poll_pending(cx)) {
            return Poll::Ready(Err(error));
        }
        if let Some(done) = this.replace(cx, data) {
            return done;
        }
        Pin::new(&mut this.inner).poll_write(cx, data)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Err(error) = std::task::ready!(this.poll_pending(cx)) {
            return Poll::Ready(Err(error));
        }
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Err(error) = std::task::ready!(this.poll_pending(cx)) {
            return Poll::Ready(Err(error));
        }
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if let Err(error) = std::task::ready!(this.poll_pending(cx)) {
            return Poll::Ready(Err(error));
        }
        let mut nonempty = bufs.iter().filter(|b| !b.is_empty());
        if let (Some(only), None) = (nonempty.next(), nonempty.next()) {
            if let Some(done) = this.replace(cx, only) {
                return done;
            }
        }
        Pin::new(&mut this.inner).poll_write_vectored(cx, bufs)
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
    async fn a_short_read_stashes_the_rest_and_counts_each_byte_once() {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let activity = Arc::new(Activity::new());
        let mut io = WatchedIo::new(server, activity.clone(), Arc::from("test"));
        let head = b"GET /a HTTP/1.1\r\nhost: example.com\r\nuser-agent: test\r\n\r\n";
        client.write_all(head).await.unwrap();

        // hyper-util's version sniff: exactly 24 bytes.
        let mut sniff = [0u8; 24];
        io.read_exact(&mut sniff).await.unwrap();
        assert_eq!(&sniff, &head[..24]);
        assert!(io.stash.is_some(), "the rest of the head is kept");

        // The next read gets the rest from the stash, without waiting on the socket.
        let mut rest = vec![0u8; 8192];
        let n = io.read(&mut rest).await.unwrap();
        assert_eq!(&rest[..n], &head[24..]);
        assert!(io.stash.is_none());
        assert_eq!(
            activity.heads.load(Ordering::Relaxed),
            1,
            "one head, seen once"
        );

        // Reads with room for a head go straight to the socket.
        client.write_all(head).await.unwrap();
        let n = io.read(&mut rest).await.unwrap();
        assert_eq!(&rest[..n], head);
        assert!(io.stash.is_none());
        assert_eq!(activity.heads.load(Ordering::Relaxed), 2);
    }

    #[tokio::test]
    async fn a_short_read_at_end_of_stream_reads_nothing() {
        let (client, server) = tokio::io::duplex(1024);
        drop(client);
        let mut io = WatchedIo::new(server, Arc::new(Activity::new()), Arc::from("test"));
        let mut sniff = [0u8; 24];
        assert_eq!(io.read(&mut sniff).await.unwrap(), 0);
        assert!(io.stash.is_none());
    }
}
