//! Each strategy's distribution as SPEC section 5 defines it, counted at real backends.

use std::collections::HashMap;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;

use crate::support::{config, Backend, Client, Proxy};

/// One route to one pool with `strategy`, over `backends` with `weights`.
async fn proxy_for(strategy: &str, extra: &str, backends: &[&Backend], weights: &[u32]) -> Proxy {
    let ups: String = backends
        .iter()
        .zip(weights)
        .map(|(b, w)| format!("      - {{ addr: \"{}\", weight: {w} }}\n", b.addr))
        .collect();
    Proxy::start(&config(&format!(
        "routes:\n  - name: r\n    pool: p\npools:\n  - name: p\n    strategy: {strategy}\n{extra}    upstreams:\n{ups}"
    )))
    .await
}

async fn sequence(proxy: &Proxy, n: usize) -> Vec<String> {
    let mut client = Client::connect(proxy.addr).await;
    let mut seen = Vec::with_capacity(n);
    for _ in 0..n {
        seen.push(client.get("a", "/").await.text());
    }
    seen
}

fn counts(seen: &[String]) -> HashMap<&str, usize> {
    let mut c = HashMap::new();
    for s in seen {
        *c.entry(s.as_str()).or_default() += 1;
    }
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_gives_each_upstream_exactly_its_turn() {
    let (a, b, c) = (
        Backend::start("a").await,
        Backend::start("b").await,
        Backend::start("c").await,
    );
    let proxy = proxy_for("round_robin", "", &[&a, &b, &c], &[5, 1, 1]).await;
    let seen = sequence(&proxy, 300).await;
    assert_eq!(
        counts(&seen),
        HashMap::from([("a", 100), ("b", 100), ("c", 100)]),
        "weights are ignored"
    );
    for window in seen.chunks(3) {
        let mut w = window.to_vec();
        w.sort();
        assert_eq!(w, ["a", "b", "c"], "each upstream once per turn");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_3_to_1_interleaves_as_a_a_b_a() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let proxy = proxy_for("weighted", "", &[&a, &b], &[3, 1]).await;
    let seen = sequence(&proxy, 40).await;
    for window in seen.chunks(4) {
        assert_eq!(window, ["a", "a", "b", "a"]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_5_1_1_follows_the_nginx_sequence_and_exact_windows() {
    let (a, b, c) = (
        Backend::start("a").await,
        Backend::start("b").await,
        Backend::start("c").await,
    );
    let proxy = proxy_for("weighted", "", &[&a, &b, &c], &[5, 1, 1]).await;
    let seen = sequence(&proxy, 70).await;
    for window in seen.chunks(7) {
        assert_eq!(window, ["a", "a", "b", "a", "c", "a", "a"]);
    }
    // Every window of sum(weights), not only aligned ones, has exactly the weights.
    for start in 0..seen.len() - 7 {
        assert_eq!(
            counts(&seen[start..start + 7]),
            HashMap::from([("a", 5), ("b", 1), ("c", 1)])
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_spreads_uniformly_ignoring_weights() {
    let (a, b, c) = (
        Backend::start("a").await,
        Backend::start("b").await,
        Backend::start("c").await,
    );
    let proxy = proxy_for("random", "", &[&a, &b, &c], &[10, 1, 1]).await;
    let seen = sequence(&proxy, 900).await;
    let c = counts(&seen);
    for name in ["a", "b", "c"] {
        let n = c.get(name).copied().unwrap_or(0);
        assert!((225..=375).contains(&n), "{name} got {n} of 900: {c:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_picks_differ_from_one_proxy_to_the_next() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    // The same file, two proxies (as two processes, or one restarted, would be): 64 choices
    // between two upstreams repeat by chance once in 2^64 runs, and every time when the
    // seed is fixed.
    let first = proxy_for("random", "", &[&a, &b], &[1, 1]).await;
    let second = proxy_for("random", "", &[&a, &b], &[1, 1]).await;
    let (one, two) = (sequence(&first, 64).await, sequence(&second, 64).await);
    assert_ne!(one, two, "two processes made the same 64 random choices");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_request_sends_most_traffic_to_the_upstream_that_answers_fastest() {
    let fast = Backend::start("fast").await;
    let slow = Backend::slow("slow", 300).await;
    let proxy = proxy_for("least_request", "", &[&fast, &slow], &[1, 1]).await;
    // Four clients in parallel, 15 requests each: the slow upstream keeps requests in flight,
    // so power-of-two-choices steers new ones to the fast one.
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let addr = proxy.addr;
        tasks.push(tokio::spawn(async move {
            let mut client = Client::connect(addr).await;
            let mut fast = 0;
            for _ in 0..15 {
                if client.get("a", "/").await.text() == "fast" {
                    fast += 1;
                }
            }
            fast
        }));
    }
    let mut to_fast = 0;
    for t in tasks {
        to_fast += t.await.unwrap();
    }
    // Round robin would give 30; ties at zero in flight still send the slow one a request
    // whenever it is idle, so well above 30 but not 60.
    assert!(
        to_fast >= 40,
        "only {to_fast} of 60 went to the fast upstream"
    );
    assert!(
        slow.requests() >= 1,
        "the slow upstream is still a candidate"
    );
}

async fn hash_proxy(backends: &[&Backend]) -> Proxy {
    let weights = vec![1; backends.len()];
    proxy_for(
        "consistent_hash",
        "    hash_key: \"header:X-User\"\n",
        backends,
        &weights,
    )
    .await
}

async fn owners(proxy: &Proxy, users: usize) -> Vec<String> {
    let mut client = Client::connect(proxy.addr).await;
    let mut owner = Vec::with_capacity(users);
    for u in 0..users {
        let req = Request::get("/")
            .header("host", "a")
            .header("x-user", format!("user-{u}"))
            .body(Full::new(Bytes::new()))
            .unwrap();
        owner.push(client.send(req).await.text());
    }
    owner
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consistent_hash_keeps_keys_in_place_and_remaps_about_one_kth_on_removal() {
    let names = ["h0", "h1", "h2", "h3", "h4"];
    let mut backends = Vec::new();
    for n in names {
        backends.push(Backend::start(n).await);
    }
    let all: Vec<&Backend> = backends.iter().collect();
    let proxy = hash_proxy(&all).await;
    let first = owners(&proxy, 400).await;
    assert_eq!(
        owners(&proxy, 400).await,
        first,
        "the same key goes to the same upstream"
    );
    let spread = counts(&first);
    assert_eq!(spread.len(), 5, "every upstream owns some keys: {spread:?}");
    // The same pool without h2: only h2's keys move.
    let without: Vec<&Backend> = backends.iter().filter(|b| b.name != "h2").collect();
    let second = owners(&hash_proxy(&without).await, 400).await;
    let moved = first.iter().zip(&second).filter(|(a, b)| a != b).count();
    for (before, after) in first.iter().zip(&second) {
        if before != "h2" {
            assert_eq!(before, after, "a key not on the removed upstream moved");
        }
    }
    assert!(
        (40..=130).contains(&moved),
        "{moved} of 400 keys moved; expected about 80"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consistent_hash_on_a_cookie_and_on_the_client_ip() {
    let (a, b, c) = (
        Backend::start("a").await,
        Backend::start("b").await,
        Backend::start("c").await,
    );
    let proxy = proxy_for(
        "consistent_hash",
        "    hash_key: \"cookie:session\"\n",
        &[&a, &b, &c],
        &[1, 1, 1],
    )
    .await;
    let mut client = Client::connect(proxy.addr).await;
    let mut owners = Vec::new();
    for s in 0..30 {
        let mut seen = Vec::new();
        for _ in 0..3 {
            let req = Request::get("/")
                .header("host", "a")
                .header("cookie", format!("theme=dark; session=s{s}; x=y"))
                .body(Full::new(Bytes::new()))
                .unwrap();
            seen.push(client.send(req).await.text());
        }
        assert!(
            seen.windows(2).all(|w| w[0] == w[1]),
            "session s{s} moved: {seen:?}"
        );
        owners.push(seen[0].clone());
    }
    assert!(counts(&owners).len() > 1, "sessions spread over upstreams");

    let proxy = proxy_for(
        "consistent_hash",
        "    hash_key: client_ip\n",
        &[&a, &b, &c],
        &[1, 1, 1],
    )
    .await;
    let seen = sequence(&proxy, 20).await;
    assert_eq!(
        counts(&seen).len(),
        1,
        "one client IP sticks to one upstream: {seen:?}"
    );
}
