//! ICMP errors about translated flows.
//!
//! An ICMP error (destination unreachable, fragmentation needed, time
//! exceeded, parameter problem) quotes the start of the packet it is about
//! as that packet was where the error arose: translated. The error is
//! translated back the way the flow's own packets are, as netfilter does
//! (`nf_nat_icmp_reply_translation`, RFC 5508) and Cilium does for its
//! NAT: the quoted packet's addresses and ports, the error's own
//! destination, and every checksum on the way (the error's IPv4 header,
//! the quoted IPv4 header, the quoted TCP or UDP checksum when the quote
//! holds it, and the ICMP checksum over all of it).
//!
//! Two kinds, by what the quote is, found through the flow's conntrack
//! entries (nothing is created or refreshed):
//!
//! - **towards the client**: the quote is a client's packet after DNAT
//!   (and SNAT), client → backend; it is looked up as the backend's reply
//!   would be. A backend's port-unreachable, or a router's error on the
//!   way to the backend. The quote gets the frontend back as destination
//!   (and the client as source, for a SNATed flow, whose error is then
//!   sent to the client).
//! - **towards the backend**: the quote is a backend's reply after reverse
//!   NAT, frontend → client; it is looked up as the client's next packet
//!   would be. A router's fragmentation-needed on the way to the client
//!   (path MTU discovery), or the client's own port-unreachable. The quote
//!   gets the backend back as source (and the SNAT address as destination),
//!   and the error is sent to the backend.
//!
//! The error's own source is kept, so that a router on the way is seen as
//! itself (traceroute shows the right hop); only an error from the far
//! end of the flow itself (the backend, or a SNATed client) gets the
//! address the other end knows it by.

use sluice_abi::{
    conntrack::{CT_DIR_ORIGINAL, CT_DIR_REPLY, CT_F_SNAT, CtKeyOf},
    csum, proto,
    stats::DropReason,
};

use crate::{
    conntrack,
    family::Family,
    maps::CtMaps,
    parse::{self, Frame, Packet, ptr_at, ptr_at_mut},
};

pub mod ipv6;

/// The packet an ICMP error quotes: its IP header and its ports (`A`, the
/// address, as `Packet`'s).
pub struct Quoted<A = [u8; 4]> {
    /// Offset of the quoted IP header (the ICMP header's + 8).
    pub ip_off: usize,
    /// Offset of the quoted TCP or UDP header.
    pub l4_off: usize,
    pub saddr: A,
    pub daddr: A,
    pub sport: [u8; 2],
    pub dport: [u8; 2],
    pub proto: u8,
    /// Whether the quote reaches the TCP or UDP checksum (a quote holds at
    /// least the 8 bytes of the ports; TCP's checksum is at 16).
    pub has_check: bool,
}

impl<A: Copy> Quoted<A> {
    #[inline(always)]
    pub const fn is_tcp(&self) -> bool {
        self.proto == proto::TCP
    }

    /// Offset of the quoted L4 checksum.
    #[inline(always)]
    pub const fn check_off(&self) -> usize {
        if self.is_tcp() {
            self.l4_off + 16
        } else {
            self.l4_off + 6
        }
    }

    /// The conntrack key of a packet going the other way: what the flow's
    /// far end sends back.
    #[inline(always)]
    const fn back(&self, dir: u8) -> CtKeyOf<A> {
        CtKeyOf {
            saddr_be: self.daddr,
            daddr_be: self.saddr,
            sport_be: self.dport,
            dport_be: self.sport,
            proto: self.proto,
            dir,
            _pad: [0; 2],
        }
    }
}

