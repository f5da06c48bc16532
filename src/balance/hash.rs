//! The fixed hash functions of balancing: `hash_key` turns a request's key
//! (header value, cookie value or client IP) into the `u64` the hash ring
//! looks up, and `mix64` finalizes counters into random numbers. Both are
//! written out here, not taken from `std::hash`, because `DefaultHasher`'s
//! algorithm may change between Rust releases and `RandomState` is seeded
//! per process: a key must land on the same upstream after a restart or an
//! upgrade, and on every proxy of a fleet.
//!
//! The choice: FNV-1a 64 (Fowler, Noll, Vo; fixed offset basis and prime) over
//! the bytes, then the splitmix64 finalizer (Stafford's "Mix13", also used by
//! `java.util.SplittableRandom`). FNV-1a is simple and stable but mixes its
//! last bytes poorly into the high bits, which a ring ordered by value relies
//! on; the finalizer gives full avalanche so similar keys spread evenly.

/// FNV-1a 64 offset basis: the fixed seed of every hash.
const FNV_OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
/// FNV-1a 64 prime.
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// Fixed-seed 64-bit hash of a key's bytes, stable across runs, machines and Rust versions.
///
/// Use it to build the `key` argument of `Balancer::pick` for
/// `consistent_hash` pools.
pub fn hash_key(bytes: &[u8]) -> u64 {
    mix64(fnv1a(FNV_OFFSET_BASIS, bytes))
}

/// Hash of one point of the ring: candidate `id`, replica number `replica`.
pub(super) fn point_hash(id: &[u8], replica: u32) -> u64 {
    let state = fnv1a(FNV_OFFSET_BASIS, id);
    // Ids are UTF-8, which never contains 0xff, and the replica number has a
    // fixed width: `id ++ 0xff ++ replica` is unambiguous for every pair.
    let state = fnv1a(state, &[0xff]);
    mix64(fnv1a(state, &replica.to_le_bytes()))
}

/// Continues an FNV-1a 64 hash from `state` over `bytes`.
fn fnv1a(mut state: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        state ^= u64::from(b);
        state = state.wrapping_mul(FNV_PRIME);
    }
    state
}

/// The splitmix64 finalizer: a bijection on `u64` with full avalanche.
pub(super) fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a_matches_the_published_test_vectors() {
        assert_eq!(fnv1a(FNV_OFFSET_BASIS, b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(FNV_OFFSET_BASIS, b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a(FNV_OFFSET_BASIS, b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn hash_key_is_pinned_so_keys_never_move_between_releases() {
        // If these change, every sticky session in the field moves upstream.
        assert_eq!(hash_key(b""), 0xf52a_15e9_a9b5_e89b);
        assert_eq!(hash_key(b"user-42"), 0x7a15_96f0_e94b_5793);
        assert_eq!(hash_key(b"10.0.0.1"), 0x7fb1_b600_f0f5_c6d3);
    }

    #[test]
    fn mix64_is_the_splitmix64_finalizer() {
        // First output of splitmix64 seeded with 0 (Vigna's reference code).
        assert_eq!(mix64(0x9e37_79b9_7f4a_7c15), 0xe220_a839_7b1d_cdaf);
    }
}
