//! A minimal etcd v3 client over its HTTP/JSON gateway: list a prefix, watch it.
//!
//! etcd serves its gRPC API as JSON on the client port (`POST /v3/kv/range`,
//! `POST /v3/watch`); keys and values are base64, 64-bit integers are strings. A watch answers
//! with a chunked body of JSON objects, `{"result": {...}}` one after another, for as long as
//! it runs. Plaintext HTTP/1.1 through hyper's client connection, one connection per call; a
//! call tries each endpoint in turn, starting with the last one that worked.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use bytes::Bytes;
use http::header::{CONTENT_TYPE, HOST};
use http::{Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use tokio::net::TcpStream;

/// Deadline for connecting to an endpoint and, for a range, for the whole answer.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest range answer or single watch message read (a bound on memory, not a real limit).
pub const MAX_MESSAGE: usize = 64 * 1024 * 1024;

/// Why an etcd call failed.
#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    /// No endpoint is a usable `http://host:port` URL.
    #[error("no usable endpoint: expected http://host:port URLs")]
    NoEndpoint,
    /// The TCP connection could not be opened.
    #[error("{endpoint}: cannot connect")]
    Connect {
        /// The endpoint's URL.
        endpoint: Arc<str>,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// No (complete) answer within [`REQUEST_TIMEOUT`].
    #[error("{endpoint}: no answer within {REQUEST_TIMEOUT:?}")]
    Timeout {
        /// The endpoint's URL.
        endpoint: Arc<str>,
    },
    /// The HTTP exchange failed (reset, bad HTTP).
    #[error("{endpoint}: HTTP exchange failed")]
    Http {
        /// The endpoint's URL.
        endpoint: Arc<str>,
        /// Why.
        #[source]
        source: hyper::Error,
    },
    /// An answer or a watch message was larger than [`MAX_MESSAGE`].
    #[error("{endpoint}: answer larger than {MAX_MESSAGE} bytes")]
    TooLarge {
        /// The endpoint's URL.
        endpoint: Arc<str>,
    },
    /// etcd answered with an error.
    #[error("{endpoint}: answered {status}: {body}")]
    Status {
        /// The endpoint's URL.
        endpoint: Arc<str>,
        /// The HTTP status.
        status: StatusCode,
        /// The start of its body.
        body: String,
    },
    /// The answer was not the JSON expected.
    #[error("{endpoint}: unexpected answer")]
    Decode {
        /// The endpoint's URL.
        endpoint: Arc<str>,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
    /// The watch ended (etcd went away or closed it).
    #[error("{endpoint}: the watch ended")]
    WatchClosed {
        /// The endpoint's URL.
        endpoint: Arc<str>,
    },
    /// etcd cancelled the watch (its start revision was compacted, or an error).
    #[error("{endpoint}: the watch was cancelled: {reason}")]
    WatchCanceled {
        /// The endpoint's URL.
        endpoint: Arc<str>,
        /// etcd's reason.
        reason: String,
    },
}

/// One key and its value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    /// The key (not valid UTF-8: replaced characters; used in logs and as identity).
    pub key: String,
    /// The raw value.
    pub value: Vec<u8>,
}

/// Every key under a prefix at one revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listing {
    /// The store revision the listing was read at.
    pub revision: i64,
    /// The keys, in key order.
    pub kvs: Vec<KeyValue>,
}

/// One change under a watched prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The key was created or changed.
    Put(KeyValue),
    /// The key was deleted.
    Delete(String),
}

#[derive(Debug, Clone)]
struct Endpoint {
    url: Arc<str>,
    /// `host:port`: what to connect to and the `Host` header.
    authority: String,
    /// The URL's path without a trailing `/` (usually empty).
    base: String,
}

/// The configured endpoints of one etcd cluster.
#[derive(Debug)]
pub struct Gateway {
    endpoints: Vec<Endpoint>,
    /// Where the next call starts: the last endpoint that answered.
    next: usize,
}

// === impl Gateway ===

impl Gateway {
    /// A client for `endpoints`; URLs that are not `http://host[:port]` are left out (with
    /// an error logged). Validation already refuses them.
    pub fn new(endpoints: &[String]) -> Gateway {
        let endpoints = endpoints
            .iter()
            .filter_map(|url| {
                let endpoint = endpoint(url);
                if endpoint.is_none() {
                    tracing::error!(endpoint = %url, "etcd endpoint is not an http://host:port URL; skipped");
                }
                endpoint
            })
            .collect();
        Gateway { endpoints, next: 0 }
    }

