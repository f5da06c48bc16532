//! An HTTP/2 connection that goes idle is closed after its idle timeout, whether its client
//! stops answering or its last answer took longer than the timeout.

use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::limits::proxy_with_limits;
use crate::support::{read_until_closed, Backend, DEADLINE};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2_client_silent_after_its_preface_is_closed_after_idle_timeout() {
    let backend = Backend::start("b").await;
    let proxy = proxy_with_limits(&backend, "header_timeout: 300ms, idle_timeout: 200ms").await;
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    // The preface, then silence: no SETTINGS, no answer to the GOAWAY's PING.
    stream
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .unwrap();
    // `read_until_closed` fails the test if the connection is still open after DEADLINE.
    let (_, took) = read_until_closed(&mut stream).await;
    assert!(took < Duration::from_secs(3), "closed after {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2_connection_idle_after_a_slow_answer_is_closed_after_idle_timeout() {
    // The answer takes longer than the idle timeout (it must not be cut), and it ends in its
    // stream, not in the connection's own code: the idle countdown must start from its end.
    let backend = Backend::start("b").await;
    let proxy = proxy_with_limits(&backend, "header_timeout: 5s, idle_timeout: 300ms").await;
    let stream = TcpStream::connect(proxy.addr).await.unwrap();
    let mut sender = crate::support::h2_client(stream).await;
    let started = Instant::now();
    let req = Request::get("http://a/slow/700")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = sender.send_request(req).await.unwrap();
    assert_eq!(response.status(), 200);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"b");
    assert!(started.elapsed() >= Duration::from_millis(700));
    let answered = Instant::now();
    while !sender.is_closed() {
        assert!(
            answered.elapsed() < DEADLINE,
            "the idle connection is still open"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let idle = answered.elapsed();
    assert!(
        idle >= Duration::from_millis(250),
        "closed after {idle:?} idle"
    );
}
