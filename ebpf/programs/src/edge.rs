//! North-south: traffic from outside the cluster, at the node's external
//! (node-facing) interfaces, to a NodePort on one of the node's addresses,
//! an external IP or a load balancer address. The same logic runs in XDP
//! (`xdp_ingress`, before the stack sees the packet) and, where XDP cannot
//! be used, in TC at the interface's ingress (`tc_north_south`); the two
//! differ only in how a packet is rewritten and sent on (`Edge`).
//!
//! A new flow picks its backend through the frontend's Maglev table, so
//! that every node picks the same one. A backend on this node gets the
//! packet DNATed and passed to the stack, which routes it to the pod; its
//! replies are reverse-NATed by the TC program on the pod's interface, from
//! the same conntrack. A backend on another node (the route to it leaves
//! through an external interface) gets the packet DNATed and SNATed to this
//! node's address, and sent straight back out, as kube-proxy's
//! `externalTrafficPolicy: Cluster` does; its replies come back here and
//! are translated back to the client. `externalTrafficPolicy: Local` uses
//! this node's endpoints only and keeps the client's address.
//!
//! ICMP errors about translated flows are translated back (`icmp.rs`).
//! What is not Service traffic passes untouched: ARP, other ICMP,
//! fragments, ClusterIPs, and the node's own ports. IPv6 is served in TC
//! (`ipv6.rs`), but for its established flows' packets, which XDP
//! translates itself (`xdp/ipv6.rs`).

pub mod ipv6;
pub mod tc;

use aya_ebpf::EbpfContext;
use network_types::eth::EtherType;
use sluice_abi::{
    addr::In6,
    config::DataplaneConfig,
    conntrack::{CT_F_SNAT, CtEntry},
    maglev,
    service::{
        Backend, SVC_FLAG_EXT_LOCAL, SVC_FLAG_EXTERNAL, SVC_FLAG_SOURCE_RANGES, ServiceKey,
        ServiceValue,
    },
    stats::{DropReason, Event},
};

use crate::{
    conntrack::{self, Binding, Tracked},
    fib, icmp, lb,
    maps::{self, CtMaps, EwOther, EwTcp, NsOther, NsTcp},
    parse::{self, Frame, Packet, Parsed, ipv6::IP6_SADDR_OFF},
    reject::Icmp,
    stats,
};

/// IPv6 from outside: one whose source is one of the node's own addresses
/// is forged, and dropped as IPv4's is. XDP translates the packets of
/// tracked flows (`xdp/ipv6.rs`) and passes the rest to the stack, in front
/// of which `tc_external` hands them to `tc_edge6` (`ipv6.rs`);
/// `tc_north_south` hands every one on itself.
#[inline(always)]
fn ipv6<E: Edge>(ctx: &E, config: &DataplaneConfig) -> Result<E::Verdict, DropReason> {
    if let Some(saddr) = ctx.read::<[u32; 4]>(IP6_SADDR_OFF)
        && maps::is_node_addr6(In6(saddr))
    {
        return Err(DropReason::ForgedSource);
    }
    ctx.ipv6(config)
}

/// What differs between XDP and TC at an external interface.
pub trait Edge: EbpfContext + Frame {
    type Verdict;
    /// Into the stack, as it is now.
    const PASS: Self::Verdict;
    /// The interface the packet arrived on.
    fn ingress(&self) -> u32;
    /// The length a route's MTU is checked against (`fib::lookup`).
    fn route_len(&self, p: &Packet) -> u16;
    /// DNAT: the destination becomes `addr:port`.
    fn dnat(&self, p: &Packet, addr: [u8; 4], port: [u8; 2]) -> Result<(), DropReason>;
    /// SNAT, or the reverse NAT of a reply: the source becomes `addr:port`.
    fn snat(&self, p: &Packet, addr: [u8; 4], port: [u8; 2]) -> Result<(), DropReason>;
    /// One hop: the TTL goes down by one (it is above 1).
    fn ttl_down(&self, p: &Packet) -> Result<(), DropReason>;
    /// Counts `reason` and answers with the ICMP error `icmp`.
    fn answer(
        &self,
        p: &Packet,
        reason: DropReason,
        icmp: Icmp,
    ) -> Result<Self::Verdict, DropReason>;
    /// Sends a translated packet towards its next hop, or to the stack when
    /// the route is not a plain forward.
    fn forward(&self, route: &fib::Route) -> Self::Verdict;
    /// An IPv6 packet whose source is not the node's: TC hands it on to
    /// `tc_edge6`; XDP translates a tracked flow's and passes the rest,
    /// which `tc_external` hands on.
    fn ipv6(&self, config: &DataplaneConfig) -> Result<Self::Verdict, DropReason>;
}

