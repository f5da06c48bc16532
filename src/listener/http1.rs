//! Our own HTTP/1.1 server side of a client connection, driven by the connection's task.
//!
//! One loop per connection reads a request head into the connection's read buffer, parses it
//! with `httparse` (header values stay slices of the buffer, no copy), runs `proxy::handle`
//! on it and writes the response, then starts over: pipelined requests are served in order
//! from what the buffer already holds. There is no task or channel per request, no second
//! buffer for writing (a response head is written together with the first piece of its body
//! in one `writev`), and a request without a body gets no body plumbing at all.
//!
//! A request body is read by the connection's task only when the proxy asks for more of it
//! ([`Body`] and its `Feeder` share one small slot), so an upload is paced by the upstream.
//! Framing follows RFC 9112 section 6: `Transfer-Encoding` whose last coding is `chunked`,
//! else `Content-Length`, else no body. The shapes that smuggling relies on (`Content-Length`
//! repeated or beside `Transfer-Encoding`, a `Transfer-Encoding` other than one plain
//! `chunked`) are marked [`AmbiguousFraming`] for the proxy to refuse, and the connection
//! closes after the answer; a head that cannot be parsed gets `400`, one past
//! `max_header_bytes` or [`MAX_HEADERS`] fields `431`, each with a text body and
//! `connection: close`. When the proxy answers before reading a body, the rest of the body
//! is read and discarded so the connection stays in sync (as long as bytes keep arriving:
//! `idle_timeout` still applies). `Expect: 100-continue` is answered when the body is first
//! asked for. An accepted `Upgrade` hands the socket and any bytes read past the head to the
//! tunnel through [`OnUpgrade`].
//!
//! Timeouts stay with the listener's watchdog: this loop reports heads starting and ending
//! and bytes arriving to the connection's `Activity`.

use std::cell::Cell;
use std::fmt;
use std::future::{poll_fn, Future};
use std::io::{self, IoSlice};
use std::mem::MaybeUninit;
use std::pin::{pin, Pin};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, StatusCode, Uri, Version};
use http_body::{Body as _, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::oneshot;

use super::activity::Activity;
use super::signal::Signal;
use crate::body::{ClientBody, ResponseBody};
use crate::proxy::{self, AmbiguousFraming, ConnContext};
use crate::upstream::h1::{parse_chunk_size, parse_length};

/// Most fields in a request head or trailer section; more answers `431`.
pub const MAX_HEADERS: usize = 100;
/// The read buffer's first size: enough for most request heads in one read.
pub(super) const INITIAL_READ: usize = 4 * 1024;
/// Room made for each read of a request body.
const BODY_READ: usize = 16 * 1024;
/// A data frame up to this size is copied next to the head or chunk line it goes out with;
/// a larger one is written from where it is.
const COPY_DATA: usize = 4 * 1024;
/// Most bytes of an unread request body read and discarded to keep its connection.
const MAX_DRAIN: u64 = 1024 * 1024;
/// How long, and for how many bytes, a closing connection still reads what the client sends.
const LINGER_TIME: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 1024 * 1024;
/// Ready body frames are gathered into one write up to this many bytes.
const GATHER: usize = 64 * 1024;
/// The response-head buffer's first size: a head and a small body.
const INITIAL_OUT: usize = 1024;
/// The longest chunk-size line accepted (size, extensions).
const MAX_CHUNK_LINE: usize = 4 * 1024;
/// The response-head buffer keeps at most this capacity between requests.
const KEEP_OUT: usize = 16 * 1024;

/// A stream the server can hand to a tunnel once it is upgraded.
pub(crate) trait Stream: AsyncRead + AsyncWrite + Send + Unpin {}

impl<T: AsyncRead + AsyncWrite + Send + Unpin> Stream for T {}

/// Why a connection ended with an error.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
    /// Reading or writing the client's socket failed.
    #[error("client connection I/O failed")]
    Io(#[from] io::Error),
    /// The response body failed mid-way; the connection is cut so the client sees it.
    #[error("response body failed")]
    Response(#[source] crate::body::ResponseError),
    /// The response body was longer or shorter than its `Content-Length`.
    #[error("response body does not match its content-length")]
    Length,
}

/// Why a request body could not be read from the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    /// The client closed the connection before the body's end.
    #[error("the client closed the connection mid-body")]
    Incomplete,
    /// The chunked framing of the body was malformed.
    #[error("malformed chunked request body")]
    Chunked,
    /// Reading the socket failed.
    #[error("reading the request body failed")]
    Io,
    /// The connection stopped reading the body (its response was done without it).
    #[error("the request body was abandoned")]
    Abandoned,
}

// ===== request heads =====

/// How a request's body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    Empty,
    Length(u64),
    Chunked,
}

/// Why a head is refused before it becomes a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    /// `400`: not a parseable HTTP/1.x head, or framing that cannot be read at all.
    Malformed,
    /// `431`: past `max_header_bytes` or [`MAX_HEADERS`] fields.
    TooLarge,
}

/// A parsed request head and what the connection must know about it.
#[derive(Debug)]
struct Head {
    parts: http::request::Parts,
    framing: Framing,
    keep_alive: bool,
    expect_continue: bool,
    upgrade: bool,
}

/// Where one field sits in the head: name and value as byte ranges.
#[derive(Debug, Clone, Copy, Default)]
struct Span {
    name: (u32, u32),
    value: (u32, u32),
}

