//! Traffic listeners: bind, accept, per-connection limits, TLS, HTTP/1.1 and HTTP/2, graceful
//! drain.
//!
//! Each listener runs one accept loop. A semaphore with `max_connections` permits bounds the
//! open connections: the loop takes a permit *before* accepting, so past the limit new
//! clients wait in the kernel's backlog instead of being accepted and dropped, and the
//! connection task holds its permit until it ends. Draining is the same semaphore seen the
//! other way: when every permit is back, every connection has finished. A plaintext
//! connection's first bytes tell prior-knowledge HTTP/2 (its preface) from HTTP/1.1. HTTP/1.1
//! and HTTP/2 are served by our own servers (`http1`, `h2`; an HTTP/2 connection's streams
//! run in its own task); both are told to finish gracefully on shutdown.
//! `activity` enforces the header and idle timeouts. What a request does is `proxy`'s job.
//!
//! On a TLS listener the connection task first runs the handshake (`tls` picks the
//! certificate), bounded by `header_timeout`, then serves HTTP/2 when ALPN chose `h2` and
//! HTTP/1.1 otherwise. The head timer starts at accept: the handshake and the first request
//! head together must fit in `header_timeout`.

mod activity;
pub mod h2;
pub mod http1;
mod signal;
pub mod tls;

use std::io;
use std::net::SocketAddr;
use std::pin::{pin, Pin};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, TryAcquireError};
use tokio_util::sync::CancellationToken;

use crate::body::ClientBody;
use crate::config::{Limits, ListenerConfig};
use crate::metrics::ActiveConnection;
use crate::proxy::{self, ConnContext};
use crate::snapshot::{ListenerSettings, Shared, Snapshot};
pub use activity::RequestGuard;
use activity::{Activity, Expiry, WatchedIo};
use signal::Signal;

/// Pending connections the kernel queues for a listener.
pub const DEFAULT_BACKLOG: i32 = 1024;

