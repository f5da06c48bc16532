//! Responses on their way to the client: header blocks, DATA frames within the client's
//! windows, trailers, and the end of each stream (RFC 9113 sections 5.1, 6.9 and 8.1).

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body::Body as _;
use tokio::io::{AsyncRead, AsyncWrite};

use super::frame::{self, Reason};
use super::{hpack, request};
use super::{
    BodyError, Conn, Send, Stream, CREDIT_AT, MAX_OUT, RESET_BUDGET, RESET_REFILL_MS,
    RESET_YOUNG_MS,
};
use crate::body::{ClientBody, ResponseBody};

/// What one turn of a stream's body did.
enum Sent {
    /// Nothing more can go now (no window, no frame ready, or the buffer is full).
    Waiting,
    /// The response ended.
    Finished,
    /// The body failed: the stream is reset.
    Failed,
}

impl<S, F, M> Conn<S, F, M>
where
    S: AsyncRead + AsyncWrite + Unpin,
    F: Future<Output = Response<ResponseBody>>,
    M: FnMut(Request<ClientBody>) -> F,
{
    /// The position of stream `id` among the open ones.
    pub(super) fn find(&self, id: u32) -> Option<usize> {
        self.streams.iter().position(|s| s.id == id)
    }

    /// Resets the stream at `at` with `reason`.
    pub(super) fn reset(&mut self, at: usize, reason: Reason) {
        let id = self.streams[at].id;
        self.put_reset(id, reason);
        self.remove(at, BodyError::Reset);
    }

    /// Resets stream `id`, open or not.
    pub(super) fn reset_id(&mut self, id: u32, reason: Reason) {
        match self.find(id) {
            Some(at) => self.reset(at, reason),
            None => self.put_reset(id, reason),
        }
    }

    /// RST_STREAM for `id`, remembered; a reset for the client's fault spends the budget
    /// (not REFUSED_STREAM: the stream cost nothing, and the client may retry it).
    fn put_reset(&mut self, id: u32, reason: Reason) {
        frame::put_reset(&mut self.out, id, reason);
        self.reset_sent.add(id);
        if !matches!(reason, Reason::InternalError | Reason::RefusedStream) {
            self.charge_reset(None);
        }
    }

    /// Spends one of the reset budget for a stream opened at `opened` (`None`: just now),
    /// if it was young, after refilling what time has earned.
    pub(super) fn charge_reset(&mut self, opened: Option<u64>) {
        let now = self.activity.last_read_ms();
        let earned = now.saturating_sub(self.refilled_ms) / RESET_REFILL_MS;
        if earned > 0 {
            let earned = u32::try_from(earned).unwrap_or(u32::MAX);
            self.resets = self.resets.saturating_add(earned).min(RESET_BUDGET);
            self.refilled_ms = now;
        }
        if opened.is_none_or(|at| now.saturating_sub(at) < RESET_YOUNG_MS) {
            self.resets = self.resets.saturating_sub(1);
        }
    }

    /// Forgets the stream at `at`: its future is dropped, its body ends with `error` if it
    /// was still coming, and what it held of the connection's window is given back.
    pub(super) fn remove(&mut self, at: usize, error: BodyError) {
        let stream = self.streams.swap_remove(at);
        if let Some(chan) = &stream.chan {
            if stream.recv_open {
                chan.end(None, Some(error));
            }
            self.conn_credit += stream.unreleased;
        }
        if matches!(stream.send, Send::Waiting) {
            self.running.cancel(stream.id);
        }
    }

    /// The response is all sent: a client still sending its body is told to stop.
    fn finish(&mut self, at: usize) {
        let id = self.streams[at].id;
        if self.streams[at].recv_open {
            frame::put_reset(&mut self.out, id, Reason::NoError);
            self.reset_sent.add(id);
        } else {
            self.closed.add(id);
        }
        self.remove(at, BodyError::Reset);
    }

    /// A stream's response is ready (`None`: its future was cancelled or panicked).
    pub(super) fn respond(&mut self, id: u32, response: Option<Response<ResponseBody>>) {
        let Some(at) = self.find(id) else {
            return;
        };
        let Some(response) = response else {
            self.reset(at, Reason::InternalError);
            return;
        };
        let (head, body) = response.into_parts();
        let stream = &mut self.streams[at];
        let bodiless = stream.head_request
            || head.status == StatusCode::NO_CONTENT
            || head.status == StatusCode::NOT_MODIFIED;
        let end = bodiless || body.is_end_stream();
        let length = body.size_hint().exact().filter(|_| {
            head.status != StatusCode::NO_CONTENT && head.status != StatusCode::NOT_MODIFIED
        });
        let flags = if end { frame::END_STREAM } else { 0 };
        let max_frame = self.peer_max_frame;
        write_block(&mut self.out, max_frame, id, flags, |out| {
            request::encode_head(out, Some(head.status.as_u16()), &head.headers, length);
        });
        if end {
            drop(body);
            self.finish(at);
        } else {
            stream.send = Send::Body {
                body,
                pending: Bytes::new(),
                last: false,
            };
        }
    }

    /// Sends what the streams' bodies have ready, within the windows; whether anything went.
    /// Each pass gives every stream one DATA frame at most, so one fast download does not
    /// hold back the others; a stream with nothing to send is not asked again in this call,
    /// and when the write buffer fills, the next call starts with the stream whose turn it was.
    pub(super) fn poll_bodies(&mut self, cx: &mut Context<'_>) -> bool {
        for stream in &mut self.streams {
            stream.parked = false;
        }
        let mut progress = false;
        loop {
            let mut pass = false;
            let mut at = 0;
            while at < self.streams.len() {
                if self.out.len() - self.written >= MAX_OUT {
                    self.streams.rotate_left(at);
                    return progress || pass;
                }
                if self.streams[at].parked {
                    at += 1;
                    continue;
                }
                let before = self.out.len();
                let sent = self.send_body(at, cx);
                let wrote = self.out.len() != before;
                pass |= wrote;
                match sent {
                    Sent::Waiting => {
                        self.streams[at].parked = !wrote;
                        at += 1;
                    }
                    Sent::Finished => {
                        pass = true;
                        self.finish(at);
                    }
                    Sent::Failed => {
                        pass = true;
                        self.reset(at, Reason::InternalError);
                    }
                }
            }
            if !pass {
                return progress;
            }
            progress = true;
        }
    }

    fn send_body(&mut self, at: usize, cx: &mut Context<'_>) -> Sent {
        let Conn {
            streams,
            out,
            conn_send,
            peer_max_frame,
            ..
        } = self;
        let stream: &mut Stream = &mut streams[at];
        let id = stream.id;
        let Send::Body {
            body,
            pending,
            last,
        } = &mut stream.send
        else {
            return Sent::Waiting;
        };
        loop {
            if !pending.is_empty() {
                let room = (*conn_send).min(stream.send_window).max(0) as usize;
                let n = pending.len().min(*peer_max_frame).min(room);
                if n == 0 {
                    return Sent::Waiting;
                }
                let end = *last && n == pending.len();
                frame::put_head(
                    out,
                    n,
                    frame::DATA,
                    if end { frame::END_STREAM } else { 0 },
                    id,
                );
                out.extend_from_slice(&pending[..n]);
                bytes::Buf::advance(pending, n);
                *conn_send -= n as i64;
                stream.send_window -= n as i64;
                return if end { Sent::Finished } else { Sent::Waiting };
            }
            if *last {
                frame::put_head(out, 0, frame::DATA, frame::END_STREAM, id);
                return Sent::Finished;
            }
            // A body that panics ends its stream alone, as the stream's future would.
            let polled =
                std::panic::catch_unwind(AssertUnwindSafe(|| Pin::new(&mut *body).poll_frame(cx)));
            let Ok(polled) = polled else {
                tracing::error!("an HTTP/2 response body panicked; its stream is reset");
                return Sent::Failed;
            };
            match polled {
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => {
                        *pending = data;
                        *last = body.is_end_stream();
                    }
                    Err(frame) => {
                        if let Ok(trailers) = frame.into_trailers() {
                            write_trailers(out, *peer_max_frame, id, &trailers);
                            return Sent::Finished;
                        }
                    }
                },
                Poll::Ready(Some(Err(error))) => {
                    tracing::debug!(%error, "response body failed; resetting the stream");
                    return Sent::Failed;
                }
                Poll::Ready(None) => *last = true,
                Poll::Pending => return Sent::Waiting,
            }
        }
    }

    /// Gives the client window back for what the bodies took.
    pub(super) fn give_credit(&mut self) {
        for stream in &mut self.streams {
            if let Some(chan) = &stream.chan {
                let (n, continue_wanted) = chan.collect();
                stream.unreleased -= n;
                self.conn_credit += n;
                stream.credit += n;
                if continue_wanted && stream.recv_open && matches!(stream.send, Send::Waiting) {
                    // `100 Continue`: an interim head, the stream stays open.
                    let at = frame::open_head(
                        &mut self.out,
                        frame::HEADERS,
                        frame::END_HEADERS,
                        stream.id,
                    );
                    hpack::encode_status(&mut self.out, 100);
                    let len = self.out.len() - at - frame::HEAD_LEN;
                    frame::patch_len(&mut self.out, at, len);
                }
            }
            if stream.recv_open && stream.credit >= CREDIT_AT {
                frame::put_window_update(&mut self.out, stream.id, stream.credit as u32);
                stream.recv_window += stream.credit as i64;
                stream.credit = 0;
            }
        }
        if self.conn_credit >= CREDIT_AT {
            frame::put_window_update(&mut self.out, 0, self.conn_credit as u32);
            self.conn_recv += self.conn_credit as i64;
            self.conn_credit = 0;
        }
    }
}