/// The TCP or UDP packet (or first fragment) that the ICMP error `p`
/// quotes; `None` for anything else (another protocol, a later fragment,
/// a quote too short to hold the ports).
#[inline(always)]
pub fn quoted(ctx: &impl Frame, p: &Packet) -> Option<Quoted> {
    // Masked for the verifier: the outer header is at most 60 bytes.
    let ip_off = p.l4_off & 0x7f;
    let ip_off = ip_off + 8;
    let ip = parse::header::<[u8; 20]>(ctx, ip_off)?;
    let [
        vihl,
        _,
        _,
        _,
        _,
        _,
        f0,
        f1,
        _,
        l4proto,
        _,
        _,
        s0,
        s1,
        s2,
        s3,
        d0,
        d1,
        d2,
        d3,
    ] = unsafe { *ip };
    let ihl = usize::from(vihl & 0x0f) * 4;
    if vihl >> 4 != 4 || ihl < 20 {
        return None;
    }
    if l4proto != proto::TCP && l4proto != proto::UDP {
        return None;
    }
    // A later fragment has no ports.
    if u16::from_be_bytes([f0, f1]) & 0x1fff != 0 {
        return None;
    }
    let l4_off = ip_off + ihl;
    let l4 = parse::header::<[u8; 8]>(ctx, l4_off)?;
    let [sp0, sp1, dp0, dp1, ..] = unsafe { *l4 };
    let check_end = l4_off + if l4proto == proto::TCP { 18 } else { 8 };
    Some(Quoted {
        ip_off,
        l4_off,
        saddr: [s0, s1, s2, s3],
        daddr: [d0, d1, d2, d3],
        sport: [sp0, sp1],
        dport: [dp0, dp1],
        proto: l4proto,
        has_check: ctx.len() as usize >= check_end,
    })
}

/// What an error becomes: its own addresses, and the quoted packet's.
pub struct Translation<A = [u8; 4]> {
    pub outer_src: A,
    pub outer_dst: A,
    pub saddr: A,
    pub daddr: A,
    pub sport: [u8; 2],
    pub dport: [u8; 2],
}

/// The translation of error `p` quoting `q`, if `q` is a packet of a flow
/// in table `T` (see the module comment for the two kinds).
#[inline(always)]
pub fn translation<A: Family, T: CtMaps<A>>(
    p: &Packet<A>,
    q: &Quoted<A>,
) -> Option<Translation<A>> {
    if let Some(e) = conntrack::peek::<_, T>(&q.back(CT_DIR_REPLY)) {
        // Towards the client: the quote is client → backend.
        let snat = e.flags & CT_F_SNAT != 0;
        let (saddr, sport, outer_dst) = if snat {
            (e.snat_addr_be, e.snat_port_be, e.snat_addr_be)
        } else {
            (q.saddr, q.sport, p.daddr)
        };
        let from_backend = p.saddr == q.daddr;
        return Some(Translation {
            outer_src: if from_backend { e.nat_addr_be } else { p.saddr },
            outer_dst,
            saddr,
            daddr: e.nat_addr_be,
            sport,
            dport: e.nat_port_be,
        });
    }
    // Towards the backend: the quote is frontend → client.
    let e = conntrack::peek::<_, T>(&q.back(CT_DIR_ORIGINAL))?;
    let snat = e.flags & CT_F_SNAT != 0;
    let (daddr, dport) = if snat {
        (e.snat_addr_be, e.snat_port_be)
    } else {
        (q.daddr, q.dport)
    };
    let from_client = p.saddr == q.daddr;
    Some(Translation {
        outer_src: if from_client && snat {
            e.snat_addr_be
        } else {
            p.saddr
        },
        outer_dst: e.nat_addr_be,
        saddr: e.nat_addr_be,
        daddr,
        sport: e.nat_port_be,
        dport,
    })
}

#[inline(always)]
const fn word(a: [u8; 4]) -> u32 {
    u32::from_be_bytes(a)
}

#[inline(always)]
const fn half(a: [u8; 2]) -> u16 {
    u16::from_be_bytes(a)
}

