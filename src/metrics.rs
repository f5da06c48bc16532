//! Prometheus metrics (SPEC section 9): names, the recorder, cached handles, scrape-time state.
//!
//! Counters and gauges go through the `metrics` crate into `metrics-exporter-prometheus`'s
//! recorder, installed once per process by [`install`]; `/metrics` is its own text rendering,
//! followed by the request-duration histograms, which are ours ([`DurationHistogram`]: one
//! atomic add per bucket and sum, where the exporter queues every sample for a thread to
//! fold). Two kinds of series:
//! - *live* ones, recorded where they happen: requests at response-head time in `proxy`
//!   ([`RouteMetrics`]), upstream attempts and retries in `proxy::retry` ([`UpstreamMetrics`],
//!   [`PoolMetrics`]), connections in `listener` ([`ListenerMetrics`]), health checks in
//!   `upstream::health::checker` (each check task's two counters). The request path never
//!   looks a series up by name: each owner keeps its handles, and series whose label set is
//!   only known at run time (the status code) sit in a small copy-on-write [`CounterCache`]
//!   read with one lock-free `ArcSwap` load;
//! - *state* ones that mirror what the proxy knows (health, in-flight, config
//!   generation, reload counts). [`render`] records them into a fresh recorder from the live
//!   state at scrape time, so an upstream that went away also leaves the scrape.
//!
//! Label values are configured names, upstream addresses and status codes, never raw paths or
//! client addresses, so the number of series stays bounded.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use arc_swap::ArcSwap;
use metrics::{Counter, Gauge, Label};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use crate::snapshot::Snapshot;
use crate::upstream::Upstream;

/// `switchyard_requests_total{listener,route,pool,code}` counter.
pub const REQUESTS_TOTAL: &str = "switchyard_requests_total";
/// `switchyard_request_duration_seconds{route,pool}` histogram (time to the response head).
pub const REQUEST_DURATION: &str = "switchyard_request_duration_seconds";
/// `switchyard_upstream_requests_total{pool,upstream,code}` counter, one per attempt.
pub const UPSTREAM_REQUESTS_TOTAL: &str = "switchyard_upstream_requests_total";
/// `switchyard_upstream_healthy{pool,upstream}` gauge, 1 or 0.
pub const UPSTREAM_HEALTHY: &str = "switchyard_upstream_healthy";
/// `switchyard_upstream_in_flight{pool,upstream}` gauge.
pub const UPSTREAM_IN_FLIGHT: &str = "switchyard_upstream_in_flight";
/// `switchyard_health_checks_total{pool,upstream,result}` counter, result `ok|fail`.
pub const HEALTH_CHECKS_TOTAL: &str = "switchyard_health_checks_total";
/// `switchyard_retries_total{pool}` counter.
pub const RETRIES_TOTAL: &str = "switchyard_retries_total";
/// `switchyard_connections_active{listener}` gauge.
pub const CONNECTIONS_ACTIVE: &str = "switchyard_connections_active";
/// `switchyard_connections_total{listener}` counter.
pub const CONNECTIONS_TOTAL: &str = "switchyard_connections_total";
/// `switchyard_config_reloads_total{result}` counter, result `ok|error`.
pub const CONFIG_RELOADS_TOTAL: &str = "switchyard_config_reloads_total";
/// `switchyard_config_generation` gauge.
pub const CONFIG_GENERATION: &str = "switchyard_config_generation";

/// `code` label of an upstream attempt that got no response (connect failure, reset).
pub const CODE_ERROR: &str = "error";

/// Histogram buckets in seconds: 0.5 ms to 30 s, roughly 1-2.5-5 per decade.
pub const DURATION_BUCKETS: [f64; 17] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0,
    20.0, 30.0,
];

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the process-wide Prometheus recorder (once; later calls are free).
///
/// Handles taken before this call go nowhere, so `Server::start` calls it first. If another
/// recorder is already installed (an embedding program's), ours is not and `/metrics` only
/// shows the scrape-time state.
pub fn install() -> Option<&'static PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new().build_recorder();
            let handle = recorder.handle();
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("another metrics recorder is installed; live metrics go there");
                return None;
            }
            describe();
            Some(handle)
        })
        .as_ref()
}

