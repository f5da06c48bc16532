//! `consistent_hash`: a Ketama-style hash ring (SPEC section 5). The same
//! key goes to the same upstream while the candidate set is unchanged, and
//! removing one of k upstreams remaps only about 1/k of the keys. Turning a
//! request into a key (`hash_key` over a header, cookie or client IP) is the
//! proxy's job; which upstreams are candidates is the pool's.
//!
//! # The algorithm
//!
//! Karger et al., "Consistent Hashing and Random Trees" (STOC 1997), as
//! popularised by last.fm's libketama: each candidate owns many points on a
//! circle of `u64`s, and a key belongs to the first point at or after it,
//! wrapping past the end. Points are `point_hash(id, replica)`, so they
//! depend on the candidate's stable identity (its address), not on its
//! index: when a candidate leaves, only its points go, and only its keys move
//! (each to the next point on the ring, spread over the others).
//!
//! Each candidate gets `POINTS_PER_WEIGHT * weight / gcd(weights)` points, so
//! a candidate of weight 3 receives about three times the keys of one of
//! weight 1. At most `MAX_POINTS` are placed; above that the counts are scaled
//! down proportionally. Replica numbers count up from 0, so a candidate whose
//! count shrinks (the gcd or the scale changed) keeps a subset of its points
//! and only the keys of the dropped points move.
//!
//! A pick is a binary search over the sorted points. Requests without a key
//! use a random key: a weighted random choice.

use super::gcd;
use super::hash::point_hash;
use super::random::Rng;

/// Points per unit of (gcd-reduced) weight, as in libketama.
pub(super) const POINTS_PER_WEIGHT: u64 = 160;

/// Most points on one ring (1.9 MiB): 1000 candidates of equal weight.
pub(super) const MAX_POINTS: u64 = 160_000;

/// A hash ring over candidates identified by `ids`.
#[derive(Debug)]
pub(super) struct ConsistentHash {
    /// Point positions, sorted ascending.
    points: Box<[u64]>,
    /// `owners[j]`: the candidate index owning `points[j]`.
    owners: Box<[u32]>,
    /// Random keys for requests that have none.
    rng: Rng,
}

// === impl ConsistentHash ===

impl ConsistentHash {
    /// A ring over `weights.len()` candidates; `ids[i]` names candidate `i`
    /// (its decimal index if `ids` is short). A weight of 0 counts as 1.
    pub(super) fn new(weights: &[u32], ids: &[&str], seed: u64) -> Self {
        let counts = point_counts(weights);
        let mut ring: Vec<(u64, u32)> = Vec::with_capacity(counts.iter().sum::<u64>() as usize);
        for (i, &count) in counts.iter().enumerate() {
            let fallback;
            let id = match ids.get(i) {
                Some(id) => id.as_bytes(),
                None => {
                    fallback = i.to_string();
                    fallback.as_bytes()
                }
            };
            // Counts are capped at MAX_POINTS, far below u32::MAX.
            for replica in 0..count as u32 {
                ring.push((point_hash(id, replica), i as u32));
            }
        }
        // Sorting by owner too makes a (vanishingly rare) collision resolve
        // the same way on every build.
        ring.sort_unstable();
        Self {
            points: ring.iter().map(|&(p, _)| p).collect(),
            owners: ring.iter().map(|&(_, o)| o).collect(),
            rng: Rng::with_seed(seed),
        }
    }

    /// The owner of the first point at or after `key` (a random key when
    /// `None`), `None` when there are no candidates.
    pub(super) fn pick(&self, key: Option<u64>) -> Option<usize> {
        let key = key.unwrap_or_else(|| self.rng.next_u64());
        let at = self.points.partition_point(|&p| p < key);
        // Past the last point the ring wraps around to the first.
        let at = if at == self.points.len() { 0 } else { at };
        self.owners.get(at).map(|&o| o as usize)
    }
}