/// Takes one complete request head off the front of `buf`; `None` until one has arrived.
fn take_head(buf: &mut BytesMut, max_head: usize) -> Result<Option<Head>, Refusal> {
    // Left uninitialised: httparse writes the fields it parses (100 empty ones would be 3 KiB
    // of stores per request).
    let mut fields = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    let len = match req.parse_with_uninit_headers(buf, &mut fields) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() >= max_head => return Err(Refusal::TooLarge),
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(Refusal::TooLarge),
        Err(_) => return Err(Refusal::Malformed),
    };
    if len > max_head {
        return Err(Refusal::TooLarge);
    }
    let base = buf.as_ptr() as usize;
    let range = |s: &[u8]| ((s.as_ptr() as usize - base) as u32, s.len() as u32);
    let method =
        Method::from_bytes(req.method.unwrap_or("").as_bytes()).map_err(|_| Refusal::Malformed)?;
    let target = range(req.path.unwrap_or("").as_bytes());
    let version = match req.version {
        Some(0) => Version::HTTP_10,
        _ => Version::HTTP_11,
    };
    let count = req.headers.len();
    let mut spans = [Span::default(); MAX_HEADERS];
    for (span, field) in spans.iter_mut().zip(req.headers.iter()) {
        *span = Span {
            name: range(field.name.as_bytes()),
            value: range(field.value),
        };
    }
    let head = buf.split_to(len).freeze();
    let slice = |(at, len): (u32, u32)| head.slice(at as usize..(at + len) as usize);
    let built = (|| {
        let uri = Uri::from_maybe_shared(slice(target)).map_err(|_| Refusal::Malformed)?;
        let mut headers = HeaderMap::with_capacity(count + 4);
        let mut check = Check::default();
        for span in &spans[..count] {
            let (at, len) = span.name;
            let name = HeaderName::from_bytes(&head[at as usize..(at + len) as usize])
                .map_err(|_| Refusal::Malformed)?;
            let value = HeaderValue::from_maybe_shared(slice(span.value))
                .map_err(|_| Refusal::Malformed)?;
            check.field(&name, &value)?;
            headers.append(name, value);
        }
        let (mut parts, ()) = Request::new(()).into_parts();
        parts.method = method;
        parts.uri = uri;
        parts.version = version;
        parts.headers = headers;
        let framing = check.framing(version)?;
        if check.ambiguous {
            parts.extensions.insert(AmbiguousFraming);
        }
        let keep_alive = match version {
            Version::HTTP_10 => check.keep_alive && !check.close,
            _ => !check.close,
        } && !check.ambiguous;
        Ok(Some(Head {
            parts,
            framing,
            keep_alive,
            expect_continue: check.expect_continue && version == Version::HTTP_11,
            upgrade: check.upgrade && version == Version::HTTP_11,
        }))
    })();
    built.inspect_err(|_| {
        // Put the refused head back in front of what followed it: the access log reads its
        // request line from `buf` (the connection closes after a refusal).
        let rest = std::mem::take(buf);
        buf.extend_from_slice(&head);
        buf.extend_from_slice(&rest);
    })
}

/// What the fields of a head say about framing and the connection.
#[derive(Debug, Default)]
struct Check {
    length: Option<u64>,
    lengths: u32,
    codings: u32,
    /// Every `Transfer-Encoding` field was exactly `chunked`.
    plain_chunked: bool,
    /// The last transfer coding is `chunked`.
    chunked_last: bool,
    ambiguous: bool,
    close: bool,
    keep_alive: bool,
    upgrade: bool,
    expect_continue: bool,
}

impl Check {
    fn field(&mut self, name: &HeaderName, value: &HeaderValue) -> Result<(), Refusal> {
        let bytes = value.as_bytes();
        if name == header::CONTENT_LENGTH {
            // `5, 5` is one length said twice; anything else that is not digits is malformed.
            for item in bytes.split(|b| *b == b',') {
                let n = parse_length(item.trim_ascii()).ok_or(Refusal::Malformed)?;
                if self.length.is_some_and(|seen| seen != n) {
                    return Err(Refusal::Malformed);
                }
                self.length = Some(n);
                self.lengths += 1;
            }
        } else if name == header::TRANSFER_ENCODING {
            self.codings += 1;
            self.plain_chunked = (self.codings == 1) && bytes.eq_ignore_ascii_case(b"chunked");
            let last = bytes
                .rsplit(|b| *b == b',')
                .next()
                .map(<[u8]>::trim_ascii)
                .unwrap_or(b"");
            self.chunked_last = last.eq_ignore_ascii_case(b"chunked");
        } else if name == header::CONNECTION {
            for token in bytes.split(|b| *b == b',').map(<[u8]>::trim_ascii) {
                if token.eq_ignore_ascii_case(b"close") {
                    self.close = true;
                } else if token.eq_ignore_ascii_case(b"keep-alive") {
                    self.keep_alive = true;
                } else if token.eq_ignore_ascii_case(b"upgrade") {
                    self.upgrade = true;
                }
            }
        } else if name == header::EXPECT {
            self.expect_continue = bytes.eq_ignore_ascii_case(b"100-continue");
        }
        Ok(())
    }

    fn framing(&mut self, version: Version) -> Result<Framing, Refusal> {
        if self.codings > 0 {
            // RFC 9112 section 6.1: an HTTP/1.0 message with a transfer coding is faulty, and
            // a body whose last coding is not chunked has no knowable end.
            if version == Version::HTTP_10 || !self.chunked_last {
                return Err(Refusal::Malformed);
            }
            self.ambiguous |= self.lengths > 0 || !self.plain_chunked;
            return Ok(Framing::Chunked);
        }
        self.ambiguous |= self.lengths > 1;
        Ok(match self.length {
            None | Some(0) => Framing::Empty,
            Some(n) => Framing::Length(n),
        })
    }
}

// ===== request bodies =====

/// A request body read from the client connection by its task, as the proxy asks for it.
#[derive(Debug)]
pub struct Body {
    chan: Arc<Chan>,
    /// Bytes still to come for a `Content-Length` body.
    remaining: Option<u64>,
}

#[derive(Debug, Default)]
struct Chan(Mutex<Slot>);

