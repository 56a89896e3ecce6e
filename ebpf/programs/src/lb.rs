//! Frontend lookup and backend choice.

use aya_ebpf::helpers::bpf_get_prandom_u32;
use sluice_abi::{
    addr::In6,
    affinity::{AffinityKey, AffinityValue},
    service::{
        Backend, Backend6, MAGLEV_CHUNK, NODE_PORT_ADDR, SCOPE_ALL, SCOPE_LOCAL, SVC_FLAG_AFFINITY,
        SVC_FLAG_MAGLEV, SVC_FLAG_MARKER, ServiceKey, ServiceKey6, ServiceValue, SlotKey,
    },
    stats::{DropReason, Event},
};

use crate::{maps, stats};

/// The frontend at an address, port and protocol, if any.
#[inline(always)]
pub fn frontend_of(
    addr_be: [u8; 4],
    port_be: [u8; 2],
    proto: u8,
) -> Option<(ServiceKey, ServiceValue)> {
    scoped(addr_be, port_be, proto, SCOPE_ALL)
}

#[inline(always)]
fn scoped(
    addr_be: [u8; 4],
    port_be: [u8; 2],
    proto: u8,
    scope: u8,
) -> Option<(ServiceKey, ServiceValue)> {
    let key = ServiceKey {
        addr_be,
        port_be,
        proto,
        scope,
    };
    let value = maps::service(&key)?;
    (value.flags & SVC_FLAG_MARKER == 0).then_some((key, value))
}

/// The frontend at an address, or, when the address is one of the node's,
/// the NodePort of the port.
#[inline(always)]
pub fn frontend_or_node_port(
    addr_be: [u8; 4],
    port_be: [u8; 2],
    proto: u8,
) -> Option<(ServiceKey, ServiceValue)> {
    if let Some(f) = frontend_of(addr_be, port_be, proto) {
        return Some(f);
    }
    node_port(port_be, proto, maps::serves_node_ports(addr_be))
}

/// The NodePort of a port, for a packet to one of the node's addresses
/// (`to_node`, known to the caller).
#[inline(always)]
pub fn node_port(port_be: [u8; 2], proto: u8, to_node: bool) -> Option<(ServiceKey, ServiceValue)> {
    if !to_node {
        return None;
    }
    frontend_of(NODE_PORT_ADDR.octets(), port_be, proto)
}

/// The local-endpoints entry of a frontend (`externalTrafficPolicy: Local`).
#[inline(always)]
pub fn local_scope(key: &ServiceKey) -> Option<ServiceValue> {
    scoped(key.addr_be, key.port_be, key.proto, SCOPE_LOCAL).map(|(_, v)| v)
}

/// Whether `addr` is an allocated ClusterIP.
#[inline(always)]
pub fn is_cluster_ip(addr: [u8; 4]) -> bool {
    maps::service(&ServiceKey {
        addr_be: addr,
        port_be: [0; 2],
        proto: 0,
        scope: SCOPE_ALL,
    })
    .is_some()
}

/// The IPv6 frontend at an address, or the NodePort (at `::`) of a node
/// address that serves NodePorts, as `frontend_or_node_port`.
#[inline(always)]
pub fn frontend_or_node_port6(
    addr: In6,
    port_be: [u8; 2],
    proto: u8,
) -> Option<(ServiceKey6, ServiceValue)> {
    let key = ServiceKey6 {
        addr_be: addr.octets(),
        port_be,
        proto,
        scope: SCOPE_ALL,
    };
    match maps::service6(&key) {
        Some(v) if v.flags & SVC_FLAG_MARKER == 0 => return Some((key, v)),
        Some(_) => return None,
        None => {}
    }
    if !maps::serves_node_ports6(key.addr_be) {
        return None;
    }
    let node_port = ServiceKey6 {
        addr_be: [0; 16],
        ..key
    };
    let v = maps::service6(&node_port)?;
    (v.flags & SVC_FLAG_MARKER == 0).then_some((node_port, v))
}

