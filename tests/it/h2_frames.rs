//! HTTP/2 at the frame level against our server (RFC 9113): what a client that breaks the
//! protocol gets, and the interim answers and flow control a well-behaved client relies on.
//! The client here writes frames by hand, its header blocks as HPACK literals.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::limits::proxy_with_limits;
use crate::support::{Backend, DEADLINE};

const DATA: u8 = 0;
const HEADERS: u8 = 1;
const PRIORITY: u8 = 2;
const RST_STREAM: u8 = 3;
const SETTINGS: u8 = 4;
const PING: u8 = 6;
const GOAWAY: u8 = 7;
const WINDOW_UPDATE: u8 = 8;
const CONTINUATION: u8 = 9;
const END_STREAM: u8 = 1;
const END_HEADERS: u8 = 4;
const PRIORITY_FLAG: u8 = 0x20;

const PROTOCOL_ERROR: u32 = 1;
const STREAM_CLOSED: u32 = 5;
const ENHANCE_YOUR_CALM: u32 = 0xb;

#[derive(Debug)]
struct Frame {
    kind: u8,
    flags: u8,
    stream: u32,
    payload: Vec<u8>,
}

impl Frame {
    /// The error code of RST_STREAM or GOAWAY.
    fn code(&self) -> u32 {
        let at = if self.kind == GOAWAY { 4 } else { 0 };
        u32::from_be_bytes(self.payload[at..at + 4].try_into().unwrap())
    }
}

struct Raw {
    io: TcpStream,
}

impl Raw {
    /// Connects with the preface and `settings`, and acknowledges the server's SETTINGS.
    async fn connect(proxy: std::net::SocketAddr, settings: &[(u16, u32)]) -> Raw {
        let mut raw = Raw {
            io: TcpStream::connect(proxy).await.unwrap(),
        };
        raw.io
            .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            .await
            .unwrap();
        let payload: Vec<u8> = settings
            .iter()
            .flat_map(|(id, v)| id.to_be_bytes().into_iter().chain(v.to_be_bytes()))
            .collect();
        raw.send(SETTINGS, 0, 0, &payload).await;
        let settings = raw.until(|f| f.kind == SETTINGS && f.flags == 0).await;
        assert_eq!(settings.stream, 0);
        raw.send(SETTINGS, 1, 0, &[]).await;
        raw
    }

    async fn send(&mut self, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
        let len = payload.len() as u32;
        let mut frame = len.to_be_bytes()[1..].to_vec();
        frame.extend_from_slice(&[kind, flags]);
        frame.extend_from_slice(&stream.to_be_bytes());
        frame.extend_from_slice(payload);
        self.io.write_all(&frame).await.unwrap();
    }

    /// The next frame; `None` once the server closed the connection.
    async fn next(&mut self) -> Option<Frame> {
        let mut head = [0u8; 9];
        let read = tokio::time::timeout(DEADLINE, self.io.read_exact(&mut head))
            .await
            .expect("a frame within the deadline");
        read.ok()?;
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let mut payload = vec![0; len];
        self.io.read_exact(&mut payload).await.ok()?;
        Some(Frame {
            kind: head[3],
            flags: head[4],
            stream: u32::from_be_bytes(head[5..9].try_into().unwrap()) & 0x7fff_ffff,
            payload,
        })
    }

    /// Reads until a frame `is` accepts; fails on the connection's end.
    async fn until(&mut self, mut is: impl FnMut(&Frame) -> bool) -> Frame {
        loop {
            let frame = self.next().await.expect("the connection is still open");
            if is(&frame) {
                return frame;
            }
        }
    }

    /// A request's HEADERS on `stream`.
    async fn request(&mut self, stream: u32, flags: u8, fields: &[(&str, &str)]) {
        self.send(HEADERS, flags | END_HEADERS, stream, &block(fields))
            .await;
    }

