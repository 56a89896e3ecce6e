//! IPv6 from outside, at an external interface: NodePorts on the node's
//! IPv6 addresses, IPv6 external and load balancer addresses. Served in
//! TC: `tc_north_south` (`--xdp-mode tc`) and `tc_external` (behind XDP,
//! for what `xdp::ipv6` leaves: extension headers, ICMPv6, the answers
//! that ICMPv6 errors are, a next hop without a neighbour entry) hand
//! IPv6 to `tc_edge6`, whose new flows go on to `tc_edge6_new` and ICMPv6
//! errors to `tc_edge6_icmp`, as the pod path's do (`pod/ipv6.rs`): each
//! program has the 512 bytes of stack IPv6's keys need. A new flow, once
//! created, comes back to `tc_edge6`, which translates it as it does the
//! flow's next packets.
//!
//! The rules are IPv4's (`edge.rs`): a frontend served to the outside
//! (`SVC_FLAG_EXTERNAL`), `externalTrafficPolicy: Local` through the local
//! scope, `loadBalancerSourceRanges`, Maglev for a new flow's backend, a
//! REJECT (ICMPv6 port-unreachable) without endpoints, hop limit exceeded
//! answered before the packet is translated. A backend on this node gets
//! the packet DNATed and passed to the stack, which routes it to the pod;
//! its replies are reverse-NATed on the pod's interface (`pod/ipv6.rs`,
//! from the north-south tables), and go out through the stack. A backend
//! on another node (`externalTrafficPolicy: Cluster`) gets it DNATed and
//! SNATed to the IPv6 address of the interface its route leaves through
//! (`SLUICE_EXT_IF6`), sent straight to the next hop; its replies come
//! back here and are translated back to the client. A packet too big for
//! that route is answered with Packet Too Big. ICMPv6 errors from outside
//! about these flows (a router's Packet Too Big about a reply) are
//! translated back. A backend's reply to a pod's flow (through a backend
//! on another node) is reverse-NATed here.

use aya_ebpf::{EbpfContext, programs::TcContext};
use sluice_abi::{
    addr::In6,
    config::DataplaneConfig,
    conntrack::CT_F_SNAT,
    maglev,
    service::{
        SVC_FLAG_EXT_LOCAL, SVC_FLAG_EXTERNAL, SVC_FLAG_SOURCE_RANGES, ServiceKey6, ServiceValue,
    },
    stats::{DropReason, Event},
};

use crate::{
    TC_ACT_OK,
    conntrack::{self, Binding, Tracked},
    family::Family,
    fib, icmp, lb,
    maps::{self, CtMaps, EwOther, EwTcp, NsOther, NsTcp},
    monitor, nat,
    parse::{Packet, Parsed, ipv6},
    reject::ipv6::{self as reject6, Icmp6},
    stats,
};

