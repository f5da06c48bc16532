//! Our own HTTP/1.1 client for `protocol: http1` pools, driven from the request's own task.
//!
//! hyper's client runs a task per upstream connection and hands each request to it through a
//! channel; here a connection is only a socket and a read buffer ([`Conn`]), and the request's
//! task writes the head and body and reads the response itself. The response body
//! ([`Body`]) reads straight from the socket and, once it has reached its end cleanly on a
//! reusable connection, puts the connection back on its upstream's idle list ([`IdlePool`]).
//! An idle connection holds no buffer beyond a small head buffer, and no task.
//!
//! Framing follows RFC 9112: a request with no body carries `content-length: 0` only for
//! POST/PUT/PATCH; a body of known size gets `Content-Length`, any other `Transfer-Encoding:
//! chunked` (its trailers become a trailer section). A response head is at most
//! [`MAX_HEAD`] bytes and [`MAX_HEADERS`] fields; interim `1xx` heads are skipped; the body is
//! chunked, `Content-Length` or read until EOF (then the connection is not reused). When the
//! upstream answers before the request body was fully sent, sending stops and the connection
//! is closed after the response. Upgrades, HTTP/2 and health checks stay on hyper (`client`).

use std::future::poll_fn;
use std::io::{self, Write as _};
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll, Waker};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use http_body::{Body as _, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::client::{DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_IDLE_PER_UPSTREAM, RELEASE_WAIT};
use super::Upstream;
use crate::body::{BodyError, RequestBody};
use crate::proxy::headers;

/// Largest response head (status line, fields, trailer section) accepted.
pub const MAX_HEAD: usize = 64 * 1024;
/// Most fields in a response head or trailer section.
pub const MAX_HEADERS: usize = 100;
/// First read buffer size; grown only for larger heads and bodies.
const INITIAL_READ: usize = 4 * 1024;
/// Field names of the last response kept per connection (see `Conn::field_name`).
const NAMES_KEPT: usize = 16;
/// Largest single body read.
const MAX_READ: usize = 64 * 1024;
/// At most this much of a request body is written together with its head.
const SMALL_BODY: usize = 16 * 1024;
/// How many idle connections per upstream may keep a read buffer grown for large responses.
const KEEP_GROWN_IDLE: usize = 32;
/// An idle connection keeps its head buffer only up to this capacity.
const IDLE_HEAD_BUFFER: usize = 4 * 1024;

/// Why an exchange on our HTTP/1.1 client failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading or writing the socket failed.
    #[error("upstream I/O failed")]
    Io(#[source] io::Error),
    /// The upstream closed the connection before the response was complete.
    #[error("upstream closed the connection mid-response")]
    Incomplete,
    /// The response head or body framing was malformed.
    #[error("malformed upstream response: {0}")]
    Parse(&'static str),
    /// The client's request body failed while being forwarded.
    #[error("request body failed")]
    Body(#[source] BodyError),
}

impl Error {
    /// Whether the upstream sent something that is not valid HTTP/1.1.
    pub fn is_parse(&self) -> bool {
        matches!(self, Error::Parse(_))
    }
}

/// An upstream socket, plaintext or TLS.
#[derive(Debug)]
pub(crate) enum Io {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Io {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Io::Plain(s) => s.is_write_vectored(),
            Io::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// One HTTP/1.1 connection to an upstream: the socket, a read buffer and a head buffer.
#[derive(Debug)]
pub struct Conn {
    io: Io,
    /// Bytes read and not yet consumed; empty while idle, and small (at most
    /// [`INITIAL_READ`]) or unallocated unless among the first [`KEEP_GROWN_IDLE`] idle.
    rbuf: BytesMut,
    /// Whether `rbuf` was grown past [`INITIAL_READ`].
    rbuf_big: bool,
    /// How much the next response head read asks for: the last response's size when it had
    /// a `Content-Length` (to [`MAX_READ`] plus a head), so a whole small-to-medium response comes in one
    /// read; [`INITIAL_READ`] otherwise.
    read_hint: usize,
    /// The request head (and a small body) being written.
    wbuf: Vec<u8>,
    /// Whether it came from the idle list (then a close before any answer is not an error).
    reused: bool,
    /// The field names of the last response, in order: an upstream sends the same ones
    /// each time, and a name found here is not parsed again. Boxed: a connection is moved
    /// several times per request, and the box keeps it small.
    names: Box<Names>,
}

/// The field names of a connection's last response, as sent and as parsed (the first
/// [`NAMES_KEPT`]).
#[derive(Debug, Default)]
struct Names {
    /// The names as sent, one after another.
    raw: Vec<u8>,
    /// Where each ends in `raw`.
    ends: Vec<usize>,
    parsed: Vec<HeaderName>,
}

impl Names {
    /// The `i`th name, if it was sent as `raw` (byte for byte: comparing is then as cheap
    /// as it gets).
    fn get(&self, i: usize, raw: &[u8]) -> Option<&HeaderName> {
        let end = *self.ends.get(i)?;
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        (self.raw[start..end] == *raw).then(|| &self.parsed[i])
    }

    /// Keeps `name`, sent as `raw`, as the `i`th, forgetting those after it.
    fn keep(&mut self, i: usize, raw: &[u8], name: &HeaderName) {
        self.ends.truncate(i);
        self.parsed.truncate(i);
        self.raw.truncate(self.ends.last().copied().unwrap_or(0));
        if i < NAMES_KEPT {
            self.raw.extend_from_slice(raw);
            self.ends.push(self.raw.len());
            self.parsed.push(name.clone());
        }
    }
}

// === impl Conn ===

impl Conn {
    pub(crate) fn new(io: Io) -> Conn {
        Conn {
            io,
            rbuf: BytesMut::new(),
            rbuf_big: false,
            read_hint: INITIAL_READ,
            wbuf: Vec::new(),
            reused: false,
            names: Box::default(),
        }
    }

    /// Whether the idle connection is still open: a non-blocking read that finds EOF, an
    /// error or unsolicited bytes means the upstream closed it (or broke it) meanwhile.
    fn is_open(&mut self) -> bool {
        let mut scratch = [0u8; 8];
        let mut buf = ReadBuf::new(&mut scratch);
        let mut cx = Context::from_waker(Waker::noop());
        matches!(
            Pin::new(&mut self.io).poll_read(&mut cx, &mut buf),
            Poll::Pending
        )
    }

    /// Sends `req` and reads the response head. The response body reads from this
    /// connection and returns it to `upstream`'s idle list when done (see [`Body`]).
    ///
    /// The request stays the caller's: its body is taken out, and put back when the
    /// connection closed before any of it was sent ([`SendError::NotSent`]); a bodyless
    /// request is whole again afterwards, ready for another upstream.
    pub async fn send(
        mut self,
        req: &mut Request<RequestBody>,
        upstream: &Arc<Upstream>,
    ) -> Result<Response<Body>, SendError> {
        let mut body = std::mem::replace(req.body_mut(), RequestBody::empty());
        let empty = body.is_end_stream();
        let exact = body.size_hint().exact();
        let framing = encode_head(&mut self.wbuf, req, empty, exact, &upstream.id);
        let head_only = self.wbuf.len();
        // What of the body has already arrived goes out in the same write as the head, up to
        // a small size; waiting for more would hold back the head (and an early answer).
        let mut consumed = false;
        let mut body_done = empty;
        let mut trailers_sent = false;
        if !empty {
            let wbuf = &mut self.wbuf;
            let gathered = poll_fn(|cx| loop {
                if wbuf.len() - head_only > SMALL_BODY {
                    return Poll::Ready(Ok(false));
                }
                match Pin::new(&mut body).poll_frame(cx) {
                    Poll::Pending => return Poll::Ready(Ok(false)),
                    Poll::Ready(Some(Ok(frame))) => {
                        consumed = true;
                        match frame.into_data() {
                            Ok(data) if framing == ReqFraming::Chunked => {
                                encode_chunk(wbuf, &data);
                            }
                            Ok(data) => wbuf.extend_from_slice(&data),
                            Err(frame) => {
                                if let (Ok(trailers), ReqFraming::Chunked) =
                                    (frame.into_trailers(), framing)
                                {
                                    encode_trailers(wbuf, &trailers);
                                    trailers_sent = true;
                                    return Poll::Ready(Ok(true));
                                }
                            }
                        }
                    }
                    Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(e)),
                    Poll::Ready(None) => {
                        if framing == ReqFraming::Chunked {
                            wbuf.extend_from_slice(b"0\r\n\r\n");
                            trailers_sent = true;
                        }
                        return Poll::Ready(Ok(true));
                    }
                }
            })
            .await;
            match gathered {
                Ok(done) => body_done = done,
                Err(e) => return Err(failed(Error::Body(e))),
            }
        }
        let mut out = Out::new();
        out.trailers_sent = trailers_sent;
        let mut sender = Sending {
            out,
            framing,
            body_done,
        };
        let head = std::mem::take(&mut self.wbuf);
        let written = self.write_all(&head).await;
        self.wbuf = head;
        self.wbuf.clear();
        match written {
            Ok(()) => {}
            Err(0) if !consumed => {
                // Nothing was written: the body goes back into the request.
                *req.body_mut() = body;
                return Err(SendError::NotSent);
            }
            Err(_) => return Err(failed(Error::Incomplete)),
        }
        // Stream the rest of the body, watching for an early answer.
        let mut early = false;
        if !sender.body_done {
            match poll_fn(|cx| self.poll_send_body(cx, &mut body, &mut sender)).await {
                Ok(true) => {}
                Ok(false) => early = true,
                Err(e) => return Err(failed(e)),
            }
        }
        if early {
            // The client may still be sending the rest: read it off (and discard it) so its
            // connection stays in sync for its next request, as hyper's client would while
            // it kept writing. Bounded, off the request path: this is the rare case.
            tokio::spawn(tokio::time::timeout(RELEASE_WAIT, async move {
                while let Some(Ok(_)) = poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {}
            }));
        } else {
            drop(body);
        }
        let head = match poll_fn(|cx| self.poll_head(cx)).await {
            Ok(head) => head,
            Err(Error::Incomplete)
                if self.reused && empty && self.rbuf.is_empty() && req.method().is_idempotent() =>
            {
                // No answer on a pooled connection: most likely the upstream closed it as we
                // used it, but it may also have read the request, acted on it and gone away.
                // Only an idempotent request may go again, to a fresh connection (RFC 9112
                // section 9.3.1: a proxy must not retry a non-idempotent one by itself).
                return Err(SendError::NotSent);
            }
            Err(e) => return Err(failed(e)),
        };
        self.response(head, req.method(), early, upstream)
            .map_err(failed)
    }

    /// Writes all of `bytes`; on failure, how many were written.
    async fn write_all(&mut self, mut bytes: &[u8]) -> Result<(), usize> {
        let total = bytes.len();
        while !bytes.is_empty() {
            match poll_fn(|cx| Pin::new(&mut self.io).poll_write(cx, bytes)).await {
                Ok(0) | Err(_) => return Err(total - bytes.len()),
                Ok(n) => bytes = &bytes[n..],
            }
        }
        Ok(())
    }

    /// Writes the body frames; `Ok(false)` when a final response head arrived first.
    fn poll_send_body(
        &mut self,
        cx: &mut Context<'_>,
        body: &mut RequestBody,
        s: &mut Sending,
    ) -> Poll<Result<bool, Error>> {
        loop {
            // An answer while the body is still going out ends the sending.
            match poll_fill(self, cx, INITIAL_READ) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(Error::Incomplete)),
                Poll::Ready(Ok(_)) => {
                    if has_final_head(&mut self.rbuf)? {
                        return Poll::Ready(Ok(false));
                    }
                    continue;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(Error::Io(e))),
                Poll::Pending => {}
            }
            if !s.out.is_empty() {
                let n = ready!(s.out.poll_write(&mut self.io, cx)).map_err(Error::Io)?;
                if n == 0 {
                    return Poll::Ready(Err(Error::Incomplete));
                }
                continue;
            }
            if s.body_done {
                return Poll::Ready(Ok(true));
            }
            match ready!(Pin::new(&mut *body).poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => s.out.data(data, s.framing == ReqFraming::Chunked),
                    Err(frame) => {
                        if let (Ok(trailers), ReqFraming::Chunked) =
                            (frame.into_trailers(), s.framing)
                        {
                            s.out.trailers(&trailers);
                            s.body_done = true;
                        }
                    }
                },
                Some(Err(e)) => return Poll::Ready(Err(Error::Body(e))),
                None => {
                    if s.framing == ReqFraming::Chunked && !s.out.trailers_sent {
                        s.out.last_chunk();
                    }
                    s.body_done = true;
                }
            }
        }
    }

    /// Reads until a final (non-1xx) response head is complete; returns its length.
    fn poll_head(&mut self, cx: &mut Context<'_>) -> Poll<Result<usize, Error>> {
        loop {
            if let Some(len) = final_head_len(&mut self.rbuf)? {
                return Poll::Ready(Ok(len));
            }
            if self.rbuf.len() >= MAX_HEAD {
                return Poll::Ready(Err(Error::Parse("response head too large")));
            }
            let want = if self.rbuf.is_empty() {
                self.read_hint
            } else {
                INITIAL_READ
            };
            match ready!(poll_fill(self, cx, want)) {
                Ok(0) => return Poll::Ready(Err(Error::Incomplete)),
                Ok(_) => {}
                Err(e) if self.rbuf.is_empty() => {
                    // A reset before any answer reads like a close.
                    tracing::trace!(error = %e, "upstream reset before answering");
                    return Poll::Ready(Err(Error::Incomplete));
                }
                Err(e) => return Poll::Ready(Err(Error::Io(e))),
            }
        }
    }

    /// The name of a response's `i`th field: the last response's when it is the same.
    fn field_name(&mut self, i: usize, raw: &[u8]) -> Result<HeaderName, Error> {
        if let Some(name) = self.names.get(i, raw) {
            return Ok(name.clone());
        }
        let name = HeaderName::from_bytes(raw).map_err(|_| Error::Parse("invalid field name"))?;
        self.names.keep(i, raw, &name);
        Ok(name)
    }

    /// Builds the response from the head of `len` bytes at the front of the read buffer.
    fn response(
        mut self,
        len: usize,
        method: &Method,
        early: bool,
        upstream: &Arc<Upstream>,
    ) -> Result<Response<Body>, Error> {
        let head = self.rbuf.split_to(len).freeze();
        let mut fields = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
        let mut parsed = httparse::Response::new(&mut []);
        match httparse::ParserConfig::default().parse_response_with_uninit_headers(
            &mut parsed,
            &head,
            &mut fields,
        ) {
            Ok(httparse::Status::Complete(_)) => {}
            Err(httparse::Error::TooManyHeaders) => {
                return Err(Error::Parse("too many response fields"))
            }
            _ => return Err(Error::Parse("invalid response head")),
        }
        let status = parsed
            .code
            .and_then(|c| StatusCode::from_u16(c).ok())
            .ok_or(Error::Parse("invalid status"))?;
        if status == StatusCode::SWITCHING_PROTOCOLS {
            // Upgrades go through hyper's client (`client`): this request asked for none, and
            // RFC 9110 section 15.2.2 forbids switching then. A bad answer: 502.
            return Err(Error::Parse(
                "101 Switching Protocols to a request without Upgrade",
            ));
        }
        let http10 = parsed.version == Some(0);
        let mut headers = HeaderMap::with_capacity(parsed.headers.len());
        let mut reusable = !early;
        let mut keep_alive = false;
        let mut chunked = false;
        let mut other_coding = false;
        let mut length: Option<u64> = None;
        // Hop-by-hop fields (SPEC section 4) are read here and not kept, so the proxy does
        // not look for them again (`proxy::respond`). Only a `Connection` that names other
        // fields is kept, for `remove_hop_by_hop` to act on after the loop.
        let mut names_fields = false;
        for (i, field) in parsed.headers.iter().enumerate() {
            let name = self.field_name(i, field.name.as_bytes())?;
            let value = HeaderValue::from_maybe_shared(head.slice_ref(field.value))
                .map_err(|_| Error::Parse("invalid field value"))?;
            if name == header::CONNECTION {
                for token in value.as_bytes().split(|b| *b == b',') {
                    let token = token.trim_ascii();
                    if token.eq_ignore_ascii_case(b"close") {
                        reusable = false;
                    } else if token.eq_ignore_ascii_case(b"keep-alive") {
                        keep_alive = true;
                    } else if !token.is_empty() {
                        names_fields = true;
                    }
                }
                if !names_fields {
                    continue;
                }
            } else if name == header::TRANSFER_ENCODING {
                let last = value.as_bytes().rsplit(|b| *b == b',').next();
                let is_chunked =
                    last.is_some_and(|t| t.trim_ascii().eq_ignore_ascii_case(b"chunked"));
                chunked = is_chunked;
                other_coding = !is_chunked;
                continue;
            } else if headers::is_hop_by_hop(&name) {
                continue;
            } else if name == header::CONTENT_LENGTH {
                for item in value.as_bytes().split(|b| *b == b',') {
                    let n = parse_length(item.trim_ascii())
                        .ok_or(Error::Parse("invalid content-length"))?;
                    if length.is_some_and(|l| l != n) {
                        return Err(Error::Parse("differing content-lengths"));
                    }
                    length = Some(n);
                }
            }
            headers.append(name, value);
        }
        if names_fields {
            headers::remove_hop_by_hop(&mut headers);
        }
        if chunked || other_coding {
            // Transfer-Encoding overrides Content-Length, and a proxy must not pass on the
            // received one (RFC 9112 section 6.3): the two could disagree downstream.
            headers.remove(header::CONTENT_LENGTH);
        }
        if http10 && !keep_alive {
            reusable = false;
        }
        let no_body = *method == Method::HEAD
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED;
        let framing = if no_body {
            Framing::Length(0)
        } else if chunked {
            Framing::Chunked(Chunk::Size)
        } else if other_coding {
            Framing::Eof
        } else {
            match length {
                Some(n) => Framing::Length(n),
                None => Framing::Eof,
            }
        };
        if matches!(framing, Framing::Eof) {
            reusable = false;
        }
        // Room for the head too: a 64 KiB body with its head then comes in one read.
        self.read_hint = match framing {
            Framing::Length(n) => usize::try_from(n)
                .unwrap_or(MAX_READ)
                .saturating_add(len)
                .clamp(INITIAL_READ, MAX_READ + INITIAL_READ),
            _ => INITIAL_READ,
        };
        let mut body = Body {
            conn: Some(self),
            framing,
            reusable,
            upstream: upstream.clone(),
        };
        if let Framing::Length(0) = body.framing {
            body.end();
        }
        let mut response = Response::new(body);
        *response.status_mut() = status;
        *response.version_mut() = Version::HTTP_11;
        *response.headers_mut() = headers;
        Ok(response)
    }

    /// Drops a read buffer grown past [`INITIAL_READ`].
    fn shrink(&mut self) {
        if self.rbuf_big {
            self.rbuf = BytesMut::new();
            self.rbuf_big = false;
        }
    }

    /// Readies the connection for the idle list: an empty read buffer, a small head buffer.
    fn idle(&mut self) {
        // The read buffer stays for the next exchange: its allocation is reused in place
        // once the last response's slices are dropped (a grown one may be dropped by
        // `IdlePool::push`).
        if self.wbuf.capacity() > IDLE_HEAD_BUFFER {
            self.wbuf = Vec::new();
        }
        self.reused = true;
    }
}

/// Why [`Conn::send`] has no response.
#[derive(Debug)]
pub enum SendError {
    /// The connection was closed before any of the request was written, or, for an
    /// idempotent request with no body on a reused connection, before any answer (the usual
    /// sign that the upstream closed it while idle); the request is whole again (its body
    /// put back) and may go to a fresh connection.
    NotSent,
    /// The exchange failed; the request may have reached the upstream.
    Failed(super::ClientError),
}

fn failed(error: Error) -> SendError {
    SendError::Failed(super::ClientError::H1(error))
}

/// Reads more bytes into the connection's read buffer, reserving `want` free bytes first
/// when fewer are free. Once every slice handed out of
/// the buffer is dropped, `reserve` reuses its allocation in place.
fn poll_fill(conn: &mut Conn, cx: &mut Context<'_>, want: usize) -> Poll<io::Result<usize>> {
    let buf = &mut conn.rbuf;
    if buf.capacity() - buf.len() < want {
        buf.reserve(want);
        conn.rbuf_big |= want > INITIAL_READ || buf.len() + want > INITIAL_READ;
    }
    tokio_util::io::poll_read_buf(Pin::new(&mut conn.io), cx, buf)
}

/// Drops complete interim (1xx other than 101) heads at the front of `buf`; the length of a
/// complete final head there, if any. Only finds where heads end and reads their status
/// codes: the final head is parsed once, by [`Conn::response`].
fn final_head_len(buf: &mut BytesMut) -> Result<Option<usize>, Error> {
    loop {
        // Empty lines before a status line are skipped, as httparse does.
        while let Some(skip) = [&b"\r\n"[..], b"\n"].iter().find(|e| buf.starts_with(e)) {
            buf.advance(skip.len());
        }
        if buf.len() >= 5 && !buf.starts_with(b"HTTP/") {
            return Err(Error::Parse("invalid response head"));
        }
        let Some(len) = head_end(buf) else {
            return Ok(None);
        };
        if len > MAX_HEAD {
            return Err(Error::Parse("response head too large"));
        }
        // `HTTP/1.1 100 ...`: the code is bytes 9-11 (a malformed line fails the parse).
        let interim = buf.get(9..12).is_some_and(|code| {
            code[0] == b'1' && code != b"101" && code[1..].iter().all(u8::is_ascii_digit)
        });
        if !interim {
            return Ok(Some(len));
        }
        buf.advance(len);
    }
}

/// The length of the head at the front of `buf` (up to and including its empty line), as
/// httparse counts it: lines end with CRLF or a bare LF.
fn head_end(buf: &[u8]) -> Option<usize> {
    let mut from = 0;
    // `memchr` looks at a vector of bytes per step; the head is 100-300 bytes.
    while let Some(at) = memchr::memchr(b'\n', &buf[from..]) {
        let next = from + at + 1;
        match buf.get(next..next + 2) {
            Some([b'\n', _]) => return Some(next + 1),
            Some(b"\r\n") => return Some(next + 2),
            None if buf.get(next) == Some(&b'\n') => return Some(next + 1),
            _ => from = next,
        }
    }
    None
}

fn has_final_head(buf: &mut BytesMut) -> Result<bool, Error> {
    final_head_len(buf).map(|h| h.is_some())
}

/// A decimal `Content-Length` value.
pub(crate) fn parse_length(text: &[u8]) -> Option<u64> {
    if text.is_empty() || text.len() > 19 || !text.iter().all(u8::is_ascii_digit) {
        return None;
    }
    text.iter().try_fold(0u64, |n, d| {
        n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

/// How the request body is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReqFraming {
    None,
    Length(u64),
    Chunked,
}

/// Writes the request head into `out` (cleared first) and says how the body is framed:
/// `empty` when the body has ended already, `exact` its size when known. A request with no
/// `Host` (an HTTP/1.0 client's, or HTTP/2 without `:authority`) gets `authority`, the
/// upstream's address: HTTP/1.1 requires one (RFC 9112 section 3.2), and NGINX fills in
/// its upstream's name the same way.
fn encode_head<B>(
    out: &mut Vec<u8>,
    parts: &Request<B>,
    empty: bool,
    exact: Option<u64>,
    authority: &str,
) -> ReqFraming {
    out.clear();
    out.extend_from_slice(parts.method().as_str().as_bytes());
    out.push(b' ');
    match parts.uri().path_and_query().map(|p| p.as_str()) {
        Some(target) if !target.is_empty() => out.extend_from_slice(target.as_bytes()),
        _ => out.push(b'/'),
    }
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let mut has_host = false;
    for (name, value) in parts.headers() {
        // The framing fields are ours to write, from the body.
        if name == header::CONTENT_LENGTH || name == header::TRANSFER_ENCODING {
            continue;
        }
        has_host |= name == header::HOST;
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if !has_host {
        out.extend_from_slice(b"host: ");
        out.extend_from_slice(authority.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    let framing = if empty {
        if matches!(*parts.method(), Method::POST | Method::PUT | Method::PATCH) {
            out.extend_from_slice(b"content-length: 0\r\n");
        }
        ReqFraming::None
    } else if let Some(n) = exact {
        // Writing into a `Vec` cannot fail.
        let _ = write!(out, "content-length: {n}\r\n");
        ReqFraming::Length(n)
    } else {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
        ReqFraming::Chunked
    };
    out.extend_from_slice(b"\r\n");
    framing
}

/// Appends one chunk (size line, data, CRLF) of a chunked body; nothing for empty data,
/// which would read as the last chunk.
fn encode_chunk(out: &mut Vec<u8>, data: &[u8]) {
    if data.is_empty() {
        return;
    }
    // Writing into a `Vec` cannot fail.
    let _ = write!(out, "{:x}\r\n", data.len());
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

/// Appends the last chunk and a trailer section.
fn encode_trailers(out: &mut Vec<u8>, trailers: &HeaderMap) {
    out.extend_from_slice(b"0\r\n");
    for (name, value) in trailers.iter().filter(|(name, _)| may_trail(name)) {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// Whether a field may be sent in a trailer section. RFC 9110 section 6.5.1 keeps out of
/// trailers the fields that frame the message, route it, modify or authenticate the request,
/// or say how to process the content; an upstream that merged trailers into the header
/// section would take them as if the client had sent them there (NGINX sends no request
/// trailers at all). gRPC's trailers and checksums pass.
fn may_trail(name: &HeaderName) -> bool {
    ![
        header::CONTENT_LENGTH,
        header::TRANSFER_ENCODING,
        header::HOST,
        header::CONNECTION,
        header::TE,
        header::TRAILER,
        header::UPGRADE,
        header::AUTHORIZATION,
        header::PROXY_AUTHORIZATION,
        header::COOKIE,
        header::CACHE_CONTROL,
        header::EXPECT,
        header::MAX_FORWARDS,
        header::RANGE,
        header::IF_MATCH,
        header::IF_NONE_MATCH,
        header::IF_MODIFIED_SINCE,
        header::IF_UNMODIFIED_SINCE,
        header::CONTENT_ENCODING,
        header::CONTENT_TYPE,
        header::CONTENT_RANGE,
    ]
    .contains(name)
}

/// Sending state of a request body.
struct Sending {
    out: Out,
    framing: ReqFraming,
    body_done: bool,
}

/// Bytes queued for the socket: a framing prefix, a data chunk and a framing suffix.
struct Out {
    prefix: Vec<u8>,
    prefix_at: usize,
    data: Bytes,
    suffix: &'static [u8],
    trailers_sent: bool,
}

impl Out {
    fn new() -> Out {
        Out {
            prefix: Vec::new(),
            prefix_at: 0,
            data: Bytes::new(),
            suffix: b"",
            trailers_sent: false,
        }
    }

    fn is_empty(&self) -> bool {
        self.prefix_at == self.prefix.len() && self.data.is_empty() && self.suffix.is_empty()
    }

    fn data(&mut self, data: Bytes, chunked: bool) {
        self.prefix.clear();
        self.prefix_at = 0;
        if chunked {
            if data.is_empty() {
                return;
            }
            // Writing into a `Vec` cannot fail.
            let _ = write!(self.prefix, "{:x}\r\n", data.len());
            self.suffix = b"\r\n";
        }
        self.data = data;
    }

    fn last_chunk(&mut self) {
        self.prefix.clear();
        self.prefix_at = 0;
        self.prefix.extend_from_slice(b"0\r\n\r\n");
    }

    fn trailers(&mut self, trailers: &HeaderMap) {
        self.prefix.clear();
        self.prefix_at = 0;
        encode_trailers(&mut self.prefix, trailers);
        self.trailers_sent = true;
    }

    fn poll_write(&mut self, io: &mut Io, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let slices = [
            io::IoSlice::new(&self.prefix[self.prefix_at..]),
            io::IoSlice::new(&self.data),
            io::IoSlice::new(self.suffix),
        ];
        let mut n = ready!(Pin::new(io).poll_write_vectored(cx, &slices))?;
        let written = n;
        let p = n.min(self.prefix.len() - self.prefix_at);
        self.prefix_at += p;
        n -= p;
        let d = n.min(self.data.len());
        self.data.advance(d);
        n -= d;
        self.suffix = &self.suffix[n.min(self.suffix.len())..];
        Poll::Ready(Ok(written))
    }
}

/// How the response body is framed, and where its decoding stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// This many bytes are left.
    Length(u64),
    /// Chunked transfer coding.
    Chunked(Chunk),
    /// Until the upstream closes the connection.
    Eof,
    /// The body has ended.
    Done,
}

/// Where chunked decoding stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// Expecting a chunk-size line.
    Size,
    /// Inside a chunk's data, with this many bytes left.
    Data(u64),
    /// Expecting the CRLF after a chunk's data.
    DataEnd,
    /// Expecting the trailer section.
    Trailers,
}

/// A response body read straight from the upstream connection.
#[derive(Debug)]
pub struct Body {
    conn: Option<Conn>,
    framing: Framing,
    reusable: bool,
    upstream: Arc<Upstream>,
}

// === impl Body ===

impl Body {
    /// The body has ended: the connection goes back to the idle list if it can carry
    /// another request (nothing left over, no `close`, read to its end).
    fn end(&mut self) {
        self.framing = Framing::Done;
        if let Some(mut conn) = self.conn.take() {
            if self.reusable && conn.rbuf.is_empty() {
                conn.idle();
                self.upstream.state.h1_idle.push(conn);
            }
        }
    }

    fn fail(&mut self, error: Error) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        self.framing = Framing::Done;
        self.conn = None;
        Poll::Ready(Some(Err(error)))
    }

    /// Takes up to `max` bytes of body data, reading if none is buffered. `None` on EOF.
    fn poll_data(
        conn: &mut Conn,
        cx: &mut Context<'_>,
        max: u64,
    ) -> Poll<Result<Option<Bytes>, Error>> {
        if conn.rbuf.is_empty() {
            let want = usize::try_from(max)
                .unwrap_or(MAX_READ)
                .clamp(INITIAL_READ, MAX_READ);
            match ready!(poll_fill(conn, cx, want)) {
                Ok(0) => return Poll::Ready(Ok(None)),
                Ok(_) => {}
                Err(e) => return Poll::Ready(Err(Error::Io(e))),
            }
        }
        let n = usize::try_from(max)
            .unwrap_or(usize::MAX)
            .min(conn.rbuf.len());
        Poll::Ready(Ok(Some(conn.rbuf.split_to(n).freeze())))
    }

    /// Reads until `buf` holds a full line (ending in CRLF) or fails past `limit` bytes.
    fn poll_line(
        conn: &mut Conn,
        cx: &mut Context<'_>,
        limit: usize,
    ) -> Poll<Result<usize, Error>> {
        loop {
            if let Some(at) = conn.rbuf.windows(2).position(|w| w == b"\r\n") {
                return Poll::Ready(Ok(at));
            }
            if conn.rbuf.len() > limit {
                return Poll::Ready(Err(Error::Parse("chunk framing line too long")));
            }
            match ready!(poll_fill(conn, cx, INITIAL_READ)) {
                Ok(0) => return Poll::Ready(Err(Error::Incomplete)),
                Ok(_) => {}
                Err(e) => return Poll::Ready(Err(Error::Io(e))),
            }
        }
    }
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        let this = self.get_mut();
        loop {
            let Some(conn) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            match this.framing {
                Framing::Done => return Poll::Ready(None),
                Framing::Length(0) => {
                    this.end();
                    return Poll::Ready(None);
                }
                Framing::Length(left) => match ready!(Body::poll_data(conn, cx, left)) {
                    Ok(Some(data)) => {
                        let left = left - data.len() as u64;
                        this.framing = Framing::Length(left);
                        if left == 0 {
                            this.end();
                        }
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                    Ok(None) => return this.fail(Error::Incomplete),
                    Err(e) => return this.fail(e),
                },
                Framing::Eof => match ready!(Body::poll_data(conn, cx, MAX_READ as u64)) {
                    Ok(Some(data)) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                    Ok(None) => {
                        this.end();
                        return Poll::Ready(None);
                    }
                    Err(e) => return this.fail(e),
                },
                Framing::Chunked(Chunk::Size) => {
                    let line = match ready!(Body::poll_line(conn, cx, 1024)) {
                        Ok(line) => line,
                        Err(e) => return this.fail(e),
                    };
                    let size = match parse_chunk_size(&conn.rbuf[..line]) {
                        Some(size) => size,
                        None => return this.fail(Error::Parse("invalid chunk size")),
                    };
                    conn.rbuf.advance(line + 2);
                    this.framing = Framing::Chunked(match size {
                        0 => Chunk::Trailers,
                        n => Chunk::Data(n),
                    });
                }
                Framing::Chunked(Chunk::Data(left)) => {
                    match ready!(Body::poll_data(conn, cx, left)) {
                        Ok(Some(data)) => {
                            let left = left - data.len() as u64;
                            this.framing = Framing::Chunked(match left {
                                0 => Chunk::DataEnd,
                                n => Chunk::Data(n),
                            });
                            return Poll::Ready(Some(Ok(Frame::data(data))));
                        }
                        Ok(None) => return this.fail(Error::Incomplete),
                        Err(e) => return this.fail(e),
                    }
                }
                Framing::Chunked(Chunk::DataEnd) => {
                    match ready!(Body::poll_line(conn, cx, 2)) {
                        Ok(0) => {}
                        Ok(_) => return this.fail(Error::Parse("chunk data longer than its size")),
                        Err(e) => return this.fail(e),
                    }
                    conn.rbuf.advance(2);
                    this.framing = Framing::Chunked(Chunk::Size);
                }
                Framing::Chunked(Chunk::Trailers) => {
                    if conn.rbuf.starts_with(b"\r\n") {
                        conn.rbuf.advance(2);
                        this.end();
                        return Poll::Ready(None);
                    }
                    match parse_trailers(&mut conn.rbuf) {
                        Ok(Some(trailers)) => {
                            this.end();
                            return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
                        }
                        Ok(None) => {}
                        Err(e) => return this.fail(e),
                    }
                    if conn.rbuf.len() >= MAX_HEAD {
                        return this.fail(Error::Parse("trailer section too large"));
                    }
                    match ready!(poll_fill(conn, cx, INITIAL_READ)) {
                        Ok(0) => return this.fail(Error::Incomplete),
                        Ok(_) => {}
                        Err(e) => return this.fail(Error::Io(e)),
                    }
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.framing == Framing::Done || self.framing == Framing::Length(0)
    }

    fn size_hint(&self) -> SizeHint {
        match self.framing {
            Framing::Length(n) => SizeHint::with_exact(n),
            Framing::Done => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}

/// The size of a chunk-size line (hex digits, then optional extensions after `;`).
pub(crate) fn parse_chunk_size(line: &[u8]) -> Option<u64> {
    let end = line
        .iter()
        .position(|b| !b.is_ascii_hexdigit())
        .unwrap_or(line.len());
    let (digits, rest) = line.split_at(end);
    if digits.is_empty() || digits.len() > 15 {
        return None;
    }
    let rest = rest.trim_ascii_start();
    if !(rest.is_empty() || rest.starts_with(b";")) {
        return None;
    }
    digits.iter().try_fold(0u64, |n, d| {
        let v = (*d as char).to_digit(16)?;
        Some(n * 16 + u64::from(v))
    })
}

/// A complete trailer section at the front of `buf` (consumed), if there is one.
fn parse_trailers(buf: &mut BytesMut) -> Result<Option<HeaderMap>, Error> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let (len, fields) = match httparse::parse_headers(buf, &mut fields) {
        Ok(httparse::Status::Complete(done)) => done,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(Error::Parse("invalid trailer section")),
    };
    let mut trailers = HeaderMap::with_capacity(fields.len());
    for field in fields {
        let name = HeaderName::from_bytes(field.name.as_bytes())
            .map_err(|_| Error::Parse("invalid trailer name"))?;
        let value =
            HeaderValue::from_bytes(field.value).map_err(|_| Error::Parse("invalid trailer"))?;
        trailers.append(name, value);
    }
    buf.advance(len);
    Ok(Some(trailers))
}

/// The idle connections of one upstream for our client, newest last.
#[derive(Debug, Default)]
pub(crate) struct IdlePool {
    list: Mutex<Vec<(Conn, Instant)>>,
}

// === impl IdlePool ===

impl IdlePool {
    /// The newest idle connection still open, dropping stale and closed ones on the way.
    pub(crate) fn pop(&self) -> Option<Conn> {
        let now = Instant::now();
        loop {
            let (mut conn, since) = {
                let mut list = self.list.lock().unwrap_or_else(|e| e.into_inner());
                list.pop()?
            };
            if now.duration_since(since) < DEFAULT_IDLE_TIMEOUT && conn.is_open() {
                return Some(conn);
            }
        }
    }

    fn push(&self, mut conn: Conn) {
        let now = Instant::now();
        let mut list = self.list.lock().unwrap_or_else(|e| e.into_inner());
        // The oldest sits at the front; drop it once stale so a shrunk pool closes sockets.
        if list
            .first()
            .is_some_and(|(_, since)| now.duration_since(*since) >= DEFAULT_IDLE_TIMEOUT)
        {
            list.remove(0);
        }
        if list.len() < DEFAULT_MAX_IDLE_PER_UPSTREAM {
            // Reallocating a 64 KiB buffer per large response costs more than the response's
            // own work (allocator trims and page faults), so the first few idle connections
            // keep theirs; past that, idle memory stays small.
            if list.len() >= KEEP_GROWN_IDLE {
                conn.shrink();
            }
            list.push((conn, now));
        }
    }

    /// Number of idle connections (status pages and tests).
    pub(crate) fn len(&self) -> usize {
        self.list.lock().map_or(0, |l| l.len())
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use http_body_util::BodyExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;
    use crate::upstream::Source;

    fn head(req: http::request::Builder, empty: bool, exact: Option<u64>) -> (String, ReqFraming) {
        let req = req.body(()).unwrap();
        let mut out = Vec::new();
        let framing = encode_head(&mut out, &req, empty, exact, "10.0.0.1:80");
        (String::from_utf8(out).unwrap(), framing)
    }

    #[test]
    fn request_heads_frame_the_body_by_method_and_size() {
        let (text, framing) = head(
            Request::get("http://a/p?q=1").header("x-a", "1"),
            true,
            None,
        );
        // No `Host` (HTTP/1.0, HTTP/2 without `:authority`): the upstream's address stands in.
        assert_eq!(
            text,
            "GET /p?q=1 HTTP/1.1\r\nx-a: 1\r\nhost: 10.0.0.1:80\r\n\r\n"
        );
        let (text, _) = head(Request::get("/").header("host", "a.example"), true, None);
        assert_eq!(text, "GET / HTTP/1.1\r\nhost: a.example\r\n\r\n");
        assert_eq!(framing, ReqFraming::None);
        let (text, _) = head(Request::post("/"), true, None);
        assert_eq!(
            text,
            "POST / HTTP/1.1\r\nhost: 10.0.0.1:80\r\ncontent-length: 0\r\n\r\n"
        );
        let (text, framing) = head(
            Request::put("/u").header("content-length", "9"),
            false,
            Some(5),
        );
        assert_eq!(
            text,
            "PUT /u HTTP/1.1\r\nhost: 10.0.0.1:80\r\ncontent-length: 5\r\n\r\n"
        );
        assert_eq!(framing, ReqFraming::Length(5));
        let (text, framing) = head(
            Request::post("/c")
                .header("transfer-encoding", "chunked")
                .header("cookie", "a")
                .header("cookie", "b"),
            false,
            None,
        );
        assert_eq!(
            text,
            "POST /c HTTP/1.1\r\ncookie: a\r\ncookie: b\r\nhost: 10.0.0.1:80\r\n\
             transfer-encoding: chunked\r\n\r\n"
        );
        assert_eq!(framing, ReqFraming::Chunked);
    }

    #[test]
    fn request_trailers_keep_out_what_rfc_9110_keeps_out() {
        // Audit B-F6: `Host`, `Transfer-Encoding` and `Content-Length` went on as trailers.
        let mut trailers = HeaderMap::new();
        for (name, value) in [
            ("host", "evil"),
            ("transfer-encoding", "gzip"),
            ("content-length", "5"),
            ("authorization", "x"),
            ("grpc-status", "0"),
            ("x-checksum", "abc"),
        ] {
            trailers.insert(
                HeaderName::from_static(name),
                HeaderValue::from_static(value),
            );
        }
        let mut out = Vec::new();
        encode_trailers(&mut out, &trailers);
        assert_eq!(out, b"0\r\ngrpc-status: 0\r\nx-checksum: abc\r\n\r\n");
    }

    #[test]
    fn chunk_sizes_and_lengths_are_parsed_strictly() {
        assert_eq!(parse_chunk_size(b"1a"), Some(26));
        assert_eq!(parse_chunk_size(b"10;ext=1"), Some(16));
        assert_eq!(parse_chunk_size(b"0"), Some(0));
        assert_eq!(parse_chunk_size(b""), None);
        assert_eq!(parse_chunk_size(b"-1"), None);
        assert_eq!(parse_chunk_size(b"1x"), None);
        assert_eq!(parse_chunk_size(b"1234567890abcdef0"), None, "overflow");
        assert_eq!(parse_length(b"42"), Some(42));
        assert_eq!(parse_length(b"+4"), None);
        assert_eq!(parse_length(b""), None);
        assert_eq!(parse_length(b"99999999999999999999"), None);
    }

    #[test]
    fn interim_heads_are_skipped_and_oversized_ones_refused() {
        let mut buf = BytesMut::from(&b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n\r\n"[..]);
        assert_eq!(final_head_len(&mut buf).unwrap(), Some(19));
        assert!(buf.starts_with(b"HTTP/1.1 200"));
        let mut partial = BytesMut::from(&b"HTTP/1.1 200 OK\r\nx: 1\r\n"[..]);
        assert_eq!(final_head_len(&mut partial).unwrap(), None);
        partial.extend_from_slice(b"\r");
        assert_eq!(final_head_len(&mut partial).unwrap(), None);
        partial.extend_from_slice(b"\nbody");
        assert_eq!(final_head_len(&mut partial).unwrap(), Some(25));
        // Bare LF line ends, and empty lines before the status line.
        let mut bare =
            BytesMut::from(&b"\r\n\nHTTP/1.1 103 Early\nlink: x\n\nHTTP/1.1 204 No\n\n"[..]);
        assert_eq!(final_head_len(&mut bare).unwrap(), Some(17));
        assert!(bare.starts_with(b"HTTP/1.1 204"));
        // A switch is final; garbage fails at once, before any empty line.
        let mut switch = BytesMut::from(&b"HTTP/1.1 101 Switching\r\n\r\n"[..]);
        assert_eq!(final_head_len(&mut switch).unwrap(), Some(26));
        assert!(final_head_len(&mut BytesMut::from(&b"SSH-2.0-x"[..])).is_err());
        let mut huge = BytesMut::from(&b"HTTP/1.1 200 OK\r\n"[..]);
        huge.extend_from_slice(&vec![b'x'; MAX_HEAD]);
        huge.extend_from_slice(b": v\r\n\r\n");
        assert!(final_head_len(&mut huge).is_err());
    }

    /// A one-connection upstream that answers each request head with the next of `answers`,
    /// then closes.
    async fn upstream(answers: Vec<Vec<u8>>) -> Arc<Upstream> {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut sock, _) = listener.accept().await.unwrap();
            let mut seen = Vec::new();
            for answer in answers {
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    let mut chunk = [0u8; 1024];
                    match sock.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&chunk[..n]),
                    }
                }
                seen.clear();
                if sock.write_all(&answer).await.is_err() {
                    return;
                }
            }
        });
        Arc::new(Upstream::new(addr, 1, Source::Static))
    }

    async fn connect(upstream: &Upstream) -> Conn {
        Conn::new(Io::Plain(TcpStream::connect(upstream.addr).await.unwrap()))
    }

    async fn get(
        conn: Conn,
        method: Method,
        up: &Arc<Upstream>,
    ) -> Result<Response<Body>, SendError> {
        let mut req = Request::new(RequestBody::empty());
        *req.method_mut() = method;
        conn.send(&mut req, up).await
    }

    fn error_of(result: Result<Response<Body>, SendError>) -> String {
        match result {
            Err(SendError::Failed(e)) => crate::error_chain(&e),
            Err(SendError::NotSent) => "not sent".into(),
            Ok(r) => panic!("expected an error, got {}", r.status()),
        }
    }

    #[tokio::test]
    async fn a_sized_body_is_read_and_the_connection_pooled() {
        let up = upstream(vec![
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello".to_vec(),
            b"HTTP/1.1 204 No Content\r\n\r\n".to_vec(),
        ])
        .await;
        let response = get(connect(&up).await, Method::GET, &up).await.unwrap();
        assert_eq!(response.version(), Version::HTTP_11);
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, "hello");
        assert_eq!(up.state.h1_idle.len(), 1, "read to its end: pooled");
        let conn = up.state.h1_idle.pop().unwrap();
        let response = get(conn, Method::GET, &up).await.unwrap();
        assert_eq!(response.status(), 204);
        assert!(response.body().is_end_stream());
        assert_eq!(up.state.h1_idle.len(), 1, "a bodyless answer pools at once");
    }

    #[tokio::test]
    async fn field_names_kept_from_the_last_response_are_reused_only_when_they_match() {
        let up = upstream(vec![
            b"HTTP/1.1 200 OK\r\nServer: a\r\nX-One: 1\r\nContent-Length: 0\r\n\r\n".to_vec(),
            // Same names in other cases, then a different name where `x-one` was.
            b"HTTP/1.1 200 OK\r\nSERVER: b\r\nX-Two: 2\r\ncontent-length: 0\r\n\r\n".to_vec(),
            b"HTTP/1.1 200 OK\r\nSERVER: c\r\nX-Two: 3\r\ncontent-length: 0\r\n\r\n".to_vec(),
        ])
        .await;
        let first = get(connect(&up).await, Method::GET, &up).await.unwrap();
        assert_eq!(first.headers()["x-one"], "1");
        let conn = up.state.h1_idle.pop().unwrap();
        let second = get(conn, Method::GET, &up).await.unwrap();
        let names: Vec<&str> = second.headers().keys().map(|n| n.as_str()).collect();
        assert_eq!(names, ["server", "x-two", "content-length"]);
        assert_eq!(second.headers()["server"], "b");
        assert!(!second.headers().contains_key("x-one"));
        // The same names again: taken from the connection's list.
        let conn = up.state.h1_idle.pop().unwrap();
        let third = get(conn, Method::GET, &up).await.unwrap();
        assert_eq!(third.headers()["x-two"], "3");
        assert_eq!(third.headers().len(), 3);
    }

    #[tokio::test]
    async fn a_chunked_body_with_trailers_is_decoded() {
        let up = upstream(vec![b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n\
            Transfer-Encoding: gzip, chunked\r\nContent-Length: 99\r\n\r\n3;x=y\r\nhel\r\n2\r\nlo\r\n0\r\nx-sum: 9\r\n\r\n"
            .to_vec()])
        .await;
        let response = get(connect(&up).await, Method::GET, &up).await.unwrap();
        assert_eq!(response.status(), 200);
        assert!(!response.headers().contains_key("content-length"));
        let collected = response.into_body().collect().await.unwrap();
        assert_eq!(collected.trailers().unwrap()["x-sum"], "9");
        assert_eq!(collected.to_bytes(), "hello");
        assert_eq!(up.state.h1_idle.len(), 1);
    }

    #[tokio::test]
    async fn close_eof_bodies_and_http10_are_not_pooled() {
        for answer in [
            &b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok"[..],
            b"HTTP/1.1 200 OK\r\n\r\nuntil the end",
            b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok",
        ] {
            let up = upstream(vec![answer.to_vec()]).await;
            let response = get(connect(&up).await, Method::GET, &up).await.unwrap();
            let body = response.into_body().collect().await.unwrap().to_bytes();
            assert!(!body.is_empty());
            assert_eq!(
                up.state.h1_idle.len(),
                0,
                "{}",
                String::from_utf8_lossy(answer)
            );
        }
    }

    #[tokio::test]
    async fn a_head_answer_has_no_body() {
        let up = upstream(vec![
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n".to_vec()
        ])
        .await;
        let response = get(connect(&up).await, Method::HEAD, &up).await.unwrap();
        assert_eq!(response.headers()["content-length"], "5");
        assert!(response.body().is_end_stream());
        assert_eq!(up.state.h1_idle.len(), 1);
    }

    #[tokio::test]
    async fn malformed_answers_fail_the_exchange() {
        let mut huge = b"HTTP/1.1 200 OK\r\n".to_vec();
        for _ in 0..50 {
            huge.extend_from_slice(format!("x-big: {}\r\n", "v".repeat(1400)).as_bytes());
        }
        huge.extend_from_slice(b"\r\n");
        let mut many = b"HTTP/1.1 200 OK\r\n".to_vec();
        for i in 0..=MAX_HEADERS {
            many.extend_from_slice(format!("x-{i}: v\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        for (answer, want) in [
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nok".to_vec(),
                "differing",
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n".to_vec(),
                "content-length",
            ),
            (b"NOT HTTP\r\n\r\n".to_vec(), "invalid response head"),
            (
                b"HTTP/1.1 200 OK\r\nbad field\r\n\r\n".to_vec(),
                "invalid response head",
            ),
            (many, "too many response fields"),
            (huge, "too large"),
            // Audit B-F4: passed on to a client that asked for no upgrade.
            (
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: foo\r\nConnection: upgrade\r\n\r\n"
                    .to_vec(),
                "101 Switching Protocols",
            ),
        ] {
            let up = upstream(vec![answer]).await;
            let error = error_of(get(connect(&up).await, Method::GET, &up).await);
            assert!(error.contains(want), "{error}");
        }
        let up = upstream(vec![
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n".to_vec(),
        ])
        .await;
        let response = get(connect(&up).await, Method::GET, &up).await.unwrap();
        assert!(response.into_body().collect().await.is_err());
        assert_eq!(up.state.h1_idle.len(), 0);
    }

    #[tokio::test]
    async fn a_reused_connection_closed_before_answering_gives_an_idempotent_request_back() {
        let up = upstream(vec![]).await;
        let mut conn = connect(&up).await;
        conn.reused = true;
        assert_eq!(error_of(get(conn, Method::GET, &up).await), "not sent");
        // A non-idempotent request may have been acted on: it is not given back.
        let up = upstream(vec![]).await;
        let mut conn = connect(&up).await;
        conn.reused = true;
        let error = error_of(get(conn, Method::POST, &up).await);
        assert!(
            error.contains("closed"),
            "a POST is not given back: {error}"
        );
        let up = upstream(vec![]).await;
        let error = error_of(get(connect(&up).await, Method::GET, &up).await);
        assert!(
            error.contains("closed"),
            "a fresh connection's close is an error: {error}"
        );
    }

    #[tokio::test]
    async fn checkout_skips_a_pooled_connection_the_upstream_closed() {
        let up = upstream(vec![
            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n".to_vec()
        ])
        .await;
        let response = get(connect(&up).await, Method::GET, &up).await.unwrap();
        assert!(response.body().is_end_stream());
        assert_eq!(up.state.h1_idle.len(), 1);
        // The test upstream closes after its last answer.
        let deadline = Instant::now() + std::time::Duration::from_secs(5);
        while up
            .state
            .h1_idle
            .list
            .lock()
            .unwrap()
            .last_mut()
            .is_some_and(|(c, _)| c.is_open())
        {
            assert!(
                Instant::now() < deadline,
                "the upstream's close was never seen"
            );
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        assert!(up.state.h1_idle.pop().is_none());
    }
}
