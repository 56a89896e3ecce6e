//! Connection tracking of NATed flows: lookup, validation and creation.

use aya_ebpf::helpers::{bpf_get_prandom_u32, bpf_ktime_get_ns};
use sluice_abi::{
    config::DataplaneConfig,
    conntrack::{
        CT_DIR_ORIGINAL, CT_DIR_REPLY, CT_F_SNAT, CT_REFRESH_NS, CT_TCP_FIN, CT_TCP_RST,
        CT_UDP_TIMEOUT_NS, CtKey, CtValue,
    },
    service::Backend,
    stats::{DropReason, Event},
};

use crate::{
    maps,
    parse::{Packet, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN},
    stats,
};

/// The backend a tracked flow is bound to.
#[derive(Clone, Copy)]
pub struct Binding {
    pub addr: [u8; 4],
    pub port: [u8; 2],
    pub backend_id: u32,
    /// The node address and port the source becomes, for a flow SNATed to
    /// a backend on another node.
    pub snat: Option<Snat>,
}

/// An address and port a flow's source is rewritten to.
#[derive(Clone, Copy)]
pub struct Snat {
    pub addr: [u8; 4],
    pub port: [u8; 2],
}

impl From<Backend> for Binding {
    #[inline(always)]
    fn from(b: Backend) -> Self {
        Self {
            addr: b.addr_be,
            port: b.port_be,
            backend_id: b.id,
            snat: None,
        }
    }
}

