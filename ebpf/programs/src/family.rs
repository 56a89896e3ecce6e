//! What the pod path's shared code (conntrack, NAT, a new flow's choice)
//! needs to know of an IP family, implemented on its address type:
//! `[u8; 4]` for IPv4, `In6` for IPv6. Each family has maps of its
//! own (frontends, backends, conntrack, source ranges), as Cilium's `lb4`
//! and `lb6`; ids are shared.

use aya_ebpf::programs::TcContext;
use sluice_abi::{
    addr::In6,
    config::{HAIRPIN_ADDR, HAIRPIN_ADDR6},
    conntrack::CtEntryOf,
    monitor::{FAMILY_V4, FAMILY_V6, v4 as monitor_v4},
    service::{Backend, Backend6},
    stats::DropReason,
};

use crate::{
    fib,
    lb::FamilyBackend,
    maps,
    nat::{self, Rewrite},
    parse::{
        IP_DADDR_OFF, IP_SADDR_OFF, Packet,
        ipv6::{IP6_DADDR_OFF, IP6_SADDR_OFF},
    },
    reject,
};

pub trait Family: Copy + PartialEq + Default {
    /// A backend of this family, as the maps hold it.
    type Backend: FamilyBackend;
    /// Offsets of the source and destination address in the frame.
    const SADDR_OFF: usize;
    const DADDR_OFF: usize;

    /// A backend's address and port.
    fn backend_at(b: &Self::Backend) -> (Self, [u8; 2]);
    /// Whether backend `id` is still `addr:port` (ids are reused).
    fn backend_live(id: u32, addr: Self, port: [u8; 2]) -> bool;
    /// The `ClientIP` affinity key of a client address.
    fn client(addr: Self) -> u64;
    /// Whether `saddr` is in one of frontend `service_id`'s
    /// `loadBalancerSourceRanges`.
    fn source_allowed(service_id: u32, saddr: Self) -> bool;
    /// Rewrites one address and port of `p` (`r` says which and to what),
    /// with the checksums.
    fn rewrite(ctx: &TcContext, p: &Packet<Self>, r: &Rewrite<Self>) -> Result<(), DropReason>;
    /// The source of a pod's packets sent back into the pod (hairpin).
    const HAIRPIN: Self;
    /// The `SLUICE_TAIL` slot of the program that starts this family's new
    /// flows from pods, if not the one that found them new.
    const TAIL_NEW: Option<u32>;
    /// Strict reverse path: whether the route back to `p`'s source
    /// leaves through the interface it arrived on.
    fn source_routed_here(ctx: &TcContext, p: &Packet<Self>) -> bool;
    /// Counts `reason` and answers `p` with ICMP port-unreachable.
    fn reject(ctx: &TcContext, p: &Packet<Self>, reason: DropReason) -> Result<i32, DropReason>;
    /// This CPU's scratch conntrack entry, where a new flow's are written.
    fn ct_scratch() -> Option<*mut CtEntryOf<Self>>;
    /// `MonitorEvent::family` of this family's events.
    const MONITOR_FAMILY: u8;
    /// An address as a `MonitorEvent` holds it.
    fn monitor_addr(a: Self) -> In6;
}

impl Family for [u8; 4] {
    type Backend = Backend;
    const SADDR_OFF: usize = IP_SADDR_OFF;
    const DADDR_OFF: usize = IP_DADDR_OFF;

    #[inline(always)]
    fn backend_at(b: &Backend) -> (Self, [u8; 2]) {
        (b.addr_be, b.port_be)
    }

    #[inline(always)]
    fn backend_live(id: u32, addr: Self, port: [u8; 2]) -> bool {
        maps::backend(id).is_some_and(|live| live.addr_be == addr && live.port_be == port)
    }

    #[inline(always)]
    fn client(addr: Self) -> u64 {
        u64::from(u32::from_be_bytes(addr))
    }

    #[inline(always)]
    fn source_allowed(service_id: u32, saddr: Self) -> bool {
        maps::source_allowed(service_id, saddr)
    }

    #[inline(always)]
    fn rewrite(ctx: &TcContext, p: &Packet<Self>, r: &Rewrite<Self>) -> Result<(), DropReason> {
        nat::rewrite4(ctx, p, r)
    }

    const HAIRPIN: Self = HAIRPIN_ADDR;
    const TAIL_NEW: Option<u32> = None;

    #[inline(always)]
    fn source_routed_here(ctx: &TcContext, p: &Packet<Self>) -> bool {
        fib::source_routed_here(ctx, p)
    }

    #[inline(always)]
    fn reject(ctx: &TcContext, p: &Packet<Self>, reason: DropReason) -> Result<i32, DropReason> {
        reject::reject(ctx, p, reason)
    }

    #[inline(always)]
    fn ct_scratch() -> Option<*mut CtEntryOf<Self>> {
        maps::ct_scratch()
    }

    const MONITOR_FAMILY: u8 = FAMILY_V4;

    #[inline(always)]
    fn monitor_addr(a: Self) -> In6 {
        monitor_v4(a)
    }
}

impl Family for In6 {
    type Backend = Backend6;
    const SADDR_OFF: usize = IP6_SADDR_OFF;
    const DADDR_OFF: usize = IP6_DADDR_OFF;

    #[inline(always)]
    fn backend_at(b: &Backend6) -> (Self, [u8; 2]) {
        (In6::from_octets(b.addr_be), b.port_be)
    }

    #[inline(always)]
    fn backend_live(id: u32, addr: Self, port: [u8; 2]) -> bool {
        maps::backend6(id)
            .is_some_and(|live| In6::from_octets(live.addr_be) == addr && live.port_be == port)
    }

    /// The two halves folded: clients of one /64 never share a key.
    #[inline(always)]
    fn client(addr: Self) -> u64 {
        let [hi, lo] = addr.halves();
        hi ^ lo
    }

    #[inline(always)]
    fn source_allowed(service_id: u32, saddr: Self) -> bool {
        maps::source_allowed6(service_id, saddr)
    }

    #[inline(always)]
    fn rewrite(ctx: &TcContext, p: &Packet<Self>, r: &Rewrite<Self>) -> Result<(), DropReason> {
        nat::rewrite6(ctx, p, r)
    }

    const HAIRPIN: Self = In6::from_octets(HAIRPIN_ADDR6);
    /// `tc_ingress6_new`: IPv6's larger keys leave one program too little
    /// stack for both a flow's lookup and its creation.
    const TAIL_NEW: Option<u32> = Some(maps::TAIL_POD6_NEW);

    #[inline(always)]
    fn source_routed_here(ctx: &TcContext, p: &Packet<Self>) -> bool {
        fib::source_routed_here6(ctx, p)
    }

    #[inline(always)]
    fn reject(ctx: &TcContext, p: &Packet<Self>, reason: DropReason) -> Result<i32, DropReason> {
        reject::ipv6::reject(ctx, p, reason)
    }

    #[inline(always)]
    fn ct_scratch() -> Option<*mut CtEntryOf<Self>> {
        maps::ct6_scratch()
    }

    const MONITOR_FAMILY: u8 = FAMILY_V6;

    #[inline(always)]
    fn monitor_addr(a: Self) -> In6 {
        a
    }
}