    /// Every key under `prefix`, trying each endpoint once.
    pub async fn range(&mut self, prefix: &[u8]) -> Result<Listing, EtcdError> {
        let body = serde_json::json!({
            "key": BASE64.encode(prefix),
            "range_end": BASE64.encode(range_end(prefix)),
        });
        let body = Bytes::from(body.to_string());
        let mut last = EtcdError::NoEndpoint;
        for endpoint in self.rotation() {
            let call = async {
                let (response, _conn) = post(&endpoint, "/v3/kv/range", body.clone()).await?;
                let bytes = Limited::new(response.into_body(), MAX_MESSAGE)
                    .collect()
                    .await
                    .map_err(|source| limited_error(&endpoint.url, source))?
                    .to_bytes();
                let answer: RangeAnswer =
                    serde_json::from_slice(&bytes).map_err(|source| EtcdError::Decode {
                        endpoint: endpoint.url.clone(),
                        source,
                    })?;
                answer.listing()
            };
            match tokio::time::timeout(REQUEST_TIMEOUT, call).await {
                Ok(Ok(listing)) => return Ok(self.answered(&endpoint, listing)),
                Ok(Err(error)) => last = error,
                Err(_) => {
                    last = EtcdError::Timeout {
                        endpoint: endpoint.url.clone(),
                    }
                }
            }
            tracing::debug!(error = %crate::error_chain(&last), "etcd range failed on this endpoint");
        }
        Err(last)
    }

    /// Watches every key under `prefix` from `revision` on, trying each endpoint once.
    pub async fn watch(&mut self, prefix: &[u8], revision: i64) -> Result<Watch, EtcdError> {
        let body = serde_json::json!({
            "create_request": {
                "key": BASE64.encode(prefix),
                "range_end": BASE64.encode(range_end(prefix)),
                "start_revision": revision.to_string(),
            }
        });
        let body = Bytes::from(body.to_string());
        let mut last = EtcdError::NoEndpoint;
        for endpoint in self.rotation() {
            let call = post(&endpoint, "/v3/watch", body.clone());
            match tokio::time::timeout(REQUEST_TIMEOUT, call).await {
                Ok(Ok((response, conn))) => {
                    let watch = Watch {
                        endpoint: endpoint.url.clone(),
                        body: response.into_body(),
                        buf: Vec::new(),
                        _conn: conn,
                    };
                    return Ok(self.answered(&endpoint, watch));
                }
                Ok(Err(error)) => last = error,
                Err(_) => {
                    last = EtcdError::Timeout {
                        endpoint: endpoint.url.clone(),
                    }
                }
            }
            tracing::debug!(error = %crate::error_chain(&last), "etcd watch failed on this endpoint");
        }
        Err(last)
    }

    /// The endpoints, starting with the one that answered last.
    fn rotation(&self) -> Vec<Endpoint> {
        let n = self.endpoints.len();
        (0..n)
            .map(|i| self.endpoints[(self.next + i) % n].clone())
            .collect()
    }

    /// Remembers `endpoint` as the one to start with next time.
    fn answered<T>(&mut self, endpoint: &Endpoint, value: T) -> T {
        if let Some(i) = self.endpoints.iter().position(|e| e.url == endpoint.url) {
            self.next = i;
        }
        value
    }
}

/// An open watch: [`Watch::next`] yields its changes as they come.
#[derive(Debug)]
pub struct Watch {
    endpoint: Arc<str>,
    body: Incoming,
    /// Bytes received but not yet parsed (the start of the next message).
    buf: Vec<u8>,
    /// Its connection, closed when the watch is dropped (a cancelled or replaced watcher).
    _conn: ConnTask,
}

/// The task driving one etcd connection; aborted on drop, so no connection outlives its call.
#[derive(Debug)]
struct ConnTask(tokio::task::JoinHandle<()>);

impl Drop for ConnTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

// === impl Watch ===

impl Watch {
    /// The next batch of changes (empty for the watch's confirmation or a progress note);
    /// an error when the watch ends.
    pub async fn next(&mut self) -> Result<Vec<Event>, EtcdError> {
        loop {
            if let Some(message) = self.take()? {
                return message.events(&self.endpoint);
            }
            let frame = match self.body.frame().await {
                None => {
                    return Err(EtcdError::WatchClosed {
                        endpoint: self.endpoint.clone(),
                    })
                }
                Some(Err(source)) => return Err(http_error(&self.endpoint, source)),
                Some(Ok(frame)) => frame,
            };
            if let Ok(data) = frame.into_data() {
                if self.buf.len() + data.len() > MAX_MESSAGE {
                    return Err(EtcdError::TooLarge {
                        endpoint: self.endpoint.clone(),
                    });
                }
                self.buf.extend_from_slice(&data);
            }
        }
    }

