//! `In6`: an IPv6 address as the programs move it.

/// An IPv6 address: its 16 bytes in network order, held as four words
/// (each word the four bytes as they are, in native order). Words rather
/// than `[u8; 16]`: LLVM's BPF backend makes each byte of a byte array
/// a register of its own, and IPv6's packet path spilled them past the
/// 512 bytes of stack a program has. Conntrack keys and entries hold it.
#[repr(C, align(4))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct In6(pub [u32; 4]);
const _: () = assert!(size_of::<In6>() == 16);

impl In6 {
    #[inline(always)]
    pub const fn from_octets(octets: [u8; 16]) -> Self {
        // SAFETY: both are 16 bytes of plain integers.
        Self(unsafe { core::mem::transmute::<[u8; 16], [u32; 4]>(octets) })
    }

    #[inline(always)]
    pub const fn octets(self) -> [u8; 16] {
        // SAFETY: as `from_octets`.
        unsafe { core::mem::transmute::<[u32; 4], [u8; 16]>(self.0) }
    }

    /// The address as two native-order halves.
    #[inline(always)]
    pub const fn halves(self) -> [u64; 2] {
        // SAFETY: as `from_octets`.
        unsafe { core::mem::transmute::<[u32; 4], [u64; 2]>(self.0) }
    }
}

#[cfg(feature = "user")]
impl From<In6> for core::net::Ipv6Addr {
    fn from(a: In6) -> Self {
        Self::from(a.octets())
    }
}

#[cfg(feature = "user")]
impl From<core::net::Ipv6Addr> for In6 {
    fn from(a: core::net::Ipv6Addr) -> Self {
        Self::from_octets(a.octets())
    }
}
