//! Follows HTTP/1 request framing in the raw bytes a client sends, head by head.
//!
//! hyper follows RFC 9112's lenient options: with both `Content-Length` and
//! `Transfer-Encoding` it drops the length and reads the body as chunked, and it merges
//! repeated identical `Content-Length` lines. That is safe for hyper, but SPEC section 10 asks
//! a proxy to refuse such requests (400, connection closed), and once hyper has parsed them the
//! handler can no longer see the evidence. So the listener's `WatchedIo` passes every byte it
//! reads to a [`Framing`], which walks the same message boundaries hyper does (head, then a
//! `Content-Length` or chunked body, then the next head) and reports each head's verdict in
//! order, pipelined requests included. Knowing the boundaries also tells the connection
//! watchdog whether bytes are a new head (header timeout) or the rest of a body.
//!
//! It only looks at framing: header lines are matched by name and counted, nothing is
//! decoded, and nothing is copied unless a head or a chunk-size line spans two reads.

use std::borrow::Cow;

/// Most bytes of one head kept while waiting for its end; past it hyper answers 431 anyway.
const MAX_HEAD: usize = 64 * 1024;
/// Most bytes of a chunk-size line (with extensions) kept while waiting for its end.
const MAX_SIZE_LINE: usize = 4 * 1024;

/// What [`Framing::feed`] saw, in stream order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Event {
    /// The first byte of a request head arrived.
    HeadStarted,
    /// A head ended; `ambiguous` when it repeats `Content-Length`, has it beside
    /// `Transfer-Encoding`, or has a `Transfer-Encoding` other than one plain `chunked`.
    /// `body` when a body follows.
    HeadEnded {
        /// The head's framing is a smuggling shape.
        ambiguous: bool,
        /// A body follows the head.
        body: bool,
    },
    /// The body of the last head ended.
    BodyEnded,
    /// The client speaks HTTP/2 (prior knowledge): no more HTTP/1 framing to follow.
    Http2,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Between messages or inside a head (`pending` holds a partial head).
    Head,
    /// That many bytes of a `Content-Length` body remain.
    Length(u64),
    /// Reading a chunk-size line (`pending` holds a partial one).
    ChunkSize,
    /// That many bytes of chunk data remain, then the line end after them.
    ChunkData(u64),
    /// Skipping the line end after chunk data.
    ChunkEnd,
    /// Reading trailer lines until an empty one (`pending` holds a partial line).
    Trailers,
    /// Not HTTP/1 any more (HTTP/2, or lost sync after input hyper rejects).
    Opaque,
}

/// The framing state of one client connection.
#[derive(Debug)]
pub(crate) struct Framing {
    state: State,
    /// Bytes of a head, size line or trailer line that did not end in the reads so far.
    pending: Vec<u8>,
    /// A head is in progress (its first byte arrived).
    in_head: bool,
}

impl Default for Framing {
    fn default() -> Self {
        Framing {
            state: State::Head,
            pending: Vec::new(),
            in_head: false,
        }
    }
}

/// How a parsed head frames its body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Head {
    ambiguous: bool,
    body: Body,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Body {
    None,
    Length(u64),
    Chunked,
}

impl Framing {
    /// Consumes bytes read from the client, reporting what happened through `event`.
    pub(crate) fn feed(&mut self, mut bytes: &[u8], event: &mut impl FnMut(Event)) {
        while !bytes.is_empty() {
            bytes = match self.state {
                State::Opaque => return,
                State::Head => self.head(bytes, event),
                State::Length(left) => {
                    let take = left.min(bytes.len() as u64);
                    self.state = if take == left {
                        event(Event::BodyEnded);
                        State::Head
                    } else {
                        State::Length(left - take)
                    };
                    &bytes[take as usize..]
                }
                State::ChunkSize => match self.line(bytes, MAX_SIZE_LINE) {
                    Some((line, rest)) => {
                        self.state = match chunk_size(&line) {
                            Some(0) => State::Trailers,
                            Some(n) => State::ChunkData(n),
                            None => State::Opaque,
                        };
                        rest
                    }
                    None => &[],
                },
                State::ChunkData(left) => {
                    let take = left.min(bytes.len() as u64);
                    self.state = if take == left {
                        State::ChunkEnd
                    } else {
                        State::ChunkData(left - take)
                    };
                    &bytes[take as usize..]
                }
                State::ChunkEnd => match bytes.iter().position(|b| *b == b'\n') {
                    Some(i) => {
                        self.state = State::ChunkSize;
                        &bytes[i + 1..]
                    }
                    None => &[],
                },
                State::Trailers => match self.line(bytes, MAX_HEAD) {
                    Some((line, rest)) => {
                        if line.is_empty() {
                            event(Event::BodyEnded);
                            self.state = State::Head;
                        }
                        rest
                    }
                    None => &[],
                },
            };
        }
    }

