//! HTTP/2 frames on the wire (RFC 9113 section 4 and 6): the nine-byte frame header, the
//! frame types and flags the server reads, the error codes, and writers for the frames the
//! server sends. Nothing here keeps state; the connection (`super`) does.

/// DATA (RFC 9113 section 6.1).
pub(super) const DATA: u8 = 0x0;
/// HEADERS (section 6.2).
pub(super) const HEADERS: u8 = 0x1;
/// PRIORITY (section 6.3).
pub(super) const PRIORITY: u8 = 0x2;
/// RST_STREAM (section 6.4).
pub(super) const RST_STREAM: u8 = 0x3;
/// SETTINGS (section 6.5).
pub(super) const SETTINGS: u8 = 0x4;
/// PUSH_PROMISE (section 6.6): never valid from a client.
pub(super) const PUSH_PROMISE: u8 = 0x5;
/// PING (section 6.7).
pub(super) const PING: u8 = 0x6;
/// GOAWAY (section 6.8).
pub(super) const GOAWAY: u8 = 0x7;
/// WINDOW_UPDATE (section 6.9).
pub(super) const WINDOW_UPDATE: u8 = 0x8;
/// CONTINUATION (section 6.10).
pub(super) const CONTINUATION: u8 = 0x9;

/// END_STREAM on DATA and HEADERS.
pub(super) const END_STREAM: u8 = 0x1;
/// ACK on SETTINGS and PING.
pub(super) const ACK: u8 = 0x1;
/// END_HEADERS on HEADERS and CONTINUATION.
pub(super) const END_HEADERS: u8 = 0x4;
/// PADDED on DATA and HEADERS.
pub(super) const PADDED: u8 = 0x8;
/// PRIORITY on HEADERS.
pub(super) const PRIORITY_FLAG: u8 = 0x20;

/// SETTINGS_ENABLE_PUSH.
pub(super) const SETTINGS_ENABLE_PUSH: u16 = 0x2;
/// SETTINGS_MAX_CONCURRENT_STREAMS.
pub(super) const SETTINGS_MAX_CONCURRENT_STREAMS: u16 = 0x3;
/// SETTINGS_INITIAL_WINDOW_SIZE.
pub(super) const SETTINGS_INITIAL_WINDOW_SIZE: u16 = 0x4;
/// SETTINGS_MAX_FRAME_SIZE.
pub(super) const SETTINGS_MAX_FRAME_SIZE: u16 = 0x5;
/// SETTINGS_MAX_HEADER_LIST_SIZE.
pub(super) const SETTINGS_MAX_HEADER_LIST_SIZE: u16 = 0x6;

/// The length of a frame header.
pub(super) const HEAD_LEN: usize = 9;
/// The largest frame payload before SETTINGS_MAX_FRAME_SIZE says otherwise.
pub(super) const DEFAULT_MAX_FRAME: usize = 16_384;
/// The largest value SETTINGS_MAX_FRAME_SIZE may take.
pub(super) const MAX_MAX_FRAME: u32 = (1 << 24) - 1;
/// The largest flow-control window (2^31 - 1).
pub(super) const MAX_WINDOW: i64 = (1 << 31) - 1;
/// Every window's size before SETTINGS or WINDOW_UPDATE change it.
pub(super) const DEFAULT_WINDOW: i64 = 65_535;

/// An error code of RST_STREAM and GOAWAY (RFC 9113 section 7).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reason {
    NoError = 0x0,
    ProtocolError = 0x1,
    InternalError = 0x2,
    FlowControlError = 0x3,
    StreamClosed = 0x5,
    FrameSizeError = 0x6,
    RefusedStream = 0x7,
    CompressionError = 0x9,
    EnhanceYourCalm = 0xb,
}

/// A frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Head {
    /// The payload's length.
    pub(super) len: usize,
    /// The frame type.
    pub(super) kind: u8,
    /// The flags.
    pub(super) flags: u8,
    /// The stream identifier (the reserved bit cleared).
    pub(super) stream: u32,
}

impl Head {
    /// Reads a frame header from the first nine bytes of `b`.
    pub(super) fn parse(b: &[u8]) -> Head {
        Head {
            len: (usize::from(b[0]) << 16) | (usize::from(b[1]) << 8) | usize::from(b[2]),
            kind: b[3],
            flags: b[4],
            stream: u32::from_be_bytes([b[5], b[6], b[7], b[8]]) & 0x7fff_ffff,
        }
    }

    /// Whether `flag` is set.
    pub(super) fn has(&self, flag: u8) -> bool {
        self.flags & flag != 0
    }
}

