//! Test helpers: real backends and a real proxy on 127.0.0.1 ephemeral ports, and a client.
//!
//! A [`Backend`] answers by path, so one server covers every test need:
//! - `/upload`: reads the whole body, answers `"<len> <sha256 hex>"`;
//! - `/download/N`: streams N bytes of a fixed pattern in 64 KiB chunks;
//! - `/status/NNN`: answers that status;
//! - `/early/NNN`: answers that status at once, reading the body afterwards;
//! - `/slow/MS`: waits MS milliseconds, then answers its name;
//! - `/headers`: answers the request line and headers it received, one per line;
//! - anything else: its name.
//!
//! Every answer carries `x-backend: <name>`; the backend counts requests and connections.

#![allow(dead_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use sha2::{Digest, Sha256};
use tokio::net::{TcpListener, TcpStream};

use switchyard::Server;

/// Upper bound for anything a test waits for.
pub const DEADLINE: Duration = Duration::from_secs(10);

/// A running test backend.
pub struct Backend {
    pub addr: SocketAddr,
    pub name: String,
    state: Arc<BackendState>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Default)]
struct BackendState {
    requests: AtomicUsize,
    connections: AtomicUsize,
    /// When non-zero, every answer has this status.
    fixed_status: std::sync::atomic::AtomicU16,
    /// Milliseconds every answer waits before it is sent.
    fixed_delay_ms: std::sync::atomic::AtomicU64,
}

impl Backend {
    /// Starts a backend that answers every request with `status`.
    pub async fn failing(name: &str, status: u16) -> Backend {
        let backend = Backend::start(name).await;
        backend.state.fixed_status.store(status, Ordering::SeqCst);
        backend
    }

    /// Starts a backend that waits `ms` milliseconds before every answer.
    pub async fn slow(name: &str, ms: u64) -> Backend {
        let backend = Backend::start(name).await;
        backend.state.fixed_delay_ms.store(ms, Ordering::SeqCst);
        backend
    }

    /// Starts a backend answering as `name`.
    pub async fn start(name: &str) -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(BackendState::default());
        let name_bytes = Bytes::from(name.to_owned());
        let st = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                st.connections.fetch_add(1, Ordering::SeqCst);
                let st = st.clone();
                let name = name_bytes.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| {
                        st.requests.fetch_add(1, Ordering::SeqCst);
                        let fixed = st.fixed_status.load(Ordering::SeqCst);
                        let delay = Duration::from_millis(st.fixed_delay_ms.load(Ordering::SeqCst));
                        let name = name.clone();
                        async move {
                            tokio::time::sleep(delay).await;
                            answer(req, name, fixed).await
                        }
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection_with_upgrades(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Backend {
            addr,
            name: name.to_owned(),
            state,
            task,
        }
    }

    /// Requests served so far.
    pub fn requests(&self) -> usize {
        self.state.requests.load(Ordering::SeqCst)
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.state.connections.load(Ordering::SeqCst)
    }

    /// Stops accepting; the port then refuses connections.
    pub fn stop(&self) {
        self.task.abort();
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type BoxBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

fn full(bytes: impl Into<Bytes>) -> BoxBody {
    Full::new(bytes.into()).boxed()
}

async fn answer(
    req: Request<Incoming>,
    name: Bytes,
    fixed: u16,
) -> Result<Response<BoxBody>, Infallible> {
    let path = req.uri().path().to_owned();
    let mut status = StatusCode::from_u16(fixed).unwrap_or(StatusCode::OK);
    let body = if path == "/upload" {
        let mut hasher = Sha256::new();
        let mut len = 0u64;
        let mut body = req.into_body();
        while let Some(Ok(frame)) = body.frame().await {
            if let Some(data) = frame.data_ref() {
                len += data.len() as u64;
                hasher.update(data);
            }
        }
        full(format!("{len} {:x}", hasher.finalize()))
    } else if let Some(n) = path.strip_prefix("/download/") {
        download(n.parse().unwrap_or(0))
    } else if let Some(n) = path.strip_prefix("/sized/") {
        // One frame of known size: sent with a `content-length`, unlike `/download/`.
        full(
            (0..n.parse().unwrap_or(0))
                .map(pattern)
                .collect::<Vec<u8>>(),
        )
    } else if let Some(code) = path.strip_prefix("/early/") {
        // Answer at once and keep reading the body in the background, connection kept open.
        status = StatusCode::from_u16(code.parse().unwrap_or(401)).unwrap();
        let mut body = req.into_body();
        tokio::spawn(async move { while let Some(Ok(_)) = body.frame().await {} });
        full(name.clone())
    } else if let Some(code) = path.strip_prefix("/status/") {
        status = StatusCode::from_u16(code.parse().unwrap_or(500)).unwrap();
        full(name.clone())
    } else if let Some(ms) = path.strip_prefix("/slow/") {
        tokio::time::sleep(Duration::from_millis(ms.parse().unwrap_or(0))).await;
        full(name.clone())
    } else if path == "/headers" {
        let mut text = format!("{} {} {:?}\n", req.method(), req.uri(), req.version());
        for (k, v) in req.headers() {
            text.push_str(&format!("{}: {}\n", k, v.to_str().unwrap_or("?")));
        }
        full(text)
    } else {
        full(name.clone())
    };
    let mut response = Response::new(body);
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert("x-backend", http::HeaderValue::from_bytes(&name).unwrap());
    Ok(response)
}

/// The byte at offset `i` of every download.
pub fn pattern(i: u64) -> u8 {
    (i.wrapping_mul(31) % 251) as u8
}

fn download(total: u64) -> BoxBody {
    const CHUNK: u64 = 64 * 1024;
    let chunks = (0..total.div_ceil(CHUNK)).map(move |c| {
        let start = c * CHUNK;
        let end = (start + CHUNK).min(total);
        let data: Vec<u8> = (start..end).map(pattern).collect();
        Ok::<_, Infallible>(Frame::data(Bytes::from(data)))
    });
    StreamBody::new(IterStream::new(chunks)).boxed()
}

/// A `Stream` over an iterator.
pub struct IterStream<I>(I);

impl<I> IterStream<I> {
    pub fn new(iter: I) -> IterStream<I> {
        IterStream(iter)
    }
}

impl<I: Iterator + Unpin> futures_core::Stream for IterStream<I> {
    type Item = I::Item;
    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<I::Item>> {
        std::task::Poll::Ready(self.0.next())
    }
}

/// A proxy started in this process from YAML text.
pub struct Proxy {
    pub addr: SocketAddr,
    pub server: Server,
}

impl Proxy {
    /// Starts a proxy from `yaml`; its first listener must bind 127.0.0.1:0.
    pub async fn start(yaml: &str) -> Proxy {
        let config = switchyard::config::parse(std::path::Path::new("test.yaml"), yaml)
            .unwrap_or_else(|e| panic!("test config is invalid:\n{e}"));
        let first = config.listeners[0].name.clone();
        let server = Server::start(config, Duration::from_secs(5)).await.unwrap();
        let addr = server.listener_addr(&first).unwrap();
        Proxy { addr, server }
    }
}

/// One listener on 127.0.0.1:0, access log off, plus the given routes and pools.
pub fn config(routes_and_pools: &str) -> String {
    format!(
        "listeners:\n  - name: test\n    bind: \"127.0.0.1:0\"\naccess_log: off\n{routes_and_pools}"
    )
}

/// A response read to its end.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn header(&self, name: &str) -> &str {
        self.headers.get(name).map_or("", |v| v.to_str().unwrap())
    }
}

/// A keep-alive HTTP/1.1 client connection.
pub struct Client {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
}

impl Client {
    pub async fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect(addr).await.unwrap();
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        Client { sender }
    }

