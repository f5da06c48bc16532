//! `weighted`: smooth weighted round robin, the NGINX algorithm (SPEC
//! section 5): over every window of sum(weights) sequential picks each
//! candidate gets exactly its weight, interleaved, so 3:1 gives `a a b a`.
//! The pool decides which upstreams are candidates and rebuilds this picker
//! when that set changes.
//!
//! # The algorithm
//!
//! NGINX's `ngx_http_upstream_get_peer` (upstream round robin, introduced in
//! nginx 1.3.1 / commit "Upstream: smooth weighted round-robin balancing")
//! keeps a `current` value per peer. On each pick every `current[i] +=
//! weight[i]`; the peer with the largest `current` wins (the first one on a
//! tie) and its `current` drops by the total weight. The sum of all
//! `current`s stays 0, the winner is always the peer furthest "behind" its
//! share, and after `total` picks every `current` is back to 0: the sequence
//! is periodic with period `total` and each peer appears exactly `weight`
//! times per period. 5:1:1 gives `a a b a c a a`.
//!
//! NGINX runs that step under the upstream's lock. Here it runs once, when
//! the picker is built: the whole period is written into a schedule, and a
//! pick is `schedule[counter % period]` with one atomic `fetch_add`, no lock.
//! Weights are first divided by their gcd, which shortens the period without
//! changing the sequence (10:30 behaves as 1:3).
//!
//! # Bounds
//!
//! Building costs `period * n` steps and `period * 4` bytes. When the reduced
//! period exceeds `MAX_PERIOD` or the steps exceed `BUILD_BUDGET`, weights are
//! scaled down proportionally (each stays at least 1) until they fit: the
//! sequence is still smooth and exact for the scaled weights, and ratios are
//! kept to within one part in `period / n`. Only pools of thousands of
//! upstreams with very uneven weights reach that. Equal weights skip the
//! simulation: the NGINX sequence is then plain round robin.

use std::sync::atomic::{AtomicUsize, Ordering};

use super::gcd;

/// Longest schedule kept (4 MiB of `u32`); longer periods are scaled down.
pub(super) const MAX_PERIOD: u64 = 1 << 20;

/// Most `period * n` simulation steps spent building one schedule (tens of
/// milliseconds at worst); beyond it weights are scaled down.
pub(super) const BUILD_BUDGET: u64 = 1 << 24;

/// Smooth weighted round robin over a precomputed period.
#[derive(Debug)]
pub(super) struct Weighted {
    /// One period of the NGINX sequence, as candidate indices.
    schedule: Box<[u32]>,
    /// Position in the endless sequence; carried over across rebuilds.
    next: AtomicUsize,
}

// === impl Weighted ===

impl Weighted {
    /// A picker over `weights.len()` candidates whose counter starts at `start`.
    ///
    /// Weights of 0 count as 1 (config validation requires 1..=10000).
    pub(super) fn new(weights: &[u32], start: usize) -> Self {
        Self {
            schedule: schedule(&period_weights(weights)),
            next: AtomicUsize::new(start),
        }
    }

    /// The next candidate of the schedule, `None` when there are no candidates.
    pub(super) fn pick(&self) -> Option<usize> {
        let ticket = self.next.fetch_add(1, Ordering::Relaxed);
        let slot = ticket.checked_rem(self.schedule.len())?;
        self.schedule.get(slot).map(|&i| i as usize)
    }

    /// The counter, to carry over into the picker that replaces this one.
    pub(super) fn position(&self) -> usize {
        self.next.load(Ordering::Relaxed)
    }
}

/// The weights one period is built from: clamped to at least 1, divided by
/// their gcd, and scaled down when the period or build cost is over budget.
pub(super) fn period_weights(weights: &[u32]) -> Vec<u64> {
    let mut reduced = reduce(weights.iter().map(|&w| u64::from(w.max(1))).collect());
    let n = reduced.len() as u64;
    let limit = MAX_PERIOD.min(BUILD_BUDGET / n.max(1)).max(n);
    let total: u64 = reduced.iter().sum();
    if total > limit {
        let scaled = reduced
            .iter()
            .map(|&w| (w * limit / total).max(1))
            .collect();
        reduced = reduce(scaled);
    }
    reduced
}

/// Divides every weight by the gcd of all of them.
fn reduce(mut weights: Vec<u64>) -> Vec<u64> {
    let g = weights.iter().fold(0, |g, &w| gcd(g, w));
    if g > 1 {
        weights.iter_mut().for_each(|w| *w /= g);
    }
    weights
}

