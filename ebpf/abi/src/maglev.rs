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

/// `backend_key` of an IPv6 backend: its address folded to 48 bits, then
/// the port.
pub const fn backend_key6(addr_be: [u8; 16], port_be: [u8; 2]) -> u64 {
    let a = u128::from_be_bytes(addr_be);
    #[expect(clippy::cast_possible_truncation, reason = "folding to 64 bits")]
    let folded = (a ^ (a >> 64)) as u64;
    mix(folded, 0x6b61_6c6d_6576_3a36) << 16 | (u16::from_be_bytes(port_be) as u64)
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
mod tests;
