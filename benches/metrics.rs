//! Per-request cost of recording metrics, with the Prometheus recorder installed.
//!
//! `cached` is what the proxy does: handles kept on the route (a copy-on-write table by
//! listener and status code) and on the upstream. `lookup` is the naive alternative this
//! design avoids: `counter!`/`histogram!` with their label values built on every request,
//! which hashes the key into the registry each time. Status codes cycle through a few values
//! so the table scan is not always its first entry.

use std::hint::black_box;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion};
use switchyard::metrics::{self, RouteMetrics};
use switchyard::upstream::{Source, Upstream};

const CODES: [u16; 4] = [200, 200, 404, 503];

fn bench_record(c: &mut Criterion) {
    metrics::install().expect("no other recorder in this bench");
    let listener: Arc<str> = Arc::from("public");
    let route = RouteMetrics::new(Arc::from("api"), Arc::from("api-pool"));
    let addr: SocketAddr = "10.0.0.11:8080".parse().unwrap();
    let upstream = Upstream::new(addr, 1, Source::Static);
    let elapsed = Duration::from_micros(850);
    let mut group = c.benchmark_group("record_request");
    group.bench_function(BenchmarkId::new("cached", "request+attempt"), |b| {
        let mut i = 0;
        b.iter(|| {
            let code = CODES[i % CODES.len()];
            i += 1;
            metrics::record_request(&listener, Some(&route), black_box(code), elapsed);
            metrics::record_attempt("api-pool", &upstream, Some(code));
        })
    });
    group.bench_function(BenchmarkId::new("lookup", "request+attempt"), |b| {
        let mut i = 0;
        b.iter(|| {
            let code = CODES[i % CODES.len()];
            i += 1;
            ::metrics::counter!(metrics::REQUESTS_TOTAL,
                "listener" => listener.to_string(), "route" => "api", "pool" => "api-pool",
                "code" => black_box(code).to_string())
            .increment(1);
            ::metrics::histogram!(metrics::REQUEST_DURATION, "route" => "api", "pool" => "api-pool")
                .record(elapsed.as_secs_f64());
            ::metrics::counter!(metrics::UPSTREAM_REQUESTS_TOTAL,
                "pool" => "api-pool", "upstream" => upstream.id.to_string(), "code" => code.to_string())
            .increment(1);
        })
    });
    group.finish();
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    bench_record(&mut c);
    c.final_summary();
}
