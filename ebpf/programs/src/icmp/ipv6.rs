//! ICMPv6 errors about translated flows (destination unreachable, Packet
//! Too Big, time exceeded, parameter problem), as `icmp.rs` for IPv4: the
//! quote is found the same way (`translation`), and rewritten with its
//! checksums. IPv6 headers have no checksum of their own, but ICMPv6's
//! covers a pseudo-header of the error's own addresses, so the error's
//! checksum follows both its own and the quote's changes.

use aya_ebpf::programs::TcContext;
use sluice_abi::{addr::In6, csum, proto, stats::DropReason};

use super::{Quoted, Translation, translation};
use crate::{
    maps::{EwOther, EwTcp, NsOther, NsTcp},
    parse::{
        Frame, Packet, Parsed,
        ipv6::{self, IP6_DADDR_OFF, IP6_SADDR_OFF},
    },
};

/// An ICMPv6 error, the packet it quotes, and what they become.
pub type Translated6 = (Packet<In6>, Quoted<In6>, Translation<In6>);

/// An ICMPv6 error in `ctx` about a flow translated here, with what it
/// becomes: the error, its quote and their translation (a flow of a pod
/// or from outside, whichever table has it). `None`: not an error about a
/// translated flow; it passes as it is.
#[inline(always)]
pub fn about_a_flow(ctx: &impl Frame) -> Result<Option<Translated6>, DropReason> {
    let Parsed::IcmpError(p) = ipv6::parse(ctx)? else {
        return Ok(None);
    };
    let Some(q) = quoted(ctx, &p) else {
        return Ok(None);
    };
    let t = if q.is_tcp() {
        translation::<_, EwTcp>(&p, &q).or_else(|| translation::<_, NsTcp>(&p, &q))
    } else {
        translation::<_, EwOther>(&p, &q).or_else(|| translation::<_, NsOther>(&p, &q))
    };
    Ok(t.map(|t| (p, q, t)))
}

/// The TCP or UDP packet the ICMPv6 error `p` quotes, if it is one whose
/// IPv6 header is followed by its TCP or UDP header (no extension headers:
/// the quote of a packet with them is left as it is).
#[inline(always)]
pub fn quoted(ctx: &impl Frame, p: &Packet<In6>) -> Option<Quoted<In6>> {
    let ip_off = p.l4_off + 8;
    let [w0, w1, s0, s1, s2, s3, d0, d1, d2, d3] = ctx.read::<[u32; 10]>(ip_off)?;
    let [version, ..] = w0.to_ne_bytes();
    let [_, _, next, _] = w1.to_ne_bytes();
    if version >> 4 != 6 || (next != proto::TCP && next != proto::UDP) {
        return None;
    }
    let l4_off = ip_off + 40;
    let [sp0, sp1, dp0, dp1] = ctx.read::<[u8; 4]>(l4_off)?;
    let check_end = l4_off + if next == proto::TCP { 18 } else { 8 };
    Some(Quoted {
        ip_off,
        l4_off,
        saddr: In6([s0, s1, s2, s3]),
        daddr: In6([d0, d1, d2, d3]),
        sport: [sp0, sp1],
        dport: [dp0, dp1],
        proto: next,
        has_check: ctx.len() as usize >= check_end,
    })
}

/// `check` after an address in what it covers changed from `old` to `new`
/// (RFC 1624, a word at a time).
#[inline(always)]
fn replace_addr(check: u16, old: In6, new: In6) -> u16 {
    let [o0, o1, o2, o3] = old.0;
    let [n0, n1, n2, n3] = new.0;
    let mut c = csum::replace32(check, u32::from_be(o0), u32::from_be(n0));
    c = csum::replace32(c, u32::from_be(o1), u32::from_be(n1));
    c = csum::replace32(c, u32::from_be(o2), u32::from_be(n2));
    csum::replace32(c, u32::from_be(o3), u32::from_be(n3))
}

/// Rewrites ICMPv6 error `p` quoting `q` as `t` says, every checksum
/// updated incrementally.
#[inline(always)]
pub fn rewrite(
    ctx: &TcContext,
    p: &Packet<In6>,
    q: &Quoted<In6>,
    t: &Translation<In6>,
) -> Result<(), DropReason> {
    let err = |_| DropReason::Rewrite;
    let icmp_check_off = p.l4_off + 2;
    let mut sum = u16::from_be_bytes(ctx.load::<[u8; 2]>(icmp_check_off).map_err(err)?);
    // The error's own addresses, in its pseudo-header.
    sum = replace_addr(sum, p.saddr, t.outer_src);
    sum = replace_addr(sum, p.daddr, t.outer_dst);
    // The quoted addresses and ports.
    sum = replace_addr(sum, q.saddr, t.saddr);
    sum = replace_addr(sum, q.daddr, t.daddr);
    let half = u16::from_be_bytes;
    let ports = |c: u16| {
        let c = csum::replace16(c, half(q.sport), half(t.sport));
        csum::replace16(c, half(q.dport), half(t.dport))
    };
    sum = ports(sum);
    // The quoted TCP or UDP checksum, if quoted (a UDP checksum of zero is
    // "none" and stays so): its pseudo-header is the quote's addresses.
    if q.has_check {
        let old = half(ctx.load::<[u8; 2]>(q.check_off()).map_err(err)?);
        if q.is_tcp() || old != 0 {
            let mut new = ports(replace_addr(
                replace_addr(old, q.saddr, t.saddr),
                q.daddr,
                t.daddr,
            ));
            if !q.is_tcp() && new == 0 {
                new = 0xffff;
            }
            sum = csum::replace16(sum, old, new);
            ctx.store(q.check_off(), &new.to_be_bytes(), 0)
                .map_err(err)?;
        }
    }
    ctx.store(IP6_SADDR_OFF, &t.outer_src, 0).map_err(err)?;
    ctx.store(IP6_DADDR_OFF, &t.outer_dst, 0).map_err(err)?;
    ctx.store(q.ip_off + 8, &t.saddr, 0).map_err(err)?;
    ctx.store(q.ip_off + 24, &t.daddr, 0).map_err(err)?;
    let [sp0, sp1] = t.sport;
    let [dp0, dp1] = t.dport;
    ctx.store(q.l4_off, &[sp0, sp1, dp0, dp1], 0).map_err(err)?;
    ctx.store(icmp_check_off, &sum.to_be_bytes(), 0)
        .map_err(err)?;
    Ok(())
}
