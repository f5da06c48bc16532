//! The frames a client sends, taken in by its connection (RFC 9113 section 6), and what each
//! does to the connection's streams and windows.

use std::future::Future;
use std::task::Context;

use bytes::{Buf, Bytes, BytesMut};
use http::{Request, Response};
use tokio::io::{AsyncRead, AsyncWrite};

use super::frame::{self, Head, Reason};
use super::request::{self, Refused};
use super::{
    Block, BodyError, Chan, Conn, ConnResult, Send, Stream, MAX_BLOCK, MAX_CONCURRENT,
    MAX_CONTINUATIONS, PREFACE, STREAM_WINDOW,
};
use crate::body::{ClientBody, ResponseBody};

impl<S, F, M> Conn<S, F, M>
where
    S: AsyncRead + AsyncWrite + Unpin,
    F: Future<Output = Response<ResponseBody>>,
    M: FnMut(Request<ClientBody>) -> F,
{
    /// Takes in every complete frame read so far.
    pub(super) fn on_frames(&mut self, cx: &Context<'_>) -> ConnResult {
        if !self.preface {
            let n = self.read.len().min(PREFACE.len());
            if self.read[..n] != PREFACE[..n] {
                return Err(Reason::ProtocolError);
            }
            if n < PREFACE.len() {
                return Ok(());
            }
            self.read.advance(PREFACE.len());
            self.preface = true;
        }
        while self.read.len() >= frame::HEAD_LEN {
            let head = Head::parse(&self.read);
            if head.len > frame::DEFAULT_MAX_FRAME {
                return Err(Reason::FrameSizeError);
            }
            if self.read.len() < frame::HEAD_LEN + head.len {
                self.read
                    .reserve(frame::HEAD_LEN + head.len - self.read.len());
                return Ok(());
            }
            if !self.settled && head.kind != frame::SETTINGS {
                return Err(Reason::ProtocolError);
            }
            if self.failed.is_some() {
                return Ok(());
            }
            if let Some(block) = &self.block {
                if head.kind != frame::CONTINUATION || head.stream != block.stream {
                    return Err(Reason::ProtocolError);
                }
            }
            self.on_frame(head, cx)?;
            if self.resets == 0 {
                return Err(Reason::EnhanceYourCalm);
            }
        }
        Ok(())
    }

    fn on_frame(&mut self, head: Head, cx: &Context<'_>) -> ConnResult {
        let frame = self.read.split_to(frame::HEAD_LEN + head.len);
        // DATA and header blocks keep their payload as shared bytes; the others are read in
        // place.
        match head.kind {
            frame::DATA | frame::HEADERS | frame::CONTINUATION => {
                let payload = frame.freeze().slice(frame::HEAD_LEN..);
                match head.kind {
                    frame::DATA => self.on_data(head, payload, cx),
                    frame::HEADERS => self.on_headers(head, payload, cx),
                    _ => self.on_continuation(head, payload, cx),
                }
            }
            frame::SETTINGS => self.on_settings(head, &frame[frame::HEAD_LEN..]),
            _ => {
                let payload = &frame[frame::HEAD_LEN..];
                let mut p = [0u8; 8];
                let n = payload.len().min(8);
                p[..n].copy_from_slice(&payload[..n]);
                self.on_control(head, p)
            }
        }
    }

    /// The frames other than DATA, header blocks and SETTINGS (whose payloads that matter are
    /// eight bytes or fewer).
    fn on_control(&mut self, head: Head, p: [u8; 8]) -> ConnResult {
        let word = |at: usize| u32::from_be_bytes([p[at], p[at + 1], p[at + 2], p[at + 3]]);
        match head.kind {
            frame::PING => {
                if head.stream != 0 {
                    return Err(Reason::ProtocolError);
                }
                if head.len != 8 {
                    return Err(Reason::FrameSizeError);
                }
                if !head.has(frame::ACK) {
                    frame::put_ping_ack(&mut self.out, &p);
                }
                Ok(())
            }
            frame::WINDOW_UPDATE => {
                if head.len != 4 {
                    return Err(Reason::FrameSizeError);
                }
                self.on_window_update(head.stream, word(0) & 0x7fff_ffff)
            }
            frame::RST_STREAM => {
                if head.len != 4 {
                    return Err(Reason::FrameSizeError);
                }
                if head.stream == 0 || self.is_idle(head.stream) {
                    return Err(Reason::ProtocolError);
                }
                if let Some(at) = self.find(head.stream) {
                    let opened = self.streams[at].opened_ms;
                    self.remove(at, BodyError::Reset);
                    self.closed.add(head.stream);
                    self.charge_reset(Some(opened));
                }
                Ok(())
            }
            frame::PRIORITY => {
                if head.stream == 0 {
                    return Err(Reason::ProtocolError);
                }
                if head.len != 5 {
                    self.reset_id(head.stream, Reason::FrameSizeError);
                } else if word(0) & 0x7fff_ffff == head.stream {
                    // A stream cannot depend on itself (section 5.3.1).
                    self.reset_id(head.stream, Reason::ProtocolError);
                }
                Ok(())
            }
            frame::GOAWAY => {
                if head.stream != 0 {
                    return Err(Reason::ProtocolError);
                }
                if head.len < 8 {
                    return Err(Reason::FrameSizeError);
                }
                self.peer_gone = true;
                Ok(())
            }
            frame::PUSH_PROMISE | frame::CONTINUATION => Err(Reason::ProtocolError),
            // Unknown types are ignored (section 5.5).
            _ => Ok(()),
        }
    }

    fn on_settings(&mut self, head: Head, values: &[u8]) -> ConnResult {
        if head.stream != 0 {
            return Err(Reason::ProtocolError);
        }
        if head.has(frame::ACK) {
            return if head.len == 0 {
                Ok(())
            } else {
                Err(Reason::FrameSizeError)
            };
        }
        if !head.len.is_multiple_of(6) {
            return Err(Reason::FrameSizeError);
        }
        for value in values.chunks_exact(6) {
            let id = u16::from_be_bytes([value[0], value[1]]);
            let v = u32::from_be_bytes([value[2], value[3], value[4], value[5]]);
            match id {
                frame::SETTINGS_ENABLE_PUSH if v > 1 => return Err(Reason::ProtocolError),
                frame::SETTINGS_INITIAL_WINDOW_SIZE => {
                    let v = i64::from(v);
                    if v > frame::MAX_WINDOW {
                        return Err(Reason::FlowControlError);
                    }
                    let delta = v - self.peer_window;
                    self.peer_window = v;
                    for stream in &mut self.streams {
                        stream.send_window += delta;
                        if stream.send_window > frame::MAX_WINDOW {
                            return Err(Reason::FlowControlError);
                        }
                    }
                }
                frame::SETTINGS_MAX_FRAME_SIZE => {
                    if !(frame::DEFAULT_MAX_FRAME as u32..=frame::MAX_MAX_FRAME).contains(&v) {
                        return Err(Reason::ProtocolError);
                    }
                    self.peer_max_frame = v as usize;
                }
                // Our encoder never indexes, so the client's table size does not matter;
                // the others concern a client's side only.
                _ => {}
            }
        }
        self.settled = true;
        frame::put_settings_ack(&mut self.out);
        Ok(())
    }

    fn on_window_update(&mut self, id: u32, increment: u32) -> ConnResult {
        let increment = i64::from(increment);
        if id == 0 {
            if increment == 0 {
                return Err(Reason::ProtocolError);
            }
            self.conn_send += increment;
            if self.conn_send > frame::MAX_WINDOW {
                return Err(Reason::FlowControlError);
            }
            return Ok(());
        }
        if self.is_idle(id) {
            return Err(Reason::ProtocolError);
        }
        let Some(at) = self.find(id) else {
            return Ok(());
        };
        if increment == 0 {
            self.reset(at, Reason::ProtocolError);
            return Ok(());
        }
        let stream = &mut self.streams[at];
        stream.send_window += increment;
        if stream.send_window > frame::MAX_WINDOW {
            self.reset(at, Reason::FlowControlError);
        }
        Ok(())
    }

    fn on_data(&mut self, head: Head, payload: Bytes, cx: &Context<'_>) -> ConnResult {
        if head.stream == 0 || self.is_idle(head.stream) {
            return Err(Reason::ProtocolError);
        }
        let (start, end) = frame::unpad(&head, &payload).ok_or(Reason::ProtocolError)?;
        let len = head.len;
        self.conn_recv -= len as i64;
        if self.conn_recv < 0 {
            return Err(Reason::FlowControlError);
        }
        let Some(at) = self.find(head.stream) else {
            // A stream already closed: its bytes are dropped, their window given back. Sent
            // before the client knew of our reset, they are no error (section 5.4.2).
            self.conn_credit += len;
            if !self.reset_sent.has(head.stream) && !self.past_goaway(head.stream) {
                self.reset_id(head.stream, Reason::StreamClosed);
            }
            return Ok(());
        };
        let data = payload.slice(start..end);
        let padding = len - data.len();
        self.conn_credit += padding;
        let stream = &mut self.streams[at];
        if !stream.recv_open {
            self.conn_credit += data.len();
            self.reset(at, Reason::StreamClosed);
            return Ok(());
        }
        stream.recv_window -= len as i64;
        if stream.recv_window < 0 {
            self.conn_credit += data.len();
            self.reset(at, Reason::FlowControlError);
            return Ok(());
        }
        stream.credit += padding;
        stream.received += data.len() as u64;
        let end_stream = head.has(frame::END_STREAM);
        let length = stream.length;
        if length.is_some_and(|n| stream.received > n || (end_stream && stream.received != n)) {
            self.conn_credit += data.len();
            self.reset(at, Reason::ProtocolError);
            return Ok(());
        }
        let stream = &mut self.streams[at];
        if let Some(chan) = &stream.chan {
            if !data.is_empty() {
                stream.unreleased += data.len();
                chan.push(data, cx.waker());
            }
            if end_stream {
                chan.end(None, None);
            }
        }
        if end_stream {
            stream.recv_open = false;
        }
        Ok(())
    }

    fn on_headers(&mut self, head: Head, payload: Bytes, cx: &Context<'_>) -> ConnResult {
        if head.stream == 0 || head.stream.is_multiple_of(2) {
            return Err(Reason::ProtocolError);
        }
        let (mut start, end) = frame::unpad(&head, &payload).ok_or(Reason::ProtocolError)?;
        let mut refused = false;
        if head.has(frame::PRIORITY_FLAG) {
            start += 5;
            if start > end {
                return Err(Reason::FrameSizeError);
            }
            let depends = u32::from_be_bytes([
                payload[start - 5],
                payload[start - 4],
                payload[start - 3],
                payload[start - 2],
            ]) & 0x7fff_ffff;
            // A stream cannot depend on itself (section 5.3.1).
            refused = depends == head.stream;
        }
        let fragment = payload.slice(start..end);
        let end_stream = head.has(frame::END_STREAM);
        if !head.has(frame::END_HEADERS) {
            let mut bytes = BytesMut::with_capacity(fragment.len() * 2);
            bytes.extend_from_slice(&fragment);
            self.block = Some(Block {
                stream: head.stream,
                end_stream,
                refused,
                bytes,
                continuations: 0,
            });
            self.activity.head_started();
            self.block_deadline = Some(Box::pin(tokio::time::sleep(self.header_timeout)));
            return Ok(());
        }
        self.on_block(head.stream, end_stream, refused, fragment, cx)
    }

    fn on_continuation(&mut self, head: Head, payload: Bytes, cx: &Context<'_>) -> ConnResult {
        let Some(block) = &mut self.block else {
            return Err(Reason::ProtocolError);
        };
        block.continuations += 1;
        if block.bytes.len() + payload.len() > MAX_BLOCK || block.continuations > MAX_CONTINUATIONS
        {
            return Err(Reason::EnhanceYourCalm);
        }
        block.bytes.extend_from_slice(&payload);
        if !head.has(frame::END_HEADERS) {
            return Ok(());
        }
        let block = self.block.take().expect("checked above");
        self.activity.head_ended();
        self.block_deadline = None;
        let bytes = block.bytes.freeze();
        self.on_block(block.stream, block.end_stream, block.refused, bytes, cx)
    }

    /// A complete header block: a new request, or a stream's trailers.
    fn on_block(
        &mut self,
        id: u32,
        end_stream: bool,
        refused: bool,
        block: Bytes,
        cx: &Context<'_>,
    ) -> ConnResult {
        let limit = self.max_header_bytes;
        if id <= self.last_id {
            let trailers = request::decode_trailers(&mut self.decoder, block, 2 * limit);
            if matches!(trailers, Err(Refused::Compression)) {
                return Err(Reason::CompressionError);
            }
            let Some(at) = self.find(id) else {
                // The block was read for HPACK's sake. Trailers of a stream we reset, sent
                // before the client knew, are no error; on a stream that ended otherwise
                // they are; a lower stream than the last one opened is one no longer idle.
                if self.reset_sent.has(id) || self.past_goaway(id) {
                    return Ok(());
                }
                if self.closed.has(id) {
                    return Err(Reason::StreamClosed);
                }
                return Err(Reason::ProtocolError);
            };
            if !self.streams[at].recv_open {
                self.reset(at, Reason::StreamClosed);
                return Ok(());
            }
            let (Ok(trailers), true, false) = (trailers, end_stream, refused) else {
                self.reset(at, Reason::ProtocolError);
                return Ok(());
            };
            let stream = &mut self.streams[at];
            if stream.length.is_some_and(|n| n != stream.received) {
                self.reset(at, Reason::ProtocolError);
                return Ok(());
            }
            if let Some(chan) = &stream.chan {
                chan.end(Some(trailers), None);
            }
            stream.recv_open = false;
            return Ok(());
        }
        self.last_id = id;
        let head = match request::decode_request(&mut self.decoder, block, limit) {
            Ok(head) => head,
            Err(Refused::Compression) => return Err(Reason::CompressionError),
            Err(Refused::Malformed) => {
                self.reset_id(id, Reason::ProtocolError);
                return Ok(());
            }
        };
        if self.goaway.is_some() {
            // Past the last stream GOAWAY named: the client will retry it elsewhere.
            return Ok(());
        }
        if self.streams.len() >= MAX_CONCURRENT as usize {
            self.reset_id(id, Reason::RefusedStream);
            return Ok(());
        }
        if refused || (end_stream && head.length.is_some_and(|n| n > 0)) {
            self.reset_id(id, Reason::ProtocolError);
            return Ok(());
        }
        self.open(id, end_stream, head, cx);
        Ok(())
    }

    /// Starts a stream: its entry, its body's slot, and the proxy's future.
    fn open(&mut self, id: u32, end_stream: bool, head: request::Head, cx: &Context<'_>) {
        let (chan, body) = if end_stream {
            (None, ClientBody::Empty)
        } else {
            let chan = Chan::new(cx.waker());
            let body = Chan::body(&chan, head.length, head.expect_continue);
            (Some(chan), ClientBody::H2(body))
        };
        let head_request = head.parts.method == http::Method::HEAD;
        self.streams.push(Stream {
            id,
            chan,
            recv_open: !end_stream,
            recv_window: i64::from(STREAM_WINDOW),
            credit: 0,
            unreleased: 0,
            length: head.length,
            received: 0,
            send_window: self.peer_window,
            opened_ms: self.activity.last_read_ms(),
            parked: false,
            head_request,
            send: Send::Waiting,
        });
        let future = (self.make)(Request::from_parts(head.parts, body));
        self.running.start(id, future);
    }

    /// Whether `id` names a stream the client has not opened yet.
    fn is_idle(&self, id: u32) -> bool {
        id > self.last_id
    }

    /// Whether `id` came after the last stream our GOAWAY named: never served, ignored.
    fn past_goaway(&self, id: u32) -> bool {
        self.goaway.is_some_and(|last| id > last)
    }
}
