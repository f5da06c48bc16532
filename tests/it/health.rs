//! Active health checks and outlier ejection (SPEC section 6), against real backends whose
//! `/healthz` answer can be flipped at runtime, including hostile answers.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

use switchyard::snapshot::Snapshot;
use switchyard::upstream::health::{HealthStatus, Reason};
use switchyard::upstream::Upstream;

use http::{Method, StatusCode};

use crate::admin::{call, pool_view, until, upstream_view};
use crate::metrics::value;
use crate::support::{config, eventually, Client, Proxy, DEADLINE};

/// What `/healthz` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Mode {
    /// Answers the status in `HealthBackend::status`.
    Status = 0,
    /// Reads the request and never answers.
    Hang = 1,
    /// Answers bytes that are not HTTP.
    Garbage = 2,
    /// Closes the connection at once.
    Close = 3,
    /// A 200 head and a chunked body that never ends (bounded by the test deadline).
    Endless = 4,
}

/// A raw HTTP/1.1 backend: `/healthz` as `mode` says, anything else its name with `traffic`.
struct HealthBackend {
    addr: SocketAddr,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

struct State {
    name: String,
    mode: AtomicU8,
    status: AtomicU16,
    traffic: AtomicU16,
    checks: AtomicUsize,
    requests: AtomicUsize,
    last_check_head: Mutex<String>,
}

impl HealthBackend {
    async fn start(name: &str) -> HealthBackend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State {
            name: name.to_owned(),
            mode: AtomicU8::new(Mode::Status as u8),
            status: AtomicU16::new(200),
            traffic: AtomicU16::new(200),
            checks: AtomicUsize::new(0),
            requests: AtomicUsize::new(0),
            last_check_head: Mutex::new(String::new()),
        });
        let st = state.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve(stream, st.clone()));
            }
        });
        HealthBackend { addr, state, task }
    }

    fn set_health(&self, mode: Mode, status: u16) {
        self.state.status.store(status, Ordering::SeqCst);
        self.state.mode.store(mode as u8, Ordering::SeqCst);
    }

    fn set_traffic_status(&self, status: u16) {
        self.state.traffic.store(status, Ordering::SeqCst);
    }

    /// `/healthz` requests received.
    fn checks(&self) -> usize {
        self.state.checks.load(Ordering::SeqCst)
    }

    /// Other requests received.
    fn requests(&self) -> usize {
        self.state.requests.load(Ordering::SeqCst)
    }
}

impl Drop for HealthBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(mut stream: TcpStream, st: Arc<State>) {
    let mut buf = Vec::new();
    loop {
        let head = loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                buf.drain(..end + 4);
                break head;
            }
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let path = head.split(' ').nth(1).unwrap_or("").to_owned();
        let reply = if path == "/healthz" {
            st.checks.fetch_add(1, Ordering::SeqCst);
            *st.last_check_head.lock().unwrap() = head.to_ascii_lowercase();
            match st.mode.load(Ordering::SeqCst) {
                m if m == Mode::Hang as u8 => {
                    let _ = tokio::time::timeout(DEADLINE, stream.read(&mut [0u8; 1])).await;
                    return;
                }
                m if m == Mode::Garbage as u8 => b"this is not http at all\r\n\r\n".to_vec(),
                m if m == Mode::Close as u8 => return,
                m if m == Mode::Endless as u8 => return endless(stream).await,
                _ => response(st.status.load(Ordering::SeqCst), "ok"),
            }
        } else {
            st.requests.fetch_add(1, Ordering::SeqCst);
            response(st.traffic.load(Ordering::SeqCst), &st.name)
        };
        if stream.write_all(&reply).await.is_err() {
            return;
        }
    }
}

