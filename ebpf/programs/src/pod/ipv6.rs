//! IPv6 from pods: the same rules as IPv4's (`pod.rs`), on IPv6's maps.
//! A pod's packets to an IPv6 frontend are DNATed to a backend, in
//! conntrack tables of their own; a backend's replies are reverse-NATed; a
//! Service without endpoints rejects with ICMPv6 port-unreachable; only
//! sources routed through the interface are translated. Neighbour
//! discovery and every other ICMPv6 message pass untouched.

use aya_ebpf::programs::TcContext;
use sluice_abi::{
    addr::In6,
    config::{CFG_SERVICE_CIDR6, DataplaneConfig},
    conntrack::{CT_F_SNAT, CtEntry6},
    stats::{DropReason, Event},
};

use super::{hairpin_reply, new_flow, pass, to_frontend};
use crate::{
    TC_ACT_OK, conntrack, fib, icmp, lb,
    maps::{self, EwOther, EwTcp, NsOther, NsTcp},
    nat,
    parse::{Packet, Parsed, ipv6},
    reject, stats,
};

/// An IPv6 packet from a pod.
#[inline(always)]
pub fn run(ctx: &TcContext, config: &DataplaneConfig) -> Result<i32, DropReason> {
    let p = match ipv6::parse(ctx)? {
        Parsed::Packet(p) => p,
        // Neighbour discovery and the rest of ICMPv6.
        Parsed::NotOurs => return Ok(pass()),
        // An error, perhaps about a translated flow: `tc_ingress6_icmp`.
        Parsed::IcmpError(_) => {
            maps::tail_call(ctx, maps::TAIL_POD6_ICMP);
            return Err(DropReason::TailCall);
        }
        Parsed::Fragment { daddr } if config.is_local_ip6(daddr.octets()) => return Ok(pass()),
        Parsed::Fragment { daddr } => {
            // A later fragment whose first was not seen: it cannot be
            // NATed without its ports.
            if lb::is_cluster_ip6(daddr) {
                return Err(DropReason::Fragment);
            }
            return Ok(pass());
        }
    };
    // kube-dns's IPv6 address, served by the agent: not a Service here.
    if config.is_local_ip6(p.daddr.octets()) {
        return Ok(pass());
    }
    if let Some((_, svc)) = lb::frontend_or_node_port6(p.daddr, p.dport, p.proto) {
        return to_frontend(ctx, &p, &svc, config);
    }
    let now = conntrack::now();
    // A backend's reply: of a flow from a pod, or from outside to a
    // backend on this node (`edge/ipv6.rs`), which the stack sends out.
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
    // With an IPv6 service CIDR (kube-proxy's nftables mode), an allocated
    // ClusterIP's unknown port and an unallocated address in the range are
    // rejected, as for IPv4.
    if config.flags & CFG_SERVICE_CIDR6 != 0 {
        if lb::is_cluster_ip6(p.daddr) {
            return reject::ipv6::reject(ctx, &p, DropReason::UnknownPort);
        }
        if config.in_service_cidr6(p.daddr) {
            return reject::ipv6::reject(ctx, &p, DropReason::UnallocatedIp);
        }
    }
    Ok(pass())
}

/// A new IPv6 flow from a pod (`tc_ingress6_new`): `run` found the packet
/// to be to a frontend, from a source routed here, and no flow of its; the
/// frontend is looked up again (it may have changed in between).
#[inline(always)]
pub fn run_new(ctx: &TcContext, config: &DataplaneConfig) -> Result<i32, DropReason> {
    let Parsed::Packet(p) = ipv6::parse(ctx)? else {
        return Ok(pass());
    };
    let Some((_, svc)) = lb::frontend_or_node_port6(p.daddr, p.dport, p.proto) else {
        return Ok(pass());
    };
    let now = conntrack::now();
    if p.is_tcp() {
        new_flow::<_, EwTcp>(ctx, &p, &svc, config, now)
    } else {
        new_flow::<_, EwOther>(ctx, &p, &svc, config, now)
    }
}

/// An ICMPv6 error from a pod (`tc_ingress6_icmp`): about a flow it is the
/// backend of (its port-unreachable), or one it is the client of (its
/// Packet Too Big, port-unreachable); translated back as `icmp.rs` says.
/// Anything else passes.
#[inline(always)]
pub fn run_icmp(ctx: &TcContext) -> Result<i32, DropReason> {
    let Some((p, q, t)) = icmp::ipv6::about_a_flow(ctx)? else {
        return Ok(pass());
    };
    if !fib::source_routed_here6(ctx, &p) {
        return Err(DropReason::SpoofedSource);
    }
    icmp::ipv6::rewrite(ctx, &p, &q, &t)?;
    stats::event(Event::IcmpError);
    Ok(TC_ACT_OK)
}

/// A backend's reply to a pod's flow, reverse-NATed; the stack delivers
/// it.
#[inline(always)]
fn from_backend(ctx: &TcContext, p: &Packet<In6>, reply: &CtEntry6) -> Result<i32, DropReason> {
    if !fib::source_routed_here6(ctx, p) {
        return Err(DropReason::SpoofedSource);
    }
    if reply.flags & CT_F_SNAT != 0 {
        return hairpin_reply(ctx, p, reply);
    }
    nat::rewrite_src(ctx, p, reply.nat_addr_be, reply.nat_port_be)?;
    stats::traffic(reply.service_id, reply.backend_id, p.len, false);
    stats::event(Event::Reply);
    Ok(TC_ACT_OK)
}
