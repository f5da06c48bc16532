//! `random`: a uniform choice among the candidates, weights ignored (SPEC
//! section 5). Also home of `Rng`, the lock-free seedable generator that
//! `least_request` and `consistent_hash` (for requests without a key) share.
//! Which upstreams are candidates is decided by the pool, not here.

use std::sync::atomic::{AtomicU64, Ordering};

use super::hash::mix64;

/// The splitmix64 increment: 2^64 divided by the golden ratio, odd, so the
/// state visits every `u64` before repeating.
const GOLDEN_GAMMA: u64 = 0x9e37_79b9_7f4a_7c15;

/// A splitmix64 generator (Steele, Lea, Flood, "Fast splittable pseudorandom
/// number generators", 2014) whose state is one `AtomicU64`.
///
/// splitmix64's state advances by a constant, so `fetch_add` is the whole
/// update: concurrent callers each get a distinct state without a lock or a
/// compare-and-swap loop, and the output is that state through `mix64`.
/// Quality is plenty for load balancing; it is not cryptographic.
#[derive(Debug)]
pub(super) struct Rng {
    state: AtomicU64,
}

// === impl Rng ===

impl Rng {
    /// A generator whose sequence is fixed by `seed`.
    pub(super) fn with_seed(seed: u64) -> Self {
        Self {
            state: AtomicU64::new(seed),
        }
    }

    /// The next 64 random bits.
    pub(super) fn next_u64(&self) -> u64 {
        let state = self
            .state
            .fetch_add(GOLDEN_GAMMA, Ordering::Relaxed)
            .wrapping_add(GOLDEN_GAMMA);
        mix64(state)
    }
}

/// Maps 32 random bits onto `0..n` by multiply-shift (Lemire): no division,
/// and a bias of at most `n / 2^32`, invisible for pools of any real size.
pub(super) fn below(bits: u32, n: usize) -> usize {
    // `n` is a candidate count; beyond u32 the pool would not fit in memory.
    let n = n.min(u32::MAX as usize) as u64;
    ((u64::from(bits) * n) >> 32) as usize
}

/// Uniform random choice over `len` candidates.
#[derive(Debug)]
pub(super) struct Random {
    len: usize,
    rng: Rng,
}

// === impl Random ===

impl Random {
    /// A picker over `len` candidates seeded with `seed`.
    pub(super) fn new(len: usize, seed: u64) -> Self {
        Self {
            len,
            rng: Rng::with_seed(seed),
        }
    }

    /// A uniformly random index in `0..len`, `None` when `len == 0`.
    pub(super) fn pick(&self) -> Option<usize> {
        if self.len == 0 {
            return None;
        }
        // The high half of the output: splitmix64's bits are all good, but the
        // high half is what multiply-shift conventionally consumes.
        Some(below((self.rng.next_u64() >> 32) as u32, self.len))
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Balancer, StrategyKind};
    use super::*;

    #[test]
    fn random_is_within_ten_percent_of_uniform_over_30k_picks() {
        let b = Balancer::new(
            StrategyKind::Random,
            &[1, 5, 100],
            &["a", "b", "c"],
            7,
            None,
        );
        let mut counts = [0u32; 3];
        for _ in 0..30_000 {
            counts[b.pick(None, |_| 0).expect("three candidates")] += 1;
        }
        for count in counts {
            assert!((9_000..=11_000).contains(&count), "{counts:?}");
        }
    }

    #[test]
    fn random_with_the_same_seed_repeats_its_sequence() {
        let a = Random::new(10, 42);
        let b = Random::new(10, 42);
        let seq_a: Vec<_> = (0..100).map(|_| a.pick()).collect();
        let seq_b: Vec<_> = (0..100).map(|_| b.pick()).collect();
        assert_eq!(seq_a, seq_b);
        let c = Random::new(10, 43);
        assert_ne!(seq_a, (0..100).map(|_| c.pick()).collect::<Vec<_>>());
    }

    #[test]
    fn random_over_one_candidate_always_picks_it() {
        let r = Random::new(1, 0);
        assert!((0..100).all(|_| r.pick() == Some(0)));
    }

    #[test]
    fn below_covers_the_whole_range_and_nothing_past_it() {
        assert_eq!(below(0, 7), 0);
        assert_eq!(below(u32::MAX, 7), 6);
        assert_eq!(below(u32::MAX, 1), 0);
    }
}
