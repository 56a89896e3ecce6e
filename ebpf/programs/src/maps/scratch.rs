//! Per-CPU scratch space: what a program builds, or passes to a helper,
//! there rather than on its 512-byte stack.

use aya_ebpf::{macros::map, maps::PerCpuArray};
use sluice_abi::conntrack::{CtEntry, CtEntry6};

/// Per-CPU scratch for `bpf_fib_lookup`'s 64-byte parameters: on the
/// stack, every inlined route lookup would take its own copy of the 512
/// bytes a program has.
#[map]
static SLUICE_FIB: PerCpuArray<aya_ebpf::bindings::bpf_fib_lookup> =
    PerCpuArray::with_max_entries(1, 0);

/// This CPU's route lookup parameters.
#[inline(always)]
pub fn fib_scratch() -> Option<*mut aya_ebpf::bindings::bpf_fib_lookup> {
    SLUICE_FIB.get_ptr_mut(0)
}

/// Per-CPU scratch for the ICMP error a reject builds (76 bytes).
#[map]
static SLUICE_ICMP: PerCpuArray<crate::reject::IcmpError> = PerCpuArray::with_max_entries(1, 0);

/// This CPU's ICMP error under construction.
#[inline(always)]
pub fn icmp_scratch() -> Option<*mut crate::reject::IcmpError> {
    SLUICE_ICMP.get_ptr_mut(0)
}

/// Per-CPU scratch for a new flow's conntrack entries, written there rather
/// than on the stack (`conntrack::create`).
#[map]
static SLUICE_CT_SCR: PerCpuArray<CtEntry> = PerCpuArray::with_max_entries(1, 0);
/// The same for IPv6 flows.
#[map]
static SLUICE_CT6_SCR: PerCpuArray<CtEntry6> = PerCpuArray::with_max_entries(1, 0);

/// This CPU's scratch conntrack entry.
#[inline(always)]
pub fn ct_scratch() -> Option<*mut CtEntry> {
    SLUICE_CT_SCR.get_ptr_mut(0)
}

/// This CPU's scratch IPv6 conntrack entry.
#[inline(always)]
pub fn ct6_scratch() -> Option<*mut CtEntry6> {
    SLUICE_CT6_SCR.get_ptr_mut(0)
}

/// Per-CPU scratch for the ICMPv6 error a reject builds, header and all
/// (116 bytes): built in place rather than on the stack.
#[map]
static SLUICE_ICMP6: PerCpuArray<crate::reject::ipv6::Icmp6Frame> =
    PerCpuArray::with_max_entries(1, 0);

/// This CPU's ICMPv6 error under construction.
#[inline(always)]
pub fn icmp6_scratch() -> Option<*mut crate::reject::ipv6::Icmp6Frame> {
    SLUICE_ICMP6.get_ptr_mut(0)
}
