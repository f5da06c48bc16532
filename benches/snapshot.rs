//! Cost of `Shared::snapshot()`, the one load every request does, with and
//! without a reload storing new snapshots at the same time (arc-swap's
//! `benches/background.rs` idea, on our own types).
//!
//! Readers are 1 or 2 threads (the machine has 2 cores); each does `iters`
//! loads, and the time reported is the slowest reader's wall time over
//! `iters`, so it is the per-load latency as a request sees it. In the
//! `reloading` case a separate writer thread builds a complete snapshot from
//! the config (routes, pools, balancers: what a reload does) and `store`s it,
//! in a loop, for as long as the readers run: a reload rate far above any
//! real one, so this is the worst case. The number of stores is printed at
//! the end so the rate is visible.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion};
use switchyard::config::{self, Config};
use switchyard::snapshot::{Shared, Snapshot};
use tokio::time::Instant;

/// A config of the size a real deployment has: 20 routes over 5 pools of 3.
fn bench_config() -> Config {
    let mut text = String::from(
        "listeners:\n  - name: public\n    bind: \"127.0.0.1:0\"\naccess_log: off\nroutes:\n",
    );
    for r in 0..20 {
        text.push_str(&format!(
            "  - name: r{r}\n    match: {{ host: \"svc{r}.example.com\", path_prefix: \"/\" }}\n    pool: p{}\n",
            r % 5
        ));
    }
    text.push_str("pools:\n");
    for p in 0..5 {
        text.push_str(&format!(
            "  - name: p{p}\n    upstreams:\n      - {{ addr: \"10.0.{p}.1:8080\" }}\n      - {{ addr: \"10.0.{p}.2:8080\" }}\n      - {{ addr: \"10.0.{p}.3:8080\" }}\n"
        ));
    }
    config::parse(Path::new("bench.yaml"), &text).expect("the bench config is valid")
}

/// Runs `readers` threads of `iters` loads each; returns the slowest one's time.
fn timed_loads(shared: &Shared, readers: usize, iters: u64) -> Duration {
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..readers)
            .map(|_| {
                s.spawn(move || {
                    let start = Instant::now();
                    for _ in 0..iters {
                        let snapshot = shared.snapshot();
                        std::hint::black_box(snapshot.generation);
                    }
                    start.elapsed()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("reader threads do not panic"))
            .max()
            .unwrap_or_default()
    })
}

fn bench_snapshot(c: &mut Criterion) {
    let cfg = bench_config();
    let shared = Arc::new(Shared::new(
        Snapshot::build(cfg.clone(), None).expect("the bench snapshot builds"),
    ));
    let stores = AtomicU64::new(0);
    let mut group = c.benchmark_group("snapshot_load");
    for readers in [1usize, 2] {
        group.bench_function(BenchmarkId::new("idle", readers), |b| {
            b.iter_custom(|iters| timed_loads(&shared, readers, iters));
        });
        group.bench_function(BenchmarkId::new("reloading", readers), |b| {
            b.iter_custom(|iters| {
                let stop = AtomicBool::new(false);
                std::thread::scope(|s| {
                    s.spawn(|| {
                        while !stop.load(Ordering::Relaxed) {
                            let current = shared.snapshot();
                            match Snapshot::build(cfg.clone(), Some(&current)) {
                                Ok(next) => shared.store(next),
                                Err(error) => panic!("rebuild failed: {error}"),
                            }
                            stores.fetch_add(1, Ordering::Relaxed);
                        }
                    });
                    let took = timed_loads(&shared, readers, iters);
                    stop.store(true, Ordering::Relaxed);
                    took
                })
            });
        });
    }
    group.finish();
    println!(
        "snapshot_load/reloading: {} snapshots stored in total (generation {})",
        stores.load(Ordering::Relaxed),
        shared.snapshot().generation
    );
}

// A plain `main` rather than `criterion_group!`, whose generated `pub fn`
// has no doc and trips the crate's `missing_docs` lint.
fn main() {
    let mut criterion = Criterion::default().configure_from_args();
    bench_snapshot(&mut criterion);
    criterion.final_summary();
}
