//! Active health checks: [`Checkers`] keeps one background task per checked upstream.
//!
//! A task probes at once, then every `interval` give or take [`JITTER_PERCENT`] (so the checks
//! of many upstreams drift apart instead of firing together), with `GET path`,
//! `Host: <upstream addr>` and `User-Agent: switchyard-health`. A probe has one deadline,
//! `timeout`, over connect, response head and reading the body (at most [`MAX_CHECK_BODY`] bytes,
//! discarded); anything else (a refused or reset connection, garbage, an endless body) is a
//! failure with its reason. Probes use `upstream::client` on their own keep-alive connection,
//! never the traffic idle pool. Per-upstream tasks (rather than one per pool) make membership
//! changes a plain start/stop per upstream and keep every upstream's checks independent of a
//! slow neighbour; the tasks of a pool still run concurrently.
//!
//! Tasks hold their `Upstream`, never the snapshot or `Shared`, and stop when their token is
//! cancelled: by [`Checkers::sync`] when the upstream leaves or its pool's `health_check`
//! changes, and by [`Checkers::stop`] (server shutdown) or dropping the `Checkers`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use http::header::{HeaderValue, CONNECTION, HOST, USER_AGENT};
use http::{Request, Response, Uri};
use http_body::Body;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio_util::sync::{CancellationToken, DropGuard};

use super::{CheckResult, Reason, Thresholds};
use crate::body::RequestBody;
use crate::config::HealthCheckConfig;
use crate::snapshot::Snapshot;
use crate::upstream::client::SendError;
use crate::upstream::{Connection, Connector, Pool, Upstream};

/// Most body bytes a probe reads; a longer health answer fails with `body too large`.
pub const MAX_CHECK_BODY: usize = 64 * 1024;
/// Each wait between probes is `interval` plus or minus up to this percentage of it.
pub const JITTER_PERCENT: u32 = 10;
/// `User-Agent` of every probe.
pub const USER_AGENT_VALUE: &str = "switchyard-health";

/// Identity of one running check: the pool's name and the address of the upstream's
/// shared state (the same across a change of weight).
type Key = (Arc<str>, usize);

/// The supervisor of every active-check task; lives in `snapshot::Shared`.
#[derive(Debug, Default)]
pub struct Checkers {
    /// Parent of every task's token; cancelled by [`Checkers::stop`] and on drop.
    root: CancellationToken,
    /// The running checks; locked only by `sync` and `stop`, never on the request path.
    running: Mutex<HashMap<Key, Check>>,
    /// Generation of the newest snapshot synced; written only under `running`'s lock.
    synced: AtomicU64,
}

#[derive(Debug)]
struct Check {
    upstream: Arc<Upstream>,
    config: HealthCheckConfig,
    cancel: CancellationToken,
}

// === impl Checkers ===

impl Checkers {
    /// No checks running yet.
    pub fn new() -> Checkers {
        Checkers::default()
    }

