//! Traffic listeners: bind, accept, per-connection limits, TLS, HTTP/1.1 and HTTP/2, graceful
//! drain.
//!
//! Each listener runs one accept loop. A semaphore with `max_connections` permits bounds the
//! open connections: the loop takes a permit *before* accepting, so past the limit new
//! clients wait in the kernel's backlog instead of being accepted and dropped, and the
//! connection task holds its permit until it ends. Draining is the same semaphore seen the
//! other way: when every permit is back, every connection has finished. Each connection is
//! served by hyper-util's auto builder (HTTP/1.1 or prior-knowledge HTTP/2 on the same port)
//! and is told to finish gracefully on shutdown. `activity` enforces the header and idle
//! timeouts. What a request does is `proxy`'s job.
//!
//! On a TLS listener the connection task first runs the handshake (`tls` picks the
//! certificate), bounded by `header_timeout`, then serves HTTP/2 when ALPN chose `h2` and
//! HTTP/1.1 otherwise. The activity watcher wraps the TLS stream, so the framing scanner sees
//! plaintext HTTP, and its clock starts at accept: the handshake and the first request head
//! together must fit in `header_timeout`.

mod activity;
mod framing;
pub mod tls;

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::config::{Limits, ListenerConfig};
use crate::metrics::ActiveConnection;
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
/// accept (see [`ListenerSettings`]); a changed `max_connections` resizes its semaphore then.
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
        let mut capacity = Capacity::new(self.max_connections);
        let permits = capacity.permits.clone();
        let mut settings = self.settings(&shared, None);
        let mut builders = Arc::new(Builders::new(&settings.limits));
        // Fired at the drain deadline: connections still open then are dropped.
        let abort = CancellationToken::new();
        let metrics = crate::metrics::ListenerMetrics::new(&self.name);
        loop {
            let permit = tokio::select! {
                permit = permits.clone().acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => break,
                },
                // A reload while every permit is taken: a raised limit applies now.
                () = shared.swapped() => {
                    self.refresh(&shared, &mut settings, &mut builders, &mut capacity);
                    continue;
                }
                () = shutdown.cancelled() => break,
            };
            let Some(permit) = capacity.pay_debt(permit) else {
                continue;
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
                // A reload while waiting: give the permit back, so that a lowered limit
                // counts it as free, and take one again under the new limit.
                () = shared.swapped() => {
                    self.refresh(&shared, &mut settings, &mut builders, &mut capacity);
                    drop(permit);
                    continue;
                }
                () = shutdown.cancelled() => break,
            };
            self.refresh(&shared, &mut settings, &mut builders, &mut capacity);
            let proto = if settings.tls.is_some() {
                "https"
            } else {
                "http"
            };
            let ctx = ConnContext::new(shared.clone(), self.name.clone(), client, proto);
            let builders = builders.clone();
            let signals = Signals {
                shutdown: shutdown.clone(),
                abort: abort.clone(),
            };
            let settings = settings.clone();
            // Counted for as long as the client's stream exists, which is past the end of
            // `serve_connection` when an `Upgrade` hands it to a tunnel.
            let stream = Counted::new(stream, metrics.accepted());
            tokio::spawn(async move {
                serve_connection(stream, ctx, &builders, &settings, signals).await;
                drop(permit);
            });
        }
        drop(self.socket);
        let all = capacity.total();
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
    /// Follows a reload: new settings, new HTTP builders and a resized connection limit.
    fn refresh(
        &self,
        shared: &Shared,
        settings: &mut Arc<ListenerSettings>,
        builders: &mut Arc<Builders>,
        capacity: &mut Capacity,
    ) {
        let current = self.settings(shared, Some(settings));
        if !Arc::ptr_eq(&current, settings) {
            *settings = current;
            *builders = Arc::new(Builders::new(&settings.limits));
            capacity.resize(settings.limits.max_connections);
        }
    }

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
                tls: None,
            }),
        }
    }
}

/// A listener's connection limit: a semaphore of `max` permits that a reload can resize.
#[derive(Debug)]
struct Capacity {
    permits: Arc<Semaphore>,
    max: usize,
    /// Permits still to be retired after a lowered limit; each is paid by forgetting a
    /// permit the accept loop acquires instead of accepting with it.
    debt: usize,
}

impl Capacity {
    fn new(max: usize) -> Capacity {
        let max = max.clamp(1, Semaphore::MAX_PERMITS);
        Capacity {
            permits: Arc::new(Semaphore::new(max)),
            max,
            debt: 0,
        }
    }

    /// Moves the limit to `wanted`. A raise adds permits (first cancelling debt); a lowering
    /// forgets idle permits now and owes the rest, paid as open connections close. Open
    /// connections are never cut to meet a lower limit.
    fn resize(&mut self, wanted: usize) {
        let wanted = wanted.clamp(1, Semaphore::MAX_PERMITS);
        if wanted >= self.max {
            let raise = wanted - self.max;
            let paid = raise.min(self.debt);
            self.permits.add_permits(raise - paid);
            self.debt -= paid;
        } else {
            let cut = self.max - wanted;
            self.debt += cut - self.permits.forget_permits(cut);
        }
        self.max = wanted;
    }

