//! Our own HTTP/2 server side of a client connection (RFC 9113), driven by the connection's
//! task.
//!
//! One state machine per connection reads frames from the socket, decodes each request's
//! header block (`hpack`, `request`), and runs `proxy::handle` for each stream inside the
//! connection's task (`slots`: no task per stream, and a stream's future reuses the memory of
//! an earlier one). As responses finish, their
//! header blocks and DATA frames are appended to one write buffer, within the client's flow
//! control windows, and leave together in one write per turn: the responses of every stream
//! that finished in that turn share a system call, as in a single-threaded event loop.
//!
//! A request body is handed to the proxy through a small slot per stream (`body`), and the
//! client gets window back only as the upstream takes the bytes. What the server refuses
//! follows RFC 9113 section 5.4: a malformed request or a stream's flow-control fault resets
//! that stream (RST_STREAM); a broken frame, a broken header compression state or a
//! connection window overrun ends the connection with GOAWAY and the error code.
//!
//! Limits: 100 concurrent streams (`SETTINGS_MAX_CONCURRENT_STREAMS`, as HAProxy's default; a
//! stream past it is refused with REFUSED_STREAM, which a client retries), a 256 KiB window
//! per stream and 2 MiB per connection for request bodies, a header list of
//! `max_header_bytes` (past it the proxy answers `431`), frames of 16 KiB, header blocks of
//! 256 KiB in at most 64 CONTINUATION frames, ended within `header_timeout`. Other timeouts
//! stay with the listener's watchdog; a drain sends GOAWAY, lets the streams in flight
//! finish, then closes.

mod body;
mod frame;
mod hpack;
mod huffman;
mod recv;
mod request;
mod send;
mod slots;

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{Request, Response};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::task::coop::has_budget_remaining;
use tokio::time::Sleep;

use body::Chan;
pub use body::{Body, BodyError};
use frame::Reason;
use hpack::Decoder;

use super::activity::Activity;
use crate::body::{ClientBody, ResponseBody};
use slots::Slots;

/// The most streams a client may have open at once.
const MAX_CONCURRENT: u32 = 100;
// Every stream the client may open has a slot.
const _: () = assert!(MAX_CONCURRENT as usize <= slots::MAX);
/// The window each stream's request body starts with.
const STREAM_WINDOW: u32 = 256 * 1024;
/// The connection's window for request bodies: eight uploads stalled on their upstreams
/// take all of it.
const CONN_WINDOW: u32 = 2 << 20;
/// Window given back once this much is free again (or a stream's body ended).
const CREDIT_AT: usize = 32 * 1024;
/// Response bodies stop being read while this much is waiting to be written.
const MAX_OUT: usize = 64 * 1024;
/// The client's requests stop being read while this much is waiting to be written.
const MAX_OUT_READING: usize = 256 * 1024;
/// The write buffer's first size.
const INITIAL_OUT: usize = 4 * 1024;
/// The write buffer keeps at most this capacity once written out.
const KEEP_OUT: usize = 256 * 1024;
/// Room made for each read.
const READ: usize = 16 * 1024;
/// The largest header block (HEADERS and its CONTINUATIONs) taken in.
const MAX_BLOCK: usize = 256 * 1024;
/// The most CONTINUATION frames in one header block (a full-size block needs 16 of 16 KiB).
const MAX_CONTINUATIONS: usize = 64;
/// How many recently closed streams are remembered (see [`Recent`]).
const RECENT: usize = 128;
/// Streams the client may cancel young, or get reset for its faults, before the connection
/// is closed with ENHANCE_YOUR_CALM: each costs the client a few bytes and us a request
/// upstream (the "rapid reset" attack, CVE-2023-44487). The budget refills by one every
/// [`RESET_REFILL_MS`].
const RESET_BUDGET: u32 = 1000;
/// The budget's refill interval: 100 a second.
const RESET_REFILL_MS: u64 = 10;
/// A cancel counts against the budget only this soon after the stream opened: a client
/// that gives up on a slow answer (a gRPC deadline) is not an attack.
const RESET_YOUNG_MS: u64 = 1000;
/// The first bytes of every HTTP/2 connection (RFC 9113 section 3.4).
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Why a connection ended with an error.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
    /// Reading or writing the client's socket failed.
    #[error("client connection I/O failed")]
    Io(#[from] io::Error),
    /// The client broke the protocol; it was sent GOAWAY with this code.
    #[error("HTTP/2 protocol error from the client: {0:?}")]
    Protocol(Reason),
}