    /// The first complete message in `buf`, removed from it; `None` until one is complete.
    fn take(&mut self) -> Result<Option<WatchMessage>, EtcdError> {
        let mut messages =
            serde_json::Deserializer::from_slice(&self.buf).into_iter::<WatchMessage>();
        match messages.next() {
            Some(Ok(message)) => {
                let used = messages.byte_offset();
                self.buf.drain(..used);
                Ok(Some(message))
            }
            Some(Err(e)) if e.is_eof() => Ok(None),
            Some(Err(source)) => Err(EtcdError::Decode {
                endpoint: self.endpoint.clone(),
                source,
            }),
            None => {
                self.buf.clear();
                Ok(None)
            }
        }
    }
}

/// Whether `url` is an endpoint the client can use: `http://host[:port][/path]`, with a
/// host, no user info and, when given, a port from 1 to 65535. Config validation asks this.
pub fn is_endpoint(url: &str) -> bool {
    endpoint(url).is_some()
}

/// `http://host:port[/path]` as an endpoint; `None` for anything else.
fn endpoint(url: &str) -> Option<Endpoint> {
    let uri: Uri = url.parse().ok()?;
    if uri.scheme_str() != Some("http") {
        return None;
    }
    let authority = uri.authority()?;
    let (text, host) = (authority.as_str(), authority.host());
    // `Uri` accepts an empty host, user info and a port that is no u16 (`port_u16` is then
    // `None`): none of them can be connected to as written.
    if host.is_empty() || text.contains('@') {
        return None;
    }
    let port = match text.strip_prefix(host)? {
        "" => 80,
        rest => rest
            .strip_prefix(':')?
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)?,
    };
    Some(Endpoint {
        url: Arc::from(url),
        authority: format!("{host}:{port}"),
        base: uri.path().trim_end_matches('/').to_owned(),
    })
}

/// The end of the key range of `prefix` (exclusive): the prefix with its last byte below
/// 0xff incremented and what follows dropped; `"\0"` (every key) for an all-0xff prefix.
pub fn range_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// Sends `POST path` with a JSON `body` to `endpoint`; the answer when its status is 200,
/// with the connection's task (keep it until the body is read).
async fn post(
    endpoint: &Endpoint,
    path: &str,
    body: Bytes,
) -> Result<(http::Response<Incoming>, ConnTask), EtcdError> {
    let stream = TcpStream::connect(&endpoint.authority)
        .await
        .map_err(|source| EtcdError::Connect {
            endpoint: endpoint.url.clone(),
            source,
        })?;
    let _ = stream.set_nodelay(true);
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|source| http_error(&endpoint.url, source))?;
    let conn = ConnTask(tokio::spawn(async move {
        if let Err(error) = conn.await {
            tracing::debug!(%error, "etcd connection ended");
        }
    }));
    let request = Request::post(format!("{}{path}", endpoint.base))
        .header(HOST, endpoint.authority.as_str())
        .header(CONTENT_TYPE, "application/json")
        .body(Full::new(body))
        .expect("a parsed URL's path and authority make a valid request");
    let response = sender
        .send_request(request)
        .await
        .map_err(|source| http_error(&endpoint.url, source))?;
    if response.status() != StatusCode::OK {
        let status = response.status();
        let bytes = Limited::new(response.into_body(), 4096)
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        return Err(EtcdError::Status {
            endpoint: endpoint.url.clone(),
            status,
            body: String::from_utf8_lossy(&bytes).trim().to_owned(),
        });
    }
    Ok((response, conn))
}

fn http_error(endpoint: &Arc<str>, source: hyper::Error) -> EtcdError {
    EtcdError::Http {
        endpoint: endpoint.clone(),
        source,
    }
}

/// The error of reading a body under `Limited`: the connection's, or the limit.
fn limited_error(
    endpoint: &Arc<str>,
    error: Box<dyn std::error::Error + Send + Sync>,
) -> EtcdError {
    match error.downcast::<hyper::Error>() {
        Ok(source) => http_error(endpoint, *source),
        Err(_) => EtcdError::TooLarge {
            endpoint: endpoint.clone(),
        },
    }
}

// The gateway's JSON (grpc-gateway: int64 as strings, default values left out).

#[derive(Debug, Deserialize)]
struct RangeAnswer {
    #[serde(default)]
    header: Header,
    #[serde(default)]
    kvs: Vec<Kv>,
}

impl RangeAnswer {
    fn listing(self) -> Result<Listing, EtcdError> {
        Ok(Listing {
            revision: self.header.revision,
            kvs: self.kvs.into_iter().map(Kv::decode).collect(),
        })
    }
}

#[derive(Debug, Default, Deserialize)]
struct Header {
    #[serde(default, deserialize_with = "int64")]
    revision: i64,
}

