//! Keep-alive HTTP/1.1 connections to upstreams, pooled per upstream.
//!
//! Each [`Upstream`] owns its idle connections, so pools carry over a config reload with the
//! upstream and no request touches another upstream's pool: the only lock is the short
//! per-upstream one around the idle list (never held across `.await`). We pool ourselves
//! instead of using hyper-util's legacy client for two reasons: connecting is a separate step
//! from sending, so a failed connect leaves the request (and its body) in our hands for a retry
//! on another upstream; and `try_send_request` hands back a request that was never written on
//! a connection the upstream had just closed, so that race costs no retry and no error.
//! A connection goes back to the idle list only when its response body was read to the end
//! (see `crate::body`) *and* hyper reports it ready for another request: an upstream may
//! answer before it has read the whole request body (a 401 to an upload), and until that body
//! is written the connection cannot carry a new request. Such a connection waits for
//! readiness in a small task, off the request path and bounded by [`RELEASE_WAIT`]; one
//! abandoned mid-body is dropped, which closes it. So checkout never waits on a pooled one.
//!
//! HTTP/2 pools (`protocol: h2`) instead share one multiplexed connection per upstream
//! ([`SharedH2`], also on the [`Upstream`]): every request clones its sender, and a closed
//! one (GOAWAY, reset, idle close) is replaced by a fresh connection on the next checkout.
//! Requests beyond the upstream's `SETTINGS_MAX_CONCURRENT_STREAMS` wait inside hyper for a
//! free stream. A [`Connector`] holds what a pool needs to reach its upstreams: protocol,
//! TLS (see `tls`) and `connect_timeout`. The TLS handshake counts as part of connecting, so a
//! failed one leaves the request to be retried on another upstream like a refused connect.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use http::uri::{Authority, Scheme, Uri};
use http::{header, Request, Response, Version};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper::rt::{Read, Write};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::tls::UpstreamTls;
use super::Upstream;
use crate::body::RequestBody;
use crate::config::Protocol;

/// Most idle connections kept per upstream; more are closed when released.
pub const DEFAULT_MAX_IDLE_PER_UPSTREAM: usize = 1024;
/// An idle connection older than this is closed instead of reused.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// How long a released connection may take to become ready (its request body still being
/// written) before it is closed instead of pooled.
pub const RELEASE_WAIT: Duration = Duration::from_secs(10);

