//! From a decoded header block to an `http::Request` head, and from a response head to a
//! header block: the HTTP semantics of RFC 9113 section 8 (pseudo-header fields, the fields
//! HTTP/2 forbids, `content-length`), apart from the frames that carry them.

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Method, Uri, Version};

use super::hpack::{self, DecodeError, Decoder, Name};
use crate::proxy::HeadersTooLarge;

/// A request head decoded from a HEADERS block.
#[derive(Debug)]
pub(super) struct Head {
    /// The request without its body.
    pub(super) parts: http::request::Parts,
    /// The declared `content-length`, if any.
    pub(super) length: Option<u64>,
    /// `expect: 100-continue`: the client waits for `100 Continue` before its body.
    pub(super) expect_continue: bool,
}

/// What a block decoded into when it is not a request the proxy can take.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Refused {
    /// The HPACK encoding is broken: a connection error (COMPRESSION_ERROR).
    Compression,
    /// A malformed request (RFC 9113 section 8.1.1): a stream error (PROTOCOL_ERROR).
    Malformed,
}

impl From<DecodeError> for Refused {
    fn from(_: DecodeError) -> Refused {
        Refused::Compression
    }
}

/// The pseudo-header fields of a request, as received.
#[derive(Default)]
struct Pseudo {
    method: Option<Bytes>,
    scheme: Option<Bytes>,
    authority: Option<Bytes>,
    path: Option<Bytes>,
}

