//! Attempts and retries across the upstreams of a pool (SPEC section 5).
//!
//! Rules: a request that failed to connect, or that an upstream closed before any byte was
//! written, may go to a different upstream, whatever its method and body, because nothing
//! reached an upstream and we still hold the request. A request with an idempotent method and
//! no body ([`replayable`]) is also retried after a reset or a 502/503 answer. Our HTTP/1.1
//! client only borrows the request, so it is still here to send again; hyper's client takes
//! it, so for HTTP/2 pools and upgrades a copy of its head goes out instead while another
//! attempt may follow. Nothing is sent to the client before the final attempt's head arrives,
//! so no retry ever follows response bytes. Each attempt goes to an upstream not tried before
//! for this request.
//!
//! Each attempt's outcome goes to the pool's outlier detection (`Pool::report_outcome`, a
//! no-op without `outlier`): a connect error, a reset or a 502/503/504 answer is a failure,
//! any other answer a success; a failure of the client's body counts as neither. A response
//! head timeout is reported by the caller, which learns the upstream from `current`.

use std::sync::Arc;

use http::{request, Method, Request, Response, StatusCode};
use http_body::Body;
use hyper::body::Incoming;

use super::ProxyError;
use crate::balance::StrategyKind;
use crate::body::{BodyError, RequestBody, UpstreamBody};
use crate::config::Protocol;
use crate::upstream::client::SendError;
use crate::upstream::h1::SendError as H1SendError;
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

/// Whether the request may be sent again after it reached an upstream (a reset, a 502/503
/// answer): an idempotent method, no body, retries configured and another upstream to try;
/// `candidates` is the pool's candidate count.
pub(crate) fn replayable(
    parts: &request::Parts,
    body: &RequestBody,
    retries: u32,
    candidates: usize,
) -> bool {
    let idempotent = matches!(
        parts.method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    );
    retries > 0 && candidates >= 2 && idempotent && body.is_end_stream()
}

/// A copy of a bodyless request's head, for hyper's client, which takes what it sends.
fn copy_head(req: &Request<RequestBody>) -> Request<RequestBody> {
    let mut copy = Request::new(RequestBody::empty());
    *copy.method_mut() = req.method().clone();
    *copy.uri_mut() = req.uri().clone();
    *copy.version_mut() = req.version();
    *copy.headers_mut() = req.headers().clone();
    copy
}

/// Most upstreams one request may try (config validation bounds `retries` below this).
const MAX_ATTEMPTS: usize = 16;

