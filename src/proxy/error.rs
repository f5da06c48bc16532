//! [`ProxyError`]: every answer the proxy gives on its own, with its status and body.
//!
//! Who failed decides the status: the client (400, 413), the configuration (404), the pool
//! (503) or the upstream (502, 504). One place maps each to its status code and its short
//! `text/plain` body, so tests, metrics labels and docs agree.

use http::{header, HeaderValue, Response, StatusCode};

use crate::body::ResponseBody;

/// An error the proxy answers itself instead of forwarding a response.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// No route matches the request's host and path.
    #[error("no route matches the request")]
    NoRoute,
    /// The route's pool (named here) has no healthy, non-ejected upstream.
    #[error("pool {0:?} has no healthy upstream")]
    NoHealthyUpstream(std::sync::Arc<str>),
    /// Connecting to the upstream failed (refused, unreachable, connect timeout).
    #[error("upstream connect failed")]
    UpstreamConnect(#[source] crate::upstream::ClientError),
    /// The upstream reset the connection or sent a broken answer.
    #[error("upstream reset or sent a bad response")]
    UpstreamReset(#[source] crate::upstream::ClientError),
    /// The upstream's response head did not arrive within the route's timeout.
    #[error("upstream timed out")]
    Timeout,
    /// The request is malformed or its body broke off.
    #[error("bad request")]
    BadRequest,
    /// `Content-Length` / `Transfer-Encoding` disagree or repeat: a request smuggling shape.
    #[error("ambiguous request framing")]
    BadFraming,
    /// The request body exceeds the route's `max_body`.
    #[error("request body too large")]
    BodyTooLarge,
    /// An HTTP/2 request's header list exceeds the listener's `max_header_bytes` (HTTP/1.1
    /// heads past it are refused before they become requests).
    #[error("request header fields too large")]
    HeadersTooLarge,
}

// === impl ProxyError ===

impl ProxyError {
    /// The status code sent to the client.
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::NoRoute => StatusCode::NOT_FOUND,
            ProxyError::NoHealthyUpstream(_) => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::UpstreamConnect(_) | ProxyError::UpstreamReset(_) => {
                StatusCode::BAD_GATEWAY
            }
            ProxyError::Timeout => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::BadRequest | ProxyError::BadFraming => StatusCode::BAD_REQUEST,
            ProxyError::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        }
    }

    /// The short text body that says which error this is (the response for
    /// `NoHealthyUpstream` also names the pool, see [`ProxyError::to_response`]).
    pub fn body(&self) -> &'static str {
        match self {
            ProxyError::NoRoute => "404 no route matches this host and path\n",
            ProxyError::NoHealthyUpstream(_) => "503 the pool has no healthy upstream\n",
            ProxyError::UpstreamConnect(_) => "502 could not connect to an upstream\n",
            ProxyError::UpstreamReset(_) => {
                "502 the upstream reset the connection or sent a bad response\n"
            }
            ProxyError::Timeout => "504 the upstream did not answer in time\n",
            ProxyError::BadRequest => "400 bad request\n",
            ProxyError::BadFraming => "400 ambiguous Content-Length / Transfer-Encoding framing\n",
            ProxyError::BodyTooLarge => "413 request body larger than this route allows\n",
            ProxyError::HeadersTooLarge => "431 request header fields too large\n",
        }
    }

    /// Whether the client connection must close after this answer: after a malformed
    /// request the next request's start cannot be trusted (NGINX closes after its 400s too).
    pub fn closes_connection(&self) -> bool {
        matches!(self, ProxyError::BadFraming | ProxyError::BadRequest)
    }

    /// The whole response for this error.
    pub fn to_response(&self) -> Response<ResponseBody> {
        let body = match self {
            // Built per error: this one is rare and worth naming the pool for the operator.
            ProxyError::NoHealthyUpstream(pool) => {
                ResponseBody::full(format!("503 pool {pool:?} has no healthy upstream\n"))
            }
            _ => ResponseBody::full(self.body()),
        };
        let mut response = Response::new(body);
        *response.status_mut() = self.status();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        response
    }
}