fn describe() {
    metrics::describe_counter!(
        REQUESTS_TOTAL,
        "Requests answered, by route and status code"
    );
    metrics::describe_counter!(
        UPSTREAM_REQUESTS_TOTAL,
        "Attempts on an upstream, by status code (\"error\": no response)"
    );
    metrics::describe_counter!(
        RETRIES_TOTAL,
        "Attempts on another upstream after a failure"
    );
    metrics::describe_gauge!(CONNECTIONS_ACTIVE, "Open client connections");
    metrics::describe_counter!(CONNECTIONS_TOTAL, "Accepted client connections");
    metrics::describe_counter!(HEALTH_CHECKS_TOTAL, "Active health checks, by result");
}

/// Shows `switchyard_health_checks_total` at 0 for every upstream not checked yet (its pool
/// may have no `health_check`). The checks are counted by each check task, in live series
/// that, like every counter, stay until restart and never go back.
fn register_health_series(snapshot: &Snapshot) {
    for pool in &snapshot.pools {
        for upstream in pool.upstreams().iter() {
            for result in ["ok", "fail"] {
                let labels = [
                    Label::new("pool", pool.name.to_string()),
                    Label::new("upstream", upstream.id.to_string()),
                    Label::new("result", result),
                ];
                metrics::counter!(HEALTH_CHECKS_TOTAL, labels.iter()).increment(0);
            }
        }
    }
}

/// What `/metrics` answers: the live series plus the state mirrored at this moment.
pub fn render(snapshot: &Snapshot, state: &ScrapeState) -> String {
    let mut text = match install() {
        Some(handle) => {
            register_health_series(snapshot);
            handle.render()
        }
        None => String::new(),
    };
    render_durations(&mut text);
    let recorder = PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    metrics::with_local_recorder(&recorder, || record_state(snapshot, state));
    text.push_str(&handle.render());
    text
}

/// Process state that `/metrics` mirrors besides the snapshot's pools.
#[derive(Debug, Clone, Default)]
pub struct ScrapeState {
    /// Successful reloads so far.
    pub reloads_ok: u64,
    /// Failed reloads so far.
    pub reloads_error: u64,
}

/// Health counters of one upstream, as the health checker reports them.
#[derive(Debug, Clone, Copy, Default)]
pub struct HealthCounts {
    /// Whether it may take traffic.
    pub healthy: bool,
    /// Passed active checks.
    pub checks_ok: u64,
    /// Failed active checks.
    pub checks_failed: u64,
}

/// The health figures `/metrics` shows for `upstream`: `healthy` is whether it may take
/// traffic (checks pass and not ejected).
pub fn health_counts(upstream: &Upstream) -> HealthCounts {
    let health = upstream.health();
    HealthCounts {
        healthy: upstream.is_healthy(),
        checks_ok: health.checks_ok,
        checks_failed: health.checks_failed,
    }
}

fn record_state(snapshot: &Snapshot, state: &ScrapeState) {
    metrics::describe_gauge!(
        CONFIG_GENERATION,
        "Generation of the running config, 1 at start"
    );
    metrics::describe_counter!(CONFIG_RELOADS_TOTAL, "Config reloads, by result");
    metrics::describe_gauge!(
        UPSTREAM_HEALTHY,
        "1 when the upstream may take traffic, else 0"
    );
    metrics::describe_gauge!(UPSTREAM_IN_FLIGHT, "Requests in progress on the upstream");
    metrics::gauge!(CONFIG_GENERATION).set(snapshot.generation as f64);
    metrics::counter!(CONFIG_RELOADS_TOTAL, "result" => "ok").absolute(state.reloads_ok);
    metrics::counter!(CONFIG_RELOADS_TOTAL, "result" => "error").absolute(state.reloads_error);
    for pool in &snapshot.pools {
        for upstream in pool.upstreams().iter() {
            let labels = [
                Label::new("pool", pool.name.to_string()),
                Label::new("upstream", upstream.id.to_string()),
            ];
            let health = health_counts(upstream);
            metrics::gauge!(UPSTREAM_HEALTHY, labels.iter()).set(if health.healthy {
                1.0
            } else {
                0.0
            });
            metrics::gauge!(UPSTREAM_IN_FLIGHT, labels.iter()).set(upstream.in_flight() as f64);
        }
    }
}

