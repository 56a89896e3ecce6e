//! Map names and default capacities.
//!
//! The names are the `#[map]` statics in `ebpf/programs/src/maps.rs` and the
//! file names under the pin directory; the kernel truncates names to 15
//! bytes, so none is longer. A change of a pinned layout gets a new name
//! (`…_V2`), as Cilium does, instead of a migration in place.

/// Frontends: `ServiceKey` → `ServiceValue`.
pub const SERVICES: &str = "SLUICE_SVC";
/// Backend slots of each frontend: `SlotKey` → `Backend`.
pub const SLOTS: &str = "SLUICE_SLOT";
/// Live backends by id: `u32` → `Backend`; a conntrack entry whose backend id
/// is gone from here is stale.
pub const BACKENDS: &str = "SLUICE_BACKEND";
/// IPv6 frontends: `ServiceKey6` → `ServiceValue` (ids shared with IPv4).
pub const SERVICES6: &str = "SLUICE_SVC6";
/// Backend slots of IPv6 frontends: `SlotKey` → `Backend6`.
pub const SLOTS6: &str = "SLUICE_SLOT6";
/// Live IPv6 backends by id: `u32` → `Backend6`.
pub const BACKENDS6: &str = "SLUICE_BACKEND6";
/// Connection tracking: `CtKey` → `CtEntry`, eight maps (see
/// `conntrack`), by `CtTable::map` index: for east-west TCP, east-west
/// other protocols, north-south TCP and north-south other protocols, the
/// established flows (a hash map) and the new ones (LRU, `_N`).
pub const CONNTRACK: [&str; 8] = [
    "SLUICE_CT_EWT",
    "SLUICE_CT_EWT_N",
    "SLUICE_CT_EWO",
    "SLUICE_CT_EWO_N",
    "SLUICE_CT_NST",
    "SLUICE_CT_NST_N",
    "SLUICE_CT_NSO",
    "SLUICE_CT_NSO_N",
];
/// Per-CPU counters per conntrack map (`conntrack::CT_COUNTERS` each).
pub const CONNTRACK_STATS: &str = "SLUICE_CT_STAT";
/// IPv6 connection tracking: `CtKey6` → `CtEntry6`, the same eight maps
/// for IPv6 flows (tables of their own, as Cilium's `ct6`), each the size
/// of its IPv4 twin: `--conntrack-size` holds per family.
pub const CONNTRACK6: [&str; 8] = [
    "SLUICE_CT6_EWT",
    "SLUICE_CT6_EWT_N",
    "SLUICE_CT6_EWO",
    "SLUICE_CT6_EWO_N",
    "SLUICE_CT6_NST",
    "SLUICE_CT6_NST_N",
    "SLUICE_CT6_NSO",
    "SLUICE_CT6_NSO_N",
];
/// Per-CPU counters per IPv6 conntrack map, as `CONNTRACK_STATS`.
pub const CONNTRACK6_STATS: &str = "SLUICE_CT6_STAT";

/// A conntrack map's `CtTable::map` index, and whether it is IPv6's.
pub fn conntrack_map(name: &str) -> Option<(u32, bool)> {
    let at = |maps: &[&str; 8]| {
        maps.iter()
            .position(|n| *n == name)
            .and_then(|i| u32::try_from(i).ok())
    };
    at(&CONNTRACK)
        .map(|i| (i, false))
        .or_else(|| at(&CONNTRACK6).map(|i| (i, true)))
}
/// The conntrack map of the previous layout: one LRU map for every flow
/// (`conntrack::legacy::CtValueV2`); converted, then removed.
pub const CONNTRACK_V2: &str = "SLUICE_CT_V2";
/// Per-CPU counters per frontend id: `u32` → `TrafficStats`.
pub const SERVICE_STATS: &str = "SLUICE_SVC_STAT";
/// Per-CPU counters per backend id: `u32` → `TrafficStats`.
pub const BACKEND_STATS: &str = "SLUICE_BE_STAT";
/// Per-CPU drop counters, indexed by `DropReason`.
pub const DROPS: &str = "SLUICE_DROPS";
/// Per-CPU event counters, indexed by `Event`.
pub const EVENTS: &str = "SLUICE_EVENTS";
/// Display names of frontends for `sluice status`: `u32` → `ServiceName`.
/// The kernel never reads it; it is pinned so that status works from the pins.
pub const SERVICE_NAMES: &str = "SLUICE_SVC_NAME";

