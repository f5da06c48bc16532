//! Cost of one `Balancer::pick` for each strategy over 3 and 100 candidates
//! (target: under 100 ns each). In-flight counts are read from atomics, as
//! the pool does; consistent-hash keys cycle through a fixed set so the ring
//! search is not always the same path.

use std::hint::black_box;
use std::sync::atomic::{AtomicU32, Ordering};

use criterion::{BenchmarkId, Criterion};
use switchyard::balance::{hash_key, Balancer, StrategyKind};

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

// A plain `main` rather than `criterion_group!`, whose generated `pub fn`
// has no doc and trips the crate's `missing_docs` lint.
fn main() {
    let mut criterion = Criterion::default().configure_from_args();
    bench_pick(&mut criterion);
    criterion.final_summary();
}
