//! Header rewriting between client and upstream (SPEC section 4).
//!
//! Removes hop-by-hop headers in both directions (the fixed list and every name the
//! `Connection` header lists), adds `X-Forwarded-For/-Proto/-Host`, and makes sure every
//! request carries an `X-Request-Id`. Ids are generated without locks: a per-process random
//! prefix and an atomic counter, mixed so consecutive ids do not look sequential.

use std::sync::atomic::{AtomicU64, Ordering};

use http::header::{self, Entry, HeaderMap, HeaderName, HeaderValue};

/// `X-Forwarded-For`.
pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
/// `X-Forwarded-Proto`.
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
/// `X-Forwarded-Host`.
pub static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
/// `X-Request-Id`.
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Hop-by-hop headers that never cross the proxy (SPEC section 4, RFC 9110 section 7.6.1).
static HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Whether a name this long can be one of [`HOP_BY_HOP`] (a test keeps the two in step).
const fn hop_by_hop_length(len: usize) -> bool {
    matches!(len, 2 | 7 | 10 | 16 | 17)
}

/// Whether `name` is one of the fixed hop-by-hop names (`Connection` included; not those a
/// `Connection` field names).
pub fn is_hop_by_hop(name: &HeaderName) -> bool {
    hop_by_hop_index(name.as_str()).is_some()
}

/// Where a (lowercase) name is in [`HOP_BY_HOP`]; most names have a length none there has,
/// and skip the list.
fn hop_by_hop_index(name: &str) -> Option<usize> {
    if !hop_by_hop_length(name.len()) {
        return None;
    }
    HOP_BY_HOP.iter().position(|hop| hop.as_str() == name)
}

/// Removes hop-by-hop headers, including those named in `Connection`.
pub fn remove_hop_by_hop(headers: &mut HeaderMap) {
    // One pass over the names says which of the fixed list are present: most messages carry
    // one of them at most, and each `remove` of an absent name would still hash and probe.
    let mut present = 0u8;
    for name in headers.keys() {
        if let Some(i) = hop_by_hop_index(name.as_str()) {
            present |= 1 << i;
        }
    }
    if present == 0 {
        return;
    }
    // `Connection` is first in the list; only it can name more headers.
    if present & 1 != 0 {
        remove_connection_named(headers);
    }
    for (i, name) in HOP_BY_HOP.iter().enumerate() {
        if present & (1 << i) != 0 {
            headers.remove(name);
        }
    }
}

/// Removes the headers the `Connection` fields name, but for those a sender cannot make
/// hop-by-hop: `Host` (every HTTP/1.1 request carries one; RFC 9112 section 3.2) and the
/// proxy's own `X-Request-Id` (SPEC section 4: the same id goes upstream and back). Naming
/// them would otherwise let a client strip them from what the upstream gets.
fn remove_connection_named(headers: &mut HeaderMap) {
    // Most HTTP/1.1 messages say `Connection: keep-alive` or `close`: those tokens name no
    // header left to remove (`Keep-Alive` is in the fixed list), so they are skipped and the
    // `Vec`, which allocates on its first push only, stays empty on that common path.
    let mut named: Vec<HeaderName> = Vec::new();
    // Split as bytes: a value with other bytes (obs-text) in one item still names the rest.
    for token in headers
        .get_all(header::CONNECTION)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.eq_ignore_ascii_case(b"keep-alive") && !t.eq_ignore_ascii_case(b"close"))
    {
        if let Ok(name) = HeaderName::from_bytes(token) {
            if name != header::HOST && name != X_REQUEST_ID {
                named.push(name);
            }
        }
    }
    for name in named {
        headers.remove(name);
    }
}

/// Joins several `Cookie` fields into one, separated by `"; "`, in order.
///
/// HTTP/2 clients send each cookie as its own field; RFC 9113 section 8.2.3 requires joining
/// them before the request goes on over HTTP/1.1, where only one `Cookie` line is allowed
/// (RFC 6265 section 5.4). Allocates only when there are at least two.
pub fn join_cookies(headers: &mut HeaderMap) {
    let mut values = headers.get_all(header::COOKIE).iter();
    if values.next().is_none() || values.next().is_none() {
        return;
    }
    let values = headers.get_all(header::COOKIE);
    let len: usize = values.iter().map(|v| v.len() + 2).sum();
    let mut joined = Vec::with_capacity(len);
    for value in values {
        if !joined.is_empty() {
            joined.extend_from_slice(b"; ");
        }
        joined.extend_from_slice(value.as_bytes());
    }
    if let Ok(value) = HeaderValue::from_bytes(&joined) {
        headers.insert(header::COOKIE, value);
    }
}

