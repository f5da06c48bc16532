//! Raw-byte check of HTTP/1 request heads for smuggling shapes hyper normalises away.
//!
//! hyper follows RFC 9112's lenient options: with both `Content-Length` and
//! `Transfer-Encoding` it drops the length and reads the body as chunked, and it merges
//! repeated identical `Content-Length` lines. That is safe for hyper, but SPEC section 10 asks
//! a proxy to refuse such requests (400, connection closed), and once hyper has parsed them the
//! handler can no longer see the evidence. So the listener's [`super::activity::WatchedIo`]
//! hands the bytes of each new request head to [`HeadScan`] as they are read; the scan only
//! counts header lines by name and never allocates unless a head spans several reads.

/// Most bytes of one head kept while waiting for its end; past it hyper answers 431 anyway.
const MAX_HEAD: usize = 64 * 1024;

/// What the scan of one request head found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// The head is not complete yet; feed more bytes.
    Partial,
    /// The head ended and its framing headers are unambiguous.
    Clean,
    /// The head repeats `Content-Length` or has it beside `Transfer-Encoding`.
    Ambiguous,
}

/// Incremental scan of one request head.
#[derive(Debug, Default)]
pub(crate) struct HeadScan {
    /// Bytes of a head that did not end in the reads seen so far.
    pending: Vec<u8>,
}

impl HeadScan {
    /// Feeds bytes that continue the current head.
    pub(crate) fn feed(&mut self, bytes: &[u8]) -> Verdict {
        if self.pending.is_empty() {
            let verdict = scan(bytes);
            if verdict == Verdict::Partial {
                self.pending
                    .extend_from_slice(&bytes[..bytes.len().min(MAX_HEAD)]);
            }
            return verdict;
        }
        let room = MAX_HEAD.saturating_sub(self.pending.len());
        self.pending
            .extend_from_slice(&bytes[..bytes.len().min(room)]);
        let verdict = scan(&self.pending);
        if verdict != Verdict::Partial || room == 0 {
            self.pending = Vec::new();
        }
        verdict
    }

    /// Forgets a partial head (the connection moved on).
    pub(crate) fn reset(&mut self) {
        self.pending = Vec::new();
    }
}

/// Scans `bytes`, which start at a request line, up to the blank line that ends the head.
fn scan(bytes: &[u8]) -> Verdict {
    let mut lengths = 0u32;
    let mut encodings = 0u32;
    // Skip the request line; header lines follow until an empty line.
    let mut lines = bytes.split(|b| *b == b'\n');
    if lines.next().is_none() {
        return Verdict::Partial;
    }
    let mut consumed = bytes
        .iter()
        .position(|b| *b == b'\n')
        .map_or(bytes.len(), |i| i + 1);
    for line in lines {
        if consumed + line.len() >= bytes.len() {
            // This line has no terminating LF yet: the head continues in a later read.
            return Verdict::Partial;
        }
        consumed += line.len() + 1;
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            return if lengths > 1 || (lengths > 0 && encodings > 0) {
                Verdict::Ambiguous
            } else {
                Verdict::Clean
            };
        }
        if has_name(line, b"content-length") {
            lengths += 1;
        } else if has_name(line, b"transfer-encoding") {
            encodings += 1;
        }
    }
    Verdict::Partial
}

/// Whether a header line is `name:` (names are case-insensitive; no space before the colon).
fn has_name(line: &[u8], name: &[u8]) -> bool {
    line.len() > name.len()
        && line[name.len()] == b':'
        && line[..name.len()].eq_ignore_ascii_case(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plain_head_is_clean() {
        assert_eq!(scan(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"), Verdict::Clean);
        assert_eq!(
            scan(b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello"),
            Verdict::Clean
        );
        assert_eq!(
            scan(b"POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n"),
            Verdict::Clean
        );
    }

    #[test]
    fn length_beside_encoding_or_twice_is_ambiguous() {
        assert_eq!(
            scan(b"POST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"),
            Verdict::Ambiguous
        );
        assert_eq!(
            scan(b"POST / HTTP/1.1\r\nCONTENT-LENGTH: 5\r\ncontent-length: 5\r\n\r\nhello"),
            Verdict::Ambiguous
        );
    }

    #[test]
    fn a_header_named_like_a_prefix_does_not_count() {
        assert_eq!(
            scan(b"GET / HTTP/1.1\r\nContent-Lengthy: 5\r\nContent-Length: 0\r\n\r\n"),
            Verdict::Clean
        );
    }

    #[test]
    fn a_head_split_across_reads_is_scanned_whole() {
        let mut scan = HeadScan::default();
        assert_eq!(
            scan.feed(b"POST / HTTP/1.1\r\nContent-Len"),
            Verdict::Partial
        );
        assert_eq!(
            scan.feed(b"gth: 5\r\nContent-Length: 5\r\n"),
            Verdict::Partial
        );
        assert_eq!(scan.feed(b"\r\nhello"), Verdict::Ambiguous);
        assert_eq!(scan.feed(b"GET / HTTP/1.1\r\n\r\n"), Verdict::Clean);
    }

    #[test]
    fn bare_lf_heads_are_scanned_too() {
        assert_eq!(
            scan(b"GET / HTTP/1.1\nContent-Length: 1\nContent-Length: 1\n\nx"),
            Verdict::Ambiguous
        );
    }
}
