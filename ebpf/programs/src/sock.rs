//! Socket-level load balancing (cgroup `sock_addr` programs).
//!
//! A process in the cgroup that connects (TCP or UDP) or sends an
//! unconnected datagram to a Service frontend is pointed at a backend
//! before any packet exists: no per-packet NAT and no conntrack entry, and
//! the TC program, seeing a backend address, leaves the flow alone. Reads
//! of the peer (`getpeername`, `recvfrom`) show the frontend again.
//!
//! TCP picks a backend at random, as the TC path does (`ClientIP` affinity
//! keys clients by network namespace). UDP picks by the socket cookie, so
//! an unconnected socket keeps one backend while the frontend's slots
//! stay, and moves on its next send when its backend leaves (connected
//! sockets are the agent's to close).
//!
//! The `*6` programs serve IPv6 frontends from the IPv6 maps
//! (`SLUICE_SVC6`, `SLUICE_SLOT6`, `SLUICE_SOCK_RV6`), and IPv4 Services
//! through IPv4-mapped addresses (`::ffff:10.96.0.10`, what Java and
//! dual-stack servers use), which they translate as the `*4` programs
//! translate IPv4 addresses, leaving the mapping in place. The kernel calls
//! `connect6`, `recvmsg6` and `getpeername6` for mapped addresses; an
//! unconnected `sendmsg` to one goes through `sendmsg4` (`udpv6_sendmsg`
//! hands it to `udp_sendmsg` before its own hook).

use aya_ebpf::{
    helpers::{bpf_get_netns_cookie, bpf_get_socket_cookie, bpf_ktime_get_ns, bpf_set_retval},
    programs::SockAddrContext,
};
use sluice_abi::{
    addr::In6,
    affinity::CLIENT_NETNS,
    config::DataplaneConfig,
    proto,
    service::{Backend, Backend6, ServiceValue},
    sock::{SockRevKey, SockRevKey6, SockRevValue, SockRevValue6},
    stats::{DropReason, Event},
};

use crate::{lb, maps, stats};

/// What a `sock_addr` program returns to let the call go on.
const ALLOW: i32 = 1;
/// Refuses the call; the error is the one given to `bpf_set_retval`.
const REFUSE: i32 = 0;
const ECONNREFUSED: i32 = 111;

/// Where a program's IPv4 address is in its `bpf_sock_addr`.
#[derive(Clone, Copy)]
pub enum Family {
    /// `user_ip4`: the `*4` programs.
    V4,
    /// The last word of `user_ip6` when the address is IPv4-mapped
    /// (`::ffff:a.b.c.d`): the `*6` programs. Other IPv6 addresses are
    /// left alone.
    Mapped,
}

/// `::ffff:0:0/96`'s third word, in network order.
const MAPPED_PREFIX: u32 = 0xffff_u32.to_be();

/// The address a call names (or, for `recvmsg` and `getpeername`, the
/// peer the kernel is about to report), if it is IPv4.
#[inline(always)]
fn addr(ctx: &SockAddrContext, family: Family) -> Option<([u8; 4], [u8; 2], u8)> {
    let sa = ctx.sock_addr;
    // user_ip4 and user_ip6 hold the address in network order, user_port
    // the port in network order in its low 16 bits.
    let ip = match family {
        Family::V4 => unsafe { (*sa).user_ip4 },
        Family::Mapped => {
            let (w0, w1, w2, w3) = unsafe {
                (
                    (*sa).user_ip6[0],
                    (*sa).user_ip6[1],
                    (*sa).user_ip6[2],
                    (*sa).user_ip6[3],
                )
            };
            if w0 != 0 || w1 != 0 || w2 != MAPPED_PREFIX {
                return None;
            }
            w3
        }
    };
    let (port, protocol) = unsafe { ((*sa).user_port, (*sa).protocol) };
    #[expect(
        clippy::cast_possible_truncation,
        reason = "the port is the low 16 bits"
    )]
    let port = port as u16;
    #[expect(
        clippy::cast_possible_truncation,
        reason = "IP protocol numbers are below 256"
    )]
    let protocol = protocol as u8;
    Some((ip.to_ne_bytes(), port.to_ne_bytes(), protocol))
}

/// Points the call at `addr_be:port_be` (an IPv4-mapped address stays
/// mapped).
#[inline(always)]
fn set_addr(ctx: &SockAddrContext, family: Family, addr_be: [u8; 4], port_be: [u8; 2]) {
    let sa = ctx.sock_addr;
    unsafe {
        match family {
            Family::V4 => (*sa).user_ip4 = u32::from_ne_bytes(addr_be),
            Family::Mapped => (*sa).user_ip6[3] = u32::from_ne_bytes(addr_be),
        }
        (*sa).user_port = u32::from(u16::from_ne_bytes(port_be));
    }
}

#[inline(always)]
fn cookie(ctx: &SockAddrContext) -> u64 {
    unsafe { bpf_get_socket_cookie(ctx.sock_addr.cast()) }
}

