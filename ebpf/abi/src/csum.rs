//! Internet checksum helpers (RFC 1071, RFC 1624), free of panics and slice
//! indexing so the eBPF programs can use them too.

/// Folds a 32-bit one's-complement sum into 16 bits, without complementing.
#[inline(always)]
#[expect(
    clippy::cast_possible_truncation,
    reason = "the folded sum fits 16 bits"
)]
pub const fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// The checksum field value for data whose one's-complement sum is `sum`.
#[inline(always)]
pub const fn finish(sum: u32) -> u16 {
    !fold(sum)
}

/// One's-complement sum of big-endian 16-bit words, starting from `seed`.
#[inline(always)]
pub fn sum_words<const N: usize>(seed: u32, bytes: &[u8; N]) -> u32 {
    let mut sum = seed;
    let mut iter = bytes.chunks_exact(2);
    for pair in iter.by_ref() {
        if let [hi, lo] = *pair {
            sum = sum.wrapping_add(u32::from(u16::from_be_bytes([hi, lo])));
            sum = u32::from(fold(sum));
        }
    }
    if let [last] = *iter.remainder() {
        sum = u32::from(fold(sum.wrapping_add(u32::from(last) << 8)));
    }
    sum
}

/// Checksum of an IPv4 header whose checksum field is zero.
#[inline(always)]
pub fn ipv4_header(hdr: &[u8; 20]) -> u16 {
    finish(sum_words(0, hdr))
}

/// RFC 1624 incremental update of a checksum for a 16-bit field change.
#[inline(always)]
pub const fn replace16(check: u16, old: u16, new: u16) -> u16 {
    // HC' = ~(~HC + ~m + m')
    let sum = (!check) as u32 + (!old) as u32 + new as u32;
    !fold(sum)
}

/// RFC 1624 incremental update for a 32-bit field change (an IPv4 address).
#[inline(always)]
#[expect(
    clippy::cast_possible_truncation,
    reason = "splits the word into its halves"
)]
pub const fn replace32(check: u16, old: u32, new: u32) -> u16 {
    let c = replace16(check, (old >> 16) as u16, (new >> 16) as u16);
    replace16(c, old as u16, new as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(bytes: &[u8]) -> u16 {
        let mut sum: u64 = 0;
        for (i, b) in bytes.iter().enumerate() {
            sum += if i % 2 == 0 {
                u64::from(*b) << 8
            } else {
                u64::from(*b)
            };
        }
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        !u16::try_from(sum).unwrap()
    }

    #[test]
    fn ipv4_header_matches_rfc1071_example() {
        // A header from a capture; its checksum is 0xb861.
        let mut h: [u8; 20] = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(ipv4_header(&h), 0xb861);
        h[10] = 0xb8;
        h[11] = 0x61;
        assert_eq!(finish(sum_words(0, &h)), 0, "a correct header sums to zero");
    }

    #[test]
    fn odd_lengths_pad_with_zero() {
        let data = [1u8, 2, 3, 4, 5];
        assert_eq!(finish(sum_words(0, &data)), naive(&data));
    }

    #[test]
    fn incremental_update_equals_recompute() {
        let mut pkt = [0u8; 20];
        for (b, i) in pkt.iter_mut().zip(0u8..) {
            *b = i.wrapping_mul(37).wrapping_add(11);
        }
        pkt[10] = 0;
        pkt[11] = 0;
        let before = naive(&pkt);
        let old = u32::from_be_bytes([pkt[16], pkt[17], pkt[18], pkt[19]]);
        let new = 0x0a60_000a_u32;
        pkt[16..20].copy_from_slice(&new.to_be_bytes());
        let after_addr = naive(&pkt);
        assert_eq!(replace32(before, old, new), after_addr);
        let old_port = u16::from_be_bytes([pkt[2], pkt[3]]);
        pkt[2..4].copy_from_slice(&8080u16.to_be_bytes());
        assert_eq!(replace16(after_addr, old_port, 8080), naive(&pkt));
    }
}
