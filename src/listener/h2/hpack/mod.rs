//! HPACK (RFC 7541) for the HTTP/2 server: the decoder of request header blocks, with the
//! dynamic table the peer's encoder fills, and a stateless encoder of response fields. The
//! decoder takes a whole block (HEADERS and CONTINUATION payloads joined) and classifies each
//! field name once (pseudo-header, valid lowercase token, or invalid), handing out borrowed
//! `Name`s and raw `Bytes` values that the caller validates: an indexed field costs no
//! allocation, a plain literal value is a slice of the block, and only Huffman-coded strings
//! and newly indexed entries are copied. A block is decoded to its end whatever its names,
//! so the table stays in sync; any `DecodeError` leaves the table unusable and is a
//! connection error. The encoder never indexes (so never needs the peer's table or size
//! updates) and never Huffman-codes. The Huffman code is `huffman`'s.

use std::collections::VecDeque;
use std::ops::Range;

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};

use super::huffman;

/// A decoded field's name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Name {
    /// `:method`.
    Method,
    /// `:scheme`.
    Scheme,
    /// `:authority`.
    Authority,
    /// `:path`.
    Path,
    /// `:protocol` (RFC 8441).
    Protocol,
    /// `:status`.
    Status,
    /// A regular field whose name is a valid lowercase token (RFC 9110 tchar).
    Header(HeaderName),
    /// Anything else: an unknown pseudo-header, uppercase letters, a non-token byte, empty.
    Invalid(Bytes),
}

impl Name {
    /// The name as sent on the wire (a pseudo-header with its colon).
    pub(super) fn as_bytes(&self) -> &[u8] {
        match self {
            Name::Method => b":method",
            Name::Scheme => b":scheme",
            Name::Authority => b":authority",
            Name::Path => b":path",
            Name::Protocol => b":protocol",
            Name::Status => b":status",
            Name::Header(name) => name.as_str().as_bytes(),
            Name::Invalid(raw) => raw,
        }
    }
}

/// Why a header block could not be decoded: always a connection error (COMPRESSION_ERROR).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct DecodeError;

/// A static table entry with an empty value.
const fn named(name: HeaderName) -> (Name, Bytes) {
    (Name::Header(name), Bytes::new())
}

/// A static table entry with a value.
const fn valued(name: Name, value: &'static [u8]) -> (Name, Bytes) {
    (name, Bytes::from_static(value))
}

/// The static table, RFC 7541 Appendix A: entry `i` is index `i + 1`.
static STATIC_TABLE: [(Name, Bytes); 61] = [
    valued(Name::Authority, b""),
    valued(Name::Method, b"GET"),
    valued(Name::Method, b"POST"),
    valued(Name::Path, b"/"),
    valued(Name::Path, b"/index.html"),
    valued(Name::Scheme, b"http"),
    valued(Name::Scheme, b"https"),
    valued(Name::Status, b"200"),
    valued(Name::Status, b"204"),
    valued(Name::Status, b"206"),
    valued(Name::Status, b"304"),
    valued(Name::Status, b"400"),
    valued(Name::Status, b"404"),
    valued(Name::Status, b"500"),
    named(header::ACCEPT_CHARSET),
    valued(Name::Header(header::ACCEPT_ENCODING), b"gzip, deflate"),
    named(header::ACCEPT_LANGUAGE),
    named(header::ACCEPT_RANGES),
    named(header::ACCEPT),
    named(header::ACCESS_CONTROL_ALLOW_ORIGIN),
    named(header::AGE),
    named(header::ALLOW),
    named(header::AUTHORIZATION),
    named(header::CACHE_CONTROL),
    named(header::CONTENT_DISPOSITION),
    named(header::CONTENT_ENCODING),
    named(header::CONTENT_LANGUAGE),
    named(header::CONTENT_LENGTH),
    named(header::CONTENT_LOCATION),
    named(header::CONTENT_RANGE),
    named(header::CONTENT_TYPE),
    named(header::COOKIE),
    named(header::DATE),
    named(header::ETAG),
    named(header::EXPECT),
    named(header::EXPIRES),
    named(header::FROM),
    named(header::HOST),
    named(header::IF_MATCH),
    named(header::IF_MODIFIED_SINCE),
    named(header::IF_NONE_MATCH),
    named(header::IF_RANGE),
    named(header::IF_UNMODIFIED_SINCE),
    named(header::LAST_MODIFIED),
    named(header::LINK),
    named(header::LOCATION),
    named(header::MAX_FORWARDS),
    named(header::PROXY_AUTHENTICATE),
    named(header::PROXY_AUTHORIZATION),
    named(header::RANGE),
    named(header::REFERER),
    named(header::REFRESH),
    named(header::RETRY_AFTER),
    named(header::SERVER),
    named(header::SET_COOKIE),
    named(header::STRICT_TRANSPORT_SECURITY),
    named(header::TRANSFER_ENCODING),
    named(header::USER_AGENT),
    named(header::VARY),
    named(header::VIA),
    named(header::WWW_AUTHENTICATE),
];

