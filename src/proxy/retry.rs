//! Attempts and retries across the upstreams of a pool (SPEC section 5).
//!
//! Rules: a request that failed to connect, or that an upstream closed before any byte was
//! written, may go to a different upstream, whatever its method and body, because nothing
//! reached an upstream and we still hold the request. A request with an idempotent method and
//! no body is also retried after a reset or a 502/503 answer; for that case a copy of its head
//! ([`Replay`]) is kept, since the original was consumed by the first attempt. Nothing is sent
//! to the client before the final attempt's head arrives, so no retry ever follows response
//! bytes. Each attempt goes to an upstream not tried before for this request.
//!
//! Each attempt's outcome goes to the pool's outlier detection (`Pool::report_outcome`, a
//! no-op without `outlier`): a connect error, a reset or a 502/503/504 answer is a failure,
//! any other answer a success; a failure of the client's body counts as neither. A response
//! head timeout is reported by the caller, which learns the upstream from `current`.

use std::sync::Arc;

use http::header::{HeaderName, HeaderValue};
use http::{request, Method, Request, Response, StatusCode, Uri, Version};
use http_body::Body;
use hyper::body::Incoming;

use super::ProxyError;
use crate::body::{BodyError, RequestBody, UpstreamBody};
use crate::config::Protocol;
use crate::upstream::client::SendError;
use crate::upstream::health::Reason;
use crate::upstream::{ClientError, Connection, InFlight, Pool, Upstream};

/// A response head from an upstream, with what its body still needs.
#[derive(Debug)]
pub(crate) struct Forwarded {
    /// The upstream's response, body unread.
    pub(crate) response: Response<UpstreamBody>,
    /// The connection the body arrives on; back to the pool once read to its end.
    pub(crate) conn: Connection,
    /// Keeps the upstream's in-flight count until the body is done.
    pub(crate) in_flight: InFlight,
}

/// A copy of a bodyless idempotent request head, to send it again after it was consumed.
///
/// The headers are kept as a plain list, rebuilt into a map only for a retry: names and
/// values are reference-counted, so the copy every such request pays is one allocation
/// where cloning the `HeaderMap` (entries and index table) is two, plus rehashing.
#[derive(Debug)]
pub(crate) struct Replay {
    method: Method,
    uri: Uri,
    version: Version,
    headers: Vec<(HeaderName, HeaderValue)>,
}

impl Replay {
    /// Copies the head when the request may be retried after it was sent; `candidates` is
    /// the pool's candidate count: with fewer than two no other upstream exists to retry on.
    pub(crate) fn capture(
        parts: &request::Parts,
        body: &RequestBody,
        retries: u32,
        candidates: usize,
    ) -> Option<Replay> {
        if retries == 0 || candidates < 2 {
            return None;
        }
        let idempotent = matches!(
            parts.method,
            Method::GET
                | Method::HEAD
                | Method::OPTIONS
                | Method::PUT
                | Method::DELETE
                | Method::TRACE
        );
        (idempotent && body.is_end_stream()).then(|| Replay {
            method: parts.method.clone(),
            uri: parts.uri.clone(),
            version: parts.version,
            headers: parts
                .headers
                .iter()
                .map(|(name, value)| (name.clone(), value.clone()))
                .collect(),
        })
    }

    fn request(&self) -> Request<RequestBody> {
        let mut req = Request::new(RequestBody::empty());
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = self.uri.clone();
        *req.version_mut() = self.version;
        let headers = req.headers_mut();
        headers.reserve(self.headers.len());
        for (name, value) in &self.headers {
            // `append` keeps repeated fields, in their order.
            headers.append(name.clone(), value.clone());
        }
        req
    }
}

/// Most upstreams one request may try (config validation bounds `retries` below this).
const MAX_ATTEMPTS: usize = 16;

