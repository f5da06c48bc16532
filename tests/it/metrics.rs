//! Prometheus metrics (SPEC section 9), read through a real `/metrics` scrape.
//!
//! The recorder is process-wide and tests run in parallel, so every test uses its own
//! listener, route and pool names and asserts only on its own series.

use std::collections::HashMap;
use std::net::SocketAddr;

use http::{Method, StatusCode};

use crate::admin::{call, get};
use crate::support::{eventually, Backend, Client, Proxy, DEADLINE};

/// A proxy with listener `listener`, an admin API and the given routes and pools.
async fn start(listener: &str, routes_and_pools: &str) -> (Proxy, SocketAddr) {
    let yaml = format!(
        "listeners:\n  - name: {listener}\n    bind: \"127.0.0.1:0\"\n\
         admin:\n  bind: \"127.0.0.1:0\"\naccess_log: off\n{routes_and_pools}"
    );
    let proxy = Proxy::start(&yaml).await;
    let admin = proxy.server.admin_addr().unwrap();
    (proxy, admin)
}

fn one_route(name: &str, upstreams: &[SocketAddr], retries: u32) -> String {
    let ups: Vec<String> = upstreams
        .iter()
        .map(|a| format!("{{ addr: \"{a}\" }}"))
        .collect();
    format!(
        "routes:\n  - name: {name}\n    match: {{ path_prefix: \"/\" , host: \"{name}.test\" }}\n    pool: {name}\n    retries: {retries}\n\
         pools:\n  - name: {name}\n    upstreams: [{}]\n",
        ups.join(", ")
    )
}

/// Every sample of a scrape: (name, labels) -> value.
fn parse(text: &str) -> HashMap<(String, Vec<(String, String)>), f64> {
    let mut samples = HashMap::new();
    for line in text
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let (series, value) = line.rsplit_once(' ').expect("sample has a value");
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value: {line}"));
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => {
                let rest = rest.strip_suffix('}').expect("labels close");
                let mut labels: Vec<(String, String)> = rest
                    .split("\",")
                    .filter(|kv| !kv.is_empty())
                    .map(|kv| {
                        let (k, v) = kv.split_once("=\"").expect("label is k=\"v\"");
                        (k.to_owned(), v.trim_end_matches('"').to_owned())
                    })
                    .collect();
                labels.sort();
                (name.to_owned(), labels)
            }
            None => (series.to_owned(), Vec::new()),
        };
        samples.insert((name, labels), value);
    }
    samples
}

/// The value of one series in a fresh scrape, if present.
pub async fn value(admin: SocketAddr, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let reply = get(admin, "/metrics").await;
    assert_eq!(reply.status, StatusCode::OK);
    let mut want: Vec<(String, String)> = labels
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    want.sort();
    parse(&reply.text()).get(&(name.to_owned(), want)).copied()
}

#[tokio::test]
async fn requests_total_counts_every_answered_request_exactly() {
    let a = Backend::start("a").await;
    let (proxy, admin) = start("m-req", &one_route("m-req", &[a.addr], 1)).await;
    let mut client = Client::connect(proxy.addr).await;
    for i in 0..20 {
        assert_eq!(
            client.get("m-req.test", &format!("/p/{i}")).await.status,
            200
        );
    }
    for _ in 0..3 {
        assert_eq!(client.get("m-req.test", "/status/404").await.status, 404);
    }
    for _ in 0..2 {
        // No route for this host: route="" and pool="" on this test's own listener.
        assert_eq!(client.get("other.test", "/").await.status, 404);
    }
    let total = |code: &'static str| async move {
        let labels = [
            ("listener", "m-req"),
            ("route", "m-req"),
            ("pool", "m-req"),
            ("code", code),
        ];
        value(admin, "switchyard_requests_total", &labels).await
    };
    assert_eq!(total("200").await, Some(20.0));
    assert_eq!(total("404").await, Some(3.0));
    let unmatched = [
        ("listener", "m-req"),
        ("route", ""),
        ("pool", ""),
        ("code", "404"),
    ];
    assert_eq!(
        value(admin, "switchyard_requests_total", &unmatched).await,
        Some(2.0)
    );
    let count = value(
        admin,
        "switchyard_request_duration_seconds_count",
        &[("route", "m-req"), ("pool", "m-req")],
    );
    assert_eq!(count.await, Some(23.0));
    let upstream = a.addr.to_string();
    let attempts = [
        ("pool", "m-req"),
        ("upstream", upstream.as_str()),
        ("code", "200"),
    ];
    assert_eq!(
        value(admin, "switchyard_upstream_requests_total", &attempts).await,
        Some(20.0)
    );

    let text = get(admin, "/metrics").await.text();
    assert!(!text.contains("/p/1"), "no raw paths in labels");
    let bucket =
        "switchyard_request_duration_seconds_bucket{route=\"m-req\",pool=\"m-req\",le=\"0.0005\"}";
    assert!(text.contains(bucket), "buckets start at 0.5 ms");
    assert!(text.contains("le=\"30\"}"), "buckets end at 30 s");
}

