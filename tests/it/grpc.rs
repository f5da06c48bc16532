//! HTTP/2 and gRPC through the proxy: a tonic client over prior-knowledge h2c to the proxy's
//! plaintext listener, an `protocol: h2` pool, and a real tonic server behind it. The prost
//! messages are written by hand and tonic's generic `Grpc` client and server are used
//! directly, so no `protoc` is needed. Also HTTP/2 clients to HTTP/1.1 pools, and an upstream
//! that speaks only HTTP/1.1 behind an h2 pool (502, not a hang).

use std::convert::Infallible;
use std::future::{ready, Ready};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::uri::PathAndQuery;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::{TcpListener, TcpStream};
use tonic::{Code, Status};
use tonic_prost::ProstCodec;

use crate::support::{config, get, Backend, Proxy, DEADLINE};

// === messages ===

#[derive(Clone, PartialEq, prost::Message)]
pub struct EchoRequest {
    #[prost(string, tag = "1")]
    pub message: String,
    /// Server streaming: how many replies; with `message == "fail"`, an error follows them.
    #[prost(uint32, tag = "2")]
    pub count: u32,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct EchoReply {
    #[prost(string, tag = "1")]
    pub message: String,
}

// === server ===

/// What the gRPC server saw of each request.
#[derive(Default)]
struct Seen {
    connections: AtomicUsize,
    /// `(authority, te header)` per request.
    requests: Mutex<Vec<(String, String)>>,
}

/// A tonic gRPC server (h2c) with `Unary` and `Stream` methods on `test.Echo`.
struct GrpcServer {
    addr: SocketAddr,
    seen: Arc<Seen>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for GrpcServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl GrpcServer {
    async fn start() -> GrpcServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Seen::default());
        let state = seen.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                state.connections.fetch_add(1, Ordering::SeqCst);
                let state = state.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req: http::Request<Incoming>| {
                        let state = state.clone();
                        async move { Ok::<_, Infallible>(dispatch(&state, req).await) }
                    });
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        GrpcServer { addr, seen, task }
    }
}

async fn dispatch(seen: &Seen, req: http::Request<Incoming>) -> http::Response<tonic::body::Body> {
    let authority = req.uri().authority().map_or("", |a| a.as_str()).to_owned();
    let te = req
        .headers()
        .get("te")
        .map_or("", |v| v.to_str().unwrap())
        .to_owned();
    seen.requests.lock().unwrap().push((authority, te));
    let mut grpc = tonic::server::Grpc::new(ProstCodec::<EchoReply, EchoRequest>::default());
    match req.uri().path() {
        "/test.Echo/Stream" => grpc.server_streaming(StreamEcho, req).await,
        _ => grpc.unary(UnaryEcho, req).await,
    }
}

/// Echoes the message; `"fail"` answers `NOT_FOUND`.
struct UnaryEcho;

impl tower_service::Service<tonic::Request<EchoRequest>> for UnaryEcho {
    type Response = tonic::Response<EchoReply>;
    type Error = Status;
    type Future = Ready<Result<Self::Response, Status>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Status>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: tonic::Request<EchoRequest>) -> Self::Future {
        let msg = req.into_inner().message;
        ready(if msg == "fail" {
            Err(Status::not_found("no such echo"))
        } else {
            Ok(tonic::Response::new(EchoReply { message: msg }))
        })
    }
}

type ReplyStream = futures_util::stream::Iter<std::vec::IntoIter<Result<EchoReply, Status>>>;

/// `count` replies `"<message> <i>"`; after them, for `"fail"`, `RESOURCE_EXHAUSTED`.
struct StreamEcho;

impl tower_service::Service<tonic::Request<EchoRequest>> for StreamEcho {
    type Response = tonic::Response<ReplyStream>;
    type Error = Status;
    type Future = Ready<Result<Self::Response, Status>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Status>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: tonic::Request<EchoRequest>) -> Self::Future {
        let req = req.into_inner();
        let mut items: Vec<Result<EchoReply, Status>> = (0..req.count)
            .map(|i| {
                Ok(EchoReply {
                    message: format!("{} {i}", req.message),
                })
            })
            .collect();
        if req.message == "fail" {
            items.push(Err(Status::resource_exhausted("stream ran dry")));
        }
        ready(Ok(tonic::Response::new(futures_util::stream::iter(items))))
    }
}

// === client ===

/// hyper's HTTP/2 client connection as the service tonic's generic client drives.
#[derive(Clone)]
struct H2Client(hyper::client::conn::http2::SendRequest<tonic::body::Body>);

type ResponseFuture =
    Pin<Box<dyn std::future::Future<Output = hyper::Result<http::Response<Incoming>>> + Send>>;

impl tower_service::Service<http::Request<tonic::body::Body>> for H2Client {
    type Response = http::Response<Incoming>;
    type Error = hyper::Error;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<hyper::Result<()>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> ResponseFuture {
        Box::pin(self.0.send_request(req))
    }
}

