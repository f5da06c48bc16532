//! `round_robin`: the candidates in turn, weights ignored (SPEC section 5).
//! One atomic counter, so N sequential picks over k candidates give each
//! exactly N/k when k divides N. The pool decides which upstreams are
//! candidates and rebuilds this picker when that set changes.

use std::sync::atomic::{AtomicUsize, Ordering};

/// Round robin over `len` candidates.
///
/// The counter is the position in an endless sequence, not an index: when the
/// candidate set changes, the new picker starts from the old counter, so a
/// reload does not send the next request back to candidate 0.
#[derive(Debug)]
pub(super) struct RoundRobin {
    len: usize,
    next: AtomicUsize,
}

// === impl RoundRobin ===

impl RoundRobin {
    /// A picker over `len` candidates whose counter starts at `start`.
    pub(super) fn new(len: usize, start: usize) -> Self {
        Self {
            len,
            next: AtomicUsize::new(start),
        }
    }

    /// The next candidate in turn, `None` when `len == 0`.
    pub(super) fn pick(&self) -> Option<usize> {
        // Relaxed: the counter orders nothing else; each caller only needs a
        // distinct ticket. Wrapping after 2^64 picks is harmless.
        let ticket = self.next.fetch_add(1, Ordering::Relaxed);
        ticket.checked_rem(self.len)
    }

    /// The counter, to carry over into the picker that replaces this one.
    pub(super) fn position(&self) -> usize {
        self.next.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Balancer, StrategyKind};

    fn round_robin(len: usize) -> Balancer {
        let ids: Vec<String> = (0..len).map(|i| format!("10.0.0.{i}:80")).collect();
        let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
        Balancer::new(StrategyKind::RoundRobin, &vec![1; len], &ids, 0, None)
    }

    #[test]
    fn round_robin_gives_each_exactly_n_over_k_when_k_divides_n() {
        for k in [1, 2, 3, 7] {
            let b = round_robin(k);
            let mut counts = vec![0; k];
            for _ in 0..k * 100 {
                counts[b.pick(None, |_| 0).expect("non-empty")] += 1;
            }
            assert!(counts.iter().all(|&c| c == 100), "k={k}: {counts:?}");
        }
    }

    #[test]
    fn round_robin_visits_candidates_in_order() {
        let b = round_robin(3);
        let seq: Vec<_> = (0..7).filter_map(|_| b.pick(None, |_| 0)).collect();
        assert_eq!(seq, [0, 1, 2, 0, 1, 2, 0]);
    }

    #[test]
    fn round_robin_ignores_weights() {
        let b = Balancer::new(StrategyKind::RoundRobin, &[9, 1], &["a", "b"], 0, None);
        let seq: Vec<_> = (0..4).filter_map(|_| b.pick(None, |_| 0)).collect();
        assert_eq!(seq, [0, 1, 0, 1]);
    }

    #[test]
    fn round_robin_carries_its_counter_over_to_the_next_balancer() {
        let old = round_robin(3);
        assert_eq!(old.pick(None, |_| 0), Some(0));
        assert_eq!(old.pick(None, |_| 0), Some(1));
        let ids = ["a", "b", "c", "d"];
        let new = Balancer::new(StrategyKind::RoundRobin, &[1; 4], &ids, 0, Some(&old));
        assert_eq!(new.pick(None, |_| 0), Some(2));
        assert_eq!(new.pick(None, |_| 0), Some(3));
        assert_eq!(new.pick(None, |_| 0), Some(0));
    }
}
