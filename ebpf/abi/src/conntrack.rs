//! Connection tracking: entries, flow states and lifetimes, and how the
//! tables are split.
//!
//! Each NATed flow has two entries: the original direction, keyed by what
//! the client sent (client → frontend), whose value is the backend; and the
//! reply direction, keyed by what the backend sends back (backend →
//! client), whose value is the frontend to restore as the source. Both
//! carry the flow's state.
//!
//! A flow from outside to a backend on another node is also SNATed (XDP,
//! `externalTrafficPolicy: Cluster`): its original entry carries the node
//! address and port the source becomes, its reply entry is keyed by what
//! the backend sends back to that address and port, and carries the client
//! to restore as the destination (`CT_F_SNAT`).
//!
//! # Tables
//!
//! Flows are kept in four tables, so that none can take another's room:
//! east-west (from pods, on the pod interfaces) and north-south (from
//! outside, at the external interfaces), each for TCP and for every other
//! protocol, as Cilium keeps TCP and non-TCP apart. Each table is two maps:
//!
//! - **new** (LRU): flows that are not established yet. A full map evicts
//!   its least recently used entry, so a flood of new flows only ever
//!   pushes out other new flows (netfilter's early drop of unassured
//!   entries).
//! - **established** (a plain hash, never evicted): a flow moves here once
//!   it is established (`CtEntry::advance`). Entries leave only when their
//!   lifetime has passed (the agent's garbage collector) or their flow is
//!   replaced. When this map is full, a flow stays in the new map (counted
//!   as `ct_unprotected`).

use crate::{addr::In6, pod};

/// `CtKey::dir`: the client's direction.
pub const CT_DIR_ORIGINAL: u8 = 0;
/// `CtKey::dir`: the backend's replies.
pub const CT_DIR_REPLY: u8 = 1;

/// A flow's key in one direction, for either IP family: `A` is the
/// address, `[u8; 4]` (`CtKey`) or `In6` (`CtKey6`). IPv6 flows have
/// tables of their own, as Cilium's `ct6` maps, so IPv4 keys stay 16 bytes.
/// 4-aligned, so that the programs move addresses a word at a time.
#[repr(C, align(4))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CtKeyOf<A> {
    pub saddr_be: A,
    pub daddr_be: A,
    pub sport_be: [u8; 2],
    pub dport_be: [u8; 2],
    pub proto: u8,
    pub dir: u8,
    pub _pad: [u8; 2],
}
pub type CtKey = CtKeyOf<[u8; 4]>;
pub type CtKey6 = CtKeyOf<In6>;
const _: () = assert!(size_of::<CtKey>() == 16);
const _: () = assert!(size_of::<CtKey6>() == 40);

/// One direction of a tracked flow, for either IP family (`A` as in
/// `CtKeyOf`). Packed to 4-byte alignment so that the IPv6 entry has no
/// hidden padding (its clocks fall at offset 28); the IPv4 entry's bytes
/// are those of the earlier, naturally aligned layout.
#[repr(C, packed(4))]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CtEntryOf<A> {
    /// Original direction: the backend to DNAT to. Reply direction: the
    /// frontend address and port to restore as the source.
    pub nat_addr_be: A,
    pub nat_port_be: [u8; 2],
    /// `CT_NEW`, `CT_ESTABLISHED`, `CT_CLOSING` or `CT_CLOSED`.
    pub state: u8,
    /// `CT_F_*`.
    pub flags: u8,
    pub service_id: u32,
    pub backend_id: u32,
    /// `bpf_ktime_get_ns` (`CLOCK_MONOTONIC`) of the last packet in this
    /// entry's direction, refreshed at most once a second.
    pub last_seen_ns: u64,
    /// When the flow was created.
    pub created_ns: u64,
    /// With `CT_F_SNAT`: original direction: the node address and port the
    /// source becomes; reply direction: the client address and port the
    /// destination goes back to.
    pub snat_addr_be: A,
    pub snat_port_be: [u8; 2],
    pub _pad: [u8; 2],
}
pub type CtEntry = CtEntryOf<[u8; 4]>;
pub type CtEntry6 = CtEntryOf<In6>;
const _: () = assert!(size_of::<CtEntry>() == 40);
const _: () = assert!(size_of::<CtEntry6>() == 64);

