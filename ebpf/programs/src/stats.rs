//! Counter updates. Per-CPU values: plain adds, no atomics needed.

use sluice_abi::stats::{DropReason, Event, TrafficStats};

use crate::maps;

#[inline(always)]
pub fn dropped(reason: DropReason) {
    if let Some(c) = maps::drop_counter(reason) {
        unsafe { *c += 1 };
    }
}

#[inline(always)]
pub fn event(event: Event) {
    if let Some(c) = maps::event_counter(event) {
        unsafe { *c += 1 };
    }
}

/// Adds one packet of `bytes` (and maybe a new flow) to a frontend and a backend.
#[inline(always)]
pub fn traffic(service_id: u32, backend_id: u32, bytes: u32, new_flow: bool) {
    if let Some(s) = maps::service_stats(service_id) {
        add(s, bytes, new_flow);
    }
    if let Some(s) = maps::backend_stats(backend_id) {
        add(s, bytes, new_flow);
    }
}

#[inline(always)]
fn add(s: *mut TrafficStats, bytes: u32, new_flow: bool) {
    unsafe {
        (*s).packets += 1;
        (*s).bytes += u64::from(bytes);
        if new_flow {
            (*s).new_flows += 1;
        }
    }
}

/// Counts a connection (or unconnected UDP exchange) that socket LB pointed
/// at a backend: a new flow, with no packet seen here.
#[inline(always)]
pub fn connection(service_id: u32, backend_id: u32) {
    for s in [
        maps::service_stats(service_id),
        maps::backend_stats(backend_id),
    ]
    .into_iter()
    .flatten()
    {
        unsafe { (*s).new_flows += 1 };
    }
}
