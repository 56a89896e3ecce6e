//! Every map of the dataplane, one line on the purpose of each.
//!
//! Maps that user space rewrites while packets read them are
//! `BPF_F_NO_PREALLOC`: an update then swaps in a new element and frees the
//! old one after an RCU grace period, so a reader never sees a half-written
//! value (preallocated hash elements are recycled at once).

use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    macros::map,
    maps::{HashMap, LpmTrie, LruHashMap, PerCpuArray, PerCpuHashMap, ProgramArray, lpm_trie::Key},
};
use sluice_abi::{
    addr::In6,
    affinity::{AffinityKey, AffinityValue},
    conntrack::{
        CT_COUNTERS, CT_INSERTED, CT_REMOVED, CT_TABLES, CT_TIER_NEW, CT_TIERS, CtEntry, CtEntry6,
        CtEntryOf, CtKey, CtKey6, CtKeyOf, CtTable, split_sizes,
    },
    maps::{
        AFFINITY_SIZE, DEFAULT_CONNTRACK_SIZE, MAX_BACKENDS, MAX_EXT_IFS, MAX_MAGLEV_CHUNKS,
        MAX_NODE_ADDRS, MAX_REFUSED, MAX_SERVICES, MAX_SOURCE_RANGES, SOCK_REV_SIZE, TAIL_SLOTS,
        XDP_TAIL_SLOTS,
    },
    service::{
        Backend, Backend6, ExtIf, MaglevChunk, MaglevKey, NODE_ADDR_NODEPORTS, NodeAddr, NodeAddr6,
        RefusedClaim, ServiceKey, ServiceKey6, ServiceName, ServiceValue, SlotKey, SourceRangeKey,
        SourceRangeKey6,
    },
    sock::{SockRevKey, SockRevKey6, SockRevValue, SockRevValue6},
    stats::{DropReason, Event, TrafficStats},
};

mod frag;
mod scratch;

pub use frag::{
    FragKey, FragKey6, fragment_ports, fragment_ports6, remember_fragment, remember_fragment6,
};
pub use scratch::{ct_scratch, ct6_scratch, fib_scratch, icmp_scratch, icmp6_scratch};

/// The layout version of each pinned map (written by the agent; the
/// programs never read it): name → version.
#[map]
static SLUICE_LAYOUT: HashMap<[u8; 16], u32> = HashMap::pinned(64, 0);

/// Frontends (ClusterIP, port, protocol) and ClusterIP markers.
#[map]
static SLUICE_SVC: HashMap<ServiceKey, ServiceValue> =
    HashMap::pinned(MAX_SERVICES, BPF_F_NO_PREALLOC);

/// Backend slots `0..count` of each frontend.
#[map]
static SLUICE_SLOT: HashMap<SlotKey, Backend> = HashMap::pinned(MAX_BACKENDS, BPF_F_NO_PREALLOC);

/// Live backends by id; conntrack entries are checked against it.
#[map]
static SLUICE_BACKEND: HashMap<u32, Backend> = HashMap::pinned(MAX_BACKENDS, BPF_F_NO_PREALLOC);

/// IPv6 frontends and ClusterIP markers (ids shared with IPv4).
#[map]
static SLUICE_SVC6: HashMap<ServiceKey6, ServiceValue> =
    HashMap::pinned(MAX_SERVICES, BPF_F_NO_PREALLOC);

/// Backend slots of IPv6 frontends.
#[map]
static SLUICE_SLOT6: HashMap<SlotKey, Backend6> = HashMap::pinned(MAX_BACKENDS, BPF_F_NO_PREALLOC);

/// Live IPv6 backends by id.
#[map]
static SLUICE_BACKEND6: HashMap<u32, Backend6> = HashMap::pinned(MAX_BACKENDS, BPF_F_NO_PREALLOC);