/// Tries upstreams of `pool` until one answers or the rules above say stop. `latest` holds the
/// upstream of the latest attempt: the one still waiting when the route's timeout ends this
/// future, or the last one that failed.
pub(crate) async fn attempts(
    pool: &Pool,
    retries: u32,
    key: Option<u64>,
    req: Box<Request<RequestBody>>,
    replayable: bool,
    latest: &mut Option<Arc<Upstream>>,
) -> Result<Forwarded, ProxyError> {
    // `None` once hyper's client took it with no copy kept: no attempt can follow then.
    let mut req = Some(req);
    // Identities of those tried (see `identity`); `usize` keeps the future `Send`.
    let mut tried = [0usize; MAX_ATTEMPTS];
    let attempts = (retries as usize + 1).min(MAX_ATTEMPTS);
    let mut last_error = None;
    let mut last_answer: Option<Forwarded> = None;
    for attempt in 0..attempts {
        let Some(upstream) = pick(pool, key, &tried[..attempt]) else {
            break;
        };
        let Some(request) = req.as_mut() else {
            break;
        };
        tried[attempt] = identity(&upstream);
        if attempt > 0 {
            pool.metrics.retry();
            tracing::debug!(pool = %pool.name, upstream = %upstream.id, attempt, "retrying on another upstream");
        }
        let in_flight = upstream.start_request();
        // Kept for the caller (no clone: the attempt borrows it from there).
        let upstream = &*latest.insert(upstream);
        // After a reset or a 502/503 this request may go out again.
        let may_resend = replayable && attempt + 1 < attempts;
        let result = if pool.protocol == Protocol::Http1
            && !request.headers().contains_key(http::header::UPGRADE)
        {
            exchange_h1(upstream, pool, request).await
        } else {
            let sent = if may_resend {
                Box::new(copy_head(request))
            } else {
                req.take().expect("checked at the top of the loop")
            };
            exchange_hyper(upstream, pool, sent)
                .await
                .map(|(response, conn)| (response.map(UpstreamBody::Hyper), conn))
        };
        let status = result
            .as_ref()
            .ok()
            .map(|(response, _)| response.status().as_u16());
        crate::metrics::record_attempt(&pool.name, upstream, status);
        match result {
            Ok((response, conn)) => {
                let forwarded = Forwarded {
                    response,
                    conn,
                    in_flight,
                };
                let status = forwarded.response.status();
                let failed = matches!(status.as_u16(), 502..=504);
                pool.report_outcome(upstream, failed.then(|| Reason::Status(status.as_u16())));
                let retryable =
                    status == StatusCode::BAD_GATEWAY || status == StatusCode::SERVICE_UNAVAILABLE;
                if retryable && may_resend {
                    last_answer = Some(forwarded);
                    continue;
                }
                return Ok(forwarded);
            }
            Err(Failure::Connect(error, returned)) => {
                tracing::debug!(upstream = %upstream.id, %error, "upstream connect failed");
                pool.report_outcome(upstream, Some(Reason::from_client_error(&error)));
                // Hyper's client gives back what it took; a copy is dropped, the original kept.
                if req.is_none() {
                    req = returned;
                }
                last_error = Some(ProxyError::UpstreamConnect(error));
            }
            Err(Failure::Exchange(error)) => {
                tracing::debug!(upstream = %upstream.id, error = %crate::error_chain(&error), "upstream exchange failed");
                let reason = Reason::from_client_error(&error);
                let error = classify(error);
                if matches!(error, ProxyError::UpstreamReset(_)) {
                    pool.report_outcome(upstream, Some(reason));
                }
                let stop = !may_resend || !matches!(error, ProxyError::UpstreamReset(_));
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

/// Which upstream `upstream` is, for `tried`: its shared state (the same across a reload
/// that re-weighs it).
fn identity(upstream: &Upstream) -> usize {
    Arc::as_ptr(&upstream.state) as usize
}

/// The balancer's choice, or the next candidate after it not yet tried by this request.
///
/// Under `round_robin` and `weighted`, a retry goes on from the candidate that failed
/// instead of asking the balancer again, as NGINX moves to the next peer: another pick
/// would move the shared counter a step, and with one dead upstream every request would
/// then try it first.
fn pick(pool: &Pool, key: Option<u64>, tried: &[usize]) -> Option<Arc<Upstream>> {
    let candidates = pool.candidates();
    let upstreams = &candidates.upstreams;
    let n = upstreams.len();
    let after_failed = match (tried.last(), pool.strategy) {
        (Some(&last), StrategyKind::RoundRobin | StrategyKind::Weighted) => upstreams
            .iter()
            .position(|u| identity(u) == last)
            .map(|i| (i + 1) % n),
        _ => None,
    };
    let first = match after_failed {
        Some(next) => next,
        None => candidates
            .balancer
            .pick(key, |i| upstreams[i].in_flight())?,
    };
    (0..n)
        .map(|step| &upstreams[(first + step) % n])
        .find(|u| !tried.contains(&identity(u)))
        .cloned()
}

enum Failure {
    /// Nothing reached the upstream; the request can go to another. Hyper's client gives
    /// back the request it took; ours never took it (`None`).
    Connect(ClientError, Option<Box<Request<RequestBody>>>),
    /// The request may have reached the upstream.
    Exchange(ClientError),
}

/// One request on one upstream with our own HTTP/1.1 client, which borrows the request: it
/// is still the caller's afterwards, its body taken only once bytes of it were sent.
async fn exchange_h1(
    upstream: &Arc<Upstream>,
    pool: &Pool,
    req: &mut Request<RequestBody>,
) -> Result<(Response<UpstreamBody>, Connection), Failure> {
    let detached = || Connection::detached(upstream.clone());
    let pooled = upstream.state.h1_idle.pop();
    let reused = pooled.is_some();
    let conn = match pooled {
        Some(conn) => conn,
        // Boxed for the size of the request's future, as in `Connector::checkout`.
        None => match Box::pin(pool.connector.open_h1(upstream)).await {
            Ok(conn) => conn,
            Err(error) => return Err(Failure::Connect(error, None)),
        },
    };
    match conn.send(req, upstream).await {
        Ok(response) => return Ok((response.map(UpstreamBody::H1), detached())),
        Err(H1SendError::Failed(error)) => return Err(Failure::Exchange(error)),
        Err(H1SendError::NotSent) if reused => {}
        Err(H1SendError::NotSent) => return Err(Failure::Connect(ClientError::Closed, None)),
    }
    // The pooled connection was closed as we used it: not a retry, a fresh connection.
    let conn = match Box::pin(pool.connector.open_h1(upstream)).await {
        Ok(conn) => conn,
        Err(error) => return Err(Failure::Connect(error, None)),
    };
    match conn.send(req, upstream).await {
        Ok(response) => Ok((response.map(UpstreamBody::H1), detached())),
        Err(H1SendError::Failed(error)) => Err(Failure::Exchange(error)),
        Err(H1SendError::NotSent) => Err(Failure::Connect(ClientError::Closed, None)),
    }
}

/// One request on one upstream with hyper's client (HTTP/2 pools, upgrades), which takes it.
async fn exchange_hyper(
    upstream: &Arc<Upstream>,
    pool: &Pool,
    req: Box<Request<RequestBody>>,
) -> Result<(Response<Incoming>, Connection), Failure> {
    let mut conn = match pool.connector.checkout(upstream).await {
        Ok(conn) => conn,
        Err(error) => return Err(Failure::Connect(error, Some(req))),
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
        Err(error) => return Err(Failure::Connect(error, Some(req))),
    };
    match conn.send(*req).await {
        Ok(response) => Ok((response, conn)),
        Err(SendError::Failed(error)) => Err(Failure::Exchange(error)),
        Err(SendError::NotSent(req)) => Err(Failure::Connect(ClientError::Closed, Some(req))),
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
    fn a_copied_head_has_the_same_fields_repeated_in_order() {
        let req = Request::get("http://a.example/p?q=1")
            .header("x-a", "1")
            .header("cookie", "a=1")
            .header("cookie", "b=2")
            .header("x-b", "2")
            .body(RequestBody::empty())
            .unwrap();
        let again = copy_head(&req);
        assert_eq!(again.method(), Method::GET);
        assert_eq!(again.uri(), req.uri());
        assert_eq!(again.version(), req.version());
        assert_eq!(again.headers(), req.headers());
        let cookies: Vec<_> = again.headers().get_all("cookie").iter().collect();
        assert_eq!(cookies, ["a=1", "b=2"]);
    }

    #[test]
    fn only_bodyless_idempotent_requests_with_somewhere_to_go_are_replayable() {
        let (post, ()) = Request::post("/").body(()).unwrap().into_parts();
        let (get, ()) = Request::get("/").body(()).unwrap().into_parts();
        let empty = RequestBody::empty();
        assert!(replayable(&get, &empty, 1, 2));
        assert!(!replayable(&post, &empty, 1, 2), "not idempotent");
        assert!(!replayable(&get, &empty, 0, 2), "no retries");
        assert!(!replayable(&get, &empty, 1, 1), "no other upstream");
    }
}
