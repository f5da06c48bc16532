//! The request path: snapshot once -> route -> pick -> forward -> map errors.
//!
//! [`handle`] is the whole life of one request. It loads the running snapshot once and keeps
//! it to the end, finds the route, rewrites the request for the upstream (`headers`), and
//! tries upstreams of the route's pool in the order the balancer picks them (`retry` rules of
//! SPEC section 5). Whatever happens, the client gets a response: the upstream's, streamed, or
//! one of the proxy's own short answers from [`ProxyError`]. Accepting connections and
//! speaking HTTP to the client is `listener`'s job; connections to upstreams are `upstream`'s.

mod error;
pub mod headers;
mod retry;
mod tunnel;

use std::cell::RefCell;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use http::header::{self, HeaderValue};
use http::uri::{Authority, PathAndQuery, Uri};
use http::{request, Request, Response, Version};
use http_body::Body;
use tokio::time::Instant;

use crate::access_log::{Entry, Pending, RequestText};
use crate::balance::{hash_key, StrategyKind};
use crate::body::{ClientBody, RequestBody, ResponseBody, UpstreamBody};
use crate::config::{HashKey, Protocol};
use crate::snapshot::{Route, Shared, Snapshot};
use crate::upstream::health::Reason;
use crate::upstream::{Pool, Upstream};

pub use error::ProxyError;
use headers::X_REQUEST_ID;

/// Request extension set by the listener when the raw head's framing is a smuggling shape:
/// `Content-Length` repeated or beside `Transfer-Encoding`, or a `Transfer-Encoding` other than
/// one plain `chunked` (hyper's parser removes part of that evidence; see `listener`).
#[derive(Debug, Clone, Copy)]
pub struct AmbiguousFraming;

/// Marks an HTTP/2 request whose header list is larger than the listener's
/// `max_header_bytes`; [`handle`] answers it `431`, counted and logged.
#[derive(Debug, Clone, Copy)]
pub struct HeadersTooLarge;

/// What a request needs to know about the connection it arrived on.
#[derive(Debug)]
pub struct ConnContext {
    /// The running config and process-wide helpers.
    pub shared: Arc<Shared>,
    /// Name of the listener that accepted the connection.
    pub listener: Arc<str>,
    /// The client's address.
    pub client: SocketAddr,
    /// The client's IP as a header value, formatted once per connection.
    pub client_ip: HeaderValue,
    /// `http` or `https`, for `X-Forwarded-Proto`.
    pub proto: &'static str,
}

impl ConnContext {
    /// Context for a connection from `client` on `listener`.
    pub fn new(
        shared: Arc<Shared>,
        listener: Arc<str>,
        client: SocketAddr,
        proto: &'static str,
    ) -> ConnContext {
        let client_ip = ip_header_value(client.ip());
        ConnContext {
            shared,
            listener,
            client,
            client_ip,
            proto,
        }
    }
}

/// `ip` as a header value. The last one made on this thread is kept: connections come in runs
/// from the same address (a client's pool, a load balancer in front), and each would
/// otherwise format and allocate it again.
fn ip_header_value(ip: IpAddr) -> HeaderValue {
    thread_local! {
        static LAST: RefCell<Option<(IpAddr, HeaderValue)>> = const { RefCell::new(None) };
    }
    LAST.with_borrow_mut(|last| match last {
        Some((seen, value)) if *seen == ip => value.clone(),
        _ => {
            let value = HeaderValue::from_str(&ip.to_string())
                .expect("an IP address is a valid header value");
            *last = Some((ip, value.clone()));
            value
        }
    })
}

