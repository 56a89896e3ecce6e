//! Address and port rewrites with checksum updates, through the skb helpers
//! so that CHECKSUM_PARTIAL packets (veth, GSO) stay right.

use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR},
    helpers::bpf_csum_diff,
    programs::TcContext,
};
use sluice_abi::{addr::In6, stats::DropReason};

use crate::{
    family::Family,
    parse::{IP_CHECK_OFF, IP_OFF, IP_TTL_OFF, Packet},
};

/// DNAT: the destination becomes `addr:port`.
#[inline(always)]
pub fn rewrite_dst<A: Family>(
    ctx: &TcContext,
    p: &Packet<A>,
    addr: A,
    port: [u8; 2],
) -> Result<(), DropReason> {
    let r = Rewrite {
        addr_off: A::DADDR_OFF,
        port_off: p.l4_off + 2,
        old_addr: p.daddr,
        new_addr: addr,
        old_port: p.dport,
        new_port: port,
    };
    A::rewrite(ctx, p, &r)
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

/// One hop for an IPv6 packet BPF forwards itself: its hop limit goes down
/// by one (the caller made sure it is above 1). IPv6 has no header
/// checksum.
#[inline(always)]
pub fn hop_down6(ctx: &TcContext, p: &Packet<In6>) -> Result<(), DropReason> {
    ctx.store(IP6_HOP_LIMIT_OFF, &p.ttl.saturating_sub(1), 0)
        .map_err(|_| DropReason::Rewrite)
}

/// Where the IPv6 header's hop limit is.
const IP6_HOP_LIMIT_OFF: usize = IP_OFF + 7;

/// Reverse NAT of a reply: the source becomes `addr:port`.
#[inline(always)]
pub fn rewrite_src<A: Family>(
    ctx: &TcContext,
    p: &Packet<A>,
    addr: A,
    port: [u8; 2],
) -> Result<(), DropReason> {
    let r = Rewrite {
        addr_off: A::SADDR_OFF,
        port_off: p.l4_off,
        old_addr: p.saddr,
        new_addr: addr,
        old_port: p.sport,
        new_port: port,
    };
    A::rewrite(ctx, p, &r)
}

/// One address and port of a packet, where they are, what they are and
/// what they become.
pub struct Rewrite<A> {
    pub addr_off: usize,
    pub port_off: usize,
    pub old_addr: A,
    pub new_addr: A,
    pub old_port: [u8; 2],
    pub new_port: [u8; 2],
}

/// UDP: a zero checksum means "none" and must stay zero; a computed zero
/// is sent as 0xffff (`BPF_F_MARK_MANGLED_0`).
#[inline(always)]
fn udp_flag<A>(p: &Packet<A>) -> u64 {
    if p.is_tcp() {
        0
    } else {
        u64::from(BPF_F_MARK_MANGLED_0)
    }
}

/// An IPv4 rewrite: the L4 checksum (pseudo-header and port) and the
/// header's own.
#[inline(always)]
pub fn rewrite4(ctx: &TcContext, p: &Packet, r: &Rewrite<[u8; 4]>) -> Result<(), DropReason> {
    let udp = udp_flag(p);
    let check = p.l4_check_off();
    let (oa, na) = (
        u64::from(u32::from_ne_bytes(r.old_addr)),
        u64::from(u32::from_ne_bytes(r.new_addr)),
    );
    let (op, np) = (
        u64::from(u16::from_ne_bytes(r.old_port)),
        u64::from(u16::from_ne_bytes(r.new_port)),
    );
    if !p.l4 {
        // A later fragment: its first fragment's L4 checksum covered the
        // change (and its ports are not here).
        let res = ctx
            .l3_csum_replace(IP_CHECK_OFF, oa, na, 4)
            .and_then(|()| ctx.store(r.addr_off, &r.new_addr, 0));
        return res.map_err(|_| DropReason::Rewrite);
    }
    let res = ctx
        .l4_csum_replace(check, oa, na, udp | u64::from(BPF_F_PSEUDO_HDR) | 4)
        .and_then(|()| ctx.l4_csum_replace(check, op, np, udp | 2))
        .and_then(|()| ctx.l3_csum_replace(IP_CHECK_OFF, oa, na, 4))
        .and_then(|()| ctx.store(r.addr_off, &r.new_addr, 0))
        .and_then(|()| ctx.store(r.port_off, &r.new_port, 0));
    res.map_err(|_| DropReason::Rewrite)
}

/// An IPv6 rewrite: IPv6 has no header checksum; the address's change to
/// the L4 checksum (its pseudo-header) is one 16-byte difference.
#[inline(always)]
pub fn rewrite6(ctx: &TcContext, p: &Packet<In6>, r: &Rewrite<In6>) -> Result<(), DropReason> {
    if !p.l4 {
        // A later fragment: the first fragment's checksum covered it.
        return ctx
            .store(r.addr_off, &r.new_addr, 0)
            .map_err(|_| DropReason::Rewrite);
    }
    let udp = udp_flag(p);
    let check = p.l4_check_off();
    let mut old = r.old_addr.0;
    let mut new = r.new_addr.0;
    // SAFETY: two 16-byte arrays on the stack, whole words.
    let diff = unsafe { bpf_csum_diff(old.as_mut_ptr(), 16, new.as_mut_ptr(), 16, 0) };
    #[expect(clippy::cast_sign_loss, reason = "a checksum, or an error below")]
    let diff = if diff < 0 {
        return Err(DropReason::Rewrite);
    } else {
        diff as u64 & 0xffff_ffff
    };
    let (op, np) = (
        u64::from(u16::from_ne_bytes(r.old_port)),
        u64::from(u16::from_ne_bytes(r.new_port)),
    );
    // Size 0: `diff` is a checksum difference, not a field's old and new.
    let res = ctx
        .l4_csum_replace(check, 0, diff, udp | u64::from(BPF_F_PSEUDO_HDR))
        .and_then(|()| ctx.l4_csum_replace(check, op, np, udp | 2))
        .and_then(|()| ctx.store(r.addr_off, &r.new_addr, 0))
        .and_then(|()| ctx.store(r.port_off, &r.new_port, 0));
    res.map_err(|_| DropReason::Rewrite)
}