    /// Keeps `permit` to pay debt (returns `None`) or hands it back for a connection.
    fn pay_debt(&mut self, permit: OwnedSemaphorePermit) -> Option<OwnedSemaphorePermit> {
        if self.debt == 0 {
            return Some(permit);
        }
        permit.forget();
        self.debt -= 1;
        None
    }

    /// Every permit that exists: draining is done when all of them are back.
    fn total(&self) -> u32 {
        u32::try_from(self.max + self.debt).unwrap_or(u32::MAX)
    }
}

/// How the listener tells a connection to finish (`shutdown`) or to stop now (`abort`).
#[derive(Debug)]
struct Signals {
    shutdown: CancellationToken,
    abort: CancellationToken,
}

/// A listener's HTTP servers: `any` detects HTTP/1.1 or prior-knowledge HTTP/2 (plaintext);
/// `http1` and `http2` serve what TLS ALPN negotiated.
#[derive(Debug)]
struct Builders {
    any: auto::Builder<TokioExecutor>,
    http1: auto::Builder<TokioExecutor>,
    http2: auto::Builder<TokioExecutor>,
}

impl Builders {
    fn new(limits: &Limits) -> Builders {
        let any = http_builder(limits);
        Builders {
            http1: any.clone().http1_only(),
            http2: any.clone().http2_only(),
            any,
        }
    }
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

/// Serves one client connection until it closes or shutdown asks it to finish; on a TLS
/// listener, after the handshake.
async fn serve_connection(
    stream: Counted<TcpStream>,
    ctx: ConnContext,
    builders: &Builders,
    settings: &ListenerSettings,
    signals: Signals,
) {
    if let Err(error) = stream.io.set_nodelay(true) {
        tracing::debug!(%error, "set_nodelay failed");
    }
    // Created before the handshake: the first head's deadline counts from accept.
    let activity = Arc::new(Activity::new());
    let limits = &settings.limits;
    let Some(tls) = &settings.tls else {
        return serve_http(stream, ctx, &builders.any, limits, activity, signals).await;
    };
    // Boxed: a TLS connection's state (the handshake, then the decrypting stream inside
    // hyper's) is several KiB larger than a plaintext one's, and without the box every
    // connection's task, plaintext ones included, would be sized for it.
    Box::pin(serve_tls(
        stream, ctx, builders, tls, limits, activity, signals,
    ))
    .await;
}

/// [`serve_connection`] on a TLS listener: the handshake, then HTTP on the decrypted stream.
async fn serve_tls(
    stream: Counted<TcpStream>,
    ctx: ConnContext,
    builders: &Builders,
    tls: &tls::TlsSettings,
    limits: &Limits,
    activity: Arc<Activity>,
    signals: Signals,
) {
    let client = ctx.client;
    let acceptor = tokio_rustls::TlsAcceptor::from(tls.config.clone());
    let handshake = tokio::time::timeout(limits.header_timeout, acceptor.accept(stream));
    let stream = tokio::select! {
        done = handshake => match done {
            Ok(Ok(stream)) => stream,
            Ok(Err(error)) => {
                tracing::debug!(%client, %error, "TLS handshake failed");
                return;
            }
            Err(_) => {
                tracing::debug!(%client, "TLS handshake timed out; closing");
                return;
            }
        },
        // Nothing to finish yet: a connection still in its handshake just closes.
        () = signals.shutdown.cancelled() => return,
        () = signals.abort.cancelled() => return,
    };
    let builder = match stream.get_ref().1.alpn_protocol() {
        Some(b"h2") => &builders.http2,
        _ => &builders.http1,
    };
    serve_http(stream, ctx, builder, limits, activity, signals).await;
}

/// Serves HTTP on an established (plaintext or decrypted) client stream.
async fn serve_http<S>(
    stream: S,
    ctx: ConnContext,
    builder: &auto::Builder<TokioExecutor>,
    limits: &Limits,
    activity: Arc<Activity>,
    signals: Signals,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let client = ctx.client;
    let listener = ctx.listener.clone();
    let shared = ctx.shared.clone();
    let ctx = Arc::new(ctx);
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
    let io = WatchedIo::new(stream, activity.clone(), listener).with_request_ids(shared);
    let io = TokioIo::new(io);
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
                // HTTP/1 closes at once; HTTP/2 sends GOAWAY and a PING and waits for the
                // peer's answer, which a stalled client never sends: bound that wait.
                tokio::select! {
                    result = conn.as_mut() => result,
                    () = tokio::time::sleep(limits.header_timeout) => {
                        tracing::debug!(%client, "idle connection did not finish closing; dropping it");
                        return;
                    }
                    () = signals.abort.cancelled() => return,
                }
            }
        },
    };
    if let Err(error) = result {
        tracing::debug!(error = %crate::error_chain(&*error), "client connection ended with an error");
    }
}

/// A client stream that keeps its connection counted in `switchyard_connections_active` until
/// it is dropped: when the connection ends, or, after an HTTP/1.1 `Upgrade`, when the tunnel
/// that hyper handed it to ends.
#[derive(Debug)]
struct Counted<S> {
    io: S,
    _active: ActiveConnection,
}

impl<S> Counted<S> {
    fn new(io: S, active: ActiveConnection) -> Counted<S> {
        Counted {
            io,
            _active: active,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, data)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}