/// `CtEntry::state`: TCP: a SYN was seen, the handshake is not complete.
/// Other protocols: not established yet.
pub const CT_NEW: u8 = 0;
/// TCP: the backend answered and the client acknowledged (netfilter's
/// ESTABLISHED). Other protocols: traffic both ways, still going two
/// seconds after the first packet (netfilter's assured UDP stream).
pub const CT_ESTABLISHED: u8 = 1;
/// TCP: a FIN from one side.
pub const CT_CLOSING: u8 = 2;
/// TCP: FINs from both sides, or a RST.
pub const CT_CLOSED: u8 = 3;
/// Every state, for counters.
pub const CT_STATES: [(u8, &str); 4] = [
    (CT_NEW, "new"),
    (CT_ESTABLISHED, "established"),
    (CT_CLOSING, "closing"),
    (CT_CLOSED, "closed"),
];

/// `CtEntry::flags`: the flow is SNATed (see the module comment).
pub const CT_F_SNAT: u8 = 1;
/// `CtEntry::flags`: the reply direction has been seen.
pub const CT_F_REPLIED: u8 = 2;
/// `CtEntry::flags`: a FIN from the client.
pub const CT_F_FIN_ORIGINAL: u8 = 4;
/// `CtEntry::flags`: a FIN from the backend.
pub const CT_F_FIN_REPLY: u8 = 8;
/// `CtEntry::flags`: a RST from either side.
pub const CT_F_RST: u8 = 16;

/// TCP flag bits (byte 13 of the header).
pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

/// How long an entry lives without traffic, by state, in seconds
/// (`--conntrack-lifetime-*`). Set at load time, read by the programs
/// and by the agent's garbage collector.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lifetimes {
    /// TCP, handshake not complete (Cilium's and netfilter's SYN: 60 s).
    pub syn_s: u32,
    /// TCP, established (Cilium: 6 h; netfilter: 5 days, kube-proxy sets 24 h).
    pub established_s: u32,
    /// TCP after a FIN or RST (Cilium: 10 s).
    pub closing_s: u32,
    /// Other protocols before a reply (netfilter's UDP: 30 s).
    pub other_s: u32,
    /// Other protocols once a reply was seen (netfilter's UDP stream: 120 s).
    pub other_replied_s: u32,
    pub _pad: u32,
}
const _: () = assert!(size_of::<Lifetimes>() == 24);

impl Lifetimes {
    pub const DEFAULT: Self = Self {
        syn_s: 60,
        established_s: 6 * 3600,
        closing_s: 10,
        other_s: 30,
        other_replied_s: 120,
        _pad: 0,
    };
}

impl Default for Lifetimes {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// A flow of another protocol is established (moves to the established
/// map) once it has had a reply and is still going this long after its
/// first packet, as netfilter marks a UDP stream assured: a DNS lookup
/// (one query, one answer) is not a stream.
pub const CT_STREAM_NS: u64 = 2_000_000_000;
/// How often the last-seen time of an entry is refreshed.
pub const CT_REFRESH_NS: u64 = 1_000_000_000;
const NS_PER_S: u64 = 1_000_000_000;

impl<A: Copy> CtEntryOf<A> {
    /// How long this entry lives without traffic.
    #[inline(always)]
    pub const fn lifetime_ns(&self, tcp: bool, l: &Lifetimes) -> u64 {
        let s = if tcp {
            match self.state {
                CT_NEW => l.syn_s,
                CT_ESTABLISHED => l.established_s,
                _ => l.closing_s,
            }
        } else if self.flags & CT_F_REPLIED != 0 {
            l.other_replied_s
        } else {
            l.other_s
        };
        s as u64 * NS_PER_S
    }

    /// Whether the entry has outlived its lifetime at `now`, counting from
    /// `last_seen_ns` (the later of the flow's two directions, where the
    /// caller knows both).
    #[inline(always)]
    pub const fn expired_since(
        &self,
        last_seen_ns: u64,
        tcp: bool,
        now: u64,
        l: &Lifetimes,
    ) -> bool {
        now.saturating_sub(last_seen_ns) > self.lifetime_ns(tcp, l)
    }