/// Appends a frame header.
pub(super) fn put_head(out: &mut Vec<u8>, len: usize, kind: u8, flags: u8, stream: u32) {
    let len = len as u32;
    let s = stream.to_be_bytes();
    out.extend_from_slice(&[
        (len >> 16) as u8,
        (len >> 8) as u8,
        len as u8,
        kind,
        flags,
        s[0],
        s[1],
        s[2],
        s[3],
    ]);
}

/// Appends a header whose length is patched in later by [`patch_len`]; returns where it is.
pub(super) fn open_head(out: &mut Vec<u8>, kind: u8, flags: u8, stream: u32) -> usize {
    let at = out.len();
    put_head(out, 0, kind, flags, stream);
    at
}

/// Sets the length of the frame header at `at` to `len`.
pub(super) fn patch_len(out: &mut [u8], at: usize, len: usize) {
    out[at] = (len >> 16) as u8;
    out[at + 1] = (len >> 8) as u8;
    out[at + 2] = len as u8;
}

/// Appends SETTINGS with `values`.
pub(super) fn put_settings(out: &mut Vec<u8>, values: &[(u16, u32)]) {
    put_head(out, values.len() * 6, SETTINGS, 0, 0);
    for (id, value) in values {
        out.extend_from_slice(&id.to_be_bytes());
        out.extend_from_slice(&value.to_be_bytes());
    }
}

/// Appends a SETTINGS acknowledgement.
pub(super) fn put_settings_ack(out: &mut Vec<u8>) {
    put_head(out, 0, SETTINGS, ACK, 0);
}

/// Appends a PING acknowledgement echoing `payload`.
pub(super) fn put_ping_ack(out: &mut Vec<u8>, payload: &[u8]) {
    put_head(out, 8, PING, ACK, 0);
    out.extend_from_slice(payload);
}

/// Appends RST_STREAM.
pub(super) fn put_reset(out: &mut Vec<u8>, stream: u32, reason: Reason) {
    put_head(out, 4, RST_STREAM, 0, stream);
    out.extend_from_slice(&(reason as u32).to_be_bytes());
}

/// Appends GOAWAY.
pub(super) fn put_goaway(out: &mut Vec<u8>, last: u32, reason: Reason) {
    put_head(out, 8, GOAWAY, 0, 0);
    out.extend_from_slice(&last.to_be_bytes());
    out.extend_from_slice(&(reason as u32).to_be_bytes());
}

/// Appends WINDOW_UPDATE.
pub(super) fn put_window_update(out: &mut Vec<u8>, stream: u32, increment: u32) {
    put_head(out, 4, WINDOW_UPDATE, 0, stream);
    out.extend_from_slice(&increment.to_be_bytes());
}

/// A DATA or HEADERS payload without its padding (RFC 9113 section 6.1); `None` when the pad
/// length leaves no room, a connection error.
pub(super) fn unpad(head: &Head, payload: &[u8]) -> Option<(usize, usize)> {
    if !head.has(PADDED) {
        return Some((0, payload.len()));
    }
    let pad = usize::from(*payload.first()?);
    let end = payload.len().checked_sub(pad)?;
    (end >= 1).then_some((1, end))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_header_reads_back_as_written() {
        let mut out = Vec::new();
        put_head(
            &mut out,
            0x01_02_03,
            HEADERS,
            END_HEADERS | END_STREAM,
            0x7fff_ffff,
        );
        let head = Head::parse(&out);
        assert_eq!(head.len, 0x01_02_03);
        assert_eq!(head.kind, HEADERS);
        assert!(head.has(END_HEADERS) && head.has(END_STREAM) && !head.has(PADDED));
        assert_eq!(head.stream, 0x7fff_ffff);
        // The reserved bit is ignored on receipt.
        out[5] |= 0x80;
        assert_eq!(Head::parse(&out).stream, 0x7fff_ffff);
    }

    #[test]
    fn padding_is_taken_off_or_refused() {
        let padded = Head {
            len: 0,
            kind: DATA,
            flags: PADDED,
            stream: 1,
        };
        assert_eq!(unpad(&padded, &[2, b'a', b'b', 0, 0]), Some((1, 3)));
        assert_eq!(unpad(&padded, &[0]), Some((1, 1)));
        assert_eq!(unpad(&padded, &[4, 0, 0, 0]), None);
        assert_eq!(unpad(&padded, &[]), None);
        let plain = Head { flags: 0, ..padded };
        assert_eq!(unpad(&plain, b"ab"), Some((0, 2)));
    }
}
