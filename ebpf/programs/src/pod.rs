//! Pod-facing interfaces (`tc_ingress`, on the host side): a pod's packets
//! to a Service frontend (a NodePort too, on the node's addresses) are
//! DNATed to a backend, and SNATed when a pod reaches itself (hairpin);
//! backends' replies are reverse-NATed, and ICMP errors about those flows
//! translated (`icmp.rs`); what kube-proxy rejects is rejected; only
//! sources routed through the interface are translated (strict reverse
//! path); everything else passes untouched.

use aya_ebpf::programs::TcContext;
use network_types::eth::EtherType;
use sluice_abi::{
    config::{CFG_SERVICE_CIDR, DataplaneConfig},
    conntrack::{CT_F_SNAT, CtEntry, CtEntryOf},
    service::{SVC_FLAG_SOURCE_RANGES, ServiceValue},
    stats::{DropReason, Event},
};

use crate::{
    TC_ACT_OK, TC_ACT_REDIRECT,
    conntrack::{self, Binding, Tracked},
    family::Family,
    fib, icmp, lb,
    maps::{self, CtMaps, EwOther, EwTcp, NsOther, NsTcp},
    monitor, nat,
    parse::{self, Packet, Parsed},
    reject, stats,
};

mod ipv6;

pub use ipv6::{run as run6, run_icmp as run6_icmp, run_new as run6_new};

/// A packet from a pod (the host side of its interface's ingress).
#[inline(always)]
pub fn run(ctx: &TcContext, config: &DataplaneConfig) -> Result<i32, DropReason> {
    maps::touch_names();
    if parse::ether_type(ctx) == Some(EtherType::Ipv6 as u16) {
        // `tc_ingress6`; it does not return. Without it (an agent that did
        // not set it), IPv6 passes untouched.
        maps::tail_call(ctx, maps::TAIL_POD6);
        return Ok(pass());
    }
    let p = match parse::parse(ctx)? {
        Parsed::Packet(p) => p,
        Parsed::NotOurs => return Ok(pass()),
        Parsed::IcmpError(p) => return icmp_from_pod(ctx, &p),
        // The node-local DNS address: the agent's own sockets, not a Service.
        Parsed::Fragment { daddr } if config.is_local_ip(daddr) => return Ok(pass()),
        Parsed::Fragment { daddr } => {
            // Only the first fragment has ports, so Service traffic cannot be
            // NATed fragment by fragment; anything else is not ours.
            if lb::is_cluster_ip(daddr) {
                return Err(DropReason::Fragment);
            }
            return Ok(pass());
        }
    };
    if config.is_local_ip(p.daddr) {
        return Ok(pass());
    }
    // Every frontend uses all endpoints from a pod, a NodePort too:
    // kube-proxy short-circuits traffic from inside the cluster.
    if let Some((_, svc)) = lb::frontend_or_node_port(p.daddr, p.dport, p.proto) {
        return to_frontend(ctx, &p, &svc, config);
    }
    // A backend's reply: of a flow from a pod, or from outside to a
    // backend on this node.
    let now = conntrack::now();
    let reply = if p.is_tcp() {
        conntrack::lookup_reply::<_, EwTcp>(&p, now)
            .or_else(|| conntrack::lookup_reply::<_, NsTcp>(&p, now))
    } else {
        conntrack::lookup_reply::<_, EwOther>(&p, now)
            .or_else(|| conntrack::lookup_reply::<_, NsOther>(&p, now))
    };
    if let Some(reply) = reply {
        return from_backend(ctx, &p, &reply);
    }
    // kube-proxy nftables mode: with a service CIDR known, traffic to an
    // unallocated address in it, or to a ClusterIP on a port no Service has,
    // is rejected rather than sent towards a default route.
    if config.flags & CFG_SERVICE_CIDR != 0 {
        if lb::is_cluster_ip(p.daddr) {
            return reject::reject(ctx, &p, DropReason::UnknownPort);
        }
        if config.in_service_cidr(p.daddr) {
            return reject::reject(ctx, &p, DropReason::UnallocatedIp);
        }
    }
    Ok(pass())
}