#[inline(always)]
pub fn run<E: Edge>(ctx: &E, config: &DataplaneConfig) -> Result<E::Verdict, DropReason> {
    if parse::ether_type(ctx) == Some(EtherType::Ipv6 as u16) {
        return ipv6(ctx, config);
    }
    let (p, error) = match parse::parse(ctx)? {
        Parsed::Packet(p) => (p, false),
        Parsed::IcmpError(p) => (p, true),
        // Only the first fragment has ports: what the stack makes of the
        // rest is not Service traffic here.
        Parsed::NotOurs | Parsed::Fragment { .. } => return Ok(pass::<E>()),
    };
    // Nothing from outside comes from this node: forged, and sent on by a
    // BPF redirect it would skip the stack's martian and rp_filter checks.
    if maps::is_node_addr(p.saddr) {
        return Err(DropReason::ForgedSource);
    }
    if error {
        return icmp_error(ctx, &p);
    }
    // Whether it is to this node: a NodePort, or a SNATed flow's reply.
    let to_node = maps::is_node_addr(p.daddr);
    let frontend = match lb::frontend_of(p.daddr, p.dport, p.proto) {
        Some(f) => Some(f),
        None => lb::node_port(
            p.dport,
            p.proto,
            to_node && maps::serves_node_ports(p.daddr),
        ),
    };
    if let Some((key, svc)) = frontend
        && svc.flags & SVC_FLAG_EXTERNAL != 0
    {
        return if p.is_tcp() {
            to_service::<E, NsTcp>(ctx, &p, &key, &svc, config)
        } else {
            to_service::<E, NsOther>(ctx, &p, &key, &svc, config)
        };
    }
    // A backend's reply: to a node address, of a flow from outside SNATed
    // here; to a pod, of a flow a pod on this node sent to a backend on
    // another node.
    let now = conntrack::now();
    let reply = match (p.is_tcp(), to_node) {
        (true, true) => conntrack::lookup_reply::<_, NsTcp>(&p, now),
        (true, false) => conntrack::lookup_reply::<_, EwTcp>(&p, now),
        (false, true) => conntrack::lookup_reply::<_, NsOther>(&p, now),
        (false, false) => conntrack::lookup_reply::<_, EwOther>(&p, now),
    };
    if let Some(reply) = reply {
        return from_backend(ctx, &p, &reply);
    }
    Ok(pass::<E>())
}