/// A tonic client speaking prior-knowledge h2c to `addr`, with `:authority` `grpc.example`.
async fn grpc_client(addr: SocketAddr) -> tonic::client::Grpc<H2Client> {
    let stream = TcpStream::connect(addr).await.unwrap();
    let sender = crate::support::h2_client(stream).await;
    let origin = "http://grpc.example".parse().unwrap();
    tonic::client::Grpc::with_origin(H2Client(sender), origin)
}

async fn unary(
    grpc: &mut tonic::client::Grpc<H2Client>,
    message: &str,
) -> Result<EchoReply, Status> {
    grpc.ready().await.unwrap();
    let req = tonic::Request::new(EchoRequest {
        message: message.to_owned(),
        count: 0,
    });
    let codec = ProstCodec::<EchoRequest, EchoReply>::default();
    let call = grpc.unary(req, PathAndQuery::from_static("/test.Echo/Unary"), codec);
    let reply = tokio::time::timeout(DEADLINE, call)
        .await
        .expect("reply in time");
    reply.map(tonic::Response::into_inner)
}

/// Starts a server streaming call; returns every reply and the final status.
async fn stream(
    grpc: &mut tonic::client::Grpc<H2Client>,
    message: &str,
    count: u32,
) -> (Vec<String>, Result<(), Status>) {
    grpc.ready().await.unwrap();
    let req = tonic::Request::new(EchoRequest {
        message: message.to_owned(),
        count,
    });
    let codec = ProstCodec::<EchoRequest, EchoReply>::default();
    let call = grpc.server_streaming(req, PathAndQuery::from_static("/test.Echo/Stream"), codec);
    let mut replies = tokio::time::timeout(DEADLINE, call)
        .await
        .expect("response head in time")
        .expect("call accepted")
        .into_inner();
    let mut got = Vec::new();
    loop {
        match tokio::time::timeout(DEADLINE, replies.message())
            .await
            .expect("message in time")
        {
            Ok(Some(reply)) => got.push(reply.message),
            Ok(None) => return (got, Ok(())),
            Err(status) => return (got, Err(status)),
        }
    }
}

fn h2_pool(upstream: SocketAddr) -> String {
    config(&format!(
        "routes:\n  - name: grpc\n    pool: grpc\npools:\n  - name: grpc\n    protocol: h2\n    upstreams: [{{ addr: \"{upstream}\" }}]\n"
    ))
}

// === tests ===

#[tokio::test]
async fn grpc_unary_and_server_streaming_calls_pass_through_an_h2_pool() {
    let server = GrpcServer::start().await;
    let proxy = Proxy::start(&h2_pool(server.addr)).await;
    let mut grpc = grpc_client(proxy.addr).await;

    let reply = unary(&mut grpc, "hello").await.unwrap();
    assert_eq!(reply.message, "hello");
    let (replies, status) = stream(&mut grpc, "tick", 5).await;
    assert_eq!(replies, ["tick 0", "tick 1", "tick 2", "tick 3", "tick 4"]);
    assert!(status.is_ok(), "{status:?}");
    // Calls in parallel share the upstream's one multiplexed connection.
    let calls = (0..8).map(|i| {
        let mut grpc = grpc.clone();
        async move {
            unary(&mut grpc, &format!("call {i}"))
                .await
                .unwrap()
                .message
        }
    });
    let replies = futures_util::future::join_all(calls).await;
    assert_eq!(replies[7], "call 7");

    assert_eq!(server.seen.connections.load(Ordering::SeqCst), 1);
    let seen = server.seen.requests.lock().unwrap();
    assert_eq!(seen.len(), 10);
    for (authority, te) in seen.iter() {
        assert_eq!(authority, "grpc.example", "the client's :authority is kept");
        assert_eq!(te, "trailers", "te: trailers reaches the gRPC server");
    }
}

