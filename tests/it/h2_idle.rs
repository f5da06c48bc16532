//! An HTTP/2 client that stops answering cannot hold a connection past its idle timeout.

use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::support::{read_until_closed, Backend, Proxy};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2_client_silent_after_its_preface_is_closed_after_idle_timeout() {
    let backend = Backend::start("b").await;
    let yaml = format!(
        "listeners:\n  - name: test\n    bind: \"127.0.0.1:0\"\n    limits: {{ header_timeout: 300ms, idle_timeout: 200ms }}\naccess_log: off\nroutes:\n  - name: all\n    match: {{ path_prefix: \"/\" }}\n    pool: p\npools:\n  - name: p\n    upstreams:\n      - {{ addr: \"{}\" }}\n",
        backend.addr
    );
    let proxy = Proxy::start(&yaml).await;
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
