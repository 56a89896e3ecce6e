//! Types shared by Sluice's eBPF programs and its agent.
//!
//! Every map key and value is `#[repr(C)]`, `Copy`, padded by hand and
//! size-checked at compile time, so that the kernel and user space agree on
//! the layout byte for byte. Addresses and ports are kept in network byte
//! order as byte arrays (fields ending in `_be`): the kernel copies them into
//! packets without swapping. No map value holds an enum, `bool` or `Option`.
#![no_std]
#![expect(
    clippy::inline_always,
    reason = "the eBPF programs use these helpers; the verifier is happier without BPF-to-BPF calls"
)]

pub mod addr;
pub mod affinity;
pub mod config;
pub mod conntrack;
pub mod csum;
pub mod maglev;
pub mod maps;
pub mod monitor;
pub mod service;
pub mod sock;
pub mod stats;

/// IP protocol numbers the dataplane handles.
pub mod proto {
    pub const ICMP: u8 = 1;
    pub const TCP: u8 = 6;
    pub const UDP: u8 = 17;
}

/// Implements `aya::Pod` in user space for plain-integer types.
macro_rules! pod {
    ($($t:ty),* $(,)?) => {
        $(
            #[cfg(feature = "user")]
            // SAFETY: the type is #[repr(C)], made only of integers and
            // integer arrays, with all padding explicit.
            unsafe impl aya::Pod for $t {}
        )*
    };
}
pub(crate) use pod;
