//! `Cookie` fields across protocol versions: HTTP/2 clients send each cookie as its own field
//! (RFC 9113 section 8.2.3), which must be joined with "; " before an HTTP/1.1 upstream sees
//! them, since HTTP/1.1 allows one `Cookie` line (RFC 6265 section 5.4). HTTP/1.1 requests
//! are forwarded as they came.

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::support::{config, read_until_closed, Backend, Proxy};

fn one_pool(backend: &Backend) -> String {
    config(&format!(
        "routes:\n  - name: all\n    match: {{ path_prefix: \"/\" }}\n    pool: p\npools:\n  - name: p\n    upstreams:\n      - {{ addr: \"{}\" }}\n",
        backend.addr
    ))
}

/// The values of every `cookie` line in a `/headers` answer, in order.
fn cookie_lines(text: &str) -> Vec<&str> {
    text.lines()
        .filter_map(|l| l.strip_prefix("cookie: "))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_cookie_fields_reach_an_http1_upstream_as_one_line_in_order() {
    let backend = Backend::start("b").await;
    let proxy = Proxy::start(&one_pool(&backend)).await;
    let stream = TcpStream::connect(proxy.addr).await.unwrap();
    let mut sender = crate::support::h2_client(stream).await;
    let req = Request::get("http://h2.example/headers")
        .header("cookie", "a=1")
        .header("cookie", "b=2")
        .header("cookie", "c=3")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = sender.send_request(req).await.unwrap();
    assert_eq!(response.status(), 200);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let text = String::from_utf8_lossy(&body);
    assert!(text.starts_with("GET /headers HTTP/1.1"), "{text}");
    assert_eq!(cookie_lines(&text), ["a=1; b=2; c=3"], "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_cookie_lines_are_forwarded_as_sent() {
    let backend = Backend::start("b").await;
    let proxy = Proxy::start(&one_pool(&backend)).await;
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    stream
        .write_all(b"GET /headers HTTP/1.1\r\nhost: a\r\ncookie: a=1\r\ncookie: b=2\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let (text, _) = read_until_closed(&mut stream).await;
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert_eq!(cookie_lines(&text), ["a=1", "b=2"], "{text}");
}