/// Tries upstreams of `pool` until one answers or the rules above say stop. While an attempt
/// waits for its answer, `current` holds its upstream when the pool has outlier detection.
pub(crate) async fn attempts(
    pool: &Pool,
    retries: u32,
    key: Option<u64>,
    req: Box<Request<RequestBody>>,
    replay: Option<Replay>,
    current: &mut Option<Arc<Upstream>>,
) -> Result<Forwarded, ProxyError> {
    let mut req = Some(req);
    // Identities (addresses of the shared `Upstream`s) of those tried; `usize` keeps the future `Send`.
    let mut tried = [0usize; MAX_ATTEMPTS];
    let attempts = (retries as usize + 1).min(MAX_ATTEMPTS);
    let mut last_error = None;
    let mut last_answer: Option<Forwarded> = None;
    for attempt in 0..attempts {
        let Some(upstream) = pick(pool, key, &tried[..attempt]) else {
            break;
        };
        let Some(request) = req
            .take()
            .or_else(|| replay.as_ref().map(|r| Box::new(r.request())))
        else {
            break;
        };
        tried[attempt] = Arc::as_ptr(&upstream) as usize;
        if attempt > 0 {
            pool.metrics.retry();
            tracing::debug!(pool = %pool.name, upstream = %upstream.id, attempt, "retrying on another upstream");
        }
        let in_flight = upstream.start_request();
        if pool.outlier.is_some() {
            *current = Some(upstream.clone());
        }
        let result = exchange(&upstream, pool, request).await;
        *current = None;
        let status = result
            .as_ref()
            .ok()
            .map(|(response, _)| response.status().as_u16());
        crate::metrics::record_attempt(&pool.name, &upstream, status);
        match result {
            Ok((response, conn)) => {
                let forwarded = Forwarded {
                    response,
                    conn,
                    in_flight,
                };
                let status = forwarded.response.status();
                let failed = matches!(status.as_u16(), 502..=504);
                pool.report_outcome(&upstream, failed.then(|| Reason::Status(status.as_u16())));
                let retryable =
                    status == StatusCode::BAD_GATEWAY || status == StatusCode::SERVICE_UNAVAILABLE;
                if retryable && replay.is_some() && attempt + 1 < attempts {
                    last_answer = Some(forwarded);
                    continue;
                }
                return Ok(forwarded);
            }
            Err(Failure::Connect(error, request)) => {
                tracing::debug!(upstream = %upstream.id, %error, "upstream connect failed");
                pool.report_outcome(&upstream, Some(Reason::from_client_error(&error)));
                req = Some(request);
                last_error = Some(ProxyError::UpstreamConnect(error));
            }
            Err(Failure::Exchange(error)) => {
                tracing::debug!(upstream = %upstream.id, error = %crate::error_chain(&error), "upstream exchange failed");
                let reason = Reason::from_client_error(&error);
                let error = classify(error);
                if matches!(error, ProxyError::UpstreamReset(_)) {
                    pool.report_outcome(&upstream, Some(reason));
                }
                let stop = replay.is_none() || !matches!(error, ProxyError::UpstreamReset(_));
                last_error = Some(error);
                if stop {
                    break;
                }
            }
        }
    }
    match (last_answer, last_error) {
        // An upstream's own 502/503 says more than our failure to reach the next one.
        (Some(answer), _) => Ok(answer),
        (None, Some(error)) => Err(error),
        (None, None) => Err(ProxyError::NoHealthyUpstream(pool.name.clone())),
    }
}

/// The balancer's choice, or the next candidate after it not yet tried by this request.
fn pick(pool: &Pool, key: Option<u64>, tried: &[usize]) -> Option<Arc<Upstream>> {
    let candidates = pool.candidates();
    let upstreams = &candidates.upstreams;
    let first = candidates
        .balancer
        .pick(key, |i| upstreams[i].in_flight())?;
    let n = upstreams.len();
    (0..n)
        .map(|step| &upstreams[(first + step) % n])
        .find(|u| !tried.contains(&(Arc::as_ptr(u) as usize)))
        .cloned()
}

enum Failure {
    /// Nothing reached the upstream; the request comes back for another try.
    Connect(ClientError, Box<Request<RequestBody>>),
    /// The request may have reached the upstream.
    Exchange(ClientError),
}

/// One request on one upstream: our own HTTP/1.1 client for `http1` pools, hyper's for
/// HTTP/2 pools and upgrade requests (tunnels need `hyper::upgrade::on`).
async fn exchange(
    upstream: &Arc<Upstream>,
    pool: &Pool,
    req: Box<Request<RequestBody>>,
) -> Result<(Response<UpstreamBody>, Connection), Failure> {
    if pool.protocol == Protocol::Http1 && !req.headers().contains_key(http::header::UPGRADE) {
        return exchange_h1(upstream, pool, req).await;
    }
    exchange_hyper(upstream, pool, req)
        .await
        .map(|(response, conn)| (response.map(UpstreamBody::Hyper), conn))
}

