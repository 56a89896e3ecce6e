//! `sluice monitor`: what the programs write to a ring buffer while a
//! monitor is attached (a flag in `SLUICE_MON_ON`), at most
//! `MONITOR_RATE` events a second per CPU; the rest are counted as
//! suppressed.

use crate::{addr::In6, pod};

/// A dropped packet (`reason` says why).
pub const KIND_DROP: u8 = 1;
/// A new flow load-balanced to a backend (and SNATed, when `snat_be` is set).
pub const KIND_NEW_FLOW: u8 = 2;
/// A packet answered with ICMP instead (`reason` says why).
pub const KIND_REJECT: u8 = 3;

/// Bytes in the ring buffer (a power of two, a multiple of the page size).
pub const MONITOR_RING_SIZE: u32 = 256 * 1024;
/// Events a second each CPU may write.
pub const MONITOR_RATE: u64 = 2000;
/// Events a CPU may write at once, after a quiet spell.
pub const MONITOR_BURST: u64 = 500;
/// The budget of one event, in nanoseconds of refill.
pub const MONITOR_EVENT_NS: u64 = 1_000_000_000 / MONITOR_RATE;

/// `MonitorEvent::family`: IPv4 addresses, in the first 4 bytes of each
/// address field (the rest zero: `v4`).
pub const FAMILY_V4: u8 = 4;
/// `MonitorEvent::family`: IPv6 addresses.
pub const FAMILY_V6: u8 = 6;

/// One event. The tuple is the packet's as the program saw it: for drops,
/// when it was dropped.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MonitorEvent {
    /// `bpf_ktime_get_ns` (since boot).
    pub ts_ns: u64,
    pub kind: u8,
    /// A `DropReason`, for drops and rejects.
    pub reason: u8,
    pub proto: u8,
    /// `FAMILY_V4` or `FAMILY_V6`: how the addresses read.
    pub family: u8,
    pub ifindex: u32,
    pub saddr_be: In6,
    pub daddr_be: In6,
    pub sport_be: [u8; 2],
    pub dport_be: [u8; 2],
    /// The frontend's id (0: none known).
    pub service_id: u32,
    pub backend_be: In6,
    pub backend_port_be: [u8; 2],
    pub snat_port_be: [u8; 2],
    /// The SNAT address a new flow got (zero: none).
    pub snat_be: In6,
    pub _pad: [u8; 4],
}
const _: () = assert!(size_of::<MonitorEvent>() == 96);

/// An IPv4 address as the event holds it: its four bytes first.
#[inline(always)]
pub const fn v4(a: [u8; 4]) -> In6 {
    In6([u32::from_ne_bytes(a), 0, 0, 0])
}

/// The IPv4 address of an event's `FAMILY_V4` address field.
#[inline(always)]
pub const fn as_v4(a: In6) -> [u8; 4] {
    let [w, ..] = a.0;
    w.to_ne_bytes()
}

/// A CPU's token bucket, in nanoseconds of budget.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MonitorLimiter {
    pub budget_ns: u64,
    pub last_ns: u64,
    /// Events not written: over the rate, or the ring full.
    pub suppressed: u64,
}
const _: () = assert!(size_of::<MonitorLimiter>() == 24);

pod!(MonitorEvent, MonitorLimiter);
