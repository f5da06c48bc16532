//! Traffic listeners: bind, accept, per-connection limits, HTTP/1.1 and h2c, graceful drain.
//!
//! Each listener runs one accept loop. A semaphore with `max_connections` permits bounds the
//! open connections: the loop takes a permit *before* accepting, so past the limit new
//! clients wait in the kernel's backlog instead of being accepted and dropped, and the
//! connection task holds its permit until it ends. Draining is the same semaphore seen the
//! other way: when every permit is back, every connection has finished. Each connection is
//! served by hyper-util's auto builder (HTTP/1.1 or prior-knowledge HTTP/2 on the same port)
//! and is told to finish gracefully on shutdown. `activity` enforces the header and idle
//! timeouts. What a request does is `proxy`'s job.

mod activity;
mod framing;

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::config::{Limits, ListenerConfig};
use crate::proxy::{self, ConnContext};
use crate::snapshot::{ListenerSettings, Shared};
pub use activity::RequestGuard;
use activity::{Activity, Expiry, WatchedIo};

/// Pending connections the kernel queues for a listener.
pub const DEFAULT_BACKLOG: i32 = 1024;
/// hyper refuses read buffers below this, so `max_header_bytes` cannot go lower.
const MIN_HEADER_BUFFER: usize = 8192;

/// Binds `addr` with `SO_REUSEADDR`, ready for tokio.
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let domain = socket2::Domain::for_address(addr);
    let socket = socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(DEFAULT_BACKLOG)?;
    TcpListener::from_std(socket.into())
}

/// One bound listener. Its connection settings come from the running snapshot at each
/// accept (see [`ListenerSettings`]); only `max_connections` is fixed when it is bound.
#[derive(Debug)]
pub struct Listener {
    name: Arc<str>,
    socket: TcpListener,
    max_connections: usize,
}

// === impl Listener ===

impl Listener {
    /// Binds the listener described by `cfg`.
    pub fn bind(cfg: &ListenerConfig) -> io::Result<Listener> {
        Ok(Listener {
            name: Arc::from(cfg.name.as_str()),
            socket: bind(cfg.bind)?,
            max_connections: cfg.limits.max_connections,
        })
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    /// The listener's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Accepts and serves until `shutdown` fires, then waits up to `drain` for open
    /// connections to finish their requests; connections still open after that are closed.
    pub async fn serve(self, shared: Arc<Shared>, shutdown: CancellationToken, drain: Duration) {
        let max = self.max_connections.clamp(1, Semaphore::MAX_PERMITS);
        let permits = Arc::new(Semaphore::new(max));
        let mut settings = self.settings(&shared, None);
        let mut builder = Arc::new(http_builder(&settings.limits));
        // Fired at the drain deadline: connections still open then are dropped.
        let abort = CancellationToken::new();
        let metrics = crate::metrics::ListenerMetrics::new(&self.name);
        loop {
            let permit = tokio::select! {
                permit = permits.clone().acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => break,
                },
                () = shutdown.cancelled() => break,
            };
            let (stream, client) = tokio::select! {
                accepted = self.socket.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        tracing::warn!(listener = %self.name, %error, "accept failed");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                },
                () = shutdown.cancelled() => break,
            };
            let current = self.settings(&shared, Some(&settings));
            if !Arc::ptr_eq(&current, &settings) {
                settings = current;
                builder = Arc::new(http_builder(&settings.limits));
            }
            let ctx = ConnContext::new(shared.clone(), self.name.clone(), client, "http");
            let builder = builder.clone();
            let signals = Signals {
                shutdown: shutdown.clone(),
                abort: abort.clone(),
            };
            let settings = settings.clone();
            let active = metrics.accepted();
            tokio::spawn(async move {
                serve_connection(stream, ctx, &builder, &settings.limits, signals).await;
                drop((permit, active));
            });
        }
        drop(self.socket);
        let all = u32::try_from(max).unwrap_or(u32::MAX);
        if tokio::time::timeout(drain, permits.acquire_many(all))
            .await
            .is_err()
        {
            tracing::warn!(listener = %self.name, "drain deadline passed; closing the connections still open");
            abort.cancel();
            // Aborted tasks return at their next poll; give them a moment to release.
            let _ = tokio::time::timeout(Duration::from_secs(1), permits.acquire_many(all)).await;
        }
    }
}

