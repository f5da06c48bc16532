//! Load balancing: which candidate upstream serves a request (SPEC section
//! 5). A `Balancer` is built once per candidate set (the pool rebuilds it
//! when the set of healthy, non-ejected upstreams changes) and picks with
//! `&self`, atomics only: no lock, no allocation. Health, ejection, in-flight
//! counting and retries on another upstream belong to the pool and the proxy;
//! this module sees indices, weights and stable ids.
//!
//! One file per strategy: `round_robin`, `weighted` (smooth weighted round
//! robin, NGINX), `random`, `least_request` (power of two choices),
//! `consistent_hash` (Ketama ring); `hash` holds the fixed key hash.

use serde::{Deserialize, Serialize};

mod consistent_hash;
mod hash;
mod least_request;
mod random;
mod round_robin;
mod weighted;

pub use hash::hash_key;

use consistent_hash::ConsistentHash;
use least_request::LeastRequest;
use random::Random;
use round_robin::RoundRobin;
use weighted::Weighted;

/// The balancing strategy of a pool, as named in the config file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StrategyKind {
    /// Candidates in turn; weights ignored.
    #[default]
    RoundRobin,
    /// Uniform random choice; weights ignored.
    Random,
    /// Smooth weighted round robin (NGINX).
    Weighted,
    /// Power of two choices by in-flight requests, weight-aware.
    LeastRequest,
    /// Ketama-style hash ring on the pool's `hash_key`.
    ConsistentHash,
}

/// Picks one of a fixed set of candidates with the strategy of its pool.
///
/// Candidate `i` is the `i`th entry of the `weights` and `ids` the balancer
/// was built from. Share it behind an `Arc` (or inside the config snapshot):
/// `pick` takes `&self` and is safe to call from every worker at once.
///
/// ```
/// use switchyard::balance::{Balancer, StrategyKind};
///
/// // Smooth weighted round robin, 3:1, interleaves as a a b a.
/// let weighted = Balancer::new(StrategyKind::Weighted, &[3, 1], &["a", "b"], 7, None);
/// let picks: Vec<usize> = (0..4).filter_map(|_| weighted.pick(None, |_| 0)).collect();
/// assert_eq!(picks, [0, 0, 1, 0]);
/// ```
#[derive(Debug)]
pub struct Balancer {
    len: usize,
    strategy: Strategy,
}

/// The strategy state; each variant's module documents its algorithm.
#[derive(Debug)]
enum Strategy {
    RoundRobin(RoundRobin),
    Weighted(Weighted),
    Random(Random),
    LeastRequest(LeastRequest),
    ConsistentHash(ConsistentHash),
}

// === impl Balancer ===

impl Balancer {
    /// Builds the balancer of one candidate set; see the parameters below.
    ///
    /// - `weights[i]`, `ids[i]`: candidate `i`'s weight (0 counts as 1) and
    ///   stable identity such as `"10.0.0.1:8080"`; the hash ring places
    ///   points by id so keys stay put when others leave. The candidate count
    ///   is `weights.len()`; `ids` should be as long.
    /// - `seed`: seeds the generator of `random`, `least_request` and
    ///   keyless `consistent_hash` picks.
    /// - `previous`: the balancer this one replaces; `round_robin` and
    ///   `weighted` continue from its counter instead of restarting at 0.
    pub fn new(
        kind: StrategyKind,
        weights: &[u32],
        ids: &[&str],
        seed: u64,
        previous: Option<&Balancer>,
    ) -> Balancer {
        let start = previous.and_then(Balancer::position).unwrap_or(0);
        let len = weights.len();
        let strategy = match kind {
            StrategyKind::RoundRobin => Strategy::RoundRobin(RoundRobin::new(len, start)),
            StrategyKind::Weighted => Strategy::Weighted(Weighted::new(weights, start)),
            StrategyKind::Random => Strategy::Random(Random::new(len, seed)),
            StrategyKind::LeastRequest => Strategy::LeastRequest(LeastRequest::new(weights, seed)),
            StrategyKind::ConsistentHash => {
                Strategy::ConsistentHash(ConsistentHash::new(weights, ids, seed))
            }
        };
        Balancer { len, strategy }
    }