/// Bytes an entry costs in the dynamic table beyond its name and value (RFC 7541 4.1).
const ENTRY_OVERHEAD: usize = 32;

/// Which bytes may appear in a field name: RFC 9110 tchar without uppercase letters.
static NAME_BYTES: [bool; 256] = name_bytes();

/// Builds `NAME_BYTES`.
const fn name_bytes() -> [bool; 256] {
    let mut table = [false; 256];
    let symbols = b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyz";
    let mut i = 0;
    while i < symbols.len() {
        table[symbols[i] as usize] = true;
        i += 1;
    }
    table
}

/// Classifies a literal field name; `None` when it is `Name::Invalid`.
fn classify(raw: &[u8]) -> Option<Name> {
    if let Some(pseudo) = raw.strip_prefix(b":") {
        return match pseudo {
            b"method" => Some(Name::Method),
            b"scheme" => Some(Name::Scheme),
            b"authority" => Some(Name::Authority),
            b"path" => Some(Name::Path),
            b"protocol" => Some(Name::Protocol),
            b"status" => Some(Name::Status),
            _ => None,
        };
    }
    if raw.is_empty() || !raw.iter().all(|&b| NAME_BYTES[usize::from(b)]) {
        return None;
    }
    HeaderName::from_bytes(raw).ok().map(Name::Header)
}

/// One dynamic table entry, with its RFC 7541 4.1 size.
struct Entry {
    /// The classified name.
    name: Name,
    /// The value.
    value: Bytes,
    /// Name length + value length + 32.
    size: usize,
}

/// A string literal just read: a range of the block, or Huffman-decoded into the scratch.
enum Literal {
    /// Not Huffman-coded: these bytes of the block.
    Plain(Range<usize>),
    /// Huffman-coded: decoded into `Decoder::scratch`.
    Huffman,
}

/// Reads primitive representations (RFC 7541 section 5) from a header block.
struct Cursor<'a> {
    /// The whole block.
    block: &'a Bytes,
    /// Offset of the next unread byte.
    pos: usize,
}

impl Cursor<'_> {
    /// The next byte, if any.
    fn byte(&mut self) -> Option<u8> {
        let byte = self.block.get(self.pos).copied()?;
        self.pos += 1;
        Some(byte)
    }

    /// An integer whose `prefix` low bits are in `first` (RFC 7541 5.1); at most five
    /// continuation bytes and no more than `u32::MAX`.
    #[inline]
    fn int(&mut self, first: u8, prefix: u8) -> Result<usize, DecodeError> {
        let max = 0xff >> (8 - prefix);
        if first & max < max {
            return Ok(usize::from(first & max));
        }
        let mut value = u64::from(max);
        for shift in [0, 7, 14, 21, 28] {
            let byte = self.byte().ok_or(DecodeError)?;
            value += u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                let value = u32::try_from(value).map_err(|_| DecodeError)?;
                return usize::try_from(value).map_err(|_| DecodeError);
            }
        }
        Err(DecodeError)
    }

    /// A string literal (RFC 7541 5.2), Huffman-decoding into `scratch` when coded.
    fn string(&mut self, scratch: &mut Vec<u8>) -> Result<Literal, DecodeError> {
        let first = self.byte().ok_or(DecodeError)?;
        let len = self.int(first, 7)?;
        let start = self.pos;
        let end = start
            .checked_add(len)
            .filter(|&end| end <= self.block.len());
        self.pos = end.ok_or(DecodeError)?;
        if first & 0x80 == 0 {
            return Ok(Literal::Plain(start..self.pos));
        }
        scratch.clear();
        huffman::decode(&self.block[start..self.pos], scratch).map_err(|_| DecodeError)?;
        Ok(Literal::Huffman)
    }
}

/// HPACK decoder state of one connection (the dynamic table of the peer's encoder).
pub(super) struct Decoder {
    /// The dynamic table, newest first (index 62 is `entries[0]`).
    entries: VecDeque<Entry>,
    /// Sum of the entries' sizes.
    size: usize,
    /// The table's current maximum size, as last set by the peer (at most `limit`).
    max_size: usize,
    /// The most the peer may set `max_size` to: our SETTINGS_HEADER_TABLE_SIZE.
    limit: usize,
    /// Huffman-decoded bytes of the string literal being read.
    scratch: Vec<u8>,
}