impl Binding {
    /// The binding an original-direction entry holds.
    #[inline(always)]
    const fn of(v: &CtValue) -> Self {
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

/// How many SNAT ports a new flow tries before it is dropped.
const SNAT_TRIES: u32 = 8;

#[inline(always)]
pub fn now() -> u64 {
    unsafe { bpf_ktime_get_ns() }
}

/// The key of a packet in its own direction.
#[inline(always)]
pub const fn key(p: &Packet, dir: u8) -> CtKey {
    CtKey {
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
const fn reply_key(p: &Packet, to: &Binding) -> CtKey {
    let (daddr_be, dport_be) = match to.snat {
        Some(s) => (s.addr, s.port),
        None => (p.saddr, p.sport),
    };
    CtKey {
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
pub enum Tracked {
    /// The flow keeps this backend.
    Keep(Binding),
    /// There was an entry, but the flow must pick again (see below).
    Stale,
    /// No entry: a new flow.
    New,
}

/// Looks up the original-direction entry of a client packet and says whether
/// the flow may keep its backend.
///
/// A flow picks again when its backend is gone and it can move without
/// breaking anything: a UDP flow (kube-proxy clears stale UDP conntrack for
/// the same reason, kubernetes#125467), a UDP flow idle past its timeout, or
/// a TCP SYN reusing the tuple of a closed connection. An established TCP
/// connection to a removed endpoint keeps it and drains, as with kube-proxy.
#[inline(always)]
pub fn lookup_original(p: &Packet, now: u64) -> Tracked {
    let k = key(p, CT_DIR_ORIGINAL);
    let Some(entry) = maps::conntrack(&k) else {
        return Tracked::New;
    };
    let v: CtValue = unsafe { *entry };
    let bound = Binding::of(&v);
    let keep = if p.is_tcp() {
        let new_syn = p.tcp_has(TCP_SYN) && !p.tcp_has(TCP_ACK);
        !new_syn || (v.tcp_flags & (CT_TCP_FIN | CT_TCP_RST) == 0 && backend_live(&bound))
    } else {
        now.wrapping_sub(v.last_seen_ns) < CT_UDP_TIMEOUT_NS && backend_live(&bound)
    };
    if !keep {
        stats::event(Event::Reselect);
        maps::conntrack_remove(&reply_key(p, &bound));
        return Tracked::Stale;
    }
    let mut flags = v.tcp_flags;
    if p.tcp_has(TCP_FIN) {
        flags |= CT_TCP_FIN;
    }
    if p.tcp_has(TCP_RST) {
        flags |= CT_TCP_RST;
    }
    if flags != v.tcp_flags || now.wrapping_sub(v.last_seen_ns) > CT_REFRESH_NS {
        unsafe {
            (*entry).tcp_flags = flags;
            (*entry).last_seen_ns = now;
        }
    }
    Tracked::Keep(bound)
}

/// Whether the backend id still names the same backend (ids are reused).
#[inline(always)]
fn backend_live(b: &Binding) -> bool {
    maps::backend(b.backend_id).is_some_and(|live| live.addr_be == b.addr && live.port_be == b.port)
}

/// Records a flow from the client in `p` to `to`, for frontend `service_id`,
/// and returns the backend the flow is bound to.
///
/// A new flow's entry is created only if none exists (`replace` is false). If
/// another CPU created it first (the first packets of a flow in parallel, as
/// the A and AAAA queries of a resolver on one UDP socket), this packet
/// follows that flow's backend instead of its own choice: the insert race of
/// netfilter conntrack behind kube-proxy's 5-second DNS timeouts does not
/// happen here. A stale entry (`replace`) is overwritten.
///
/// With `snat` (a node address), the flow's source becomes that address and
/// a port free for this backend: the client's own port when it can be, else
/// a random one above 32767 and outside the NodePort range, as Cilium picks
/// NodePort SNAT ports. The port is taken by creating the reply entry.
#[inline(always)]
pub fn create(
    p: &Packet,
    to: &Binding,
    service_id: u32,
    now: u64,
    replace: bool,
    snat: Option<([u8; 4], &DataplaneConfig)>,
) -> Result<Binding, DropReason> {
    let mut tcp_flags = 0;
    if p.tcp_has(TCP_FIN) {
        tcp_flags |= CT_TCP_FIN;
    }
    if p.tcp_has(TCP_RST) {
        tcp_flags |= CT_TCP_RST;
    }
    let mut reply = CtValue {
        nat_addr_be: p.daddr,
        nat_port_be: p.dport,
        tcp_flags: 0,
        flags: 0,
        service_id,
        backend_id: to.backend_id,
        last_seen_ns: now,
        snat_addr_be: [0; 4],
        snat_port_be: [0; 2],
        _pad: [0; 2],
    };
    let mut bound = Binding { snat: None, ..*to };
    // Reply entry first: once the original entry exists, the backend may answer.
    let reply_key = match snat {
        None => {
            let k = self::reply_key(p, &bound);
            maps::conntrack_insert(&k, &reply, maps::ANY).map_err(|_| DropReason::CtInsert)?;
            k
        }
        Some((addr, config)) => {
            reply.flags = CT_F_SNAT;
            reply.snat_addr_be = p.saddr;
            reply.snat_port_be = p.sport;
            let k = take_snat_port(p, &mut bound, addr, config, &reply)?;
            stats::event(Event::Snat);
            k
        }
    };
    let (flags, snat_addr_be, snat_port_be) = match bound.snat {
        Some(s) => (CT_F_SNAT, s.addr, s.port),
        None => (0, [0; 4], [0; 2]),
    };
    let original = CtValue {
        nat_addr_be: to.addr,
        nat_port_be: to.port,
        tcp_flags,
        flags,
        service_id,
        backend_id: to.backend_id,
        last_seen_ns: now,
        snat_addr_be,
        snat_port_be,
        _pad: [0; 2],
    };
    let k = key(p, CT_DIR_ORIGINAL);
    let mode = if replace { maps::ANY } else { maps::NOEXIST };
    match maps::conntrack_insert(&k, &original, mode) {
        Ok(()) => Ok(bound),
        Err(maps::EEXIST) => {
            let winner = maps::conntrack(&k)
                .map(|e| unsafe { *e })
                .ok_or(DropReason::CtInsert)?;
            let winner = Binding::of(&winner);
            if winner.backend_id != bound.backend_id || bound.snat.is_some() {
                maps::conntrack_remove(&reply_key);
            }
            stats::event(Event::RaceLost);
            Ok(winner)
        }
        Err(_) => Err(DropReason::CtInsert),
    }
}

/// Takes a SNAT port at `addr` for the flow in `p` to `bound`'s backend by
/// creating its reply entry (`NOEXIST`: a port another flow to the same
/// backend holds is not taken again); records it in `bound`.
#[inline(always)]
fn take_snat_port(
    p: &Packet,
    bound: &mut Binding,
    addr: [u8; 4],
    config: &DataplaneConfig,
    reply: &CtValue,
) -> Result<CtKey, DropReason> {
    let client_port = u16::from_be_bytes(p.sport);
    for attempt in 0..SNAT_TRIES {
        let port = if attempt == 0 {
            client_port
        } else {
            let random = (unsafe { bpf_get_prandom_u32() } & 0x7fff) as u16;
            0x8000 | random
        };
        if port < 1024 || config.in_nodeport_range(port) {
            continue;
        }
        bound.snat = Some(Snat {
            addr,
            port: port.to_be_bytes(),
        });
        let k = reply_key(p, bound);
        match maps::conntrack_insert(&k, reply, maps::NOEXIST) {
            Ok(()) => return Ok(k),
            Err(maps::EEXIST) => {}
            Err(_) => return Err(DropReason::CtInsert),
        }
    }
    Err(DropReason::SnatPorts)
}

/// Looks up the reply-direction entry of a packet from a backend.
#[inline(always)]
pub fn lookup_reply(p: &Packet) -> Option<CtValue> {
    maps::conntrack(&key(p, CT_DIR_REPLY)).map(|e| unsafe { *e })
}