/// Binds `addr` with `SO_REUSEADDR` (and `IPV6_V6ONLY` for an IPv6 address), ready for tokio.
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let domain = socket2::Domain::for_address(addr);
    let socket = socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        // IPv6 only, as NGINX and Envoy bind `[::]`: `0.0.0.0:P` beside `[::]:P` is then
        // two listeners (the overlap rule says so) rather than a bind that fails, and a
        // client's IPv4 address is never logged as `::ffff:a.b.c.d`.
        socket.set_only_v6(true)?;
    }
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
        // Created before the snapshot is read: a reload in between still wakes it.
        let mut swapped = pin!(shared.swapped());
        let mut snapshot = shared.snapshot();
        let mut settings = self.settings(&snapshot, None);
        let mut builders = Arc::new(Builders::new(&settings.limits));
        // What the connections watch: `shutdown` as this loop sees it, and the drain deadline.
        let signals = Arc::new(Signals::default());
        let metrics = crate::metrics::ListenerMetrics::new(&self.name);
        // Long-lived: registered once, not once per accept. `stopped` is polled first at
        // every wait, so neither a busy backlog nor failing accepts delay shutdown;
        // `swapped` is polled only when the loop has to wait.
        let mut stopped = pin!(shutdown.cancelled());
        loop {
            // A permit first: past the limit, clients wait in the kernel's backlog.
            let permit = match permits.clone().try_acquire_owned() {
                Ok(permit) => permit,
                Err(TryAcquireError::Closed) => break,
                Err(TryAcquireError::NoPermits) => tokio::select! {
                    biased;
                    () = stopped.as_mut() => break,
                    permit = permits.clone().acquire_owned() => match permit {
                        Ok(permit) => permit,
                        Err(_) => break,
                    },
                    // A reload while every permit is taken: a raised limit applies now.
                    () = swapped.as_mut() => {
                        swapped.set(shared.swapped());
                        self.refresh(&shared, &mut snapshot, &mut settings, &mut builders, &mut capacity);
                        continue;
                    }
                },
            };
            let Some(permit) = capacity.pay_debt(permit) else {
                continue;
            };
            let (stream, client) = tokio::select! {
                biased;
                () = stopped.as_mut() => break,
                accepted = self.socket.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        tracing::warn!(listener = %self.name, %error, "accept failed");
                        tokio::select! {
                            () = stopped.as_mut() => break,
                            () = tokio::time::sleep(Duration::from_millis(10)) => continue,
                        }
                    }
                },
                // A reload while waiting: give the permit back, so that a lowered limit
                // counts it as free, and take one again under the new limit.
                () = swapped.as_mut() => {
                    swapped.set(shared.swapped());
                    self.refresh(&shared, &mut snapshot, &mut settings, &mut builders, &mut capacity);
                    drop(permit);
                    continue;
                }
            };
            // A reload the wait above did not see (a connection was ready at once).
            if !shared.is_current(&snapshot) {
                self.refresh(
                    &shared,
                    &mut snapshot,
                    &mut settings,
                    &mut builders,
                    &mut capacity,
                );
            }
            let proto = if settings.tls.is_some() {
                "https"
            } else {
                "http"
            };
            let ctx = ConnContext::new(shared.clone(), self.name.clone(), client, proto);
            let builders = builders.clone();
            let signals = signals.clone();
            let settings = settings.clone();
            // Counted for as long as the client's stream exists, which is past the end of
            // `serve_connection` when an `Upgrade` hands it to a tunnel.
            let stream = Counted::new(stream, metrics.accepted());
            // Built in a box of its own: tokio moves a task's future several times on its
            // way into the task, and this one is over a KiB where the box is a pointer.
            tokio::spawn(crate::pin_in_place(|| async move {
                serve_connection(stream, ctx, &builders, &settings, &signals).await;
                drop(permit);
            }));
        }
        signals.shutdown.fire();
        drop(self.socket);
        let all = capacity.total();
        if tokio::time::timeout(drain, permits.acquire_many(all))
            .await
            .is_err()
        {
            tracing::warn!(listener = %self.name, "drain deadline passed; closing the connections still open");
            signals.abort.fire();
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
        snapshot: &mut Arc<Snapshot>,
        settings: &mut Arc<ListenerSettings>,
        builders: &mut Arc<Builders>,
        capacity: &mut Capacity,
    ) {
        *snapshot = shared.snapshot();
        let current = self.settings(snapshot, Some(settings));
        if !Arc::ptr_eq(&current, settings) {
            *settings = current;
            *builders = Arc::new(Builders::new(&settings.limits));
            capacity.resize(settings.limits.max_connections);
        }
    }

    /// This listener's settings in `snapshot`; `last` when a reload removed it (it is being
    /// closed and keeps serving its open connections as they were).
    fn settings(
        &self,
        snapshot: &Snapshot,
        last: Option<&Arc<ListenerSettings>>,
    ) -> Arc<ListenerSettings> {
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

/// How the listener tells its connections to finish (`shutdown`) or to stop now (`abort`,
/// at the drain deadline).
#[derive(Debug, Default)]
struct Signals {
    shutdown: Signal,
    abort: Signal,
}

/// A listener's HTTP settings: the request-head limit of our HTTP/1.1 and HTTP/2 servers.
#[derive(Debug)]
struct Builders {
    max_head: usize,
}

impl Builders {
    fn new(limits: &Limits) -> Builders {
        Builders {
            max_head: limits.max_header_bytes,
        }
    }
}

/// Serves one client connection until it closes or shutdown asks it to finish; on a TLS
/// listener, after the handshake.
async fn serve_connection(
    stream: Counted,
    ctx: ConnContext,
    builders: &Builders,
    settings: &ListenerSettings,
    signals: &Signals,
) {
    // Created before the handshake: the first head's deadline counts from accept.
    let activity = Arc::new(Activity::new());
    let limits = &settings.limits;
    let Some(tls) = &settings.tls else {
        return serve_plain(stream, ctx, builders, limits, activity, signals).await;
    };
    // Boxed: a TLS connection's state (the handshake, then the decrypting stream) is several
    // KiB larger than a plaintext one's, and without the box every connection's task,
    // plaintext ones included, would be sized for it.
    crate::pin_in_place(|| serve_tls(stream, ctx, builders, tls, limits, activity, signals)).await;
}

/// The first bytes of every prior-knowledge HTTP/2 connection (RFC 9113 section 3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// [`serve_connection`] on a plaintext listener: the first bytes tell HTTP/1.1 from h2c.
async fn serve_plain(
    mut stream: Counted,
    ctx: ConnContext,
    builders: &Builders,
    limits: &Limits,
    activity: Arc<Activity>,
    signals: &Signals,
) {
    let client = ctx.client;
    let mut buf = BytesMut::with_capacity(http1::INITIAL_READ);
    let sniffed = {
        let sniff = sniff(&mut stream, &mut buf, &activity);
        let watchdog =
            activity::watchdog(&activity, limits.header_timeout, limits.idle_timeout, true);
        tokio::select! {
            // Polled first: when the request is already there, no timer is armed.
            biased;
            sniffed = sniff => sniffed,
            _ = watchdog => {
                tracing::debug!(%client, "request head timed out; closing");
                return;
            }
            // Nothing to finish yet.
            () = signals.shutdown.fired() => return,
            () = signals.abort.fired() => return,
        }
    };
    // HTTP/1.1, the common case, runs inline: the connection's task is built in its box
    // (see `Listener::serve`), so one allocation holds it all. HTTP/2's state is boxed on its
    // own, so that an HTTP/1.1 connection does not carry room for it too.
    match sniffed {
        Ok(Some(true)) => {
            let io = WatchedIo::new(stream, activity.clone(), buf.freeze());
            crate::pin_in_place(|| serve_h2(io, ctx, limits, activity, signals)).await;
        }
        Ok(Some(false)) => {
            serve_h1(stream, buf, ctx, builders, limits, activity, signals).await;
        }
        Ok(None) => {}
        Err(error) => tracing::debug!(%client, %error, "reading the first request failed"),
    }
}

/// Reads until the bytes tell: `Some(true)` for the HTTP/2 preface, `Some(false)` for
/// anything else, `None` when the client closed first.
async fn sniff<S: AsyncRead + Unpin>(
    io: &mut S,
    buf: &mut BytesMut,
    activity: &Activity,
) -> io::Result<Option<bool>> {
    loop {
        let n = buf.len().min(H2_PREFACE.len());
        if buf[..n] != H2_PREFACE[..n] {
            return Ok(Some(false));
        }
        if n == H2_PREFACE.len() {
            return Ok(Some(true));
        }
        if tokio_util::io::read_buf(io, buf).await? == 0 {
            return Ok(None);
        }
        activity.read();
    }
}

/// [`serve_connection`] on a TLS listener: the handshake, then HTTP on the decrypted stream.
async fn serve_tls(
    stream: Counted,
    ctx: ConnContext,
    builders: &Builders,
    tls: &tls::TlsSettings,
    limits: &Limits,
    activity: Arc<Activity>,
    signals: &Signals,
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
        () = signals.shutdown.fired() => return,
        () = signals.abort.fired() => return,
    };
    if stream.get_ref().1.alpn_protocol() == Some(b"h2") {
        let io = WatchedIo::new(stream, activity.clone(), Bytes::new());
        serve_h2(io, ctx, limits, activity, signals).await;
    } else {
        serve_h1(
            stream,
            BytesMut::new(),
            ctx,
            builders,
            limits,
            activity,
            signals,
        )
        .await;
    }
}