impl Listener {
    /// This listener's settings in the running snapshot; `last` when a reload removed it
    /// (it is being closed and keeps serving its open connections as they were).
    fn settings(
        &self,
        shared: &Shared,
        last: Option<&Arc<ListenerSettings>>,
    ) -> Arc<ListenerSettings> {
        let snapshot = shared.snapshot();
        match (snapshot.listener(&self.name), last) {
            (Some(current), _) => current.clone(),
            (None, Some(last)) => last.clone(),
            (None, None) => Arc::new(ListenerSettings {
                name: self.name.clone(),
                bind: self
                    .socket
                    .local_addr()
                    .unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0))),
                limits: Limits::default(),
            }),
        }
    }
}

/// How the listener tells a connection to finish (`shutdown`) or to stop now (`abort`).
#[derive(Debug)]
struct Signals {
    shutdown: CancellationToken,
    abort: CancellationToken,
}

/// The HTTP server settings of a listener.
fn http_builder(limits: &Limits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // No hyper header read timeout: it also runs while a keep-alive connection waits for its
    // next request, so `activity::watchdog` enforces header and idle timeouts instead.
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(None)
        .max_buf_size(limits.max_header_bytes.max(MIN_HEADER_BUFFER));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX));
    builder
}

/// Serves one client connection until it closes or shutdown asks it to finish.
async fn serve_connection(
    stream: TcpStream,
    ctx: ConnContext,
    builder: &auto::Builder<TokioExecutor>,
    limits: &Limits,
    signals: Signals,
) {
    if let Err(error) = stream.set_nodelay(true) {
        tracing::debug!(%error, "set_nodelay failed");
    }
    let client = ctx.client;
    let ctx = Arc::new(ctx);
    let activity = Arc::new(Activity::new());
    let requests = activity.clone();
    let service = service_fn(move |mut req: http::Request<hyper::body::Incoming>| {
        let ctx = ctx.clone();
        let (guard, ambiguous) = requests.start_request();
        if ambiguous {
            req.extensions_mut().insert(proxy::AmbiguousFraming);
        }
        async move {
            let response = proxy::handle(&ctx, req).await;
            Ok::<_, Infallible>(response.map(|body| body.with_request_guard(guard)))
        }
    });
    let io = TokioIo::new(WatchedIo::new(stream, activity.clone()));
    let conn = builder.serve_connection_with_upgrades(io, service);
    tokio::pin!(conn);
    let watchdog = activity::watchdog(&activity, limits.header_timeout, limits.idle_timeout);
    tokio::pin!(watchdog);
    let result = tokio::select! {
        result = conn.as_mut() => result,
        () = signals.abort.cancelled() => return,
        () = signals.shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            // Keep timing: a half-sent head must not hold the drain for its whole deadline.
            tokio::select! {
                result = conn.as_mut() => result,
                _ = &mut watchdog => return,
                () = signals.abort.cancelled() => return,
            }
        }
        expiry = &mut watchdog => match expiry {
            // A stalled head: drop the connection, there is nothing to finish.
            Expiry::Header => {
                tracing::debug!(%client, "request head timed out; closing");
                return;
            }
            Expiry::Idle => {
                conn.as_mut().graceful_shutdown();
                tokio::select! {
                    result = conn.as_mut() => result,
                    () = signals.abort.cancelled() => return,
                }
            }
        },
    };
    if let Err(error) = result {
        tracing::debug!(error = %crate::error_chain(&*error), "client connection ended with an error");
    }
}