/// The local-endpoints entry of an IPv6 frontend, as `local_scope`.
#[inline(always)]
pub fn local_scope6(key: &ServiceKey6) -> Option<ServiceValue> {
    let local = ServiceKey6 {
        scope: SCOPE_LOCAL,
        ..*key
    };
    maps::service6(&local).filter(|v| v.flags & SVC_FLAG_MARKER == 0)
}

/// Whether IPv6 `addr` is an allocated ClusterIP (its marker exists).
#[inline(always)]
pub fn is_cluster_ip6(addr: In6) -> bool {
    maps::service6(&ServiceKey6 {
        addr_be: addr.octets(),
        port_be: [0; 2],
        proto: 0,
        scope: SCOPE_ALL,
    })
    .is_some()
}

/// Picks a backend uniformly at random among the frontend's slots
/// (kube-proxy's iptables `statistic --mode random`, nftables `numgen random`).
///
/// While the agent shrinks a frontend, a packet may read the old count and
/// miss a slot that was just removed; slot 0 always exists while the count
/// is non-zero, so it is used instead.
#[inline(always)]
pub fn select<B: FamilyBackend>(svc: &ServiceValue) -> Result<B, DropReason> {
    select_by(svc, unsafe { bpf_get_prandom_u32() })
}

/// The backend in slot `hash % count` (a falling-back slot 0 as above): the
/// same backend for the same hash while the frontend's slots stay.
#[inline(always)]
pub fn select_by<B: FamilyBackend>(svc: &ServiceValue, hash: u32) -> Result<B, DropReason> {
    let slot = hash
        .checked_rem(u32::from(svc.count))
        .ok_or(DropReason::NoEndpoints)?;
    if let Some(b) = B::slot(&SlotKey {
        service_id: svc.id,
        slot,
    }) {
        return Ok(b);
    }
    stats::event(Event::SlotFallback);
    B::slot(&SlotKey {
        service_id: svc.id,
        slot: 0,
    })
    .ok_or(DropReason::NoBackend)
}

/// A backend of one IP family, as its family's slot and backend maps hold
/// it (frontend and backend ids are one space over both families).
pub trait FamilyBackend: Copy {
    /// The backend in a frontend's slot.
    fn slot(key: &SlotKey) -> Option<Self>;
    /// The live backend of an id.
    fn live(id: u32) -> Option<Self>;
    fn id(&self) -> u32;
    /// Whether a remembered affinity choice is this backend still.
    fn remembered_by(&self, v: &AffinityValue) -> bool;
    /// The address and port an affinity entry keeps of it.
    fn stamp(&self) -> ([u8; 4], [u8; 2]);
    /// A new flow's pick.
    fn pick(svc: &ServiceValue, how: Pick) -> Result<Self, DropReason>;
}

impl FamilyBackend for Backend {
    #[inline(always)]
    fn slot(key: &SlotKey) -> Option<Self> {
        maps::slot(key)
    }

    #[inline(always)]
    fn live(id: u32) -> Option<Self> {
        maps::backend(id)
    }

    #[inline(always)]
    fn id(&self) -> u32 {
        self.id
    }

    #[inline(always)]
    fn remembered_by(&self, v: &AffinityValue) -> bool {
        self.addr_be == v.addr_be && self.port_be == v.port_be
    }

    #[inline(always)]
    fn stamp(&self) -> ([u8; 4], [u8; 2]) {
        (self.addr_be, self.port_be)
    }

    #[inline(always)]
    fn pick(svc: &ServiceValue, how: Pick) -> Result<Self, DropReason> {
        pick(svc, how)
    }
}

/// IPv6 backends. Ids are never reused while the agent runs, so a live id
/// is the backend an affinity entry remembers.
impl FamilyBackend for Backend6 {
    #[inline(always)]
    fn slot(key: &SlotKey) -> Option<Self> {
        maps::slot6(key)
    }

    #[inline(always)]
    fn live(id: u32) -> Option<Self> {
        maps::backend6(id)
    }

    #[inline(always)]
    fn id(&self) -> u32 {
        self.id
    }

    #[inline(always)]
    fn remembered_by(&self, v: &AffinityValue) -> bool {
        self.id == v.backend_id
    }

    #[inline(always)]
    fn stamp(&self) -> ([u8; 4], [u8; 2]) {
        ([0; 4], self.port_be)
    }