/// An IPv6 packet from outside (`tc_edge6`).
#[inline(always)]
pub fn run(ctx: &TcContext, config: &DataplaneConfig) -> Result<i32, DropReason> {
    let p = match ipv6::parse(ctx)? {
        Parsed::Packet(p) => p,
        Parsed::IcmpError(p) => {
            if maps::is_node_addr6(p.saddr) {
                return Err(DropReason::ForgedSource);
            }
            maps::tail_call(ctx, maps::TAIL_EDGE6_ICMP);
            return Err(DropReason::TailCall);
        }
        // Neighbour discovery, the rest of ICMPv6, and later fragments,
        // which the stack reassembles or forwards: not Service traffic here.
        Parsed::NotOurs | Parsed::Fragment { .. } => return Ok(pass()),
    };
    // Nothing from outside comes from this node (XDP checked it already;
    // `--xdp-mode tc` has not).
    if maps::is_node_addr6(p.saddr) {
        return Err(DropReason::ForgedSource);
    }
    if let Some((key, svc)) = lb::frontend_or_node_port6(p.daddr, p.dport, p.proto)
        && svc.flags & SVC_FLAG_EXTERNAL != 0
    {
        return if p.is_tcp() {
            to_service::<NsTcp>(ctx, &p, &key, &svc, config)
        } else {
            to_service::<NsOther>(ctx, &p, &key, &svc, config)
        };
    }
    // A backend's reply: to a node address, of a flow from outside SNATed
    // here; to a pod on this node that reached it through a frontend, of
    // the pod's flow, DNATed on the pod's interface.
    let now = conntrack::now();
    let to_node = maps::is_node_addr6(p.daddr);
    let reply = match (p.is_tcp(), to_node) {
        (true, true) => conntrack::lookup_reply::<_, NsTcp>(&p, now),
        (true, false) => conntrack::lookup_reply::<_, EwTcp>(&p, now),
        (false, true) => conntrack::lookup_reply::<_, NsOther>(&p, now),
        (false, false) => conntrack::lookup_reply::<_, EwOther>(&p, now),
    };
    let Some(reply) = reply else {
        return Ok(pass());
    };
    stats::traffic(reply.service_id, reply.backend_id, p.len, false);
    stats::event(Event::Reply);
    if reply.flags & CT_F_SNAT == 0 {
        nat::rewrite_src(ctx, &p, reply.nat_addr_be, reply.nat_port_be)?;
        return Ok(TC_ACT_OK);
    }
    // Back to the client, from the frontend.
    let from = (reply.nat_addr_be, reply.nat_port_be);
    let to = (reply.snat_addr_be, reply.snat_port_be);
    forward(ctx, &p, from, to)
}

/// Sends a packet of a flow SNATed here on, rewritten to `src` → `dst`,
/// straight to its next hop: a client's packet to a backend on another
/// node, or that backend's reply to the client. Too big for the route, it
/// is answered with Packet Too Big (from the address it was sent to); it
/// loses a hop, as forwarding would take one.
#[inline(always)]
fn forward(
    ctx: &TcContext,
    p: &Packet<In6>,
    src: (In6, [u8; 2]),
    dst: (In6, [u8; 2]),
) -> Result<i32, DropReason> {
    if p.ttl <= 1 {
        let icmp = Icmp6::time_exceeded(p.daddr);
        return reject6::answer(ctx, p, DropReason::TtlExceeded, &icmp);
    }
    let ingress = unsafe { (*ctx.skb.skb).ifindex };
    let route = fib::route6(ctx, ingress, p, src, dst, 0);
    if route.too_big() {
        let icmp = Icmp6::too_big(route.mtu, p.daddr);
        return reject6::answer(ctx, p, DropReason::FragNeeded, &icmp);
    }
    nat::hop_down6(ctx, p)?;
    nat::rewrite_dst(ctx, p, dst.0, dst.1)?;
    nat::rewrite_src(ctx, p, src.0, src.1)?;
    Ok(redirect(&route))
}

/// To the next hop along `route`, or to the stack when it is not a
/// forward.
#[inline(always)]
fn redirect(route: &fib::Route) -> i32 {
    match fib::redirect(route) {
        Some(action) => {
            stats::event(Event::TcForward);
            action
        }
        None => TC_ACT_OK,
    }
}

/// The frontend's entry a flow from outside uses: under
/// `externalTrafficPolicy: Local`, its local scope. kube-proxy drops when
/// there are endpoints but none here, and rejects when there are none
/// (`NoEndpoints`: the caller rejects).
#[inline(always)]
pub fn scope(key: &ServiceKey6, all: &ServiceValue) -> Result<ServiceValue, DropReason> {
    if all.flags & SVC_FLAG_EXT_LOCAL == 0 {
        return Ok(*all);
    }
    match lb::local_scope6(key) {
        Some(local) if local.count > 0 => Ok(local),
        _ if all.count == 0 => Err(DropReason::NoEndpoints),
        _ => Err(DropReason::NoLocalEndpoints),
    }
}