/// Serves one request; never fails: errors become the proxy's own answers.
pub async fn handle(ctx: &ConnContext, req: Request<ClientBody>) -> Response<ResponseBody> {
    let started = Instant::now();
    let snapshot = ctx.shared.snapshot();
    let (mut parts, body) = req.into_parts();
    // Room for what the proxy adds (`X-Request-Id`, `X-Forwarded-For`, `-Proto`, `-Host`)
    // in one step: the map the server parsed is sized to the client's fields, and adding
    // them one by one would regrow it twice.
    parts.headers.reserve(4);
    let request_id = ensure_request_id(&ctx.shared.request_ids, &mut parts.headers);
    let host = request_host(&parts);
    let host_str = host.as_ref().and_then(|h| h.to_str().ok()).unwrap_or("");
    // A request refused as malformed is on no route, as are the heads our HTTP/1.1 server
    // refuses before they get here.
    let checked = check_request(&parts, host.as_ref());
    let route = match checked {
        Ok(()) => snapshot.router.route(host_str, parts.uri.path()),
        Err(_) => None,
    };
    let route = route.map(|i| &snapshot.routes[i]);
    let mut log = snapshot.access_log.as_ref().map(|logger| {
        let entry = log_entry(ctx, &snapshot, &parts, route, host_str, &request_id);
        Pending::new(logger.clone(), started, entry)
    });
    // The upstream of the latest attempt, for the log line of a request none answered.
    let mut latest = None;
    let outcome = match (checked, route) {
        (Err(error), _) => Err(error),
        (Ok(()), Some(route)) => {
            forward(
                ctx,
                &snapshot,
                route,
                parts,
                body,
                host,
                started,
                &mut latest,
            )
            .await
        }
        (Ok(()), None) => Err(ProxyError::NoRoute),
    };
    let mut response = respond(outcome, latest.as_deref(), log.as_mut());
    response
        .headers_mut()
        .insert(X_REQUEST_ID.clone(), request_id);
    let status = response.status().as_u16();
    crate::metrics::record_request(
        &ctx.listener,
        route.map(|r| &r.metrics),
        status,
        started.elapsed(),
    );
    if let Some(log) = log.as_mut() {
        log.entry_mut().status = status;
    }
    let (head, body) = response.into_parts();
    Response::from_parts(head, body.with_log(log))
}

/// The request's `X-Request-Id`, generated and added when the client sent none.
///
/// The value is marked sensitive, which only HTTP/2's HPACK reads: it is then sent as a
/// never-indexed literal. Every request has its own id, so indexing it would only churn the
/// connection's dynamic table and make each later lookup walk a long chain of dead ids.
fn ensure_request_id(ids: &headers::RequestIds, headers: &mut http::HeaderMap) -> HeaderValue {
    // One lookup (the entry) whether the client sent an id or not.
    match headers.entry(&X_REQUEST_ID) {
        http::header::Entry::Occupied(mut sent) => {
            let id = sent.get_mut();
            id.set_sensitive(true);
            id.clone()
        }
        http::header::Entry::Vacant(slot) => {
            let mut id = ids.next();
            id.set_sensitive(true);
            slot.insert(id.clone());
            id
        }
    }
}

/// Refuses malformed requests before anything is forwarded (SPEC section 10); `host` is the
/// one the request is routed by (see [`request_host`]).
fn check_request(parts: &request::Parts, host: Option<&HeaderValue>) -> Result<(), ProxyError> {
    if parts.extensions.get::<AmbiguousFraming>().is_some() {
        return Err(ProxyError::BadFraming);
    }
    if parts.extensions.get::<HeadersTooLarge>().is_some() {
        return Err(ProxyError::HeadersTooLarge);
    }
    if headers::has_invalid_host(parts.version, &parts.headers) {
        return Err(ProxyError::BadRequest);
    }
    if host.is_some_and(|h| !headers::is_valid_host(h.as_bytes())) {
        return Err(ProxyError::BadRequest);
    }
    Ok(())
}

/// The access-log entry of a request, before its outcome is known.
fn log_entry(
    ctx: &ConnContext,
    snapshot: &Snapshot,
    parts: &request::Parts,
    route: Option<&Route>,
    host: &str,
    request_id: &HeaderValue,
) -> Entry {
    let request_id = request_id.to_str().unwrap_or("");
    Entry {
        time: std::time::SystemTime::now(),
        client: ctx.client.ip(),
        method: parts.method.clone(),
        text: RequestText::new(host, parts.uri.path(), request_id),
        status: 0,
        bytes: 0,
        duration_ms: 0.0,
        route: route.map(|r| r.name.clone()),
        pool: route.map(|r| snapshot.pools[r.pool].name.clone()),
        upstream: None,
    }
}

