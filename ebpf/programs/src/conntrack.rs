//! Connection tracking of NATed flows: lookup, state, creation, and the
//! move of an established flow to where nothing evicts it.
//!
//! Every function is generic over the table (`CtMaps`: a partition and a
//! protocol class) and, inside it, over the map an entry was found in
//! (`TIER`), so that each instance works on maps the verifier knows.

use aya_ebpf::helpers::{bpf_get_prandom_u32, bpf_ktime_get_ns};
use sluice_abi::{
    config::DataplaneConfig,
    conntrack::{
        CT_DIR_ORIGINAL, CT_DIR_REPLY, CT_ESTABLISHED, CT_F_SNAT, CT_NEW, CT_REFRESH_NS,
        CT_TIER_ESTABLISHED, CT_TIER_NEW, CtEntryOf, CtKeyOf, Lifetimes, partner, tcp_may_start,
    },
    stats::{DropReason, Event},
};

use crate::{
    family::Family,
    lb::FamilyBackend,
    maps::{self, CtMaps},
    parse::Packet,
    stats,
};

/// The backend a tracked flow is bound to, of either family (`A`, as in
/// `Packet`).
#[derive(Clone, Copy)]
pub struct Binding<A = [u8; 4]> {
    pub addr: A,
    pub port: [u8; 2],
    pub backend_id: u32,
    /// The node address and port the source becomes, for a flow SNATed to
    /// a backend on another node.
    pub snat: Option<Snat<A>>,
}

/// An address and port a flow's source is rewritten to.
#[derive(Clone, Copy)]
pub struct Snat<A = [u8; 4]> {
    pub addr: A,
    pub port: [u8; 2],
}

impl<A: Family> Binding<A> {
    /// A new flow's binding to backend `b`.
    #[inline(always)]
    pub fn to(b: &A::Backend) -> Self {
        let (addr, port) = A::backend_at(b);
        Self {
            addr,
            port,
            backend_id: b.id(),
            snat: None,
        }
    }
}

impl<A: Copy> Binding<A> {
    /// The binding an original-direction entry holds.
    #[inline(always)]
    const fn of(v: &CtEntryOf<A>) -> Self {
        Self {
            addr: v.nat_addr_be,
            port: v.nat_port_be,
            backend_id: v.backend_id,
            snat: if v.flags & CT_F_SNAT != 0 {
                Some(Snat {
                    addr: v.snat_addr_be,
                    port: v.snat_port_be,
                })
            } else {
                None
            },
        }
    }
}

const ESTABLISHED: u32 = CT_TIER_ESTABLISHED;
const NEW: u32 = CT_TIER_NEW;

/// How many SNAT ports a new flow tries before it is dropped.
const SNAT_TRIES: u32 = 8;

#[inline(always)]
pub fn now() -> u64 {
    unsafe { bpf_ktime_get_ns() }
}

/// The key of a packet in its own direction.
#[inline(always)]
pub const fn key<A: Copy>(p: &Packet<A>, dir: u8) -> CtKeyOf<A> {
    CtKeyOf {
        saddr_be: p.saddr,
        daddr_be: p.daddr,
        sport_be: p.sport,
        dport_be: p.dport,
        proto: p.proto,
        dir,
        _pad: [0; 2],
    }
}

/// The key under which the backend's replies to this flow are tracked:
/// sent to the client, or to the SNAT address and port.
#[inline(always)]
const fn reply_key<A: Copy>(p: &Packet<A>, to: &Binding<A>) -> CtKeyOf<A> {
    let (daddr_be, dport_be) = match to.snat {
        Some(s) => (s.addr, s.port),
        None => (p.saddr, p.sport),
    };
    CtKeyOf {
        saddr_be: to.addr,
        daddr_be,
        sport_be: to.port,
        dport_be,
        proto: p.proto,
        dir: CT_DIR_REPLY,
        _pad: [0; 2],
    }
}

/// The original-direction entry of a client packet.
pub enum Tracked<A = [u8; 4]> {
    /// The flow keeps this backend.
    Keep(Binding<A>),
    /// No entry, or one that must pick again (see below, and counted as
    /// `reselect`; its entries are gone): a new flow.
    New,
    /// No entry, and the packet cannot start a flow (a TCP segment that
    /// is not a bare SYN): drop it.
    Invalid,
}

