//! `least_request`: power of two choices by in-flight requests, weight-aware
//! (SPEC section 5). The pool owns the in-flight counters and passes them in;
//! this module only samples and compares.
//!
//! # The algorithm
//!
//! Pick two distinct candidates uniformly at random and send the request to
//! the one with less load, here in-flight requests divided by weight.
//! Mitzenmacher ("The Power of Two Choices in Randomized Load Balancing",
//! 2001) shows that the second sample brings the maximum load down
//! exponentially compared with one random choice, while the pick stays O(1)
//! and avoids the herd behaviour of always choosing the global minimum from
//! stale counts. Finagle and tower's `balance::p2c` use the same scheme.
//!
//! Loads are compared as `in_flight(a) * weight(b) < in_flight(b) * weight(a)`
//! in `u64`: exact, no floats, no division. A tie goes to the first sample,
//! which is itself random.

use super::random::{below, Rng};

/// Power of two choices over candidates with these weights.
#[derive(Debug)]
pub(super) struct LeastRequest {
    weights: Box<[u32]>,
    rng: Rng,
}

// === impl LeastRequest ===

impl LeastRequest {
    /// A picker over `weights.len()` candidates seeded with `seed`; a weight
    /// of 0 counts as 1.
    pub(super) fn new(weights: &[u32], seed: u64) -> Self {
        Self {
            weights: weights.iter().map(|&w| w.max(1)).collect(),
            rng: Rng::with_seed(seed),
        }
    }

    /// The less loaded of two distinct random candidates (the only one when
    /// there is one), `None` when there are none.
    pub(super) fn pick(&self, in_flight: impl Fn(usize) -> u32) -> Option<usize> {
        let n = self.weights.len();
        if n < 2 {
            return (n == 1).then_some(0);
        }
        let (a, b) = self.sample_pair(n);
        let (wa, wb) = (self.weight(a), self.weight(b));
        let (la, lb) = (u64::from(in_flight(a)), u64::from(in_flight(b)));
        Some(if lb * wa < la * wb { b } else { a })
    }

    /// Two distinct uniform indices in `0..n`, `n >= 2`, from one random draw:
    /// the high half picks `a` among `n`, the low half picks `b` among the
    /// `n - 1` others.
    fn sample_pair(&self, n: usize) -> (usize, usize) {
        let bits = self.rng.next_u64();
        let a = below((bits >> 32) as u32, n);
        let b = below(bits as u32, n - 1);
        (a, if b >= a { b + 1 } else { b })
    }

    fn weight(&self, i: usize) -> u64 {
        self.weights.get(i).map_or(1, |&w| u64::from(w))
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use super::super::{Balancer, StrategyKind};
    use super::*;

    fn least_request(weights: &[u32], seed: u64) -> Balancer {
        let ids: Vec<String> = (0..weights.len()).map(|i| format!("u{i}")).collect();
        let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
        Balancer::new(StrategyKind::LeastRequest, weights, &ids, seed, None)
    }

    #[test]
    fn least_request_samples_two_distinct_candidates_every_time() {
        for n in [2, 3, 10, 100] {
            let p = LeastRequest::new(&vec![1; n], n as u64);
            for _ in 0..10_000 {
                let (a, b) = p.sample_pair(n);
                assert!(a != b && a < n && b < n, "n={n}: ({a}, {b})");
            }
        }
    }

    #[test]
    fn least_request_asks_the_load_of_two_different_candidates_per_pick() {
        let b = least_request(&[1; 5], 3);
        for _ in 0..1_000 {
            let asked = RefCell::new(Vec::new());
            let chosen = b.pick(None, |i| {
                asked.borrow_mut().push(i);
                0
            });
            let asked = asked.into_inner();
            assert_eq!(asked.len(), 2);
            assert_ne!(asked[0], asked[1]);
            assert!(chosen.is_some_and(|c| asked.contains(&c)));
        }
    }

    #[test]
    fn least_request_prefers_the_less_loaded_candidate() {
        // Two candidates: both are always sampled, so the idle one always wins.
        let b = least_request(&[1, 1], 5);
        assert!((0..1_000).all(|_| b.pick(None, |i| [7, 2][i]) == Some(1)));
        // Many candidates: the single busy one is never chosen.
        let b = least_request(&[1; 10], 5);
        assert!((0..1_000).all(|_| b.pick(None, |i| if i == 4 { 50 } else { 1 }) != Some(4)));
    }

    #[test]
    fn least_request_divides_load_by_weight() {
        // 6 in flight on weight 3 (load 2) beats 3 in flight on weight 1 (load 3).
        let b = least_request(&[3, 1], 9);
        assert!((0..1_000).all(|_| b.pick(None, |i| [6, 3][i]) == Some(0)));
        // 9 on weight 3 (load 3) loses to 2 on weight 1 (load 2).
        assert!((0..1_000).all(|_| b.pick(None, |i| [9, 2][i]) == Some(1)));
    }

    #[test]
    fn least_request_spreads_ties_over_both_candidates() {
        let b = least_request(&[1, 1], 11);
        let zeros = (0..10_000)
            .filter(|_| b.pick(None, |_| 4) == Some(0))
            .count();
        assert!((4_000..=6_000).contains(&zeros), "{zeros}");
    }

    #[test]
    fn least_request_with_one_candidate_picks_it_without_sampling() {
        let b = least_request(&[5], 0);
        assert_eq!(b.pick(None, |_| u32::MAX), Some(0));
    }

    #[test]
    fn least_request_balances_a_skewed_start_toward_the_light_ones() {
        let b = least_request(&[1; 4], 13);
        let load = RefCell::new([40u32, 0, 0, 0]);
        for _ in 0..90 {
            let chosen = b.pick(None, |i| load.borrow()[i]).expect("non-empty");
            load.borrow_mut()[chosen] += 1;
        }
        let load = load.into_inner();
        assert_eq!(load[0], 40, "{load:?}");
        assert!(
            load[1..].iter().all(|&l| (25..=35).contains(&l)),
            "{load:?}"
        );
    }
}