// Connection tracking, both directions of every NATed flow, in four tables
// of two maps each (`sluice_abi::conntrack`). The agent sets each map's size
// at load time (`--conntrack-size`); these are the default's split.
const CT_SIZES: [u32; 8] = split_sizes(DEFAULT_CONNTRACK_SIZE);

/// East-west TCP, established.
#[map]
static SLUICE_CT_EWT: HashMap<CtKey, CtEntry> = HashMap::pinned(CT_SIZES[0], 0);
/// East-west TCP, new (LRU).
#[map]
static SLUICE_CT_EWT_N: LruHashMap<CtKey, CtEntry> = LruHashMap::pinned(CT_SIZES[1], 0);
/// East-west, other protocols, established.
#[map]
static SLUICE_CT_EWO: HashMap<CtKey, CtEntry> = HashMap::pinned(CT_SIZES[2], 0);
/// East-west, other protocols, new (LRU).
#[map]
static SLUICE_CT_EWO_N: LruHashMap<CtKey, CtEntry> = LruHashMap::pinned(CT_SIZES[3], 0);
/// North-south TCP, established.
#[map]
static SLUICE_CT_NST: HashMap<CtKey, CtEntry> = HashMap::pinned(CT_SIZES[4], 0);
/// North-south TCP, new (LRU).
#[map]
static SLUICE_CT_NST_N: LruHashMap<CtKey, CtEntry> = LruHashMap::pinned(CT_SIZES[5], 0);
/// North-south, other protocols, established.
#[map]
static SLUICE_CT_NSO: HashMap<CtKey, CtEntry> = HashMap::pinned(CT_SIZES[6], 0);
/// North-south, other protocols, new (LRU).
#[map]
static SLUICE_CT_NSO_N: LruHashMap<CtKey, CtEntry> = LruHashMap::pinned(CT_SIZES[7], 0);

/// Entries inserted and removed per conntrack map, by the programs.
#[map]
static SLUICE_CT_STAT: PerCpuArray<u64> =
    PerCpuArray::pinned(CT_TABLES * CT_TIERS * CT_COUNTERS, 0);

// IPv6 flows: the same four tables, in maps of their own, each the size of
// its IPv4 twin.

/// IPv6 east-west TCP, established.
#[map]
static SLUICE_CT6_EWT: HashMap<CtKey6, CtEntry6> = HashMap::pinned(CT_SIZES[0], 0);
/// IPv6 east-west TCP, new (LRU).
#[map]
static SLUICE_CT6_EWT_N: LruHashMap<CtKey6, CtEntry6> = LruHashMap::pinned(CT_SIZES[1], 0);
/// IPv6 east-west, other protocols, established.
#[map]
static SLUICE_CT6_EWO: HashMap<CtKey6, CtEntry6> = HashMap::pinned(CT_SIZES[2], 0);
/// IPv6 east-west, other protocols, new (LRU).
#[map]
static SLUICE_CT6_EWO_N: LruHashMap<CtKey6, CtEntry6> = LruHashMap::pinned(CT_SIZES[3], 0);
/// IPv6 north-south TCP, established.
#[map]
static SLUICE_CT6_NST: HashMap<CtKey6, CtEntry6> = HashMap::pinned(CT_SIZES[4], 0);
/// IPv6 north-south TCP, new (LRU).
#[map]
static SLUICE_CT6_NST_N: LruHashMap<CtKey6, CtEntry6> = LruHashMap::pinned(CT_SIZES[5], 0);
/// IPv6 north-south, other protocols, established.
#[map]
static SLUICE_CT6_NSO: HashMap<CtKey6, CtEntry6> = HashMap::pinned(CT_SIZES[6], 0);
/// IPv6 north-south, other protocols, new (LRU).
#[map]
static SLUICE_CT6_NSO_N: LruHashMap<CtKey6, CtEntry6> = LruHashMap::pinned(CT_SIZES[7], 0);

/// Entries inserted and removed per IPv6 conntrack map.
#[map]
static SLUICE_CT6_STAT: PerCpuArray<u64> =
    PerCpuArray::pinned(CT_TABLES * CT_TIERS * CT_COUNTERS, 0);

