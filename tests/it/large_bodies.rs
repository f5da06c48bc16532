//! Large response bodies of known length (`content-length`), read by our HTTP/1.1 upstream
//! client in reads sized by the connection's last answer: every byte arrives, on HTTP/1.1
//! and HTTP/2 clients alike; the upstream connection is reused after a body that ended; and
//! a failure on either side mid-body cuts only its own exchange.

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::support::{self, config, read_until_closed, Backend, Client, Proxy, DEADLINE};

fn proxy_config(backend: &Backend) -> String {
    config(&format!(
        "routes:\n  - name: r\n    match: {{ path_prefix: \"/\" }}\n    pool: p\npools:\n  - name: p\n    upstreams:\n      - {{ addr: \"{}\" }}\n",
        backend.addr
    ))
}

fn expected(size: u64) -> Vec<u8> {
    (0..size).map(support::pattern).collect()
}

/// Sizes on either side of the client's first read (4 KiB with the head), its largest read
/// (64 KiB) and socket buffers (several MiB).
const SIZES: [u64; 8] = [
    1,
    4 * 1024 - 1,
    4 * 1024,
    20 * 1024 + 3,
    64 * 1024,
    64 * 1024 + 1,
    1024 * 1024 + 7,
    8 * 1024 * 1024,
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_bodies_arrive_intact_and_the_upstream_connection_is_reused() {
    let backend = Backend::start("b").await;
    let proxy = Proxy::start(&proxy_config(&backend)).await;
    let mut client = Client::connect(proxy.addr).await;
    // Twice through: the second round starts from a connection whose last answer was large.
    for size in SIZES.iter().chain(SIZES.iter().rev()) {
        let reply = client.get("a", &format!("/sized/{size}")).await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.header("content-length"), size.to_string());
        assert_eq!(reply.header("x-backend"), "b");
        assert!(
            reply.body[..] == expected(*size)[..],
            "body of {size} bytes differs"
        );
        // A small answer in between, on the same connections.
        assert_eq!(client.get("a", "/small").await.text(), "b");
    }
    assert_eq!(
        backend.connections(),
        1,
        "every body ended cleanly, so one upstream connection served them all"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_clients_get_the_same_bodies_after_large_http1_answers() {
    let backend = Backend::start("b").await;
    let proxy = Proxy::start(&proxy_config(&backend)).await;
    let stream = TcpStream::connect(proxy.addr).await.unwrap();
    let mut sender = support::h2_client(stream).await;
    // An HTTP/1.1 client first each time, so the upstream connection's last answer was large.
    let mut client = Client::connect(proxy.addr).await;
    for size in [64 * 1024, 1024 * 1024 + 7] {
        let reply = client.get("a", &format!("/sized/{size}")).await;
        assert!(reply.body[..] == expected(size)[..]);
        let req = Request::get(format!("http://a/sized/{size}"))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let response = sender.send_request(req).await.unwrap();
        assert_eq!(response.status(), 200);
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert!(body[..] == expected(size)[..], "h2 body of {size} differs");
    }
}

/// A backend that announces `announced` bytes, sends `sent` of them and closes, for every
/// connection it accepts.
async fn truncating_backend(announced: u64, sent: u64) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let mut answer =
                    format!("HTTP/1.1 200 OK\r\ncontent-length: {announced}\r\n\r\n").into_bytes();
                answer.extend((0..sent).map(support::pattern));
                let _ = stream.write_all(&answer).await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_closing_mid_body_cuts_that_client_only() {
    let backend = Backend::start("b").await;
    let truncating = truncating_backend(4 * 1024 * 1024, 300 * 1024).await;
    let proxy = Proxy::start(&config(&format!(
        "routes:\n  - name: cut\n    match: {{ path_prefix: \"/cut\" }}\n    pool: cut\n  - name: r\n    match: {{ path_prefix: \"/\" }}\n    pool: p\npools:\n  - name: cut\n    upstreams:\n      - {{ addr: \"{truncating}\" }}\n  - name: p\n    upstreams:\n      - {{ addr: \"{}\" }}\n",
        backend.addr
    )))
    .await;
    let mut bystander = Client::connect(proxy.addr).await;
    assert_eq!(bystander.get("a", "/").await.text(), "b");

    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    stream
        .write_all(b"GET /cut HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let (text, _) = read_until_closed(&mut stream).await;
    assert!(
        text.starts_with("HTTP/1.1 200 OK\r\n") && text.contains("content-length: 4194304\r\n"),
        "{}",
        &text[..text.len().min(200)]
    );
    let body = text.len() - text.find("\r\n\r\n").unwrap() - 4;
    assert!(
        body < 4 * 1024 * 1024,
        "the connection is cut short, so the client sees the body was incomplete ({body} bytes)"
    );

    // The other client's connection, and the proxy, carry on.
    let reply = bystander.get("a", "/sized/100000").await;
    assert!(reply.body[..] == expected(100_000)[..]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_leaving_mid_body_closes_that_upstream_connection_only() {
    let backend = Backend::start("b").await;
    let proxy = Proxy::start(&proxy_config(&backend)).await;
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    stream
        .write_all(b"GET /sized/33554432 HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let mut got = 0;
    let mut buf = vec![0u8; 64 * 1024];
    while got < 256 * 1024 {
        let n = tokio::time::timeout(DEADLINE, stream.read(&mut buf))
            .await
            .expect("body in time")
            .unwrap();
        assert!(n > 0, "closed early");
        got += n;
    }
    drop(stream);

    // The half-read body's upstream connection cannot carry another request: the next one
    // opens a new connection, and gets its whole answer.
    let mut client = Client::connect(proxy.addr).await;
    let reply = client.get("a", "/sized/200000").await;
    assert!(reply.body[..] == expected(200_000)[..]);
    assert_eq!(backend.connections(), 2);
}

/// An HTTP/2 client's upload, several times its stream's window (256 KiB), reaches an
/// `http1` pool (whose client reads the body in the request's task) and an `h2` pool (where
/// hyper's client reads it from a task of its own, so the window comes back through a wake
/// from another task) intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_uploads_larger_than_the_window_reach_both_pool_protocols() {
    use sha2::{Digest, Sha256};
    let backend = Backend::start("b").await;
    let proxy = Proxy::start(&config(&format!(
        "routes:\n  - name: one\n    match: {{ path_prefix: \"/one/\" }}\n    pool: one\n    strip_prefix: true\n  - name: two\n    match: {{ path_prefix: \"/two/\" }}\n    pool: two\n    strip_prefix: true\npools:\n  - name: one\n    upstreams:\n      - {{ addr: \"{0}\" }}\n  - name: two\n    protocol: h2\n    upstreams:\n      - {{ addr: \"{0}\" }}\n",
        backend.addr
    )))
    .await;
    let stream = TcpStream::connect(proxy.addr).await.unwrap();
    let mut sender = support::h2_client(stream).await;
    let size = 3 * 1024 * 1024 + 5;
    let body = Bytes::from(expected(size));
    let digest = format!("{size} {:x}", Sha256::digest(&body));
    for pool in ["one", "two"] {
        let req = Request::post(format!("http://a/{pool}/upload"))
            .body(Full::new(body.clone()))
            .unwrap();
        let response = tokio::time::timeout(DEADLINE, async {
            let response = sender.send_request(req).await.unwrap();
            let status = response.status();
            (
                status,
                response.into_body().collect().await.unwrap().to_bytes(),
            )
        })
        .await
        .unwrap_or_else(|_| panic!("the upload to pool {pool} stalled"));
        assert_eq!(response.0, 200, "{pool}");
        assert_eq!(String::from_utf8_lossy(&response.1), digest, "{pool}");
    }
}
