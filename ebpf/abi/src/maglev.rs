//! Maglev consistent hashing (Eisenbud et al., NSDI 2016, section 3.4).
//!
//! Every node computes the same lookup table from the same backends, so a
//! flow's hash picks the same backend whichever node it arrives at, and
//! removing one backend moves few flows between the others. Computed in
//! user space (the table is written to a map); kept here, without
//! allocation, so that host tests cover it.

/// The default table size: a prime, as Maglev needs (Cilium's default).
pub const DEFAULT_TABLE_SIZE: u32 = 16_381;

/// The table sizes a Service may get: primes, each about twice the last.
pub const TABLE_SIZES: [u32; 4] = [DEFAULT_TABLE_SIZE, 32_749, 65_521, 131_071];

/// Table entries per backend for which removing one backend moves under
/// 1 % of the other backends' flows on average (measured in the tests).
pub const ENTRIES_PER_BACKEND: u32 = 650;

/// The table size for `backends` backends: the configured (prime) size, or
/// the first listed size above it that gives each backend
/// `ENTRIES_PER_BACKEND` entries; the largest listed one at most (beyond
/// about 200 backends more flows move).
pub const fn table_size(backends: u32, configured: u32) -> u32 {
    let want = backends.saturating_mul(ENTRIES_PER_BACKEND);
    if configured >= want {
        return configured;
    }
    let mut i = 0;
    while i < TABLE_SIZES.len() {
        if TABLE_SIZES[i] >= want && TABLE_SIZES[i] >= configured {
            return TABLE_SIZES[i];
        }
        i += 1;
    }
    TABLE_SIZES[TABLE_SIZES.len() - 1]
}

/// Whether `n` is prime (table sizes must be).
pub const fn is_prime(n: u32) -> bool {
    if n < 2 {
        return false;
    }
    let mut d = 2;
    while d * d <= n {
        if n.is_multiple_of(d) {
            return false;
        }
        d += 1;
    }
    true
}

/// A backend's identity for hashing: its address and port, so that every
/// node derives the same permutation for it.
pub const fn backend_key(addr_be: [u8; 4], port_be: [u8; 2]) -> u64 {
    ((u32::from_be_bytes(addr_be) as u64) << 16) | (u16::from_be_bytes(port_be) as u64)
}

/// The seed of the second hash (an odd constant with mixed bits).
const SKIP_SEED: u64 = 0x2545_f491_4f6c_dd1d;

/// splitmix64: a well-mixed 64-bit hash of `x` with `seed`.
const fn mix(x: u64, seed: u64) -> u64 {
    let mut z = x.wrapping_add(seed).wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The hash a flow is looked up by in a Maglev table: its client address
/// and port, the port it was sent to and the protocol, but not the address
/// it was sent to, which differs from node to node for a NodePort. Every
/// node computes the same hash for the same flow.
#[inline(always)]
pub const fn flow_hash(saddr_be: [u8; 4], sport_be: [u8; 2], dport_be: [u8; 2], proto: u8) -> u32 {
    let x = ((u32::from_be_bytes(saddr_be) as u64) << 32)
        | ((u16::from_be_bytes(sport_be) as u64) << 16)
        | (u16::from_be_bytes(dport_be) as u64);
    let h = mix(x, proto as u64);
    #[expect(
        clippy::cast_possible_truncation,
        reason = "folding the hash to 32 bits"
    )]
    let folded = (h ^ (h >> 32)) as u32;
    folded
}

/// Why a table cannot be built.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MaglevError {
    /// The table size is not a prime.
    NotPrime,
    /// No backends, or more backends than table entries.
    Backends,
    /// `next` is shorter than `backends`.
    Scratch,
    /// The backends are not sorted (the table would depend on their order).
    Unsorted,
}