/// An HTTP/1.1 request must carry exactly one `Host` (RFC 9112 section 3.2: a server MUST
/// answer 400 otherwise); HTTP/1.0 and HTTP/2 (which uses `:authority`) may omit it, but
/// none may carry two: the proxy would route on one and an upstream might take the other.
pub fn has_invalid_host(version: http::Version, headers: &HeaderMap) -> bool {
    let mut hosts = headers.get_all(header::HOST).iter();
    let first = hosts.next();
    (first.is_none() && version == http::Version::HTTP_11) || hosts.next().is_some()
}

/// Whether `host` is a `Host` value (or `:authority`) as RFC 3986 section 3.2.2 has it:
/// `[IPv6]` or a name of unreserved, percent-encoded and sub-delimiter characters, then an
/// optional `:port` of digits. As NGINX does, `..` in a name is refused too (no name has an
/// empty label) and an empty value is allowed (RFC 9112 section 3.2). Whatever else is sent
/// (`a b`, `a/b`, `user@a`, bytes past ASCII) is answered `400` rather than routed on and
/// sent upstream as it is.
pub fn is_valid_host(host: &[u8]) -> bool {
    if let Some(literal) = host.strip_prefix(b"[") {
        return is_valid_ip_literal(literal);
    }
    // One pass over the name up to a `:` (this runs for every request): a byte outside the
    // set, or a dot after a dot, sets `bad`; the port is digits.
    let (mut bad, mut previous, mut end) = (0u8, 0u8, host.len());
    for (i, &b) in host.iter().enumerate() {
        let class = HOST_BYTES[usize::from(b)];
        if class == COLON {
            end = i + 1;
            break;
        }
        bad |= u8::from(class == INVALID) | (class & previous & DOT);
        previous = class;
    }
    bad == 0 && host[end..].iter().all(u8::is_ascii_digit)
}

/// `IPv6]` or `IPv6]:port`, after the `[` of an IP literal.
fn is_valid_ip_literal(literal: &[u8]) -> bool {
    let Some(end) = literal.iter().position(|&b| b == b']') else {
        return false;
    };
    let inside = &literal[..end];
    let ip = |b: &u8| b.is_ascii_hexdigit() || matches!(b, b':' | b'.');
    let port = match &literal[end + 1..] {
        [] => &[][..],
        [b':', port @ ..] => port,
        _ => return false,
    };
    !inside.is_empty() && inside.iter().all(ip) && port.iter().all(u8::is_ascii_digit)
}

/// Classes of [`HOST_BYTES`]: not allowed in a host name, allowed, `.` (a bit of its own),
/// and `:`, which ends the name.
const INVALID: u8 = 0;
const NAME: u8 = 1;
const DOT: u8 = 2;
const COLON: u8 = 4;

/// The class of every byte in a host name (RFC 3986 `reg-name`: unreserved, `%` of
/// percent-encoding, sub-delimiters), and `:`, which starts the port.
static HOST_BYTES: [u8; 256] = {
    let mut table = [INVALID; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        if c.is_ascii_alphanumeric() {
            table[b] = NAME;
        }
        b += 1;
    }
    let others = b"-_~%!$&'()*+,;=";
    let mut i = 0;
    while i < others.len() {
        table[others[i] as usize] = NAME;
        i += 1;
    }
    table[b'.' as usize] = DOT;
    table[b':' as usize] = COLON;
    table
};

/// Appends the client's IP to `X-Forwarded-For` and sets `-Proto` and `-Host`.
pub fn add_forwarded(
    headers: &mut HeaderMap,
    client_ip: &HeaderValue,
    proto: &'static str,
    host: Option<HeaderValue>,
) {
    // Several `X-Forwarded-For` lines are one list (RFC 9110 section 5.3): keep them all,
    // in order, so no earlier hop is lost. One lookup (the entry) reads and replaces them.
    match headers.entry(&X_FORWARDED_FOR) {
        Entry::Vacant(slot) => {
            slot.insert(client_ip.clone());
        }
        Entry::Occupied(mut prior) => {
            let len: usize = prior.iter().map(|v| v.len() + 2).sum();
            let mut joined = Vec::with_capacity(len + client_ip.len());
            for value in prior.iter() {
                joined.extend_from_slice(value.as_bytes());
                joined.extend_from_slice(b", ");
            }
            joined.extend_from_slice(client_ip.as_bytes());
            let xff = HeaderValue::from_bytes(&joined).unwrap_or_else(|_| client_ip.clone());
            prior.insert(xff);
        }
    }
    headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static(proto));
    if let Some(host) = host {
        headers.insert(X_FORWARDED_HOST.clone(), host);
    }
}