/// A packet from outside to a frontend, tracked in table `T`.
#[inline(always)]
fn to_service<E: Edge, T: CtMaps>(
    ctx: &E,
    p: &Packet,
    key: &ServiceKey,
    all: &ServiceValue,
    config: &DataplaneConfig,
) -> Result<E::Verdict, DropReason> {
    // externalTrafficPolicy: Local: this node's endpoints, in the local
    // scope. kube-proxy drops when there are endpoints but none here, and
    // rejects when there are none at all.
    // This node is a hop on the way to any backend, here or not.
    if p.ttl <= 1 {
        return ttl_exceeded(ctx, p);
    }
    let local_policy = all.flags & SVC_FLAG_EXT_LOCAL != 0;
    let svc = if local_policy {
        match lb::local_scope(key) {
            Some(local) if local.count > 0 => local,
            _ if all.count == 0 => {
                return ctx.answer(p, DropReason::NoEndpoints, Icmp::port_unreachable(p));
            }
            _ => return Err(DropReason::NoLocalEndpoints),
        }
    } else {
        *all
    };
    let now = conntrack::now();
    let tracked = conntrack::lookup_original::<_, T>(p, now, &config.lifetimes);
    if !p.l4 && !matches!(tracked, Tracked::Keep(_)) {
        // A later fragment never starts a flow: its first did, or failed.
        return Err(DropReason::Fragment);
    }
    let (to, new_flow, route) = if let Tracked::Keep(bound) = tracked {
        stats::event(Event::Established);
        (bound, false, fib::Route::LOCAL)
    } else if let Tracked::Invalid = tracked {
        // kube-proxy drops ctstate INVALID.
        return Err(DropReason::CtInvalid);
    } else {
        if svc.flags & SVC_FLAG_SOURCE_RANGES != 0 && !maps::source_allowed(svc.id, p.saddr) {
            // kube-proxy's KUBE-FW chain: outside loadBalancerSourceRanges, drop.
            return Err(DropReason::SourceRange);
        }
        if svc.count == 0 {
            // kube-proxy: a Service with no endpoints REJECTs.
            return ctx.answer(p, DropReason::NoEndpoints, Icmp::port_unreachable(p));
        }
        let hash = maglev::flow_hash(p.saddr, p.sport, p.dport, p.proto);
        let client = u64::from(u32::from_be_bytes(p.saddr));
        let chosen: Backend = lb::with_affinity(&svc, client, now, lb::Pick::Maglev(hash))?;
        let route = fib::lookup(
            ctx,
            ctx.ingress(),
            p,
            p.saddr,
            chosen.addr_be,
            ctx.route_len(p),
        );
        // A backend behind an external interface is on another node: SNAT,
        // so that its replies come back through here. Never under the
        // Local policy, which keeps the client's address.
        let snat = match route.external() {
            Some(ext) if !local_policy => Some(ext.snat().ok_or(DropReason::NoSnatAddress)?),
            _ => None,
        };
        let to = conntrack::create::<_, T>(p, &Binding::to(&chosen), svc.id, now, snat, config)?;
        stats::event(Event::NewFlow);
        crate::monitor::new_flow(p, ctx.ingress(), svc.id, &to);
        (to, true, route)
    };
    stats::traffic(svc.id, to.backend_id, p.len, new_flow);
    let Some(snat) = to.snat else {
        // A backend here: the stack routes the packet to it.
        ctx.dnat(p, to.addr, to.port)?;
        return Ok(E::PASS);
    };
    // To a backend on another node: the route (a new flow's is known),
    // checked before the rewrite.
    let route = if new_flow {
        route
    } else {
        fib::lookup(ctx, ctx.ingress(), p, snat.addr, to.addr, ctx.route_len(p))
    };
    if route.too_big() {
        return too_big(ctx, p, route.mtu);
    }
    hop(ctx, p, &route)?;
    ctx.dnat(p, to.addr, to.port)?;
    ctx.snat(p, snat.addr, snat.port)?;
    Ok(ctx.forward(&route))
}

/// A packet from a backend, of a flow translated on this node.
#[inline(always)]
fn from_backend<E: Edge>(ctx: &E, p: &Packet, reply: &CtEntry) -> Result<E::Verdict, DropReason> {
    if p.ttl <= 1 {
        return ttl_exceeded(ctx, p);
    }
    stats::traffic(reply.service_id, reply.backend_id, p.len, false);
    stats::event(Event::Reply);
    if reply.flags & CT_F_SNAT == 0 {
        // To a client on this node (a pod that reached a backend on
        // another node through TC): the stack delivers it.
        ctx.snat(p, reply.nat_addr_be, reply.nat_port_be)?;
        return Ok(E::PASS);
    }
    let route = fib::lookup(
        ctx,
        ctx.ingress(),
        p,
        reply.nat_addr_be,
        reply.snat_addr_be,
        ctx.route_len(p),
    );
    if route.too_big() {
        return too_big(ctx, p, route.mtu);
    }
    hop(ctx, p, &route)?;
    ctx.snat(p, reply.nat_addr_be, reply.nat_port_be)?;
    ctx.dnat(p, reply.snat_addr_be, reply.snat_port_be)?;
    Ok(ctx.forward(&route))
}