/// Serves HTTP/1.1 with our own server (`http1`); `buf` holds bytes already read.
async fn serve_h1<S: http1::Stream + 'static>(
    stream: S,
    buf: BytesMut,
    ctx: ConnContext,
    builders: &Builders,
    limits: &Limits,
    activity: Arc<Activity>,
    signals: &Signals,
) {
    let client = ctx.client;
    let settings = http1::Settings {
        max_head: builders.max_head,
        activity: &activity,
        shutdown: &signals.shutdown,
        tls: ctx.proto == "https",
    };
    // Pinned where it is made: moved into the `select!`, the connection's whole state (most
    // of its task) would be copied twice.
    let conn = std::pin::pin!(http1::serve(stream, buf, &ctx, settings));
    // Our server ends each request in this task.
    let watchdog = activity::watchdog(&activity, limits.header_timeout, limits.idle_timeout, true);
    let result = tokio::select! {
        biased;
        result = conn => result,
        () = signals.abort.fired() => return,
        expiry = watchdog => {
            // A stalled head is dropped; an idle connection has nothing to finish either.
            if expiry == Expiry::Header {
                tracing::debug!(%client, "request head timed out; closing");
            }
            return;
        }
    };
    if let Err(error) = result {
        tracing::debug!(%client, error = %crate::error_chain(&error), "client connection ended with an error");
    }
}

