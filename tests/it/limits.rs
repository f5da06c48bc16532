//! Connection limits (SPEC section 10): header timeout, idle timeout, max connections.

use std::time::Duration;

use tokio::time::Instant;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::{self, Backend, Client, Proxy};

pub(crate) async fn proxy_with_limits(backend: &Backend, limits: &str) -> Proxy {
    Proxy::start(&format!(
        "listeners:\n  - name: test\n    bind: \"127.0.0.1:0\"\n    limits: {{ {limits} }}\naccess_log: off\nroutes:\n  - name: r\n    pool: p\npools:\n  - name: p\n    upstreams:\n      - {{ addr: \"{}\" }}\n",
        backend.addr
    ))
    .await
}

/// The status codes of the responses in `text`, in order (bodies may run into the next head).
fn statuses(text: &str) -> Vec<&str> {
    text.match_indices("HTTP/1.1 ")
        .filter_map(|(i, _)| text.get(i + 9..i + 12))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_request_head_is_closed_after_header_timeout() {
    let backend = Backend::start("b").await;
    let proxy = proxy_with_limits(&backend, "header_timeout: 300ms, idle_timeout: 30s").await;
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: a\r\nX-Slow: ")
        .await
        .unwrap();
    let (_, took) = support::read_until_closed(&mut stream).await;
    assert!(
        took >= Duration::from_millis(250),
        "closed too early: {took:?}"
    );
    assert!(took < Duration::from_secs(3), "closed too late: {took:?}");
    assert_eq!(backend.requests(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_keep_alive_connection_outlives_a_short_header_timeout() {
    let backend = Backend::start("b").await;
    let proxy = proxy_with_limits(&backend, "header_timeout: 200ms, idle_timeout: 30s").await;
    let mut client = Client::connect(proxy.addr).await;
    assert_eq!(client.get("a", "/").await.status, 200);
    // Idle for several header timeouts: an idle connection is not a slow head.
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(client.get("a", "/").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_connection_is_closed_after_idle_timeout_but_a_slow_response_is_not() {
    let backend = Backend::start("b").await;
    let proxy = proxy_with_limits(&backend, "header_timeout: 5s, idle_timeout: 300ms").await;
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    // A response that takes longer than the idle timeout still arrives whole.
    stream
        .write_all(b"GET /slow/700 HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let (text, took) = support::read_until_closed(&mut stream).await;
    assert!(text.starts_with("HTTP/1.1 200"), "{text:?}");
    assert!(text.ends_with("b"), "{text:?}");
    assert!(
        took >= Duration::from_millis(900),
        "closed before idle_timeout after the response: {took:?}"
    );
    assert!(took < Duration::from_secs(4), "{took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_max_connections_new_clients_wait_until_a_connection_closes() {
    let backend = Backend::start("b").await;
    let proxy = proxy_with_limits(&backend, "max_connections: 2").await;
    let mut first = Client::connect(proxy.addr).await;
    let mut second = Client::connect(proxy.addr).await;
    assert_eq!(first.get("a", "/").await.status, 200);
    assert_eq!(second.get("a", "/").await.status, 200);
    let addr = proxy.addr;
    let third = tokio::spawn(async move { support::get(addr, "/").await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !third.is_finished(),
        "a third connection was served past max_connections"
    );
    drop(first);
    let reply = tokio::time::timeout(support::DEADLINE, third)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(reply.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_sends_nothing_is_closed_after_header_timeout() {
    let backend = Backend::start("b").await;
    let proxy = proxy_with_limits(&backend, "header_timeout: 300ms, idle_timeout: 30s").await;
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    let (_, took) = support::read_until_closed(&mut stream).await;
    assert!(
        took < Duration::from_secs(3),
        "a silent connection held its slot for {took:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_smuggling_shape_pipelined_behind_a_good_request_is_refused() {
    let backend = Backend::start("b").await;
    let proxy = proxy_with_limits(&backend, "header_timeout: 5s").await;
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    stream
        .write_all(
            b"GET / HTTP/1.1\r\nHost: a\r\n\r\n\
              POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
        )
        .await
        .unwrap();
    let (text, _) = support::read_until_closed(&mut stream).await;
    assert_eq!(statuses(&text), ["200", "400"], "{text}");
    assert_eq!(
        backend.requests(),
        1,
        "the ambiguous request never reached the upstream"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_smuggling_shape_sent_during_a_slow_response_is_refused() {
    let backend = Backend::start("b").await;
    let proxy = proxy_with_limits(&backend, "header_timeout: 5s").await;
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    stream
        .write_all(b"GET /slow/400 HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    support::eventually("the slow request to reach the backend", || {
        backend.requests() == 1
    })
    .await;
    stream
        .write_all(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
        .await
        .unwrap();
    let (text, _) = support::read_until_closed(&mut stream).await;
    assert_eq!(statuses(&text), ["200", "400"], "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_continuing_after_an_early_answer_is_not_a_stalled_head() {
    let backend = Backend::start("b").await;
    let proxy = proxy_with_limits(&backend, "header_timeout: 200ms, idle_timeout: 5s").await;
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    stream
        .write_all(b"POST /early/401 HTTP/1.1\r\nHost: a\r\nContent-Length: 600\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 1024];
    let n = tokio::time::timeout(support::DEADLINE, stream.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 401"));
    // The rest of the body trickles in over several header timeouts; it is body, not a head,
    // and even body text that looks like a header must not be scanned as one.
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        stream.write_all(&[b'x'; 100]).await.unwrap();
    }
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let n = tokio::time::timeout(support::DEADLINE, stream.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&buf[..n]);
    assert!(
        text.starts_with("HTTP/1.1 200"),
        "the connection was cut or lost sync: {text:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_does_not_wait_for_a_half_sent_head() {
    let backend = Backend::start("b").await;
    let proxy = proxy_with_limits(&backend, "header_timeout: 300ms, idle_timeout: 30s").await;
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    stream.write_all(b"GET / HTTP/1.1\r\nHo").await.unwrap();
    let started = Instant::now();
    // The harness drains for up to 5 s; the stalled head must end well before that.
    proxy.server.shutdown().await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "shutdown took {:?}",
        started.elapsed()
    );
}