    /// Starts checks for upstreams that arrived, stops those of upstreams that left, and
    /// restarts those whose pool's `health_check` changed; call after every snapshot swap and
    /// membership change. A snapshot older than the last one synced is ignored. Must run
    /// inside tokio.
    pub fn sync(&self, snapshot: &Snapshot) {
        if self.root.is_cancelled() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::error!("health checks need a tokio runtime; none started");
            return;
        };
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        // A caller that loaded its snapshot before a reload swapped in the next one may get
        // the lock after the reload's own sync: an older snapshot would undo that sync.
        if snapshot.generation < self.synced.load(Ordering::Relaxed) {
            tracing::debug!(
                generation = snapshot.generation,
                "stale snapshot; checks left as they are"
            );
            return;
        }
        self.synced.store(snapshot.generation, Ordering::Relaxed);
        let mut wanted: HashMap<Key, Check> = HashMap::with_capacity(running.len());
        for pool in &snapshot.pools {
            let Some(hc) = &pool.health_check else {
                continue;
            };
            for upstream in pool.upstreams().iter() {
                // The shared state: an upstream re-weighed by a reload keeps its check.
                let key = (pool.name.clone(), Arc::as_ptr(&upstream.state) as usize);
                let check = match running.remove(&key) {
                    Some(check) if check.config == *hc => check,
                    old => {
                        if let Some(old) = old {
                            old.cancel.cancel();
                        }
                        self.start(&runtime, pool, upstream, hc)
                    }
                };
                wanted.insert(key, check);
            }
        }
        for ((pool, _), check) in running.drain() {
            check.cancel.cancel();
            tracing::debug!(pool = %pool, upstream = %check.upstream.id, "health checks stopped");
            // Checks stopped for an upstream that stays (its pool dropped `health_check`): a
            // verdict nobody updates any more must not keep it out. A removed upstream's
            // state no longer matters, unless it comes back, and then it starts healthy.
            check
                .upstream
                .state
                .health
                .clear_checks(&pool, &check.upstream.id);
        }
        *running = wanted;
    }

    /// Stops every check; later `sync` calls start nothing.
    pub fn stop(&self) {
        self.root.cancel();
        self.running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    /// A guard that stops every check when dropped (held by `Server`).
    pub fn drop_guard(&self) -> DropGuard {
        self.root.clone().drop_guard()
    }

    /// Number of upstreams being checked.
    pub fn len(&self) -> usize {
        self.running.lock().map_or(0, |r| r.len())
    }

    /// Whether no upstream is being checked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn start(
        &self,
        runtime: &tokio::runtime::Handle,
        pool: &Pool,
        upstream: &Arc<Upstream>,
        cfg: &HealthCheckConfig,
    ) -> Check {
        let cancel = self.root.child_token();
        let task = Task {
            upstream: upstream.clone(),
            pool: pool.name.clone(),
            connector: pool.connector.clone(),
            config: cfg.clone(),
            cancel: cancel.clone(),
        };
        tracing::debug!(pool = %pool.name, upstream = %upstream.id, "health checks started");
        runtime.spawn(task.run());
        Check {
            upstream: upstream.clone(),
            config: cfg.clone(),
            cancel,
        }
    }
}

impl Drop for Checkers {
    fn drop(&mut self) {
        self.root.cancel();
    }
}

/// One upstream's check loop.
struct Task {
    upstream: Arc<Upstream>,
    pool: Arc<str>,
    /// The pool's connector: probes speak its protocol, over its TLS.
    connector: Connector,
    config: HealthCheckConfig,
    cancel: CancellationToken,
}

impl Task {
    async fn run(self) {
        let uri = match Uri::try_from(self.config.path.as_str()) {
            Ok(uri) => uri,
            Err(error) => {
                tracing::error!(pool = %self.pool, path = %self.config.path, %error, "health_check.path is not a valid request target; not checking");
                return;
            }
        };
        let host = HeaderValue::from_str(&self.upstream.id)
            .expect("a socket address is a valid header value");
        let thresholds = Thresholds {
            healthy: self.config.healthy_threshold,
            unhealthy: self.config.unhealthy_threshold,
        };
        let mut jitter = Jitter::new(Arc::as_ptr(&self.upstream) as u64);
        // `switchyard_health_checks_total`: live counters (shown at 0 from the start), so the
        // count never goes back, even for an upstream removed and added back.
        let counted = |result| {
            let (pool, upstream) = (self.pool.to_string(), self.upstream.id.to_string());
            let labels = [("pool", pool), ("upstream", upstream), ("result", result)];
            let counter = metrics::counter!(crate::metrics::HEALTH_CHECKS_TOTAL, &labels);
            counter.increment(0);
            counter
        };
        let (passed, failed) = (counted("ok".to_owned()), counted("fail".to_owned()));
        let mut conn = None;
        loop {
            let started = tokio::time::Instant::now();
            let probe = self.probe(&uri, &host, &mut conn);
            let reason = tokio::select! {
                _ = self.cancel.cancelled() => return,
                outcome = tokio::time::timeout(self.config.timeout, probe) => outcome.unwrap_or(Err(Reason::Timeout)),
            };
            let result = match reason {
                Ok(code) => CheckResult {
                    ok: self.config.expect_status.contains(code),
                    reason: Reason::Status(code),
                    at: SystemTime::now(),
                },
                Err(reason) => {
                    conn = None;
                    CheckResult {
                        ok: false,
                        reason,
                        at: SystemTime::now(),
                    }
                }
            };
            tracing::trace!(pool = %self.pool, upstream = %self.upstream.id, ok = result.ok, reason = %result.reason, "health check");
            if result.ok { &passed } else { &failed }.increment(1);
            let h = &self.upstream.state.health;
            h.record_check(result, thresholds, &self.pool, &self.upstream.id);
            let next = started + jitter.around(self.config.interval);
            tokio::select! {
                _ = self.cancel.cancelled() => return,
                _ = tokio::time::sleep_until(next) => {}
            }
        }
    }

