//! Address and port rewrites with checksum updates, through the skb helpers
//! so that CHECKSUM_PARTIAL packets (veth, GSO) stay right.

use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR},
    programs::TcContext,
};
use sluice_abi::stats::DropReason;

use crate::parse::{IP_CHECK_OFF, IP_DADDR_OFF, IP_SADDR_OFF, IP_TTL_OFF, Packet};

/// DNAT: the destination becomes `addr:port`.
#[inline(always)]
pub fn rewrite_dst(
    ctx: &TcContext,
    p: &Packet,
    addr: [u8; 4],
    port: [u8; 2],
) -> Result<(), DropReason> {
    rewrite(
        ctx,
        p,
        IP_DADDR_OFF,
        p.l4_off + 2,
        p.daddr,
        addr,
        p.dport,
        port,
    )
}

/// One hop, for a packet BPF forwards itself: its TTL goes down by one
/// (the caller made sure it is above 1).
#[inline(always)]
pub fn ttl_down(ctx: &TcContext, p: &Packet) -> Result<(), DropReason> {
    let ttl = p.ttl.saturating_sub(1);
    let old = u64::from(u16::from_ne_bytes([p.ttl, p.proto]));
    let new = u64::from(u16::from_ne_bytes([ttl, p.proto]));
    ctx.l3_csum_replace(IP_CHECK_OFF, old, new, 2)
        .and_then(|()| ctx.store(IP_TTL_OFF, &ttl, 0))
        .map_err(|_| DropReason::Rewrite)
}

/// Reverse NAT of a reply: the source becomes `addr:port`.
#[inline(always)]
pub fn rewrite_src(
    ctx: &TcContext,
    p: &Packet,
    addr: [u8; 4],
    port: [u8; 2],
) -> Result<(), DropReason> {
    rewrite(ctx, p, IP_SADDR_OFF, p.l4_off, p.saddr, addr, p.sport, port)
}

#[inline(always)]
#[expect(clippy::too_many_arguments, reason = "one rewrite, spelled out")]
fn rewrite(
    ctx: &TcContext,
    p: &Packet,
    addr_off: usize,
    port_off: usize,
    old_addr: [u8; 4],
    new_addr: [u8; 4],
    old_port: [u8; 2],
    new_port: [u8; 2],
) -> Result<(), DropReason> {
    // UDP: a zero checksum means "none" and must stay zero; a computed zero
    // is sent as 0xffff (BPF_F_MARK_MANGLED_0).
    let udp = if p.is_tcp() {
        0
    } else {
        u64::from(BPF_F_MARK_MANGLED_0)
    };
    let check = p.l4_check_off();
    let (oa, na) = (
        u64::from(u32::from_ne_bytes(old_addr)),
        u64::from(u32::from_ne_bytes(new_addr)),
    );
    let (op, np) = (
        u64::from(u16::from_ne_bytes(old_port)),
        u64::from(u16::from_ne_bytes(new_port)),
    );
    if !p.l4 {
        // A later fragment: its first fragment's L4 checksum covered the
        // change (and its ports are not here).
        let r = ctx
            .l3_csum_replace(IP_CHECK_OFF, oa, na, 4)
            .and_then(|()| ctx.store(addr_off, &new_addr, 0));
        return r.map_err(|_| DropReason::Rewrite);
    }
    let r = ctx
        .l4_csum_replace(check, oa, na, udp | u64::from(BPF_F_PSEUDO_HDR) | 4)
        .and_then(|()| ctx.l4_csum_replace(check, op, np, udp | 2))
        .and_then(|()| ctx.l3_csum_replace(IP_CHECK_OFF, oa, na, 4))
        .and_then(|()| ctx.store(addr_off, &new_addr, 0))
        .and_then(|()| ctx.store(port_off, &new_port, 0));
    r.map_err(|_| DropReason::Rewrite)
}