#[tokio::test]
async fn health_checks_of_an_h2_pool_speak_http2_to_an_http2_only_server() {
    let server = GrpcServer::start().await;
    let proxy = Proxy::start(&config(&format!(
        "admin:\n  bind: \"127.0.0.1:0\"\nroutes:\n  - name: grpc\n    pool: grpc\npools:\n  - name: grpc\n    protocol: h2\n    health_check: {{ path: /healthz, interval: 50ms, healthy_threshold: 1, unhealthy_threshold: 1 }}\n    upstreams: [{{ addr: \"{}\" }}]\n",
        server.addr
    )))
    .await;
    let admin = proxy.server.admin_addr().unwrap();
    // Two probes passed (the first could be the one that raced the server's start), and the
    // server saw them as HTTP/2 requests for the upstream's own address.
    crate::admin::until("two passing probes", || async {
        let checked = crate::admin::upstream_view(admin, "grpc", server.addr).await;
        checked["last_check"]["ok"] == true && server.seen.requests.lock().unwrap().len() >= 2
    })
    .await;
    let authority = server.addr.to_string();
    let seen = server.seen.requests.lock().unwrap();
    assert!(
        seen.iter().all(|(a, _)| *a == authority),
        "probes carry the upstream's address as :authority: {:?}",
        seen.iter().map(|(a, _)| a).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn grpc_error_statuses_arrive_intact() {
    let server = GrpcServer::start().await;
    let proxy = Proxy::start(&h2_pool(server.addr)).await;
    let mut grpc = grpc_client(proxy.addr).await;

    let status = unary(&mut grpc, "fail").await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    assert_eq!(status.message(), "no such echo");
    // After two messages the status can only travel in the trailers.
    let (replies, status) = stream(&mut grpc, "fail", 2).await;
    assert_eq!(replies, ["fail 0", "fail 1"]);
    let status = status.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert_eq!(status.message(), "stream ran dry");
}

/// An HTTP/2 (h2c) request to the proxy; returns status, body and the response trailers.
async fn h2_request(
    addr: SocketAddr,
    req: http::Request<Full<Bytes>>,
) -> (http::StatusCode, Bytes, Option<http::HeaderMap>) {
    let stream = TcpStream::connect(addr).await.unwrap();
    let mut sender = crate::support::h2_client(stream).await;
    let response = tokio::time::timeout(DEADLINE, sender.send_request(req))
        .await
        .expect("response in time")
        .unwrap();
    let status = response.status();
    let collected = response.into_body().collect().await.unwrap();
    let trailers = collected.trailers().cloned();
    (status, collected.to_bytes(), trailers)
}

#[tokio::test]
async fn h2c_clients_reach_http1_pools_and_h2_pools() {
    let backend = Backend::start("b1").await;
    let yaml = config(&format!(
        "routes:\n  - name: h1\n    match: {{ path_prefix: /h1/ }}\n    pool: h1\n    strip_prefix: true\n  - name: h2\n    match: {{ path_prefix: /h2/ }}\n    pool: h2\n    strip_prefix: true\npools:\n  - name: h1\n    upstreams: [{{ addr: \"{a}\" }}]\n  - name: h2\n    protocol: h2\n    upstreams: [{{ addr: \"{a}\" }}]\n",
        a = backend.addr
    ));
    let proxy = Proxy::start(&yaml).await;
    for (prefix, version) in [("h1", "HTTP/1.1"), ("h2", "HTTP/2.0")] {
        let req = http::Request::get(format!("http://app.example/{prefix}/headers"))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let (status, body, _) = h2_request(proxy.addr, req).await;
        assert_eq!(status, 200);
        let text = String::from_utf8_lossy(&body);
        let first = text.lines().next().unwrap();
        assert!(first.ends_with(version), "{prefix}: {first}");
        assert!(text.contains("x-forwarded-host: app.example"), "{text}");
    }
}

#[tokio::test]
async fn request_and_response_trailers_cross_an_h2_pool() {
    // An h2c server that answers with the request's trailers as its own.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = service_fn(|req: http::Request<Incoming>| async move {
                    let collected = req.into_body().collect().await?;
                    let trailers = collected.trailers().cloned().unwrap_or_default();
                    let body = collected.to_bytes();
                    let frames = vec![
                        Ok::<_, Infallible>(hyper::body::Frame::data(body)),
                        Ok(hyper::body::Frame::trailers(trailers)),
                    ];
                    let body = http_body_util::StreamBody::new(futures_util::stream::iter(frames));
                    Ok::<_, hyper::Error>(http::Response::new(body))
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    let proxy = Proxy::start(&h2_pool(addr)).await;
    let mut trailers = http::HeaderMap::new();
    trailers.insert("x-checksum", "abc123".parse().unwrap());
    let frames = vec![
        Ok::<_, Infallible>(hyper::body::Frame::data(Bytes::from_static(b"payload"))),
        Ok(hyper::body::Frame::trailers(trailers)),
    ];
    let stream = TcpStream::connect(proxy.addr).await.unwrap();
    let mut sender = crate::support::h2_client(stream).await;
    let req = http::Request::post("http://t.example/echo")
        .header("te", "trailers")
        .body(http_body_util::StreamBody::new(futures_util::stream::iter(
            frames,
        )))
        .unwrap();
    let response = tokio::time::timeout(DEADLINE, sender.send_request(req))
        .await
        .expect("response in time")
        .unwrap();
    assert_eq!(response.status(), 200);
    let collected = response.into_body().collect().await.unwrap();
    let trailers = collected.trailers().cloned().expect("response trailers");
    assert_eq!(trailers["x-checksum"], "abc123");
    assert_eq!(collected.to_bytes(), "payload");
    task.abort();
}

#[tokio::test]
async fn an_http1_only_upstream_behind_an_h2_pool_answers_502_not_a_hang() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = service_fn(|_req: http::Request<Incoming>| async {
                    Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from("h1 only"))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    let proxy = Proxy::start(&h2_pool(addr)).await;
    let started = tokio::time::Instant::now();
    let reply = get(proxy.addr, "/").await;
    assert_eq!(reply.status, 502, "{}", reply.text());
    assert!(
        started.elapsed() < DEADLINE / 2,
        "took {:?}",
        started.elapsed()
    );
    task.abort();
}