/// Decodes a request head from `block`; `limit` is `max_header_bytes`, past which the
/// request is marked [`HeadersTooLarge`] (and past twice which its fields are no longer kept).
pub(super) fn decode_request(
    decoder: &mut Decoder,
    block: Bytes,
    limit: usize,
) -> Result<Head, Refused> {
    let mut pseudo = Pseudo::default();
    let mut headers = HeaderMap::with_capacity(12);
    let mut malformed = false;
    let mut regular = false;
    let mut size = 0;
    decoder.decode(block, |name, value| {
        size += name_len(name) + value.len() + 32;
        let slot = match name {
            Name::Method => &mut pseudo.method,
            Name::Scheme => &mut pseudo.scheme,
            Name::Authority => &mut pseudo.authority,
            Name::Path => &mut pseudo.path,
            Name::Header(name) => {
                regular = true;
                if size <= 2 * limit {
                    malformed |= !add_field(&mut headers, name, value);
                }
                return;
            }
            // `:protocol` needs SETTINGS_ENABLE_CONNECT_PROTOCOL, which we do not send.
            Name::Protocol | Name::Status | Name::Invalid(_) => {
                malformed = true;
                return;
            }
        };
        // Pseudo-header fields come first, once each.
        malformed |= regular || slot.is_some();
        *slot = Some(value.clone());
    })?;
    if malformed {
        return Err(Refused::Malformed);
    }
    let length = content_length(&headers)?;
    let expect_continue = headers
        .get(header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    let authority = match pseudo.authority.take() {
        Some(raw) => match Authority::from_maybe_shared(raw.clone()) {
            Ok(authority) => Some(authority),
            Err(_) => {
                // Not an authority (`a b`, `a/b`): handed on as the Host field it stands
                // for, which the proxy answers `400` as it would over HTTP/1.1.
                let value = HeaderValue::from_maybe_shared(raw).map_err(|_| Refused::Malformed)?;
                headers.append(header::HOST, value);
                None
            }
        },
        None => None,
    };
    let mut parts = head_parts(pseudo, authority)?;
    parts.headers = headers;
    if size > limit {
        parts.extensions.insert(HeadersTooLarge);
    }
    Ok(Head {
        parts,
        length,
        expect_continue,
    })
}

/// Decodes a trailer section: regular fields only.
pub(super) fn decode_trailers(
    decoder: &mut Decoder,
    block: Bytes,
    limit: usize,
) -> Result<HeaderMap, Refused> {
    let mut trailers = HeaderMap::new();
    let mut malformed = false;
    let mut size = 0;
    decoder.decode(block, |name, value| {
        size += name_len(name) + value.len() + 32;
        match name {
            // Past the limit nothing more is kept (or even checked): the section is refused.
            Name::Header(name) if size <= limit => {
                malformed |= !add_field(&mut trailers, name, value);
            }
            Name::Header(_) => {}
            _ => malformed = true,
        }
    })?;
    if malformed || size > limit {
        return Err(Refused::Malformed);
    }
    Ok(trailers)
}

/// A field's name length as the header list size counts it.
fn name_len(name: &Name) -> usize {
    match name {
        Name::Method => 7,
        Name::Scheme => 7,
        Name::Authority => 10,
        Name::Path => 5,
        Name::Protocol => 9,
        Name::Status => 7,
        Name::Header(name) => name.as_str().len(),
        Name::Invalid(name) => name.len(),
    }
}

/// Adds a regular field; false when HTTP/2 forbids it (section 8.2.2) or its value is not one.
fn add_field(headers: &mut HeaderMap, name: &HeaderName, value: &Bytes) -> bool {
    if is_connection_specific(name) {
        return false;
    }
    if name == header::TE && value.as_ref() != b"trailers" {
        return false;
    }
    let Ok(value) = HeaderValue::from_maybe_shared(value.clone()) else {
        return false;
    };
    // Leading or trailing whitespace is malformed in HTTP/2 (section 8.2.1).
    if value
        .as_bytes()
        .first()
        .zip(value.as_bytes().last())
        .is_some_and(|(a, z)| matches!(a, b' ' | b'\t') || matches!(z, b' ' | b'\t'))
    {
        return false;
    }
    // `HeaderMap` holds at most 32,768 fields; more is refused rather than a panic.
    headers.try_append(name.clone(), value).is_ok()
}

/// The fields that mean something for one HTTP/1.1 connection only.
pub(super) fn is_connection_specific(name: &HeaderName) -> bool {
    name == header::CONNECTION
        || name == header::TRANSFER_ENCODING
        || name == header::UPGRADE
        || name.as_str() == "keep-alive"
        || name.as_str() == "proxy-connection"
}

/// The request's `content-length`: one valid value, or none.
fn content_length(headers: &HeaderMap) -> Result<Option<u64>, Refused> {
    let mut values = headers.get_all(header::CONTENT_LENGTH).iter();
    let Some(first) = values.next() else {
        return Ok(None);
    };
    let parse = |v: &HeaderValue| {
        let b = v.as_bytes();
        if b.is_empty() || b.len() > 19 || !b.iter().all(u8::is_ascii_digit) {
            return None;
        }
        Some(b.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0')))
    };
    let n = parse(first).ok_or(Refused::Malformed)?;
    if values.any(|v| parse(v) != Some(n)) {
        return Err(Refused::Malformed);
    }
    Ok(Some(n))
}

/// The request line from the pseudo-header fields (section 8.3.1) and the parsed authority.
fn head_parts(
    pseudo: Pseudo,
    authority: Option<Authority>,
) -> Result<http::request::Parts, Refused> {
    let method = pseudo.method.ok_or(Refused::Malformed)?;
    let method = Method::from_bytes(&method).map_err(|_| Refused::Malformed)?;
    let mut uri = http::uri::Parts::default();
    if method == Method::CONNECT {
        // The authority alone (section 8.5).
        if pseudo.scheme.is_some() || pseudo.path.is_some() || authority.is_none() {
            return Err(Refused::Malformed);
        }
        uri.authority = authority;
    } else {
        let (Some(scheme), Some(path)) = (pseudo.scheme, pseudo.path) else {
            return Err(Refused::Malformed);
        };
        if path.is_empty() {
            return Err(Refused::Malformed);
        }
        // Without an authority the target is the path alone (`Uri` has no scheme without
        // one); the Host field then names the host.
        if authority.is_some() {
            uri.scheme = Some(scheme_of(&scheme)?);
            uri.authority = authority;
        }
        uri.path_and_query =
            Some(PathAndQuery::from_maybe_shared(path).map_err(|_| Refused::Malformed)?);
    }
    let uri = Uri::from_parts(uri).map_err(|_| Refused::Malformed)?;
    let (mut parts, ()) = http::Request::new(()).into_parts();
    parts.method = method;
    parts.uri = uri;
    parts.version = Version::HTTP_2;
    Ok(parts)
}

fn scheme_of(scheme: &[u8]) -> Result<Scheme, Refused> {
    match scheme {
        b"http" => Ok(Scheme::HTTP),
        b"https" => Ok(Scheme::HTTPS),
        other => Scheme::try_from(other).map_err(|_| Refused::Malformed),
    }
}

/// Appends a response head's (or trailer section's, without `status`) header block.
pub(super) fn encode_head(
    out: &mut Vec<u8>,
    status: Option<u16>,
    headers: &HeaderMap,
    length: Option<u64>,
) {
    if let Some(status) = status {
        hpack::encode_status(out, status);
        if !headers.contains_key(header::DATE) {
            // Literal without indexing, static name 33 (`date`): 0x0f then 33 - 15.
            out.extend_from_slice(&[0x0f, 33 - 15, 29]);
            out.extend_from_slice(&super::super::http1::now_date());
        }
        if let Some(n) = length.filter(|_| !headers.contains_key(header::CONTENT_LENGTH)) {
            let mut digits = [0u8; 20];
            let digits = super::super::http1::itoa(n, &mut digits);
            // Literal without indexing, static name 28 (`content-length`).
            out.extend_from_slice(&[0x0f, 28 - 15, digits.len() as u8]);
            out.extend_from_slice(digits);
        }
    }
    for (name, value) in headers {
        if !is_connection_specific(name) {
            hpack::encode_field(out, name, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A header block of literal fields without indexing, new names, plain strings.
    fn block(fields: &[(&str, &str)]) -> Bytes {
        let mut out = Vec::new();
        for (name, value) in fields {
            out.push(0);
            out.push(name.len() as u8);
            out.extend_from_slice(name.as_bytes());
            out.push(value.len() as u8);
            out.extend_from_slice(value.as_bytes());
        }
        Bytes::from(out)
    }

    fn decode(fields: &[(&str, &str)]) -> Result<Head, Refused> {
        decode_request(&mut Decoder::new(4096), block(fields), 8192)
    }

    const GET: [(&str, &str); 4] = [
        (":method", "GET"),
        (":scheme", "http"),
        (":authority", "example.com"),
        (":path", "/a?b"),
    ];

    #[test]
    fn a_request_head_becomes_parts() {
        let mut fields = GET.to_vec();
        fields.push(("x-a", "1"));
        fields.push(("content-length", "5"));
        let head = decode(&fields).unwrap();
        assert_eq!(head.parts.method, Method::GET);
        assert_eq!(head.parts.uri, "http://example.com/a?b");
        assert_eq!(head.parts.version, Version::HTTP_2);
        assert_eq!(head.parts.headers["x-a"], "1");
        assert_eq!(head.length, Some(5));
    }

    #[test]
    fn an_authority_that_is_not_one_becomes_the_host_field_for_the_proxy_to_refuse() {
        let head = decode(&[
            (":method", "GET"),
            (":scheme", "http"),
            (":authority", "a b"),
            (":path", "/"),
            ("expect", "100-Continue"),
        ])
        .unwrap();
        assert_eq!(head.parts.uri, "/");
        assert_eq!(head.parts.headers["host"], "a b");
        assert!(head.expect_continue);
        assert!(!decode(&GET).unwrap().expect_continue);
    }

    #[test]
    fn a_request_without_authority_keeps_its_path() {
        let head = decode(&[(":method", "GET"), (":scheme", "http"), (":path", "/p")]).unwrap();
        assert_eq!(head.parts.uri, "/p");
    }

    #[test]
    fn malformed_requests_are_refused() {
        let with = |extra: (&'static str, &'static str)| {
            let mut fields = GET.to_vec();
            fields.push(extra);
            fields
        };
        let cases: Vec<Vec<(&str, &str)>> = vec![
            with(("connection", "close")),
            with(("transfer-encoding", "chunked")),
            with(("upgrade", "h2c")),
            with(("keep-alive", "5")),
            with(("te", "gzip")),
            with((":method", "POST")),
            with((":foo", "x")),
            with((":status", "200")),
            with(("X-Upper", "x")),
            with(("content-length", "x")),
            with(("x-a", " padded")),
            vec![
                ("x-a", "1"),
                (":method", "GET"),
                (":scheme", "http"),
                (":path", "/"),
            ],
            vec![(":method", "GET"), (":scheme", "http")],
            vec![(":method", "GET"), (":scheme", "http"), (":path", "")],
            vec![
                (":method", "CONNECT"),
                (":authority", "a:443"),
                (":path", "/"),
            ],
        ];
        for fields in cases {
            assert_eq!(
                decode(&fields).unwrap_err(),
                Refused::Malformed,
                "{fields:?}"
            );
        }
        assert!(decode(&with(("te", "trailers"))).is_ok());
        let connect = decode(&[(":method", "CONNECT"), (":authority", "a:443")]).unwrap();
        assert_eq!(connect.parts.uri, "a:443");
    }

    #[test]
    fn a_head_past_the_limit_is_marked_for_431() {
        let long = "v".repeat(100);
        let mut fields = GET.to_vec();
        fields.push(("x-long", &long));
        let head = decode_request(&mut Decoder::new(4096), block(&fields), 150).unwrap();
        assert!(head.parts.extensions.get::<HeadersTooLarge>().is_some());
        let head = decode_request(&mut Decoder::new(4096), block(&fields), 400).unwrap();
        assert!(head.parts.extensions.get::<HeadersTooLarge>().is_none());
    }

    #[test]
    fn an_encoded_head_decodes_back() {
        let mut headers = HeaderMap::new();
        headers.insert("x-a", HeaderValue::from_static("1"));
        headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        let mut out = Vec::new();
        encode_head(&mut out, Some(200), &headers, Some(12));
        let mut fields = Vec::new();
        Decoder::new(4096)
            .decode(Bytes::from(out), |name, value| {
                fields.push((format!("{name:?}"), value.clone()))
            })
            .unwrap();
        let names: Vec<&str> = fields.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names.len(), 4, "{names:?}");
        assert_eq!(fields[0].1, "200");
        assert_eq!(fields[2].1, "12");
        assert_eq!(fields[3].1, "1");
        assert!(!names.iter().any(|n| n.contains("connection")));
    }
}