/// Traffic per frontend id; an entry is created by the first packet.
#[map]
static SLUICE_SVC_STAT: PerCpuHashMap<u32, TrafficStats> =
    PerCpuHashMap::pinned(MAX_SERVICES, BPF_F_NO_PREALLOC);

/// Traffic per backend id; an entry is created by the first packet.
#[map]
static SLUICE_BE_STAT: PerCpuHashMap<u32, TrafficStats> =
    PerCpuHashMap::pinned(MAX_BACKENDS, BPF_F_NO_PREALLOC);

/// Drops by reason.
#[map]
static SLUICE_DROPS: PerCpuArray<u64> = PerCpuArray::pinned(DropReason::COUNT, 0);

/// Events by kind.
#[map]
static SLUICE_EVENTS: PerCpuArray<u64> = PerCpuArray::pinned(Event::COUNT, 0);

/// Names of frontends for `sluice status`; never read here.
#[map]
static SLUICE_SVC_NAME: HashMap<u32, ServiceName> =
    HashMap::pinned(MAX_SERVICES, BPF_F_NO_PREALLOC);

/// Socket LB: the frontend each translated socket asked for, per backend.
#[map]
static SLUICE_SOCK_REV: LruHashMap<SockRevKey, SockRevValue> = LruHashMap::pinned(SOCK_REV_SIZE, 0);

/// Socket LB's reverse translations of IPv6 frontends.
#[map]
static SLUICE_SOCK_RV6: LruHashMap<SockRevKey6, SockRevValue6> =
    LruHashMap::pinned(SOCK_REV_SIZE, 0);

/// `ClientIP` affinity timeouts (seconds) by frontend id.
#[map]
static SLUICE_AFF_CFG: HashMap<u32, u32> = HashMap::pinned(MAX_SERVICES, BPF_F_NO_PREALLOC);

/// `ClientIP` affinity: each client's backend per frontend.
#[map]
static SLUICE_AFFINITY: LruHashMap<AffinityKey, AffinityValue> =
    LruHashMap::pinned(AFFINITY_SIZE, 0);

/// `loadBalancerSourceRanges` of frontends that have them.
#[map]
static SLUICE_SRC_RANGE: LpmTrie<SourceRangeKey, u8> = LpmTrie::pinned(MAX_SOURCE_RANGES, 0);

/// `loadBalancerSourceRanges` of IPv6 frontends.
#[map]
static SLUICE_SRC_RNG6: LpmTrie<SourceRangeKey6, u8> = LpmTrie::pinned(MAX_SOURCE_RANGES, 0);

/// Refused claims on frontends, for `sluice status`; never read here.
#[map]
static SLUICE_REFUSED: HashMap<ServiceKey, RefusedClaim> =
    HashMap::pinned(MAX_REFUSED, BPF_F_NO_PREALLOC);

/// Refused claims on IPv6 frontends; never read here.
#[map]
static SLUICE_REFUSED6: HashMap<ServiceKey6, RefusedClaim> =
    HashMap::pinned(MAX_REFUSED, BPF_F_NO_PREALLOC);

/// The node's own addresses: NodePorts answer on each.
#[map]
static SLUICE_NODE_IP: HashMap<NodeAddr, u32> = HashMap::pinned(MAX_NODE_ADDRS, BPF_F_NO_PREALLOC);

/// The node's own IPv6 addresses: IPv6 NodePorts answer on each.
#[map]
static SLUICE_NODE_IP6: HashMap<NodeAddr6, u32> =
    HashMap::pinned(MAX_NODE_ADDRS, BPF_F_NO_PREALLOC);

/// External interfaces (XDP) by ifindex, with the address to SNAT to.
#[map]
static SLUICE_EXT_IF: HashMap<u32, ExtIf> = HashMap::pinned(MAX_EXT_IFS, BPF_F_NO_PREALLOC);
/// Their IPv6 addresses to SNAT to (an interface without one has none).
#[map]
static SLUICE_EXT_IF6: HashMap<u32, NodeAddr6> = HashMap::pinned(MAX_EXT_IFS, BPF_F_NO_PREALLOC);