/// The one frame in passage between the connection and the body, and who waits for whom.
#[derive(Debug, Default)]
struct Slot {
    frame: Option<Result<Frame<Bytes>, BodyError>>,
    /// No frame will follow the one in `frame` (if any).
    ended: bool,
    /// The body was polled and found nothing: the connection should read more.
    want: bool,
    /// The body was dropped.
    dropped: bool,
    body: Option<Waker>,
    conn: Option<Waker>,
}

impl Chan {
    fn lock(&self) -> MutexGuard<'_, Slot> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        let mut slot = this.chan.lock();
        if let Some(frame) = slot.frame.take() {
            if let (Some(rest), Ok(frame)) = (this.remaining.as_mut(), &frame) {
                *rest -= frame.data_ref().map_or(0, |d| d.len() as u64);
            }
            return Poll::Ready(Some(frame));
        }
        if slot.ended {
            return Poll::Ready(None);
        }
        slot.want = true;
        if !slot.body.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            slot.body = Some(cx.waker().clone());
        }
        let conn = slot.conn.take();
        drop(slot);
        if let Some(conn) = conn {
            conn.wake();
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == Some(0) || {
            let slot = self.chan.lock();
            slot.ended && slot.frame.is_none()
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self.remaining {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }
}

impl Drop for Body {
    fn drop(&mut self) {
        let mut slot = self.chan.lock();
        slot.dropped = true;
        slot.want = false;
        let conn = slot.conn.take();
        drop(slot);
        if let Some(conn) = conn {
            conn.wake();
        }
    }
}

/// Decoding state of a request body on the connection's side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Decode {
    /// Bytes left of a `Content-Length` body.
    Length(u64),
    /// Expecting a chunk-size line.
    Size,
    /// Bytes left of the current chunk.
    Data(u64),
    /// Expecting the CRLF after a chunk's data.
    DataEnd,
    /// Expecting the trailer section (or the final CRLF).
    Trailers,
    Done,
}

/// What one decoding step produced.
enum Step {
    Frame(Frame<Bytes>),
    /// More bytes are needed.
    More,
    Done,
}

impl Decode {
    fn new(framing: Framing) -> Decode {
        match framing {
            Framing::Empty => Decode::Done,
            Framing::Length(n) => Decode::Length(n),
            Framing::Chunked => Decode::Size,
        }
    }

    /// Decodes what `buf` holds into at most one frame.
    fn step(&mut self, buf: &mut BytesMut, max_trailers: usize) -> Result<Step, BodyError> {
        loop {
            match *self {
                Decode::Done => return Ok(Step::Done),
                Decode::Length(left) | Decode::Data(left) => {
                    if buf.is_empty() {
                        return Ok(Step::More);
                    }
                    let n = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                    let data = buf.split_to(n).freeze();
                    let left = left - n as u64;
                    *self = match *self {
                        Decode::Length(_) if left == 0 => Decode::Done,
                        Decode::Length(_) => Decode::Length(left),
                        _ if left == 0 => Decode::DataEnd,
                        _ => Decode::Data(left),
                    };
                    return Ok(Step::Frame(Frame::data(data)));
                }
                Decode::Size => {
                    let Some(end) = find_crlf(buf, MAX_CHUNK_LINE)? else {
                        return Ok(Step::More);
                    };
                    let size = parse_chunk_size(&buf[..end]).ok_or(BodyError::Chunked)?;
                    buf.advance(end + 2);
                    *self = if size == 0 {
                        Decode::Trailers
                    } else {
                        Decode::Data(size)
                    };
                }
                Decode::DataEnd => {
                    if buf.len() < 2 {
                        return Ok(Step::More);
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err(BodyError::Chunked);
                    }
                    buf.advance(2);
                    *self = Decode::Size;
                }
                Decode::Trailers => {
                    if buf.starts_with(b"\r\n") {
                        buf.advance(2);
                        *self = Decode::Done;
                        return Ok(Step::Done);
                    }
                    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
                    let (len, parsed) = match httparse::parse_headers(buf, &mut fields) {
                        Ok(httparse::Status::Complete(done)) => done,
                        Ok(httparse::Status::Partial) if buf.len() < max_trailers => {
                            return Ok(Step::More)
                        }
                        _ => return Err(BodyError::Chunked),
                    };
                    let mut trailers = HeaderMap::with_capacity(parsed.len());
                    for field in parsed {
                        let name = HeaderName::from_bytes(field.name.as_bytes());
                        let value = HeaderValue::from_bytes(field.value);
                        let (Ok(name), Ok(value)) = (name, value) else {
                            return Err(BodyError::Chunked);
                        };
                        trailers.append(name, value);
                    }
                    buf.advance(len);
                    *self = Decode::Done;
                    return Ok(Step::Frame(Frame::trailers(trailers)));
                }
            }
        }
    }
}

/// The end of the line at the front of `buf` (the index of its CR), strictly CRLF-ended.
fn find_crlf(buf: &[u8], max: usize) -> Result<Option<usize>, BodyError> {
    match buf.iter().take(max).position(|b| *b == b'\n') {
        Some(0) => Err(BodyError::Chunked),
        Some(lf) if buf[lf - 1] == b'\r' => Ok(Some(lf - 1)),
        Some(_) => Err(BodyError::Chunked),
        None if buf.len() >= max => Err(BodyError::Chunked),
        None => Ok(None),
    }
}

/// The connection's end of a request body: reads and decodes it when the body wants more.
#[derive(Debug)]
struct Feeder {
    chan: Arc<Chan>,
    decode: Decode,
    /// `100 Continue` still to be written (bytes of it written so far).
    continue_at: Option<usize>,
    /// The body could not be read to its end; the connection cannot be reused.
    failed: bool,
}

const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

