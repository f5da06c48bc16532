//! HTTP/1.1 `Upgrade` tunnels (WebSocket and other upgrade protocols), SPEC section 4.
//!
//! A request that asks to upgrade (`Connection: upgrade` plus `Upgrade: x`, HTTP/1.1, to an
//! HTTP/1.1 pool) keeps those two headers on its way upstream instead of losing them with the
//! other hop-by-hop headers. When the upstream answers `101 Switching Protocols`, the `101`
//! goes back to the client and both connections are handed over by hyper: [`run`] joins them
//! with `copy_bidirectional` until either side closes, or until no byte moved either way for
//! the route's `tunnel_idle_timeout`. The upstream connection is never pooled again and no
//! retry follows a `101` (retries end with the first answer that is not a retryable 502/503).
//! The tunnel keeps the upstream's in-flight count up for as long as it is open.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use http::header::{self, HeaderMap, HeaderValue};
use http::{request, Version};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

use crate::config::Protocol;
use crate::listener::http1::OnUpgrade as ClientUpgrade;
use crate::upstream::InFlight;

/// A client's request to switch protocols, taken off its request head.
#[derive(Debug)]
pub(crate) struct UpgradeRequest {
    /// Resolves to the client's connection once the `101` was written to it.
    client: ClientUpgrade,
    /// The client's `Upgrade` value, sent upstream as is.
    protocol: HeaderValue,
}

// === impl UpgradeRequest ===

impl UpgradeRequest {
    /// The upgrade a request asks for, if it asks for one that can be tunnelled: HTTP/1.1,
    /// `Connection` listing `upgrade`, an `Upgrade` header, and an HTTP/1.1 pool.
    pub(crate) fn take(parts: &mut request::Parts, pool: Protocol) -> Option<UpgradeRequest> {
        if parts.version != Version::HTTP_11 || pool != Protocol::Http1 {
            return None;
        }
        let protocol = parts.headers.get(header::UPGRADE)?.clone();
        let asks = parts
            .headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|token| token.trim().eq_ignore_ascii_case("upgrade"));
        if !asks {
            return None;
        }
        let client = parts.extensions.remove::<ClientUpgrade>()?;
        Some(UpgradeRequest { client, protocol })
    }

    /// Puts back the headers hop-by-hop removal took that the upgrade needs upstream.
    pub(crate) fn restore_headers(&self, headers: &mut HeaderMap) {
        restore_headers(headers, self.protocol.clone());
    }
}

/// `Connection: upgrade` and `Upgrade: protocol`, on a request that asks to upgrade or on
/// the `101` that accepts.
pub(crate) fn restore_headers(headers: &mut HeaderMap, protocol: HeaderValue) {
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, protocol);
}

/// Joins the client's and the upstream's upgraded connections until either closes or the
/// tunnel sits idle for `idle`; `in_flight` counts the tunnel on its upstream meanwhile.
pub(crate) async fn run(
    request: UpgradeRequest,
    upstream: OnUpgrade,
    idle: Duration,
    in_flight: InFlight,
) {
    let id = in_flight.upstream().id.clone();
    let (client, upstream) = match tokio::join!(request.client, upstream) {
        (Ok(client), Ok(upstream)) => (client, upstream),
        (Err(_), _) => {
            tracing::debug!(upstream = %id, "the client connection closed before the tunnel opened");
            return;
        }
        (_, Err(error)) => {
            tracing::debug!(upstream = %id, %error, "upgrade failed before the tunnel opened");
            return;
        }
    };
    let clock = Clock::new();
    let mut client = Tracked::new(client, &clock);
    let mut upstream = Tracked::new(TokioIo::new(upstream), &clock);
    let copy = tokio::io::copy_bidirectional(&mut client, &mut upstream);
    tokio::pin!(copy);
    loop {
        tokio::select! {
            result = &mut copy => {
                match result {
                    Ok((up, down)) => tracing::debug!(upstream = %id, up, down, "tunnel closed"),
                    Err(error) => tracing::debug!(upstream = %id, %error, "tunnel ended with an error"),
                }
                break;
            }
            () = tokio::time::sleep_until(clock.last() + idle) => {
                if clock.last().elapsed() >= idle {
                    tracing::debug!(upstream = %id, ?idle, "tunnel idle; closing both sides");
                    break;
                }
            }
        }
    }
    drop(in_flight);
}

/// When bytes last moved through a tunnel, in milliseconds since it opened.
#[derive(Debug)]
struct Clock {
    opened: Instant,
    last_ms: AtomicU64,
}

impl Clock {
    fn new() -> Clock {
        Clock {
            opened: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        let ms = self.opened.elapsed().as_millis() as u64;
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    fn last(&self) -> Instant {
        self.opened + Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }
}

/// An upgraded connection that stamps the tunnel's clock whenever bytes arrive; every byte
/// written was read from the other side first, so reads alone tell activity.
struct Tracked<'a, T> {
    io: T,
    clock: &'a Clock,
}

impl<'a, T> Tracked<'a, T> {
    fn new(io: T, clock: &'a Clock) -> Self {
        Tracked { io, clock }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Tracked<'_, T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.clock.touch();
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Tracked<'_, T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