/// Looks up the original-direction entry of a client packet and says whether
/// the flow may keep its backend, updating its state.
///
/// A flow picks again when its backend is gone and it can move without
/// breaking anything: a UDP flow (kube-proxy clears stale UDP conntrack for
/// the same reason, kubernetes#125467), a flow past its lifetime, or a TCP
/// SYN reusing the tuple of a closed connection. An established TCP
/// connection to a removed endpoint keeps it and drains, as with kube-proxy.
#[inline(always)]
pub fn lookup_original<A: Family, T: CtMaps<A>>(
    p: &Packet<A>,
    now: u64,
    l: &Lifetimes,
) -> Tracked<A> {
    let k = key(p, CT_DIR_ORIGINAL);
    if let Some(e) = T::get::<ESTABLISHED>(&k) {
        return on_original::<A, T, ESTABLISHED>(p, &k, e, now, l);
    }
    if let Some(e) = T::get::<NEW>(&k) {
        return on_original::<A, T, NEW>(p, &k, e, now, l);
    }
    if p.is_tcp() && !tcp_may_start(p.tcp_flags) {
        return Tracked::Invalid;
    }
    Tracked::New
}

/// `lookup_original` in the established flows' table only (XDP's IPv6
/// fast path): `None` when the flow is not there, and the caller hands
/// the packet to a program that looks in both.
#[inline(always)]
pub fn lookup_established<A: Family, T: CtMaps<A>>(
    p: &Packet<A>,
    now: u64,
    l: &Lifetimes,
) -> Option<Tracked<A>> {
    let k = key(p, CT_DIR_ORIGINAL);
    let e = T::get::<ESTABLISHED>(&k)?;
    Some(on_original::<A, T, ESTABLISHED>(p, &k, e, now, l))
}

/// `lookup_reply` in the established flows' table only, as
/// `lookup_established`.
#[inline(always)]
pub fn lookup_reply_established<A: Family, T: CtMaps<A>>(
    p: &Packet<A>,
    now: u64,
) -> Option<CtEntryOf<A>> {
    let k = key(p, CT_DIR_REPLY);
    let e = T::get::<ESTABLISHED>(&k)?;
    Some(on_reply::<A, T, ESTABLISHED>(p, &k, e, now))
}

#[inline(always)]
fn on_original<A: Family, T: CtMaps<A>, const TIER: u32>(
    p: &Packet<A>,
    k: &CtKeyOf<A>,
    e: *mut CtEntryOf<A>,
    now: u64,
    l: &Lifetimes,
) -> Tracked<A> {
    let v: CtEntryOf<A> = unsafe { *e };
    let bound = Binding::of(&v);
    let tcp = p.is_tcp();
    let reply = partner(k, &v);
    // Past its lifetime in this direction: the replies may have kept it.
    let expired = v.expired_since(v.last_seen_ns, tcp, now, l)
        && T::get::<TIER>(&reply).is_none_or(|r| {
            let r = unsafe { *r };
            let (seen, own) = (r.last_seen_ns, v.last_seen_ns);
            v.expired_since(seen.max(own), tcp, now, l)
        });
    let starts = tcp_may_start(p.tcp_flags);
    let keep = if !tcp {
        !expired && backend_live(&bound)
    } else if starts {
        !expired && !v.is_closed() && backend_live(&bound)
    } else {
        !expired
    };
    if !keep {
        T::remove::<TIER>(&reply);
        T::remove::<TIER>(k);
        if tcp && !starts {
            // The flow is over and this segment cannot start another.
            return Tracked::Invalid;
        }
        stats::event(Event::Reselect);
        return Tracked::New;
    }
    let (state, flags) = v.advance(tcp, CT_DIR_ORIGINAL, p.tcp_flags, now);
    if state != v.state || flags != v.flags {
        update_flow::<A, T, TIER>(k, e, &reply, state, flags, now);
    } else if now.wrapping_sub(v.last_seen_ns) > CT_REFRESH_NS {
        unsafe { (*e).last_seen_ns = now };
        // An established flow its full table could not take: try again.
        if TIER == NEW && state == CT_ESTABLISHED {
            let _ = promote::<A, T>(k, &reply);
        }
    }
    Tracked::Keep(bound)
}

/// The entry under `k` in table `T`, whichever map it is in, read and left
/// as it is (for an ICMP error about the flow: it neither refreshes nor
/// advances it).
#[inline(always)]
pub fn peek<A: Copy, T: CtMaps<A>>(k: &CtKeyOf<A>) -> Option<CtEntryOf<A>> {
    let e = T::get::<ESTABLISHED>(k).or_else(|| T::get::<NEW>(k))?;
    Some(unsafe { *e })
}