impl Feeder {
    /// Reads and hands over the next frame if the body asked for one. `Ready(true)` when a
    /// frame (or the end, or an error) was handed over, `Ready(false)` when nothing is asked.
    fn poll_feed<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        cx: &mut Context<'_>,
        io: &mut S,
        buf: &mut BytesMut,
        activity: &Activity,
        max_head: usize,
    ) -> Poll<bool> {
        {
            let mut slot = self.chan.lock();
            if self.decode == Decode::Done || self.failed || slot.dropped {
                return Poll::Ready(false);
            }
            if !slot.want || slot.frame.is_some() {
                if !slot.conn.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                    slot.conn = Some(cx.waker().clone());
                }
                return Poll::Ready(false);
            }
        }
        if let Some(at) = self.continue_at.as_mut() {
            while *at < CONTINUE.len() {
                match Pin::new(&mut *io).poll_write(cx, &CONTINUE[*at..]) {
                    Poll::Ready(Ok(n)) if n > 0 => *at += n,
                    Poll::Ready(_) => return Poll::Ready(self.deliver(Err(BodyError::Io), cx)),
                    Poll::Pending => return Poll::Pending,
                }
            }
            self.continue_at = None;
        }
        loop {
            match self.decode.step(buf, max_head) {
                Ok(Step::Frame(frame)) => {
                    let frame = Ok(frame);
                    return Poll::Ready(self.deliver(frame, cx));
                }
                Ok(Step::Done) => return Poll::Ready(self.end(cx)),
                Ok(Step::More) => {}
                Err(error) => return Poll::Ready(self.deliver(Err(error), cx)),
            }
            match std::task::ready!(poll_read_buf(io, cx, buf, BODY_READ)) {
                Ok(0) => return Poll::Ready(self.deliver(Err(BodyError::Incomplete), cx)),
                Ok(_) => activity.read(),
                Err(_) => return Poll::Ready(self.deliver(Err(BodyError::Io), cx)),
            }
        }
    }

    /// Hands over the body's first frame if the bytes already read hold it, before the
    /// proxy first asks: a small body then goes upstream with its head, and a malformed one
    /// fails before anything is sent.
    fn prime(&mut self, buf: &mut BytesMut, max_head: usize) {
        let frame = match self.decode.step(buf, max_head) {
            Ok(Step::Frame(frame)) => Ok(frame),
            Ok(Step::More) => return,
            Ok(Step::Done) => {
                let mut slot = self.chan.lock();
                slot.ended = true;
                return;
            }
            Err(error) => {
                self.failed = true;
                Err(error)
            }
        };
        // The client is already sending: no `100 Continue` is needed.
        self.continue_at = None;
        let mut slot = self.chan.lock();
        slot.ended = frame.is_err() || self.decode == Decode::Done;
        slot.frame = Some(frame);
    }

    fn deliver(&mut self, frame: Result<Frame<Bytes>, BodyError>, cx: &Context<'_>) -> bool {
        if frame.is_err() {
            self.failed = true;
        }
        let ended = frame.is_err() || self.decode == Decode::Done;
        self.hand_over(Some(frame), ended, cx)
    }

    fn end(&mut self, cx: &Context<'_>) -> bool {
        self.hand_over(None, true, cx)
    }

    fn hand_over(
        &mut self,
        frame: Option<Result<Frame<Bytes>, BodyError>>,
        ended: bool,
        cx: &Context<'_>,
    ) -> bool {
        let mut slot = self.chan.lock();
        slot.frame = frame;
        slot.ended = ended;
        slot.want = false;
        // The body is usually polled from this very task, which polls it again right away.
        let body = slot.body.take().filter(|w| !w.will_wake(cx.waker()));
        drop(slot);
        if let Some(body) = body {
            body.wake();
        }
        true
    }

    /// Whether the body was read to its end.
    fn done(&self) -> bool {
        self.decode == Decode::Done && !self.failed
    }

    /// Takes the body back from the proxy: later polls of it see an error.
    fn abandon(&mut self) {
        let mut slot = self.chan.lock();
        if !slot.ended {
            slot.frame = Some(Err(BodyError::Abandoned));
            slot.ended = true;
        }
        let body = slot.body.take();
        drop(slot);
        if let Some(body) = body {
            body.wake();
        }
    }
}

impl Drop for Feeder {
    fn drop(&mut self) {
        // A body still held elsewhere (an HTTP/2 upstream's send task) must not wait for a
        // connection that is gone.
        self.abandon();
    }
}

/// Reads ahead while a request is being served, as hyper's server does, to notice a client
/// that closed its connection (`Ready(true)`). Reads only into an empty buffer, so at most
/// one buffer of pipelined bytes is taken early; they stay in `buf` for the next head.
fn poll_gone<S: AsyncRead + Unpin>(
    io: &mut S,
    cx: &mut Context<'_>,
    buf: &mut BytesMut,
    activity: &Activity,
) -> Poll<bool> {
    if !buf.is_empty() {
        return Poll::Pending;
    }
    // Into whatever room is left: growing the buffer now would mean a new allocation, as the
    // request being served still holds slices of it.
    match std::task::ready!(poll_read_buf(io, cx, buf, 1)) {
        Ok(0) | Err(_) => Poll::Ready(true),
        Ok(_) => {
            activity.read();
            Poll::Ready(false)
        }
    }
}

/// Reads into `buf`, first making `room` bytes free when fewer are. Once every slice handed
/// out of the buffer is dropped, `reserve` reuses its allocation in place.
fn poll_read_buf<S: AsyncRead + Unpin>(
    io: &mut S,
    cx: &mut Context<'_>,
    buf: &mut BytesMut,
    room: usize,
) -> Poll<io::Result<usize>> {
    if buf.capacity() - buf.len() < room {
        buf.reserve(room);
    }
    tokio_util::io::poll_read_buf(Pin::new(io), cx, buf)
}

// ===== upgrades =====

