//! The two body types of the proxy: what goes upstream and what goes back to the client.
//!
//! Both stream frame by frame, so memory per request stays bounded whatever the body size.
//! [`RequestBody`] wraps the client's body and enforces the route's `max_body` as bytes pass.
//! [`ResponseBody`] wraps either the upstream's body or one of the proxy's own short answers,
//! and owns what must happen when the response ends: the upstream connection goes back to
//! its pool only when the body was read to its end, the in-flight count drops, and the
//! access-log entry is written with the bytes actually sent. Both are plain enums/structs, not
//! boxed trait objects, so a request costs no allocation for its body plumbing.

use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use crate::access_log::Pending;
use crate::listener::{h2, http1, RequestGuard};
use crate::upstream::{h1, Connection, InFlight};

/// Why a request body could not be forwarded.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// The body grew past the route's `max_body`.
    #[error("request body larger than {limit} bytes")]
    TooLarge {
        /// The configured limit.
        limit: u64,
    },
    /// Reading from the client failed (it went away or sent a broken body).
    #[error("reading the client's body failed")]
    Client(#[source] ClientBodyError),
}

/// Why reading a client's body failed, as its server reported it.
#[derive(Debug, thiserror::Error)]
pub enum ClientBodyError {
    /// Our HTTP/1.1 server.
    #[error(transparent)]
    H1(#[from] http1::BodyError),
    /// Our HTTP/2 server.
    #[error(transparent)]
    H2(#[from] h2::BodyError),
}

/// A client's request body as its server hands it over.
#[derive(Debug)]
pub enum ClientBody {
    /// The head said there is no body.
    Empty,
    /// Read by our HTTP/1.1 server.
    H1(http1::Body),
    /// An HTTP/2 stream's body, read by our HTTP/2 server.
    H2(h2::Body),
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = ClientBodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ClientBodyError>>> {
        match self.get_mut() {
            ClientBody::Empty => Poll::Ready(None),
            ClientBody::H1(body) => Pin::new(body).poll_frame(cx).map_err(Into::into),
            ClientBody::H2(body) => Pin::new(body).poll_frame(cx).map_err(Into::into),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ClientBody::Empty => true,
            ClientBody::H1(body) => body.is_end_stream(),
            ClientBody::H2(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ClientBody::Empty => SizeHint::with_exact(0),
            ClientBody::H1(body) => body.size_hint(),
            ClientBody::H2(body) => body.size_hint(),
        }
    }
}

/// Why an upstream's response body failed mid-way.
#[derive(Debug, thiserror::Error)]
pub enum ResponseError {
    /// hyper's client (HTTP/2, upgrades) reported it.
    #[error(transparent)]
    Hyper(#[from] hyper::Error),
    /// Our own HTTP/1.1 client reported it.
    #[error(transparent)]
    H1(#[from] h1::Error),
}

/// An upstream's response body: from hyper's client or from our own HTTP/1.1 one.
#[derive(Debug)]
pub enum UpstreamBody {
    /// hyper's client (HTTP/2 pools, upgrades).
    Hyper(Incoming),
    /// Our HTTP/1.1 client (see `upstream::h1`).
    H1(h1::Body),
}

/// A client's request body on its way upstream.
#[derive(Debug)]
pub struct RequestBody {
    inner: Option<ClientBody>,
    limit: u64,
    seen: u64,
}

// === impl RequestBody ===

impl RequestBody {
    /// Wraps a client body; `limit` is the route's `max_body`, if any.
    pub fn new(inner: ClientBody, limit: Option<u64>) -> RequestBody {
        RequestBody {
            inner: Some(inner),
            limit: limit.unwrap_or(u64::MAX),
            seen: 0,
        }
    }

    /// A body with no bytes (retried requests, health checks).
    pub fn empty() -> RequestBody {
        RequestBody {
            inner: None,
            limit: u64::MAX,
            seen: 0,
        }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        match ready!(Pin::new(inner).poll_frame(cx)) {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    this.seen += data.len() as u64;
                    if this.seen > this.limit {
                        this.inner = None;
                        return Poll::Ready(Some(Err(BodyError::TooLarge { limit: this.limit })));
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Some(Err(error)) => Poll::Ready(Some(Err(BodyError::Client(error)))),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(|b| b.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), |b| b.size_hint())
    }
}

/// A response on its way to the client.
#[derive(Debug)]
pub struct ResponseBody {
    kind: Kind,
    /// The upstream connection, returned to its pool once `kind` reaches its end.
    conn: Option<Connection>,
    /// Keeps the upstream's in-flight count up until the body is done.
    in_flight: Option<InFlight>,
    /// The access-log entry, written when the body ends or is dropped.
    log: Option<Pending>,
    /// Keeps the client connection counted as busy (not idle) until the body is done.
    request: Option<RequestGuard>,
    bytes: u64,
}

#[derive(Debug)]
enum Kind {
    Full(Option<Bytes>),
    Upstream(Incoming),
    H1(h1::Body),
}

// === impl ResponseBody ===

impl ResponseBody {
    /// One of the proxy's own short answers.
    pub fn full(bytes: impl Into<Bytes>) -> ResponseBody {
        ResponseBody::new(Kind::Full(Some(bytes.into())))
    }

    /// The upstream's body, with the connection it arrives on and the request's in-flight guard.
    pub fn upstream(body: UpstreamBody, conn: Connection, in_flight: InFlight) -> ResponseBody {
        let kind = match body {
            UpstreamBody::Hyper(body) => Kind::Upstream(body),
            UpstreamBody::H1(body) => Kind::H1(body),
        };
        let mut this = ResponseBody::new(kind);
        this.conn = Some(conn);
        this.in_flight = Some(in_flight);
        this
    }

    fn new(kind: Kind) -> ResponseBody {
        ResponseBody {
            kind,
            conn: None,
            in_flight: None,
            log: None,
            request: None,
            bytes: 0,
        }
    }

    /// Attaches the access-log entry to write when the response is done.
    pub fn with_log(mut self, log: Option<Pending>) -> ResponseBody {
        self.log = log;
        if self.is_end_stream() {
            self.finish(true);
        }
        self
    }

    /// Attaches the client connection's request guard (see `listener`).
    pub fn with_request_guard(mut self, guard: RequestGuard) -> ResponseBody {
        self.request = Some(guard);
        self
    }

    /// Releases what the response held; `complete` says whether the body reached its end.
    fn finish(&mut self, complete: bool) {
        if let Some(conn) = self.conn.take() {
            if complete {
                conn.release();
            }
        }
        self.in_flight = None;
        self.request = None;
        if let Some(log) = self.log.take() {
            log.write(self.bytes);
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = ResponseError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ResponseError>>> {
        let this = self.get_mut();
        let polled = match &mut this.kind {
            Kind::Full(bytes) => bytes.take().map(|b| Ok(Frame::data(b))),
            Kind::Upstream(body) => {
                ready!(Pin::new(body).poll_frame(cx)).map(|r| r.map_err(ResponseError::Hyper))
            }
            Kind::H1(body) => {
                ready!(Pin::new(body).poll_frame(cx)).map(|r| r.map_err(ResponseError::H1))
            }
        };
        match &polled {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    this.bytes += data.len() as u64;
                }
                if this.kind_is_end_stream() {
                    this.finish(true);
                }
            }
            Some(Err(_)) => this.finish(false),
            None => this.finish(true),
        }
        Poll::Ready(polled)
    }

    fn is_end_stream(&self) -> bool {
        self.kind_is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            Kind::Full(None) => SizeHint::with_exact(0),
            Kind::Upstream(body) => body.size_hint(),
            Kind::H1(body) => body.size_hint(),
        }
    }
}

impl ResponseBody {
    fn kind_is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Full(b) => b.is_none(),
            Kind::Upstream(body) => body.is_end_stream(),
            Kind::H1(body) => body.is_end_stream(),
        }
    }
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        let complete = self.kind_is_end_stream();
        self.finish(complete);
    }
}