/// Looks up the reply-direction entry of a packet from a backend, in table
/// `T`, and updates the flow's state.
#[inline(always)]
pub fn lookup_reply<A: Family, T: CtMaps<A>>(p: &Packet<A>, now: u64) -> Option<CtEntryOf<A>> {
    let k = key(p, CT_DIR_REPLY);
    if let Some(e) = T::get::<ESTABLISHED>(&k) {
        return Some(on_reply::<A, T, ESTABLISHED>(p, &k, e, now));
    }
    let e = T::get::<NEW>(&k)?;
    Some(on_reply::<A, T, NEW>(p, &k, e, now))
}

#[inline(always)]
fn on_reply<A: Family, T: CtMaps<A>, const TIER: u32>(
    p: &Packet<A>,
    k: &CtKeyOf<A>,
    e: *mut CtEntryOf<A>,
    now: u64,
) -> CtEntryOf<A> {
    let v: CtEntryOf<A> = unsafe { *e };
    let (state, flags) = v.advance(p.is_tcp(), CT_DIR_REPLY, p.tcp_flags, now);
    if state != v.state || flags != v.flags {
        update_flow::<A, T, TIER>(k, e, &partner(k, &v), state, flags, now);
    } else if now.wrapping_sub(v.last_seen_ns) > CT_REFRESH_NS {
        unsafe { (*e).last_seen_ns = now };
    }
    v
}

/// Writes a flow's new state to both its entries (`e` is `k`'s); an
/// established flow moves out of the new-flow map.
#[inline(always)]
fn update_flow<A: Copy, T: CtMaps<A>, const TIER: u32>(
    k: &CtKeyOf<A>,
    e: *mut CtEntryOf<A>,
    other: &CtKeyOf<A>,
    state: u8,
    flags: u8,
    now: u64,
) {
    unsafe {
        (*e).state = state;
        (*e).flags = flags;
        (*e).last_seen_ns = now;
    }
    if let Some(o) = T::get::<TIER>(other) {
        unsafe {
            (*o).state = state;
            (*o).flags = flags;
        }
    }
    if TIER == NEW && state == CT_ESTABLISHED {
        match promote::<A, T>(k, other) {
            Ok(()) => stats::event(Event::CtEstablished),
            Err(()) => stats::event(Event::CtUnprotected),
        }
    }
}

/// Moves a flow's two entries from the new-flow map to the established
/// one. Fails when the established map is full; the flow then stays.
#[inline(always)]
fn promote<A: Copy, T: CtMaps<A>>(a: &CtKeyOf<A>, b: &CtKeyOf<A>) -> Result<(), ()> {
    let (Some(ea), Some(eb)) = (T::get::<NEW>(a), T::get::<NEW>(b)) else {
        // Half the flow is gone (evicted): it cannot be kept whole.
        return Err(());
    };
    // Straight from one map's memory into the other (no copies on the
    // stack). The established map is looked up first: once both entries
    // are there, the new-flow ones are no longer used.
    if T::insert::<ESTABLISHED>(b, unsafe { &*eb }, maps::NOEXIST).is_err() {
        return Err(());
    }
    if T::insert::<ESTABLISHED>(a, unsafe { &*ea }, maps::NOEXIST).is_err() {
        T::remove::<ESTABLISHED>(b);
        return Err(());
    }
    T::remove::<NEW>(a);
    T::remove::<NEW>(b);
    Ok(())
}

/// Whether the backend id still names the same backend (ids are reused).
#[inline(always)]
fn backend_live<A: Family>(b: &Binding<A>) -> bool {
    A::backend_live(b.backend_id, b.addr, b.port)
}

