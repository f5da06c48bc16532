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
mod tests {
    use super::*;

    fn hex(s: &str) -> Bytes {
        let s: String = s.split_whitespace().collect();
        let bytes = (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap());
        bytes.collect::<Vec<u8>>().into()
    }

    fn text(bytes: &[u8]) -> String {
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    type Fields = Vec<(String, String)>;

    fn decode(decoder: &mut Decoder, block: Bytes) -> Result<Fields, DecodeError> {
        let mut fields = Vec::new();
        decoder.decode(block, |n, v| fields.push((text(n.as_bytes()), text(v))))?;
        Ok(fields)
    }

    fn decode_hex(decoder: &mut Decoder, block: &str) -> Result<Fields, DecodeError> {
        decode(decoder, hex(block))
    }

    fn fields(list: &[(&str, &str)]) -> Fields {
        list.iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    /// The dynamic table, newest first, and its size.
    fn table(decoder: &Decoder) -> (Fields, usize) {
        let entries = decoder.entries.iter();
        let list = entries
            .map(|e| (text(e.name.as_bytes()), text(&e.value)))
            .collect();
        let computed: usize = decoder.entries.iter().map(|e| e.size).sum();
        assert_eq!(computed, decoder.size);
        (list, decoder.size)
    }

    /// Index of the first regular (non-pseudo) field in the static table, 1-based.
    const FIRST_REGULAR: usize = 15;

    #[test]
    fn static_table_indices() {
        assert_eq!(STATIC_TABLE.len(), 61);
        assert_eq!(STATIC_TABLE[FIRST_REGULAR - 2].0, Name::Status);
        for (i, (name, _)) in STATIC_TABLE.iter().enumerate().skip(FIRST_REGULAR - 1) {
            let Name::Header(name) = name else {
                panic!("index {} is not regular", i + 1)
            };
            assert_eq!(static_name_index(name), Some(i + 1), "{name}");
        }
        let mut d = Decoder::new(4096);
        let cases = [
            ("82", ":method", "GET"),
            ("90", "accept-encoding", "gzip, deflate"),
        ];
        for (block, name, value) in cases {
            assert_eq!(decode_hex(&mut d, block).unwrap(), fields(&[(name, value)]));
        }
        assert_eq!(
            decode_hex(&mut d, "bd").unwrap(),
            fields(&[("www-authenticate", "")])
        );
        assert_eq!(decode_hex(&mut d, "b6").unwrap(), fields(&[("server", "")]));
    }

    #[test]
    fn c2_field_representations() {
        // C.2.1: literal with indexing.
        let mut d = Decoder::new(4096);
        let block = "400a 6375 7374 6f6d 2d6b 6579 0d63 7573 746f 6d2d 6865 6164 6572";
        let expected = fields(&[("custom-key", "custom-header")]);
        assert_eq!(decode_hex(&mut d, block).unwrap(), expected);
        assert_eq!(table(&d), (expected, 55));
        // C.2.2: literal without indexing.
        let mut d = Decoder::new(4096);
        let block = "040c 2f73 616d 706c 652f 7061 7468";
        assert_eq!(
            decode_hex(&mut d, block).unwrap(),
            fields(&[(":path", "/sample/path")])
        );
        assert_eq!(table(&d), (vec![], 0));
        // C.2.3: literal never indexed.
        let block = "1008 7061 7373 776f 7264 0673 6563 7265 74";
        assert_eq!(
            decode_hex(&mut d, block).unwrap(),
            fields(&[("password", "secret")])
        );
        assert_eq!(table(&d), (vec![], 0));
        // C.2.4: indexed.
        assert_eq!(
            decode_hex(&mut d, "82").unwrap(),
            fields(&[(":method", "GET")])
        );
        assert_eq!(table(&d), (vec![], 0));
    }

    /// The three requests of C.3 and C.4 (the same fields, with and without Huffman).
    fn request_examples(blocks: [&str; 3]) {
        let mut d = Decoder::new(4096);
        let base = [(":method", "GET"), (":scheme", "http"), (":path", "/")];
        let authority = (":authority", "www.example.com");
        let first = [&base[..], &[authority]].concat();
        assert_eq!(decode_hex(&mut d, blocks[0]).unwrap(), fields(&first));
        assert_eq!(table(&d), (fields(&[authority]), 57));

        let cache = ("cache-control", "no-cache");
        let second = [&first[..], &[cache]].concat();
        assert_eq!(decode_hex(&mut d, blocks[1]).unwrap(), fields(&second));
        assert_eq!(table(&d), (fields(&[cache, authority]), 110));

        let custom = ("custom-key", "custom-value");
        let third = [
            (":method", "GET"),
            (":scheme", "https"),
            (":path", "/index.html"),
            authority,
            custom,
        ];
        assert_eq!(decode_hex(&mut d, blocks[2]).unwrap(), fields(&third));
        assert_eq!(table(&d), (fields(&[custom, cache, authority]), 164));
    }

    #[test]
    fn c3_requests_without_huffman() {
        request_examples([
            "8286 8441 0f77 7777 2e65 7861 6d70 6c65 2e63 6f6d",
            "8286 84be 5808 6e6f 2d63 6163 6865",
            "8287 85bf 400a 6375 7374 6f6d 2d6b 6579 0c63 7573 746f 6d2d 7661 6c75 65",
        ]);
    }

    #[test]
    fn c4_requests_with_huffman() {
        request_examples([
            "8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff",
            "8286 84be 5886 a8eb 1064 9cbf",
            "8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf",
        ]);
    }

    /// The three responses of C.5 and C.6, with a 256-byte table and evictions.
    fn response_examples(blocks: [&str; 3]) {
        let mut d = Decoder::new(256);
        let private = ("cache-control", "private");
        let date1 = ("date", "Mon, 21 Oct 2013 20:13:21 GMT");
        let location = ("location", "https://www.example.com");
        let first = [(":status", "302"), private, date1, location];
        assert_eq!(decode_hex(&mut d, blocks[0]).unwrap(), fields(&first));
        let expected = [location, date1, private, (":status", "302")];
        assert_eq!(table(&d), (fields(&expected), 222));

        let second = [(":status", "307"), private, date1, location];
        assert_eq!(decode_hex(&mut d, blocks[1]).unwrap(), fields(&second));
        let expected = [(":status", "307"), location, date1, private];
        assert_eq!(table(&d), (fields(&expected), 222));

        let date2 = ("date", "Mon, 21 Oct 2013 20:13:22 GMT");
        let gzip = ("content-encoding", "gzip");
        let cookie = (
            "set-cookie",
            "foo=ASDJKHQKBZXOQWEOPIUAXQWEOIU; max-age=3600; version=1",
        );
        let third = [(":status", "200"), private, date2, location, gzip, cookie];
        assert_eq!(decode_hex(&mut d, blocks[2]).unwrap(), fields(&third));
        assert_eq!(table(&d), (fields(&[cookie, gzip, date2]), 215));
    }

    #[test]
    fn c5_responses_without_huffman() {
        response_examples([
            "4803 3330 3258 0770 7269 7661 7465 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133
             2032 303a 3133 3a32 3120 474d 546e 1768 7474 7073 3a2f 2f77 7777 2e65 7861 6d70
             6c65 2e63 6f6d",
            "4803 3330 37c1 c0bf",
            "88c1 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133 2032 303a 3133 3a32 3220 474d
             54c0 5a04 677a 6970 7738 666f 6f3d 4153 444a 4b48 514b 425a 584f 5157 454f 5049
             5541 5851 5745 4f49 553b 206d 6178 2d61 6765 3d33 3630 303b 2076 6572 7369 6f6e
             3d31",
        ]);
    }

    #[test]
    fn c6_responses_with_huffman() {
        response_examples([
            "4882 6402 5885 aec3 771a 4b61 96d0 7abe 9410 54d4 44a8 2005 9504 0b81 66e0 82a6
             2d1b ff6e 919d 29ad 1718 63c7 8f0b 97c8 e9ae 82ae 43d3",
            "4883 640e ffc1 c0bf",
            "88c1 6196 d07a be94 1054 d444 a820 0595 040b 8166 e084 a62d 1bff c05a 839b d9ab
             77ad 94e7 821d d7f2 e6c7 b335 dfdf cd5b 3960 d5af 2708 7f36 72c1 ab27 0fb5 291f
             9587 3160 65c0 03ed 4ee5 b106 3d50 07",
        ]);
    }

    #[test]
    fn index_errors() {
        let mut d = Decoder::new(4096);
        assert_eq!(decode_hex(&mut d, "80"), Err(DecodeError), "indexed 0");
        assert_eq!(
            decode_hex(&mut d, "be"),
            Err(DecodeError),
            "62 with an empty table"
        );
        assert_eq!(
            decode_hex(&mut d, "7e 01 61"),
            Err(DecodeError),
            "name index 62"
        );
        assert_eq!(
            decode_hex(&mut d, "0f 2f 01 61"),
            Err(DecodeError),
            "name index 62, 4-bit"
        );
        let mut d = Decoder::new(4096);
        decode_hex(&mut d, "41 01 61").unwrap();
        assert_eq!(
            decode_hex(&mut d, "be").unwrap(),
            fields(&[(":authority", "a")])
        );
        assert_eq!(
            decode_hex(&mut d, "bf"),
            Err(DecodeError),
            "63 with one entry"
        );
    }

    #[test]
    fn size_updates() {
        let mut d = Decoder::new(4096);
        decode_hex(&mut d, "41 01 61 41 01 62").unwrap();
        assert_eq!(table(&d).1, 2 * 43);
        // Two updates before the first field: shrink to 50 (evicts one), then back to 4096.
        assert_eq!(
            decode_hex(&mut d, "3f13 3fe1 1f 82").unwrap(),
            fields(&[(":method", "GET")])
        );
        assert_eq!(table(&d), (fields(&[(":authority", "b")]), 43));
        assert_eq!(d.max_size, 4096);
        // To zero: empties the table.
        assert_eq!(decode_hex(&mut d, "20").unwrap(), vec![]);
        assert_eq!(table(&d), (vec![], 0));
        decode_hex(&mut d, "41 01 61").unwrap();
        assert_eq!(table(&d), (vec![], 0), "nothing fits in a zero-size table");
        assert_eq!(decode_hex(&mut d, "3fe1 1f").unwrap(), vec![]);
        decode_hex(&mut d, "41 01 61").unwrap();
        assert_eq!(table(&d).1, 43);
    }

    #[test]
    fn size_update_over_the_limit_is_an_error() {
        let mut d = Decoder::new(4096);
        assert_eq!(decode_hex(&mut d, "3fe2 1f"), Err(DecodeError), "4097");
        let mut d = Decoder::new(256);
        assert_eq!(decode_hex(&mut d, "3fe1 01").unwrap(), vec![], "256");
        assert_eq!(decode_hex(&mut d, "3fe2 01"), Err(DecodeError), "257");
    }

    #[test]
    fn size_update_after_a_field_is_an_error() {
        let mut d = Decoder::new(4096);
        assert_eq!(decode_hex(&mut d, "82 20"), Err(DecodeError));
        let mut d = Decoder::new(4096);
        assert_eq!(
            decode_hex(&mut d, "40 01 61 01 62 3f e1 1f"),
            Err(DecodeError)
        );
    }

    #[test]
    fn entry_larger_than_the_table_empties_it() {
        let mut d = Decoder::new(100);
        decode_hex(&mut d, "41 01 61").unwrap();
        assert_eq!(table(&d).1, 43);
        // :authority (10) + 59 bytes + 32 = 101 > 100.
        let block = format!("41 3b {}", "61".repeat(59));
        assert_eq!(decode_hex(&mut d, &block).unwrap().len(), 1);
        assert_eq!(table(&d), (vec![], 0));
        // 58 bytes: exactly 100, evicting nothing else because the table is empty.
        let block = format!("41 3a {}", "61".repeat(58));
        decode_hex(&mut d, &block).unwrap();
        assert_eq!(table(&d).1, 100);
    }

    #[test]
    fn integer_errors() {
        let mut d = Decoder::new(4096);
        assert_eq!(
            decode_hex(&mut d, "ff"),
            Err(DecodeError),
            "truncated after the prefix"
        );
        assert_eq!(
            decode_hex(&mut d, "ff 80"),
            Err(DecodeError),
            "truncated continuation"
        );
        let six = "ff 80 80 80 80 80 00";
        assert_eq!(
            decode_hex(&mut d, six),
            Err(DecodeError),
            "six continuation bytes"
        );
        let big = "ff 80 80 80 80 10";
        assert_eq!(decode_hex(&mut d, big), Err(DecodeError), "above u32::MAX");
        // Five continuation bytes within range decode (then fail as an index).
        let mut cursor = Cursor {
            block: &hex("ff 80 ff ff ff 0f"),
            pos: 1,
        };
        assert_eq!(cursor.int(0xff, 7), Ok(u32::MAX as usize));
        let mut cursor = Cursor {
            block: &hex("1f 9a 0a"),
            pos: 1,
        };
        assert_eq!(cursor.int(0x1f, 5), Ok(1337), "RFC 7541 C.1.2");
    }

    #[test]
    fn string_errors() {
        let mut d = Decoder::new(4096);
        assert_eq!(
            decode_hex(&mut d, "04 05 61 62 63 64"),
            Err(DecodeError),
            "value past block"
        );
        assert_eq!(
            decode_hex(&mut d, "00 03 61 62"),
            Err(DecodeError),
            "name past block"
        );
        assert_eq!(decode_hex(&mut d, "04"), Err(DecodeError), "no value");
        assert_eq!(
            decode_hex(&mut d, "04 7f"),
            Err(DecodeError),
            "truncated length"
        );
        let huge = "04 7f ff ff ff 0f";
        assert_eq!(
            decode_hex(&mut d, huge),
            Err(DecodeError),
            "length 2^28 + 126"
        );
        assert_eq!(
            decode_hex(&mut d, "04 81 ff"),
            Err(DecodeError),
            "Huffman padding 8 bits"
        );
        assert_eq!(
            decode_hex(&mut d, "04 81 05"),
            Err(DecodeError),
            "Huffman padding with 0"
        );
        let eos = "04 84 ff ff ff ff";
        assert_eq!(decode_hex(&mut d, eos), Err(DecodeError), "Huffman EOS");
        assert_eq!(
            decode_hex(&mut d, "04 81 07").unwrap(),
            fields(&[(":path", "0")])
        );
    }

    #[test]
    fn name_classification() {
        let cases: [(&[u8], Option<Name>); 12] = [
            (b":method", Some(Name::Method)),
            (b":scheme", Some(Name::Scheme)),
            (b":authority", Some(Name::Authority)),
            (b":path", Some(Name::Path)),
            (b":protocol", Some(Name::Protocol)),
            (b":status", Some(Name::Status)),
            (b":foo", None),
            (b":", None),
            (b"Content-Type", None),
            (b"", None),
            (b"a b", None),
            (b"x-a", Some(Name::Header(HeaderName::from_static("x-a")))),
        ];
        for (raw, expected) in cases {
            assert_eq!(classify(raw), expected, "{:?}", text(raw));
        }
        assert_eq!(
            classify(b"content-type"),
            Some(Name::Header(header::CONTENT_TYPE))
        );
        assert_eq!(
            classify(b"!#$%&'*+-.^_`|~09az").map(|n| n.as_bytes().len()),
            Some(19)
        );
        assert_eq!(classify(b"a\x00"), None);
        assert_eq!(classify(b"caf\xc3\xa9"), None);
    }

    #[test]
    fn invalid_names_are_decoded_and_indexed() {
        let mut d = Decoder::new(4096);
        let mut names = Vec::new();
        // ":foo: 1" with indexing, "Content-Type: x" without, then index 62.
        let block = hex("40 04 3a66 6f6f 01 31 00 0c 436f 6e74 656e 742d 5479 7065 01 78 be");
        d.decode(block, |n, _| names.push(n.clone())).unwrap();
        let foo = Name::Invalid(Bytes::from_static(b":foo"));
        let upper = Name::Invalid(Bytes::from_static(b"Content-Type"));
        assert_eq!(names, [foo.clone(), upper, foo]);
        assert_eq!(table(&d), (fields(&[(":foo", "1")]), 37));
    }

    #[test]
    fn huffman_names_are_classified() {
        let mut d = Decoder::new(4096);
        let mut names = Vec::new();
        // C.4.3's Huffman-coded "custom-key" as a name, without indexing.
        let block = hex("00 88 25a8 49e9 5ba9 7d7f 01 61");
        d.decode(block, |n, _| names.push(n.clone())).unwrap();
        assert_eq!(names, [Name::Header(HeaderName::from_static("custom-key"))]);
    }

    #[test]
    fn plain_values_are_not_copied() {
        let mut d = Decoder::new(4096);
        let block = hex("04 03 2f 6162 41 01 61");
        let start = block.as_ptr() as usize;
        let mut values = Vec::new();
        d.decode(block.clone(), |_, v| values.push(v.clone()))
            .unwrap();
        assert_eq!(
            values[0].as_ptr() as usize,
            start + 2,
            "a slice of the block"
        );
        let stored = d.entries[0].value.as_ptr();
        assert!(
            !block.as_ptr_range().contains(&stored),
            "indexed values do not pin the block"
        );
        let mut again = Vec::new();
        d.decode(hex("be"), |_, v| again.push(v.as_ptr())).unwrap();
        assert_eq!(
            again,
            [stored],
            "an indexed field borrows the table's value"
        );
    }

    #[test]
    fn random_blocks_do_not_panic() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut d = Decoder::new(256);
        for round in 0..20_000 {
            let len = round % 40;
            let block: Vec<u8> = (0..len)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    seed as u8
                })
                .collect();
            if d.decode(block.into(), |_, _| {}).is_err() {
                d = Decoder::new(256);
            }
            assert!(d.size <= d.max_size);
        }
    }

    #[test]
    fn encode_status_round_trips() {
        for status in [200, 204, 206, 304, 400, 404, 500, 100, 101, 302, 503, 999] {
            let mut out = Vec::new();
            encode_status(&mut out, status);
            let indexed = [200, 204, 206, 304, 400, 404, 500].contains(&status);
            assert_eq!(out.len(), if indexed { 1 } else { 5 }, "{status}");
            let mut d = Decoder::new(0);
            let decoded = decode(&mut d, out.into()).unwrap();
            assert_eq!(decoded, fields(&[(":status", &status.to_string())]));
        }
        let mut out = Vec::new();
        encode_status(&mut out, 200);
        encode_status(&mut out, 302);
        assert_eq!(out, [0x88, 0x08, 0x03, b'3', b'0', b'2']);
    }

    #[test]
    fn encode_field_round_trips() {
        let long = "v".repeat(300);
        let mut secret = HeaderValue::from_static("secret");
        secret.set_sensitive(true);
        let cases = [
            (header::CONTENT_TYPE, HeaderValue::from_static("text/plain")),
            (header::WWW_AUTHENTICATE, HeaderValue::from_static("Basic")),
            (header::ACCEPT_CHARSET, HeaderValue::from_static("")),
            (
                HeaderName::from_static("x-custom"),
                HeaderValue::from_static("1"),
            ),
            (header::SET_COOKIE, secret.clone()),
            (HeaderName::from_static("x-token"), secret),
            (header::SERVER, HeaderValue::from_str(&long).unwrap()),
            (
                HeaderName::from_bytes(&[b'n'; 200]).unwrap(),
                HeaderValue::from_str(&long).unwrap(),
            ),
        ];
        let mut out = Vec::new();
        for (name, value) in &cases {
            let start = out.len();
            encode_field(&mut out, name, value);
            let kind = if value.is_sensitive() { 0x10 } else { 0x00 };
            assert_eq!(out[start] & 0xf0, kind, "{name}");
        }
        let mut d = Decoder::new(4096);
        let decoded = decode(&mut d, out.into()).unwrap();
        let expected: Fields = cases
            .iter()
            .map(|(n, v)| (n.to_string(), text(v.as_bytes())))
            .collect();
        assert_eq!(decoded, expected);
        assert_eq!(table(&d), (vec![], 0), "nothing is indexed");
    }

    #[test]
    fn encode_field_bytes() {
        let mut out = Vec::new();
        encode_field(
            &mut out,
            &header::CONTENT_LENGTH,
            &HeaderValue::from_static("2"),
        );
        assert_eq!(
            out,
            [0x0f, 0x0d, 0x01, b'2'],
            "name index 28 in a 4-bit prefix"
        );
        out.clear();
        encode_field(
            &mut out,
            &HeaderName::from_static("x-a"),
            &HeaderValue::from_static("b"),
        );
        assert_eq!(out, [0x00, 0x03, b'x', b'-', b'a', 0x01, b'b']);
    }
}
