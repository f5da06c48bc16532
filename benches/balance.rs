//! Cost of one `Balancer::pick` for each strategy over 3 and 100 candidates
//! (target: under 100 ns each). In-flight counts are read from atomics, as
//! the pool does; consistent-hash keys cycle through a fixed set so the ring
//! search is not always the same path.

use std::hint::black_box;
use std::sync::atomic::{AtomicU32, Ordering};

use std::net::SocketAddr;
use std::sync::Arc;

use criterion::{BenchmarkId, Criterion};
use switchyard::balance::{hash_key, Balancer, StrategyKind};
use switchyard::config::PoolConfig;
use switchyard::upstream::{Pool, Source, Upstream};

/// Keys per cycle; a power of two so the cycle index is a mask.
const KEYS: usize = 1024;

fn bench_pick(c: &mut Criterion) {
    let kinds = [
        ("round_robin", StrategyKind::RoundRobin),
        ("weighted", StrategyKind::Weighted),
        ("random", StrategyKind::Random),
        ("least_request", StrategyKind::LeastRequest),
        ("consistent_hash", StrategyKind::ConsistentHash),
    ];
    let keys: Vec<u64> = (0..KEYS)
        .map(|i| hash_key(format!("session-{i}").as_bytes()))
        .collect();
    let mut group = c.benchmark_group("pick");
    for n in [3usize, 100] {
        let ids: Vec<String> = (0..n)
            .map(|i| format!("10.0.{}.{}:8080", i / 256, i % 256))
            .collect();
        let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
        let weights: Vec<u32> = (0..n).map(|i| 1 + (i as u32 * 37) % 10).collect();
        let in_flight: Vec<AtomicU32> = (0..n)
            .map(|i| AtomicU32::new((i as u32 * 13) % 7))
            .collect();
        for (name, kind) in kinds {
            let balancer = Balancer::new(kind, &weights, &ids, 0x5eed, None);
            group.bench_with_input(BenchmarkId::new(name, n), &keys, |b, keys| {
                let mut i = 0;
                b.iter(|| {
                    let key = keys[i & (KEYS - 1)];
                    i += 1;
                    black_box(balancer.pick(black_box(Some(key)), |c| {
                        in_flight.get(c).map_or(0, |l| l.load(Ordering::Relaxed))
                    }))
                });
            });
        }
    }
    group.finish();
}

/// What a request pays per pick through its pool: `Pool::candidates()` (an `ArcSwap` load
/// plus the health-epoch check) and the round-robin pick, over 3 and 100 upstreams.
fn bench_pool_pick(c: &mut Criterion) {
    let cfg: PoolConfig = serde_yaml_ng::from_str("name: p").expect("a minimal pool config");
    let mut group = c.benchmark_group("pool_pick");
    for n in [3u16, 100] {
        let upstreams = (0..n)
            .map(|i| {
                let addr = SocketAddr::from(([10, 0, 0, 1], 8000 + i));
                Arc::new(Upstream::new(addr, 1, Source::Static))
            })
            .collect();
        let pool = Pool::new(&cfg, upstreams, None).expect("no TLS");
        group.bench_function(BenchmarkId::new("round_robin", n), |b| {
            b.iter(|| {
                let candidates = pool.candidates();
                black_box(candidates.balancer.pick(None, |_| 0))
            });
        });
    }
    group.finish();
}

// A plain `main` rather than `criterion_group!`, whose generated `pub fn`
// has no doc and trips the crate's `missing_docs` lint.
fn main() {
    let mut criterion = Criterion::default().configure_from_args();
    bench_pick(&mut criterion);
    bench_pool_pick(&mut criterion);
    criterion.final_summary();
}