/// Appends a HEADERS frame for `id` whose block `encode` writes, split into CONTINUATION
/// frames when it is longer than the client's frames may be.
fn write_block(
    out: &mut Vec<u8>,
    max_frame: usize,
    id: u32,
    flags: u8,
    encode: impl FnOnce(&mut Vec<u8>),
) {
    let at = frame::open_head(out, frame::HEADERS, flags | frame::END_HEADERS, id);
    encode(out);
    let len = out.len() - at - frame::HEAD_LEN;
    if len <= max_frame {
        frame::patch_len(out, at, len);
        return;
    }
    let block = out.split_off(at + frame::HEAD_LEN);
    out.truncate(at);
    let mut chunks = block.chunks(max_frame).peekable();
    let mut kind = frame::HEADERS;
    let mut first_flags = flags;
    while let Some(chunk) = chunks.next() {
        let end_headers = if chunks.peek().is_none() {
            frame::END_HEADERS
        } else {
            0
        };
        frame::put_head(out, chunk.len(), kind, first_flags | end_headers, id);
        out.extend_from_slice(chunk);
        kind = frame::CONTINUATION;
        first_flags = 0;
    }
}

/// Appends a trailer section, which ends the stream.
fn write_trailers(out: &mut Vec<u8>, max_frame: usize, id: u32, trailers: &HeaderMap) {
    write_block(out, max_frame, id, frame::END_STREAM, |out| {
        request::encode_head(out, None, trailers, None);
    });
}