/// Counters keyed by a small value known only at run time (a status code, a listener).
///
/// Reading is one lock-free `ArcSwap` load and a scan of a short list; a key seen for the
/// first time copies the list (rare: a route sees a handful of codes in its life).
#[derive(Debug, Default)]
pub struct CounterCache<K> {
    entries: ArcSwap<Vec<(K, Counter)>>,
}

impl<K: Clone> CounterCache<K> {
    /// Adds one to the counter whose key `is` accepts, registering `make()` the first time.
    /// Matching by predicate lets callers compare borrowed parts without building a key.
    pub fn increment(&self, is: impl Fn(&K) -> bool, make: impl FnOnce() -> (K, Counter)) {
        if let Some((_, counter)) = self.entries.load().iter().find(|(k, _)| is(k)) {
            counter.increment(1);
            return;
        }
        let (key, counter) = make();
        counter.increment(1);
        self.entries.rcu(|entries| {
            let mut next = Vec::with_capacity(entries.len() + 1);
            next.extend(entries.iter().cloned());
            if !next.iter().any(|(k, _)| is(k)) {
                next.push((key.clone(), counter.clone()));
            }
            next
        });
    }
}

/// The request series of one route (or of requests that matched none).
#[derive(Debug)]
pub struct RouteMetrics {
    route: Arc<str>,
    pool: Arc<str>,
    duration: OnceLock<Arc<DurationHistogram>>,
    /// Keyed by (listener name, status code).
    requests: CounterCache<(Arc<str>, u16)>,
}

// === impl RouteMetrics ===

impl RouteMetrics {
    /// Series labelled `route` and `pool`; registered lazily, at their first request.
    pub fn new(route: Arc<str>, pool: Arc<str>) -> RouteMetrics {
        RouteMetrics {
            route,
            pool,
            duration: OnceLock::new(),
            requests: CounterCache::default(),
        }
    }

    /// The series of requests no route matched: `route=""`, `pool=""`.
    pub fn unmatched() -> &'static RouteMetrics {
        static UNMATCHED: OnceLock<RouteMetrics> = OnceLock::new();
        UNMATCHED.get_or_init(|| RouteMetrics::new(Arc::from(""), Arc::from("")))
    }

    /// Counts one answered request and its time to the response head.
    pub fn record(&self, listener: &Arc<str>, status: u16, elapsed: Duration) {
        let is = |(l, code): &(Arc<str>, u16)| *code == status && **l == **listener;
        self.requests.increment(is, || {
            let counter = metrics::counter!(REQUESTS_TOTAL,
                "listener" => listener.to_string(),
                "route" => self.route.to_string(),
                "pool" => self.pool.to_string(),
                "code" => status.to_string());
            ((listener.clone(), status), counter)
        });
        self.duration
            .get_or_init(|| DurationHistogram::series(&self.route, &self.pool))
            .record(elapsed);
    }
}

/// The bounds of [`DURATION_BUCKETS`] in nanoseconds.
const DURATION_BOUNDS_NS: [u64; DURATION_BUCKETS.len()] = {
    let mut ns = [0; DURATION_BUCKETS.len()];
    let mut i = 0;
    while i < ns.len() {
        ns[i] = (DURATION_BUCKETS[i] * 1e9) as u64;
        i += 1;
    }
    ns
};

/// Every `switchyard_request_duration_seconds` series, by (route, pool), as a
/// counter stays until restart.
type DurationSeries = Vec<((Arc<str>, Arc<str>), Arc<DurationHistogram>)>;
static DURATIONS: Mutex<DurationSeries> = Mutex::new(Vec::new());

/// One `switchyard_request_duration_seconds{route,pool}` series: a count per bucket and the
/// sum, each one relaxed atomic add per request (the exporter's own histograms queue each
/// sample for a thread to fold, several times the cost), made cumulative at scrape time.
#[derive(Debug, Default)]
pub struct DurationHistogram {
    /// Samples per bucket, not cumulative; the last one is above every bound.
    buckets: [AtomicU64; DURATION_BUCKETS.len() + 1],
    sum_ns: AtomicU64,
}