/// Request extension: resolves to the client's connection once the `101` was written (or
/// fails when the connection ended without one). Clones share the one connection.
#[derive(Debug, Clone)]
pub struct OnUpgrade(Arc<Mutex<Option<oneshot::Receiver<Upgraded>>>>);

impl Future for OnUpgrade {
    type Output = Result<Upgraded, oneshot::error::RecvError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut rx = self.0.lock().unwrap_or_else(|e| e.into_inner());
        match rx.as_mut() {
            Some(receiver) => {
                let done = std::task::ready!(Pin::new(receiver).poll(cx));
                *rx = None;
                Poll::Ready(done)
            }
            None => Poll::Pending,
        }
    }
}

/// A client connection after `101 Switching Protocols`: bytes read past the head, then the
/// socket.
pub struct Upgraded {
    read: Bytes,
    io: Box<dyn Stream>,
}

impl fmt::Debug for Upgraded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Upgraded")
            .field("read", &self.read.len())
            .finish_non_exhaustive()
    }
}

impl AsyncRead for Upgraded {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.read.is_empty() {
            let n = buf.remaining().min(self.read.len());
            buf.put_slice(&self.read.split_to(n));
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Upgraded {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

// ===== responses =====

/// How a response body is delimited on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Out {
    /// No body is sent (HEAD, 1xx, 204, 304).
    None,
    /// `Content-Length`: bytes still to send.
    Length(u64),
    Chunked,
    /// HTTP/1.0 without a length: the body ends when the connection closes.
    Close,
}

/// Writes one response: its head, then its body frames, coalescing what is ready together.
struct Writer<'a> {
    out: &'a mut Vec<u8>,
    /// Bytes of `out` already written.
    at: usize,
    /// A large data frame written from where it is, after `out`.
    data: Bytes,
    /// Written after `data`: the CRLF ending a chunk, with the last chunk when the body ends.
    tail: &'static [u8],
    body: Option<ResponseBody>,
    framing: Out,
    /// Something was written since the last flush.
    unflushed: bool,
}

impl Writer<'_> {
    /// Writes the whole response; `Ok` once it is all out and flushed.
    fn poll_write<S: AsyncWrite + Unpin>(
        &mut self,
        cx: &mut Context<'_>,
        io: &mut S,
    ) -> Poll<Result<(), Error>> {
        loop {
            if self.at == self.out.len() && self.data.is_empty() && self.tail.is_empty() {
                let Some(body) = self.body.as_mut() else {
                    if self.unflushed {
                        std::task::ready!(Pin::new(&mut *io).poll_flush(cx))?;
                        self.unflushed = false;
                    }
                    return Poll::Ready(Ok(()));
                };
                self.out.clear();
                self.at = 0;
                match Pin::new(body).poll_frame(cx) {
                    Poll::Ready(frame) => self.queue(frame)?,
                    Poll::Pending => {
                        if self.unflushed {
                            std::task::ready!(Pin::new(&mut *io).poll_flush(cx))?;
                            self.unflushed = false;
                        }
                        return Poll::Pending;
                    }
                }
                continue;
            }
            // Pick up frames that are already there, so that they leave with what is queued
            // in one write (a head with its body, small chunks together).
            while self.data.is_empty() && self.tail.is_empty() && self.out.len() - self.at < GATHER
            {
                let Some(body) = self.body.as_mut() else {
                    break;
                };
                match Pin::new(body).poll_frame(cx) {
                    Poll::Ready(frame) => self.queue(frame)?,
                    Poll::Pending => break,
                }
            }
            let slices = [
                IoSlice::new(&self.out[self.at..]),
                IoSlice::new(&self.data),
                IoSlice::new(self.tail),
            ];
            let n = std::task::ready!(Pin::new(&mut *io).poll_write_vectored(cx, &slices))?;
            if n == 0 {
                return Poll::Ready(Err(Error::Io(io::ErrorKind::WriteZero.into())));
            }
            self.unflushed = true;
            self.advance(n);
        }
    }

    fn advance(&mut self, mut n: usize) {
        let head = (self.out.len() - self.at).min(n);
        self.at += head;
        n -= head;
        let data = self.data.len().min(n);
        self.data.advance(data);
        n -= data;
        self.tail = &self.tail[n.min(self.tail.len())..];
    }

    /// Queues what the body produced behind what is already queued.
    fn queue(
        &mut self,
        frame: Option<Result<Frame<Bytes>, crate::body::ResponseError>>,
    ) -> Result<(), Error> {
        let frame = match frame {
            None => return self.finish(),
            Some(Err(error)) => {
                self.body = None;
                return Err(Error::Response(error));
            }
            Some(Ok(frame)) => frame,
        };
        let ended = self.body.as_ref().is_none_or(|b| b.is_end_stream());
        let data = match frame.into_data() {
            Ok(data) => data,
            Err(frame) => {
                if let (Ok(trailers), Out::Chunked) = (frame.into_trailers(), self.framing) {
                    self.out.extend_from_slice(b"0\r\n");
                    encode_fields(self.out, &trailers);
                    self.out.extend_from_slice(b"\r\n");
                    self.framing = Out::None;
                }
                return if ended { self.finish() } else { Ok(()) };
            }
        };
        match &mut self.framing {
            Out::None => {}
            Out::Length(left) => {
                if data.len() as u64 > *left {
                    return Err(Error::Length);
                }
                *left -= data.len() as u64;
                self.put(data, b"");
            }
            Out::Close => self.put(data, b""),
            Out::Chunked => {
                if !data.is_empty() {
                    write_hex(self.out, data.len());
                    self.out.extend_from_slice(b"\r\n");
                    self.put(data, if ended { b"\r\n0\r\n\r\n" } else { b"\r\n" });
                    if ended {
                        self.framing = Out::None;
                    }
                }
            }
        }
        if ended {
            self.finish()?;
        }
        Ok(())
    }

