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

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::Upstream;
use crate::body::RequestBody;

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
    /// The HTTP/1.1 handshake on a fresh connection failed.
    #[error("connection handshake failed")]
    Handshake(#[source] hyper::Error),
    /// The upstream closed a fresh connection before the request could be written.
    #[error("upstream closed the connection before the request was sent")]
    Closed,
    /// The exchange failed after the request may have been written.
    #[error("upstream exchange failed")]
    Exchange(#[source] hyper::Error),
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

/// One connection checked out of an upstream's pool, ready to send a request.
#[derive(Debug)]
pub struct Connection {
    sender: http1::SendRequest<RequestBody>,
    upstream: Arc<Upstream>,
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
    /// Takes an idle connection to `upstream`, or opens a new one within `connect_timeout`.
    pub async fn checkout(
        upstream: &Arc<Upstream>,
        connect_timeout: Duration,
    ) -> Result<Connection, ClientError> {
        if let Some(sender) = upstream.idle.pop() {
            return Ok(Connection {
                sender,
                upstream: upstream.clone(),
            });
        }
        Self::open(upstream, connect_timeout).await
    }

    /// Opens a fresh connection to `upstream`.
    pub async fn open(
        upstream: &Arc<Upstream>,
        connect_timeout: Duration,
    ) -> Result<Connection, ClientError> {
        let stream = tokio::time::timeout(connect_timeout, TcpStream::connect(upstream.addr))
            .await
            .map_err(|_| ClientError::ConnectTimeout)?
            .map_err(ClientError::Connect)?;
        // Small requests and responses must not wait for Nagle.
        stream.set_nodelay(true).map_err(ClientError::Connect)?;
        let (sender, conn) = http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .map_err(ClientError::Handshake)?;
        let id = upstream.id.clone();
        tokio::spawn(async move {
            if let Err(error) = conn.with_upgrades().await {
                tracing::debug!(upstream = %id, %error, "upstream connection ended with an error");
            }
        });
        Ok(Connection {
            sender,
            upstream: upstream.clone(),
        })
    }

    /// The upstream at the other end.
    pub fn upstream(&self) -> &Arc<Upstream> {
        &self.upstream
    }

    /// Sends one request and waits for the response head.
    pub async fn send(
        &mut self,
        req: Request<RequestBody>,
    ) -> Result<Response<Incoming>, SendError> {
        match self.sender.try_send_request(req).await {
            Ok(response) => Ok(response),
            Err(mut error) => match error.take_message() {
                Some(req) => Err(SendError::NotSent(Box::new(req))),
                None => Err(SendError::Failed(ClientError::Exchange(error.into_error()))),
            },
        }
    }

    /// Returns the connection to its upstream's idle list; call only after the response
    /// body was read to its end.
    pub fn release(self) {
        let Connection {
            mut sender,
            upstream,
        } = self;
        if sender.is_closed() {
            return;
        }
        if sender.is_ready() {
            upstream.idle.push(sender);
            return;
        }
        // The request body is still being written, or hyper has not yet seen the exchange
        // end: wait for that here rather than in the next request's checkout.
        tokio::spawn(async move {
            if let Ok(Ok(())) = tokio::time::timeout(RELEASE_WAIT, sender.ready()).await {
                upstream.idle.push(sender);
            }
        });
    }
}
