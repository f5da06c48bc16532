//! Route lookup cost at 10 and at 10,000 routes (SPEC section 3: "10,000
//! routes route as fast as 10"). Each table mixes exact hosts with several
//! prefixes each, wildcard suffixes and any-host fallbacks; requests cycle
//! through a fixed mix of exact hits, wildcard hits, fall-throughs and
//! unknown hosts, with ports and uppercase as clients send them.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion};
use switchyard::router::Router;

/// Requests per mix; a power of two so the cycle index is a mask.
const MIX: usize = 1024;

/// Prefixes each exact host and each wildcard gets.
const PREFIXES: [&str; 5] = ["/", "/api/", "/api/v1/", "/api/v2/", "/static/"];

/// `(host pattern, prefix)` per route, as the config would list them.
type Routes = Vec<(Option<String>, String)>;

/// `(Host header, path)` per request.
type Requests = Vec<(String, String)>;

/// Route table of `total` routes (10 or a multiple of 50): 90% exact hosts,
/// 8% wildcards, 2% any-host, and the request mix that goes with it.
fn table(total: usize) -> (Routes, Requests) {
    let any = (total / 50).max(1);
    let wildcards = (total * 8 / 100 / 4).max(1);
    let exact = ((total - any - wildcards * 4) / PREFIXES.len()).max(1);
    let mut routes = Vec::with_capacity(total);
    for h in 0..exact {
        for p in PREFIXES {
            routes.push((Some(format!("svc{h}.example.com")), p.to_string()));
        }
    }
    for w in 0..wildcards {
        for p in &PREFIXES[1..] {
            routes.push((Some(format!("*.tenant{w}.example.net")), p.to_string()));
        }
    }
    routes.push((None, "/".to_string()));
    for a in 1..any {
        routes.push((None, format!("/shared/{a}/")));
    }
    let paths = [
        "/api/v1/users/12345",
        "/static/app.js",
        "/",
        "/api/v3/x",
        "/other/page",
    ];
    let requests = (0..MIX)
        .map(|i| {
            let path = paths[i % paths.len()].to_string();
            let host = match i % 4 {
                0 => format!("svc{}.example.com", i % exact),
                1 => format!("SVC{}.Example.com:8080", (i * 7) % exact),
                2 => format!("a.b.tenant{}.example.net:443", i % wildcards),
                _ => format!("unknown{i}.example.org"),
            };
            (host, path)
        })
        .collect();
    (routes, requests)
}

fn build(routes: &Routes) -> Router {
    Router::new(routes.iter().map(|(h, p)| (h.as_deref(), p.as_str())))
}

fn bench_route(c: &mut Criterion) {
    let mut group = c.benchmark_group("route");
    for total in [10, 10_000] {
        let (routes, requests) = table(total);
        let router = build(&routes);
        group.bench_with_input(
            BenchmarkId::new("mixed", routes.len()),
            &requests,
            |b, reqs| {
                let mut i = 0;
                b.iter(|| {
                    let (host, path) = &reqs[i & (MIX - 1)];
                    i += 1;
                    black_box(router.route(black_box(host), black_box(path)))
                });
            },
        );
        // The longest walk: an exact host and a wildcard that both miss on
        // the path, ending at an any-host route.
        let mut routes = routes;
        routes.push((Some("deep.tenant0.example.net".into()), "/only/".into()));
        let router = build(&routes);
        let host = "Deep.tenant0.example.net:443";
        group.bench_function(BenchmarkId::new("fallthrough", routes.len() - 1), |b| {
            b.iter(|| black_box(router.route(black_box(host), black_box("/nothing/here"))));
        });
    }
    group.finish();
}

// A plain `main` rather than `criterion_group!`, whose generated `pub fn`
// has no doc and trips the crate's `missing_docs` lint.
fn main() {
    let mut criterion = Criterion::default().configure_from_args();
    bench_route(&mut criterion);
    criterion.final_summary();
}