    /// The state and flags of the flow after a packet in direction `dir`
    /// (`CT_DIR_*`) with TCP flags `tcp_flags` (0 for other protocols).
    ///
    /// TCP: a RST closes; a FIN from one side makes the flow closing, from
    /// both closed; a new flow is established when the client sends an ACK
    /// (no SYN) after the backend answered, which a blind flood of forged
    /// SYNs never does. Other protocols: established once replied and
    /// still going `CT_STREAM_NS` after the first packet.
    #[inline(always)]
    pub const fn advance(&self, tcp: bool, dir: u8, tcp_flags: u8, now: u64) -> (u8, u8) {
        let mut flags = self.flags;
        if dir == CT_DIR_REPLY {
            flags |= CT_F_REPLIED;
        }
        if !tcp {
            let stream = self.state == CT_NEW
                && flags & CT_F_REPLIED != 0
                && now.saturating_sub(self.created_ns) >= CT_STREAM_NS;
            return (if stream { CT_ESTABLISHED } else { self.state }, flags);
        }
        if tcp_flags & TCP_RST != 0 {
            flags |= CT_F_RST;
        }
        if tcp_flags & TCP_FIN != 0 {
            flags |= if dir == CT_DIR_ORIGINAL {
                CT_F_FIN_ORIGINAL
            } else {
                CT_F_FIN_REPLY
            };
        }
        let fins = flags & (CT_F_FIN_ORIGINAL | CT_F_FIN_REPLY);
        let state = if flags & CT_F_RST != 0 || fins == CT_F_FIN_ORIGINAL | CT_F_FIN_REPLY {
            CT_CLOSED
        } else if fins != 0 {
            CT_CLOSING
        } else if self.state == CT_NEW
            && dir == CT_DIR_ORIGINAL
            && flags & CT_F_REPLIED != 0
            && tcp_flags & (TCP_SYN | TCP_ACK) == TCP_ACK
        {
            CT_ESTABLISHED
        } else {
            self.state
        };
        (state, flags)
    }

    /// Whether the flow is over for TCP (a new SYN on its tuple starts a
    /// new flow).
    #[inline(always)]
    pub const fn is_closed(&self) -> bool {
        self.state == CT_CLOSING || self.state == CT_CLOSED
    }
}

/// Whether a TCP segment may start a flow: a SYN without ACK or RST.
/// Anything else without an entry (a bare ACK, RST or FIN) is invalid,
/// as netfilter's ctstate INVALID that kube-proxy drops.
#[inline(always)]
pub const fn tcp_may_start(tcp_flags: u8) -> bool {
    tcp_flags & (TCP_SYN | TCP_ACK | TCP_RST) == TCP_SYN
}

/// The original-direction key of the flow a reply entry belongs to:
/// `reply` is the reply entry's key, `e` its value.
#[inline(always)]
pub const fn original_of_reply<A: Copy>(reply: &CtKeyOf<A>, e: &CtEntryOf<A>) -> CtKeyOf<A> {
    let (saddr_be, sport_be) = if e.flags & CT_F_SNAT != 0 {
        (e.snat_addr_be, e.snat_port_be)
    } else {
        (reply.daddr_be, reply.dport_be)
    };
    CtKeyOf {
        saddr_be,
        daddr_be: e.nat_addr_be,
        sport_be,
        dport_be: e.nat_port_be,
        proto: reply.proto,
        dir: CT_DIR_ORIGINAL,
        _pad: [0; 2],
    }
}

/// The reply-direction key of a flow: `original` is the original
/// entry's key, `e` its value.
#[inline(always)]
pub const fn reply_of_original<A: Copy>(original: &CtKeyOf<A>, e: &CtEntryOf<A>) -> CtKeyOf<A> {
    let (daddr_be, dport_be) = if e.flags & CT_F_SNAT != 0 {
        (e.snat_addr_be, e.snat_port_be)
    } else {
        (original.saddr_be, original.sport_be)
    };
    CtKeyOf {
        saddr_be: e.nat_addr_be,
        daddr_be,
        sport_be: e.nat_port_be,
        dport_be,
        proto: original.proto,
        dir: CT_DIR_REPLY,
        _pad: [0; 2],
    }
}

/// The partner of an entry: the reply key of an original entry and the
/// other way round.
#[inline(always)]
pub const fn partner<A: Copy>(key: &CtKeyOf<A>, e: &CtEntryOf<A>) -> CtKeyOf<A> {
    if key.dir == CT_DIR_ORIGINAL {
        reply_of_original(key, e)
    } else {
        original_of_reply(key, e)
    }
}

/// Where a flow was created.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Partition {
    /// From a pod, at the pod interfaces (TC).
    EastWest = 0,
    /// From outside, at the external interfaces (XDP, or TC with
    /// `--xdp-mode tc`).
    NorthSouth = 1,
}

