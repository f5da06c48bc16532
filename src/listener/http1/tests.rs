use super::*;

fn head(raw: &[u8]) -> Result<Option<Head>, Refusal> {
    take_head(&mut BytesMut::from(raw), 64 * 1024)
}

fn framing(raw: &str) -> Result<(Framing, bool), Refusal> {
    let head = head(raw.as_bytes())?.expect("a complete head");
    let ambiguous = head.parts.extensions.get::<AmbiguousFraming>().is_some();
    Ok((head.framing, ambiguous))
}

#[test]
fn a_head_is_taken_whole_and_the_next_one_left_in_the_buffer() {
    let mut buf = BytesMut::from(
        &b"GET /a?b=c HTTP/1.1\r\nHost: x\r\nX-Two: 1\r\nX-Two: 2\r\n\r\nGET /next"[..],
    );
    let head = take_head(&mut buf, 1024).unwrap().unwrap();
    assert_eq!(head.parts.method, Method::GET);
    assert_eq!(head.parts.uri, "/a?b=c");
    assert_eq!(head.parts.version, Version::HTTP_11);
    assert_eq!(head.parts.headers["host"], "x");
    let twos: Vec<_> = head.parts.headers.get_all("x-two").iter().collect();
    assert_eq!(twos, ["1", "2"]);
    assert_eq!(head.framing, Framing::Empty);
    assert!(head.keep_alive);
    assert_eq!(&buf[..], b"GET /next");
    assert!(take_head(&mut buf, 1024).unwrap().is_none(), "partial");
}

#[test]
fn framing_follows_rfc_9112_and_marks_smuggling_shapes() {
    let clean = |raw: &str| framing(raw).map(|(f, ambiguous)| (f, !ambiguous));
    assert_eq!(
        clean("POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\n"),
        Ok((Framing::Length(5), true))
    );
    assert_eq!(
        clean("POST / HTTP/1.1\r\nContent-Length: 0\r\n\r\n"),
        Ok((Framing::Empty, true))
    );
    assert_eq!(
        clean("POST / HTTP/1.1\r\nTransfer-Encoding: Chunked\r\n\r\n"),
        Ok((Framing::Chunked, true))
    );
    for ambiguous in [
        "POST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
        "POST / HTTP/1.1\r\nCONTENT-LENGTH: 5\r\ncontent-length: 5\r\n\r\n",
        "POST / HTTP/1.1\r\nContent-Length: 5, 5\r\n\r\n",
        "POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
        "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
    ] {
        assert_eq!(
            clean(ambiguous).map(|(_, clean)| clean),
            Ok(false),
            "{ambiguous:?}"
        );
    }
    for malformed in [
        "POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
        "POST / HTTP/1.1\r\nContent-Length: abc\r\n\r\n",
        "POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
        "POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",
        "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
        "GET / HTTP/1.1\r\nX: a\r\n b\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a\rX: y\r\n\r\n",
        "NOT HTTP AT ALL\r\n\r\n",
    ] {
        assert_eq!(
            framing(malformed).err(),
            Some(Refusal::Malformed),
            "{malformed:?}"
        );
    }
    // A name that only starts like a framing field is just a field.
    assert_eq!(
        clean("GET / HTTP/1.1\r\nContent-Lengthy: 5\r\nContent-Length: 0\r\n\r\n"),
        Ok((Framing::Empty, true))
    );
}

