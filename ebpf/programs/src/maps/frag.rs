//! The ports of fragmented datagrams, from their first fragments, for
//! the fragments that follow (IPv4 and IPv6).

use aya_ebpf::{macros::map, maps::LruHashMap};
use sluice_abi::{addr::In6, maps::FRAG_SIZE, stats::DropReason};

/// A fragmented datagram: its addresses, IP ID and protocol, as its
/// fragments arrive (Cilium's `ipv4_frag_id`).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct FragKey {
    pub saddr: [u8; 4],
    pub daddr: [u8; 4],
    pub id: [u8; 2],
    pub proto: u8,
    pub _pad: u8,
}

/// The ports of fragmented datagrams, from their first fragments, for the
/// fragments that follow (LRU: a datagram whose fragments never come
/// leaves when newer ones need the room). Not pinned: a datagram in
/// flight across a restart is lost, as on any reassembly timeout.
#[map]
static SLUICE_FRAG: LruHashMap<FragKey, [[u8; 2]; 2]> = LruHashMap::with_max_entries(FRAG_SIZE, 0);

/// Remembers the ports of a datagram's first fragment.
#[inline(always)]
pub fn remember_fragment(key: &FragKey, ports: [[u8; 2]; 2]) {
    if SLUICE_FRAG.insert(key, ports, 0).is_err() {
        crate::stats::dropped(DropReason::Fragment);
    }
}

/// The ports of a later fragment's datagram, if its first fragment was
/// seen.
#[inline(always)]
pub fn fragment_ports(key: &FragKey) -> Option<[[u8; 2]; 2]> {
    SLUICE_FRAG
        .get_ptr(key)
        .map(|p| unsafe { core::ptr::read_volatile(p) })
}

/// An IPv6 fragmented datagram (the fragment header's 32-bit id).
#[repr(C, align(4))]
#[derive(Clone, Copy)]
pub struct FragKey6 {
    pub saddr: In6,
    pub daddr: In6,
    pub id: [u8; 4],
    pub proto: u8,
    pub _pad: [u8; 3],
}

/// The ports of IPv6 fragmented datagrams, as `SLUICE_FRAG`.
#[map]
static SLUICE_FRAG6: LruHashMap<FragKey6, [[u8; 2]; 2]> =
    LruHashMap::with_max_entries(FRAG_SIZE, 0);

/// Remembers the ports of an IPv6 datagram's first fragment.
#[inline(always)]
pub fn remember_fragment6(key: &FragKey6, ports: [[u8; 2]; 2]) {
    if SLUICE_FRAG6.insert(key, ports, 0).is_err() {
        crate::stats::dropped(DropReason::Fragment);
    }
}

/// The ports of a later IPv6 fragment's datagram, if its first was seen.
#[inline(always)]
pub fn fragment_ports6(key: &FragKey6) -> Option<[[u8; 2]; 2]> {
    SLUICE_FRAG6
        .get_ptr(key)
        .map(|p| unsafe { core::ptr::read_volatile(p) })
}