    fn put(&mut self, data: Bytes, tail: &'static [u8]) {
        if data.len() <= COPY_DATA {
            self.out.extend_from_slice(&data);
            self.out.extend_from_slice(tail);
        } else {
            self.data = data;
            self.tail = tail;
        }
    }

    /// The body ended: the last chunk, a length check, and the body released.
    fn finish(&mut self) -> Result<(), Error> {
        self.body = None;
        match self.framing {
            Out::Chunked => self.out.extend_from_slice(b"0\r\n\r\n"),
            Out::Length(left) if left > 0 => return Err(Error::Length),
            _ => {}
        }
        self.framing = Out::None;
        Ok(())
    }
}

/// Appends `name: value` lines.
fn encode_fields(out: &mut Vec<u8>, fields: &HeaderMap) {
    for (name, value) in fields {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
}

fn write_hex(out: &mut Vec<u8>, mut n: usize) {
    let mut digits = [0u8; 16];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b"0123456789abcdef"[n & 15];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

/// The response head for `response` to a request with `method`/`version`; returns how its
/// body goes out and whether the connection stays open after it.
fn encode_head(
    out: &mut Vec<u8>,
    response: &http::response::Parts,
    body: &ResponseBody,
    method: &Method,
    version: Version,
    mut keep_alive: bool,
) -> (Out, bool) {
    let status = response.status;
    let headers = &response.headers;
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    if status == StatusCode::SWITCHING_PROTOCOLS {
        encode_fields(out, headers);
        push_date(out, headers);
        out.extend_from_slice(b"\r\n");
        return (Out::None, false);
    }
    let mut length = None;
    for (name, value) in headers {
        if name == header::CONNECTION {
            keep_alive &= !value
                .as_bytes()
                .split(|b| *b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"close"));
            continue;
        }
        if name == header::TRANSFER_ENCODING {
            continue;
        }
        if name == header::CONTENT_LENGTH {
            length = std::str::from_utf8(value.as_bytes())
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok());
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    let bodiless = *method == Method::HEAD
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let framing = if bodiless {
        Out::None
    } else if let Some(n) = length {
        Out::Length(n)
    } else if let Some(n) = body.size_hint().exact() {
        out.extend_from_slice(b"content-length: ");
        out.extend_from_slice(itoa(n, &mut [0; 20]));
        out.extend_from_slice(b"\r\n");
        Out::Length(n)
    } else if version == Version::HTTP_11 {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
        Out::Chunked
    } else {
        keep_alive = false;
        Out::Close
    };
    push_date(out, headers);
    if !keep_alive && version == Version::HTTP_11 {
        out.extend_from_slice(b"connection: close\r\n");
    } else if keep_alive && version == Version::HTTP_10 {
        out.extend_from_slice(b"connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"\r\n");
    (framing, keep_alive)
}

pub(super) fn itoa(mut n: u64, digits: &mut [u8; 20]) -> &[u8] {
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    &digits[at..]
}

fn push_date(out: &mut Vec<u8>, headers: &HeaderMap) {
    if headers.contains_key(header::DATE) {
        return;
    }
    out.extend_from_slice(b"date: ");
    out.extend_from_slice(&now_date());
    out.extend_from_slice(b"\r\n");
}

thread_local! {
    /// The formatted date of the current second, per thread.
    static DATE: Cell<(u64, [u8; 29])> = const { Cell::new((0, [0; 29])) };
}

/// The current time as an IMF-fixdate, formatted at most once a second per thread.
pub(super) fn now_date() -> [u8; 29] {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs();
    DATE.with(|cache| {
        let (at, text) = cache.get();
        if at == secs {
            return text;
        }
        let text = http_date(secs);
        cache.set((secs, text));
        text
    })
}

/// `secs` since the Unix epoch as an IMF-fixdate: `Sun, 06 Nov 1994 08:49:37 GMT`.
fn http_date(secs: u64) -> [u8; 29] {
    const DAYS: [&[u8; 3]; 7] = [b"Thu", b"Fri", b"Sat", b"Sun", b"Mon", b"Tue", b"Wed"];
    const MONTHS: [&[u8; 3]; 12] = [
        b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov",
        b"Dec",
    ];
    let days = secs / 86_400;
    let rest = secs % 86_400;
    // Civil date from days since 1970-01-01 (proleptic Gregorian, days from March 1st).
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    let mut out = *b"Thu, 01 Jan 1970 00:00:00 GMT";
    out[..3].copy_from_slice(DAYS[(days % 7) as usize]);
    let two = |out: &mut [u8; 29], at: usize, n: u64| {
        out[at] = b'0' + (n / 10) as u8;
        out[at + 1] = b'0' + (n % 10) as u8;
    };
    two(&mut out, 5, day);
    out[8..11].copy_from_slice(MONTHS[(month - 1) as usize]);
    two(&mut out, 12, year / 100 % 100);
    two(&mut out, 14, year % 100);
    two(&mut out, 17, rest / 3600);
    two(&mut out, 20, rest / 60 % 60);
    two(&mut out, 23, rest % 60);
    out
}

/// The proxy's answer to a head it refused: status, text body, `connection: close` and a
/// fresh `x-request-id` (SPEC section 4: every answer carries one), counted in
/// `switchyard_requests_total` with `route=""` and `pool=""`, and written to the access log
/// with what can be read of the request line in `head` (the bytes received so far).
fn refusal(refusal: Refusal, ctx: &ConnContext, head: &[u8]) -> Vec<u8> {
    let (status, reason, text) = match refusal {
        Refusal::Malformed => (
            400,
            "Bad Request",
            "400 bad request: the request head is malformed\n",
        ),
        Refusal::TooLarge => (
            431,
            "Request Header Fields Too Large",
            "431 request header fields too large\n",
        ),
    };
    crate::metrics::record_request(&ctx.listener, None, status, Duration::ZERO);
    let id = ctx.shared.request_ids.next();
    let id = id.to_str().unwrap_or("");
    if let Some(logger) = &ctx.shared.snapshot().access_log {
        let (method, path) = request_line(head);
        let entry = crate::access_log::Entry {
            time: SystemTime::now(),
            client: ctx.client.ip(),
            method,
            text: crate::access_log::RequestText::new("", path, id),
            status,
            bytes: 0,
            duration_ms: 0.0,
            route: None,
            pool: None,
            upstream: None,
        };
        let started = tokio::time::Instant::now();
        crate::access_log::Pending::new(logger.clone(), started, entry).write(text.len() as u64);
    }
    let date = now_date();
    let date = std::str::from_utf8(&date).unwrap_or("");
    format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\nx-request-id: {id}\r\ndate: {date}\r\n\r\n{text}",
        text.len()
    )
    .into_bytes()
}

/// The method and path (without the query) of a refused head's request line, as far as they
/// can be read: `-` for what cannot.
fn request_line(head: &[u8]) -> (Method, &str) {
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let mut words = line.split(|&b| b == b' ');
    let method = words
        .next()
        .and_then(|m| Method::from_bytes(m).ok())
        .unwrap_or_else(|| Method::from_bytes(b"-").expect("`-` is a token"));
    let path = words
        .next()
        .and_then(|t| std::str::from_utf8(t).ok())
        .filter(|t| t.starts_with('/') && t.bytes().all(|b| b.is_ascii_graphic()))
        .map_or("-", |t| t.split('?').next().unwrap_or(t));
    (method, path)
}

// ===== the connection =====

/// What the connection needs from its listener.
pub(super) struct Settings<'a> {
    pub(super) max_head: usize,
    pub(super) activity: &'a Arc<Activity>,
    /// Fired when the listener drains: finish the request in progress, then close.
    pub(super) shutdown: &'a Signal,
    /// The stream is TLS: closing it sends `close_notify` first.
    pub(super) tls: bool,
}

/// Serves HTTP/1.1 on `io` until the client closes, an error, or a drain; `buf` holds bytes
/// already read from it.
pub(super) async fn serve<S: Stream + 'static>(
    mut io: S,
    mut buf: BytesMut,
    ctx: &ConnContext,
    settings: Settings<'_>,
) -> Result<(), Error> {
    let tls = settings.tls;
    match requests(&mut io, &mut buf, ctx, settings).await? {
        // A TLS client learns with `close_notify` that nothing was cut off; on plain TCP
        // closing the socket says the same.
        End::Close if tls => {
            poll_fn(|cx| Pin::new(&mut io).poll_shutdown(cx)).await?;
        }
        End::Close | End::Gone => {}
        End::Linger => {
            // The client may still be sending (a body we did not read, pipelined requests):
            // closing with unread input would reset the connection, and the client could
            // lose the answer. Shut our side, then read and discard for a bounded while.
            poll_fn(|cx| Pin::new(&mut io).poll_shutdown(cx)).await?;
            let linger = async {
                let mut read = 0;
                while read < LINGER_BYTES {
                    buf.clear();
                    match poll_fn(|cx| poll_read_buf(&mut io, cx, &mut buf, INITIAL_READ)).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => read += n,
                    }
                }
            };
            let _ = tokio::time::timeout(LINGER_TIME, linger).await;
        }
        End::Upgrade(tx) => {
            let upgraded = Upgraded {
                read: buf.split().freeze(),
                io: Box::new(io),
            };
            let _ = tx.send(upgraded);
        }
    }
    Ok(())
}

