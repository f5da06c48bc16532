//! The HTTP/1.1 server side, spoken by hand: `Expect: 100-continue`, HTTP/1.0 keep-alive and
//! close-delimited bodies, `HEAD`, pipelining, chunked uploads split anywhere, and a head
//! past the field limit.

use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::{self, config, read_until_closed, Backend, Proxy, DEADLINE};

async fn proxy_to(backend: &Backend) -> Proxy {
    Proxy::start(&config(&format!(
        "routes:\n  - name: r\n    match: {{ path_prefix: \"/\" }}\n    pool: p\npools:\n  - name: p\n    upstreams:\n      - {{ addr: \"{}\" }}\n",
        backend.addr
    )))
    .await
}

/// Reads one response with a `content-length` body; returns its head and body.
async fn read_response(stream: &mut TcpStream) -> (String, Vec<u8>) {
    let mut all = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if let Some(end) = all.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&all[..end + 4]).into_owned();
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .map_or(0, |n| n.trim().parse::<usize>().unwrap());
            if all.len() >= end + 4 + length {
                let body = all[end + 4..end + 4 + length].to_vec();
                all.drain(..end + 4 + length);
                assert!(all.is_empty(), "bytes past the response: {all:?}");
                return (head, body);
            }
        }
        let n = tokio::time::timeout(DEADLINE, stream.read(&mut buf))
            .await
            .expect("response in time")
            .unwrap();
        assert!(
            n > 0,
            "closed mid-response after {:?}",
            String::from_utf8_lossy(&all)
        );
        all.extend_from_slice(&buf[..n]);
    }
}