/// The route's timeout ended the request while `upstream` had it: an attempt without an
/// answer (`code="error"`), and a failure for outlier detection.
fn timed_out(pool: &Pool, upstream: Option<&Arc<Upstream>>) -> ProxyError {
    if let Some(upstream) = upstream {
        crate::metrics::record_attempt(&pool.name, upstream, None);
        pool.report_outcome(upstream, Some(Reason::Timeout));
    }
    ProxyError::Timeout
}

/// The response for an outcome: the upstream's, streamed, or the proxy's own answer. A
/// failed request is logged with the upstream it was last sent to, `latest`.
fn respond(
    outcome: Result<retry::Forwarded, ProxyError>,
    latest: Option<&Upstream>,
    log: Option<&mut Pending>,
) -> Response<ResponseBody> {
    match outcome {
        Ok(forwarded) => {
            if let Some(log) = log {
                log.entry_mut().upstream = Some(forwarded.in_flight.upstream().id.clone());
            }
            let (mut head, body) = forwarded.response.into_parts();
            let switched = head.status == http::StatusCode::SWITCHING_PROTOCOLS;
            let upgrade = switched
                .then(|| head.headers.get(header::UPGRADE).cloned())
                .flatten();
            // Our HTTP/1.1 client leaves hop-by-hop fields out as it parses (`upstream::h1`).
            if !matches!(body, UpstreamBody::H1(_)) {
                headers::remove_hop_by_hop(&mut head.headers);
            }
            if let Some(protocol) = upgrade {
                // The client must see which protocol the tunnel now speaks (see `tunnel`).
                tunnel::restore_headers(&mut head.headers, protocol);
            }
            let body = ResponseBody::upstream(body, forwarded.conn, forwarded.in_flight);
            Response::from_parts(head, body)
        }
        Err(error) => {
            if let (Some(log), Some(upstream)) = (log, latest) {
                log.entry_mut().upstream = Some(upstream.id.clone());
            }
            tracing::debug!(%error, status = error.status().as_u16(), "answering with an error");
            let mut response = error.to_response();
            if error.closes_connection() {
                // hyper closes an HTTP/1 connection after a response that says so.
                response
                    .headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            response
        }
    }
}

/// The host the client asked for: the target's authority when it has one (HTTP/1
/// absolute-form, where RFC 9112 section 3.2.2 says `Host` is ignored; HTTP/2 `:authority`,
/// which the HTTP/2 server puts in the URI), else `Host`.
fn request_host(parts: &request::Parts) -> Option<HeaderValue> {
    match parts.uri.authority() {
        Some(authority) => authority_host(authority),
        None => parts.headers.get(header::HOST).cloned(),
    }
}

/// `host[:port]` of an authority. Userinfo is dropped: RFC 9110 section 4.2.4 deprecates it
/// and credentials must not leak into `Host`, the routing key or the access log.
fn authority_host(authority: &Authority) -> Option<HeaderValue> {
    let text = authority.as_str();
    let host = text.rsplit_once('@').map_or(text, |(_, host)| host);
    HeaderValue::from_str(host).ok()
}

/// Sends the request to the route's pool; returns the upstream's response head.
#[expect(
    clippy::too_many_arguments,
    reason = "the pieces `handle` already took apart and looked at; bundled, they would move once more"
)]
async fn forward(
    ctx: &ConnContext,
    snapshot: &Snapshot,
    route: &Route,
    mut parts: request::Parts,
    body: ClientBody,
    host: Option<HeaderValue>,
    started: Instant,
    latest: &mut Option<Arc<Upstream>>,
) -> Result<retry::Forwarded, ProxyError> {
    let pool = &snapshot.pools[route.pool];
    if let (Some(max), Some(len)) = (route.max_body, body.size_hint().exact()) {
        if len > max {
            return Err(ProxyError::BodyTooLarge);
        }
    }
    let key = request_hash(pool, &parts, ctx.client.ip());
    let body = RequestBody::new(body, route.max_body);
    let upgrade = tunnel::UpgradeRequest::take(&mut parts, pool.protocol);
    rewrite_request(&mut parts, route, ctx, host, pool.protocol)?;
    if let Some(upgrade) = &upgrade {
        upgrade.restore_headers(&mut parts.headers);
    }
    let candidates = pool.candidates().upstreams.len();
    let replayable = retry::replayable(&parts, &body, route.retries, candidates);
    // Boxed once here, it travels down to the connection as a pointer: each `async fn` on
    // the way would otherwise keep room for it (280 bytes) in the request's future.
    let req = Box::new(Request::from_parts(parts, body));
    // The deadline counts from the request's start, whose clock reading is at hand.
    let mut forwarded = match tokio::time::timeout_at(
        started + route.timeout,
        retry::attempts(pool, route.retries, key, req, replayable, latest),
    )
    .await
    {
        Ok(result) => result?,
        Err(_) => return Err(timed_out(pool, latest.as_ref())),
    };
    if let Some(upgrade) = upgrade {
        if forwarded.response.status() == http::StatusCode::SWITCHING_PROTOCOLS {
            forwarded.conn.upgraded();
            let upstream = hyper::upgrade::on(&mut forwarded.response);
            let idle = tunnel_idle_timeout(snapshot, route);
            let in_flight = forwarded.in_flight.upstream().start_request();
            tokio::spawn(tunnel::run(upgrade, upstream, idle, in_flight));
        }
    }
    Ok(forwarded)
}