/// `connect` and `sendmsg`: a frontend becomes a backend.
#[inline(always)]
pub fn translate(
    ctx: &SockAddrContext,
    family: Family,
    config: &DataplaneConfig,
    event: Event,
) -> i32 {
    let Some((daddr, dport, protocol)) = addr(ctx, family) else {
        return ALLOW;
    };
    // The agent's own DNS addresses, kube-dns's ClusterIP among them: the
    // node's processes reach the agent there, untranslated.
    if (protocol != proto::TCP && protocol != proto::UDP) || config.is_local_ip(daddr) {
        return ALLOW;
    }
    let Some((_, svc)) = lb::frontend_or_node_port(daddr, dport, protocol) else {
        // kube-proxy rejects a ClusterIP's unknown ports: refuse at once
        // rather than send towards a default route.
        if lb::is_cluster_ip(daddr) {
            return refuse(DropReason::UnknownPort);
        }
        return ALLOW;
    };
    to_backend::<Backend>(ctx, family, &svc, protocol, (daddr, dport), event)
}

/// `recvmsg` and `getpeername`: a backend this socket was pointed at is
/// shown as the frontend it asked for.
#[inline(always)]
pub fn reverse(ctx: &SockAddrContext, family: Family) -> i32 {
    let Some((addr_be, port_be, _)) = addr(ctx, family) else {
        return ALLOW;
    };
    let key = SockRevKey {
        cookie: cookie(ctx),
        addr_be,
        port_be,
        _pad: [0; 2],
    };
    if let Some(front) = maps::sock_rev(&key) {
        set_addr(ctx, family, front.addr_be, front.port_be);
        stats::event(Event::SockReverse);
    }
    ALLOW
}

/// A family's backend, as socket LB points a call at it.
trait Pointed: lb::FamilyBackend {
    /// A frontend's address.
    type Addr: Copy;
    /// Remembers, for the reverse path of socket `cookie` to this backend,
    /// the frontend it asked for.
    fn remember(&self, cookie: u64, front: (Self::Addr, [u8; 2]), service_id: u32) -> bool;
    /// Points the call at this backend (`family`: where an IPv4 address
    /// goes).
    fn point(&self, ctx: &SockAddrContext, family: Family);
}

impl Pointed for Backend {
    type Addr = [u8; 4];

    #[inline(always)]
    fn remember(&self, cookie: u64, (addr_be, port_be): ([u8; 4], [u8; 2]), id: u32) -> bool {
        let key = SockRevKey {
            cookie,
            addr_be: self.addr_be,
            port_be: self.port_be,
            _pad: [0; 2],
        };
        let value = SockRevValue {
            addr_be,
            port_be,
            _pad: [0; 2],
            service_id: id,
        };
        maps::sock_rev_insert(&key, &value).is_ok()
    }

    #[inline(always)]
    fn point(&self, ctx: &SockAddrContext, family: Family) {
        set_addr(ctx, family, self.addr_be, self.port_be);
    }
}

impl Pointed for Backend6 {
    type Addr = [u8; 16];

    #[inline(always)]
    fn remember(&self, cookie: u64, (addr_be, port_be): ([u8; 16], [u8; 2]), id: u32) -> bool {
        let key = SockRevKey6 {
            cookie,
            addr_be: self.addr_be,
            port_be: self.port_be,
            _pad: [0; 6],
        };
        let value = SockRevValue6 {
            addr_be,
            port_be,
            _pad: [0; 2],
            service_id: id,
        };
        maps::sock_rev6_insert(&key, &value).is_ok()
    }

    #[inline(always)]
    fn point(&self, ctx: &SockAddrContext, _: Family) {
        set_addr6(ctx, self.addr_be, self.port_be);
    }
}

/// Points a call to frontend `svc` (asked for as `front`) at one of its
/// backends, or refuses it.
#[inline(always)]
fn to_backend<B: Pointed>(
    ctx: &SockAddrContext,
    family: Family,
    svc: &ServiceValue,
    protocol: u8,
    front: (B::Addr, [u8; 2]),
    event: Event,
) -> i32 {
    if svc.count == 0 {
        return refuse(DropReason::NoEndpoints);
    }
    let (cookie, client, now, how) = choice(ctx, protocol);
    let chosen: Result<B, DropReason> = lb::with_affinity(svc, client, now, how);
    let b = match chosen {
        Ok(b) => b,
        Err(reason) => return refuse(reason),
    };
    // Without its reverse entry the application would see the backend's
    // address in replies: not worth a connection that works otherwise.
    if !b.remember(cookie, front, svc.id) {
        stats::event(Event::SockRevNotKept);
    }
    b.point(ctx, family);
    stats::connection(svc.id, b.id());
    stats::event(event);
    ALLOW
}