fn response(status: u16, body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 {status} X\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// A chunked body that goes on until the reader leaves or the test deadline passes.
async fn endless(mut stream: TcpStream) {
    let deadline = Instant::now() + DEADLINE;
    let head = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n";
    if stream.write_all(head).await.is_err() {
        return;
    }
    let chunk = format!("{:x}\r\n{}\r\n", 4096, "x".repeat(4096));
    while Instant::now() < deadline {
        if stream.write_all(chunk.as_bytes()).await.is_err() {
            return;
        }
    }
}

/// One route to pool `p` over `backends`, with the pool settings in `extra` and `route`.
async fn proxy(backends: &[&HealthBackend], route: &str, extra: &str) -> Proxy {
    Proxy::start(&config(&pool_yaml(backends, route, extra))).await
}

fn pool_yaml(backends: &[&HealthBackend], route: &str, extra: &str) -> String {
    let ups: String = backends
        .iter()
        .map(|b| format!("      - {{ addr: \"{}\" }}\n", b.addr))
        .collect();
    format!("routes:\n  - name: r\n    pool: p\n{route}pools:\n  - name: p\n{extra}    upstreams:\n{ups}")
}

fn checks(interval_ms: u64, timeout_ms: u64, healthy: u32, unhealthy: u32) -> String {
    format!(
        "    health_check: {{ interval: {interval_ms}ms, timeout: {timeout_ms}ms, \
         healthy_threshold: {healthy}, unhealthy_threshold: {unhealthy} }}\n"
    )
}

fn upstream(proxy: &Proxy, backend: &HealthBackend) -> Arc<Upstream> {
    let snapshot = proxy.server.shared().snapshot();
    let pool = snapshot.pool("p").expect("pool p");
    let found = pool
        .upstreams()
        .iter()
        .find(|u| u.addr == backend.addr)
        .cloned();
    found.expect("the backend is an upstream of p")
}

fn health(proxy: &Proxy, backend: &HealthBackend) -> HealthStatus {
    upstream(proxy, backend).health()
}

/// Names of the backends that answer `n` sequential requests.
async fn answers(client: &mut Client, n: usize) -> Vec<String> {
    let mut seen = Vec::with_capacity(n);
    for _ in 0..n {
        seen.push(client.get("a", "/").await.text());
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_health_endpoint_stops_traffic_in_time_and_it_returns_after_the_threshold() {
    let (a, b) = (
        HealthBackend::start("a").await,
        HealthBackend::start("b").await,
    );
    let (interval, unhealthy) = (200u64, 2u32);
    let proxy = proxy(&[&a, &b], "", &checks(interval, 150, 3, unhealthy)).await;
    eventually("first checks, at once", || {
        a.checks() >= 1 && b.checks() >= 1
    })
    .await;
    let head = a.state.last_check_head.lock().unwrap().clone();
    assert!(head.starts_with("get /healthz http/1.1"), "{head}");
    assert!(head.contains(&format!("host: {}", a.addr)), "{head}");
    assert!(head.contains("user-agent: switchyard-health"), "{head}");
    let mut client = Client::connect(proxy.addr).await;
    let seen = answers(&mut client, 4).await;
    assert_eq!(seen.iter().filter(|s| *s == "a").count(), 2);

    a.set_health(Mode::Status, 503);
    let flipped = Instant::now();
    eventually("a unhealthy", || !upstream(&proxy, &a).is_healthy()).await;
    let took = flipped.elapsed();
    // interval x unhealthy_threshold + one interval, with the 10% jitter and some slack
    // for a loaded machine.
    let bound = Duration::from_millis(interval * u64::from(unhealthy + 1) * 11 / 10 + 150);
    assert!(took <= bound, "took {took:?}, bound {bound:?}");
    let status = health(&proxy, &a);
    assert_eq!(status.consecutive_failures, unhealthy);
    assert_eq!(
        status.last_check.map(|c| c.reason),
        Some(Reason::Status(503))
    );
    assert!(status.last_check.is_some_and(|c| !c.ok));
    let before = a.requests();
    assert!(answers(&mut client, 10).await.iter().all(|s| s == "b"));
    assert_eq!(a.requests(), before);

    let ok_before = health(&proxy, &a).checks_ok;
    a.set_health(Mode::Status, 200);
    eventually("a healthy again", || upstream(&proxy, &a).is_healthy()).await;
    assert_eq!(
        health(&proxy, &a).checks_ok - ok_before,
        3,
        "healthy_threshold: 3"
    );
    let seen = answers(&mut client, 4).await;
    assert_eq!(seen.iter().filter(|s| *s == "a").count(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thresholds_are_exact_one_or_two_failures_of_three_do_not_eject() {
    let a = HealthBackend::start("a").await;
    let proxy = proxy(&[&a], "", &checks(300, 200, 1, 3)).await;
    eventually("first check", || health(&proxy, &a).checks_ok >= 1).await;

    a.set_health(Mode::Status, 500);
    eventually("one failure", || health(&proxy, &a).checks_failed == 1).await;
    a.set_health(Mode::Status, 200);
    let status = health(&proxy, &a);
    assert!(
        status.healthy && status.consecutive_failures == 1,
        "{status:?}"
    );
    eventually("a pass", || health(&proxy, &a).consecutive_failures == 0).await;
    assert_eq!(health(&proxy, &a).checks_failed, 1);
    assert!(upstream(&proxy, &a).is_healthy());

    a.set_health(Mode::Status, 500);
    eventually("two failures", || health(&proxy, &a).checks_failed == 3).await;
    assert!(health(&proxy, &a).healthy, "2 consecutive failures of 3");
    eventually("third failure", || !health(&proxy, &a).healthy).await;
    assert_eq!(health(&proxy, &a).checks_failed, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_whose_upstreams_all_fail_answers_503_naming_the_pool() {
    let (a, b) = (
        HealthBackend::start("a").await,
        HealthBackend::start("b").await,
    );
    a.set_health(Mode::Status, 503);
    b.set_health(Mode::Status, 404);
    let proxy = proxy(&[&a, &b], "", &checks(100, 100, 1, 1)).await;
    eventually("both unhealthy", || {
        !health(&proxy, &a).healthy && !health(&proxy, &b).healthy
    })
    .await;
    let reply = crate::support::get(proxy.addr, "/").await;
    assert_eq!(reply.status, 503);
    assert_eq!(reply.text(), "503 pool \"p\" has no healthy upstream\n");
    assert_eq!(a.requests() + b.requests(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_answering_503_is_ejected_after_n_failures_each_time_and_tried_again() {
    let (a, b) = (
        HealthBackend::start("a").await,
        HealthBackend::start("b").await,
    );
    a.set_traffic_status(503);
    // Long enough that a loaded CI machine sends the "all b" batches well within it.
    let outlier = "    outlier: { consecutive_failures: 3, ejection_time: 1s }\n";
    let proxy = proxy(&[&a, &b], "    retries: 0\n", outlier).await;
    let mut client = Client::connect(proxy.addr).await;
    let seen = answers(&mut client, 6).await;
    assert_eq!(seen, ["a", "b", "a", "b", "a", "b"]);
    let ejected_at = Instant::now();
    assert!(health(&proxy, &a).ejected);
    assert!(answers(&mut client, 10).await.iter().all(|s| s == "b"));
    assert_eq!(a.requests(), 3);

    // Poll with live requests until `a` answers again.
    let deadline = Instant::now() + DEADLINE;
    while a.requests() == 3 {
        assert!(Instant::now() < deadline, "a never came back");
        client.get("a", "/").await;
    }
    assert!(ejected_at.elapsed() >= Duration::from_millis(990));
    // Back with a clean count, and still failing: ejected again after three more failures.
    while !health(&proxy, &a).ejected {
        assert!(Instant::now() < deadline, "a was never ejected again");
        client.get("a", "/").await;
    }
    assert_eq!(a.requests(), 6, "three failures again, not one");
    let status = health(&proxy, &a);
    assert!(status.ejected && status.ejections == 2, "{status:?}");
    assert!(answers(&mut client, 6).await.iter().all(|s| s == "b"));

    a.set_traffic_status(200);
    let deadline = Instant::now() + DEADLINE;
    while a.requests() == 6 {
        assert!(Instant::now() < deadline, "a never came back");
        client.get("a", "/").await;
    }
    eventually("record cleared", || health(&proxy, &a).ejections == 0).await;
    let seen = answers(&mut client, 4).await;
    assert_eq!(seen.iter().filter(|s| *s == "a").count(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_check_that_hangs_past_its_timeout_is_a_failure() {
    let (a, b) = (
        HealthBackend::start("a").await,
        HealthBackend::start("b").await,
    );
    a.set_health(Mode::Hang, 0);
    let proxy = proxy(&[&a, &b], "", &checks(100, 100, 1, 2)).await;
    eventually("a unhealthy", || !health(&proxy, &a).healthy).await;
    let last = health(&proxy, &a).last_check.expect("a check ran");
    assert_eq!((last.ok, last.reason), (false, Reason::Timeout));
    let mut client = Client::connect(proxy.addr).await;
    assert!(answers(&mut client, 6).await.iter().all(|s| s == "b"));
    a.set_health(Mode::Status, 200);
    eventually("a healthy", || health(&proxy, &a).healthy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_closed_and_endless_answers_fail_without_wedging_the_checker() {
    let backends = [
        (HealthBackend::start("g").await, Mode::Garbage),
        (HealthBackend::start("c").await, Mode::Close),
        (HealthBackend::start("e").await, Mode::Endless),
    ];
    for (b, mode) in &backends {
        b.set_health(*mode, 0);
    }
    let refs: Vec<&HealthBackend> = backends.iter().map(|(b, _)| b).collect();
    let proxy = proxy(&refs, "", &checks(100, 500, 1, 1)).await;
    for (b, mode) in &backends {
        eventually("unhealthy", || !health(&proxy, b).healthy).await;
        let reason = health(&proxy, b).last_check.map(|c| c.reason);
        let want = match mode {
            Mode::Garbage => Reason::BadResponse,
            Mode::Close => Reason::Reset,
            _ => Reason::BodyTooLarge,
        };
        assert_eq!(reason, Some(want), "{mode:?}");
    }
    for (b, _) in &backends {
        b.set_health(Mode::Status, 200);
    }
    for (b, _) in &backends {
        eventually("healthy again", || health(&proxy, b).healthy).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checks_stop_for_removed_upstreams_and_start_at_once_for_new_ones() {
    let (a, b, c) = (
        HealthBackend::start("a").await,
        HealthBackend::start("b").await,
        HealthBackend::start("c").await,
    );
    let hc = checks(100, 100, 1, 1);
    let proxy = proxy(&[&a, &b], "", &hc).await;
    let shared = proxy.server.shared();
    eventually("a checked", || a.checks() >= 2).await;
    assert_eq!(shared.checkers.len(), 2);

    // A reload that drops `a` and adds `c`; `b`'s checks restart with the new interval.
    let yaml = config(&pool_yaml(&[&b, &c], "", &checks(5_000, 100, 1, 1)));
    let cfg = switchyard::config::parse(std::path::Path::new("test.yaml"), &yaml).unwrap();
    let next = Snapshot::build(cfg, Some(&shared.snapshot())).unwrap();
    shared.store(next);
    shared.checkers.sync(&shared.snapshot());
    assert_eq!(shared.checkers.len(), 2);
    let a_checks = a.checks();
    eventually("c checked at once", || c.checks() >= 1).await;

    // Back to 100 ms for `b`: while it gets several checks, `a` must get none.
    let yaml = config(&pool_yaml(&[&b, &c], "", &hc));
    let cfg = switchyard::config::parse(std::path::Path::new("test.yaml"), &yaml).unwrap();
    shared.store(Snapshot::build(cfg, Some(&shared.snapshot())).unwrap());
    shared.checkers.sync(&shared.snapshot());
    let b_checks = b.checks();
    eventually("several checks of b", || b.checks() >= b_checks + 3).await;
    assert!(
        a.checks() <= a_checks + 1,
        "at most one probe was in flight"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutting_down_stops_every_check() {
    let a = HealthBackend::start("a").await;
    let proxy = proxy(&[&a], "", &checks(50, 100, 1, 1)).await;
    eventually("checked", || a.checks() >= 2).await;
    let shared = proxy.server.shared().clone();
    proxy.server.shutdown().await;
    assert!(shared.checkers.is_empty());
    let after = a.checks();
    let b = HealthBackend::start("b").await;
    let witness = proxy_for_witness(&b).await;
    eventually("time for several intervals", || b.checks() >= 4).await;
    assert!(a.checks() <= after + 1);
    drop(witness);
}

/// A second proxy whose checks of `b` mark the passing of time.
async fn proxy_for_witness(b: &HealthBackend) -> Proxy {
    proxy(&[b], "", &checks(50, 100, 1, 1)).await
}

// --- Health as the admin API and metrics show it ---

/// Like [`proxy`], with an admin API on 127.0.0.1:0; returns the proxy and the admin address.
async fn proxy_with_admin(
    backends: &[&HealthBackend],
    route: &str,
    extra: &str,
) -> (Proxy, SocketAddr) {
    let yaml = config(&format!(
        "admin:\n  bind: \"127.0.0.1:0\"\n{}",
        pool_yaml(backends, route, extra)
    ));
    let proxy = Proxy::start(&yaml).await;
    let admin = proxy.server.admin_addr().unwrap();
    (proxy, admin)
}

/// `switchyard_health_checks_total{pool="p", upstream, result}` in a fresh scrape.
async fn checks_total(admin: SocketAddr, backend: &HealthBackend, result: &str) -> f64 {
    let id = backend.addr.to_string();
    let labels = [("pool", "p"), ("upstream", id.as_str()), ("result", result)];
    value(admin, "switchyard_health_checks_total", &labels)
        .await
        .unwrap_or_else(|| panic!("no health_checks_total for {id} {result}"))
}

/// `switchyard_upstream_healthy{pool="p", upstream}` in a fresh scrape.
async fn healthy_gauge(admin: SocketAddr, backend: &HealthBackend) -> Option<f64> {
    let id = backend.addr.to_string();
    value(
        admin,
        "switchyard_upstream_healthy",
        &[("pool", "p"), ("upstream", id.as_str())],
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_health_flip_shows_in_metrics_and_pools_and_checks_are_counted() {
    let (a, b) = (
        HealthBackend::start("a").await,
        HealthBackend::start("b").await,
    );
    let (_proxy, admin) = proxy_with_admin(&[&a, &b], "", &checks(50, 100, 2, 2)).await;
    until("a checked ok", || async {
        checks_total(admin, &a, "ok").await >= 1.0
    })
    .await;
    assert_eq!(healthy_gauge(admin, &a).await, Some(1.0));
    assert_eq!(upstream_view(admin, "p", a.addr).await["healthy"], true);
    assert_eq!(pool_view(admin, "p").await["healthy"], 2);

    let fails = checks_total(admin, &a, "fail").await;
    a.set_health(Mode::Status, 500);
    until("a's gauge at 0", || async {
        healthy_gauge(admin, &a).await == Some(0.0)
    })
    .await;
    let view = upstream_view(admin, "p", a.addr).await;
    assert_eq!(view["healthy"], false, "{view}");
    assert_eq!(view["last_check"]["ok"], false, "{view}");
    assert_eq!(view["last_check"]["reason"], "status 500", "{view}");
    assert_eq!(pool_view(admin, "p").await["healthy"], 1);
    assert!(checks_total(admin, &a, "fail").await >= fails + 2.0);
    assert_eq!(healthy_gauge(admin, &b).await, Some(1.0));

    let oks = checks_total(admin, &a, "ok").await;
    a.set_health(Mode::Status, 200);
    until("a's gauge back at 1", || async {
        healthy_gauge(admin, &a).await == Some(1.0)
    })
    .await;
    assert_eq!(upstream_view(admin, "p", a.addr).await["healthy"], true);
    assert_eq!(pool_view(admin, "p").await["healthy"], 2);
    assert!(
        checks_total(admin, &a, "ok").await >= oks + 2.0,
        "healthy_threshold: 2"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ejection_shows_in_pools_the_dashboard_json_and_metrics() {
    let (a, b) = (
        HealthBackend::start("a").await,
        HealthBackend::start("b").await,
    );
    a.set_traffic_status(503);
    let outlier = "    outlier: { consecutive_failures: 2, ejection_time: 1s }\n";
    let (proxy, admin) = proxy_with_admin(&[&a, &b], "    retries: 0\n", outlier).await;
    let view = upstream_view(admin, "p", a.addr).await;
    assert_eq!(
        (view["healthy"].clone(), view["ejected"].clone()),
        (true.into(), false.into())
    );
    let mut client = Client::connect(proxy.addr).await;
    let seen = answers(&mut client, 4).await;
    assert_eq!(seen, ["a", "b", "a", "b"]);
    // `/pools` is what the dashboard polls; its page draws `ejected` upstreams as such.
    let view = upstream_view(admin, "p", a.addr).await;
    assert_eq!(view["ejected"], true, "{view}");
    assert_eq!(
        view["healthy"], true,
        "active checks did not fail it: {view}"
    );
    assert!(view["last_change"].is_string(), "{view}");
    assert_eq!(pool_view(admin, "p").await["healthy"], 1);
    assert_eq!(
        healthy_gauge(admin, &a).await,
        Some(0.0),
        "may not take traffic"
    );
    let page = crate::admin::get(admin, "/").await.text();
    assert!(page.contains("fetch('/pools'") && page.contains("u.ejected"));
    // The ejection ends by itself.
    until("the ejection to end", || async {
        upstream_view(admin, "p", a.addr).await["ejected"] == false
    })
    .await;
    assert_eq!(healthy_gauge(admin, &a).await, Some(1.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registered_instance_is_health_checked_until_it_is_deleted() {
    let (a, b) = (
        HealthBackend::start("a").await,
        HealthBackend::start("b").await,
    );
    b.set_health(Mode::Status, 500);
    let (proxy, admin) = proxy_with_admin(&[&a], "", &checks(50, 100, 1, 1)).await;
    let put = call(
        admin,
        Method::PUT,
        &format!("/registry/p/{}", b.addr),
        "",
        None,
    )
    .await;
    assert_eq!(put.status, StatusCode::CREATED, "{}", put.text());
    until("b checked and found unhealthy", || async {
        let view = upstream_view(admin, "p", b.addr).await;
        view["healthy"] == false && view["source"] == "registry"
    })
    .await;
    assert!(b.checks() >= 1);
    assert_eq!(proxy.server.shared().checkers.len(), 2);
    assert!(checks_total(admin, &b, "fail").await >= 1.0);
    let mut client = Client::connect(proxy.addr).await;
    assert!(answers(&mut client, 6).await.iter().all(|s| s == "a"));
    assert_eq!(b.requests(), 0);

    // Passing checks bring it into rotation.
    b.set_health(Mode::Status, 200);
    until("b healthy", || async {
        upstream_view(admin, "p", b.addr).await["healthy"] == true
    })
    .await;
    let seen = answers(&mut client, 4).await;
    assert_eq!(seen.iter().filter(|s| *s == "b").count(), 2, "{seen:?}");

    // Deleted: its checks stop while `a`'s go on.
    let delete = call(
        admin,
        Method::DELETE,
        &format!("/registry/p/{}", b.addr),
        "",
        None,
    )
    .await;
    assert_eq!(delete.status, StatusCode::NO_CONTENT);
    eventually("b's check stopped", || {
        proxy.server.shared().checkers.len() == 1
    })
    .await;
    let b_checks = b.checks();
    let a_checks = a.checks();
    eventually("several checks of a", || a.checks() >= a_checks + 4).await;
    assert!(
        b.checks() <= b_checks + 1,
        "at most one probe was in flight"
    );
    assert_eq!(
        pool_view(admin, "p").await["upstreams"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unhealthy_upstream_stays_unhealthy_across_a_file_reload() {
    use crate::reload::{post_reload, start_file, with_admin};
    use crate::support::TempDir;
    let (a, b) = (
        HealthBackend::start("a").await,
        HealthBackend::start("b").await,
    );
    a.set_health(Mode::Status, 500);
    let dir = TempDir::new("health-reload");
    let path = dir.join("proxy.yaml");
    let file = |route: &str, interval: u64| {
        let pools = pool_yaml(&[&a, &b], "", &checks(interval, 100, 2, 3))
            .replace("  - name: r\n", &format!("  - name: {route}\n"));
        with_admin("l-health-reload", None, &pools)
    };
    std::fs::write(&path, file("hr-1", 100)).unwrap();
    let (server, addr, admin) = start_file(&path, "l-health-reload").await;
    until("a unhealthy", || async {
        upstream_view(admin, "p", a.addr).await["healthy"] == false
    })
    .await;
    let failed = checks_total(admin, &a, "fail").await;
    assert!(failed >= 3.0);

    // Only the route changes: `a` is the same upstream, its verdict and counts go on.
    std::fs::write(&path, file("hr-2", 100)).unwrap();
    let reply = post_reload(admin, None).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let view = upstream_view(admin, "p", a.addr).await;
    assert_eq!(view["healthy"], false, "{view}");
    assert!(
        view["consecutive_failures"].as_u64().unwrap() >= 3,
        "{view}"
    );
    assert!(checks_total(admin, &a, "fail").await >= failed);
    assert_eq!(healthy_gauge(admin, &a).await, Some(0.0));
    let mut client = Client::connect(addr).await;
    assert!(answers(&mut client, 6).await.iter().all(|s| s == "b"));

    // A new check interval restarts the checks, not the verdict.
    std::fs::write(&path, file("hr-3", 60)).unwrap();
    assert_eq!(post_reload(admin, None).await.status, StatusCode::OK);
    assert_eq!(upstream_view(admin, "p", a.addr).await["healthy"], false);
    assert!(answers(&mut client, 6).await.iter().all(|s| s == "b"));
    assert_eq!(a.requests(), 0);

    // And it still recovers through the new checks.
    a.set_health(Mode::Status, 200);
    until("a healthy again", || async {
        upstream_view(admin, "p", a.addr).await["healthy"] == true
    })
    .await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_with_a_stale_snapshot_does_not_undo_a_reloads_checks() {
    let (a, b, c) = (
        HealthBackend::start("a").await,
        HealthBackend::start("b").await,
        HealthBackend::start("c").await,
    );
    let hc = checks(50, 100, 1, 1);
    let proxy = proxy(&[&a, &b], "", &hc).await;
    let shared = proxy.server.shared();
    let old = shared.snapshot();
    eventually("a checked", || a.checks() >= 1).await;

    // A reload drops `a` and adds `c`; then a sync that loaded its snapshot before the swap
    // (as the registry's follower can) gets the lock last.
    let yaml = config(&pool_yaml(&[&b, &c], "", &hc));
    let cfg = switchyard::config::parse(std::path::Path::new("test.yaml"), &yaml).unwrap();
    shared.store(Snapshot::build(cfg, Some(&old)).unwrap());
    shared.checkers.sync(&shared.snapshot());
    shared.checkers.sync(&old);

    let (a_checks, c_checks) = (a.checks(), c.checks());
    eventually("several checks of c", || c.checks() >= c_checks + 3).await;
    assert!(
        a.checks() <= a_checks + 1,
        "a removed upstream is checked again"
    );
}