/// The route's `tunnel_idle_timeout`, read from the config only when a tunnel opens.
fn tunnel_idle_timeout(snapshot: &Snapshot, route: &Route) -> std::time::Duration {
    snapshot
        .config
        .routes
        .iter()
        .find(|r| *r.name == *route.name)
        .map_or(crate::config::DEFAULT_TUNNEL_IDLE_TIMEOUT, |r| {
            r.tunnel_idle_timeout
        })
}

/// Turns the client's request head into the upstream's (SPEC section 4).
fn rewrite_request(
    parts: &mut request::Parts,
    route: &Route,
    ctx: &ConnContext,
    host: Option<HeaderValue>,
    protocol: Protocol,
) -> Result<(), ProxyError> {
    // `TE: trailers` is the one `TE` HTTP/2 allows, and gRPC servers require it.
    let te_trailers = protocol == Protocol::H2
        && parts
            .headers
            .get(header::TE)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
    headers::remove_hop_by_hop(&mut parts.headers);
    if te_trailers {
        parts
            .headers
            .insert(header::TE, HeaderValue::from_static("trailers"));
    }
    // With an authority in the target, `host` came from it and replaces any client `Host`
    // (RFC 9112 section 3.2.2); the origin-form URI sent upstream no longer carries it.
    // Otherwise `host` is the client's own `Host`, which stays as it is (SPEC section 4).
    if let (Some(_), Some(host)) = (parts.uri.authority(), &host) {
        parts.headers.insert(header::HOST, host.clone());
    }
    headers::add_forwarded(&mut parts.headers, &ctx.client_ip, ctx.proto, host);
    let strip = route.strip_prefix.then_some(route.path_prefix.len());
    if strip.is_some() || parts.uri.scheme().is_some() || parts.uri.authority().is_some() {
        parts.uri = upstream_uri(&parts.uri, strip.unwrap_or(0))?;
    }
    if parts.version == Version::HTTP_2 && protocol == Protocol::Http1 {
        headers::join_cookies(&mut parts.headers);
    }
    // The connection sets HTTP/2 itself for `protocol: h2` pools.
    parts.version = Version::HTTP_11;
    Ok(())
}