fn sha(data: &[u8]) -> String {
    format!("{:x}", Sha256::digest(data))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expect_100_continue_is_answered_before_the_body_is_sent() {
    let backend = Backend::start("b").await;
    let proxy = proxy_to(&backend).await;
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    stream
        .write_all(b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
        .await
        .unwrap();
    let mut interim = [0u8; 25];
    tokio::time::timeout(DEADLINE, stream.read_exact(&mut interim))
        .await
        .expect("100 Continue in time")
        .unwrap();
    assert_eq!(&interim, b"HTTP/1.1 100 Continue\r\n\r\n");
    stream.write_all(b"hello").await.unwrap();
    let (head, body) = read_response(&mut stream).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(
        String::from_utf8(body).unwrap(),
        format!("5 {}", sha(b"hello"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http10_keeps_the_connection_only_when_asked() {
    let backend = Backend::start("b").await;
    let proxy = proxy_to(&backend).await;
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    for _ in 0..2 {
        stream
            .write_all(b"GET / HTTP/1.0\r\nHost: a\r\nConnection: keep-alive\r\n\r\n")
            .await
            .unwrap();
        let (head, body) = read_response(&mut stream).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert!(head.contains("\r\nconnection: keep-alive\r\n"), "{head}");
        assert_eq!(body, b"b");
    }
    stream
        .write_all(b"GET / HTTP/1.0\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let (text, _) = read_until_closed(&mut stream).await;
    assert!(
        text.starts_with("HTTP/1.1 200") && text.ends_with("\r\n\r\nb"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_of_unknown_length_is_chunked_for_http11_and_close_delimited_for_http10() {
    let backend = Backend::start("b").await;
    let proxy = proxy_to(&backend).await;
    let total = 200_000u64;
    let expected: Vec<u8> = (0..total).map(support::pattern).collect();

    let request = format!("GET /download/{total} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
    let (head, body) = exchange_to_close(&proxy, &request).await;
    assert!(
        head.contains("\r\ntransfer-encoding: chunked\r\n"),
        "{head}"
    );
    assert_eq!(dechunk(&body), expected);

    let request = format!("GET /download/{total} HTTP/1.0\r\nHost: a\r\n\r\n");
    let (head, body) = exchange_to_close(&proxy, &request).await;
    assert!(!head.contains("transfer-encoding"), "{head}");
    assert_eq!(body, expected);
}

/// Sends `request` on a new connection and reads until the proxy closes it: head and body.
async fn exchange_to_close(proxy: &Proxy, request: &str) -> (String, Vec<u8>) {
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(DEADLINE, stream.read_to_end(&mut raw))
        .await
        .expect("closed in time")
        .unwrap();
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let body = raw.split_off(end);
    (String::from_utf8_lossy(&raw).into_owned(), body)
}

/// The data of a chunked body (no extensions, no trailers).
fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut data = Vec::new();
    loop {
        let line = raw.windows(2).position(|w| w == b"\r\n").unwrap();
        let size = usize::from_str_radix(std::str::from_utf8(&raw[..line]).unwrap(), 16).unwrap();
        raw = &raw[line + 2..];
        if size == 0 {
            assert_eq!(raw, b"\r\n");
            return data;
        }
        data.extend_from_slice(&raw[..size]);
        assert_eq!(&raw[size..size + 2], b"\r\n");
        raw = &raw[size + 2..];
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_answers_carry_no_body_and_keep_the_connection() {
    let backend = Backend::start("b").await;
    let proxy = proxy_to(&backend).await;
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    stream
        .write_all(b"HEAD / HTTP/1.1\r\nHost: a\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let (text, _) = read_until_closed(&mut stream).await;
    let (first, second) = text.split_at(text.rfind("HTTP/1.1 200").unwrap());
    assert!(
        first.starts_with("HTTP/1.1 200") && first.ends_with("\r\n\r\n"),
        "{text}"
    );
    assert!(second.ends_with("\r\n\r\nb"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_are_answered_in_order() {
    let backend = Backend::start("b").await;
    let proxy = proxy_to(&backend).await;
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    stream
        .write_all(
            b"GET /status/201 HTTP/1.1\r\nHost: a\r\n\r\n\
              POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc\
              GET /slow/50 HTTP/1.1\r\nHost: a\r\n\r\n\
              GET /status/202 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        )
        .await
        .unwrap();
    let (text, _) = read_until_closed(&mut stream).await;
    let statuses: Vec<&str> = text
        .match_indices("HTTP/1.1 ")
        .map(|(i, _)| &text[i + 9..i + 12])
        .collect();
    assert_eq!(statuses, ["201", "200", "200", "202"], "{text}");
    assert!(text.contains(&format!("3 {}", sha(b"abc"))), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_upload_split_anywhere_arrives_whole() {
    let backend = Backend::start("b").await;
    let proxy = proxy_to(&backend).await;
    let raw: &[u8] = b"POST /upload HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n\
        5;ext=1\r\nhello\r\n1a\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nx-trailer: t\r\n\r\n";
    for split in [40, 70, 75, 82, 100, raw.len() - 3] {
        let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
        stream.write_all(&raw[..split]).await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        stream.write_all(&raw[split..]).await.unwrap();
        let (head, body) = read_response(&mut stream).await;
        assert!(head.starts_with("HTTP/1.1 200"), "split {split}: {head}");
        let expected = format!("31 {}", sha(b"helloabcdefghijklmnopqrstuvwxyz"));
        assert_eq!(String::from_utf8(body).unwrap(), expected, "split {split}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_fields_than_the_limit_answer_431() {
    let backend = Backend::start("b").await;
    let proxy = proxy_to(&backend).await;
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    let fields: String = (0..120).map(|i| format!("x-f{i}: v\r\n")).collect();
    let raw = format!("GET / HTTP/1.1\r\nHost: a\r\n{fields}\r\n");
    stream.write_all(raw.as_bytes()).await.unwrap();
    let (text, _) = read_until_closed(&mut stream).await;
    assert!(text.starts_with("HTTP/1.1 431"), "{text}");
    assert!(
        text.ends_with("\r\n\r\n431 request header fields too large\n"),
        "{text}"
    );
    assert_eq!(backend.requests(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_header_bytes_is_the_exact_head_limit() {
    let backend = Backend::start("b").await;
    let proxy = Proxy::start(&format!(
        "listeners:\n  - name: test\n    bind: \"127.0.0.1:0\"\n    limits: {{ max_header_bytes: 2KiB }}\naccess_log: off\nroutes:\n  - name: r\n    pool: p\npools:\n  - name: p\n    upstreams:\n      - {{ addr: \"{}\" }}\n",
        backend.addr
    ))
    .await;
    // Request line, fields and the blank line: exactly 2,048 bytes, then one more.
    let fixed = "GET / HTTP/1.1\r\nHost: a\r\nX-Pad: \r\n\r\n".len();
    for (pad, status) in [(2048 - fixed, "200"), (2049 - fixed, "431")] {
        let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
        let raw = format!(
            "GET / HTTP/1.1\r\nHost: a\r\nX-Pad: {}\r\n\r\n",
            "p".repeat(pad)
        );
        stream.write_all(raw.as_bytes()).await.unwrap();
        let mut buf = [0u8; 12];
        tokio::time::timeout(DEADLINE, stream.read_exact(&mut buf))
            .await
            .expect("an answer in time")
            .unwrap();
        assert_eq!(
            &buf[9..12],
            status.as_bytes(),
            "a head of {} bytes",
            raw.len()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unread_body_is_drained_when_small_and_closes_the_connection_when_large() {
    let backend = Backend::start("b").await;
    let proxy = Proxy::start(&config(&format!(
        "routes:\n  - name: r\n    match: {{ path_prefix: \"/\" }}\n    pool: p\n    max_body: 1KiB\npools:\n  - name: p\n    upstreams:\n      - {{ addr: \"{}\" }}\n",
        backend.addr
    )))
    .await;
    // 2 KiB over a 1 KiB limit: answered 413 without reading it, then read and discarded,
    // and the connection carries the next request.
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    let mut raw = b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 2048\r\n\r\n".to_vec();
    raw.extend_from_slice(&[b'x'; 2048]);
    raw.extend_from_slice(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n");
    stream.write_all(&raw).await.unwrap();
    let (head, _) = read_response(&mut stream).await;
    assert!(head.starts_with("HTTP/1.1 413"), "{head}");
    let (head, body) = read_response(&mut stream).await;
    assert!(head.starts_with("HTTP/1.1 200") && body == b"b", "{head}");

    // 10 GB declared: not worth reading; the answer arrives (no reset) and the connection
    // closes while the client is still sending.
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    stream
        .write_all(b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 10000000000\r\n\r\n")
        .await
        .unwrap();
    stream.write_all(&[b'x'; 64 * 1024]).await.unwrap();
    let (text, _) = read_until_closed(&mut stream).await;
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");
    assert_eq!(backend.requests(), 1, "only the GET reached the upstream");
}