#[tokio::test]
async fn failed_attempts_and_retries_are_counted() {
    let live = Backend::start("live").await;
    let dead = Backend::start("dead").await;
    dead.stop();
    let (proxy, admin) = start("m-retry", &one_route("m-retry", &[dead.addr, live.addr], 1)).await;
    // Wait until the dead port refuses (the aborted accept loop closes its socket).
    eventually("the dead backend to refuse", || {
        std::net::TcpStream::connect(dead.addr).is_err()
    })
    .await;
    let mut client = Client::connect(proxy.addr).await;
    for _ in 0..10 {
        assert_eq!(client.get("m-retry.test", "/").await.status, 200);
    }
    let (dead_id, live_id) = (dead.addr.to_string(), live.addr.to_string());
    let failed = [
        ("pool", "m-retry"),
        ("upstream", dead_id.as_str()),
        ("code", "error"),
    ];
    let failed = value(admin, "switchyard_upstream_requests_total", &failed)
        .await
        .unwrap();
    let ok = [
        ("pool", "m-retry"),
        ("upstream", live_id.as_str()),
        ("code", "200"),
    ];
    assert_eq!(
        value(admin, "switchyard_upstream_requests_total", &ok).await,
        Some(10.0)
    );
    let retries = value(admin, "switchyard_retries_total", &[("pool", "m-retry")]).await;
    assert!(failed >= 1.0);
    assert_eq!(
        retries,
        Some(failed),
        "each failed connect was retried once"
    );
}

#[tokio::test]
async fn a_pool_shows_its_retries_at_zero_before_the_first() {
    // Audit c41: no series until the first retry, so `rate()` had nothing to read.
    let live = Backend::start("live").await;
    let (_proxy, admin) = start("m-zero", &one_route("m-zero", &[live.addr], 1)).await;
    let retries = value(admin, "switchyard_retries_total", &[("pool", "m-zero")]).await;
    assert_eq!(retries, Some(0.0));
}

#[tokio::test]
async fn an_attempt_the_route_timeout_ends_is_counted_as_an_error() {
    let slow = Backend::start("slow").await;
    let routes = one_route("m-late", &[slow.addr], 0)
        .replace("    retries: 0\n", "    retries: 0\n    timeout: 200ms\n");
    let (proxy, admin) = start("m-late", &routes).await;
    let mut client = Client::connect(proxy.addr).await;
    assert_eq!(client.get("m-late.test", "/slow/3000").await.status, 504);
    let id = slow.addr.to_string();
    let attempts = [
        ("pool", "m-late"),
        ("upstream", id.as_str()),
        ("code", "error"),
    ];
    assert_eq!(
        value(admin, "switchyard_upstream_requests_total", &attempts).await,
        Some(1.0)
    );
    let view = crate::admin::upstream_view(admin, "m-late", slow.addr).await;
    assert_eq!(
        (view["requests"].as_u64(), view["errors"].as_u64()),
        (Some(1), Some(1))
    );
}