/// A connection error: GOAWAY with this code, then close.
type ConnResult<T = ()> = Result<T, Reason>;

/// What the connection needs from its listener.
pub(super) struct Settings {
    /// `limits.max_header_bytes`: the header list size past which a request gets `431`.
    pub(super) max_header_bytes: usize,
    /// The connection's activity: a header block in pieces is a head in progress, which
    /// `header_timeout` bounds.
    pub(super) activity: Arc<Activity>,
    /// `limits.header_timeout`: a header block in pieces must end within it, even beside
    /// streams in flight (when the listener's watchdog does not look at heads).
    pub(super) header_timeout: Duration,
}

/// Serves HTTP/2 on `io` (its preface not yet read) until the client closes, an error, or
/// [`Conn::graceful`] and the last stream's end. `make` starts a stream's response.
pub(super) fn new<S, F, M>(io: S, settings: Settings, make: M) -> Conn<S, F, M>
where
    S: AsyncRead + AsyncWrite + Unpin,
    F: Future<Output = Response<ResponseBody>>,
    M: FnMut(Request<ClientBody>) -> F,
{
    let mut out = Vec::with_capacity(INITIAL_OUT);
    frame::put_settings(
        &mut out,
        &[
            (frame::SETTINGS_MAX_CONCURRENT_STREAMS, MAX_CONCURRENT),
            (frame::SETTINGS_INITIAL_WINDOW_SIZE, STREAM_WINDOW),
            (
                frame::SETTINGS_MAX_HEADER_LIST_SIZE,
                u32::try_from(settings.max_header_bytes.saturating_mul(2)).unwrap_or(u32::MAX),
            ),
        ],
    );
    frame::put_window_update(&mut out, 0, CONN_WINDOW - frame::DEFAULT_WINDOW as u32);
    Conn {
        io,
        make,
        max_header_bytes: settings.max_header_bytes,
        activity: settings.activity,
        header_timeout: settings.header_timeout,
        block_deadline: None,
        reset_sent: Recent::default(),
        closed: Recent::default(),
        resets: RESET_BUDGET,
        refilled_ms: 0,
        read: BytesMut::with_capacity(READ),
        out,
        written: 0,
        unflushed: false,
        preface: false,
        settled: false,
        decoder: Decoder::new(4096),
        block: None,
        streams: Vec::new(),
        running: Slots::new(),
        last_id: 0,
        conn_send: frame::DEFAULT_WINDOW,
        conn_recv: i64::from(CONN_WINDOW),
        conn_credit: 0,
        peer_window: frame::DEFAULT_WINDOW,
        peer_max_frame: frame::DEFAULT_MAX_FRAME,
        goaway: None,
        peer_gone: false,
        failed: None,
    }
}

