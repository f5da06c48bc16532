//! The admin API on `admin.bind` (SPEC section 8): metrics, status, registry, dashboard.
//!
//! | method, path | answer |
//! |---|---|
//! | `GET /` | the live HTML dashboard (`dashboard.html`, self-contained) |
//! | `GET /metrics` | Prometheus text (see `crate::metrics`) |
//! | `GET /healthz` | `200 ok` while the process runs |
//! | `GET /ready` | `200 ready`; `503 draining` once shutdown started |
//! | `GET /config` | `{"generation", "last_reload": {"ok", "error", "at"}, "config"}` |
//! | `GET /pools` | `{"pools": [{"name", "strategy", "healthy", "upstreams": [...]}]}` |
//! | `GET /registry` | `{"instances": [...]}`: every registered instance |
//! | `PUT /registry/{pool}/{addr}` | `201` registered or `200` renewed, with the entry |
//! | `DELETE /registry/{pool}/{addr}` | `204`; `404` if not registered |
//! | `POST /reload` | `200 {"generation"}`, `422 {"error"}`, or `503` while draining |
//!
//! Unknown paths get `404`, a known path with another method `405` with `Allow`; errors are
//! `{"error": "..."}`. With `admin.token` set, `PUT`, `DELETE` and `POST` need
//! `Authorization: Bearer <token>` (`401` otherwise), compared in constant time.
//!
//! The server runs on its own OS thread with a current-thread tokio runtime and at most
//! [`MAX_CONNECTIONS`] connections, so no amount of admin traffic takes a worker thread or a
//! connection slot from the traffic listeners. Reloads it triggers run on the main runtime.
//! What reloading and draining mean is behind the [`Control`] seam.

pub mod api;
mod control;

pub use control::{
    BoxFuture, Control, LastReload, ReloadRefused, StaticControl, RELOAD_UNAVAILABLE,
};

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio::sync::{oneshot, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::metrics::ScrapeState;
use crate::registry::RegistryError;
use crate::snapshot::Shared;

/// Most admin connections open at once; more wait in the kernel backlog.
pub const MAX_CONNECTIONS: usize = 64;
/// Largest request body the admin API reads (registry JSON is a few bytes).
pub const MAX_BODY: usize = 64 * 1024;
/// Deadline for an admin request head and for its body.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

const DASHBOARD: &str = include_str!("dashboard.html");

/// What an admin request can reach.
pub struct AdminState {
    /// The running snapshot and the registry.
    pub shared: Arc<Shared>,
    /// Reload and lifecycle.
    pub control: Arc<dyn Control>,
    /// The main runtime, where reloads run.
    pub runtime: tokio::runtime::Handle,
}

impl std::fmt::Debug for AdminState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminState").finish_non_exhaustive()
    }
}

/// The running admin server: its thread and how to stop it.
#[derive(Debug)]
pub struct AdminServer {
    addr: SocketAddr,
    stop: CancellationToken,
    done: oneshot::Receiver<()>,
}

// === impl AdminServer ===

impl AdminServer {
    /// Binds `addr` (call inside tokio) and serves on a thread of its own.
    pub fn start(addr: SocketAddr, state: AdminState) -> io::Result<AdminServer> {
        let socket = crate::listener::bind(addr)?;
        let addr = socket.local_addr()?;
        // Re-registered with the admin thread's own runtime there.
        let socket = socket.into_std()?;
        let stop = CancellationToken::new();
        let (tx, done) = oneshot::channel();
        let token = stop.clone();
        std::thread::Builder::new()
            .name("switchyard-admin".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build();
                match runtime {
                    Ok(runtime) => runtime.block_on(serve(socket, Arc::new(state), token)),
                    Err(error) => tracing::error!(%error, "cannot start the admin runtime"),
                }
                let _ = tx.send(());
            })?;
        tracing::info!(%addr, "admin API listening");
        Ok(AdminServer { addr, stop, done })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Closes the admin listener and its connections; returns once its thread is done.
    pub async fn stop(self) {
        self.stop.cancel();
        let _ = self.done.await;
    }
}