/// A packet from outside to a frontend, tracked in table `T`.
#[inline(always)]
fn to_service<T: CtMaps<In6>>(
    ctx: &TcContext,
    p: &Packet<In6>,
    key: &ServiceKey6,
    all: &ServiceValue,
    config: &DataplaneConfig,
) -> Result<i32, DropReason> {
    // This node is a hop on the way to any backend: the sender hears of
    // it about the packet it sent, before any translation.
    if p.ttl <= 1 {
        return reject6::answer(
            ctx,
            p,
            DropReason::TtlExceeded,
            &Icmp6::time_exceeded(p.daddr),
        );
    }
    let svc = match scope(key, all) {
        Ok(svc) => svc,
        Err(DropReason::NoEndpoints) => return reject6::reject(ctx, p, DropReason::NoEndpoints),
        Err(reason) => return Err(reason),
    };
    let now = conntrack::now();
    let tracked = conntrack::lookup_original::<_, T>(p, now, &config.lifetimes);
    if !p.l4 && !matches!(tracked, Tracked::Keep(_)) {
        return Err(DropReason::Fragment);
    }
    match tracked {
        Tracked::Keep(to) => {
            stats::event(Event::Established);
            stats::traffic(svc.id, to.backend_id, p.len, false);
            if let Some(snat) = to.snat {
                return forward(ctx, p, (snat.addr, snat.port), (to.addr, to.port));
            }
            nat::rewrite_dst(ctx, p, to.addr, to.port)?;
            Ok(TC_ACT_OK)
        }
        // kube-proxy drops ctstate INVALID.
        Tracked::Invalid => Err(DropReason::CtInvalid),
        Tracked::New => {
            maps::tail_call(ctx, maps::TAIL_EDGE6_NEW);
            Err(DropReason::TailCall)
        }
    }
}

/// A new IPv6 flow from outside (`tc_edge6_new`): `run` found the packet to
/// be to a frontend served to the outside, and no flow of its; the frontend
/// is looked up again (it may have changed in between).
#[inline(always)]
pub fn run_new(ctx: &TcContext, config: &DataplaneConfig) -> Result<i32, DropReason> {
    let Parsed::Packet(p) = ipv6::parse(ctx)? else {
        return Ok(pass());
    };
    let Some((key, all)) = lb::frontend_or_node_port6(p.daddr, p.dport, p.proto) else {
        return Ok(pass());
    };
    if all.flags & SVC_FLAG_EXTERNAL == 0 {
        return Ok(pass());
    }
    if p.is_tcp() {
        new_flow::<NsTcp>(ctx, &p, &key, &all, config)
    } else {
        new_flow::<NsOther>(ctx, &p, &key, &all, config)
    }
}

#[inline(always)]
fn new_flow<T: CtMaps<In6>>(
    ctx: &TcContext,
    p: &Packet<In6>,
    key: &ServiceKey6,
    all: &ServiceValue,
    config: &DataplaneConfig,
) -> Result<i32, DropReason> {
    let ingress = unsafe { (*ctx.skb.skb).ifindex };
    let created =
        scope(key, all).and_then(|svc| create_flow::<T>(ctx, ingress, p, all, &svc, config));
    match created {
        Ok(()) => {}
        Err(DropReason::NoEndpoints) => return reject6::reject(ctx, p, DropReason::NoEndpoints),
        Err(reason) => return Err(reason),
    }
    // Translated and sent on as the flow's next packets are: by
    // `tc_edge6`, which finds the flow now (and counts the packet). This
    // program has no stack left for the rewrites: Linux 6.1 counts 32
    // bytes more for its `memset` calls, of 512.
    maps::tail_call(ctx, maps::TAIL_EDGE6);
    Err(DropReason::TailCall)
}