    /// One probe: the status code, or why there is none. Keeps the connection in `conn` for
    /// the next probe when the exchange ended cleanly.
    async fn probe(
        &self,
        uri: &Uri,
        host: &HeaderValue,
        conn: &mut Option<Connection>,
    ) -> Result<u16, Reason> {
        let req = self.request(uri, host);
        let (response, c) = match conn.take() {
            Some(mut c) => match c.send(req).await {
                Ok(response) => (response, c),
                // Closed while idle: not the upstream's fault, open a fresh one.
                Err(SendError::NotSent(req)) => self.send_fresh(*req).await?,
                Err(SendError::Failed(e)) => return Err(Reason::from_client_error(&e)),
            },
            None => self.send_fresh(req).await?,
        };
        let code = response.status().as_u16();
        let reusable = !response
            .headers()
            .get(CONNECTION)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
        drain(response).await?;
        if reusable {
            *conn = Some(c);
        }
        Ok(code)
    }

    async fn send_fresh(
        &self,
        req: Request<RequestBody>,
    ) -> Result<(Response<Incoming>, Connection), Reason> {
        // The probe's own deadline covers the connect as well; no shorter one is needed.
        let mut c = self
            .connector
            .open(&self.upstream)
            .await
            .map_err(|e| Reason::from_client_error(&e))?;
        match c.send(req).await {
            Ok(response) => Ok((response, c)),
            Err(SendError::NotSent(_)) => Err(Reason::Reset),
            Err(SendError::Failed(e)) => Err(Reason::from_client_error(&e)),
        }
    }

    fn request(&self, uri: &Uri, host: &HeaderValue) -> Request<RequestBody> {
        let mut req = Request::new(RequestBody::empty());
        *req.uri_mut() = uri.clone();
        req.headers_mut().insert(HOST, host.clone());
        req.headers_mut()
            .insert(USER_AGENT, HeaderValue::from_static(USER_AGENT_VALUE));
        req
    }
}

/// Reads and discards a health answer's body, at most [`MAX_CHECK_BODY`] bytes.
async fn drain(response: Response<Incoming>) -> Result<(), Reason> {
    let mut body = response.into_body();
    let mut read = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| {
            if e.is_parse() {
                Reason::BadResponse
            } else {
                Reason::Reset
            }
        })?;
        if let Some(data) = frame.data_ref() {
            read += data.len();
            if read > MAX_CHECK_BODY {
                return Err(Reason::BodyTooLarge);
            }
        }
        if body.is_end_stream() {
            break;
        }
    }
    Ok(())
}

/// A splitmix64 generator for the waits between probes; seeded per upstream so tasks differ.
struct Jitter(u64);

impl Jitter {
    fn new(seed: u64) -> Jitter {
        Jitter(seed ^ 0x9e37_79b9_7f4a_7c15)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// `interval` plus or minus up to [`JITTER_PERCENT`] of it, uniformly.
    fn around(&mut self, interval: Duration) -> Duration {
        let span = interval.as_nanos() as u64 / 100 * u64::from(JITTER_PERCENT);
        if span == 0 {
            return interval;
        }
        let offset = self.next() % (2 * span + 1);
        (interval + Duration::from_nanos(offset)).saturating_sub(Duration::from_nanos(span))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_within_ten_percent_and_varies() {
        let mut j = Jitter::new(7);
        let interval = Duration::from_secs(1);
        let waits: Vec<Duration> = (0..1000).map(|_| j.around(interval)).collect();
        assert!(waits
            .iter()
            .all(|w| *w >= Duration::from_millis(900) && *w <= Duration::from_millis(1100)));
        let min = waits.iter().min().copied().unwrap_or_default();
        let max = waits.iter().max().copied().unwrap_or_default();
        assert!(max - min > Duration::from_millis(150), "{min:?}..{max:?}");
    }
}