/// One period of the NGINX smooth weighted round robin over `weights`.
fn schedule(weights: &[u64]) -> Box<[u32]> {
    let n = weights.len();
    if weights.iter().all(|&w| Some(&w) == weights.first()) {
        // Equal weights: every `current` ties and the first wins each time,
        // which is round robin in index order.
        return (0..n as u32).collect();
    }
    let total: u64 = weights.iter().sum();
    // Each `current` stays within (-total, total): i64 never overflows.
    let total_i = total as i64;
    let mut current = vec![0i64; n];
    let mut out = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let (mut best, mut best_current) = (0, i64::MIN);
        for (i, (cur, &w)) in current.iter_mut().zip(weights).enumerate() {
            *cur += w as i64;
            // Strictly greater: on a tie the first candidate wins, as in NGINX.
            if *cur > best_current {
                (best, best_current) = (i, *cur);
            }
        }
        current[best] -= total_i;
        out.push(best as u32);
    }
    out.into_boxed_slice()
}

#[cfg(test)]
mod tests {
    use super::super::random::Rng;
    use super::super::{Balancer, StrategyKind};
    use super::*;

    fn weighted(weights: &[u32]) -> Balancer {
        let ids: Vec<String> = (0..weights.len()).map(|i| format!("u{i}")).collect();
        let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
        Balancer::new(StrategyKind::Weighted, weights, &ids, 0, None)
    }

    fn picks(b: &Balancer, count: usize) -> Vec<usize> {
        (0..count).filter_map(|_| b.pick(None, |_| 0)).collect()
    }

    /// Asserts that every window of `sum(weights)` consecutive picks, at any
    /// offset, holds each candidate exactly its weight.
    fn assert_exact_per_window(weights: &[u32], seq: &[usize]) {
        let window = weights.iter().map(|&w| w as usize).sum::<usize>();
        let mut counts = vec![0usize; weights.len()];
        for (end, &i) in seq.iter().enumerate() {
            counts[i] += 1;
            if end >= window {
                counts[seq[end - window]] -= 1;
            }
            if end + 1 >= window {
                let want: Vec<usize> = weights.iter().map(|&w| w as usize).collect();
                assert_eq!(counts, want, "window ending at {end}, weights {weights:?}");
            }
        }
    }

    #[test]
    fn weighted_three_to_one_gives_a_a_b_a_in_every_window() {
        let seq = picks(&weighted(&[3, 1]), 16);
        assert_eq!(seq, [0, 0, 1, 0].repeat(4));
    }

    #[test]
    fn weighted_five_one_one_interleaves_as_nginx_does() {
        // The example of NGINX's smooth weighted round robin commit message.
        let seq = picks(&weighted(&[5, 1, 1]), 14);
        assert_eq!(seq, [0, 0, 1, 0, 2, 0, 0].repeat(2));
    }

    #[test]
    fn weighted_is_exact_in_every_window_for_random_weights() {
        let rng = Rng::with_seed(1);
        for round in 0..50 {
            let n = 1 + (rng.next_u64() % 8) as usize;
            let weights: Vec<u32> = (0..n).map(|_| 1 + (rng.next_u64() % 20) as u32).collect();
            let window: u32 = weights.iter().sum();
            let seq = picks(&weighted(&weights), 3 * window as usize + round);
            assert_exact_per_window(&weights, &seq);
        }
    }

    #[test]
    fn weighted_with_a_common_divisor_keeps_the_same_sequence() {
        assert_eq!(picks(&weighted(&[30, 10]), 8), picks(&weighted(&[3, 1]), 8));
        assert_exact_per_window(&[30, 10], &picks(&weighted(&[30, 10]), 120));
    }

    #[test]
    fn weighted_with_equal_weights_is_round_robin() {
        assert_eq!(picks(&weighted(&[4, 4, 4]), 6), [0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn weighted_counts_a_zero_weight_as_one() {
        assert_eq!(picks(&weighted(&[0, 1]), 4), [0, 1, 0, 1]);
    }

    #[test]
    fn weighted_scales_an_oversized_period_down_proportionally() {
        // Coprime weights near the config maximum over 200 upstreams: the
        // reduced period (about one million) times 200 is over the budget.
        let weights: Vec<u32> = (0..200)
            .map(|i| if i % 2 == 0 { 9_999 } else { 5_000 })
            .collect();
        let scaled = period_weights(&weights);
        let period: u64 = scaled.iter().sum();
        assert!(period * 200 <= BUILD_BUDGET + 200 * 200, "period {period}");
        let ratio = scaled[0] as f64 / scaled[1] as f64;
        assert!((ratio - 9_999.0 / 5_000.0).abs() < 0.01, "ratio {ratio}");
    }

    #[test]
    fn weighted_carries_its_counter_over_to_the_next_balancer() {
        let old = weighted(&[3, 1]);
        assert_eq!(picks(&old, 2), [0, 0]);
        let new = Balancer::new(StrategyKind::Weighted, &[3, 1], &["a", "b"], 0, Some(&old));
        assert_eq!(picks(&new, 4), [1, 0, 0, 0]);
    }
}