/// Rewrites error `p` quoting `q` as `t` says, with every checksum updated
/// incrementally (RFC 1624): each header stays summing to what it did, so
/// a `CHECKSUM_COMPLETE` skb's sum stays right too.
#[inline(always)]
pub fn rewrite(
    ctx: &impl Frame,
    p: &Packet,
    q: &Quoted,
    t: &Translation,
) -> Result<(), DropReason> {
    let end = if q.has_check {
        q.check_off() + 2
    } else {
        q.l4_off + 8
    };
    #[expect(clippy::cast_possible_truncation, reason = "at most 160 bytes")]
    if ptr_at::<u8>(ctx, end - 1).is_none() && !ctx.pull(end as u32) {
        return Err(DropReason::Rewrite);
    }
    let outer = ptr_at_mut::<[u8; 20]>(ctx, parse::IP_OFF).ok_or(DropReason::Rewrite)?;
    let icmp = ptr_at_mut::<[u8; 4]>(ctx, p.l4_off).ok_or(DropReason::Rewrite)?;
    let inner = ptr_at_mut::<[u8; 20]>(ctx, q.ip_off).ok_or(DropReason::Rewrite)?;
    let ports = ptr_at_mut::<[u8; 4]>(ctx, q.l4_off).ok_or(DropReason::Rewrite)?;
    let (os, od, qs, qd) = (word(p.saddr), word(p.daddr), word(q.saddr), word(q.daddr));
    let (ts, td, ns, nd) = (
        word(t.outer_src),
        word(t.outer_dst),
        word(t.saddr),
        word(t.daddr),
    );
    let (qsp, qdp, nsp, ndp) = (half(q.sport), half(q.dport), half(t.sport), half(t.dport));
    unsafe {
        // The error's own IPv4 header.
        let [o0, o1, o2, o3, o4, o5, o6, o7, o8, o9, c0, c1, ..] = *outer;
        let check = csum::replace32(csum::replace32(half([c0, c1]), os, ts), od, td);
        let [c0, c1] = check.to_be_bytes();
        let [s0, s1, s2, s3] = t.outer_src;
        let [d0, d1, d2, d3] = t.outer_dst;
        *outer = [
            o0, o1, o2, o3, o4, o5, o6, o7, o8, o9, c0, c1, s0, s1, s2, s3, d0, d1, d2, d3,
        ];

        // The quoted IPv4 header.
        let [i0, i1, i2, i3, i4, i5, i6, i7, i8, i9, k0, k1, ..] = *inner;
        let old_ip_check = half([k0, k1]);
        let ip_check = csum::replace32(csum::replace32(old_ip_check, qs, ns), qd, nd);
        let [k0, k1] = ip_check.to_be_bytes();
        let [s0, s1, s2, s3] = t.saddr;
        let [d0, d1, d2, d3] = t.daddr;
        *inner = [
            i0, i1, i2, i3, i4, i5, i6, i7, i8, i9, k0, k1, s0, s1, s2, s3, d0, d1, d2, d3,
        ];

        // The ICMP checksum covers the whole quote.
        let [m0, m1, m2, m3] = *icmp;
        let mut sum = half([m2, m3]);
        sum = csum::replace32(csum::replace32(sum, qs, ns), qd, nd);
        sum = csum::replace16(sum, old_ip_check, ip_check);
        sum = csum::replace16(csum::replace16(sum, qsp, nsp), qdp, ndp);

        // The quoted ports, and their checksum if quoted (a UDP checksum
        // of zero is "none" and stays so).
        let [sp0, sp1] = t.sport;
        let [dp0, dp1] = t.dport;
        *ports = [sp0, sp1, dp0, dp1];
        if q.has_check {
            let l4_check = ptr_at_mut::<[u8; 2]>(ctx, q.check_off()).ok_or(DropReason::Rewrite)?;
            let old = half(*l4_check);
            if q.is_tcp() || old != 0 {
                let mut new = csum::replace32(csum::replace32(old, qs, ns), qd, nd);
                new = csum::replace16(csum::replace16(new, qsp, nsp), qdp, ndp);
                if !q.is_tcp() && new == 0 {
                    new = 0xffff;
                }
                sum = csum::replace16(sum, old, new);
                *l4_check = new.to_be_bytes();
            }
        }
        let [m2, m3] = sum.to_be_bytes();
        *icmp = [m0, m1, m2, m3];
    }
    Ok(())
}
