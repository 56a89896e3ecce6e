//! `sluice monitor`: drops, rejects and new flows written to a ring
//! buffer while a monitor is attached. With none, an event costs one
//! array lookup (`attached`). Each CPU writes at most `MONITOR_RATE` events
//! a second (a token bucket); the rest, and those the full ring refused,
//! are counted as suppressed.

use aya_ebpf::{
    helpers::bpf_ktime_get_ns,
    macros::map,
    maps::{Array, PerCpuArray, RingBuf, ring_buf::RingBufEntry},
};
use sluice_abi::{
    addr::In6,
    monitor::{
        self, FAMILY_V4, FAMILY_V6, KIND_DROP, KIND_NEW_FLOW, MONITOR_BURST, MONITOR_EVENT_NS,
        MONITOR_RING_SIZE, MonitorEvent, MonitorLimiter,
    },
    proto,
    stats::DropReason,
};

use crate::{
    conntrack::Binding,
    family::Family,
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

/// What an event says beyond its packet: a drop or reject's reason, or a
/// new flow's frontend and backend (`A`, the family's address).
pub struct About<'a, A = [u8; 4]> {
    pub kind: u8,
    pub reason: u8,
    pub ifindex: u32,
    pub service_id: u32,
    pub to: Option<&'a Binding<A>>,
}

impl<A> About<'_, A> {
    /// A drop or reject for `reason`, of a packet that came in on `ifindex`.
    #[inline(always)]
    pub const fn refused(kind: u8, reason: DropReason, ifindex: u32) -> Self {
        Self {
            kind,
            reason: reason as u8,
            ifindex,
            service_id: 0,
            to: None,
        }
    }
}

/// Writes an event about parsed packet `p`, when a monitor is attached.
/// The event is filled in the ring buffer from `p` and `about` where they
/// are: copies of IPv6 addresses held across the reserve would cost stack.
#[inline(always)]
pub fn packet<A: Family>(p: &Packet<A>, about: &About<'_, A>) {
    if !attached() {
        return;
    }
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
        (*e).proto = p.proto;
        (*e).family = A::MONITOR_FAMILY;
        (*e).ifindex = about.ifindex;
        (*e).saddr_be = A::monitor_addr(p.saddr);
        (*e).sport_be = p.sport;
        (*e).daddr_be = A::monitor_addr(p.daddr);
        (*e).dport_be = p.dport;
        (*e).service_id = about.service_id;
        // Each field written where it comes from: tuples of addresses
        // built first would take stack.
        (*e).backend_be = In6::default();
        (*e).backend_port_be = [0; 2];
        (*e).snat_be = In6::default();
        (*e).snat_port_be = [0; 2];
        if let Some(to) = about.to {
            (*e).backend_be = A::monitor_addr(to.addr);
            (*e).backend_port_be = to.port;
            if let Some(s) = to.snat {
                (*e).snat_be = A::monitor_addr(s.addr);
                (*e).snat_port_be = s.port;
            }
        }
        (*e)._pad = [0; 4];
    }
    entry.submit(0);
}

/// Writes a new-flow event: `p` (before its translation) went to the
/// backend `to` of frontend `service_id`, SNATed when `to` says so.
#[inline(always)]
pub fn new_flow<A: Family>(p: &Packet<A>, ifindex: u32, service_id: u32, to: &Binding<A>) {
    let about = About {
        kind: KIND_NEW_FLOW,
        reason: 0,
        ifindex,
        service_id,
        to: Some(to),
    };
    packet(p, &about);
}