    #[inline(always)]
    fn pick(svc: &ServiceValue, how: Pick) -> Result<Self, DropReason> {
        pick(svc, how)
    }
}

/// The backend of frontend `svc` in its Maglev table at `hash`; while the
/// table is missing or mid-update, a random slot. The table holds backend
/// ids, of either family.
#[inline(always)]
pub fn select_maglev<B: FamilyBackend>(svc: &ServiceValue, hash: u32) -> Result<B, DropReason> {
    if let Some(b) = maglev_id(svc.id, hash).and_then(B::live) {
        return Ok(b);
    }
    stats::event(Event::MaglevMiss);
    select(svc)
}

#[inline(always)]
fn maglev_id(service_id: u32, hash: u32) -> Option<u32> {
    let first = maps::maglev_chunk(service_id, 0)?;
    let size = unsafe { (*first).size };
    let index = hash.checked_rem(size)?;
    let chunk = index / MAGLEV_CHUNK;
    // The volatile read hides the known range from LLVM, so the bounds
    // check of `get` stays in the code for the verifier to see.
    let at = index % MAGLEV_CHUNK;
    let at = unsafe { core::ptr::read_volatile(&raw const at) };
    let entries = if chunk == 0 {
        first
    } else {
        maps::maglev_chunk(service_id, chunk)?
    };
    // A chunk of another size is from a table being rewritten.
    if unsafe { (*entries).size } != size {
        return None;
    }
    unsafe { (*entries).ids.get(at as usize).copied() }
}

/// How a new flow picks a backend (a value, not a closure: a closure may
/// be compiled as a BPF function of its own, whose stack adds up).
#[derive(Clone, Copy)]
pub enum Pick {
    /// At random (`select`).
    Random,
    /// By this hash (`select_by`): the same backend for the same hash.
    Hash(u32),
    /// Through the frontend's Maglev table when it has one, at this flow
    /// hash; else at random.
    Maglev(u32),
}

#[inline(always)]
fn pick<B: FamilyBackend>(svc: &ServiceValue, how: Pick) -> Result<B, DropReason> {
    match how {
        Pick::Random => select(svc),
        Pick::Hash(hash) => select_by(svc, hash),
        Pick::Maglev(hash) if svc.flags & SVC_FLAG_MAGLEV != 0 => select_maglev(svc, hash),
        Pick::Maglev(_) => select(svc),
    }
}

/// The backend of a new flow from `client`: with `ClientIP` affinity, the
/// backend of the client's last new flow if that was within the frontend's
/// timeout and the backend is still live (the entry is refreshed);
/// otherwise `how`'s pick, remembered for the next flow.
#[inline(always)]
pub fn with_affinity<B: FamilyBackend>(
    svc: &ServiceValue,
    client: u64,
    now: u64,
    how: Pick,
) -> Result<B, DropReason> {
    let pick = |svc: &ServiceValue| B::pick(svc, how);
    if svc.flags & SVC_FLAG_AFFINITY == 0 {
        return pick(svc);
    }
    let Some(secs) = maps::affinity_timeout(svc.id) else {
        return pick(svc);
    };
    let key = AffinityKey {
        service_id: svc.id,
        _pad: 0,
        client,
    };
    if let Some(entry) = maps::affinity(&key) {
        let v: AffinityValue = unsafe { *entry };
        let fresh = now.wrapping_sub(v.last_seen_ns) < u64::from(secs).wrapping_mul(1_000_000_000);
        if fresh
            && let Some(live) = B::live(v.backend_id)
            && live.remembered_by(&v)
        {
            unsafe { (*entry).last_seen_ns = now };
            stats::event(Event::AffinityHit);
            return Ok(live);
        }
    }
    let b = pick(svc)?;
    let (addr_be, port_be) = b.stamp();
    let value = AffinityValue {
        backend_id: b.id(),
        addr_be,
        port_be,
        _pad: [0; 6],
        last_seen_ns: now,
    };
    if maps::affinity_insert(&key, &value).is_err() {
        // This flow still works; the next one may land elsewhere.
        stats::event(Event::AffinityNotKept);
    }
    Ok(b)
}
