//! Address and port rewrites in XDP: direct packet writes with RFC 1624
//! checksum updates (an XDP frame has no checksum offload state to keep).

use aya_ebpf::programs::XdpContext;
use network_types::eth::EthHdr;
use sluice_abi::{addr::In6, csum, stats::DropReason};

use crate::parse::{
    IP_CHECK_OFF, IP_DADDR_OFF, IP_OFF, IP_SADDR_OFF, IP_TTL_OFF, Packet,
    ipv6::{IP6_DADDR_OFF, IP6_SADDR_OFF},
    ptr_at_mut,
};

/// DNAT: the destination becomes `addr:port`.
#[inline(always)]
pub fn dst(ctx: &XdpContext, p: &Packet, addr: [u8; 4], port: [u8; 2]) -> Result<(), DropReason> {
    rewrite(ctx, p, IP_DADDR_OFF, p.l4_off + 2, addr, port)
}

/// SNAT, or the reverse NAT of a reply: the source becomes `addr:port`.
#[inline(always)]
pub fn src(ctx: &XdpContext, p: &Packet, addr: [u8; 4], port: [u8; 2]) -> Result<(), DropReason> {
    rewrite(ctx, p, IP_SADDR_OFF, p.l4_off, addr, port)
}

/// One hop: the TTL goes down by one (the caller made sure it is above 1).
#[inline(always)]
pub fn ttl_down(ctx: &XdpContext) -> Result<(), DropReason> {
    let check = ptr_at_mut::<[u8; 2]>(ctx, IP_CHECK_OFF).ok_or(DropReason::Rewrite)?;
    let word = ptr_at_mut::<[u8; 2]>(ctx, IP_TTL_OFF).ok_or(DropReason::Rewrite)?;
    unsafe {
        let [ttl, proto] = *word;
        let new = [ttl.saturating_sub(1), proto];
        let c = csum::replace16(
            u16::from_be_bytes(*check),
            u16::from_be_bytes(*word),
            u16::from_be_bytes(new),
        );
        *check = c.to_be_bytes();
        *word = new;
    }
    Ok(())
}

/// The Ethernet addresses of a forwarded frame.
#[inline(always)]
pub fn macs(ctx: &XdpContext, dst: [u8; 6], src: [u8; 6]) -> Result<(), DropReason> {
    let eth = ptr_at_mut::<EthHdr>(ctx, 0).ok_or(DropReason::Rewrite)?;
    unsafe {
        (*eth).dst_addr = dst;
        (*eth).src_addr = src;
    }
    Ok(())
}

#[inline(always)]
fn rewrite(
    ctx: &XdpContext,
    p: &Packet,
    addr_off: usize,
    port_off: usize,
    new_addr: [u8; 4],
    new_port: [u8; 2],
) -> Result<(), DropReason> {
    let ip_check = ptr_at_mut::<[u8; 2]>(ctx, IP_CHECK_OFF).ok_or(DropReason::Rewrite)?;
    let addr = ptr_at_mut::<[u8; 4]>(ctx, addr_off).ok_or(DropReason::Rewrite)?;
    if !p.l4 {
        // A later fragment: its first fragment's L4 checksum covered the
        // change (and its ports are not here).
        unsafe {
            let (old, new) = (u32::from_be_bytes(*addr), u32::from_be_bytes(new_addr));
            *ip_check = csum::replace32(u16::from_be_bytes(*ip_check), old, new).to_be_bytes();
            *addr = new_addr;
        }
        return Ok(());
    }
    let port = ptr_at_mut::<[u8; 2]>(ctx, port_off).ok_or(DropReason::Rewrite)?;
    let l4_check = ptr_at_mut::<[u8; 2]>(ctx, p.l4_check_off()).ok_or(DropReason::Rewrite)?;
    unsafe {
        let (old_addr, old_port) = (u32::from_be_bytes(*addr), u16::from_be_bytes(*port));
        let (na, np) = (u32::from_be_bytes(new_addr), u16::from_be_bytes(new_port));
        let check = u16::from_be_bytes(*ip_check);
        *ip_check = csum::replace32(check, old_addr, na).to_be_bytes();
        let l4 = u16::from_be_bytes(*l4_check);
        // UDP: a zero checksum means "none" and stays zero; a computed zero
        // is sent as 0xffff (RFC 768).
        if p.is_tcp() || l4 != 0 {
            let mut c = csum::replace16(csum::replace32(l4, old_addr, na), old_port, np);
            if !p.is_tcp() && c == 0 {
                c = 0xffff;
            }
            *l4_check = c.to_be_bytes();
        }
        *addr = new_addr;
        *port = new_port;
    }
    Ok(())
}

