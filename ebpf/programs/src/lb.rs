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
    let key = ServiceKey {
        addr_be: p.daddr,
        port_be: p.dport,
        proto: p.proto,
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
    let random = unsafe { bpf_get_prandom_u32() };
    let slot = random
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