    /// Picks a candidate index in `0..len()`, or `None` when there are no candidates.
    ///
    /// `key` is the request's `hash_key`, used by `consistent_hash` only
    /// (`None` there means a random pick). `in_flight(i)` is candidate `i`'s
    /// current in-flight count, called (twice) by `least_request` only.
    #[inline]
    pub fn pick(&self, key: Option<u64>, in_flight: impl Fn(usize) -> u32) -> Option<usize> {
        if self.len == 0 {
            return None;
        }
        match &self.strategy {
            Strategy::RoundRobin(s) => s.pick(),
            Strategy::Weighted(s) => s.pick(),
            Strategy::Random(s) => s.pick(),
            Strategy::LeastRequest(s) => s.pick(in_flight),
            Strategy::ConsistentHash(s) => s.pick(key),
        }
    }

    /// Number of candidates.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there are no candidates (every pick is `None`).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The strategy this balancer runs.
    pub fn kind(&self) -> StrategyKind {
        match self.strategy {
            Strategy::RoundRobin(_) => StrategyKind::RoundRobin,
            Strategy::Weighted(_) => StrategyKind::Weighted,
            Strategy::Random(_) => StrategyKind::Random,
            Strategy::LeastRequest(_) => StrategyKind::LeastRequest,
            Strategy::ConsistentHash(_) => StrategyKind::ConsistentHash,
        }
    }

    /// The round-robin counter a successor continues from, if this strategy has one.
    fn position(&self) -> Option<usize> {
        match &self.strategy {
            Strategy::RoundRobin(s) => Some(s.position()),
            Strategy::Weighted(s) => Some(s.position()),
            _ => None,
        }
    }
}

/// Greatest common divisor; `gcd(0, x) == x`.
fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [StrategyKind; 5] = [
        StrategyKind::RoundRobin,
        StrategyKind::Weighted,
        StrategyKind::Random,
        StrategyKind::LeastRequest,
        StrategyKind::ConsistentHash,
    ];

    #[test]
    fn every_strategy_returns_none_without_candidates() {
        for kind in ALL {
            let b = Balancer::new(kind, &[], &[], 1, None);
            assert!(b.is_empty());
            assert_eq!(b.pick(Some(42), |_| 0), None, "{kind:?}");
            assert_eq!(b.pick(None, |_| 0), None, "{kind:?}");
        }
    }

    #[test]
    fn every_strategy_stays_in_range_and_reports_its_kind() {
        let ids = ["a", "b", "c", "d", "e"];
        for kind in ALL {
            let b = Balancer::new(kind, &[1, 2, 3, 4, 5], &ids, 1, None);
            assert_eq!((b.len(), b.kind()), (5, kind));
            for key in 0..1_000u64 {
                let key = hash_key(&key.to_le_bytes());
                assert!(
                    b.pick(Some(key), |i| i as u32).is_some_and(|i| i < 5),
                    "{kind:?}"
                );
            }
        }
    }

    #[test]
    fn every_strategy_with_one_candidate_always_picks_it() {
        for kind in ALL {
            let b = Balancer::new(kind, &[3], &["only"], 1, None);
            assert!(
                (0..100u64).all(|k| b.pick(Some(k), |_| 9) == Some(0)),
                "{kind:?}"
            );
        }
    }

    #[test]
    fn counter_carries_over_across_strategies_that_have_one() {
        let old = Balancer::new(
            StrategyKind::RoundRobin,
            &[1, 1, 1],
            &["a", "b", "c"],
            0,
            None,
        );
        for _ in 0..4 {
            let _ = old.pick(None, |_| 0);
        }
        let new = Balancer::new(
            StrategyKind::Weighted,
            &[1, 1, 1],
            &["a", "b", "c"],
            0,
            Some(&old),
        );
        assert_eq!(new.pick(None, |_| 0), Some(1));
        let random = Balancer::new(StrategyKind::Random, &[1; 3], &["a", "b", "c"], 0, None);
        let rr = Balancer::new(
            StrategyKind::RoundRobin,
            &[1; 3],
            &["a", "b", "c"],
            0,
            Some(&random),
        );
        assert_eq!(rr.pick(None, |_| 0), Some(0));
    }

    #[test]
    fn strategy_names_are_the_spec_words() {
        let names: Vec<String> = ALL
            .iter()
            .map(|k| serde_json::to_string(k).expect("unit enum serializes"))
            .collect();
        let want = [
            "round_robin",
            "weighted",
            "random",
            "least_request",
            "consistent_hash",
        ];
        assert_eq!(names, want.map(|w| format!("\"{w}\"")));
    }

    #[test]
    fn balancer_is_shared_across_threads() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Balancer>();
    }
}
