//! IPv6 from outside in XDP: `xdp_ingress` tail-calls `xdp_edge6`, which
//! translates the packets of established flows, as IPv4's are, before the
//! stack sees them. A client's packet to a backend on another node is
//! DNATed and SNATed and sent straight on, and that backend's reply
//! translated back to the client; a client's packet to a backend on this
//! node is DNATed and passed to the stack (marked, so that `tc_external`
//! lets it by), which routes it to the pod.
//!
//! Each lookup beyond that takes a program of its own, as on TC's paths:
//! IPv6's keys leave each program little of its 512 bytes of stack, and
//! Linux 6.1 counts 32 more for a program that calls `memset`.
//! - `xdp_edge6_flow`: a client's packet whose flow is not in the
//!   established flows' table (a new flow, or one whose handshake is not
//!   done), or to a frontend under `externalTrafficPolicy: Local`, whose
//!   local scope it looks up first; it looks in both tables, as TC does.
//! - `xdp_edge6_new`: a new flow, created (Maglev, affinity, source
//!   ranges, SNAT) and handed back to `xdp_edge6_flow` to be translated.
//! - `xdp_edge6_reply`: a backend's reply whose flow is not in the
//!   established flows' table.
//!
//! Everything else goes on to `tc_edge6` untouched, which decides as in
//! `--xdp-mode tc`: extension headers and fragments, ICMPv6, a packet at
//! its last hop or too big for its route (both answered with an ICMPv6
//! error), a frontend without endpoints (a REJECT), a next hop without a
//! neighbour entry, and traffic that is not a Service's.

use aya_ebpf::programs::XdpContext;
use sluice_abi::{
    addr::In6,
    config::DataplaneConfig,
    conntrack::{CT_F_SNAT, CtEntryOf},
    proto,
    service::{SVC_FLAG_EXT_LOCAL, SVC_FLAG_EXTERNAL, ServiceValue},
    stats::{DropReason, Event},
};

use super::{HandOff as _, XDP_PASS, rewrite};
use crate::{
    conntrack::{self, Binding, Tracked},
    edge::{
        Edge as _,
        ipv6::{create_flow, scope},
    },
    fib, lb,
    maps::{self, NsOther, NsTcp},
    parse::{self, Frame as _, IP_OFF, Packet},
    stats,
};

/// An IPv6 packet from outside whose source is not one of the node's
/// addresses (the caller checked): `xdp_edge6`.
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
        // `externalTrafficPolicy: Local`: its local scope first, which
        // `xdp_edge6_flow` has the stack to look up.
        if all.flags & SVC_FLAG_EXT_LOCAL != 0 {
            return Ok(hand_on(ctx, maps::XDP_TAIL_EDGE6_FLOW));
        }
        let now = conntrack::now();
        let tracked = if p.is_tcp() {
            conntrack::lookup_established::<_, NsTcp>(&p, now, &config.lifetimes)
        } else {
            conntrack::lookup_established::<_, NsOther>(&p, now, &config.lifetimes)
        };
        return match tracked {
            Some(Tracked::Keep(to)) => send(ctx, &p, all.id, &to),
            // A new flow, or one still in the new flows' table.
            _ => Ok(hand_on(ctx, maps::XDP_TAIL_EDGE6_FLOW)),
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
    match reply {
        Some(reply) => back(ctx, &p, &reply),
        // Perhaps a flow still in the new flows' table.
        None => Ok(hand_on(ctx, maps::XDP_TAIL_EDGE6_REPLY)),
    }
}

/// A client's packet to a frontend served to the outside, whose flow is
/// not in the established flows' table, or under `externalTrafficPolicy:
/// Local` (`xdp_edge6_flow`): looked up in both tables, as TC does, and
/// translated; a new flow goes on to `xdp_edge6_new`.
#[inline(always)]
pub fn run_flow(ctx: &XdpContext, config: &DataplaneConfig) -> Result<u32, DropReason> {
    let Some((p, _, svc)) = to_frontend(ctx)? else {
        return Ok(untouched());
    };
    let now = conntrack::now();
    // Both tables, the established one again: another CPU may have
    // promoted the flow since `xdp_edge6` missed it there (`promote`
    // inserts into the established table, then removes from the new one),
    // and the new table alone would then take a live TCP segment for
    // invalid and drop it. Under `externalTrafficPolicy: Local` nothing
    // has looked yet.
    let tracked = if p.is_tcp() {
        conntrack::lookup_original::<_, NsTcp>(&p, now, &config.lifetimes)
    } else {
        conntrack::lookup_original::<_, NsOther>(&p, now, &config.lifetimes)
    };
    match tracked {
        Tracked::Keep(to) => send(ctx, &p, svc.id, &to),
        // kube-proxy drops ctstate INVALID.
        Tracked::Invalid => Err(DropReason::CtInvalid),
        Tracked::New => Ok(hand_on(ctx, maps::XDP_TAIL_EDGE6_NEW)),
    }
}

