//! The proxy's own answers (SPEC section 4), retries (section 5) and hostile input.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::{self, config, Backend, Client, Proxy};

fn pool_of(addrs: &[String], route_extra: &str, pool_extra: &str) -> String {
    let ups: String = addrs
        .iter()
        .map(|a| format!("      - {{ addr: \"{a}\" }}\n"))
        .collect();
    config(&format!(
        "routes:\n  - name: r\n    match: {{ path_prefix: \"/\" }}\n    pool: p\n{route_extra}pools:\n  - name: p\n{pool_extra}    upstreams:\n{ups}"
    ))
}

/// An address on which nothing listens: a socket bound and never listening, held until the
/// process ends. (Released, its port could go to a listener of another test running at the
/// same time, and the "refused" upstream would answer.)
async fn refused_addr() -> String {
    static HELD: std::sync::Mutex<Vec<socket2::Socket>> = std::sync::Mutex::new(Vec::new());
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    let any: std::net::SocketAddr = "127.0.0.1:0".parse().unwrap();
    socket.bind(&any.into()).unwrap();
    let addr = socket.local_addr().unwrap().as_socket().unwrap();
    HELD.lock().unwrap().push(socket);
    addr.to_string()
}

/// The statuses of `n` POSTs of one byte to `path`, one after another on `client`.
async fn post_statuses(client: &mut Client, path: &str, n: usize) -> Vec<u16> {
    let mut statuses = Vec::with_capacity(n);
    for _ in 0..n {
        let req = Request::post(path)
            .header("host", "a")
            .body(Full::new(Bytes::from_static(b"x")))
            .unwrap();
        statuses.push(client.send(req).await.status.as_u16());
    }
    statuses
}