/// Fills `table` (its length is the prime table size) with indexes into
/// `backends` (their `backend_key`s, sorted and distinct), using `next`
/// (at least as long as `backends`) as scratch. The same backends give the
/// same table on every node.
pub fn populate(backends: &[u64], table: &mut [u32], next: &mut [u32]) -> Result<(), MaglevError> {
    let size = table.len();
    let m = u32::try_from(size).map_err(|_| MaglevError::NotPrime)?;
    if !is_prime(m) {
        return Err(MaglevError::NotPrime);
    }
    if backends.is_empty() || backends.len() > size {
        return Err(MaglevError::Backends);
    }
    if !backends.windows(2).all(|w| matches!(w, [a, b] if a < b)) {
        return Err(MaglevError::Unsorted);
    }
    let next = next.get_mut(..backends.len()).ok_or(MaglevError::Scratch)?;
    next.fill(0);
    table.fill(u32::MAX);
    let m64 = u64::from(m);
    let mut filled = 0usize;
    loop {
        for (i, (&key, n)) in backends.iter().zip(next.iter_mut()).enumerate() {
            // Offset and skip from two independent hashes: the second mixes
            // the first again (seeds 0 and 1 on the key itself would make
            // backend k's skip equal backend k+1's offset).
            let h1 = mix(key, 0);
            let offset = h1 % m64;
            let skip = mix(h1, SKIP_SEED) % (m64 - 1) + 1;
            // The first entry of this backend's permutation not yet taken.
            loop {
                let c = (offset + u64::from(*n) * skip) % m64;
                *n += 1;
                let Some(slot) = usize::try_from(c).ok().and_then(|c| table.get_mut(c)) else {
                    return Err(MaglevError::NotPrime);
                };
                if *slot == u32::MAX {
                    *slot = u32::try_from(i).map_err(|_| MaglevError::Backends)?;
                    break;
                }
            }
            filled += 1;
            if filled == size {
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::{vec, vec::Vec};

    use super::*;

    fn keys(n: u8) -> Vec<u64> {
        (0..n)
            .map(|i| backend_key([10, 244, 1, i], 8080u16.to_be_bytes()))
            .collect()
    }

    fn table(backends: &[u64], size: usize) -> Vec<u64> {
        let mut t = vec![0; size];
        let mut next = vec![0; backends.len()];
        populate(backends, &mut t, &mut next).unwrap();
        t.iter().map(|&i| backends[i as usize]).collect()
    }

    #[test]
    fn every_entry_is_filled_and_backends_share_it_evenly() {
        let size = DEFAULT_TABLE_SIZE as usize;
        let backends = keys(10);
        let t = table(&backends, size);
        for b in &backends {
            let share = t.iter().filter(|k| *k == b).count();
            // Maglev's fill gives each backend floor or ceil of M/N.
            assert!(share.abs_diff(size / 10) <= 1, "{share}");
        }
    }

    /// Three kinds of backend sets: pods on one node, pods spread over
    /// nodes, one address with many ports.
    fn key_sets(n: u16) -> [Vec<u64>; 3] {
        let pods = |a: u16, b: u16| {
            u8::try_from(a)
                .unwrap_or(0)
                .wrapping_add(u8::try_from(b).unwrap_or(0))
        };
        let mut sets = [
            (0..n)
                .map(|i| {
                    backend_key(
                        [10, 244, pods(1, i / 250), pods(0, i % 250)],
                        8080u16.to_be_bytes(),
                    )
                })
                .collect::<Vec<_>>(),
            (0..n)
                .map(|i| {
                    backend_key(
                        [10, pods(1, i / 250), pods(0, i % 250), 7],
                        8080u16.to_be_bytes(),
                    )
                })
                .collect(),
            (0..n)
                .map(|i| backend_key([172, 16, 0, 1], (30_000 + i).to_be_bytes()))
                .collect(),
        ];
        for set in &mut sets {
            set.sort_unstable();
        }
        sets
    }

    /// The share of the other backends' entries that move when each of 8
    /// backends in turn leaves: (mean, worst).
    fn disruption(keys: &[u64], size: usize) -> (f64, f64) {
        let before = table(keys, size);
        let trials = keys.len().min(8);
        let (mut sum, mut worst) = (0.0f64, 0.0f64);
        for t in 0..trials {
            let removed = keys[t * keys.len() / trials];
            let after_keys: Vec<u64> = keys.iter().copied().filter(|k| *k != removed).collect();
            let after = table(&after_keys, size);
            let others = before.iter().filter(|k| **k != removed).count();
            let moved = before
                .iter()
                .zip(&after)
                .filter(|(b, a)| **b != removed && b != a)
                .count();
            #[expect(clippy::cast_precision_loss, reason = "a ratio")]
            let share = moved as f64 / others as f64;
            sum += share;
            worst = worst.max(share);
        }
        #[expect(clippy::cast_precision_loss, reason = "a mean")]
        let mean = sum / trials as f64;
        (mean, worst)
    }

    /// Measured with the sizes `table_size` picks: the mean stays under
    /// 1 %; single removals reach 1.2 % (3 or 10 backends, 16,381 entries).
    #[test]
    fn removing_one_backend_moves_under_one_percent_of_the_others_flows_on_average() {
        for n in [3u16, 10, 25, 50, 100, 200] {
            let size = table_size(u32::from(n), DEFAULT_TABLE_SIZE) as usize;
            for keys in key_sets(n) {
                let (mean, worst) = disruption(&keys, size);
                assert!(
                    mean <= 0.01,
                    "{n} backends, {size} entries: {mean:.4} of the other flows move (worst {worst:.4})"
                );
                assert!(
                    worst <= 0.015,
                    "{n} backends, {size} entries: worst {worst:.4}"
                );
            }
        }
    }

    #[test]
    fn flow_hashes_ignore_the_destination_address_and_spread_over_a_table() {
        let h = flow_hash(
            [192, 168, 77, 100],
            40000u16.to_be_bytes(),
            30080u16.to_be_bytes(),
            6,
        );
        assert_eq!(
            h,
            flow_hash(
                [192, 168, 77, 100],
                40000u16.to_be_bytes(),
                30080u16.to_be_bytes(),
                6
            )
        );
        assert_ne!(
            h,
            flow_hash(
                [192, 168, 77, 100],
                40001u16.to_be_bytes(),
                30080u16.to_be_bytes(),
                6
            )
        );
        assert_ne!(
            h,
            flow_hash(
                [192, 168, 77, 100],
                40000u16.to_be_bytes(),
                30080u16.to_be_bytes(),
                17
            )
        );
        // Source ports in a row land all over a table, evenly.
        let m = DEFAULT_TABLE_SIZE;
        let mut buckets = [0u32; 10];
        for port in 20_000u16..40_000 {
            let i = flow_hash([10, 0, 0, 1], port.to_be_bytes(), [0, 80], 6) % m;
            buckets[(i * 10 / m) as usize] += 1;
        }
        for b in buckets {
            assert!(b.abs_diff(2000) < 200, "{buckets:?}");
        }
    }

    #[test]
    fn backends_must_be_sorted_and_distinct() {
        let mut t = vec![0; 251];
        let mut next = vec![0; 7];
        let mut backends = keys(7);
        backends.reverse();
        assert_eq!(
            populate(&backends, &mut t, &mut next),
            Err(MaglevError::Unsorted)
        );
        assert_eq!(
            populate(&[1, 1], &mut t, &mut next),
            Err(MaglevError::Unsorted)
        );
    }

    #[test]
    fn sizes_must_be_prime_and_backends_fit() {
        let mut t = vec![0; 100];
        let mut next = vec![0; 3];
        assert_eq!(
            populate(&keys(3), &mut t, &mut next),
            Err(MaglevError::NotPrime)
        );
        let mut t = vec![0; 3];
        assert_eq!(
            populate(&keys(5), &mut t, &mut next),
            Err(MaglevError::Backends)
        );
        assert_eq!(populate(&[], &mut t, &mut next), Err(MaglevError::Backends));
        assert!(TABLE_SIZES.iter().all(|&m| is_prime(m)) && !is_prime(65_535));
        assert_eq!(table_size(25, DEFAULT_TABLE_SIZE), DEFAULT_TABLE_SIZE);
        assert_eq!(table_size(100, DEFAULT_TABLE_SIZE), 65_521);
        assert_eq!(table_size(10_000, DEFAULT_TABLE_SIZE), 131_071);
    }
}