/// Points per candidate: `POINTS_PER_WEIGHT * weight / gcd`, scaled down to
/// `MAX_POINTS` in total, at least 1 each.
fn point_counts(weights: &[u32]) -> Vec<u64> {
    let weights: Vec<u64> = weights.iter().map(|&w| u64::from(w.max(1))).collect();
    let g = weights.iter().fold(0, |g, &w| gcd(g, w)).max(1);
    let counts: Vec<u64> = weights
        .iter()
        .map(|&w| POINTS_PER_WEIGHT * (w / g))
        .collect();
    let total: u64 = counts.iter().sum();
    if total <= MAX_POINTS {
        return counts;
    }
    counts
        .iter()
        .map(|&c| (c * MAX_POINTS / total).max(1))
        .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::super::{hash_key, Balancer, StrategyKind};
    use super::*;

    fn ring(ids: &[&str]) -> Balancer {
        Balancer::new(
            StrategyKind::ConsistentHash,
            &vec![1; ids.len()],
            ids,
            0,
            None,
        )
    }

    /// The id each of `keys` lands on.
    fn owners<'a>(b: &Balancer, ids: &[&'a str], keys: &[u64]) -> Vec<&'a str> {
        keys.iter()
            .map(|&k| ids[b.pick(Some(k), |_| 0).expect("non-empty ring")])
            .collect()
    }

    fn keys(n: usize) -> Vec<u64> {
        (0..n)
            .map(|i| hash_key(format!("user-{i}").as_bytes()))
            .collect()
    }

    const IDS: [&str; 10] = [
        "10.0.0.1:8080",
        "10.0.0.2:8080",
        "10.0.0.3:8080",
        "10.0.0.4:8080",
        "10.0.0.5:8080",
        "10.0.0.6:8080",
        "10.0.0.7:8080",
        "10.0.0.8:8080",
        "10.0.0.9:8080",
        "10.0.0.10:8080",
    ];

    #[test]
    fn consistent_hash_sends_the_same_key_to_the_same_upstream() {
        let keys = keys(1_000);
        let first = owners(&ring(&IDS), &IDS, &keys);
        assert_eq!(first, owners(&ring(&IDS), &IDS, &keys));
        let b = ring(&IDS);
        assert_eq!(first, owners(&b, &IDS, &keys));
        assert_eq!(first, owners(&b, &IDS, &keys));
    }

    #[test]
    fn consistent_hash_follows_ids_not_positions() {
        let keys = keys(1_000);
        let mut shuffled = IDS;
        shuffled.reverse();
        assert_eq!(
            owners(&ring(&IDS), &IDS, &keys),
            owners(&ring(&shuffled), &shuffled, &keys)
        );
    }

    #[test]
    fn consistent_hash_removing_one_of_ten_moves_only_its_own_keys() {
        let keys = keys(10_000);
        let before = owners(&ring(&IDS), &IDS, &keys);
        let survivors: Vec<&str> = IDS.iter().copied().filter(|&id| id != IDS[3]).collect();
        let after = owners(&ring(&survivors), &survivors, &keys);
        let moved: Vec<usize> = (0..keys.len()).filter(|&k| before[k] != after[k]).collect();
        assert!(
            (500..=2_000).contains(&moved.len()),
            "moved {}",
            moved.len()
        );
        assert!(moved.iter().all(|&k| before[k] == IDS[3]));
        assert_eq!(moved.len(), before.iter().filter(|&&o| o == IDS[3]).count());
    }

    #[test]
    fn consistent_hash_adding_one_moves_keys_only_to_the_newcomer() {
        let keys = keys(10_000);
        let before = owners(&ring(&IDS[..9]), &IDS[..9], &keys);
        let after = owners(&ring(&IDS), &IDS, &keys);
        let moved = (0..keys.len()).filter(|&k| before[k] != after[k]);
        assert!(moved.into_iter().all(|k| after[k] == IDS[9]));
    }

    #[test]
    fn consistent_hash_spreads_keys_evenly_over_equal_weights() {
        let keys = keys(10_000);
        let mut counts: HashMap<&str, usize> = HashMap::new();
        for id in owners(&ring(&IDS), &IDS, &keys) {
            *counts.entry(id).or_default() += 1;
        }
        assert_eq!(counts.len(), 10);
        assert!(
            counts.values().all(|&c| (600..=1_400).contains(&c)),
            "{counts:?}"
        );
    }

    #[test]
    fn consistent_hash_gives_weight_three_about_three_quarters_of_keys() {
        let b = Balancer::new(
            StrategyKind::ConsistentHash,
            &[300, 100],
            &["a", "b"],
            0,
            None,
        );
        let heavy = keys(10_000)
            .iter()
            .filter(|&&k| b.pick(Some(k), |_| 0) == Some(0))
            .count();
        assert!((7_000..=8_000).contains(&heavy), "{heavy}");
    }

    #[test]
    fn consistent_hash_without_a_key_picks_randomly() {
        let b = ring(&IDS[..4]);
        let mut counts = [0usize; 4];
        for _ in 0..4_000 {
            counts[b.pick(None, |_| 0).expect("non-empty")] += 1;
        }
        assert!(counts.iter().all(|&c| c > 600), "{counts:?}");
    }

    #[test]
    fn consistent_hash_caps_the_ring_size() {
        let counts = point_counts(&vec![7; 5_000]);
        assert!(counts.iter().sum::<u64>() <= MAX_POINTS + 5_000);
        assert!(counts.iter().all(|&c| c >= 1));
        assert_eq!(point_counts(&[2, 4]), [160, 320]);
    }
}
