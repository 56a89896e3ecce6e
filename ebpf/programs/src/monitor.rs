//! `sluice monitor`: drops, rejects and new flows written to a ring
//! buffer while a monitor is attached. With none, an event costs one
//! array lookup (`attached`). Each CPU writes at most `MONITOR_RATE` events
//! a second (a token bucket); the rest, and those the full ring refused,
//! are counted as suppressed.

use aya_ebpf::{
    helpers::bpf_ktime_get_ns,
    macros::map,
    maps::{Array, PerCpuArray, RingBuf},
};
use sluice_abi::{
    monitor::{
        KIND_DROP, KIND_NEW_FLOW, MONITOR_BURST, MONITOR_EVENT_NS, MONITOR_RING_SIZE, MonitorEvent,
        MonitorLimiter,
    },
    proto,
    stats::DropReason,
};

use crate::{
    conntrack::Binding,
    parse::{IP_OFF, Packet},
};

#[map]
static SLUICE_MONITOR: RingBuf = RingBuf::pinned(MONITOR_RING_SIZE, 0);

#[map]
static SLUICE_MON_ON: Array<u32> = Array::pinned(1, 0);

#[map]
static SLUICE_MON_LIM: PerCpuArray<MonitorLimiter> = PerCpuArray::pinned(1, 0);

/// Whether a monitor is attached.
#[inline(always)]
fn attached() -> bool {
    SLUICE_MON_ON.get(0).is_some_and(|on| *on != 0)
}

/// Takes one event's budget from this CPU's bucket; counts it as
/// suppressed when there is none.
#[inline(always)]
fn allowed(now: u64) -> bool {
    let Some(l) = SLUICE_MON_LIM.get_ptr_mut(0) else {
        return false;
    };
    unsafe {
        let cap = MONITOR_BURST * MONITOR_EVENT_NS;
        let refill = now.saturating_sub((*l).last_ns).min(cap);
        let budget = (*l).budget_ns.saturating_add(refill).min(cap);
        (*l).last_ns = now;
        if budget < MONITOR_EVENT_NS {
            (*l).budget_ns = budget;
            (*l).suppressed += 1;
            return false;
        }
        (*l).budget_ns = budget - MONITOR_EVENT_NS;
    }
    true
}

#[inline(always)]
fn suppressed() {
    if let Some(l) = SLUICE_MON_LIM.get_ptr_mut(0) {
        unsafe { (*l).suppressed += 1 };
    }
}

/// What an event says beyond its packet.
pub struct About {
    pub kind: u8,
    pub reason: u8,
    pub ifindex: u32,
    pub service_id: u32,
    pub backend: ([u8; 4], [u8; 2]),
    pub snat: ([u8; 4], [u8; 2]),
}

impl About {
    /// A drop or reject for `reason`, of a packet that came in on `ifindex`.
    #[inline(always)]
    pub const fn refused(kind: u8, reason: DropReason, ifindex: u32) -> Self {
        Self {
            kind,
            reason: reason as u8,
            ifindex,
            service_id: 0,
            backend: ([0; 4], [0; 2]),
            snat: ([0; 4], [0; 2]),
        }
    }
}

/// Writes an event about parsed packet `p`, when a monitor is attached.
#[inline(always)]
pub fn packet(p: &Packet, about: &About) {
    if !attached() {
        return;
    }
    write(about, p.proto, (p.saddr, p.sport), (p.daddr, p.dport));
}

/// Writes a new-flow event: `p` (before its translation) went to the
/// backend `to` of frontend `service_id`, SNATed when `to` says so.
#[inline(always)]
pub fn new_flow(p: &Packet, ifindex: u32, service_id: u32, to: &Binding) {
    if !attached() {
        return;
    }
    let snat = match &to.snat {
        Some(s) => (s.addr, s.port),
        None => ([0; 4], [0; 2]),
    };
    let about = About {
        kind: KIND_NEW_FLOW,
        reason: 0,
        ifindex,
        service_id,
        backend: (to.addr, to.port),
        snat,
    };
    write(&about, p.proto, (p.saddr, p.sport), (p.daddr, p.dport));
}

/// Writes a drop event for the frame at `data..data_end` (its IPv4
/// addresses and ports, if it has them), when a monitor is attached.
#[inline(always)]
pub fn dropped_frame(data: usize, data_end: usize, reason: DropReason, ifindex: u32) {
    if !attached() {
        return;
    }
    let about = About::refused(KIND_DROP, reason, ifindex);
    let ip = data + IP_OFF;
    if ip + 20 > data_end || unsafe { *((data + 12) as *const [u8; 2]) } != [0x08, 0x00] {
        write(&about, 0, ([0; 4], [0; 2]), ([0; 4], [0; 2]));
        return;
    }
    let (ihl, proto, frag, saddr, daddr) = unsafe {
        (
            usize::from(*(ip as *const u8) & 0x0f) * 4,
            *((ip + 9) as *const u8),
            u16::from_be_bytes(*((ip + 6) as *const [u8; 2])) & 0x1fff,
            *((ip + 12) as *const [u8; 4]),
            *((ip + 16) as *const [u8; 4]),
        )
    };
    let l4 = ip + ihl;
    let (mut sport, mut dport) = ([0; 2], [0; 2]);
    if matches!(proto, proto::TCP | proto::UDP) && frag == 0 && ihl >= 20 && l4 + 4 <= data_end {
        unsafe {
            sport = *(l4 as *const [u8; 2]);
            dport = *((l4 + 2) as *const [u8; 2]);
        }
    }
    write(&about, proto, (saddr, sport), (daddr, dport));
}

#[inline(always)]
fn write(about: &About, proto: u8, src: ([u8; 4], [u8; 2]), dst: ([u8; 4], [u8; 2])) {
    let now = unsafe { bpf_ktime_get_ns() };
    if !allowed(now) {
        return;
    }
    let Some(mut entry) = SLUICE_MONITOR.reserve::<MonitorEvent>(0) else {
        suppressed();
        return;
    };
    let e = entry.as_mut_ptr();
    unsafe {
        (*e).ts_ns = now;
        (*e).kind = about.kind;
        (*e).reason = about.reason;
        (*e).proto = proto;
        (*e)._pad = 0;
        (*e).ifindex = about.ifindex;
        (*e).saddr_be = src.0;
        (*e).sport_be = src.1;
        (*e).daddr_be = dst.0;
        (*e).dport_be = dst.1;
        (*e).service_id = about.service_id;
        (*e).backend_be = about.backend.0;
        (*e).backend_port_be = about.backend.1;
        (*e).snat_be = about.snat.0;
        (*e).snat_port_be = about.snat.1;
        (*e)._pad2 = [0; 4];
    }
    entry.submit(0);
}