/// Socket LB's reverse translation (LRU): `SockRevKey` → `SockRevValue`.
pub const SOCK_REV: &str = "SLUICE_SOCK_REV";
/// The same for IPv6 frontends (LRU): `SockRevKey6` → `SockRevValue6`.
pub const SOCK_REV6: &str = "SLUICE_SOCK_RV6";

/// `ClientIP` affinity timeouts: frontend id `u32` → seconds `u32`.
pub const AFFINITY_CONFIG: &str = "SLUICE_AFF_CFG";
/// `ClientIP` affinity (LRU): `AffinityKey` → `AffinityValue`.
pub const AFFINITY: &str = "SLUICE_AFFINITY";

/// `loadBalancerSourceRanges` (LPM trie): `SourceRangeKey` → `u8` (1).
pub const SOURCE_RANGES: &str = "SLUICE_SRC_RANGE";

/// IPv6 `loadBalancerSourceRanges` (LPM trie): `SourceRangeKey6` → `u8`.
pub const SOURCE_RANGES6: &str = "SLUICE_SRC_RNG6";

/// Refused claims on frontends (`sluice status`; never read by the
/// programs): `ServiceKey` → `RefusedClaim`.
pub const REFUSED: &str = "SLUICE_REFUSED";
/// Refused claims on IPv6 frontends: `ServiceKey6` → `RefusedClaim`.
pub const REFUSED6: &str = "SLUICE_REFUSED6";

/// The node's own addresses: `NodeAddr` → `u32` (1).
pub const NODE_ADDRS: &str = "SLUICE_NODE_IP";
/// The node's own IPv6 addresses: `NodeAddr6` → `u32`.
pub const NODE_ADDRS6: &str = "SLUICE_NODE_IP6";
/// External interfaces with the XDP program: ifindex `u32` → `ExtIf`.
pub const EXT_IFS: &str = "SLUICE_EXT_IF";
/// Their IPv6 addresses to SNAT to, where they have one: ifindex `u32` →
/// `NodeAddr6`.
pub const EXT_IFS6: &str = "SLUICE_EXT_IF6";
/// Maglev tables of the frontends XDP serves: `MaglevKey` → `MaglevChunk`.
pub const MAGLEV: &str = "SLUICE_MAGLEV";

/// `sluice monitor`'s ring buffer of `monitor::MonitorEvent`s.
pub const MONITOR: &str = "SLUICE_MONITOR";
/// Whether a monitor is attached: one `u32`, 0 or 1.
pub const MONITOR_ON: &str = "SLUICE_MON_ON";
/// Per-CPU `monitor::MonitorLimiter`: the rate limit, and what it suppressed.
pub const MONITOR_LIMIT: &str = "SLUICE_MON_LIM";

/// Programs `tc_ingress` tail-calls, by slot (`TAIL_SLOTS`): `tc_ingress6`,
/// `tc_ingress6_new`, `tc_ingress6_icmp`; and those `tc_north_south` and
/// `tc_external` tail-call: `tc_edge6`, `tc_edge6_new`, `tc_edge6_icmp`.
/// Pinned, as Cilium pins its
/// `cilium_calls_*`: the kernel empties a program array when the last
/// process holding it closes it, and the programs must keep serving IPv6
/// while no agent runs. A restarted agent puts its programs in each slot.
pub const TAIL_CALLS: &str = "SLUICE_TAIL";
/// Slots of `TAIL_CALLS`.
pub const TAIL_SLOTS: u32 = 6;
/// The XDP programs `xdp_ingress` tail-calls (a program array holds
/// programs of one type): `xdp_edge6`, IPv6 from outside. Pinned, as
/// `TAIL_CALLS`.
pub const XDP_TAIL_CALLS: &str = "SLUICE_XDP_TAIL";
/// Slots of `XDP_TAIL_CALLS`.
pub const XDP_TAIL_SLOTS: u32 = 4;