/// DNAT of an IPv6 packet with its ports here (`Packet::l4`): the
/// destination becomes `addr:port`.
#[inline(always)]
pub fn dst6(ctx: &XdpContext, p: &Packet<In6>, addr: In6, port: [u8; 2]) -> Result<(), DropReason> {
    rewrite6(ctx, p, IP6_DADDR_OFF, p.l4_off + 2, addr, port)
}

/// SNAT of an IPv6 packet, or the reverse NAT of a reply: the source
/// becomes `addr:port`.
#[inline(always)]
pub fn src6(ctx: &XdpContext, p: &Packet<In6>, addr: In6, port: [u8; 2]) -> Result<(), DropReason> {
    rewrite6(ctx, p, IP6_SADDR_OFF, p.l4_off, addr, port)
}

/// One hop for IPv6: the hop limit goes down by one (the caller made sure
/// it is above 1). IPv6 has no header checksum.
#[inline(always)]
pub fn hop_down6(ctx: &XdpContext) -> Result<(), DropReason> {
    let hop_limit = ptr_at_mut::<u8>(ctx, IP_OFF + 7).ok_or(DropReason::Rewrite)?;
    unsafe { *hop_limit = (*hop_limit).saturating_sub(1) };
    Ok(())
}

/// An IPv6 address and port rewrite: only the L4 checksum covers them
/// (through the pseudo-header), updated a word at a time.
#[inline(always)]
fn rewrite6(
    ctx: &XdpContext,
    p: &Packet<In6>,
    addr_off: usize,
    port_off: usize,
    new_addr: In6,
    new_port: [u8; 2],
) -> Result<(), DropReason> {
    let addr = ptr_at_mut::<[u32; 4]>(ctx, addr_off).ok_or(DropReason::Rewrite)?;
    let port = ptr_at_mut::<[u8; 2]>(ctx, port_off).ok_or(DropReason::Rewrite)?;
    let l4_check = ptr_at_mut::<[u8; 2]>(ctx, p.l4_check_off()).ok_or(DropReason::Rewrite)?;
    unsafe {
        // Packet memory: no alignment to count on.
        let [o0, o1, o2, o3] = addr.read_unaligned();
        let [n0, n1, n2, n3] = new_addr.0;
        let l4 = u16::from_be_bytes(*l4_check);
        // UDP as IPv4's: a zero checksum stays zero (IPv6 forbids it, and
        // it is not ours to mend), a computed zero goes out as 0xffff.
        if p.is_tcp() || l4 != 0 {
            let mut c = l4;
            for (old, new) in [(o0, n0), (o1, n1), (o2, n2), (o3, n3)] {
                c = csum::replace32(c, u32::from_be(old), u32::from_be(new));
            }
            let (op, np) = (u16::from_be_bytes(*port), u16::from_be_bytes(new_port));
            c = csum::replace16(c, op, np);
            if !p.is_tcp() && c == 0 {
                c = 0xffff;
            }
            *l4_check = c.to_be_bytes();
        }
        addr.write_unaligned(new_addr.0);
        *port = new_port;
    }
    Ok(())
}