/// Origin-form URI for the upstream, with the first `strip` bytes of the path removed.
fn upstream_uri(uri: &Uri, strip: usize) -> Result<Uri, ProxyError> {
    if strip == 0 {
        // An absolute-form target (every HTTP/2 request): its path and query as they are,
        // shared rather than copied.
        if let Some(pq) = uri
            .path_and_query()
            .filter(|pq| pq.as_str().starts_with('/'))
        {
            return Ok(Uri::from(pq.clone()));
        }
    }
    let pq = uri.path_and_query().map_or("/", PathAndQuery::as_str);
    let rest = pq.get(strip..).unwrap_or("");
    let pq = if rest.starts_with('/') {
        PathAndQuery::try_from(rest)
    } else {
        PathAndQuery::try_from(format!("/{rest}"))
    };
    let pq = pq.map_err(|_| ProxyError::BadRequest)?;
    Ok(Uri::from(pq))
}

/// The consistent-hash key of a request, if its pool hashes and the key is present.
fn request_hash(pool: &Pool, parts: &request::Parts, client: IpAddr) -> Option<u64> {
    if pool.strategy != StrategyKind::ConsistentHash {
        return None;
    }
    match &pool.hash_key {
        Some(HashKey::Header(name)) => parts.headers.get(name).map(|v| hash_key(v.as_bytes())),
        Some(HashKey::Cookie(name)) => cookie(parts, name).map(|v| hash_key(v.as_bytes())),
        Some(HashKey::ClientIp) | None => Some(match client {
            IpAddr::V4(ip) => hash_key(&ip.octets()),
            IpAddr::V6(ip) => hash_key(&ip.octets()),
        }),
    }
}

/// The value of cookie `name` in the request's `Cookie` headers.
fn cookie<'a>(parts: &'a request::Parts, name: &str) -> Option<&'a str> {
    parts
        .headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (k, v) = pair.trim().split_once('=')?;
            (k == name).then_some(v)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strip_prefix_keeps_a_leading_slash_and_the_query() {
        let uri: Uri = "/v1/users?x=1".parse().unwrap();
        assert_eq!(upstream_uri(&uri, 4).unwrap(), "/users?x=1");
        assert_eq!(upstream_uri(&uri, 3).unwrap(), "/users?x=1");
        let uri: Uri = "/v1?x".parse().unwrap();
        assert_eq!(upstream_uri(&uri, 3).unwrap(), "/?x");
    }

    #[test]
    fn an_absolute_target_becomes_origin_form() {
        for (target, origin) in [
            ("http://a.example/v1/users?x=1", "/v1/users?x=1"),
            ("http://a.example", "/"),
            ("http://a.example?x", "/?x"),
            ("https://u@a.example:8443/p", "/p"),
        ] {
            let uri: Uri = target.parse().unwrap();
            let upstream = upstream_uri(&uri, 0).unwrap();
            assert_eq!(upstream, origin, "{target}");
            assert!(upstream.scheme().is_none() && upstream.authority().is_none());
        }
        let uri: Uri = "http://a.example/v1/users".parse().unwrap();
        assert_eq!(upstream_uri(&uri, 3).unwrap(), "/users");
    }

    #[test]
    fn request_ids_are_sensitive_so_hpack_never_indexes_them() {
        let ids = headers::RequestIds::new();
        let mut headers = http::HeaderMap::new();
        let id = ensure_request_id(&ids, &mut headers);
        assert!(id.is_sensitive());
        assert!(headers[&X_REQUEST_ID].is_sensitive());
        let mut headers = http::HeaderMap::new();
        headers.insert(X_REQUEST_ID.clone(), HeaderValue::from_static("client-id"));
        let id = ensure_request_id(&ids, &mut headers);
        assert_eq!(id, "client-id");
        assert!(id.is_sensitive() && headers[&X_REQUEST_ID].is_sensitive());
    }

    #[test]
    fn absolute_form_becomes_origin_form() {
        let uri: Uri = "http://a.com/p?q".parse().unwrap();
        assert_eq!(upstream_uri(&uri, 0).unwrap(), "/p?q");
    }
}
