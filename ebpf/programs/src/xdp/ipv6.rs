//! IPv6 from outside in XDP (`xdp_edge6`, which `xdp_ingress` tail-calls):
//! the packets of established flows that `tc_edge6` created are translated
//! here, as IPv4's are, before the stack sees them. A client's packet to a
//! backend on another node is DNATed and SNATed and sent straight on, and
//! that backend's reply translated back to the client; a client's packet
//! to a backend on this node is DNATed and passed to the stack (marked, so
//! that `tc_external` lets it by), which routes it to the pod.
//!
//! Everything else goes on to `tc_edge6` untouched, which decides as in
//! `--xdp-mode tc`: a new flow or one still in the new flows' table (a
//! backend choice, and both tables' lookups, need more of the 512 bytes
//! of stack than this program has left), `externalTrafficPolicy: Local`,
//! extension headers and fragments, ICMPv6, a packet at its last hop or
//! too big for its route (both answered with an ICMPv6 error), a next hop
//! without a neighbour entry, and traffic that is not a tracked flow's.

use aya_ebpf::programs::XdpContext;
use sluice_abi::{
    addr::In6,
    config::DataplaneConfig,
    conntrack::CT_F_SNAT,
    proto,
    service::{SVC_FLAG_EXT_LOCAL, SVC_FLAG_EXTERNAL},
    stats::{DropReason, Event},
};

use super::{HandOff as _, XDP_PASS, rewrite};
use crate::{
    conntrack::{self, Tracked},
    edge::Edge as _,
    fib, lb,
    maps::{self, CtMaps, NsOther, NsTcp},
    parse::{self, Frame as _, IP_OFF, Packet},
    stats,
};

/// An IPv6 packet from outside whose source is not one of the node's
/// addresses (the caller checked).
#[inline(always)]
pub fn run(ctx: &XdpContext, config: &DataplaneConfig) -> Result<u32, DropReason> {
    let Some(p) = parse(ctx)? else {
        return Ok(untouched());
    };
    // At its last hop: TC answers hop limit exceeded.
    if p.ttl <= 1 {
        return Ok(untouched());
    }
    if let Some((_, all)) = lb::frontend_or_node_port6(p.daddr, p.dport, p.proto)
        && all.flags & SVC_FLAG_EXTERNAL != 0
    {
        // `externalTrafficPolicy: Local`: TC, which looks at the local
        // endpoints first (this program has no stack for that lookup).
        if all.flags & SVC_FLAG_EXT_LOCAL != 0 {
            return Ok(untouched());
        }
        return if p.is_tcp() {
            to_backend::<NsTcp>(ctx, &p, all.id, config)
        } else {
            to_backend::<NsOther>(ctx, &p, all.id, config)
        };
    }
    // A backend's reply to a flow SNATed here.
    if !maps::is_node_addr6(p.daddr) {
        return Ok(untouched());
    }
    let now = conntrack::now();
    let reply = if p.is_tcp() {
        conntrack::lookup_reply_established::<_, NsTcp>(&p, now)
    } else {
        conntrack::lookup_reply_established::<_, NsOther>(&p, now)
    };
    let Some(reply) = reply else {
        return Ok(untouched());
    };
    if reply.flags & CT_F_SNAT == 0 {
        return Ok(untouched());
    }
    // Back to the client, from the frontend.
    let from = (reply.nat_addr_be, reply.nat_port_be);
    let to = (reply.snat_addr_be, reply.snat_port_be);
    let verdict = forward(ctx, &p, from, to)?;
    if verdict == XDP_PASS {
        return Ok(untouched());
    }
    stats::traffic(reply.service_id, reply.backend_id, p.len, false);
    stats::event(Event::Reply);
    Ok(verdict)
}