    /// The response on `stream`: its status and body (reading to END_STREAM).
    async fn response(&mut self, stream: u32) -> (String, Vec<u8>) {
        let head = self
            .until(|f| f.kind == HEADERS && f.stream == stream)
            .await;
        let status = status(&head.payload);
        let mut body = Vec::new();
        let mut ended = head.flags & END_STREAM != 0;
        while !ended {
            let frame = self.until(|f| f.stream == stream).await;
            assert_eq!(frame.kind, DATA, "{frame:?}");
            body.extend_from_slice(&frame.payload);
            ended = frame.flags & END_STREAM != 0;
        }
        (status, body)
    }
}

/// A header block of literals without indexing, new names, no Huffman coding.
fn block(fields: &[(&str, &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in fields {
        assert!(name.len() < 127 && value.len() < 127);
        out.push(0);
        out.push(name.len() as u8);
        out.extend_from_slice(name.as_bytes());
        out.push(value.len() as u8);
        out.extend_from_slice(value.as_bytes());
    }
    out
}

/// A GET of `path` as pseudo-header fields.
fn get(path: &str) -> Vec<(&str, &str)> {
    vec![
        (":method", "GET"),
        (":scheme", "http"),
        (":authority", "a"),
        (":path", path),
    ]
}

/// The `:status` of a response head from our server: it encodes 200, 204, 206, 304, 400,
/// 404 and 500 as static-table indexes, the others as a literal with name index 8.
fn status(block: &[u8]) -> String {
    match block[0] {
        0x88 => "200".into(),
        0x8c => "400".into(),
        0x8d => "404".into(),
        0x08 => String::from_utf8(block[2..2 + usize::from(block[1])].to_vec()).unwrap(),
        other => panic!("unexpected first field {other:#x}"),
    }
}

async fn setup() -> (Backend, crate::support::Proxy) {
    let backend = Backend::start("b").await;
    let proxy = proxy_with_limits(&backend, "header_timeout: 5s").await;
    (backend, proxy)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_on_a_lower_stream_than_the_last_is_a_connection_error() {
    let (_backend, proxy) = setup().await;
    let mut raw = Raw::connect(proxy.addr, &[]).await;
    raw.request(5, END_STREAM, &get("/")).await;
    assert_eq!(raw.response(5).await.0, "200");
    raw.request(3, END_STREAM, &get("/")).await;
    let goaway = raw.until(|f| f.kind == GOAWAY).await;
    assert_eq!(goaway.code(), PROTOCOL_ERROR);
    assert!(raw.next().await.is_none(), "closed after GOAWAY");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_on_a_finished_stream_is_a_stream_closed_error() {
    let (_backend, proxy) = setup().await;
    let mut raw = Raw::connect(proxy.addr, &[]).await;
    for stream in [1, 3] {
        raw.request(stream, END_STREAM, &get("/")).await;
        assert_eq!(raw.response(stream).await, ("200".into(), b"b".to_vec()));
    }
    raw.send(DATA, 0, 1, b"late").await;
    let reset = raw.until(|f| f.kind == RST_STREAM).await;
    assert_eq!((reset.stream, reset.code()), (1, STREAM_CLOSED));
    // HEADERS on a finished stream is a connection error.
    raw.request(3, END_STREAM, &[("x-trailer", "1")]).await;
    let goaway = raw.until(|f| f.kind == GOAWAY).await;
    assert_eq!(goaway.code(), STREAM_CLOSED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_depending_on_itself_is_reset_and_never_forwarded() {
    let (backend, proxy) = setup().await;
    let mut raw = Raw::connect(proxy.addr, &[]).await;
    let mut payload = vec![0, 0, 0, 1, 16];
    payload.extend_from_slice(&block(&get("/")));
    raw.send(
        HEADERS,
        END_STREAM | END_HEADERS | PRIORITY_FLAG,
        1,
        &payload,
    )
    .await;
    let reset = raw.until(|f| f.stream == 1).await;
    assert_eq!((reset.kind, reset.code()), (RST_STREAM, PROTOCOL_ERROR));
    // PRIORITY naming itself too.
    raw.send(PRIORITY, 0, 3, &[0, 0, 0, 3, 16]).await;
    let reset = raw.until(|f| f.stream == 3).await;
    assert_eq!((reset.kind, reset.code()), (RST_STREAM, PROTOCOL_ERROR));
    // The connection goes on, and nothing else was ever said on stream 1.
    raw.request(5, END_STREAM, &get("/")).await;
    let head = raw.until(|f| f.kind == HEADERS).await;
    assert_eq!((head.stream, status(&head.payload)), (5, "200".into()));
    assert_eq!(backend.requests(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_are_reset_and_the_connection_serves_the_next() {
    let (backend, proxy) = setup().await;
    let mut raw = Raw::connect(proxy.addr, &[]).await;
    let mut fields = get("/");
    fields.push(("X-Upper", "1"));
    raw.request(1, END_STREAM, &fields).await;
    let reset = raw.until(|f| f.stream == 1).await;
    assert_eq!((reset.kind, reset.code()), (RST_STREAM, PROTOCOL_ERROR));
    let mut fields = get("/");
    fields.push(("connection", "close"));
    raw.request(3, END_STREAM, &fields).await;
    let reset = raw.until(|f| f.stream == 3).await;
    assert_eq!((reset.kind, reset.code()), (RST_STREAM, PROTOCOL_ERROR));
    // Not an authority: the proxy's 400, as over HTTP/1.1.
    raw.request(
        5,
        END_STREAM,
        &[
            (":method", "GET"),
            (":scheme", "http"),
            (":authority", "a b"),
            (":path", "/"),
        ],
    )
    .await;
    assert_eq!(raw.response(5).await.0, "400");
    raw.request(7, END_STREAM, &get("/")).await;
    assert_eq!(raw.response(7).await, ("200".into(), b"b".to_vec()));
    assert_eq!(backend.requests(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_continuation_frames_ends_the_connection() {
    let (_backend, proxy) = setup().await;
    let mut raw = Raw::connect(proxy.addr, &[]).await;
    raw.send(HEADERS, END_STREAM, 1, &block(&get("/"))).await;
    for _ in 0..65 {
        raw.send(CONTINUATION, 0, 1, &[]).await;
    }
    let goaway = raw.until(|f| f.kind == GOAWAY).await;
    assert_eq!(goaway.code(), ENHANCE_YOUR_CALM);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_header_block_left_unfinished_is_cut_off_by_header_timeout() {
    let backend = Backend::start("b").await;
    let proxy = proxy_with_limits(&backend, "header_timeout: 300ms, idle_timeout: 30s").await;
    let mut raw = Raw::connect(proxy.addr, &[]).await;
    raw.send(HEADERS, END_STREAM, 1, &block(&get("/"))).await;
    let started = tokio::time::Instant::now();
    // Empty CONTINUATIONs keep bytes arriving, but the block never ends.
    let closed = loop {
        raw.send(CONTINUATION, 0, 1, &[]).await;
        tokio::select! {
            frame = raw.next() => match frame {
                None => break started.elapsed(),
                Some(f) if f.kind == GOAWAY => break started.elapsed(),
                Some(_) => {}
            },
            () = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
        assert!(started.elapsed() < DEADLINE, "still open");
    };
    assert!(
        closed >= Duration::from_millis(250),
        "closed after {closed:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expect_100_continue_gets_an_interim_head_before_the_body() {
    let (_backend, proxy) = setup().await;
    let mut raw = Raw::connect(proxy.addr, &[]).await;
    raw.request(
        1,
        0,
        &[
            (":method", "POST"),
            (":scheme", "http"),
            (":authority", "a"),
            (":path", "/upload"),
            ("expect", "100-continue"),
            ("content-length", "5"),
        ],
    )
    .await;
    let interim = raw.until(|f| f.stream == 1).await;
    assert_eq!(interim.kind, HEADERS);
    assert_eq!(interim.flags & END_STREAM, 0);
    assert_eq!(status(&interim.payload), "100");
    raw.send(DATA, END_STREAM, 1, b"hello").await;
    let (status, body) = raw.response(1).await;
    assert_eq!(status, "200");
    let body = String::from_utf8(body).unwrap();
    assert!(body.starts_with("5 2cf24dba"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_waits_for_the_clients_window() {
    let (_backend, proxy) = setup().await;
    // SETTINGS_INITIAL_WINDOW_SIZE 1000: the first 1,000 bytes, then only after more window.
    let mut raw = Raw::connect(proxy.addr, &[(4, 1000)]).await;
    raw.request(1, END_STREAM, &get("/sized/5000")).await;
    let head = raw.until(|f| f.kind == HEADERS && f.stream == 1).await;
    assert_eq!(status(&head.payload), "200");
    let mut got = 0;
    while got < 1000 {
        let frame = raw.until(|f| f.stream == 1).await;
        assert_eq!(frame.kind, DATA);
        got += frame.payload.len();
    }
    assert_eq!(got, 1000);
    // Nothing more before the PING's answer, which comes after anything written before it.
    raw.send(PING, 0, 0, b"12345678").await;
    let frame = raw.until(|f| f.kind == PING || f.stream == 1).await;
    assert_eq!(frame.kind, PING, "no DATA past the window: {frame:?}");
    raw.send(WINDOW_UPDATE, 0, 1, &4000u32.to_be_bytes()).await;
    let mut ended = false;
    while !ended {
        let frame = raw.until(|f| f.stream == 1).await;
        assert_eq!(frame.kind, DATA);
        got += frame.payload.len();
        ended = frame.flags & END_STREAM != 0;
    }
    assert_eq!(got, 5000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_opened_and_cancelled_in_a_loop_end_the_connection() {
    // CVE-2023-44487 ("rapid reset"): each stream costs the client a few bytes and the proxy
    // a request upstream. At 1,000 streams cancelled young, the connection is closed.
    let (backend, proxy) = setup().await;
    let mut raw = Raw::connect(proxy.addr, &[]).await;
    let headers = block(&get("/slow/2000"));
    let mut burst = Vec::new();
    for i in 0..1100u32 {
        let id = 2 * i + 1;
        for (kind, flags, payload) in [
            (HEADERS, END_STREAM | END_HEADERS, &headers[..]),
            (RST_STREAM, 0, &8u32.to_be_bytes()[..]),
        ] {
            burst.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
            burst.extend_from_slice(&[kind, flags]);
            burst.extend_from_slice(&id.to_be_bytes());
            burst.extend_from_slice(payload);
        }
    }
    // The server may close before it has read all of it.
    let _ = raw.io.write_all(&burst).await;
    let goaway = raw.until(|f| f.kind == GOAWAY).await;
    assert_eq!(goaway.code(), ENHANCE_YOUR_CALM);
    assert!(
        backend.requests() <= 1000,
        "{} requests",
        backend.requests()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_header_block_left_unfinished_beside_a_running_stream_is_cut_off_too() {
    let backend = Backend::start("b").await;
    let proxy = proxy_with_limits(&backend, "header_timeout: 300ms, idle_timeout: 30s").await;
    let mut raw = Raw::connect(proxy.addr, &[]).await;
    // Stream 1 runs for 3 s; the watchdog does not look at heads meanwhile.
    raw.request(1, END_STREAM, &get("/slow/3000")).await;
    raw.send(HEADERS, END_STREAM, 3, &block(&get("/"))).await;
    let started = tokio::time::Instant::now();
    let goaway = raw.until(|f| f.kind == GOAWAY).await;
    let took = started.elapsed();
    assert_eq!(goaway.code(), ENHANCE_YOUR_CALM);
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_millis(2500),
        "closed after {took:?}"
    );
}