/// How a socket's new flow picks its backend: the socket's cookie, the
/// affinity client (its network namespace), the time, and the pick: at
/// random for TCP, by cookie for UDP.
#[inline(always)]
fn choice(ctx: &SockAddrContext, protocol: u8) -> (u64, u64, u64, lb::Pick) {
    let cookie = cookie(ctx);
    let now = unsafe { bpf_ktime_get_ns() };
    let client = CLIENT_NETNS | unsafe { bpf_get_netns_cookie(ctx.sock_addr.cast()) };
    let how = if protocol == proto::UDP {
        #[expect(
            clippy::cast_possible_truncation,
            reason = "folding the cookie to 32 bits"
        )]
        let hash = (cookie ^ (cookie >> 32)) as u32;
        lb::Pick::Hash(hash)
    } else {
        lb::Pick::Random
    };
    (cookie, client, now, how)
}

/// The IPv6 address, port and protocol a `*6` call names, if the address
/// is not IPv4-mapped (`Family::Mapped` handles those).
#[inline(always)]
fn addr6(ctx: &SockAddrContext) -> Option<([u8; 16], [u8; 2], u8)> {
    let sa = ctx.sock_addr;
    let (w0, w1, w2, w3) = unsafe {
        (
            (*sa).user_ip6[0],
            (*sa).user_ip6[1],
            (*sa).user_ip6[2],
            (*sa).user_ip6[3],
        )
    };
    if w0 == 0 && w1 == 0 && w2 == MAPPED_PREFIX {
        return None;
    }
    let (port, protocol) = unsafe { ((*sa).user_port, (*sa).protocol) };
    #[expect(
        clippy::cast_possible_truncation,
        reason = "the port is the low 16 bits"
    )]
    let port = port as u16;
    #[expect(
        clippy::cast_possible_truncation,
        reason = "IP protocol numbers are below 256"
    )]
    let protocol = protocol as u8;
    let [a, b, c, d] = [w0, w1, w2, w3].map(u32::to_ne_bytes);
    let addr = [
        a[0], a[1], a[2], a[3], b[0], b[1], b[2], b[3], c[0], c[1], c[2], c[3], d[0], d[1], d[2],
        d[3],
    ];
    Some((addr, port.to_ne_bytes(), protocol))
}

#[inline(always)]
fn set_addr6(ctx: &SockAddrContext, a: [u8; 16], port_be: [u8; 2]) {
    let sa = ctx.sock_addr;
    unsafe {
        (*sa).user_ip6[0] = u32::from_ne_bytes([a[0], a[1], a[2], a[3]]);
        (*sa).user_ip6[1] = u32::from_ne_bytes([a[4], a[5], a[6], a[7]]);
        (*sa).user_ip6[2] = u32::from_ne_bytes([a[8], a[9], a[10], a[11]]);
        (*sa).user_ip6[3] = u32::from_ne_bytes([a[12], a[13], a[14], a[15]]);
        (*sa).user_port = u32::from(u16::from_ne_bytes(port_be));
    }
}

/// `connect6` and `sendmsg6`: an IPv6 frontend becomes a backend; an
/// IPv4-mapped address is translated as IPv4.
#[inline(always)]
pub fn translate6(ctx: &SockAddrContext, config: &DataplaneConfig, event: Event) -> i32 {
    let Some((daddr, dport, protocol)) = addr6(ctx) else {
        return translate(ctx, Family::Mapped, config, event);
    };
    // The agent's IPv6 DNS address (kube-dns's IPv6 ClusterIP): untouched.
    if (protocol != proto::TCP && protocol != proto::UDP) || config.is_local_ip6(daddr) {
        return ALLOW;
    }
    // A frontend at the address, or the NodePort of a node address.
    let Some((_, svc)) = lb::frontend_or_node_port6(In6::from_octets(daddr), dport, protocol)
    else {
        // An allocated ClusterIP's unknown port is refused, as for IPv4.
        if lb::is_cluster_ip6(In6::from_octets(daddr)) {
            return refuse(DropReason::UnknownPort);
        }
        return ALLOW;
    };
    to_backend::<Backend6>(ctx, Family::V4, &svc, protocol, (daddr, dport), event)
}

/// `recvmsg6` and `getpeername6`: as `reverse`, for IPv6 backends and
/// IPv4-mapped ones.
#[inline(always)]
pub fn reverse6(ctx: &SockAddrContext) -> i32 {
    let Some((addr_be, port_be, _)) = addr6(ctx) else {
        return reverse(ctx, Family::Mapped);
    };
    let key = SockRevKey6 {
        cookie: cookie(ctx),
        addr_be,
        port_be,
        _pad: [0; 6],
    };
    if let Some(front) = maps::sock_rev6(&key) {
        set_addr6(ctx, front.addr_be, front.port_be);
        stats::event(Event::SockReverse);
    }
    ALLOW
}

#[inline(always)]
fn refuse(reason: DropReason) -> i32 {
    stats::dropped(reason);
    unsafe { bpf_set_retval(-ECONNREFUSED) };
    REFUSE
}