impl DurationHistogram {
    /// The series of `route` and `pool`, registered the first time it is asked for.
    pub fn series(route: &Arc<str>, pool: &Arc<str>) -> Arc<DurationHistogram> {
        let mut all = DURATIONS.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, series)) = all.iter().find(|((r, p), _)| r == route && p == pool) {
            return series.clone();
        }
        let series = Arc::new(DurationHistogram::default());
        all.push(((route.clone(), pool.clone()), series.clone()));
        series
    }

    /// Counts one sample.
    pub fn record(&self, elapsed: Duration) {
        let ns = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        let bucket = DURATION_BOUNDS_NS
            .iter()
            .position(|&bound| ns <= bound)
            .unwrap_or(DURATION_BOUNDS_NS.len());
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        self.sum_ns.fetch_add(ns, Ordering::Relaxed);
    }

    /// Appends the series' lines in the Prometheus text format.
    fn render(&self, route: &str, pool: &str, text: &mut String) {
        let labels = format!("route=\"{}\",pool=\"{}\"", escape(route), escape(pool));
        let mut count = 0;
        for (bucket, bound) in self.buckets.iter().zip(DURATION_BUCKETS) {
            count += bucket.load(Ordering::Relaxed);
            let _ = writeln!(
                text,
                "{REQUEST_DURATION}_bucket{{{labels},le=\"{bound}\"}} {count}"
            );
        }
        count += self.buckets[DURATION_BUCKETS.len()].load(Ordering::Relaxed);
        let sum = self.sum_ns.load(Ordering::Relaxed) as f64 / 1e9;
        let _ = writeln!(
            text,
            "{REQUEST_DURATION}_bucket{{{labels},le=\"+Inf\"}} {count}"
        );
        let _ = writeln!(text, "{REQUEST_DURATION}_sum{{{labels}}} {sum}");
        let _ = writeln!(text, "{REQUEST_DURATION}_count{{{labels}}} {count}");
    }
}

/// Appends the `switchyard_request_duration_seconds` family, if any request was answered.
fn render_durations(text: &mut String) {
    let all = DURATIONS.lock().unwrap_or_else(|e| e.into_inner());
    if all.is_empty() {
        return;
    }
    if !text.is_empty() && !text.ends_with("\n\n") {
        text.push('\n');
    }
    let _ = writeln!(
        text,
        "# HELP {REQUEST_DURATION} Time from the request's arrival to its response head"
    );
    let _ = writeln!(text, "# TYPE {REQUEST_DURATION} histogram");
    for ((route, pool), series) in all.iter() {
        series.render(route, pool, text);
    }
    text.push('\n');
}

/// A label value as the text format quotes it.
fn escape(value: &str) -> std::borrow::Cow<'_, str> {
    if !value.contains(['\\', '"', '\n']) {
        return value.into();
    }
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
        .into()
}

/// Records one request the proxy answered; `route` is `None` when none matched.
pub fn record_request(
    listener: &Arc<str>,
    route: Option<&RouteMetrics>,
    status: u16,
    elapsed: Duration,
) {
    route
        .unwrap_or_else(|| RouteMetrics::unmatched())
        .record(listener, status, elapsed);
}

/// The attempt series of one upstream, plus plain totals the admin API shows.
#[derive(Debug, Default)]
pub struct UpstreamMetrics {
    /// Keyed by status code; 0 stands for "no response" (`code="error"`).
    attempts: CounterCache<u16>,
    requests: AtomicU64,
    errors: AtomicU64,
}

// === impl UpstreamMetrics ===