impl Decoder {
    /// A decoder whose table may grow to `max_size` bytes, our SETTINGS_HEADER_TABLE_SIZE.
    pub(super) fn new(max_size: usize) -> Decoder {
        Decoder {
            entries: VecDeque::new(),
            size: 0,
            max_size,
            limit: max_size,
            scratch: Vec::new(),
        }
    }

    /// Decodes one header block (HEADERS + CONTINUATIONs), calling `field` for each field.
    pub(super) fn decode(
        &mut self,
        block: Bytes,
        mut field: impl FnMut(&Name, &Bytes),
    ) -> Result<(), DecodeError> {
        let mut cursor = Cursor {
            block: &block,
            pos: 0,
        };
        let mut before_fields = true;
        while let Some(first) = cursor.byte() {
            if first & 0xe0 == 0x20 {
                // Dynamic table size updates come before the first field (RFC 7541 4.2).
                if !before_fields {
                    return Err(DecodeError);
                }
                self.size_update(&mut cursor, first)?;
                continue;
            }
            before_fields = false;
            if first & 0x80 != 0 {
                let (name, value) = self.get(cursor.int(first, 7)?)?;
                field(name, value);
            } else if first & 0x40 != 0 {
                self.literal(&mut cursor, first, true, &mut field)?;
            } else {
                // Without indexing (0000) and never indexed (0001) read the same.
                self.literal(&mut cursor, first, false, &mut field)?;
            }
        }
        Ok(())
    }

    /// The field at `index` of the static table (1..=61) or the dynamic table (62..).
    #[inline]
    fn get(&self, index: usize) -> Result<(&Name, &Bytes), DecodeError> {
        if let Some((name, value)) = index.checked_sub(1).and_then(|i| STATIC_TABLE.get(i)) {
            return Ok((name, value));
        }
        let dynamic = index.checked_sub(STATIC_TABLE.len() + 1);
        let entry = dynamic
            .and_then(|i| self.entries.get(i))
            .ok_or(DecodeError)?;
        Ok((&entry.name, &entry.value))
    }

    /// A literal field (RFC 7541 6.2), added to the dynamic table when `index`.
    fn literal(
        &mut self,
        cursor: &mut Cursor<'_>,
        first: u8,
        index: bool,
        field: &mut impl FnMut(&Name, &Bytes),
    ) -> Result<(), DecodeError> {
        // Incremental indexing has a 6-bit name index, the other two a 4-bit one.
        let prefix = if index { 6 } else { 4 };
        let name = match cursor.int(first, prefix)? {
            0 => self.literal_name(cursor)?,
            i => self.get(i)?.0.clone(),
        };
        let value = self.literal_value(cursor, index)?;
        field(&name, &value);
        if index {
            self.insert(owned(name), value);
        }
        Ok(())
    }

    /// A literal name, classified.
    fn literal_name(&mut self, cursor: &mut Cursor<'_>) -> Result<Name, DecodeError> {
        Ok(match cursor.string(&mut self.scratch)? {
            Literal::Plain(range) => classify(&cursor.block[range.clone()])
                .unwrap_or_else(|| Name::Invalid(cursor.block.slice(range))),
            Literal::Huffman => classify(&self.scratch)
                .unwrap_or_else(|| Name::Invalid(Bytes::copy_from_slice(&self.scratch))),
        })
    }

    /// A literal value: a slice of the block unless Huffman-coded or `owned` (going into
    /// the dynamic table, which must not pin the block).
    fn literal_value(
        &mut self,
        cursor: &mut Cursor<'_>,
        owned: bool,
    ) -> Result<Bytes, DecodeError> {
        Ok(match cursor.string(&mut self.scratch)? {
            Literal::Plain(range) if owned => Bytes::copy_from_slice(&cursor.block[range]),
            Literal::Plain(range) => cursor.block.slice(range),
            Literal::Huffman => Bytes::copy_from_slice(&self.scratch),
        })
    }

    /// A dynamic table size update (RFC 7541 6.3): at most our advertised limit.
    fn size_update(&mut self, cursor: &mut Cursor<'_>, first: u8) -> Result<(), DecodeError> {
        let size = cursor.int(first, 5)?;
        if size > self.limit {
            return Err(DecodeError);
        }
        self.max_size = size;
        self.evict_to(size);
        Ok(())
    }