/// Maglev tables of the frontends XDP serves, in 4 KiB chunks.
#[map]
static SLUICE_MAGLEV: HashMap<MaglevKey, MaglevChunk> =
    HashMap::pinned(MAX_MAGLEV_CHUNKS, BPF_F_NO_PREALLOC);

/// Programs `tc_ingress` and the external interfaces' TC programs hand
/// packets on to (tail calls), set by the
/// agent after loading. Pinned: the kernel empties a program array that
/// no process holds, and the programs serve while no agent runs.
#[map]
static SLUICE_TAIL: ProgramArray = ProgramArray::pinned(TAIL_SLOTS, 0);

/// `SLUICE_TAIL`'s slots: `tc_ingress6`, IPv6 from pods;
/// `tc_ingress6_new`, their new flows; `tc_ingress6_icmp`, their ICMPv6
/// errors; `tc_edge6`, `tc_edge6_new` and `tc_edge6_icmp`, the same for
/// IPv6 from outside at an external interface.
pub const TAIL_POD6: u32 = 0;
pub const TAIL_POD6_NEW: u32 = 1;
pub const TAIL_POD6_ICMP: u32 = 2;
pub const TAIL_EDGE6: u32 = 3;
pub const TAIL_EDGE6_NEW: u32 = 4;
pub const TAIL_EDGE6_ICMP: u32 = 5;

/// The XDP program `xdp_ingress` hands IPv6 on to (`xdp_edge6`), set by
/// the agent after loading; pinned, as `SLUICE_TAIL`.
#[map]
static SLUICE_XDP_TAIL: ProgramArray = ProgramArray::pinned(XDP_TAIL_SLOTS, 0);

/// `SLUICE_XDP_TAIL`'s slots: `xdp_edge6`, IPv6 from outside; its
/// `xdp_edge6_flow`, a flow looked up in both tables; `xdp_edge6_new`, a
/// new flow; `xdp_edge6_reply`, a reply looked up in both tables.
pub const XDP_TAIL_EDGE6: u32 = 0;
pub const XDP_TAIL_EDGE6_FLOW: u32 = 1;
pub const XDP_TAIL_EDGE6_NEW: u32 = 2;
pub const XDP_TAIL_EDGE6_REPLY: u32 = 3;

/// Hands an XDP frame to the program in slot `index` of `SLUICE_XDP_TAIL`;
/// returns only when there is none there.
#[inline(always)]
pub fn xdp_tail_call(ctx: &aya_ebpf::programs::XdpContext, index: u32) {
    // SAFETY: the context is the program's own.
    unsafe { SLUICE_XDP_TAIL.tail_call(ctx, index) };
}

/// Hands the packet to the program in slot `index` of `SLUICE_TAIL`; returns
/// only when there is none there.
#[inline(always)]
pub fn tail_call(ctx: &impl aya_ebpf::EbpfContext, index: u32) {
    // SAFETY: the context is the program's own.
    unsafe { SLUICE_TAIL.tail_call(ctx, index) };
}

/// Copies a frontend out of the map (a value, not a pointer into it).
#[inline(always)]
pub fn service(key: &ServiceKey) -> Option<ServiceValue> {
    SLUICE_SVC
        .get_ptr(key)
        .map(|p| unsafe { core::ptr::read_volatile(p) })
}

#[inline(always)]
pub fn service6(key: &ServiceKey6) -> Option<ServiceValue> {
    SLUICE_SVC6
        .get_ptr(key)
        .map(|p| unsafe { core::ptr::read_volatile(p) })
}

#[inline(always)]
pub fn slot6(key: &SlotKey) -> Option<Backend6> {
    SLUICE_SLOT6
        .get_ptr(key)
        .map(|p| unsafe { core::ptr::read_volatile(p) })
}

