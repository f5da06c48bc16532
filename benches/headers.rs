//! Cost of the request-header rewriting each forwarded request goes through
//! (`proxy::headers`, SPEC section 4): hop-by-hop removal, `X-Forwarded-*`,
//! request ids, and the three together as `proxy::handle` runs them.
//!
//! Two request shapes: `curl`-like (Host, User-Agent, Accept, `Connection:
//! keep-alive`) and a browser-like head of 14 headers that also names an
//! extra hop-by-hop header in `Connection` and arrives with an
//! `X-Forwarded-For` chain from an earlier hop. Each iteration clones the
//! prepared map (as hyper hands the proxy a fresh map per request); the
//! `clone` case measures that copy alone so it can be subtracted.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion};
use http::header::{HeaderMap, HeaderName, HeaderValue};
use switchyard::proxy::headers::{
    add_forwarded, remove_hop_by_hop, RequestIds, X_FORWARDED_FOR, X_REQUEST_ID,
};

/// A small head as `curl` or `wrk` sends it.
fn small_head() -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert("host", HeaderValue::from_static("api.example.com"));
    h.insert("user-agent", HeaderValue::from_static("curl/8.5.0"));
    h.insert("accept", HeaderValue::from_static("*/*"));
    h.insert("connection", HeaderValue::from_static("keep-alive"));
    h
}

/// An API client's head with no hop-by-hop field at all (as from an HTTP/2 client, or `wrk`).
fn bare_head() -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert("host", HeaderValue::from_static("api.example.com"));
    h.insert("user-agent", HeaderValue::from_static("curl/8.5.0"));
    h.insert("accept", HeaderValue::from_static("*/*"));
    h
}

/// A browser-sized head behind another proxy, with one extra hop-by-hop name.
fn browser_head() -> HeaderMap {
    let mut h = HeaderMap::new();
    let pairs = [
        ("host", "www.example.com"),
        (
            "user-agent",
            "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0",
        ),
        (
            "accept",
            "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
        ),
        ("accept-language", "en-GB,en;q=0.5"),
        ("accept-encoding", "gzip, deflate, br, zstd"),
        ("referer", "https://www.example.com/catalogue/page/2"),
        (
            "cookie",
            "session=3f1c0e9a7b2d4c6e8f00112233445566; theme=dark; consent=1",
        ),
        ("upgrade-insecure-requests", "1"),
        ("sec-fetch-dest", "document"),
        ("sec-fetch-mode", "navigate"),
        ("x-forwarded-for", "203.0.113.7, 10.0.0.2"),
        ("connection", "keep-alive, x-edge-hint"),
        ("x-edge-hint", "cache-miss"),
        ("keep-alive", "timeout=5"),
    ];
    for (name, value) in pairs {
        h.append(
            HeaderName::from_static(name),
            HeaderValue::from_static(value),
        );
    }
    h
}

fn bench_headers(c: &mut Criterion) {
    let client_ip = HeaderValue::from_static("192.0.2.44");
    let host = HeaderValue::from_static("www.example.com");
    let ids = RequestIds::new();
    let mut group = c.benchmark_group("headers");
    for (shape, head) in [
        ("bare", bare_head()),
        ("small", small_head()),
        ("browser", browser_head()),
    ] {
        group.bench_with_input(BenchmarkId::new("clone", shape), &head, |b, head| {
            b.iter(|| black_box(head.clone()));
        });
        group.bench_with_input(BenchmarkId::new("hop_by_hop", shape), &head, |b, head| {
            b.iter(|| {
                let mut h = head.clone();
                remove_hop_by_hop(black_box(&mut h));
                h
            });
        });
        group.bench_with_input(
            BenchmarkId::new("add_forwarded", shape),
            &head,
            |b, head| {
                b.iter(|| {
                    let mut h = head.clone();
                    add_forwarded(black_box(&mut h), &client_ip, "http", Some(host.clone()));
                    h
                });
            },
        );
        // What `proxy::handle` does to every request head, in its order.
        group.bench_with_input(BenchmarkId::new("all", shape), &head, |b, head| {
            b.iter(|| {
                let mut h = head.clone();
                if !h.contains_key(&X_REQUEST_ID) {
                    h.insert(X_REQUEST_ID.clone(), ids.next());
                }
                remove_hop_by_hop(&mut h);
                add_forwarded(&mut h, &client_ip, "http", Some(host.clone()));
                h
            });
        });
    }
    group.bench_function("request_id", |b| b.iter(|| black_box(ids.next())));
    group.finish();
    // Sanity: the browser shape really exercises the chain and the named hop header.
    let mut h = browser_head();
    remove_hop_by_hop(&mut h);
    add_forwarded(&mut h, &client_ip, "http", None);
    assert!(h.get("x-edge-hint").is_none());
    assert_eq!(h[&X_FORWARDED_FOR], "203.0.113.7, 10.0.0.2, 192.0.2.44");
}

// A plain `main` rather than `criterion_group!`, whose generated `pub fn`
// has no doc and trips the crate's `missing_docs` lint.
fn main() {
    let mut criterion = Criterion::default().configure_from_args();
    bench_headers(&mut criterion);
    criterion.final_summary();
}
