//! Pipelined HTTP/1.1 requests through the proxy: each answer is the upstream's own, even
//! when it looks like one of hyper's refusals of a head (`400`/`431` with no body).

use std::convert::Infallible;

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

use crate::support::{config, read_until_closed, Proxy};

/// An upstream that answers `/status/NNN` with that status and an empty body, `x-up: yes`,
/// and anything else with `200 ok`.
async fn empty_body_upstream() -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = service_fn(|req: http::Request<hyper::body::Incoming>| async move {
                    let status = req
                        .uri()
                        .path()
                        .strip_prefix("/status/")
                        .and_then(|s| s.parse().ok())
                        .and_then(|s| StatusCode::from_u16(s).ok());
                    let response = match status {
                        Some(status) => Response::builder()
                            .status(status)
                            .header("x-up", "yes")
                            .body(Full::new(Bytes::new())),
                        None => Response::builder().body(Full::new(Bytes::from_static(b"ok"))),
                    };
                    Ok::<_, Infallible>(response.unwrap())
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipelined_upstream_400_or_431_without_body_is_passed_on_unchanged() {
    let (upstream, task) = empty_body_upstream().await;
    let proxy = Proxy::start(&config(&format!(
        "routes:\n  - name: all\n    match: {{ path_prefix: \"/\" }}\n    pool: p\npools:\n  - name: p\n    upstreams:\n      - {{ addr: \"{upstream}\" }}\n"
    )))
    .await;
    for status in ["400", "431"] {
        let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
        let raw = format!(
            "GET /status/{status} HTTP/1.1\r\nhost: a\r\n\r\nGET /next HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n"
        );
        stream.write_all(raw.as_bytes()).await.unwrap();
        let (text, _) = read_until_closed(&mut stream).await;
        let (first, rest) = text
            .split_once("\r\n\r\n")
            .unwrap_or_else(|| panic!("{text:?}"));
        assert!(first.starts_with(&format!("HTTP/1.1 {status}")), "{text:?}");
        assert!(
            first.contains("x-up: yes"),
            "the upstream's answer: {text:?}"
        );
        assert!(!first.contains("connection: close"), "{text:?}");
        assert!(
            rest.starts_with("HTTP/1.1 200"),
            "then the next answer: {text:?}"
        );
        assert!(rest.ends_with("ok"), "{text:?}");
    }
    task.abort();
}