/// The layout version of every pinned map, as the build that pinned it
/// stamped it: map name (zero-padded to 16 bytes) → `layout_version`.
pub const LAYOUT: &str = "SLUICE_LAYOUT";

/// The version of pinned map `name`'s layout in this build: raised with
/// any change of what its keys or values mean, so that a build meeting
/// another version's pins converts them or replaces them, and says so.
/// Conntrack is at 3 (after `SLUICE_CT` and `SLUICE_CT_V2`), the monitor's ring
/// buffer at 2 (its events grew IPv6 addresses).
pub fn layout_version(name: &str) -> u32 {
    if CONNTRACK.contains(&name) {
        3
    } else if name == MONITOR {
        // Events of 96 bytes, with IPv6 addresses.
        2
    } else {
        1
    }
}

/// Pins of earlier layouts, removed once this build's maps exist (and
/// their entries are converted, for `CONNTRACK_V2`).
pub const LEGACY: [&str; 2] = ["SLUICE_CT", CONNTRACK_V2];

/// Every pinned map, for cleanup and status.
pub const PINNED: [&str; 48] = [
    SERVICES,
    SLOTS,
    BACKENDS,
    SERVICES6,
    SLOTS6,
    BACKENDS6,
    CONNTRACK[0],
    CONNTRACK[1],
    CONNTRACK[2],
    CONNTRACK[3],
    CONNTRACK[4],
    CONNTRACK[5],
    CONNTRACK[6],
    CONNTRACK[7],
    CONNTRACK_STATS,
    CONNTRACK6[0],
    CONNTRACK6[1],
    CONNTRACK6[2],
    CONNTRACK6[3],
    CONNTRACK6[4],
    CONNTRACK6[5],
    CONNTRACK6[6],
    CONNTRACK6[7],
    CONNTRACK6_STATS,
    SERVICE_STATS,
    BACKEND_STATS,
    DROPS,
    EVENTS,
    SERVICE_NAMES,
    SOCK_REV,
    SOCK_REV6,
    AFFINITY_CONFIG,
    AFFINITY,
    SOURCE_RANGES,
    SOURCE_RANGES6,
    REFUSED,
    REFUSED6,
    NODE_ADDRS,
    NODE_ADDRS6,
    EXT_IFS,
    EXT_IFS6,
    MAGLEV,
    MONITOR,
    MONITOR_ON,
    MONITOR_LIMIT,
    TAIL_CALLS,
    XDP_TAIL_CALLS,
    LAYOUT,
];

/// Frontends (Service IP, port, protocol) plus one marker per ClusterIP.
/// The maps are `BPF_F_NO_PREALLOC`: entries cost memory only when used,
/// the bucket arrays about 16 bytes per possible entry.
pub const MAX_SERVICES: u32 = 131_072;
/// Backend slots and backends, summed over all frontends (30k Services of
/// 10 endpoints need 300k).
pub const MAX_BACKENDS: u32 = 524_288;
/// Conntrack entries over the eight maps; two per flow (original and reply
/// direction). The agent's default grows with the node's memory
/// (`conntrack::default_size`); this is the floor, and the size the object
/// file declares before the agent sets each map's.
pub const DEFAULT_CONNTRACK_SIZE: u32 = 262_144;
/// Reverse translations of sockets: one per socket and backend it was
/// pointed at (an unconnected UDP socket may talk to several).
pub const SOCK_REV_SIZE: u32 = 262_144;
/// Fragmented datagrams in flight whose later fragments can be matched
/// (Cilium's default for its fragment map).
pub const FRAG_SIZE: u32 = 8192;
/// Clients remembered for `ClientIP` affinity, over all frontends.
pub const AFFINITY_SIZE: u32 = 262_144;
/// Source ranges over all frontends.
pub const MAX_SOURCE_RANGES: u32 = 65_536;
/// Frontends with refused claims.
pub const MAX_REFUSED: u32 = 4096;
/// Node addresses.
pub const MAX_NODE_ADDRS: u32 = 1024;
/// External interfaces.
pub const MAX_EXT_IFS: u32 = 256;
/// Maglev chunks over all frontends XDP serves (17 per frontend at the
/// default table size; `NO_PREALLOC`: 4 KiB each only when used).
pub const MAX_MAGLEV_CHUNKS: u32 = 262_144;