/// [`exchange`] on our own HTTP/1.1 client: the same retry rules, the socket in the body.
async fn exchange_h1(
    upstream: &Arc<Upstream>,
    pool: &Pool,
    req: Box<Request<RequestBody>>,
) -> Result<(Response<UpstreamBody>, Connection), Failure> {
    let detached = || Connection::detached(upstream.clone());
    let pooled = upstream.h1_idle.pop();
    let reused = pooled.is_some();
    let conn = match pooled {
        Some(conn) => conn,
        // Boxed for the size of the request's future, as in `Connector::checkout`.
        None => match Box::pin(pool.connector.open_h1(upstream)).await {
            Ok(conn) => conn,
            Err(error) => return Err(Failure::Connect(error, req)),
        },
    };
    let req = match conn.send(req, upstream).await {
        Ok(response) => return Ok((response.map(UpstreamBody::H1), detached())),
        Err(SendError::Failed(error)) => return Err(Failure::Exchange(error)),
        Err(SendError::NotSent(req)) if reused => req,
        Err(SendError::NotSent(req)) => return Err(Failure::Connect(ClientError::Closed, req)),
    };
    // The pooled connection was closed as we used it: not a retry, a fresh connection.
    let conn = match Box::pin(pool.connector.open_h1(upstream)).await {
        Ok(conn) => conn,
        Err(error) => return Err(Failure::Connect(error, req)),
    };
    match conn.send(req, upstream).await {
        Ok(response) => Ok((response.map(UpstreamBody::H1), detached())),
        Err(SendError::Failed(error)) => Err(Failure::Exchange(error)),
        Err(SendError::NotSent(req)) => Err(Failure::Connect(ClientError::Closed, req)),
    }
}

/// [`exchange`] on hyper's client.
async fn exchange_hyper(
    upstream: &Arc<Upstream>,
    pool: &Pool,
    req: Box<Request<RequestBody>>,
) -> Result<(Response<Incoming>, Connection), Failure> {
    let mut conn = match pool.connector.checkout(upstream).await {
        Ok(conn) => conn,
        Err(error) => return Err(Failure::Connect(error, req)),
    };
    let req = match conn.send(*req).await {
        Ok(response) => return Ok((response, conn)),
        Err(SendError::Failed(error)) => return Err(Failure::Exchange(error)),
        // The upstream closed this pooled connection just before we used it: the request
        // was not written, so a fresh connection to the same upstream is not a retry.
        Err(SendError::NotSent(req)) => req,
    };
    // Boxed for the size of the request's future, as in `Connector::checkout`.
    let mut conn = match Box::pin(pool.connector.open(upstream)).await {
        Ok(conn) => conn,
        Err(error) => return Err(Failure::Connect(error, req)),
    };
    match conn.send(*req).await {
        Ok(response) => Ok((response, conn)),
        Err(SendError::Failed(error)) => Err(Failure::Exchange(error)),
        Err(SendError::NotSent(req)) => Err(Failure::Connect(ClientError::Closed, req)),
    }
}

/// Who failed: the client's body (400/413) or the upstream (502).
fn classify(error: ClientError) -> ProxyError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&error);
    while let Some(err) = source {
        if let Some(body) = err.downcast_ref::<BodyError>() {
            return match body {
                BodyError::TooLarge { .. } => ProxyError::BodyTooLarge,
                BodyError::Client(_) => ProxyError::BadRequest,
            };
        }
        source = err.source();
    }
    ProxyError::UpstreamReset(error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replay_sends_the_same_head_with_repeated_fields_in_order() {
        let (parts, ()) = Request::get("http://a.example/p?q=1")
            .header("x-a", "1")
            .header("cookie", "a=1")
            .header("cookie", "b=2")
            .header("x-b", "2")
            .body(())
            .unwrap()
            .into_parts();
        let replay = Replay::capture(&parts, &RequestBody::empty(), 1, 2).expect("a bodyless GET");
        let again = replay.request();
        assert_eq!(again.method(), Method::GET);
        assert_eq!(again.uri(), &parts.uri);
        assert_eq!(again.version(), parts.version);
        assert_eq!(again.headers(), &parts.headers);
        let cookies: Vec<_> = again.headers().get_all("cookie").iter().collect();
        assert_eq!(cookies, ["a=1", "b=2"]);
    }

    #[test]
    fn nothing_is_copied_when_no_retry_can_follow() {
        let (post, ()) = Request::post("/").body(()).unwrap().into_parts();
        let (get, ()) = Request::get("/").body(()).unwrap().into_parts();
        let empty = RequestBody::empty();
        assert!(
            Replay::capture(&post, &empty, 1, 2).is_none(),
            "not idempotent"
        );
        assert!(Replay::capture(&get, &empty, 0, 2).is_none(), "no retries");
        assert!(
            Replay::capture(&get, &empty, 1, 1).is_none(),
            "no other upstream"
        );
    }
}