fn assert_plain(reply: &support::Reply, status: u16, says: &str) {
    assert_eq!(reply.status, status, "{}", reply.text());
    assert!(reply.header("content-type").starts_with("text/plain"));
    assert!(
        reply.text().contains(says),
        "body {:?} should say {says:?}",
        reply.text()
    );
    assert_eq!(reply.header("x-request-id").len(), 32);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_matching_route_answers_404() {
    let backend = Backend::start("b").await;
    let yaml = config(&format!(
        "routes:\n  - name: r\n    match: {{ host: only.example, path_prefix: \"/\" }}\n    pool: p\npools:\n  - name: p\n    upstreams:\n      - {{ addr: \"{}\" }}\n",
        backend.addr
    ));
    let proxy = Proxy::start(&yaml).await;
    assert_plain(&support::get(proxy.addr, "/").await, 404, "no route");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_upstream_answers_502() {
    let proxy = Proxy::start(&pool_of(&[refused_addr().await], "", "")).await;
    assert_plain(
        &support::get(proxy.addr, "/").await,
        502,
        "could not connect",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_without_upstreams_answers_503() {
    let yaml = config(
        "routes:\n  - name: r\n    match: { path_prefix: \"/\" }\n    pool: empty\npools:\n  - name: empty\n",
    );
    let proxy = Proxy::start(&yaml).await;
    assert_plain(
        &support::get(proxy.addr, "/").await,
        503,
        "no healthy upstream",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_upstream_answers_504_after_the_route_timeout() {
    let backend = Backend::start("b").await;
    let proxy = Proxy::start(&pool_of(
        &[backend.addr.to_string()],
        "    timeout: 200ms\n",
        "",
    ))
    .await;
    let started = tokio::time::Instant::now();
    assert_plain(
        &support::get(proxy.addr, "/slow/3000").await,
        504,
        "in time",
    );
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_over_max_body_answers_413() {
    let backend = Backend::start("b").await;
    let proxy = Proxy::start(&pool_of(
        &[backend.addr.to_string()],
        "    max_body: 1KiB\n",
        "",
    ))
    .await;
    let mut client = Client::connect(proxy.addr).await;
    let req = Request::post("/upload")
        .header("host", "a")
        .body(Full::new(Bytes::from(vec![b'x'; 4096])))
        .unwrap();
    assert_plain(&client.send(req).await, 413, "larger");
    assert_eq!(
        backend.requests(),
        0,
        "a declared oversize body never reaches the upstream"
    );
    let mut client = Client::connect(proxy.addr).await;
    let req = Request::post("/upload")
        .header("host", "a")
        .body(Full::new(Bytes::from(vec![b'x'; 1024])))
        .unwrap();
    assert_eq!(
        client.send(req).await.text(),
        format!("1024 {}", sha_hex(&[b'x'; 1024]))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_body_growing_past_max_body_answers_413() {
    let backend = Backend::start("b").await;
    let proxy = Proxy::start(&pool_of(
        &[backend.addr.to_string()],
        "    max_body: 1KiB\n",
        "",
    ))
    .await;
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    let chunk = "x".repeat(800);
    let raw = format!(
        "POST /upload HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n320\r\n{chunk}\r\n320\r\n{chunk}\r\n0\r\n\r\n"
    );
    stream.write_all(raw.as_bytes()).await.unwrap();
    let text = read_some(&mut stream).await;
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");
}

fn sha_hex(data: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    format!("{:x}", Sha256::digest(data))
}

async fn read_some(stream: &mut TcpStream) -> String {
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(support::DEADLINE, stream.read(&mut buf))
        .await
        .expect("an answer within the deadline")
        .unwrap_or(0);
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_connect_is_retried_on_another_upstream() {
    // Our HTTP/1.1 client never took the request; hyper's (h2 pools) hands it back.
    for protocol in ["", "    protocol: h2\n"] {
        let live = Backend::start("live").await;
        let addrs = [refused_addr().await, live.addr.to_string()];
        let proxy = Proxy::start(&pool_of(&addrs, "    retries: 1\n", protocol)).await;
        let mut client = Client::connect(proxy.addr).await;
        for _ in 0..10 {
            let req = Request::post("/upload")
                .header("host", "a")
                .body(Full::new(Bytes::from_static(b"hello")))
                .unwrap();
            let reply = client.send(req).await;
            assert_eq!(
                reply.status, 200,
                "{protocol}: even a request with a body is retried after a failed connect"
            );
            assert_eq!(
                reply.text(),
                format!("5 {}", sha_hex(b"hello")),
                "{protocol}"
            );
        }
        assert_eq!(live.requests(), 10, "{protocol}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_under_round_robin_leaves_the_turn_where_it_was() {
    // Audit B-F5: each retry asked the balancer again, which moved its counter a step, so
    // with one of two upstreams down every request tried that one first.
    for strategy in ["round_robin", "weighted"] {
        let live = Backend::start("live").await;
        let addrs = [refused_addr().await, live.addr.to_string()];
        let pool_extra = format!("    strategy: {strategy}\n");
        let proxy = Proxy::start(&pool_of(&addrs, "    retries: 1\n", &pool_extra)).await;
        let mut client = Client::connect(proxy.addr).await;
        for _ in 0..10 {
            assert_eq!(client.get("a", "/").await.status, 200, "{strategy}");
        }
        let snapshot = proxy.server.shared().snapshot();
        let ups = snapshot.pool("p").unwrap().upstreams();
        let attempts: Vec<u64> = ups.iter().map(|u| u.metrics().requests()).collect();
        assert_eq!(
            attempts,
            [5, 10],
            "{strategy}: attempts on the dead and the live one"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_retries_a_failed_connect_answers_502() {
    let live = Backend::start("live").await;
    let addrs = [refused_addr().await, live.addr.to_string()];
    let proxy = Proxy::start(&pool_of(&addrs, "    retries: 0\n", "")).await;
    let mut client = Client::connect(proxy.addr).await;
    let statuses: Vec<u16> = {
        let mut v = Vec::new();
        for _ in 0..4 {
            v.push(client.get("a", "/").await.status.as_u16());
        }
        v
    };
    assert_eq!(
        statuses.iter().filter(|s| **s == 502).count(),
        2,
        "{statuses:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotent_request_answered_503_is_retried_elsewhere_but_a_post_is_not() {
    // Our HTTP/1.1 client still holds the request after an answer; hyper's (h2 pools) took
    // it, so there the retry goes out from a copy of the head.
    for protocol in ["", "    protocol: h2\n"] {
        let failing = Backend::failing("failing", 503).await;
        let live = Backend::start("live").await;
        let addrs = [failing.addr.to_string(), live.addr.to_string()];
        let proxy = Proxy::start(&pool_of(&addrs, "    retries: 1\n", protocol)).await;
        let mut client = Client::connect(proxy.addr).await;
        for _ in 0..6 {
            let reply = client.get("a", "/headers").await;
            let text = reply.text();
            assert_eq!(reply.status, 200, "{protocol}{text}");
            assert_eq!(reply.header("x-backend"), "live", "{protocol}");
            assert!(
                text.starts_with("GET ") && text.contains("x-request-id: "),
                "the same head again: {protocol}{text}"
            );
        }
        // A retry's pick moves the round robin on too: at least every other first attempt.
        assert!(failing.requests() >= 3, "{protocol}{}", failing.requests());
        assert_eq!(live.requests(), 6, "{protocol}");
        let posts = post_statuses(&mut client, "/", 4).await;
        let passed_on = posts.iter().filter(|s| **s == 503).count();
        assert_eq!(passed_on, 2, "{protocol}{posts:?}");
    }
}

/// An upstream that answers the first `answered` requests on each connection (keeping it
/// open), then reads the next request's head and closes without answering; returns its
/// address and the request lines it read, in order.
async fn unanswering_upstream(answered: usize) -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let lines = Arc::new(Mutex::new(Vec::new()));
    let seen = lines.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 1024];
                for request in 0..=answered {
                    let end = loop {
                        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break end + 4;
                        }
                        match stream.read(&mut chunk).await {
                            Ok(n @ 1..) => buf.extend_from_slice(&chunk[..n]),
                            _ => return,
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                    buf.drain(..end);
                    seen.lock()
                        .unwrap()
                        .push(head.lines().next().unwrap_or("").to_owned());
                    if request == answered {
                        return;
                    }
                    let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                    if stream.write_all(answer).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, lines)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pooled_connection_closed_unanswered_resends_a_get_but_never_a_post() {
    let (addr, lines) = unanswering_upstream(1).await;
    let proxy = Proxy::start(&pool_of(&[addr], "", "")).await;
    let mut client = Client::connect(proxy.addr).await;
    // The first request opens the upstream connection, which then goes back to the pool.
    assert_eq!(client.get("a", "/first").await.status, 200);
    // A bodyless POST on it is read and left unanswered: it may have been acted on, so it
    // must not go out again (RFC 9112 section 9.3.1).
    let post = Request::post("/order")
        .header("host", "a")
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(client.send(post).await.status, 502);
    assert_eq!(
        *lines.lock().unwrap(),
        ["GET /first HTTP/1.1", "POST /order HTTP/1.1"],
        "the POST went to the upstream once"
    );
    // A GET in the same place goes again on a fresh connection, and is answered there.
    lines.lock().unwrap().clear();
    assert_eq!(client.get("a", "/first").await.status, 200);
    assert_eq!(client.get("a", "/again").await.status, 200);
    assert_eq!(
        *lines.lock().unwrap(),
        [
            "GET /first HTTP/1.1",
            "GET /again HTTP/1.1",
            "GET /again HTTP/1.1"
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_reset_a_bodyless_get_is_sent_again_elsewhere_but_a_post_is_not() {
    let (resetting, heads) = unanswering_upstream(0).await;
    let live = Backend::start("live").await;
    let addrs = [resetting, live.addr.to_string()];
    let proxy = Proxy::start(&pool_of(&addrs, "    retries: 1\n", "")).await;
    let mut client = Client::connect(proxy.addr).await;
    for _ in 0..4 {
        let reply = client.get("a", "/headers").await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        let text = reply.text();
        assert!(text.starts_with("GET /headers"), "{text}");
        assert!(
            text.contains("x-request-id: "),
            "the same head again: {text}"
        );
    }
    // A retry's pick moves the round robin on too: at least every other first attempt.
    assert!(heads.lock().unwrap().len() >= 2, "{heads:?}");
    assert_eq!(live.requests(), 4);
    let posts = post_statuses(&mut client, "/upload", 4).await;
    // Not retried, the posts alternate: half are reset.
    assert_eq!(posts.iter().filter(|s| **s == 502).count(), 2, "{posts:?}");
    assert_eq!(live.requests(), 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smuggling_shapes_get_400_and_other_connections_are_unaffected() {
    let backend = Backend::start("b").await;
    let proxy = Proxy::start(&pool_of(&[backend.addr.to_string()], "", "")).await;
    let mut healthy = Client::connect(proxy.addr).await;
    assert_eq!(healthy.get("a", "/").await.status, 200);
    let bad = [
        "GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello",
        "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
        "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\nhello\n0\n\n",
        "GET / HTTP/1.1\r\nHost: a\rX: y\r\n\r\n",
        "GET / HTTP/1.1\r\nX: no-host\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a\r\nContent-Length: abc\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a\r\nX-Folded: one\r\n two\r\n\r\n",
        "GET /\u{1}bad HTTP/1.1\r\nHost: a\r\n\r\n",
        "NOT HTTP AT ALL\r\n\r\n",
    ];
    for raw in bad {
        let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
        stream.write_all(raw.as_bytes()).await.unwrap();
        let (text, _) = support::read_until_closed(&mut stream).await;
        assert!(
            text.is_empty() || text.starts_with("HTTP/1.1 400"),
            "{raw:?} got {text:?}"
        );
        assert!(
            text.matches("HTTP/1.1 ").count() <= 1,
            "{raw:?}: one answer at most, then closed"
        );
        assert_eq!(healthy.get("a", "/").await.status, 200, "after {raw:?}");
    }
    assert_eq!(backend.requests(), 1 + bad.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_past_the_limit_answer_431() {
    let backend = Backend::start("b").await;
    let proxy = Proxy::start(&pool_of(&[backend.addr.to_string()], "", "")).await;
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    let raw = format!(
        "GET / HTTP/1.1\r\nHost: a\r\nX-Big: {}\r\n\r\n",
        "y".repeat(70 * 1024)
    );
    stream.write_all(raw.as_bytes()).await.unwrap_or(());
    let (text, _) = support::read_until_closed(&mut stream).await;
    assert!(text.starts_with("HTTP/1.1 431"), "{text:?}");
    // hyper's own bodiless 431 is completed with the proxy's text answer.
    assert!(
        text.contains("content-type: text/plain")
            && text.ends_with("\r\n\r\n431 request header fields too large\n"),
        "{text:?}"
    );
    assert_eq!(backend.requests(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_headers_past_the_limit_answer_431_with_the_proxy_body() {
    use http_body_util::BodyExt as _;
    let backend = Backend::start("b").await;
    let proxy = Proxy::start(&pool_of(&[backend.addr.to_string()], "", "")).await;
    let stream = TcpStream::connect(proxy.addr).await.unwrap();
    let mut sender = support::h2_client(stream).await;
    let request = |fill: usize| {
        Request::get("http://h2.example/")
            .header("x-big", "y".repeat(fill))
            .body(Full::new(Bytes::new()))
            .unwrap()
    };
    let response = sender.send_request(request(70 * 1024)).await.unwrap();
    assert_eq!(response.status(), 431);
    assert_eq!(
        response.headers()["content-type"],
        "text/plain; charset=utf-8"
    );
    assert!(response.headers().contains_key("x-request-id"));
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, "431 request header fields too large\n");
    assert_eq!(backend.requests(), 0);
    // One stream refused; the connection serves the next request.
    let response = sender.send_request(request(1024)).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(backend.requests(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heads_hyper_cannot_parse_answer_400_with_a_text_body() {
    let backend = Backend::start("b").await;
    let proxy = Proxy::start(&pool_of(&[backend.addr.to_string()], "", "")).await;
    for raw in [
        "GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a\r\nContent-Length: abc\r\n\r\na",
    ] {
        let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
        stream.write_all(raw.as_bytes()).await.unwrap();
        let (text, _) = support::read_until_closed(&mut stream).await;
        assert!(text.starts_with("HTTP/1.1 400"), "{raw:?}: {text:?}");
        assert!(
            text.ends_with("\r\n\r\n400 bad request: the request head is malformed\n"),
            "{raw:?}: {text:?}"
        );
    }
    // A normal request on a new connection is unaffected, and its 404 keeps its own body.
    let reply = support::get(proxy.addr, "/").await;
    assert_eq!(reply.status, 200);
    assert_eq!(backend.requests(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connect_that_hangs_answers_502_after_connect_timeout() {
    // A listener that never accepts, with its backlog full: the kernel drops further SYNs,
    // so connecting hangs as it would to an unreachable host, without leaving loopback.
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    let bind: std::net::SocketAddr = "127.0.0.1:0".parse().unwrap();
    socket.bind(&bind.into()).unwrap();
    socket.listen(0).unwrap();
    let addr = socket.local_addr().unwrap().as_socket().unwrap();
    let mut fill = Vec::new();
    for _ in 0..4 {
        if let Ok(s) = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(100)) {
            fill.push(s);
        }
    }
    let yaml = pool_of(
        &[addr.to_string()],
        "    retries: 0\n    timeout: 10s\n",
        "    connect_timeout: 300ms\n",
    );
    let proxy = Proxy::start(&yaml).await;
    let started = tokio::time::Instant::now();
    assert_plain(
        &support::get(proxy.addr, "/").await,
        502,
        "could not connect",
    );
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(250),
        "answered before connect_timeout: {took:?}"
    );
    assert!(
        took < Duration::from_secs(3),
        "connect_timeout not applied: {took:?}"
    );
    drop(fill);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_early_answer_to_a_stalled_upload_does_not_block_the_next_request() {
    let backend = Backend::start("b").await;
    let proxy = Proxy::start(&pool_of(
        &[backend.addr.to_string()],
        "    timeout: 3s\n",
        "",
    ))
    .await;
    // The upstream answers 401 without reading the body, and the client stops sending it:
    // that upstream connection cannot carry another request until the body is done.
    let mut upload = TcpStream::connect(proxy.addr).await.unwrap();
    upload
        .write_all(
            b"POST /early/401 HTTP/1.1\r\nHost: a\r\nContent-Length: 1000000\r\n\r\n0123456789",
        )
        .await
        .unwrap();
    let head = read_some(&mut upload).await;
    assert!(head.starts_with("HTTP/1.1 401"), "{head:?}");
    let started = tokio::time::Instant::now();
    let reply = support::get(proxy.addr, "/").await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "waited {:?}",
        started.elapsed()
    );
    drop(upload);
}