/// Creates a new flow from outside to frontend `all` (of scope `svc`,
/// `scope`'s) in table `T`, in TC (`tc_edge6_new`) or XDP
/// (`xdp_edge6_new`): `loadBalancerSourceRanges` admit its client, Maglev
/// picks its backend (or client affinity keeps one), and a backend on
/// another node gets it SNATed. `NoEndpoints` when there are none: the
/// caller rejects, or leaves it to TC to.
#[inline(always)]
pub fn create_flow<T: CtMaps<In6>>(
    ctx: &impl EbpfContext,
    ingress: u32,
    p: &Packet<In6>,
    all: &ServiceValue,
    svc: &ServiceValue,
    config: &DataplaneConfig,
) -> Result<(), DropReason> {
    if svc.flags & SVC_FLAG_SOURCE_RANGES != 0 && !maps::source_allowed6(svc.id, p.saddr) {
        // kube-proxy's KUBE-FW chain: outside loadBalancerSourceRanges, drop.
        return Err(DropReason::SourceRange);
    }
    if svc.count == 0 {
        return Err(DropReason::NoEndpoints);
    }
    let now = conntrack::now();
    // Every node picks the same backend for a flow: the source address
    // folded to a word, as IPv4's address is one.
    let [s0, s1, s2, s3] = p.saddr.0;
    let folded = (s0 ^ s1 ^ s2 ^ s3).to_ne_bytes();
    let hash = maglev::flow_hash(folded, p.sport, p.dport, p.proto);
    let chosen: sluice_abi::service::Backend6 =
        lb::with_affinity(svc, In6::client(p.saddr), now, lb::Pick::Maglev(hash))?;
    let choice = Binding::to(&chosen);
    // A backend behind an external interface is on another node: SNAT to
    // that interface's IPv6 address, so that its replies come back here.
    // Never under the Local policy, which keeps the client's address.
    let route = fib::route6(
        ctx,
        ingress,
        p,
        (p.saddr, p.sport),
        (choice.addr, choice.port),
        0,
    );
    let snat = match route.external() {
        Some(_) if all.flags & SVC_FLAG_EXT_LOCAL == 0 => {
            Some(maps::ext_if6(route.ifindex).ok_or(DropReason::NoSnatAddress)?)
        }
        _ => None,
    };
    let to = conntrack::create::<In6, T>(p, &choice, svc.id, now, snat, config)?;
    stats::event(Event::NewFlow);
    stats::connection(svc.id, to.backend_id);
    monitor::new_flow(p, ingress, svc.id, &to);
    Ok(())
}

/// An ICMPv6 error from outside (`tc_edge6_icmp`): a router's Packet Too
/// Big, hop limit exceeded or unreachable about a reply of a flow from
/// outside, on its way to the client; or a backend's error about a pod's
/// flow. Translated back, and passed to the stack, which routes it to
/// the pod.
#[inline(always)]
pub fn run_icmp(ctx: &TcContext) -> Result<i32, DropReason> {
    let Some((p, q, t)) = icmp::ipv6::about_a_flow(ctx)? else {
        return Ok(pass());
    };
    // About a SNATed flow, towards its client outside (a backend's error,
    // or a router's on the way to it): sent on, as the flow's packets are.
    let ingress = unsafe { (*ctx.skb.skb).ifindex };
    let route = fib::route6(
        ctx,
        ingress,
        &p,
        (t.outer_src, [0; 2]),
        (t.outer_dst, [0; 2]),
        0,
    );
    let onward = route.external().is_some();
    if onward && p.ttl <= 1 {
        // No error about an error.
        return Err(DropReason::TtlExceeded);
    }
    icmp::ipv6::rewrite(ctx, &p, &q, &t)?;
    stats::event(Event::IcmpError);
    if onward {
        nat::hop_down6(ctx, &p)?;
        return Ok(redirect(&route));
    }
    Ok(TC_ACT_OK)
}

#[inline(always)]
fn pass() -> i32 {
    stats::event(Event::Pass);
    TC_ACT_OK
}