#[inline(always)]
pub fn backend6(id: u32) -> Option<Backend6> {
    SLUICE_BACKEND6
        .get_ptr(id)
        .map(|p| unsafe { core::ptr::read_volatile(p) })
}

#[inline(always)]
pub fn slot(key: &SlotKey) -> Option<Backend> {
    SLUICE_SLOT
        .get_ptr(key)
        .map(|p| unsafe { core::ptr::read_volatile(p) })
}

#[inline(always)]
pub fn backend(id: u32) -> Option<Backend> {
    SLUICE_BACKEND
        .get_ptr(id)
        .map(|p| unsafe { core::ptr::read_volatile(p) })
}

/// `BPF_ANY` / `BPF_NOEXIST` map update flags.
pub const ANY: u64 = 0;
pub const NOEXIST: u64 = 1;
/// The error `insert` returns for `NOEXIST` when the key exists (-EEXIST).
pub const EEXIST: i32 = -17;

/// One conntrack table: its established map (`TIER` 0) and its new-flow
/// map (`TIER` 1), for addresses `A` (`[u8; 4]` or `In6`: each family
/// has maps of its own). Each hook is compiled once per table it uses, so
/// the verifier always knows which map a pointer is in.
pub trait CtMaps<A: Copy = [u8; 4]> {
    const TABLE: CtTable;
    fn get<const TIER: u32>(key: &CtKeyOf<A>) -> Option<*mut CtEntryOf<A>>;
    fn put<const TIER: u32>(key: &CtKeyOf<A>, value: &CtEntryOf<A>, flags: u64) -> Result<(), i32>;
    fn delete<const TIER: u32>(key: &CtKeyOf<A>) -> Result<(), i32>;
    /// Counts `counter` of map `map` (`CtTable::map`) of this family.
    fn count(map: u32, counter: u32);

    /// Inserts an entry; a new one is counted.
    #[inline(always)]
    fn insert<const TIER: u32>(
        key: &CtKeyOf<A>,
        value: &CtEntryOf<A>,
        flags: u64,
    ) -> Result<(), i32> {
        let r = Self::put::<TIER>(key, value, flags);
        if r.is_ok() && flags == NOEXIST {
            Self::count(Self::TABLE.map(TIER), CT_INSERTED);
        }
        r
    }

    /// Removes an entry, if it is there (it may have been evicted).
    #[inline(always)]
    fn remove<const TIER: u32>(key: &CtKeyOf<A>) {
        if Self::delete::<TIER>(key).is_ok() {
            Self::count(Self::TABLE.map(TIER), CT_REMOVED);
        }
    }
}