/// How the request loop ended.
enum End {
    /// The connection is done: the client closed it, or it is not kept alive.
    Close,
    /// The connection is done, but the client may still be sending.
    Linger,
    /// The client went away while a request was served.
    Gone,
    /// A `101` was written: the socket goes to the tunnel.
    Upgrade(oneshot::Sender<Upgraded>),
}

/// Serves requests on `io` one after another.
async fn requests<S: Stream>(
    io: &mut S,
    buf: &mut BytesMut,
    ctx: &ConnContext,
    settings: Settings<'_>,
) -> Result<End, Error> {
    let Settings {
        max_head,
        activity,
        shutdown,
        tls: _,
    } = settings;
    let mut out = Vec::with_capacity(INITIAL_OUT);
    // Registered once: polled between requests, when a drain closes the connection at once.
    let mut drained = pin!(shutdown.fired());
    let mut first = true;
    loop {
        // ---- the head
        if !buf.is_empty() {
            activity.head_started();
        } else if !first {
            // (The first head's deadline counts from accept, TLS handshake included.)
            activity.idle();
        }
        first = false;
        let head = loop {
            match take_head(buf, max_head) {
                Ok(Some(head)) => break head,
                Ok(None) => {}
                Err(refused) => {
                    activity.head_ended();
                    let answer = refusal(refused, ctx, buf);
                    write_all(io, &answer).await?;
                    return Ok(End::Linger);
                }
            }
            if buf.is_empty() && shutdown.is_fired() {
                return Ok(End::Close);
            }
            // Free room for a whole head; a head that fills it doubles the buffer.
            let room = if buf.capacity() == 0 {
                INITIAL_READ
            } else {
                buf.len().max(INITIAL_READ / 2)
            };
            let read = poll_fn(|cx| {
                let polled = poll_read_buf(io, cx, buf, room);
                if polled.is_pending() && buf.is_empty() && drained.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Ok(0));
                }
                polled
            })
            .await?;
            if read == 0 {
                return Ok(End::Close);
            }
            activity.head_read();
        };
        activity.head_ended();

        // ---- the request
        let Head {
            parts,
            framing,
            mut keep_alive,
            expect_continue,
            upgrade,
        } = head;
        let method = parts.method.clone();
        let version = parts.version;
        let mut feeder = None;
        let body = if framing == Framing::Empty {
            ClientBody::Empty
        } else {
            let chan = Arc::new(Chan::default());
            feeder = Some(Feeder {
                chan: chan.clone(),
                decode: Decode::new(framing),
                continue_at: expect_continue.then_some(0),
                failed: false,
            });
            let remaining = match framing {
                Framing::Length(n) => Some(n),
                _ => None,
            };
            ClientBody::H1(Body { chan, remaining })
        };
        let mut req = Request::from_parts(parts, body);
        let mut upgrade_tx = None;
        if upgrade {
            let (tx, rx) = oneshot::channel();
            req.extensions_mut()
                .insert(OnUpgrade(Arc::new(Mutex::new(Some(rx)))));
            upgrade_tx = Some(tx);
        }
        if let Some(feeder) = feeder.as_mut() {
            feeder.prime(buf, max_head);
        }
        let guard = activity.start_request();
        let response = {
            let mut handling = pin!(proxy::handle(ctx, req));
            poll_fn(|cx| loop {
                if let Poll::Ready(response) = handling.as_mut().poll(cx) {
                    return Poll::Ready(Some(response));
                }
                if let Some(feeder) = feeder.as_mut() {
                    match feeder.poll_feed(cx, io, buf, activity, max_head) {
                        Poll::Ready(true) => continue,
                        Poll::Ready(false) => {}
                        Poll::Pending => return Poll::Pending,
                    }
                }
                match poll_gone(io, cx, buf, activity) {
                    Poll::Ready(true) => return Poll::Ready(None),
                    Poll::Ready(false) => continue,
                    Poll::Pending => return Poll::Pending,
                }
            })
            .await
        };
        let Some(response) = response else {
            // The client went away: the request is dropped unanswered (logged as 499).
            return Ok(End::Gone);
        };

        // ---- the response
        let (head, body) = response.into_parts();
        out.clear();
        match feeder.as_mut().and_then(|f| f.continue_at.take()) {
            // The client may be holding its body back for a `100 Continue` that will not
            // come now: this answer is the connection's last.
            Some(0) => keep_alive = false,
            // A `100 Continue` half written: its rest goes first.
            Some(at) => out.extend_from_slice(&CONTINUE[at..]),
            None => {}
        }
        if shutdown.is_fired() {
            keep_alive = false;
        }
        let (framing, keep) = encode_head(&mut out, &head, &body, &method, version, keep_alive);
        keep_alive = keep;
        let switching = head.status == StatusCode::SWITCHING_PROTOCOLS;
        let mut writer = Writer {
            out: &mut out,
            at: 0,
            data: Bytes::new(),
            tail: b"",
            body: (framing != Out::None).then_some(body),
            framing,
            unflushed: false,
        };
        let written = poll_fn(|cx| loop {
            if let Some(feeder) = feeder.as_mut() {
                while let Poll::Ready(true) = feeder.poll_feed(cx, io, buf, activity, max_head) {}
            }
            if let Poll::Ready(done) = writer.poll_write(cx, io) {
                return Poll::Ready(done);
            }
            // A response waiting on its upstream: notice the client going away meanwhile.
            match poll_gone(io, cx, buf, activity) {
                Poll::Ready(true) => {
                    return Poll::Ready(Err(Error::Io(io::ErrorKind::ConnectionAborted.into())))
                }
                Poll::Ready(false) => continue,
                Poll::Pending => return Poll::Pending,
            }
        })
        .await;
        drop(writer);
        drop(guard);
        written?;
        if switching {
            return Ok(upgrade_tx.map_or(End::Close, End::Upgrade));
        }
        if out.capacity() > KEEP_OUT {
            out = Vec::with_capacity(INITIAL_OUT);
        }

        // ---- what is left of the request body
        if let Some(mut feeder) = feeder {
            feeder.abandon();
            if !feeder.done() {
                if feeder.failed || !keep_alive {
                    return Ok(End::Linger);
                }
                drain(&mut feeder, io, buf, activity, max_head).await?;
                if !feeder.done() {
                    return Ok(End::Linger);
                }
            }
        }
        if !keep_alive {
            return Ok(if buf.is_empty() {
                End::Close
            } else {
                End::Linger
            });
        }
    }
}

