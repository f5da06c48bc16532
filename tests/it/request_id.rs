//! `X-Request-Id` on every answer, including the ones hyper's parser gives before a request
//! exists (a head past `max_header_bytes`, a head it cannot parse).

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::support::{config, read_until_closed, Backend, Proxy};

/// The `x-request-id` value of a raw HTTP/1 answer.
fn request_id(text: &str) -> Option<&str> {
    text.split("\r\n\r\n")
        .next()?
        .lines()
        .find_map(|l| l.strip_prefix("x-request-id: "))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_heads_carry_a_fresh_request_id() {
    let backend = Backend::start("b").await;
    let proxy = Proxy::start(&config(&format!(
        "routes:\n  - name: all\n    match: {{ path_prefix: \"/\" }}\n    pool: p\npools:\n  - name: p\n    upstreams:\n      - {{ addr: \"{}\" }}\n",
        backend.addr
    )))
    .await;
    let big = format!(
        "GET / HTTP/1.1\r\nHost: a\r\nX-Big: {}\r\n\r\n",
        "y".repeat(70 * 1024)
    );
    let mut ids = Vec::new();
    for (raw, status) in [
        (big.as_str(), "431"),
        ("GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n", "400"),
        ("GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n", "400"),
    ] {
        let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
        stream.write_all(raw.as_bytes()).await.unwrap_or(());
        let (text, _) = read_until_closed(&mut stream).await;
        assert!(text.starts_with(&format!("HTTP/1.1 {status}")), "{text:?}");
        let id = request_id(&text).unwrap_or_else(|| panic!("no x-request-id: {text:?}"));
        assert!(
            id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()),
            "{id:?}"
        );
        ids.push(id.to_owned());
    }
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 3, "ids are unique: {ids:?}");
    assert_eq!(backend.requests(), 0);
}