impl UpstreamMetrics {
    /// Counts one attempt on `upstream` of `pool`: its status, or `None` without a response.
    pub fn record(&self, pool: &str, upstream: &str, status: Option<u16>) {
        let code = status.unwrap_or(0);
        self.attempts.increment(
            |k| *k == code,
            || {
                let label = status.map_or_else(|| CODE_ERROR.to_owned(), |s| s.to_string());
                let counter = metrics::counter!(UPSTREAM_REQUESTS_TOTAL,
                    "pool" => pool.to_owned(),
                    "upstream" => upstream.to_owned(),
                    "code" => label);
                (code, counter)
            },
        );
        self.requests.fetch_add(1, Ordering::Relaxed);
        if status.is_none_or(|s| s >= 500) {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Attempts on this upstream so far.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Attempts that got no response or a 5xx.
    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }
}

/// Records one attempt on `upstream`; `status` is `None` when no response came.
pub fn record_attempt(pool: &str, upstream: &Upstream, status: Option<u16>) {
    upstream.metrics().record(pool, &upstream.id, status);
}

/// The series of one pool.
#[derive(Debug)]
pub struct PoolMetrics {
    retries: Counter,
}

// === impl PoolMetrics ===

impl PoolMetrics {
    /// Series labelled `pool`, shown from the start (at 0, as `rate()` wants a series to
    /// read before the first retry).
    pub fn new(name: Arc<str>) -> PoolMetrics {
        let retries = metrics::counter!(RETRIES_TOTAL, "pool" => name.to_string());
        retries.increment(0);
        PoolMetrics { retries }
    }

    /// Counts one retry on another upstream.
    pub fn retry(&self) {
        self.retries.increment(1);
    }
}

/// The connection series of one listener.
#[derive(Debug, Clone)]
pub struct ListenerMetrics {
    active: Gauge,
    total: Counter,
}

// === impl ListenerMetrics ===

impl ListenerMetrics {
    /// Handles for the listener named `name`.
    pub fn new(name: &str) -> ListenerMetrics {
        ListenerMetrics {
            active: metrics::gauge!(CONNECTIONS_ACTIVE, "listener" => name.to_owned()),
            total: metrics::counter!(CONNECTIONS_TOTAL, "listener" => name.to_owned()),
        }
    }

    /// Counts an accepted connection; it stays active until the guard is dropped.
    pub fn accepted(&self) -> ActiveConnection {
        self.total.increment(1);
        self.active.increment(1.0);
        ActiveConnection(self.active.clone())
    }
}

/// Keeps one connection counted in `switchyard_connections_active`.
#[derive(Debug)]
pub struct ActiveConnection(Gauge);

impl Drop for ActiveConnection {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_duration_series_renders_cumulative_buckets_sum_and_count() {
        let series = DurationHistogram::default();
        // On a bound counts in that bucket (`le`); past the last bound only in +Inf.
        series.record(Duration::from_micros(500));
        series.record(Duration::from_micros(501));
        series.record(Duration::from_millis(3));
        series.record(Duration::from_secs(31));
        let mut text = String::new();
        series.render("r\"1", "p", &mut text);
        let lines: Vec<&str> = text.lines().collect();
        let name = REQUEST_DURATION;
        let labels = r#"route="r\"1",pool="p""#;
        assert_eq!(
            lines[0],
            format!("{name}_bucket{{{labels},le=\"0.0005\"}} 1")
        );
        assert_eq!(
            lines[1],
            format!("{name}_bucket{{{labels},le=\"0.001\"}} 2")
        );
        assert_eq!(
            lines[2],
            format!("{name}_bucket{{{labels},le=\"0.0025\"}} 2")
        );
        assert_eq!(
            lines[3],
            format!("{name}_bucket{{{labels},le=\"0.005\"}} 3")
        );
        assert_eq!(lines[10], format!("{name}_bucket{{{labels},le=\"1\"}} 3"));
        assert_eq!(lines[16], format!("{name}_bucket{{{labels},le=\"30\"}} 3"));
        assert_eq!(
            lines[17],
            format!("{name}_bucket{{{labels},le=\"+Inf\"}} 4")
        );
        assert_eq!(lines[18], format!("{name}_sum{{{labels}}} 31.004001"));
        assert_eq!(lines[19], format!("{name}_count{{{labels}}} 4"));
        assert_eq!(lines.len(), 20);
    }

    #[test]
    fn one_series_per_route_and_pool() {
        let (route, pool): (Arc<str>, Arc<str>) = (Arc::from("series-r"), Arc::from("series-p"));
        let a = DurationHistogram::series(&route, &pool);
        let b = DurationHistogram::series(&Arc::from("series-r"), &Arc::from("series-p"));
        assert!(Arc::ptr_eq(&a, &b));
        let c = DurationHistogram::series(&route, &Arc::from("other"));
        assert!(!Arc::ptr_eq(&a, &c));
    }
}