/// A packet from a backend of a flow translated on this node (`reply`,
/// its reply-direction entry), reverse-NATed.
#[inline(always)]
fn from_backend(ctx: &TcContext, p: &Packet, reply: &CtEntry) -> Result<i32, DropReason> {
    if !fib::source_routed_here(ctx, p) {
        return Err(DropReason::SpoofedSource);
    }
    if reply.flags & CT_F_SNAT != 0 {
        return hairpin_reply(ctx, p, reply);
    }
    // A NodePort's reply comes from a node address: sent on from here
    // (the stack would take it for a martian), along a route looked up
    // before the rewrite.
    let route = if maps::is_node_addr(reply.nat_addr_be) {
        fib::route(ctx, p, reply.nat_addr_be, p.daddr)
    } else {
        fib::Route::LOCAL
    };
    if route.too_big() {
        // Told to the backend, about the packet it sent.
        if !p.df {
            return Err(DropReason::FragNeeded);
        }
        let icmp = reject::Icmp::frag_needed(route.mtu, reply.nat_addr_be);
        return reject::answer(ctx, p, DropReason::FragNeeded, icmp);
    }
    // Sent on by BPF rather than forwarded by the stack: one hop.
    if matches!(route.hop, fib::Hop::Forward | fib::Hop::NoNeigh) {
        if p.ttl <= 1 {
            let icmp = reject::Icmp::time_exceeded(reply.nat_addr_be);
            return reject::answer(ctx, p, DropReason::TtlExceeded, icmp);
        }
        nat::ttl_down(ctx, p)?;
    }
    nat::rewrite_src(ctx, p, reply.nat_addr_be, reply.nat_port_be)?;
    stats::traffic(reply.service_id, reply.backend_id, p.len, false);
    stats::event(Event::Reply);
    Ok(fib::redirect(&route).unwrap_or(TC_ACT_OK))
}

/// An ICMP error from a pod: about a flow it is the backend of (its
/// port-unreachable, a router's error on the way to it), or one it is the
/// client of; translated back (`icmp.rs`). An error that leaves with a
/// node address as its source (about a NodePort flow) is sent on from
/// here, as the flow's replies are.
#[inline(always)]
fn icmp_from_pod(ctx: &TcContext, p: &Packet) -> Result<i32, DropReason> {
    let Some(q) = icmp::quoted(ctx, p) else {
        return Ok(pass());
    };
    let t = if q.is_tcp() {
        icmp::translation::<_, EwTcp>(p, &q).or_else(|| icmp::translation::<_, NsTcp>(p, &q))
    } else {
        icmp::translation::<_, EwOther>(p, &q).or_else(|| icmp::translation::<_, NsOther>(p, &q))
    };
    let Some(t) = t else {
        return Ok(pass());
    };
    if !fib::source_routed_here(ctx, p) {
        return Err(DropReason::SpoofedSource);
    }
    let route = if maps::is_node_addr(t.outer_src) {
        fib::route(ctx, p, t.outer_src, t.outer_dst)
    } else {
        fib::Route::LOCAL
    };
    icmp::rewrite(ctx, p, &q, &t)?;
    stats::event(Event::IcmpError);
    Ok(fib::redirect(&route).unwrap_or(TC_ACT_OK))
}

/// A pod's packet to a frontend of either family, in the east-west table of
/// its protocol.
#[inline(always)]
fn to_frontend<A: Family>(
    ctx: &TcContext,
    p: &Packet<A>,
    svc: &ServiceValue,
    config: &DataplaneConfig,
) -> Result<i32, DropReason>
where
    EwTcp: CtMaps<A>,
    EwOther: CtMaps<A>,
{
    if p.is_tcp() {
        to_service::<_, EwTcp>(ctx, p, svc, config)
    } else {
        to_service::<_, EwOther>(ctx, p, svc, config)
    }
}

/// A packet from a client to a Service frontend of either family, tracked
/// in table `T`. IPv6's new flows go on to `tc_ingress6_new` (`A::TAIL_NEW`),
/// whose stack has room for them.
#[inline(always)]
fn to_service<A: Family, T: CtMaps<A>>(
    ctx: &TcContext,
    p: &Packet<A>,
    svc: &ServiceValue,
    config: &DataplaneConfig,
) -> Result<i32, DropReason> {
    if !A::source_routed_here(ctx, p) {
        return Err(DropReason::SpoofedSource);
    }
    let now = conntrack::now();
    let tracked = conntrack::lookup_original::<_, T>(p, now, &config.lifetimes);
    if !p.l4 && !matches!(tracked, Tracked::Keep(_)) {
        // A later fragment never starts a flow: its first did, or failed.
        return Err(DropReason::Fragment);
    }
    match tracked {
        Tracked::Keep(bound) => {
            stats::event(Event::Established);
            translate(ctx, p, svc, &bound, false)
        }
        // kube-proxy drops ctstate INVALID.
        Tracked::Invalid => Err(DropReason::CtInvalid),
        Tracked::New => {
            if let Some(slot) = A::TAIL_NEW {
                maps::tail_call(ctx, slot);
                return Err(DropReason::TailCall);
            }
            new_flow::<A, T>(ctx, p, svc, config, now)
        }
    }
}