/// Reads and discards the rest of a request body the proxy did not read.
/// Gives up (the connection then closes) past [`MAX_DRAIN`] bytes: a body too large for its
/// route is not read to its end.
async fn drain<S: Stream>(
    feeder: &mut Feeder,
    io: &mut S,
    buf: &mut BytesMut,
    activity: &Activity,
    max_head: usize,
) -> io::Result<()> {
    let mut drained = 0;
    if matches!(feeder.decode, Decode::Length(left) if left > MAX_DRAIN) {
        feeder.failed = true;
        return Ok(());
    }
    loop {
        match feeder.decode.step(buf, max_head) {
            Ok(Step::Frame(frame)) => {
                drained += frame.data_ref().map_or(0, |d| d.len() as u64);
                if drained > MAX_DRAIN {
                    feeder.failed = true;
                    return Ok(());
                }
            }
            Ok(Step::Done) => return Ok(()),
            Ok(Step::More) => {
                let n = poll_fn(|cx| poll_read_buf(io, cx, buf, BODY_READ)).await?;
                if n == 0 {
                    feeder.failed = true;
                    return Ok(());
                }
                activity.read();
            }
            Err(_) => {
                feeder.failed = true;
                return Ok(());
            }
        }
    }
}

async fn write_all<S: AsyncWrite + Unpin>(io: &mut S, mut bytes: &[u8]) -> io::Result<()> {
    while !bytes.is_empty() {
        let n = poll_fn(|cx| Pin::new(&mut *io).poll_write(cx, bytes)).await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        bytes = &bytes[n..];
    }
    poll_fn(|cx| Pin::new(&mut *io).poll_flush(cx)).await
}

#[cfg(test)]
mod tests;