async fn serve(socket: std::net::TcpListener, state: Arc<AdminState>, stop: CancellationToken) {
    let socket = match TcpListener::from_std(socket) {
        Ok(socket) => socket,
        Err(error) => return tracing::error!(%error, "admin listener unusable"),
    };
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    // Told when every slot is taken: each connection then closes once it is idle (at once
    // when it waits for a next request), so kept-alive scrapers and dashboards cannot
    // lock out `/healthz` and `/ready` (NGINX likewise closes idle keep-alive connections
    // when it runs out of them).
    let pressure = Arc::new(tokio::sync::Notify::new());
    loop {
        let stream = tokio::select! {
            accepted = socket.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    tracing::warn!(%error, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
            () = stop.cancelled() => return,
        };
        // Only a client that finds every slot taken makes the others give theirs up.
        let permit = match permits.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                pressure.notify_waiters();
                tokio::select! {
                    permit = permits.clone().acquire_owned() => match permit {
                        Ok(permit) => permit,
                        Err(_) => return,
                    },
                    () = stop.cancelled() => return,
                }
            }
        };
        let state = state.clone();
        let stop = stop.clone();
        let pressure = pressure.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, std::convert::Infallible>(handle(&state, req).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(READ_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            let mut conn = std::pin::pin!(conn);
            let mut closing = false;
            let result = loop {
                tokio::select! {
                    result = conn.as_mut() => break Some(result),
                    () = pressure.notified(), if !closing => {
                        closing = true;
                        conn.as_mut().graceful_shutdown();
                    }
                    () = stop.cancelled() => break None,
                }
            };
            if let Some(Err(error)) = result {
                tracing::debug!(%error, "admin connection ended with an error");
            }
            drop(permit);
        });
    }
}

/// An admin answer.
type Answer = Response<Full<Bytes>>;

/// Routes one admin request; see the table in the module doc.
pub async fn handle(state: &AdminState, req: Request<Incoming>) -> Answer {
    let method = req.method().clone();
    let mutating = matches!(method, Method::PUT | Method::DELETE | Method::POST);
    // The token is read from the running config, so a reload that sets or changes
    // `admin.token` takes effect at once.
    let snapshot = state.shared.snapshot();
    let token = snapshot
        .config
        .admin
        .as_ref()
        .and_then(|a| a.token.as_deref());
    if mutating && !authorized(token, req.headers().get(header::AUTHORIZATION)) {
        let mut answer = error(StatusCode::UNAUTHORIZED, "missing or wrong bearer token");
        answer
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return answer;
    }
    let path = req.uri().path().to_owned();
    let get = method == Method::GET || method == Method::HEAD;
    match path.as_str() {
        "/" if get => text(StatusCode::OK, "text/html; charset=utf-8", DASHBOARD),
        "/metrics" if get => metrics(state),
        "/healthz" if get => text(StatusCode::OK, "text/plain; charset=utf-8", "ok\n"),
        "/ready" if get => ready(state),
        "/config" if get => {
            let snapshot = state.shared.snapshot();
            json(
                StatusCode::OK,
                &api::config(&snapshot, &state.control.last_reload()),
            )
        }
        "/pools" if get => json(StatusCode::OK, &api::pools(&state.shared.snapshot())),
        "/registry" if get => json(
            StatusCode::OK,
            &serde_json::json!({ "instances": state.shared.registry.list() }),
        ),
        "/reload" if method == Method::POST => reload(state).await,
        "/" | "/metrics" | "/healthz" | "/ready" | "/config" | "/pools" | "/registry" => {
            not_allowed("GET, HEAD")
        }
        "/reload" => not_allowed("POST"),
        _ => match path.strip_prefix("/registry/") {
            Some(rest) if method == Method::PUT => put(state, rest, req.into_body()).await,
            Some(rest) if method == Method::DELETE => delete(state, rest),
            Some(_) => not_allowed("PUT, DELETE"),
            None => error(StatusCode::NOT_FOUND, "no such admin endpoint"),
        },
    }
}

/// Whether the request may mutate: no token configured, or the right bearer token.
fn authorized(token: Option<&str>, given: Option<&HeaderValue>) -> bool {
    let Some(token) = token else { return true };
    // RFC 9110 section 11.1: the scheme is case-insensitive; RFC 6750: one or more spaces.
    let given = given.map(HeaderValue::as_bytes).unwrap_or_default();
    let scheme = b"bearer ";
    let credentials = match given.get(..scheme.len()) {
        Some(start) if start.eq_ignore_ascii_case(scheme) => &given[scheme.len()..],
        _ => return false,
    };
    let credentials = credentials.trim_ascii_start();
    constant_time_eq(credentials, token.as_bytes())
}