    /// Adds an entry, evicting the oldest to make room; one larger than the table empties it.
    fn insert(&mut self, name: Name, value: Bytes) {
        let size = name.as_bytes().len() + value.len() + ENTRY_OVERHEAD;
        if size > self.max_size {
            self.entries.clear();
            self.size = 0;
            return;
        }
        self.evict_to(self.max_size - size);
        self.size += size;
        self.entries.push_front(Entry { name, value, size });
    }

    /// Evicts the oldest entries until the table's size is at most `size`.
    fn evict_to(&mut self, size: usize) {
        while self.size > size {
            match self.entries.pop_back() {
                Some(entry) => self.size -= entry.size,
                None => self.size = 0,
            }
        }
    }
}

/// `name` not borrowing the block: an invalid name read as a plain literal is copied.
fn owned(name: Name) -> Name {
    match name {
        Name::Invalid(raw) => Name::Invalid(Bytes::copy_from_slice(&raw)),
        name => name,
    }
}

/// Appends an integer with a `prefix`-bit prefix after the `flags` bits (RFC 7541 5.1).
fn encode_int(out: &mut Vec<u8>, flags: u8, prefix: u8, value: usize) {
    let max = 0xff >> (8 - prefix);
    if value < usize::from(max) {
        out.push(flags | value as u8);
        return;
    }
    out.push(flags | max);
    let mut rest = value - usize::from(max);
    while rest >= 0x80 {
        out.push(0x80 | (rest & 0x7f) as u8);
        rest >>= 7;
    }
    out.push(rest as u8);
}

/// Appends a plain (not Huffman-coded) string literal.
fn encode_string(out: &mut Vec<u8>, bytes: &[u8]) {
    encode_int(out, 0, 7, bytes.len());
    out.extend_from_slice(bytes);
}

/// The static table index of a regular field name, if it has one.
fn static_name_index(name: &HeaderName) -> Option<usize> {
    Some(match name.as_str() {
        "accept-charset" => 15,
        "accept-encoding" => 16,
        "accept-language" => 17,
        "accept-ranges" => 18,
        "accept" => 19,
        "access-control-allow-origin" => 20,
        "age" => 21,
        "allow" => 22,
        "authorization" => 23,
        "cache-control" => 24,
        "content-disposition" => 25,
        "content-encoding" => 26,
        "content-language" => 27,
        "content-length" => 28,
        "content-location" => 29,
        "content-range" => 30,
        "content-type" => 31,
        "cookie" => 32,
        "date" => 33,
        "etag" => 34,
        "expect" => 35,
        "expires" => 36,
        "from" => 37,
        "host" => 38,
        "if-match" => 39,
        "if-modified-since" => 40,
        "if-none-match" => 41,
        "if-range" => 42,
        "if-unmodified-since" => 43,
        "last-modified" => 44,
        "link" => 45,
        "location" => 46,
        "max-forwards" => 47,
        "proxy-authenticate" => 48,
        "proxy-authorization" => 49,
        "range" => 50,
        "referer" => 51,
        "refresh" => 52,
        "retry-after" => 53,
        "server" => 54,
        "set-cookie" => 55,
        "strict-transport-security" => 56,
        "transfer-encoding" => 57,
        "user-agent" => 58,
        "vary" => 59,
        "via" => 60,
        "www-authenticate" => 61,
        _ => return None,
    })
}

/// Appends the `:status` field for `status` (100..=999).
pub(super) fn encode_status(out: &mut Vec<u8>, status: u16) {
    let index = match status {
        200 => 8,
        204 => 9,
        206 => 10,
        304 => 11,
        400 => 12,
        404 => 13,
        500 => 14,
        _ => 0,
    };
    if index != 0 {
        out.push(0x80 | index);
        return;
    }
    debug_assert!((100..=999).contains(&status), "status {status}");
    let digit = |n: u16| b'0' + (n % 10) as u8;
    // Literal without indexing, name index 8 (`:status`), three-byte plain value.
    out.extend_from_slice(&[
        0x08,
        3,
        digit(status / 100),
        digit(status / 10),
        digit(status),
    ]);
}

/// Appends one regular field.
pub(super) fn encode_field(out: &mut Vec<u8>, name: &HeaderName, value: &HeaderValue) {
    // Never indexed (0001) for sensitive values, else without indexing (0000).
    let flags = if value.is_sensitive() { 0x10 } else { 0x00 };
    match static_name_index(name) {
        Some(index) => encode_int(out, flags, 4, index),
        None => {
            out.push(flags);
            encode_string(out, name.as_str().as_bytes());
        }
    }
    encode_string(out, value.as_bytes());
}

#[cfg(test)]
mod tests;
