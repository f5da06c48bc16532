//! An HTTP/2 request body, as the proxy reads it: what the connection received for one
//! stream, handed over through a small shared slot.
//!
//! The connection (`super`) pushes each DATA payload into the stream's [`Chan`] and wakes the
//! body; the body hands the payloads out and counts the bytes taken, which the connection
//! collects to give the client more window (WINDOW_UPDATE) only as the upstream takes them, so
//! an upload is paced by the upstream and memory per stream stays within its window.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Frame, SizeHint};

/// Bytes taken by a body past which it wakes the connection to give them back as window.
const WAKE_AT: usize = 16 * 1024;

/// Why a request body could not be read from the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    /// The client reset the stream mid-body.
    #[error("the client reset the stream mid-body")]
    Reset,
    /// The connection ended mid-body.
    #[error("the client connection ended mid-body")]
    Closed,
    /// The body did not match its `content-length`.
    #[error("the request body does not match its content-length")]
    Length,
}

/// A request body received on an HTTP/2 stream.
#[derive(Debug)]
pub struct Body {
    chan: Arc<Chan>,
    /// The `content-length` the request declared.
    length: Option<u64>,
    /// Bytes handed out so far.
    taken: u64,
    /// The client waits for `100 Continue` before it sends the body: asked for on the first
    /// poll that finds nothing.
    expect_continue: bool,
}

/// The slot one stream's connection and body share.
#[derive(Debug)]
pub(super) struct Chan(Mutex<Slot>);

#[derive(Debug, Default)]
struct Slot {
    data: VecDeque<Bytes>,
    trailers: Option<HeaderMap>,
    /// No more data will come (END_STREAM, a reset or the connection's end).
    ended: bool,
    error: Option<BodyError>,
    /// Bytes taken by the body (or dropped with it) not yet given back as window.
    released: usize,
    /// The body was dropped: what arrives from now on is released at once.
    dropped: bool,
    /// The body is waiting for a client that waits for `100 Continue`.
    continue_wanted: bool,
    /// The connection was woken for `released` since it last collected it.
    woken: bool,
    body: Option<Waker>,
    conn: Option<Waker>,
}

impl Chan {
    fn lock(&self) -> MutexGuard<'_, Slot> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A slot whose connection's task is `conn`.
    pub(super) fn new(conn: &Waker) -> Arc<Chan> {
        Arc::new(Chan(Mutex::new(Slot {
            conn: Some(conn.clone()),
            ..Slot::default()
        })))
    }

    /// A body reading from `chan`, which declared `length` bytes and may wait for `100
    /// Continue` (`expect_continue`).
    pub(super) fn body(chan: &Arc<Chan>, length: Option<u64>, expect_continue: bool) -> Body {
        Body {
            chan: chan.clone(),
            length,
            taken: 0,
            expect_continue,
        }
    }

    /// Hands a DATA payload to the body; `conn` is woken as the body takes it.
    pub(super) fn push(&self, data: Bytes, conn: &Waker) {
        let mut slot = self.lock();
        if slot.dropped {
            slot.released += data.len();
            return;
        }
        slot.data.push_back(data);
        if !slot.conn.as_ref().is_some_and(|w| w.will_wake(conn)) {
            slot.conn = Some(conn.clone());
        }
        let body = slot.body.take();
        drop(slot);
        if let Some(body) = body {
            body.wake();
        }
    }

    /// Ends the body: with `trailers`, or with `error`.
    pub(super) fn end(&self, trailers: Option<HeaderMap>, error: Option<BodyError>) {
        let mut slot = self.lock();
        if slot.ended {
            return;
        }
        slot.ended = true;
        slot.trailers = trailers;
        slot.error = error;
        let body = slot.body.take();
        drop(slot);
        if let Some(body) = body {
            body.wake();
        }
    }

    /// Takes the bytes released since the last call, and whether the body asked for `100
    /// Continue` meanwhile.
    pub(super) fn collect(&self) -> (usize, bool) {
        let mut slot = self.lock();
        slot.woken = false;
        (
            std::mem::take(&mut slot.released),
            std::mem::take(&mut slot.continue_wanted),
        )
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
        if let Some(data) = slot.data.pop_front() {
            this.expect_continue = false;
            slot.released += data.len();
            this.taken += data.len() as u64;
            // Once per collection: the connection may be waiting for this window, and the
            // body may be read from another task (hyper's client, for `h2` pools).
            let due = slot.released >= WAKE_AT || (slot.ended && slot.data.is_empty());
            let conn = if due && !std::mem::replace(&mut slot.woken, true) {
                slot.conn.clone()
            } else {
                None
            };
            drop(slot);
            if let Some(conn) = conn {
                conn.wake();
            }
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        if !slot.ended {
            if !slot.body.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                slot.body = Some(cx.waker().clone());
            }
            if std::mem::take(&mut this.expect_continue) {
                slot.continue_wanted = true;
                let conn = slot.conn.clone();
                drop(slot);
                if let Some(conn) = conn {
                    conn.wake();
                }
            }
            return Poll::Pending;
        }
        if let Some(error) = slot.error.take() {
            return Poll::Ready(Some(Err(error)));
        }
        Poll::Ready(slot.trailers.take().map(|t| Ok(Frame::trailers(t))))
    }

    fn is_end_stream(&self) -> bool {
        self.length == Some(self.taken) || {
            let slot = self.chan.lock();
            slot.ended && slot.data.is_empty() && slot.trailers.is_none() && slot.error.is_none()
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self.length {
            Some(n) => SizeHint::with_exact(n.saturating_sub(self.taken)),
            None => SizeHint::default(),
        }
    }
}

impl Drop for Body {
    fn drop(&mut self) {
        let mut slot = self.chan.lock();
        slot.dropped = true;
        let unread: usize = slot.data.drain(..).map(|d| d.len()).sum();
        slot.released += unread;
        let conn = slot.conn.take();
        drop(slot);
        if let Some(conn) = conn {
            conn.wake();
        }
    }
}
