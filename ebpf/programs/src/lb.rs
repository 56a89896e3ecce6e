//! Frontend lookup and backend choice.

use aya_ebpf::helpers::bpf_get_prandom_u32;
use sluice_abi::{
    service::{Backend, SVC_FLAG_MARKER, ServiceKey, ServiceValue, SlotKey},
    stats::{DropReason, Event},
};

use crate::{maps, parse::Packet, stats};

/// The frontend a packet is addressed to, if any.
#[inline(always)]
pub fn frontend(p: &Packet) -> Option<(ServiceKey, ServiceValue)> {
    frontend_of(p.daddr, p.dport, p.proto)
}

/// The frontend at an address, port and protocol, if any.
#[inline(always)]
pub fn frontend_of(
    addr_be: [u8; 4],
    port_be: [u8; 2],
    proto: u8,
) -> Option<(ServiceKey, ServiceValue)> {
    let key = ServiceKey {
        addr_be,
        port_be,
        proto,
        _pad: 0,
    };
    let value = maps::service(&key)?;
    (value.flags & SVC_FLAG_MARKER == 0).then_some((key, value))
}

/// Whether `addr` is an allocated ClusterIP.
#[inline(always)]
pub fn is_cluster_ip(addr: [u8; 4]) -> bool {
    maps::service(&ServiceKey {
        addr_be: addr,
        port_be: [0; 2],
        proto: 0,
        _pad: 0,
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
pub fn select(svc: &ServiceValue) -> Result<Backend, DropReason> {
    select_by(svc, unsafe { bpf_get_prandom_u32() })
}

/// The backend in slot `hash % count` (a falling-back slot 0 as above): the
/// same backend for the same hash while the frontend's slots stay.
#[inline(always)]
pub fn select_by(svc: &ServiceValue, hash: u32) -> Result<Backend, DropReason> {
    let slot = hash
        .checked_rem(u32::from(svc.count))
        .ok_or(DropReason::NoEndpoints)?;
    if let Some(b) = maps::slot(&SlotKey {
        service_id: svc.id,
        slot,
    }) {
        return Ok(b);
    }
    stats::event(Event::SlotFallback);
    maps::slot(&SlotKey {
        service_id: svc.id,
        slot: 0,
    })
    .ok_or(DropReason::NoBackend)
}