    /// GET `path` with `Host: host`.
    pub async fn get(&mut self, host: &str, path: &str) -> Reply {
        let req = Request::get(path)
            .header("host", host)
            .body(Full::new(Bytes::new()))
            .unwrap();
        self.send(req).await
    }

    pub async fn send(&mut self, req: Request<Full<Bytes>>) -> Reply {
        self.sender.ready().await.unwrap();
        let response = tokio::time::timeout(DEADLINE, self.sender.send_request(req))
            .await
            .expect("response within the deadline")
            .unwrap();
        read(response).await
    }
}

/// Reads a response to its end.
pub async fn read(response: Response<Incoming>) -> Reply {
    let (parts, body) = response.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

/// GET `path` on a fresh connection.
pub async fn get(addr: SocketAddr, path: &str) -> Reply {
    Client::connect(addr).await.get("test.local", path).await
}

/// Polls `check` until it returns true or the deadline passes.
pub async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !check() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Reads until the peer closes; returns what arrived and how long it took. Fails the test if
/// the connection stays open past [`DEADLINE`].
pub async fn read_until_closed(stream: &mut TcpStream) -> (String, Duration) {
    use tokio::io::AsyncReadExt;
    let started = tokio::time::Instant::now();
    let mut all = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(DEADLINE, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => all.extend_from_slice(&buf[..n]),
            Err(_) => panic!("connection still open after {DEADLINE:?}"),
        }
    }
    (
        String::from_utf8_lossy(&all).into_owned(),
        started.elapsed(),
    )
}

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// An HTTP/2 client connection over `io` (prior knowledge on plaintext, or after ALPN `h2`),
/// its connection driven by a task of its own.
pub async fn h2_client<B, I>(io: I) -> hyper::client::conn::http2::SendRequest<B>
where
    B: http_body::Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(io))
            .await
            .unwrap();
    tokio::spawn(conn);
    sender
}

/// A fresh temporary directory, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(name: &str) -> TempDir {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("switchyard-test-{}-{name}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
