//! The built-in demo backends of `switchyard demo`.
//!
//! Three tiny HTTP servers on 127.0.0.1:9001-9003, each answering every request with its own
//! name, so a newcomer can run the proxy with the top-level `proxy.yaml` and watch `curl`
//! requests rotate between them. They also answer `/healthz` with `ok`.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

/// Ports of the three demo backends on 127.0.0.1.
pub const DEMO_PORTS: [u16; 3] = [9001, 9002, 9003];

/// Binds the demo backends and serves them in the background; returns their addresses.
pub async fn start_backends() -> std::io::Result<Vec<SocketAddr>> {
    let mut addrs = Vec::with_capacity(DEMO_PORTS.len());
    for (i, port) in DEMO_PORTS.iter().enumerate() {
        let listener = TcpListener::bind(("127.0.0.1", *port)).await?;
        let addr = listener.local_addr()?;
        let name = format!("demo backend {} ({addr})\n", i + 1);
        tokio::spawn(serve(listener, Bytes::from(name)));
        addrs.push(addr);
    }
    Ok(addrs)
}

async fn serve(listener: TcpListener, name: Bytes) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let name = name.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<Incoming>| {
                let body = if req.uri().path() == "/healthz" {
                    Bytes::from_static(b"ok\n")
                } else {
                    name.clone()
                };
                async move { Ok::<_, Infallible>(Response::new(Full::new(body))) }
            });
            let builder = auto::Builder::new(TokioExecutor::new());
            if let Err(error) = builder
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(%error, "demo backend connection error");
            }
        });
    }
}