/// Compares without stopping at the first difference, so the time taken does not tell an
/// attacker how much of a guess was right (only whether its length was).
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

fn metrics(state: &AdminState) -> Answer {
    let last = state.control.last_reload();
    let scrape = ScrapeState {
        reloads_ok: last.reloads_ok,
        reloads_error: last.reloads_error,
    };
    let body = crate::metrics::render(&state.shared.snapshot(), &scrape);
    text(
        StatusCode::OK,
        "text/plain; version=0.0.4; charset=utf-8",
        body,
    )
}

fn ready(state: &AdminState) -> Answer {
    if state.control.is_draining() {
        text(
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain; charset=utf-8",
            "draining\n",
        )
    } else {
        text(StatusCode::OK, "text/plain; charset=utf-8", "ready\n")
    }
}

async fn reload(state: &AdminState) -> Answer {
    if state.control.is_draining() {
        // Not a failed reload: nothing is left to reload into (as `/ready`'s 503).
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the proxy is shutting down",
        );
    }
    let outcome = state.runtime.spawn(state.control.reload()).await;
    match outcome {
        Ok(Ok(generation)) => json(
            StatusCode::OK,
            &serde_json::json!({ "generation": generation }),
        ),
        // A reload that waited for another and found the drain begun.
        Ok(Err(ReloadRefused::Draining)) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the proxy is shutting down",
        ),
        Ok(Err(ReloadRefused::Failed(message))) => {
            error(StatusCode::UNPROCESSABLE_ENTITY, &message)
        }
        Err(join) => {
            tracing::error!(error = %join, "reload task failed");
            error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "reload failed unexpectedly",
            )
        }
    }
}

/// Body of `PUT /registry/{pool}/{addr}`; both fields optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PutBody {
    weight: Option<u32>,
    ttl: Option<String>,
}

async fn put(state: &AdminState, rest: &str, body: Incoming) -> Answer {
    let (pool, addr) = match target(rest) {
        Ok(target) => target,
        Err(message) => return error(StatusCode::BAD_REQUEST, &message),
    };
    let bytes =
        match tokio::time::timeout(READ_TIMEOUT, Limited::new(body, MAX_BODY).collect()).await {
            Ok(Ok(collected)) => collected.to_bytes(),
            Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
                return error(StatusCode::PAYLOAD_TOO_LARGE, "body over 64 KiB");
            }
            Ok(Err(_)) => return error(StatusCode::BAD_REQUEST, "body unreadable"),
            Err(_) => return error(StatusCode::REQUEST_TIMEOUT, "body not received in time"),
        };
    let expected = "expected a JSON object like {\"weight\": 1, \"ttl\": \"30s\"}";
    let parsed: PutBody = match bytes.trim_ascii().first() {
        None => PutBody::default(),
        // serde would also take the fields in order from an array (`[2, "10s"]`).
        Some(b'{') => match serde_json::from_slice(&bytes) {
            Ok(parsed) => parsed,
            Err(e) => {
                let found = in_json_terms(&e.to_string());
                let message = format!("invalid JSON body: {found}; {expected}");
                return error(StatusCode::BAD_REQUEST, &message);
            }
        },
        Some(_) => {
            return error(
                StatusCode::BAD_REQUEST,
                &format!("invalid JSON body: {expected}"),
            )
        }
    };
    let ttl = match parsed.ttl.as_deref().map(crate::config::parse_duration) {
        None => None,
        Some(Ok(ttl)) => Some(ttl),
        Some(Err(message)) => return error(StatusCode::BAD_REQUEST, &format!("ttl: {message}")),
    };
    let shared = &state.shared;
    match shared.registry.put(shared, &pool, addr, parsed.weight, ttl) {
        Ok((entry, true)) => json(StatusCode::CREATED, &entry),
        Ok((entry, false)) => json(StatusCode::OK, &entry),
        Err(e) => registry_error(&e),
    }
}

/// serde's message about a registry body, with the Rust type it expected put in the API's
/// terms (`u32` is a weight).
fn in_json_terms(message: &str) -> String {
    let weight = format!("an integer from 1 to {}", crate::config::MAX_WEIGHT);
    message.replace("expected u32", &format!("expected {weight}"))
}