/// Records a new flow from the client in `p` to `to`, for frontend
/// `service_id`, in table `T`'s new-flow map, and returns the backend the
/// flow is bound to.
///
/// The entry is created only if none exists. If another CPU created it
/// first (the first packets of a flow in parallel, as the A and AAAA
/// queries of a resolver on one UDP socket), this packet follows that
/// flow's backend instead of its own choice: the insert race of netfilter
/// conntrack behind kube-proxy's 5-second DNS timeouts does not happen
/// here.
///
/// With `snat` (a node address, or the hairpin address), the flow's source
/// becomes that address and a port of `config`'s SNAT range free for this
/// backend. The port is taken by creating the reply entry.
#[inline(always)]
pub fn create<A: Family, T: CtMaps<A>>(
    p: &Packet<A>,
    to: &Binding<A>,
    service_id: u32,
    now: u64,
    snat: Option<A>,
    config: &DataplaneConfig,
) -> Result<Binding<A>, DropReason> {
    // Only a bare SYN (`tcp_may_start`) or a datagram gets here: the flow
    // is new, nothing seen yet. Its entries are written in this CPU's
    // scratch, the reply's and then the original's, rather than on the
    // stack, where IPv6's do not fit beside the rest of the program.
    let e = A::ct_scratch().ok_or(DropReason::CtInsert)?;
    // SAFETY: this CPU's scratch entry, used by this program run only.
    let e = unsafe { &mut *e };
    e.nat_addr_be = p.daddr;
    e.nat_port_be = p.dport;
    e.state = CT_NEW;
    e.flags = 0;
    e.service_id = service_id;
    e.backend_id = to.backend_id;
    e.last_seen_ns = now;
    e.created_ns = now;
    e.snat_addr_be = A::default();
    e.snat_port_be = [0; 2];
    e._pad = [0; 2];
    let mut bound = Binding { snat: None, ..*to };
    // Reply entry first: once the original entry exists, the backend may answer.
    let reply_key = match snat {
        None => {
            let k = self::reply_key(p, &bound);
            // Another flow's reply entry under the same key (the client's
            // port reused from a closed flow to another frontend of this
            // backend, or two live frontends of one backend) gives way: the
            // backend's answers to this tuple are this flow's now. In the
            // established map it would be found first.
            T::remove::<ESTABLISHED>(&k);
            if T::insert::<NEW>(&k, e, maps::NOEXIST).is_err() {
                T::insert::<NEW>(&k, e, maps::ANY).map_err(|_| DropReason::CtInsert)?;
            }
            k
        }
        Some(addr) => {
            e.flags |= CT_F_SNAT;
            e.snat_addr_be = p.saddr;
            e.snat_port_be = p.sport;
            let k = take_snat_port::<A, T>(p, &mut bound, addr, config, e)?;
            stats::event(Event::Snat);
            k
        }
    };
    // The original entry: the reply's but for the NAT fields.
    let (snat_flag, snat_addr_be, snat_port_be) = match bound.snat {
        Some(s) => (CT_F_SNAT, s.addr, s.port),
        None => (0, A::default(), [0; 2]),
    };
    e.nat_addr_be = to.addr;
    e.nat_port_be = to.port;
    e.flags = snat_flag;
    e.snat_addr_be = snat_addr_be;
    e.snat_port_be = snat_port_be;
    let k = key(p, CT_DIR_ORIGINAL);
    match T::insert::<NEW>(&k, e, maps::NOEXIST) {
        Ok(()) => Ok(bound),
        Err(maps::EEXIST) => {
            let winner = T::get::<NEW>(&k).ok_or(DropReason::CtInsert)?;
            // SAFETY: a live entry of the map, read once.
            let winner = Binding::of(unsafe { &*winner });
            if winner.backend_id != bound.backend_id || bound.snat.is_some() {
                T::remove::<NEW>(&reply_key);
            }
            stats::event(Event::RaceLost);
            Ok(winner)
        }
        Err(_) => Err(DropReason::CtInsert),
    }
}

/// Takes a SNAT port at `addr` for the flow in `p` to `bound`'s backend by
/// creating its reply entry (`NOEXIST`: a port another flow to the same
/// backend holds, new or established, is not taken again); records it in
/// `bound`. Ports come at random from `--snat-port-range`, never the
/// client's own: it could be one of the node's sockets' (K7 of the 2026-12
/// review).
#[inline(always)]
fn take_snat_port<A: Copy, T: CtMaps<A>>(
    p: &Packet<A>,
    bound: &mut Binding<A>,
    addr: A,
    config: &DataplaneConfig,
    reply: &CtEntryOf<A>,
) -> Result<CtKeyOf<A>, DropReason> {
    for _ in 0..SNAT_TRIES {
        #[expect(clippy::cast_possible_truncation, reason = "16 random bits")]
        let port = config.snat_port(unsafe { bpf_get_prandom_u32() } as u16);
        bound.snat = Some(Snat {
            addr,
            port: port.to_be_bytes(),
        });
        let k = reply_key(p, bound);
        if T::get::<ESTABLISHED>(&k).is_some() {
            continue;
        }
        match T::insert::<NEW>(&k, reply, maps::NOEXIST) {
            Ok(()) => return Ok(k),
            Err(maps::EEXIST) => {}
            Err(_) => return Err(DropReason::CtInsert),
        }
    }
    Err(DropReason::SnatPorts)
}