/// Generates unique request ids.
///
/// Ids are made a chunk at a time per thread ([`IDS_PER_CHUNK`] of them in one buffer, their
/// numbers reserved with one atomic add), and each id is a slice of its chunk: a request pays
/// a reference count, not an allocation, for its id.
#[derive(Debug)]
pub struct RequestIds {
    /// Tells this generator's chunks from another's on the same thread.
    generator: u64,
    prefix: u64,
    counter: AtomicU64,
}

/// Ids generated per chunk.
const IDS_PER_CHUNK: u64 = 128;
/// Length of an id: 32 hex digits.
const ID_LEN: usize = 32;

/// The ids a thread has made but not yet handed out.
#[derive(Default)]
struct Chunk {
    generator: u64,
    ids: bytes::Bytes,
    next: usize,
}

thread_local! {
    static CHUNK: std::cell::RefCell<Chunk> = std::cell::RefCell::new(Chunk::default());
}

// === impl RequestIds ===

impl RequestIds {
    /// A generator whose ids differ from other processes' by a random 64-bit prefix.
    pub fn new() -> RequestIds {
        static GENERATORS: AtomicU64 = AtomicU64::new(1);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        RequestIds {
            generator: GENERATORS.fetch_add(1, Ordering::Relaxed),
            prefix: mix(now ^ (u64::from(std::process::id()) << 32)),
            counter: AtomicU64::new(0),
        }
    }

    /// The next id: 32 lowercase hex digits.
    pub fn next(&self) -> HeaderValue {
        let id = CHUNK.with(|chunk| {
            let mut chunk = chunk.borrow_mut();
            if chunk.generator != self.generator || chunk.next == chunk.ids.len() {
                *chunk = self.chunk();
            }
            let start = chunk.next;
            chunk.next += ID_LEN;
            chunk.ids.slice(start..start + ID_LEN)
        });
        HeaderValue::from_maybe_shared(id).expect("hex digits are a valid header value")
    }

    /// A fresh chunk of ids, numbered from a block reserved on the shared counter.
    fn chunk(&self) -> Chunk {
        let first = self.counter.fetch_add(IDS_PER_CHUNK, Ordering::Relaxed);
        let mut ids = vec![0u8; IDS_PER_CHUNK as usize * ID_LEN];
        for (id, n) in ids.chunks_exact_mut(ID_LEN).zip(first..) {
            hex(&mut id[..16], self.prefix);
            hex(&mut id[16..], mix(n ^ self.prefix));
        }
        Chunk {
            generator: self.generator,
            ids: ids.into(),
            next: 0,
        }
    }
}

impl Default for RequestIds {
    fn default() -> Self {
        RequestIds::new()
    }
}