/// One client connection's HTTP/2 state.
pub(super) struct Conn<S, F, M> {
    io: S,
    make: M,
    max_header_bytes: usize,
    activity: Arc<Activity>,
    header_timeout: Duration,
    /// When the header block in pieces must have ended (armed only while one is open).
    block_deadline: Option<Pin<Box<Sleep>>>,
    /// Streams we reset lately: what the client sent before it knew is ignored.
    reset_sent: Recent,
    /// Streams that ended lately otherwise: a frame on one is a STREAM_CLOSED error.
    closed: Recent,
    /// What is left of [`RESET_BUDGET`].
    resets: u32,
    /// When the budget was last refilled (the activity's milliseconds).
    refilled_ms: u64,
    read: BytesMut,
    /// Frames to write; `out[..written]` already went.
    out: Vec<u8>,
    written: usize,
    /// Written since the last completed flush.
    unflushed: bool,
    /// The client's preface has been read.
    preface: bool,
    /// The client's first SETTINGS has been read.
    settled: bool,
    decoder: Decoder,
    /// A header block whose CONTINUATIONs are still coming.
    block: Option<Block>,
    streams: Vec<Stream>,
    running: Slots<F>,
    /// The highest stream the client opened.
    last_id: u32,
    /// What the client lets us send on the connection.
    conn_send: i64,
    /// What the client may still send us on the connection.
    conn_recv: i64,
    /// Bytes taken off the connection's window that can be given back.
    conn_credit: usize,
    /// The client's SETTINGS_INITIAL_WINDOW_SIZE.
    peer_window: i64,
    /// The client's SETTINGS_MAX_FRAME_SIZE.
    peer_max_frame: usize,
    /// GOAWAY went out, naming this last stream.
    goaway: Option<u32>,
    /// The client sent GOAWAY.
    peer_gone: bool,
    /// A connection error was sent: close once written.
    failed: Option<Reason>,
}

/// A header block in pieces (HEADERS without END_HEADERS, then CONTINUATION).
struct Block {
    stream: u32,
    end_stream: bool,
    /// The HEADERS frame was faulty: the block is decoded (HPACK's state needs it), then
    /// the stream is reset.
    refused: bool,
    bytes: BytesMut,
    continuations: usize,
}

/// The last [`RECENT`] stream ids added.
struct Recent {
    ids: [u32; RECENT],
    next: usize,
}

impl Default for Recent {
    fn default() -> Recent {
        Recent {
            ids: [0; RECENT],
            next: 0,
        }
    }
}

impl Recent {
    fn add(&mut self, id: u32) {
        self.ids[self.next % RECENT] = id;
        self.next += 1;
    }

    fn has(&self, id: u32) -> bool {
        id != 0 && self.ids.contains(&id)
    }
}

/// One open stream.
struct Stream {
    id: u32,
    /// The request body's slot, when the request has one.
    chan: Option<Arc<Chan>>,
    /// The client may still send on this stream.
    recv_open: bool,
    /// What the client may still send on this stream.
    recv_window: i64,
    /// Bytes taken off `recv_window` that can be given back.
    credit: usize,
    /// Bytes handed to the body and not yet given back to the connection.
    unreleased: usize,
    /// The declared `content-length`, and the bytes received.
    length: Option<u64>,
    received: u64,
    /// What the client lets us send on this stream.
    send_window: i64,
    /// When it opened (the activity's milliseconds).
    opened_ms: u64,
    /// Its body had nothing to send (or no window) in this round of `poll_bodies`.
    parked: bool,
    /// The request is HEAD: the response has no body, whatever its length says.
    head_request: bool,
    send: Send,
}

/// Where a stream's response is.
// Every stream goes from `Waiting` to `Body` in place: boxing the body would only add an
// allocation per response.
#[allow(clippy::large_enum_variant)]
enum Send {
    /// The proxy is still working on it.
    Waiting,
    /// The head went; the body goes as the windows allow. `pending` is read from the body
    /// and not yet sent; `last` says nothing follows it.
    Body {
        body: ResponseBody,
        pending: Bytes,
        last: bool,
    },
}

// === impl Conn ===