fn delete(state: &AdminState, rest: &str) -> Answer {
    let (pool, addr) = match target(rest) {
        Ok(target) => target,
        Err(message) => return error(StatusCode::BAD_REQUEST, &message),
    };
    let shared = &state.shared;
    match shared.registry.delete(shared, &pool, addr) {
        Ok(()) => Response::builder()
            .status(StatusCode::NO_CONTENT)
            .body(Full::default())
            .expect("a status-only response is valid"),
        Err(e) => registry_error(&e),
    }
}

/// `{pool}/{addr}` of a registry path, percent-decoded; the `400` message when malformed.
fn target(rest: &str) -> Result<(String, SocketAddr), String> {
    let (pool, addr) = rest
        .split_once('/')
        .ok_or("expected /registry/{pool}/{addr}")?;
    let pool = percent_decode(pool).ok_or("pool name is not valid percent-encoded UTF-8")?;
    let addr_text = percent_decode(addr).ok_or("addr is not valid percent-encoded UTF-8")?;
    let addr: SocketAddr = addr_text.parse().map_err(|_| {
        format!("invalid addr {addr_text:?}: expected IP:PORT, like 127.0.0.1:9000 or [::1]:9000")
    })?;
    if addr.port() == 0 {
        return Err("addr port must be 1-65535".to_owned());
    }
    Ok((pool, addr))
}

/// Decodes `%XX` escapes; `None` on a broken escape or invalid UTF-8.
fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn registry_error(e: &RegistryError) -> Answer {
    let status = match e {
        RegistryError::UnknownPool(_) | RegistryError::NotFound { .. } => StatusCode::NOT_FOUND,
        RegistryError::Static { .. } => StatusCode::CONFLICT,
        RegistryError::Weight(_) | RegistryError::Ttl(_) => StatusCode::BAD_REQUEST,
    };
    error(status, &e.to_string())
}

fn text(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Answer {
    let mut answer = Response::new(Full::new(body.into()));
    *answer.status_mut() = status;
    let headers = answer.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if content_type.starts_with("text/html") {
        // The page loads nothing from elsewhere; say so to the browser too.
        headers.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(
                "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'",
            ),
        );
    }
    answer
}

fn json(status: StatusCode, value: &impl serde::Serialize) -> Answer {
    match serde_json::to_vec(value) {
        Ok(mut body) => {
            body.push(b'\n');
            text(status, "application/json", body)
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot serialize an admin answer");
            text(
                StatusCode::INTERNAL_SERVER_ERROR,
                "text/plain; charset=utf-8",
                "serialization failed\n",
            )
        }
    }
}

fn error(status: StatusCode, message: &str) -> Answer {
    json(status, &api::ErrorView { error: message })
}

fn not_allowed(allow: &'static str) -> Answer {
    let mut answer = error(
        StatusCode::METHOD_NOT_ALLOWED,
        "method not allowed on this path",
    );
    answer
        .headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    answer
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_compare_whole() {
        assert!(authorized(None, None));
        let ok = HeaderValue::from_static("Bearer s3cret");
        assert!(authorized(Some("s3cret"), Some(&ok)));
        for good in ["bearer s3cret", "BEARER  s3cret"] {
            let given = HeaderValue::from_static(good);
            assert!(authorized(Some("s3cret"), Some(&given)), "{good}");
        }
        for bad in [
            "Bearer s3cre",
            "Bearer s3cret2",
            "Bearers3cret",
            "Basic s3cret",
            "s3cret",
            "Bearer S3cret",
            "Bearer",
        ] {
            assert!(
                !authorized(Some("s3cret"), Some(&HeaderValue::from_static(bad))),
                "{bad}"
            );
        }
        assert!(!authorized(Some("s3cret"), None));
    }

    #[test]
    fn registry_targets_decode_ipv6_and_refuse_hostnames() {
        let (pool, addr) = target("api/%5B%3A%3A1%5D%3A9000").unwrap();
        assert_eq!(
            (pool.as_str(), addr),
            ("api", "[::1]:9000".parse().unwrap())
        );
        assert_eq!(
            target("api/127.0.0.1:80").unwrap().1,
            "127.0.0.1:80".parse().unwrap()
        );
        for bad in [
            "api",
            "api/localhost:80",
            "api/127.0.0.1",
            "api/127.0.0.1:0",
            "api/%zz",
        ] {
            assert!(target(bad).is_err(), "{bad}");
        }
    }
}