/// One of the four conntrack tables (see the module comment): partition
/// × (TCP, other). The index orders the maps and their counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CtTable(pub u32);

/// The four tables.
pub const CT_TABLES: u32 = 4;
/// Maps per table: established, new.
pub const CT_TIERS: u32 = 2;
/// `CtTable::map`: the established (never evicted) map.
pub const CT_TIER_ESTABLISHED: u32 = 0;
/// `CtTable::map`: the new-flow (LRU) map.
pub const CT_TIER_NEW: u32 = 1;

impl CtTable {
    pub const fn of(part: Partition, tcp: bool) -> Self {
        Self(part as u32 * 2 + if tcp { 0 } else { 1 })
    }

    pub const fn is_tcp(self) -> bool {
        self.0.is_multiple_of(2)
    }

    pub const fn partition(self) -> Partition {
        if self.0 / 2 == 0 {
            Partition::EastWest
        } else {
            Partition::NorthSouth
        }
    }

    /// `east_west_tcp`, `north_south_other`, …: for metrics and status.
    pub const fn label(self) -> &'static str {
        match self.0 {
            0 => "east_west_tcp",
            1 => "east_west_other",
            2 => "north_south_tcp",
            _ => "north_south_other",
        }
    }

    /// The index of one of this table's maps (`CT_TIER_*`), 0..8.
    pub const fn map(self, tier: u32) -> u32 {
        self.0 * CT_TIERS + tier
    }
}

/// Counters per conntrack map (index `map * CT_COUNTERS + counter`, in the
/// `SLUICE_CT_STAT` per-CPU array), from which evictions are told: what
/// was inserted, less what was removed or expired, less what is there.
pub const CT_COUNTERS: u32 = 3;
/// Entries the programs inserted.
pub const CT_INSERTED: u32 = 0;
/// Entries the programs removed (a flow replaced, or moved to the
/// established map).
pub const CT_REMOVED: u32 = 1;
/// Entries the agent's garbage collector removed, their lifetime over
/// (written by the agent, on the first CPU's slot).
pub const CT_EXPIRED: u32 = 2;

/// The sizes of the eight conntrack maps (by `CtTable::map` index) for
/// `--conntrack-size total` entries: half for each partition; of that,
/// two thirds for TCP and a third for other protocols (Cilium's 512k/256k);
/// of each, three quarters for established flows and a quarter for new
/// ones. No map gets fewer than `CT_MIN_MAP` entries.
pub const fn split_sizes(total: u32) -> [u32; 8] {
    let mut out = [0; 8];
    let mut t = 0;
    while t < CT_TABLES {
        let table = CtTable(t);
        let share = if table.is_tcp() { total / 3 } else { total / 6 };
        let new = share / 4;
        out[table.map(CT_TIER_ESTABLISHED) as usize] = max(share - new, CT_MIN_MAP);
        out[table.map(CT_TIER_NEW) as usize] = max(new, CT_MIN_MAP);
        t += 1;
    }
    out
}

/// The smallest conntrack map (an LRU map keeps up to 128 free entries
/// per CPU aside; a map much smaller than that evicts early).
pub const CT_MIN_MAP: u32 = 512;

const fn max(a: u32, b: u32) -> u32 {
    if a > b { a } else { b }
}

pod!(CtKey, CtEntry, CtKey6, CtEntry6, Lifetimes);

/// The layouts this one replaces, for upgrades (the agent converts their
/// entries).
pub mod legacy {
    /// `SLUICE_CT_V2`'s value: one LRU map for every flow; TCP entries never
    /// expired. The key is `CtKey`.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct CtValueV2 {
        pub nat_addr_be: [u8; 4],
        pub nat_port_be: [u8; 2],
        /// `V2_TCP_FIN` and `V2_TCP_RST`, seen from the client.
        pub tcp_flags: u8,
        /// `V2_F_SNAT`.
        pub flags: u8,
        pub service_id: u32,
        pub backend_id: u32,
        pub last_seen_ns: u64,
        pub snat_addr_be: [u8; 4],
        pub snat_port_be: [u8; 2],
        pub _pad: [u8; 2],
    }
    const _: () = assert!(size_of::<CtValueV2>() == 32);

    pub const V2_F_SNAT: u8 = 1;
    pub const V2_TCP_FIN: u8 = 1;
    pub const V2_TCP_RST: u8 = 2;

    crate::pod!(CtValueV2);
}

#[cfg(test)]
mod tests;