impl<S, F, M> Conn<S, F, M>
where
    S: AsyncRead + AsyncWrite + Unpin,
    F: Future<Output = Response<ResponseBody>>,
    M: FnMut(Request<ClientBody>) -> F,
{
    /// Stops taking new streams: GOAWAY names the last one taken, the others finish.
    pub(super) fn graceful(&mut self) {
        if self.goaway.is_none() && self.failed.is_none() {
            frame::put_goaway(&mut self.out, self.last_id, Reason::NoError);
            self.goaway = Some(self.last_id);
        }
    }

    /// Runs the connection until it is done.
    pub(super) fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        loop {
            let mut progress = false;
            if self.failed.is_none() && self.out.len() - self.written < MAX_OUT_READING {
                match self.poll_read(cx) {
                    Poll::Ready(Ok(0)) => return Poll::Ready(Ok(())),
                    Poll::Ready(Ok(_)) => {
                        progress = true;
                        if let Err(reason) = self.on_frames(cx) {
                            self.fail(reason);
                        }
                    }
                    Poll::Ready(Err(error)) => return Poll::Ready(Err(error.into())),
                    Poll::Pending => {}
                }
            }
            if let Some(deadline) = &mut self.block_deadline {
                if deadline.as_mut().poll(cx).is_ready() && self.failed.is_none() {
                    self.block_deadline = None;
                    self.fail(Reason::EnhanceYourCalm);
                    progress = true;
                }
            }
            if self.failed.is_none() {
                while let Some((id, response)) = self.running.next(cx) {
                    progress = true;
                    self.respond(id, response);
                }
                progress |= self.poll_bodies(cx);
                self.give_credit();
            }
            match self.poll_write(cx) {
                // Partly written counts as progress: the loop comes back to write the rest.
                Poll::Ready(Ok(wrote)) => {
                    progress |= wrote;
                    if self.written == self.out.len() && !self.unflushed {
                        if let Some(reason) = self.failed {
                            return Poll::Ready(Err(Error::Protocol(reason)));
                        }
                        if self.is_done() {
                            return Pin::new(&mut self.io).poll_shutdown(cx).map_err(Error::Io);
                        }
                    }
                }
                Poll::Ready(Err(error)) => return Poll::Ready(Err(error.into())),
                Poll::Pending => {}
            }
            if !progress {
                return Poll::Pending;
            }
            if !has_budget_remaining() {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
        }
    }

    /// Nothing is left to serve after a GOAWAY either way.
    fn is_done(&self) -> bool {
        (self.goaway.is_some() || self.peer_gone)
            && self.streams.is_empty()
            && self.running.is_empty()
    }

    /// Sends GOAWAY with `reason`; the connection closes once it is written.
    fn fail(&mut self, reason: Reason) {
        tracing::debug!(?reason, "HTTP/2 connection error; sending GOAWAY");
        frame::put_goaway(&mut self.out, self.last_id, reason);
        self.failed = Some(reason);
        for stream in self.streams.drain(..) {
            if let Some(chan) = &stream.chan {
                chan.end(None, Some(BodyError::Closed));
            }
        }
        self.running = Slots::new();
    }

    fn poll_read(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.read.capacity() - self.read.len() < READ / 2 {
            self.read.reserve(READ);
        }
        tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.read)
    }

    /// Writes what is buffered, then flushes it (TLS keeps what it encrypted until then);
    /// ready once all of it went, with whether anything did now.
    fn poll_write(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<bool>> {
        let mut wrote = false;
        while self.written < self.out.len() {
            let out = &self.out[self.written..];
            let n = match Pin::new(&mut self.io).poll_write(cx, out) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => n,
                Poll::Ready(Err(error)) => return Poll::Ready(Err(error)),
                Poll::Pending if wrote => {
                    self.compact();
                    return Poll::Ready(Ok(true));
                }
                Poll::Pending => {
                    self.compact();
                    return Poll::Pending;
                }
            };
            self.written += n;
            self.unflushed = true;
            wrote = true;
        }
        if wrote {
            self.out.clear();
            self.written = 0;
            if self.out.capacity() > KEEP_OUT {
                self.out = Vec::with_capacity(INITIAL_OUT);
            }
        }
        if self.unflushed {
            match Pin::new(&mut self.io).poll_flush(cx) {
                Poll::Ready(Ok(())) => self.unflushed = false,
                Poll::Ready(Err(error)) => return Poll::Ready(Err(error)),
                Poll::Pending if wrote => return Poll::Ready(Ok(true)),
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(Ok(wrote))
    }

    /// Drops what was written from the front of a buffer written only in part, once that is
    /// most of it: a client slow to read does not make the buffer grow past its backlog.
    fn compact(&mut self) {
        if self.written >= self.out.len() / 2 {
            self.out.drain(..self.written);
            self.written = 0;
        }
    }
}