#[test]
fn keep_alive_defaults_by_version() {
    let keep = |raw: &str| head(raw.as_bytes()).unwrap().unwrap().keep_alive;
    assert!(keep("GET / HTTP/1.1\r\n\r\n"));
    assert!(!keep("GET / HTTP/1.1\r\nConnection: x, Close\r\n\r\n"));
    assert!(!keep("GET / HTTP/1.0\r\n\r\n"));
    assert!(keep("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"));
    assert!(
        !keep("POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n"),
        "ambiguous heads close"
    );
    let up = head(b"GET / HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
        .unwrap()
        .unwrap();
    assert!(up.upgrade);
}

#[test]
fn heads_past_the_limits_are_too_large() {
    let mut big = BytesMut::from(&b"GET / HTTP/1.1\r\nX: "[..]);
    big.extend_from_slice(&[b'y'; 2000]);
    assert_eq!(
        take_head(&mut big.clone(), 1000).err(),
        Some(Refusal::TooLarge),
        "partial past the limit"
    );
    big.extend_from_slice(b"\r\n\r\n");
    assert_eq!(
        take_head(&mut big, 1000).err(),
        Some(Refusal::TooLarge),
        "complete past the limit"
    );
    let fields: String = (0..=MAX_HEADERS).map(|i| format!("x{i}: v\r\n")).collect();
    let raw = format!("GET / HTTP/1.1\r\n{fields}\r\n");
    assert_eq!(head(raw.as_bytes()).err(), Some(Refusal::TooLarge));
}

/// Decodes `raw` fed one piece at a time, split at `at`; data and trailers, or the error.
fn decode(
    raw: &[u8],
    at: usize,
    framing: Framing,
) -> Result<(Vec<u8>, Option<HeaderMap>), BodyError> {
    let mut state = Decode::new(framing);
    let mut buf = BytesMut::new();
    let (mut data, mut trailers) = (Vec::new(), None);
    for piece in [&raw[..at], &raw[at..], b""] {
        buf.extend_from_slice(piece);
        loop {
            match state.step(&mut buf, 1024)? {
                Step::Frame(frame) => match frame.into_data() {
                    Ok(bytes) => data.extend_from_slice(&bytes),
                    Err(frame) => trailers = frame.into_trailers().ok(),
                },
                Step::More => break,
                Step::Done => return Ok((data, trailers)),
            }
        }
    }
    Err(BodyError::Incomplete)
}

#[test]
fn chunked_bodies_decode_the_same_split_anywhere() {
    let raw = b"5;name=v\r\nhello\r\n1A \r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nx-t: 1\r\n\r\nNEXT";
    for at in 0..raw.len() {
        let (data, trailers) = decode(raw, at, Framing::Chunked).unwrap();
        assert_eq!(data, b"helloabcdefghijklmnopqrstuvwxyz", "split at {at}");
        assert_eq!(trailers.unwrap()["x-t"], "1");
    }
    let (data, trailers) = decode(b"3\r\nabc\r\n0\r\n\r\n", 4, Framing::Chunked).unwrap();
    assert_eq!((data.as_slice(), trailers), (&b"abc"[..], None));
}

#[test]
fn malformed_chunks_are_refused() {
    for raw in [
        &b"5\nhello\n0\n\n"[..],
        b"5\r\nhelloX\r\n0\r\n\r\n",
        b"zz\r\n",
        b"\r\n",
        b"5 x\r\nhello\r\n",
        b"ffffffffffffffffff\r\n",
    ] {
        assert!(decode(raw, 0, Framing::Chunked).is_err(), "{raw:?}");
    }
    assert_eq!(
        decode(b"abc", 1, Framing::Length(5)).err(),
        Some(BodyError::Incomplete)
    );
    assert_eq!(
        decode(b"abcdefg", 2, Framing::Length(5)).unwrap().0,
        b"abcde"
    );
}

#[test]
fn dates_are_imf_fixdate() {
    assert_eq!(&http_date(784_111_777), b"Sun, 06 Nov 1994 08:49:37 GMT");
    assert_eq!(&http_date(0), b"Thu, 01 Jan 1970 00:00:00 GMT");
    assert_eq!(&http_date(951_782_400), b"Tue, 29 Feb 2000 00:00:00 GMT");
    assert_eq!(&http_date(4_102_444_799), b"Thu, 31 Dec 2099 23:59:59 GMT");
}

fn response_head(
    body: ResponseBody,
    method: Method,
    version: Version,
    keep: bool,
) -> (String, Out, bool) {
    let (parts, body) = http::Response::new(body).into_parts();
    let mut out = Vec::new();
    let (framing, keep) = encode_head(&mut out, &parts, &body, &method, version, keep);
    (String::from_utf8(out).unwrap(), framing, keep)
}

#[test]
fn response_heads_frame_by_what_is_known() {
    let (text, framing, keep) = response_head(
        ResponseBody::full("abc"),
        Method::GET,
        Version::HTTP_11,
        true,
    );
    assert!(
        text.starts_with("HTTP/1.1 200 OK\r\ncontent-length: 3\r\ndate: "),
        "{text}"
    );
    assert!(text.ends_with(" GMT\r\n\r\n"), "{text}");
    assert_eq!((framing, keep), (Out::Length(3), true));

    let (text, framing, keep) = response_head(
        ResponseBody::full("abc"),
        Method::HEAD,
        Version::HTTP_11,
        false,
    );
    assert!(
        !text.contains("content-length") && text.contains("connection: close\r\n"),
        "{text}"
    );
    assert_eq!((framing, keep), (Out::None, false));

    let (text, _, keep) = response_head(
        ResponseBody::full("abc"),
        Method::GET,
        Version::HTTP_10,
        true,
    );
    assert!(text.contains("connection: keep-alive\r\n"), "{text}");
    assert!(keep);
}