/// One hop for a packet that BPF sends on along `route` itself, as the
/// stack's forwarding would count it (a packet the stack gets is counted
/// there).
#[inline(always)]
fn hop<E: Edge>(ctx: &E, p: &Packet, route: &fib::Route) -> Result<(), DropReason> {
    if matches!(route.hop, fib::Hop::Forward | fib::Hop::NoNeigh) {
        ctx.ttl_down(p)?;
    }
    Ok(())
}

/// A packet whose TTL runs out here: its sender gets ICMP time-exceeded
/// from this node's address on the interface it came in on (the hop a
/// traceroute should see), about the packet as it was sent.
#[inline(always)]
fn ttl_exceeded<E: Edge>(ctx: &E, p: &Packet) -> Result<E::Verdict, DropReason> {
    let here = maps::ext_if(ctx.ingress())
        .and_then(|e| e.snat())
        .unwrap_or(p.daddr);
    ctx.answer(p, DropReason::TtlExceeded, Icmp::time_exceeded(here))
}

/// An ICMP error from outside about a flow translated here (`icmp.rs`):
/// a router's fragmentation-needed or time-exceeded about a reply on its
/// way to the client, or about a SNATed packet on its way to a backend on
/// another node; that backend's own port-unreachable. Translated back, and
/// sent on to a host outside as the flow's packets are, or to the stack
/// for a pod here.
#[inline(always)]
fn icmp_error<E: Edge>(ctx: &E, p: &Packet) -> Result<E::Verdict, DropReason> {
    let Some(q) = icmp::quoted(ctx, p) else {
        return Ok(pass::<E>());
    };
    let t = if q.is_tcp() {
        icmp::translation::<_, NsTcp>(p, &q).or_else(|| icmp::translation::<_, EwTcp>(p, &q))
    } else {
        icmp::translation::<_, NsOther>(p, &q).or_else(|| icmp::translation::<_, EwOther>(p, &q))
    };
    let Some(t) = t else {
        return Ok(pass::<E>());
    };
    let route = fib::lookup(
        ctx,
        ctx.ingress(),
        p,
        t.outer_src,
        t.outer_dst,
        ctx.route_len(p),
    );
    let forward = route.external().is_some();
    if forward && p.ttl <= 1 {
        // No error about an error (RFC 1812).
        return Err(DropReason::TtlExceeded);
    }
    icmp::rewrite(ctx, p, &q, &t)?;
    stats::event(Event::IcmpError);
    if forward {
        hop(ctx, p, &route)?;
        return Ok(ctx.forward(&route));
    }
    Ok(E::PASS)
}

/// A packet too big for its route (BPF cannot fragment): with DF set, its
/// sender is told the route's MTU (ICMP fragmentation-needed, from the
/// address it sent to); else it is dropped. Counted either way.
#[inline(always)]
fn too_big<E: Edge>(ctx: &E, p: &Packet, mtu: u16) -> Result<E::Verdict, DropReason> {
    if !p.df {
        return Err(DropReason::FragNeeded);
    }
    ctx.answer(p, DropReason::FragNeeded, Icmp::frag_needed(mtu, p.daddr))
}

/// Passed untouched, and counted so.
#[inline(always)]
pub fn pass<E: Edge>() -> E::Verdict {
    stats::event(Event::Pass);
    E::PASS
}