/// splitmix64's finaliser: a bijective mix of 64 bits.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn hex(out: &mut [u8], v: u64) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (i, b) in out.iter_mut().enumerate() {
        *b = DIGITS[((v >> (60 - 4 * i)) & 0xf) as usize];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_hop_by_hop_name_passes_the_length_filter() {
        for name in &HOP_BY_HOP {
            assert!(hop_by_hop_length(name.as_str().len()), "{name}");
        }
    }

    #[test]
    fn cookies_are_joined_in_order_only_when_there_are_several() {
        let mut h = HeaderMap::new();
        h.append(header::COOKIE, HeaderValue::from_static("a=1"));
        join_cookies(&mut h);
        assert_eq!(h.get_all(header::COOKIE).iter().count(), 1);
        assert_eq!(h[header::COOKIE], "a=1");
        h.append(header::COOKIE, HeaderValue::from_static("b=2"));
        h.append(header::COOKIE, HeaderValue::from_static("c=3"));
        join_cookies(&mut h);
        assert_eq!(h.get_all(header::COOKIE).iter().count(), 1);
        assert_eq!(h[header::COOKIE], "a=1; b=2; c=3");
    }

    #[test]
    fn connection_named_headers_and_fixed_hop_headers_are_removed() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("close, X-Secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert("x-kept", HeaderValue::from_static("yes"));
        remove_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert_eq!(h["x-kept"], "yes");
    }

    #[test]
    fn a_connection_value_with_other_bytes_still_names_its_headers() {
        // Review: an item with obs-text made the whole value unreadable as text.
        let mut h = HeaderMap::new();
        let value = HeaderValue::from_bytes(b"x-secret, caf\xe9").unwrap();
        h.insert(header::CONNECTION, value);
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("x-kept", HeaderValue::from_static("yes"));
        remove_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        assert_eq!(h["x-kept"], "yes");
    }

    #[test]
    fn host_and_request_id_cannot_be_named_hop_by_hop() {
        // Audit B-F1 and B-F2: `Connection: host, x-request-id` stripped both upstream.
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, Host, X-Request-Id, x-other"),
        );
        h.insert(header::HOST, HeaderValue::from_static("a.example"));
        h.insert(&X_REQUEST_ID, HeaderValue::from_static("id-1"));
        h.insert("x-other", HeaderValue::from_static("1"));
        remove_hop_by_hop(&mut h);
        assert_eq!(h.len(), 2, "{h:?}");
        assert_eq!(h[header::HOST], "a.example");
        assert_eq!(h[&X_REQUEST_ID], "id-1");
    }

    #[test]
    fn hosts_are_checked_as_rfc_3986_has_them() {
        for good in [
            "a.example",
            "A.Example.:8080",
            "127.0.0.1",
            "localhost:9001",
            "[::1]",
            "[::1]:443",
            "[2001:db8::1]:",
            "my_host",
            "xn--bcher-kva.example",
            "a%20b",
            "",
            "a.com:",
        ] {
            assert!(is_valid_host(good.as_bytes()), "{good}");
        }
        for bad in [
            "a b",
            "a/b",
            "a..com",
            "a.com:x",
            "[::1",
            "[::1]x",
            "[]",
            "[::g]",
            "a@b",
            "a\\b",
            "\u{ff}a",
            "a.com:80:80",
        ] {
            assert!(!is_valid_host(bad.as_bytes()), "{bad}");
        }
    }

    #[test]
    fn forwarded_for_appends_to_an_existing_chain() {
        let mut h = HeaderMap::new();
        h.insert(&X_FORWARDED_FOR, HeaderValue::from_static("10.1.1.1"));
        add_forwarded(&mut h, &HeaderValue::from_static("127.0.0.1"), "http", None);
        assert_eq!(h[&X_FORWARDED_FOR], "10.1.1.1, 127.0.0.1");
        assert_eq!(h[&X_FORWARDED_PROTO], "http");
    }

    #[test]
    fn forwarded_for_joins_every_line_in_order_then_appends_the_client() {
        let mut h = HeaderMap::new();
        h.append(&X_FORWARDED_FOR, HeaderValue::from_static("10.1.1.1"));
        h.append(
            &X_FORWARDED_FOR,
            HeaderValue::from_static("10.2.2.2, 10.3.3.3"),
        );
        add_forwarded(&mut h, &HeaderValue::from_static("127.0.0.1"), "http", None);
        assert_eq!(h.get_all(&X_FORWARDED_FOR).iter().count(), 1);
        assert_eq!(
            h[&X_FORWARDED_FOR],
            "10.1.1.1, 10.2.2.2, 10.3.3.3, 127.0.0.1"
        );
    }

    #[test]
    fn keep_alive_and_close_tokens_name_no_header_but_others_still_do() {
        let mut h = HeaderMap::new();
        h.append(header::CONNECTION, HeaderValue::from_static("Keep-Alive"));
        h.append(header::CONNECTION, HeaderValue::from_static("CLOSE, x-hop"));
        h.insert("x-hop", HeaderValue::from_static("1"));
        h.insert("close", HeaderValue::from_static("not named by the token"));
        remove_hop_by_hop(&mut h);
        assert!(h.get(header::CONNECTION).is_none());
        assert!(h.get("x-hop").is_none());
        assert_eq!(h.len(), 1);
    }

    #[test]
    fn request_ids_are_distinct_hex() {
        let ids = RequestIds::new();
        let a = ids.next();
        let b = ids.next();
        assert_ne!(a, b);
        assert_eq!(a.len(), 32);
        assert!(a.to_str().unwrap().bytes().all(|c| c.is_ascii_hexdigit()));
    }

    #[test]
    fn request_ids_stay_distinct_across_chunks_threads_and_generators() {
        let ids = std::sync::Arc::new(RequestIds::new());
        let other = RequestIds::new();
        let per_thread = 3 * IDS_PER_CHUNK as usize + 5;
        let threads: Vec<_> = (0..3)
            .map(|_| {
                let ids = ids.clone();
                std::thread::spawn(move || (0..per_thread).map(|_| ids.next()).collect::<Vec<_>>())
            })
            .collect();
        let mut seen = std::collections::HashSet::new();
        for thread in threads {
            for id in thread.join().unwrap() {
                assert_eq!(id.len(), ID_LEN);
                assert!(seen.insert(id), "an id was handed out twice");
            }
        }
        // Interleaving two generators on one thread refills the chunk, never mixes them.
        for _ in 0..IDS_PER_CHUNK {
            let (a, b) = (ids.next(), other.next());
            assert_eq!(&a.as_bytes()[..16], &ids.next().as_bytes()[..16]);
            assert_ne!(&a.as_bytes()[..16], &b.as_bytes()[..16]);
            assert!(seen.insert(a) && seen.insert(b));
        }
        assert_eq!(seen.len(), 3 * per_thread + 2 * IDS_PER_CHUNK as usize);
    }
}