#[tokio::test]
async fn an_http2_request_refused_as_malformed_is_on_no_route() {
    use bytes::Bytes;
    use http_body_util::Full;
    let backend = Backend::start("b").await;
    let (proxy, admin) = start("m-h2bad", &one_route("m-h2bad", &[backend.addr], 0)).await;
    let stream = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let mut sender = crate::support::h2_client(stream).await;
    let request = http::Request::get("http://m-h2bad.test/")
        .header("x-big", "y".repeat(70 * 1024))
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(sender.send_request(request).await.unwrap().status(), 431);
    let labels = |route| {
        [
            ("listener", "m-h2bad"),
            ("route", route),
            ("pool", route),
            ("code", "431"),
        ]
    };
    // As a refused HTTP/1.1 head is: counted, but not against the route it would have taken.
    assert_eq!(
        value(admin, "switchyard_requests_total", &labels("")).await,
        Some(1.0)
    );
    assert_eq!(
        value(admin, "switchyard_requests_total", &labels("m-h2bad")).await,
        None
    );
}

#[tokio::test]
async fn connections_are_counted_per_listener() {
    let a = Backend::start("a").await;
    let (proxy, admin) = start("m-conn", &one_route("m-conn", &[a.addr], 1)).await;
    let mut clients = Vec::new();
    for _ in 0..3 {
        let mut client = Client::connect(proxy.addr).await;
        assert_eq!(client.get("m-conn.test", "/").await.status, 200);
        clients.push(client);
    }
    let listener = [("listener", "m-conn")];
    assert_eq!(
        value(admin, "switchyard_connections_total", &listener).await,
        Some(3.0)
    );
    assert_eq!(
        value(admin, "switchyard_connections_active", &listener).await,
        Some(3.0)
    );
    drop(clients);
    let started = tokio::time::Instant::now();
    while value(admin, "switchyard_connections_active", &listener).await != Some(0.0) {
        assert!(
            started.elapsed() < DEADLINE,
            "active connections never went back to 0"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn upstream_healthy_follows_a_health_flip() {
    let a = Backend::start("a").await;
    let (proxy, admin) = start("m-health", &one_route("m-health", &[a.addr], 1)).await;
    let id = a.addr.to_string();
    let labels = [("pool", "m-health"), ("upstream", id.as_str())];
    assert_eq!(
        value(admin, "switchyard_upstream_healthy", &labels).await,
        Some(1.0)
    );
    assert_eq!(
        value(admin, "switchyard_upstream_in_flight", &labels).await,
        Some(0.0)
    );
    let snapshot = proxy.server.shared().snapshot();
    let pool = snapshot.pool("m-health").unwrap();
    // What the health checker does on a verdict.
    assert!(pool.upstreams()[0].set_healthy(false));
    pool.refresh();
    assert_eq!(
        value(admin, "switchyard_upstream_healthy", &labels).await,
        Some(0.0)
    );
    let ups = crate::admin::upstreams(admin, "m-health").await;
    assert_eq!(ups[0]["healthy"], false);
    let mut client = Client::connect(proxy.addr).await;
    assert_eq!(client.get("m-health.test", "/").await.status, 503);
    pool.upstreams()[0].set_healthy(true);
    pool.refresh();
    assert_eq!(
        value(admin, "switchyard_upstream_healthy", &labels).await,
        Some(1.0)
    );
    let ok = [
        ("pool", "m-health"),
        ("upstream", id.as_str()),
        ("result", "ok"),
    ];
    assert_eq!(
        value(admin, "switchyard_health_checks_total", &ok).await,
        Some(0.0)
    );
}

#[tokio::test]
async fn a_failed_reload_counts_an_error_and_generation_is_reported() {
    let a = Backend::start("a").await;
    let (_proxy, admin) = start("m-reload", &one_route("m-reload", &[a.addr], 1)).await;
    let errors = |admin| {
        value(
            admin,
            "switchyard_config_reloads_total",
            &[("result", "error")],
        )
    };
    assert_eq!(errors(admin).await, Some(0.0));
    let reload = call(admin, Method::POST, "/reload", "", None).await;
    assert_eq!(reload.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(errors(admin).await, Some(1.0));
    let ok = value(
        admin,
        "switchyard_config_reloads_total",
        &[("result", "ok")],
    )
    .await;
    assert_eq!(ok, Some(0.0));
    assert_eq!(
        value(admin, "switchyard_config_generation", &[]).await,
        Some(1.0)
    );
}