/// Writes a drop event for the frame at `data..data_end` (its addresses
/// and ports, IPv4 or IPv6, if it has them), when a monitor is attached.
#[inline(always)]
pub fn dropped_frame(data: usize, data_end: usize, reason: DropReason, ifindex: u32) {
    if !attached() {
        return;
    }
    let ip = data + IP_OFF;
    if ip + 40 <= data_end && unsafe { *((data + 12) as *const [u8; 2]) } == [0x86, 0xdd] {
        dropped6(ip, data_end, reason, ifindex);
        return;
    }
    if ip + 20 > data_end || unsafe { *((data + 12) as *const [u8; 2]) } != [0x08, 0x00] {
        write(
            KIND_DROP,
            reason,
            ifindex,
            0,
            FAMILY_V4,
            [In6::default(); 2],
            [[0; 2]; 2],
        );
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
    let addrs = [monitor::v4(saddr), monitor::v4(daddr)];
    write(
        KIND_DROP,
        reason,
        ifindex,
        proto,
        FAMILY_V4,
        addrs,
        [sport, dport],
    );
}

/// `dropped_frame` of an IPv6 frame whose 40-byte header is at `ip`: the
/// ports when TCP or UDP follows it directly. The addresses are copied
/// from the frame into the event where it lies in the ring: held in
/// registers across the reserve, their 32 bytes would cost stack.
#[inline(always)]
fn dropped6(ip: usize, data_end: usize, reason: DropReason, ifindex: u32) {
    // SAFETY: the caller checked that the 40 bytes are in the frame.
    let next = unsafe { *((ip + 6) as *const u8) };
    let l4 = ip + 40;
    let (mut sport, mut dport) = ([0; 2], [0; 2]);
    if matches!(next, proto::TCP | proto::UDP) && l4 + 4 <= data_end {
        unsafe {
            sport = *(l4 as *const [u8; 2]);
            dport = *((l4 + 2) as *const [u8; 2]);
        }
    }
    let none = [In6::default(); 2];
    let Some((entry, e)) = reserve(
        KIND_DROP,
        reason,
        ifindex,
        next,
        FAMILY_V6,
        none,
        [sport, dport],
    ) else {
        return;
    };
    // SAFETY: 16 bytes each from the frame (checked by the caller) into
    // the reserved event.
    unsafe {
        core::ptr::copy_nonoverlapping(
            (ip + 8) as *const u8,
            (&raw mut (*e).saddr_be).cast::<u8>(),
            16,
        );
        core::ptr::copy_nonoverlapping(
            (ip + 24) as *const u8,
            (&raw mut (*e).daddr_be).cast::<u8>(),
            16,
        );
    }
    entry.submit(0);
}

/// A drop event of a frame's addresses and ports.
#[inline(always)]
fn write(
    kind: u8,
    reason: DropReason,
    ifindex: u32,
    proto: u8,
    family: u8,
    addrs: [In6; 2],
    ports: [[u8; 2]; 2],
) {
    if let Some((entry, _)) = reserve(kind, reason, ifindex, proto, family, addrs, ports) {
        entry.submit(0);
    }
}

/// Reserves a drop event in the ring, filled in; `None` when over the
/// rate or the ring is full (counted as suppressed).
#[inline(always)]
fn reserve(
    kind: u8,
    reason: DropReason,
    ifindex: u32,
    proto: u8,
    family: u8,
    [saddr, daddr]: [In6; 2],
    [sport, dport]: [[u8; 2]; 2],
) -> Option<(RingBufEntry<MonitorEvent>, *mut MonitorEvent)> {
    let now = unsafe { bpf_ktime_get_ns() };
    if !allowed(now) {
        return None;
    }
    let Some(mut entry) = SLUICE_MONITOR.reserve::<MonitorEvent>(0) else {
        suppressed();
        return None;
    };
    let e = entry.as_mut_ptr();
    unsafe {
        (*e).ts_ns = now;
        (*e).kind = kind;
        (*e).reason = reason as u8;
        (*e).proto = proto;
        (*e).family = family;
        (*e).ifindex = ifindex;
        (*e).saddr_be = saddr;
        (*e).sport_be = sport;
        (*e).daddr_be = daddr;
        (*e).dport_be = dport;
        (*e).service_id = 0;
        (*e).backend_be = In6::default();
        (*e).backend_port_be = [0; 2];
        (*e).snat_be = In6::default();
        (*e).snat_port_be = [0; 2];
        (*e)._pad = [0; 4];
    }
    Some((entry, e))
}