#[derive(Debug, Deserialize)]
struct Kv {
    #[serde(default)]
    key: String,
    #[serde(default)]
    value: String,
}

impl Kv {
    /// Decodes base64 key and value; an undecodable one becomes empty (and then a bad value).
    fn decode(self) -> KeyValue {
        let key = BASE64.decode(&self.key).unwrap_or_default();
        KeyValue {
            key: String::from_utf8_lossy(&key).into_owned(),
            value: BASE64.decode(&self.value).unwrap_or_default(),
        }
    }
}

#[derive(Debug, Deserialize)]
struct WatchMessage {
    #[serde(default)]
    result: Option<WatchResult>,
    #[serde(default)]
    error: Option<serde_json::Value>,
}

#[derive(Debug, Deserialize)]
struct WatchResult {
    #[serde(default)]
    canceled: bool,
    #[serde(default)]
    cancel_reason: String,
    #[serde(default, deserialize_with = "int64")]
    compact_revision: i64,
    #[serde(default)]
    events: Vec<WatchEvent>,
}

#[derive(Debug, Deserialize)]
struct WatchEvent {
    /// `PUT` is the default and left out; `DELETE` is spelled.
    #[serde(default, rename = "type")]
    kind: Option<String>,
    kv: Kv,
}

impl WatchMessage {
    fn events(self, endpoint: &Arc<str>) -> Result<Vec<Event>, EtcdError> {
        let Some(result) = self.result else {
            let reason = self.error.map_or_else(String::new, |e| e.to_string());
            return Err(EtcdError::WatchCanceled {
                endpoint: endpoint.clone(),
                reason,
            });
        };
        if result.canceled || result.compact_revision > 0 {
            let reason = if result.compact_revision > 0 {
                format!("revision compacted at {}", result.compact_revision)
            } else {
                result.cancel_reason
            };
            return Err(EtcdError::WatchCanceled {
                endpoint: endpoint.clone(),
                reason,
            });
        }
        Ok(result
            .events
            .into_iter()
            .map(|e| match e.kind.as_deref() {
                Some("DELETE") => Event::Delete(e.kv.decode().key),
                _ => Event::Put(e.kv.decode()),
            })
            .collect())
    }
}

/// An int64 the gateway writes as a string (or, leniently, as a number).
fn int64<'de, D: serde::Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Int {
        Text(String),
        Number(i64),
    }
    match Int::deserialize(d)? {
        Int::Number(n) => Ok(n),
        Int::Text(s) => s.parse().map_err(serde::de::Error::custom),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_end_increments_the_last_byte_below_0xff() {
        assert_eq!(range_end(b"/services/api/"), b"/services/api0");
        assert_eq!(range_end(b"a\xff\xff"), b"b");
        assert_eq!(range_end(b"\xff"), b"\0");
    }

    #[test]
    fn endpoints_must_be_plain_http_urls() {
        let e = endpoint("http://127.0.0.1:2379").expect("valid");
        assert_eq!(
            (e.authority.as_str(), e.base.as_str()),
            ("127.0.0.1:2379", "")
        );
        assert_eq!(endpoint("http://etcd/gw/").expect("valid").base, "/gw");
        assert!(endpoint("https://127.0.0.1:2379").is_none());
        assert!(endpoint("127.0.0.1:2379").is_none());
        assert_eq!(
            endpoint("http://[::1]:2379").expect("valid").authority,
            "[::1]:2379"
        );
        for unusable in [
            "http://",
            "http://:2379",
            "http://127.0.0.1:abc",
            "http://e:99999",
        ] {
            assert!(endpoint(unusable).is_none(), "{unusable}");
        }
    }

    #[test]
    fn watch_messages_decode_puts_deletes_and_cancellation() {
        let url: Arc<str> = Arc::from("http://e");
        let text = r#"{"result":{"header":{"revision":"4"},"events":[{"kv":{"key":"L2EvMQ==","value":"eA=="}},{"type":"DELETE","kv":{"key":"L2EvMg=="}}]}}"#;
        let message: WatchMessage = serde_json::from_str(text).unwrap();
        let events = message.events(&url).unwrap();
        assert_eq!(
            events,
            [
                Event::Put(KeyValue {
                    key: "/a/1".into(),
                    value: b"x".to_vec()
                }),
                Event::Delete("/a/2".into())
            ]
        );
        let compacted = r#"{"result":{"canceled":true,"compact_revision":"9"}}"#;
        let message: WatchMessage = serde_json::from_str(compacted).unwrap();
        assert!(matches!(
            message.events(&url),
            Err(EtcdError::WatchCanceled { .. })
        ));
    }
}