/// A new flow from a client to frontend `svc`, tracked in table `T`: its
/// backend chosen, its entries created, the packet translated.
#[inline(always)]
fn new_flow<A: Family, T: CtMaps<A>>(
    ctx: &TcContext,
    p: &Packet<A>,
    svc: &ServiceValue,
    config: &DataplaneConfig,
    now: u64,
) -> Result<i32, DropReason> {
    if svc.flags & SVC_FLAG_SOURCE_RANGES != 0 && !A::source_allowed(svc.id, p.saddr) {
        // kube-proxy's KUBE-FW chain: outside loadBalancerSourceRanges, drop.
        return Err(DropReason::SourceRange);
    }
    if svc.count == 0 {
        // kube-proxy: a Service with no endpoints REJECTs.
        return A::reject(ctx, p, DropReason::NoEndpoints);
    }
    let client = A::client(p.saddr);
    let chosen: A::Backend = lb::with_affinity(svc, client, now, lb::Pick::Random)?;
    let choice = Binding::to(&chosen);
    // To itself (hairpin): from the hairpin address, so that its answer
    // leaves it and comes back here to be translated.
    let snat = (choice.addr == p.saddr).then_some(A::HAIRPIN);
    let to = conntrack::create::<A, T>(p, &choice, svc.id, now, snat, config)?;
    stats::event(Event::NewFlow);
    monitor::new_flow(p, unsafe { (*ctx.skb.skb).ifindex }, svc.id, &to);
    translate(ctx, p, svc, &to, true)
}

/// DNAT of a client's packet to the backend its flow is bound to (`to`),
/// and the hairpin SNAT when the client is that backend.
#[inline(always)]
fn translate<A: Family>(
    ctx: &TcContext,
    p: &Packet<A>,
    svc: &ServiceValue,
    to: &Binding<A>,
    new_flow: bool,
) -> Result<i32, DropReason> {
    nat::rewrite_dst(ctx, p, to.addr, to.port)?;
    stats::traffic(svc.id, to.backend_id, p.len, new_flow);
    if let Some(snat) = to.snat {
        nat::rewrite_src(ctx, p, snat.addr, snat.port)?;
        return hairpin(ctx);
    }
    Ok(TC_ACT_OK)
}

/// A hairpin flow's answer, of either family: back into the pod that is
/// both ends.
#[inline(always)]
fn hairpin_reply<A: Family>(
    ctx: &TcContext,
    p: &Packet<A>,
    reply: &CtEntryOf<A>,
) -> Result<i32, DropReason> {
    nat::rewrite_src(ctx, p, reply.nat_addr_be, reply.nat_port_be)?;
    nat::rewrite_dst(ctx, p, reply.snat_addr_be, reply.snat_port_be)?;
    stats::traffic(reply.service_id, reply.backend_id, p.len, false);
    stats::event(Event::Reply);
    hairpin(ctx)
}

/// Sends a hairpin packet back into the pod it came from (the egress of
/// the interface it arrived on): the stack would route it there too, but
/// a strict reverse-path check would drop its link-local source first.
#[inline(always)]
fn hairpin(ctx: &TcContext) -> Result<i32, DropReason> {
    // Addressed to the pod's own MAC now, from the host's side.
    let eth: [u8; 12] = ctx.load(0).map_err(|_| DropReason::Rewrite)?;
    let [d0, d1, d2, d3, d4, d5, s0, s1, s2, s3, s4, s5] = eth;
    let swapped = [s0, s1, s2, s3, s4, s5, d0, d1, d2, d3, d4, d5];
    ctx.store(0, &swapped, 0).map_err(|_| DropReason::Rewrite)?;
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let action = unsafe { aya_ebpf::helpers::bpf_redirect(ifindex, 0) };
    if action != i64::from(TC_ACT_REDIRECT) {
        return Err(DropReason::Rewrite);
    }
    stats::event(Event::Hairpin);
    Ok(TC_ACT_REDIRECT)
}

#[inline(always)]
fn pass() -> i32 {
    stats::event(Event::Pass);
    TC_ACT_OK
}