/// Why a connection or an exchange with an upstream failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The TCP connect did not finish within `connect_timeout`.
    #[error("connect timed out")]
    ConnectTimeout,
    /// The TCP connect failed (refused, unreachable).
    #[error("connect failed")]
    Connect(#[source] std::io::Error),
    /// The TLS handshake failed (untrusted certificate, wrong name, no common ALPN).
    #[error("TLS handshake failed")]
    Tls(#[source] std::io::Error),
    /// The HTTP handshake on a fresh connection failed.
    #[error("connection handshake failed")]
    Handshake(#[source] hyper::Error),
    /// The upstream closed a fresh connection before the request could be written.
    #[error("upstream closed the connection before the request was sent")]
    Closed,
    /// The exchange failed after the request may have been written.
    #[error("upstream exchange failed")]
    Exchange(#[source] hyper::Error),
    /// The exchange on our own HTTP/1.1 client (see `h1`) failed.
    #[error("upstream exchange failed")]
    H1(#[source] super::h1::Error),
}

/// The idle keep-alive connections of one upstream, newest last.
#[derive(Debug, Default)]
pub(crate) struct IdleConnections {
    list: Mutex<VecDeque<Idle>>,
}

#[derive(Debug)]
struct Idle {
    sender: http1::SendRequest<RequestBody>,
    since: Instant,
}

impl IdleConnections {
    /// The newest idle connection that can take a request now.
    fn pop(&self) -> Option<http1::SendRequest<RequestBody>> {
        let now = Instant::now();
        let mut list = self.list.lock().unwrap_or_else(|e| e.into_inner());
        while let Some(idle) = list.pop_back() {
            // Only ready connections are pooled; one that is not ready now was closed by the
            // upstream meanwhile, so it is dropped rather than awaited.
            if idle.sender.is_ready() && now.duration_since(idle.since) < DEFAULT_IDLE_TIMEOUT {
                return Some(idle.sender);
            }
        }
        None
    }

    fn push(&self, sender: http1::SendRequest<RequestBody>) {
        let now = Instant::now();
        let mut list = self.list.lock().unwrap_or_else(|e| e.into_inner());
        // The oldest entry sits at the front; drop it once it is stale so a pool that
        // shrank after a burst does not keep hundreds of sockets open forever.
        if list.front().is_some_and(|old| {
            old.sender.is_closed() || now.duration_since(old.since) >= DEFAULT_IDLE_TIMEOUT
        }) {
            list.pop_front();
        }
        if list.len() < DEFAULT_MAX_IDLE_PER_UPSTREAM {
            list.push_back(Idle { sender, since: now });
        }
    }

    /// Number of idle connections (for status pages and tests).
    pub(crate) fn len(&self) -> usize {
        self.list.lock().map_or(0, |l| l.len())
    }
}

/// The shared HTTP/2 connection of one upstream, replaced when it closes.
#[derive(Debug, Default)]
pub(crate) struct SharedH2 {
    sender: ArcSwapOption<http2::SendRequest<RequestBody>>,
}

impl SharedH2 {
    /// A sender on the shared connection, if it is open.
    fn get(&self) -> Option<http2::SendRequest<RequestBody>> {
        let guard = self.sender.load();
        let sender = guard.as_deref()?;
        sender.is_ready().then(|| sender.clone())
    }

    fn set(&self, sender: &http2::SendRequest<RequestBody>) {
        self.sender.store(Some(Arc::new(sender.clone())));
    }

    /// Whether an open shared connection exists (for status pages and tests).
    pub(crate) fn is_open(&self) -> bool {
        self.sender.load().as_deref().is_some_and(|s| s.is_ready())
    }
}

/// How a pool reaches its upstreams: protocol, optional TLS and the connect deadline.
#[derive(Debug, Clone)]
pub struct Connector {
    protocol: Protocol,
    tls: Option<UpstreamTls>,
    connect_timeout: Duration,
}

// === impl Connector ===

impl Connector {
    /// A connector speaking `protocol`, over `tls` when given.
    pub fn new(protocol: Protocol, tls: Option<UpstreamTls>, connect_timeout: Duration) -> Self {
        Connector {
            protocol,
            tls,
            connect_timeout,
        }
    }

    /// Plaintext HTTP/1.1 (health probes, tests).
    pub fn http1(connect_timeout: Duration) -> Connector {
        Connector::new(Protocol::Http1, None, connect_timeout)
    }

    /// The protocol spoken to upstreams.
    pub fn protocol(&self) -> Protocol {
        self.protocol
    }

    /// A pooled connection to `upstream` (idle HTTP/1.1 or the shared HTTP/2 one), or a new one.
    pub async fn checkout(&self, upstream: &Arc<Upstream>) -> Result<Connection, ClientError> {
        let pooled = match self.protocol {
            Protocol::Http1 => upstream.state.idle.pop().map(Sender::Http1),
            Protocol::H2 => upstream.state.h2.get().map(|s| self.h2_sender(s)),
        };
        match pooled {
            Some(sender) => Ok(Connection {
                sender,
                upstream: upstream.clone(),
            }),
            // Boxed: opening (connect, TLS, handshake) is a large future that most requests,
            // served by a pooled connection, never need; inline, every request's future would
            // carry its size, and hyper keeps that future per client connection.
            None => Box::pin(self.open(upstream)).await,
        }
    }

    /// Opens a fresh connection to `upstream`; for HTTP/2 it becomes the shared one.
    pub async fn open(&self, upstream: &Arc<Upstream>) -> Result<Connection, ClientError> {
        let stream = tokio::time::timeout(self.connect_timeout, self.dial(upstream))
            .await
            .map_err(|_| ClientError::ConnectTimeout)??;
        let sender = match stream {
            Stream::Plain(tcp) => self.handshake(upstream, TokioIo::new(tcp)).await?,
            Stream::Tls(tls) => self.handshake(upstream, TokioIo::new(tls)).await?,
        };
        Ok(Connection {
            sender,
            upstream: upstream.clone(),
        })
    }

    /// Opens a fresh connection to `upstream` for our own HTTP/1.1 client (see `h1`).
    pub(crate) async fn open_h1(
        &self,
        upstream: &Upstream,
    ) -> Result<super::h1::Conn, ClientError> {
        let stream = tokio::time::timeout(self.connect_timeout, self.dial(upstream))
            .await
            .map_err(|_| ClientError::ConnectTimeout)??;
        Ok(super::h1::Conn::new(match stream {
            Stream::Plain(tcp) => super::h1::Io::Plain(tcp),
            Stream::Tls(tls) => super::h1::Io::Tls(tls),
        }))
    }

    /// TCP connect and, with TLS, the TLS handshake.
    async fn dial(&self, upstream: &Upstream) -> Result<Stream, ClientError> {
        let tcp = TcpStream::connect(upstream.addr)
            .await
            .map_err(ClientError::Connect)?;
        // Small requests and responses must not wait for Nagle.
        tcp.set_nodelay(true).map_err(ClientError::Connect)?;
        match &self.tls {
            None => Ok(Stream::Plain(tcp)),
            Some(tls) => tls
                .connect(upstream.addr.ip(), tcp)
                .await
                .map(|s| Stream::Tls(Box::new(s)))
                .map_err(ClientError::Tls),
        }
    }

    async fn handshake<I>(&self, upstream: &Upstream, io: I) -> Result<Sender, ClientError>
    where
        I: Read + Write + Unpin + Send + 'static,
    {
        let id = upstream.id.clone();
        match self.protocol {
            Protocol::Http1 => {
                let (sender, conn) = http1::Builder::new()
                    .handshake(io)
                    .await
                    .map_err(ClientError::Handshake)?;
                tokio::spawn(async move {
                    if let Err(error) = conn.with_upgrades().await {
                        tracing::debug!(upstream = %id, %error, "upstream connection ended with an error");
                    }
                });
                Ok(Sender::Http1(sender))
            }
            Protocol::H2 => {
                let (sender, conn) = http2::Builder::new(TokioExecutor::new())
                    .timer(TokioTimer::new())
                    .adaptive_window(true)
                    .handshake(io)
                    .await
                    .map_err(ClientError::Handshake)?;
                tokio::spawn(async move {
                    if let Err(error) = conn.await {
                        tracing::debug!(upstream = %id, %error, "upstream h2 connection ended with an error");
                    }
                });
                upstream.state.h2.set(&sender);
                Ok(self.h2_sender(sender))
            }
        }
    }

    fn h2_sender(&self, sender: http2::SendRequest<RequestBody>) -> Sender {
        let scheme = match self.tls {
            Some(_) => Scheme::HTTPS,
            None => Scheme::HTTP,
        };
        Sender::H2 { sender, scheme }
    }
}

/// A fresh upstream socket, plaintext or TLS.
enum Stream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

/// One connection checked out of an upstream's pool, ready to send a request.
#[derive(Debug)]
pub struct Connection {
    sender: Sender,
    upstream: Arc<Upstream>,
}

#[derive(Debug)]
enum Sender {
    /// An HTTP/1.1 connection of its own.
    Http1(http1::SendRequest<RequestBody>),
    /// A handle on the upstream's shared HTTP/2 connection.
    H2 {
        sender: http2::SendRequest<RequestBody>,
        scheme: Scheme,
    },
    /// Taken over by an upgrade; sends nothing more.
    Upgraded,
    /// Our own HTTP/1.1 client's: the response body owns the socket and pools it (see `h1`).
    Detached,
}

/// Outcome of [`Connection::send`] when it failed.
#[derive(Debug)]
pub enum SendError {
    /// The connection was closed before the request was written; here it is back.
    NotSent(Box<Request<RequestBody>>),
    /// The exchange failed; the request may have reached the upstream.
    Failed(ClientError),
}

// === impl Connection ===

impl Connection {
    /// Takes an idle HTTP/1.1 connection to `upstream`, or opens a new plaintext one within
    /// `connect_timeout` (see [`Connector::checkout`] for the other protocols).
    pub async fn checkout(
        upstream: &Arc<Upstream>,
        connect_timeout: Duration,
    ) -> Result<Connection, ClientError> {
        Connector::http1(connect_timeout).checkout(upstream).await
    }

    /// Opens a fresh plaintext HTTP/1.1 connection to `upstream`.
    pub async fn open(
        upstream: &Arc<Upstream>,
        connect_timeout: Duration,
    ) -> Result<Connection, ClientError> {
        Connector::http1(connect_timeout).open(upstream).await
    }

    /// A placeholder for an exchange on our own HTTP/1.1 client, whose response body owns
    /// the socket and returns it to the idle list itself; [`Connection::release`] is a no-op.
    pub(crate) fn detached(upstream: Arc<Upstream>) -> Connection {
        Connection {
            sender: Sender::Detached,
            upstream,
        }
    }

    /// The upstream at the other end.
    pub fn upstream(&self) -> &Arc<Upstream> {
        &self.upstream
    }

    /// Marks the connection as taken over by an upgrade (the upstream answered `101`): it now
    /// carries a tunnel, so [`Connection::release`] will never pool it.
    pub fn upgraded(&mut self) {
        self.sender = Sender::Upgraded;
    }

    /// Sends one request and waits for the response head.
    pub async fn send(
        &mut self,
        mut req: Request<RequestBody>,
    ) -> Result<Response<Incoming>, SendError> {
        let sent = match &mut self.sender {
            Sender::Http1(sender) => sender.try_send_request(req).await,
            Sender::H2 { sender, scheme } => {
                h2_target(&mut req, scheme, &self.upstream);
                sender.try_send_request(req).await
            }
            Sender::Upgraded | Sender::Detached => {
                return Err(SendError::Failed(ClientError::Closed));
            }
        };
        match sent {
            Ok(response) => Ok(response),
            Err(mut error) => match error.take_message() {
                Some(req) => Err(SendError::NotSent(Box::new(req))),
                None => Err(SendError::Failed(ClientError::Exchange(error.into_error()))),
            },
        }
    }

    /// Returns the connection to its upstream's idle list; call only after the response
    /// body was read to its end. A shared HTTP/2 handle is simply dropped.
    pub fn release(self) {
        let Connection { sender, upstream } = self;
        let Sender::Http1(mut sender) = sender else {
            return;
        };
        if sender.is_closed() {
            return;
        }
        if sender.is_ready() {
            upstream.state.idle.push(sender);
            return;
        }
        // The request body is still being written, or hyper has not yet seen the exchange
        // end: wait for that here rather than in the next request's checkout.
        tokio::spawn(async move {
            if let Ok(Ok(())) = tokio::time::timeout(RELEASE_WAIT, sender.ready()).await {
                upstream.state.idle.push(sender);
            }
        });
    }
}

/// Makes `req` an HTTP/2 request: HTTP/2 needs `:scheme` and `:authority`, so the target
/// becomes absolute, with the client's `Host` as authority (gRPC servers route on it) or,
/// without one, the upstream's address. `Host` itself is dropped: `:authority` replaces it.
fn h2_target(req: &mut Request<RequestBody>, scheme: &Scheme, upstream: &Upstream) {
    *req.version_mut() = Version::HTTP_2;
    if req.uri().scheme().is_some() {
        return;
    }
    let host = req.headers_mut().remove(header::HOST);
    let authority = host
        .and_then(|h| Authority::try_from(h.as_bytes()).ok())
        .or_else(|| Authority::try_from(&*upstream.id).ok());
    let mut parts = std::mem::take(req.uri_mut()).into_parts();
    parts.scheme = Some(scheme.clone());
    parts.authority = authority;
    if parts.path_and_query.is_none() {
        parts.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
    }
    // Scheme, authority and path are all set, so the parts form a valid absolute URI.
    *req.uri_mut() = Uri::from_parts(parts).unwrap_or_default();
}