/// Serves HTTP/2 with our own server (`h2`) on an established (plaintext or decrypted)
/// stream.
async fn serve_h2<S>(
    io: WatchedIo<S>,
    ctx: ConnContext,
    limits: &Limits,
    activity: Arc<Activity>,
    signals: &Signals,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let client = ctx.client;
    let ctx = &ctx;
    let requests = &activity;
    let make = move |req: http::Request<ClientBody>| {
        let guard = requests.start_request();
        async move {
            let response = proxy::handle(ctx, req).await;
            response.map(|body| body.with_request_guard(guard))
        }
    };
    let settings = h2::Settings {
        max_header_bytes: limits.max_header_bytes,
        activity: activity.clone(),
        header_timeout: limits.header_timeout,
    };
    let mut conn = h2::new(io, settings, make);
    macro_rules! served {
        () => {
            std::future::poll_fn(|cx| conn.poll(cx))
        };
    }
    // Requests end in the streams, which run in this task.
    let watchdog = activity::watchdog(&activity, limits.header_timeout, limits.idle_timeout, true);
    tokio::pin!(watchdog);
    let result = tokio::select! {
        biased;
        result = served!() => result,
        () = signals.abort.fired() => return,
        () = signals.shutdown.fired() => {
            conn.graceful();
            tokio::select! {
                result = served!() => result,
                _ = &mut watchdog => return,
                () = signals.abort.fired() => return,
            }
        }
        _ = &mut watchdog => {
            // Idle: GOAWAY, then close once it is written (a stalled client that reads
            // nothing is bounded by the header timeout).
            conn.graceful();
            tokio::select! {
                result = served!() => result,
                () = tokio::time::sleep(limits.header_timeout) => {
                    tracing::debug!(%client, "idle connection did not finish closing; dropping it");
                    return;
                }
                () = signals.abort.fired() => return,
            }
        }
    };
    if let Err(error) = result {
        tracing::debug!(%client, error = %crate::error_chain(&error), "client connection ended with an error");
    }
}

/// A client's socket. It keeps its connection counted in `switchyard_connections_active`
/// until it is dropped: when the connection ends, or, after an HTTP/1.1 `Upgrade`, when the
/// tunnel it was handed to ends.
///
/// It sets `TCP_NODELAY` just before its second write (NGINX sets it when a connection enters
/// keep-alive, to the same end): Nagle's algorithm holds a small segment back only while an
/// earlier small one is unacknowledged, so the first write is never delayed, and a connection
/// that writes once (a `Connection: close` answer) does without the system call.
#[derive(Debug)]
struct Counted {
    io: TcpStream,
    _active: ActiveConnection,
    nodelay: Nodelay,
}

/// Where a client socket is on its way to `TCP_NODELAY`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Nodelay {
    /// Nothing written yet.
    Unwritten,
    /// Written once: set before the next write.
    Written,
    /// Set (or failed to be; not tried again).
    Set,
}

impl Counted {
    fn new(io: TcpStream, active: ActiveConnection) -> Counted {
        Counted {
            io,
            _active: active,
            nodelay: Nodelay::Unwritten,
        }
    }

    /// Sets `TCP_NODELAY` when a write follows an earlier one.
    fn before_write(&mut self) {
        if self.nodelay == Nodelay::Written {
            if let Err(error) = self.io.set_nodelay(true) {
                tracing::debug!(%error, "set_nodelay failed");
            }
            self.nodelay = Nodelay::Set;
        }
    }

    /// Notes the first write that sent bytes.
    fn after_write(&mut self, polled: &Poll<io::Result<usize>>) {
        if self.nodelay == Nodelay::Unwritten && matches!(polled, Poll::Ready(Ok(n)) if *n > 0) {
            self.nodelay = Nodelay::Written;
        }
    }
}

impl AsyncRead for Counted {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.before_write();
        let polled = Pin::new(&mut this.io).poll_write(cx, data);
        this.after_write(&polled);
        polled
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
        let this = self.get_mut();
        this.before_write();
        let polled = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        this.after_write(&polled);
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn a_client_socket_sets_nodelay_before_its_second_write_only() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        let metrics = crate::metrics::ListenerMetrics::new("nodelay-test");
        let mut socket = Counted::new(accepted, metrics.accepted());
        assert!(!socket.io.nodelay().unwrap());
        socket.write_all(b"one").await.unwrap();
        assert!(
            !socket.io.nodelay().unwrap(),
            "a connection that writes once never needs it"
        );
        socket.write_all(b"two").await.unwrap();
        assert!(socket.io.nodelay().unwrap(), "set before the second write");
        let mut got = [0u8; 6];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"onetwo");
    }

    #[tokio::test]
    async fn an_ipv6_listener_takes_ipv6_only() {
        // Audit 3 F4: `[::]:P` was bound dual-stack, so `0.0.0.0:P` beside it failed to bind.
        let Ok(listener) = bind("[::1]:0".parse().unwrap()) else {
            return; // no IPv6 loopback on this machine
        };
        assert!(socket2::SockRef::from(&listener).only_v6().unwrap());
    }
}