/// A client's packet to frontend `service_id`, tracked in table `T`: a
/// tracked flow's is translated; any other goes on to TC.
#[inline(always)]
fn to_backend<T: CtMaps<In6>>(
    ctx: &XdpContext,
    p: &Packet<In6>,
    service_id: u32,
    config: &DataplaneConfig,
) -> Result<u32, DropReason> {
    let now = conntrack::now();
    // Taken apart at once, each part defined on every path: a copied
    // `None`'s undefined bytes are refused by the verifier.
    let (to, snat) = match conntrack::lookup_established::<_, T>(p, now, &config.lifetimes) {
        Some(Tracked::Keep(to)) => match to.snat {
            Some(s) => ((to.addr, to.port, to.backend_id), Some((s.addr, s.port))),
            None => ((to.addr, to.port, to.backend_id), None),
        },
        _ => return Ok(untouched()),
    };
    let (addr, port, backend_id) = to;
    let verdict = if let Some(src) = snat {
        let verdict = forward(ctx, p, src, (addr, port))?;
        if verdict == XDP_PASS {
            return Ok(untouched());
        }
        verdict
    } else {
        // A backend here: the stack routes the packet to it, and
        // `tc_external` lets it by (the mark says XDP translated it).
        rewrite::dst6(ctx, p, addr, port)?;
        ctx.hand_off();
        XDP_PASS
    };
    stats::event(Event::Established);
    stats::traffic(service_id, backend_id, p.len, false);
    Ok(verdict)
}

/// A packet of a flow SNATed here, rewritten to `src` → `dst` and sent
/// straight to its next hop with one hop taken. `XDP_PASS`, untouched,
/// when the route is not a plain forward (too big: TC answers Packet Too
/// Big; no neighbour entry yet: TC sends it, and the stack resolves one).
#[inline(always)]
fn forward(
    ctx: &XdpContext,
    p: &Packet<In6>,
    src: (In6, [u8; 2]),
    dst: (In6, [u8; 2]),
) -> Result<u32, DropReason> {
    let route = fib::route6(ctx, ctx.ingress(), p, src, dst, p.tot_len);
    if route.hop != fib::Hop::Forward {
        return Ok(untouched());
    }
    rewrite::hop_down6(ctx)?;
    rewrite::dst6(ctx, p, dst.0, dst.1)?;
    rewrite::src6(ctx, p, src.0, src.1)?;
    Ok(ctx.forward(&route))
}

/// A TCP or UDP packet whose header follows the IPv6 header's. Extension
/// headers (a fragment's among them), ICMPv6 and other protocols are
/// TC's to walk (`parse::ipv6`): this program has no stack for them.
#[inline(always)]
fn parse(ctx: &XdpContext) -> Result<Option<Packet<In6>>, DropReason> {
    let h: [u32; 10] = ctx.read(IP_OFF).ok_or(DropReason::MalformedIp)?;
    let [w0, w1, s0, s1, s2, s3, d0, d1, d2, d3] = h;
    let [vcf, ..] = w0.to_ne_bytes();
    let [l0, l1, next, hop_limit] = w1.to_ne_bytes();
    if vcf >> 4 != 6 || (next != proto::TCP && next != proto::UDP) {
        return Ok(None);
    }
    let l4_off = IP_OFF + IP6_HDR_LEN;
    let (sport, dport, tcp_flags) = parse::ports(ctx, l4_off, next)?;
    Ok(Some(Packet {
        l4_off,
        ihl_bytes: IP6_HDR_LEN,
        saddr: In6([s0, s1, s2, s3]),
        daddr: In6([d0, d1, d2, d3]),
        sport,
        dport,
        proto: next,
        tcp_flags,
        len: ctx.len(),
        tot_len: u16::from_be_bytes([l0, l1]).saturating_add(IP6_HDR_LEN as u16),
        df: true,
        ttl: hop_limit,
        l4: true,
    }))
}

/// The fixed IPv6 header's length.
const IP6_HDR_LEN: usize = 40;

/// Passed on untouched, and counted so (`tc_edge6` decides next).
#[inline(always)]
fn untouched() -> u32 {
    stats::event(Event::Pass);
    XDP_PASS
}