macro_rules! ct_maps {
    ($(#[$doc:meta])* $name:ident = $index:literal:
        $established:ident, $new:ident; $established6:ident, $new6:ident) => {
        $(#[$doc])*
        pub struct $name;

        ct_maps!(@impl $name, $index, [u8; 4], $established, $new, SLUICE_CT_STAT);
        ct_maps!(@impl $name, $index, In6, $established6, $new6, SLUICE_CT6_STAT);
    };
    (@impl $name:ident, $index:literal, $addr:ty, $established:ident, $new:ident, $stats:ident) => {
        impl CtMaps<$addr> for $name {
            const TABLE: CtTable = CtTable($index);

            #[inline(always)]
            fn get<const TIER: u32>(key: &CtKeyOf<$addr>) -> Option<*mut CtEntryOf<$addr>> {
                if TIER == CT_TIER_NEW {
                    $new.get_ptr_mut(key)
                } else {
                    $established.get_ptr_mut(key)
                }
            }

            #[inline(always)]
            fn put<const TIER: u32>(
                key: &CtKeyOf<$addr>,
                value: &CtEntryOf<$addr>,
                flags: u64,
            ) -> Result<(), i32> {
                if TIER == CT_TIER_NEW {
                    $new.insert(key, value, flags)
                } else {
                    $established.insert(key, value, flags)
                }
            }

            #[inline(always)]
            fn delete<const TIER: u32>(key: &CtKeyOf<$addr>) -> Result<(), i32> {
                if TIER == CT_TIER_NEW {
                    $new.remove(key)
                } else {
                    $established.remove(key)
                }
            }

            #[inline(always)]
            fn count(map: u32, counter: u32) {
                if let Some(c) = $stats.get_ptr_mut(map * CT_COUNTERS + counter) {
                    unsafe { *c += 1 };
                }
            }
        }
    };
}

ct_maps!(
    /// East-west TCP.
    EwTcp = 0: SLUICE_CT_EWT, SLUICE_CT_EWT_N; SLUICE_CT6_EWT, SLUICE_CT6_EWT_N
);
ct_maps!(
    /// East-west, other protocols.
    EwOther = 1: SLUICE_CT_EWO, SLUICE_CT_EWO_N; SLUICE_CT6_EWO, SLUICE_CT6_EWO_N
);
ct_maps!(
    /// North-south TCP.
    NsTcp = 2: SLUICE_CT_NST, SLUICE_CT_NST_N; SLUICE_CT6_NST, SLUICE_CT6_NST_N
);
ct_maps!(
    /// North-south, other protocols.
    NsOther = 3: SLUICE_CT_NSO, SLUICE_CT_NSO_N; SLUICE_CT6_NSO, SLUICE_CT6_NSO_N
);

/// The counters of a frontend, created (zero on every CPU) by its first
/// packet: the agent writes no counter entries, which halves the map
/// writes of programming a Service.
#[inline(always)]
pub fn service_stats(id: u32) -> Option<*mut TrafficStats> {
    SLUICE_SVC_STAT.get_ptr_mut(id).or_else(|| {
        let _ = SLUICE_SVC_STAT.insert(id, TrafficStats::default(), NOEXIST);
        SLUICE_SVC_STAT.get_ptr_mut(id)
    })
}

/// The counters of a backend, created by its first packet.
#[inline(always)]
pub fn backend_stats(id: u32) -> Option<*mut TrafficStats> {
    SLUICE_BE_STAT.get_ptr_mut(id).or_else(|| {
        let _ = SLUICE_BE_STAT.insert(id, TrafficStats::default(), NOEXIST);
        SLUICE_BE_STAT.get_ptr_mut(id)
    })
}

#[inline(always)]
pub fn drop_counter(reason: DropReason) -> Option<*mut u64> {
    SLUICE_DROPS.get_ptr_mut(reason as u32)
}

#[inline(always)]
pub fn event_counter(event: Event) -> Option<*mut u64> {
    SLUICE_EVENTS.get_ptr_mut(event as u32)
}

/// Keeps the maps only user space reads in the object.
#[inline(always)]
pub fn touch_names() {
    let _ = &SLUICE_SVC_NAME;
    let _ = &SLUICE_REFUSED;
    let _ = &SLUICE_REFUSED6;
}

#[inline(always)]
pub fn sock_rev(key: &SockRevKey) -> Option<SockRevValue> {
    SLUICE_SOCK_REV
        .get_ptr(key)
        .map(|p| unsafe { core::ptr::read_volatile(p) })
}

#[inline(always)]
pub fn sock_rev_insert(key: &SockRevKey, value: &SockRevValue) -> Result<(), i32> {
    SLUICE_SOCK_REV.insert(key, value, ANY)
}

#[inline(always)]
pub fn sock_rev6(key: &SockRevKey6) -> Option<SockRevValue6> {
    SLUICE_SOCK_RV6
        .get_ptr(key)
        .map(|p| unsafe { core::ptr::read_volatile(p) })
}

#[inline(always)]
pub fn sock_rev6_insert(key: &SockRevKey6, value: &SockRevValue6) -> Result<(), i32> {
    SLUICE_SOCK_RV6.insert(key, value, ANY)
}

#[inline(always)]
pub fn affinity_timeout(service_id: u32) -> Option<u32> {
    SLUICE_AFF_CFG
        .get_ptr(service_id)
        .map(|p| unsafe { core::ptr::read_volatile(p) })
}

#[inline(always)]
pub fn affinity(key: &AffinityKey) -> Option<*mut AffinityValue> {
    SLUICE_AFFINITY.get_ptr_mut(key)
}

#[inline(always)]
pub fn affinity_insert(key: &AffinityKey, value: &AffinityValue) -> Result<(), i32> {
    SLUICE_AFFINITY.insert(key, value, ANY)
}

/// Whether `saddr` is in one of frontend `service_id`'s source ranges.
#[inline(always)]
pub fn source_allowed(service_id: u32, saddr: [u8; 4]) -> bool {
    let key = Key::new(
        64,
        SourceRangeKey {
            service_id_be: service_id.to_be_bytes(),
            addr_be: saddr,
        },
    );
    SLUICE_SRC_RANGE.get(&key).is_some()
}

/// Whether IPv6 `saddr` is in one of frontend `service_id`'s source ranges.
#[inline(always)]
pub fn source_allowed6(service_id: u32, saddr: In6) -> bool {
    let key = Key::new(
        160,
        SourceRangeKey6 {
            service_id_be: service_id.to_be_bytes(),
            addr_be: saddr.octets(),
        },
    );
    SLUICE_SRC_RNG6.get(&key).is_some()
}

/// Whether `addr` is one of the node's own addresses.
#[inline(always)]
pub fn is_node_addr(addr_be: [u8; 4]) -> bool {
    SLUICE_NODE_IP.get_ptr(NodeAddr { addr_be }).is_some()
}

/// Whether `addr` is one of the node's addresses that serve NodePorts.
#[inline(always)]
pub fn serves_node_ports(addr_be: [u8; 4]) -> bool {
    SLUICE_NODE_IP
        .get_ptr(NodeAddr { addr_be })
        .is_some_and(|v| unsafe { core::ptr::read_volatile(v) } & NODE_ADDR_NODEPORTS != 0)
}

/// Whether IPv6 `addr` is one of the node's own addresses.
#[inline(always)]
pub fn is_node_addr6(addr: In6) -> bool {
    SLUICE_NODE_IP6
        .get_ptr(NodeAddr6 {
            addr_be: addr.octets(),
        })
        .is_some()
}

/// Whether IPv6 `addr_be` is one of the node's addresses serving NodePorts.
#[inline(always)]
pub fn serves_node_ports6(addr_be: [u8; 16]) -> bool {
    SLUICE_NODE_IP6
        .get_ptr(NodeAddr6 { addr_be })
        .is_some_and(|v| unsafe { core::ptr::read_volatile(v) } & NODE_ADDR_NODEPORTS != 0)
}

/// The external interface `ifindex`, if the XDP program serves it.
#[inline(always)]
pub fn ext_if(ifindex: u32) -> Option<ExtIf> {
    SLUICE_EXT_IF
        .get_ptr(ifindex)
        .map(|p| unsafe { core::ptr::read_volatile(p) })
}

/// The IPv6 address flows to remote backends leaving external interface
/// `ifindex` are SNATed to, if it has one.
#[inline(always)]
pub fn ext_if6(ifindex: u32) -> Option<In6> {
    let at = SLUICE_EXT_IF6.get_ptr(ifindex)?.cast::<[u32; 4]>();
    // SAFETY: a map value of 16 bytes, 4-aligned.
    Some(In6(unsafe { core::ptr::read_volatile(at) }))
}

/// Chunk `chunk` of frontend `service_id`'s Maglev table.
#[inline(always)]
pub fn maglev_chunk(service_id: u32, chunk: u32) -> Option<*const MaglevChunk> {
    SLUICE_MAGLEV.get_ptr(MaglevKey { service_id, chunk })
}