/// A new flow from outside (`xdp_edge6_new`), from `xdp_edge6_flow`:
/// created as TC creates it (`edge::ipv6::create_flow`: Maglev, affinity,
/// source ranges, SNAT for a backend on another node), and handed back
/// to `xdp_edge6_flow`, which finds it now and translates the packet. A
/// frontend without endpoints is TC's to reject (with ICMPv6
/// port-unreachable).
///
/// The two call each other only while the flow they created is not
/// found, which does not happen; were it to, the kernel's limit on tail
/// calls (33) would end it, and TC take the packet.
#[inline(always)]
pub fn run_new(ctx: &XdpContext, config: &DataplaneConfig) -> Result<u32, DropReason> {
    let Some((p, all, svc)) = to_frontend(ctx)? else {
        return Ok(untouched());
    };
    let ingress = ctx.ingress();
    let created = if p.is_tcp() {
        create_flow::<NsTcp>(ctx, ingress, &p, &all, &svc, config)
    } else {
        create_flow::<NsOther>(ctx, ingress, &p, &all, &svc, config)
    };
    match created {
        Ok(()) => Ok(hand_on(ctx, maps::XDP_TAIL_EDGE6_FLOW)),
        Err(DropReason::NoEndpoints) => Ok(untouched()),
        Err(reason) => Err(reason),
    }
}

/// A backend's reply to a node address whose flow is not in the
/// established flows' table (`xdp_edge6_reply`): looked up in both, and
/// a SNATed flow's translated back to its client.
#[inline(always)]
pub fn run_reply(ctx: &XdpContext) -> Result<u32, DropReason> {
    let Some(p) = parse(ctx)? else {
        return Ok(untouched());
    };
    let now = conntrack::now();
    // Both tables, as in `run_flow`: a promotion may have raced the miss.
    let reply = if p.is_tcp() {
        conntrack::lookup_reply::<_, NsTcp>(&p, now)
    } else {
        conntrack::lookup_reply::<_, NsOther>(&p, now)
    };
    match reply {
        Some(reply) => back(ctx, &p, &reply),
        None => Ok(untouched()),
    }
}

/// A client's packet to a frontend served to the outside, and the
/// frontend's entry and the scope its flows use (`edge::ipv6::scope`);
/// `None` for any other packet, and for one TC must answer (at its last
/// hop, or to a frontend without endpoints: a REJECT).
#[inline(always)]
fn to_frontend(
    ctx: &XdpContext,
) -> Result<Option<(Packet<In6>, ServiceValue, ServiceValue)>, DropReason> {
    let Some(p) = parse(ctx)? else {
        return Ok(None);
    };
    if p.ttl <= 1 {
        return Ok(None);
    }
    let Some((key, all)) = lb::frontend_or_node_port6(p.daddr, p.dport, p.proto) else {
        return Ok(None);
    };
    if all.flags & SVC_FLAG_EXTERNAL == 0 {
        return Ok(None);
    }
    match scope(&key, &all) {
        Ok(svc) => Ok(Some((p, all, svc))),
        Err(DropReason::NoEndpoints) => Ok(None),
        Err(reason) => Err(reason),
    }
}

/// A tracked flow's packet from its client to frontend `service_id`,
/// translated for backend `to`.
#[inline(always)]
fn send(
    ctx: &XdpContext,
    p: &Packet<In6>,
    service_id: u32,
    to: &Binding<In6>,
) -> Result<u32, DropReason> {
    let verdict = match to.snat {
        Some(ref s) => {
            let verdict = forward(ctx, p, (s.addr, s.port), (to.addr, to.port))?;
            if verdict == XDP_PASS {
                return Ok(untouched());
            }
            verdict
        }
        None => {
            // A backend here: the stack routes the packet to it, and
            // `tc_external` lets it by (the mark says XDP translated it).
            rewrite::dst6(ctx, p, to.addr, to.port)?;
            ctx.hand_off();
            XDP_PASS
        }
    };
    stats::event(Event::Established);
    stats::traffic(service_id, to.backend_id, p.len, false);
    Ok(verdict)
}

/// A backend's reply to a flow SNATed here, back to the client, from the
/// frontend; any other goes on to TC.
#[inline(always)]
fn back(ctx: &XdpContext, p: &Packet<In6>, reply: &CtEntryOf<In6>) -> Result<u32, DropReason> {
    if reply.flags & CT_F_SNAT == 0 {
        return Ok(untouched());
    }
    let from = (reply.nat_addr_be, reply.nat_port_be);
    let to = (reply.snat_addr_be, reply.snat_port_be);
    let verdict = forward(ctx, p, from, to)?;
    if verdict == XDP_PASS {
        return Ok(untouched());
    }
    stats::traffic(reply.service_id, reply.backend_id, p.len, false);
    stats::event(Event::Reply);
    Ok(verdict)
}

/// Hands the frame to the program in `SLUICE_XDP_TAIL`'s slot `index`;
/// without one there, on to TC untouched.
#[inline(always)]
fn hand_on(ctx: &XdpContext, index: u32) -> u32 {
    maps::xdp_tail_call(ctx, index);
    untouched()
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