    /// Head state: skips blank lines before a request line, then finds the end of the head.
    fn head<'a>(&mut self, bytes: &'a [u8], event: &mut impl FnMut(Event)) -> &'a [u8] {
        let mut bytes = bytes;
        if !self.in_head {
            // RFC 9112 section 2.2: empty lines before a request line are ignored.
            let skip = bytes
                .iter()
                .take_while(|b| **b == b'\r' || **b == b'\n')
                .count();
            bytes = &bytes[skip..];
            if bytes.is_empty() {
                return bytes;
            }
            self.in_head = true;
            event(Event::HeadStarted);
        }
        let Some((head, rest)) = self.complete_head(bytes) else {
            return &[];
        };
        self.in_head = false;
        let Some(head) = head else {
            event(Event::Http2);
            self.state = State::Opaque;
            return &[];
        };
        event(Event::HeadEnded {
            ambiguous: head.ambiguous,
            body: head.body != Body::None,
        });
        self.state = match head.body {
            Body::None => State::Head,
            Body::Length(0) => {
                event(Event::BodyEnded);
                State::Head
            }
            Body::Length(n) => State::Length(n),
            Body::Chunked => State::ChunkSize,
        };
        rest
    }

    /// The parsed head (`None` inside: the HTTP/2 preface) and the bytes after it, once the
    /// head's end has arrived; until then keeps the bytes and returns `None`.
    fn complete_head<'a>(&mut self, bytes: &'a [u8]) -> Option<(Option<Head>, &'a [u8])> {
        if self.pending.is_empty() {
            return match head_end(bytes) {
                Some(end) => Some((parse_head(&bytes[..end]), &bytes[end..])),
                None => {
                    self.keep(bytes, MAX_HEAD);
                    None
                }
            };
        }
        let before = self.pending.len();
        self.keep(bytes, MAX_HEAD);
        // Resume at the start of the last (partial) line so a terminator split across reads
        // is found and a line's tail is never mistaken for a blank line.
        let from = self.pending[..before]
            .iter()
            .rposition(|b| *b == b'\n')
            .map_or(0, |i| i + 1);
        let Some(end) = head_end(&self.pending[from..]) else {
            if self.pending.len() >= MAX_HEAD {
                // hyper answers 431 and closes; nothing more to follow here.
                self.state = State::Opaque;
            }
            return None;
        };
        let end = from + end;
        let head = parse_head(&self.pending[..end]);
        // The end lies in the new bytes: earlier reads would have found it.
        let used = end.saturating_sub(before).min(bytes.len());
        self.pending.clear();
        Some((head, &bytes[used..]))
    }

    /// One line (without its line end) from `pending` plus `bytes`, and what follows it.
    fn line<'a>(&mut self, bytes: &'a [u8], max: usize) -> Option<(Cow<'a, [u8]>, &'a [u8])> {
        let Some(i) = bytes.iter().position(|b| *b == b'\n') else {
            self.keep(bytes, max);
            if self.pending.len() >= max {
                self.state = State::Opaque;
            }
            return None;
        };
        let line = if self.pending.is_empty() {
            Cow::Borrowed(&bytes[..i])
        } else {
            let mut joined = std::mem::take(&mut self.pending);
            joined.extend_from_slice(&bytes[..i]);
            Cow::Owned(joined)
        };
        let line = match line {
            Cow::Borrowed(l) => Cow::Borrowed(l.strip_suffix(b"\r").unwrap_or(l)),
            Cow::Owned(mut l) => {
                if l.last() == Some(&b'\r') {
                    l.pop();
                }
                Cow::Owned(l)
            }
        };
        Some((line, &bytes[i + 1..]))
    }

    fn keep(&mut self, bytes: &[u8], max: usize) {
        let room = max.saturating_sub(self.pending.len());
        self.pending
            .extend_from_slice(&bytes[..bytes.len().min(room)]);
    }
}

/// Offset just past the empty line that ends a head, if it is in `bytes`.
fn head_end(bytes: &[u8]) -> Option<usize> {
    let mut line_start = 0;
    for (i, b) in bytes.iter().enumerate() {
        if *b == b'\n' {
            let line = &bytes[line_start..i];
            if line.is_empty() || line == b"\r" {
                return Some(i + 1);
            }
            line_start = i + 1;
        }
    }
    None
}

/// Framing of a complete head; `None` for the HTTP/2 connection preface.
fn parse_head(head: &[u8]) -> Option<Head> {
    let mut lines = head.split(|b| *b == b'\n');
    let request_line = lines.next().unwrap_or_default();
    if request_line.starts_with(b"PRI * HTTP/2.0") {
        return None;
    }
    let mut lengths = 0u32;
    let mut length = None;
    let mut encodings = 0u32;
    let mut only_chunked = true;
    for line in lines {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if let Some(value) = value_of(line, b"content-length") {
            lengths += 1;
            length = length.or_else(|| parse_u64(value));
        } else if let Some(value) = value_of(line, b"transfer-encoding") {
            encodings += 1;
            // Only a single plain `chunked` is framed the same by every peer; other codings
            // would also be lost when the hop-by-hop header is dropped.
            only_chunked &= value.eq_ignore_ascii_case(b"chunked");
        }
    }
    // As hyper frames it: Transfer-Encoding wins over Content-Length.
    let body = match (encodings, length) {
        (0, Some(n)) => Body::Length(n),
        (0, None) => Body::None,
        _ => Body::Chunked,
    };
    Some(Head {
        ambiguous: lengths > 1 || (lengths > 0 && encodings > 0) || encodings > 1 || !only_chunked,
        body,
    })
}

/// The value of a header line named `name` (case-insensitive; no space before the colon).
fn value_of<'a>(line: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    let matches = line.len() > name.len()
        && line[name.len()] == b':'
        && line[..name.len()].eq_ignore_ascii_case(name);
    matches.then(|| line[name.len() + 1..].trim_ascii())
}

fn parse_u64(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(digits.iter().fold(0, |n, d| n * 10 + u64::from(d - b'0')))
}

/// The size of a chunk from its size line (hex digits, then optional `;extensions`).
fn chunk_size(line: &[u8]) -> Option<u64> {
    let mut size = 0u64;
    let mut digits = 0;
    for b in line {
        let digit = match b {
            b'0'..=b'9' => b - b'0',
            b'a'..=b'f' => b - b'a' + 10,
            b'A'..=b'F' => b - b'A' + 10,
            _ => break,
        };
        digits += 1;
        if digits > 15 {
            return None;
        }
        size = size * 16 + u64::from(digit);
    }
    (digits > 0).then_some(size)
}

#[cfg(test)]
mod tests;
