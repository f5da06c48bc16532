//! WebSocket (HTTP/1.1 `Upgrade`) through the proxy: a tokio-tungstenite echo server behind
//! an http1 pool, a tokio-tungstenite client in front, frames both ways, clean close, the
//! idle timeout of tunnels, and what the upstream side keeps afterwards.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::support::{config, eventually, Proxy, DEADLINE};
use switchyard::upstream::Upstream;

/// A WebSocket server that echoes text and binary messages until the client closes.
struct EchoServer {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl EchoServer {
    async fn start() -> EchoServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                        return;
                    };
                    while let Some(Ok(msg)) = ws.next().await {
                        if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        EchoServer { addr, task }
    }
}

fn ws_config(upstream: SocketAddr, extra: &str) -> String {
    config(&format!(
        "routes:\n  - name: ws\n    pool: ws\n{extra}pools:\n  - name: ws\n    upstreams: [{{ addr: \"{upstream}\" }}]\n"
    ))
}

async fn ws_connect(proxy: SocketAddr) -> WebSocketStream<TcpStream> {
    let stream = TcpStream::connect(proxy).await.unwrap();
    let (ws, response) = tokio::time::timeout(
        DEADLINE,
        tokio_tungstenite::client_async("ws://ws.example/chat", stream),
    )
    .await
    .expect("handshake in time")
    .unwrap();
    assert_eq!(response.status(), 101);
    ws
}

async fn next(ws: &mut WebSocketStream<TcpStream>) -> Option<Message> {
    tokio::time::timeout(DEADLINE, ws.next())
        .await
        .expect("a frame or the end within the deadline")
        .and_then(Result::ok)
}

fn the_upstream(proxy: &Proxy) -> Arc<Upstream> {
    proxy.server.shared().snapshot().pools[0].upstreams()[0].clone()
}

#[tokio::test]
async fn websocket_text_and_binary_frames_echo_through_the_proxy_and_close_cleanly() {
    let server = EchoServer::start().await;
    let proxy = Proxy::start(&ws_config(server.addr, "")).await;
    let mut ws = ws_connect(proxy.addr).await;

    ws.send(Message::text("hello")).await.unwrap();
    assert_eq!(next(&mut ws).await, Some(Message::text("hello")));
    let binary = vec![0u8, 1, 2, 254, 255];
    ws.send(Message::binary(binary.clone())).await.unwrap();
    assert_eq!(next(&mut ws).await, Some(Message::binary(binary)));
    // A frame larger than one read buffer.
    let big = "x".repeat(200_000);
    ws.send(Message::text(big.clone())).await.unwrap();
    assert_eq!(next(&mut ws).await, Some(Message::text(big)));
    let upstream = the_upstream(&proxy);
    assert_eq!(
        upstream.in_flight(),
        1,
        "an open tunnel counts as in flight"
    );

    ws.close(None).await.unwrap();
    assert!(matches!(next(&mut ws).await, Some(Message::Close(_))));
    assert_eq!(
        next(&mut ws).await,
        None,
        "closed after the close handshake"
    );
    // The server closed its side; the tunnel ends once the client closes its own too.
    drop(ws);
    eventually("the tunnel to end", || upstream.in_flight() == 0).await;
    assert_eq!(
        upstream.idle_connections(),
        0,
        "an upgraded connection is never pooled"
    );
}

#[tokio::test]
async fn an_idle_tunnel_is_closed_after_tunnel_idle_timeout() {
    let server = EchoServer::start().await;
    let yaml = ws_config(server.addr, "    tunnel_idle_timeout: 200ms\n");
    let proxy = Proxy::start(&yaml).await;
    let mut ws = ws_connect(proxy.addr).await;
    ws.send(Message::text("ping")).await.unwrap();
    assert_eq!(next(&mut ws).await, Some(Message::text("ping")));

    let started = tokio::time::Instant::now();
    assert_eq!(
        next(&mut ws).await,
        None,
        "the proxy closes the idle tunnel"
    );
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(150),
        "closed too early: {waited:?}"
    );
    eventually("the tunnel to end", || {
        the_upstream(&proxy).in_flight() == 0
    })
    .await;
}

#[tokio::test]
async fn traffic_keeps_a_tunnel_open_past_its_idle_timeout() {
    let server = EchoServer::start().await;
    let yaml = ws_config(server.addr, "    tunnel_idle_timeout: 1s\n");
    let proxy = Proxy::start(&yaml).await;
    let mut ws = ws_connect(proxy.addr).await;
    // Fifteen round trips 100ms apart: 1.5 s in all, past the timeout, while each gap stays
    // far under it even when a loaded machine delays this test for a while.
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    for i in 0..15 {
        tick.tick().await;
        ws.send(Message::text(format!("m{i}"))).await.unwrap();
        assert_eq!(next(&mut ws).await, Some(Message::text(format!("m{i}"))));
    }
    ws.close(None).await.unwrap();
}

#[tokio::test]
async fn an_upgrade_the_upstream_declines_is_an_ordinary_response() {
    // The test backend answers every request itself; it never switches protocols.
    let backend = crate::support::Backend::start("plain").await;
    let proxy = Proxy::start(&ws_config(backend.addr, "")).await;
    let stream = TcpStream::connect(proxy.addr).await.unwrap();
    let err = tokio_tungstenite::client_async("ws://ws.example/", stream)
        .await
        .unwrap_err();
    let tokio_tungstenite::tungstenite::Error::Http(response) = err else {
        panic!("expected the upstream's HTTP answer, got {err:?}");
    };
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-backend"], "plain");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_tunnel_counts_as_an_active_connection_and_its_101_as_one_request() {
    use crate::admin::until;
    use crate::metrics::value;
    let server = EchoServer::start().await;
    // Its own listener and route names: the recorder is shared by every test.
    let yaml = ws_config(server.addr, "")
        .replace("name: test", "name: l-ws-metrics")
        .replace("name: ws\n    pool", "name: ws-metrics\n    pool")
        .replace(
            "access_log: off\n",
            "access_log: off\nadmin:\n  bind: \"127.0.0.1:0\"\n",
        );
    let proxy = Proxy::start(&yaml).await;
    let admin = proxy.server.admin_addr().unwrap();
    let active = || {
        value(
            admin,
            "switchyard_connections_active",
            &[("listener", "l-ws-metrics")],
        )
    };
    let mut ws = ws_connect(proxy.addr).await;
    ws.send(Message::text("hello")).await.unwrap();
    assert_eq!(next(&mut ws).await, Some(Message::text("hello")));
    assert_eq!(
        active().await,
        Some(1.0),
        "the tunnel's client connection is open"
    );
    let upgrades = [
        ("listener", "l-ws-metrics"),
        ("route", "ws-metrics"),
        ("pool", "ws"),
        ("code", "101"),
    ];
    assert_eq!(
        value(admin, "switchyard_requests_total", &upgrades).await,
        Some(1.0)
    );

    ws.close(None).await.unwrap();
    assert!(matches!(next(&mut ws).await, Some(Message::Close(_))));
    drop(ws);
    until("the tunnel's connection to be gone", || async {
        active().await == Some(0.0)
    })
    .await;
    let total = value(
        admin,
        "switchyard_connections_total",
        &[("listener", "l-ws-metrics")],
    )
    .await;
    assert_eq!(total, Some(1.0));
    assert_eq!(
        value(admin, "switchyard_requests_total", &upgrades).await,
        Some(1.0)
    );
}
