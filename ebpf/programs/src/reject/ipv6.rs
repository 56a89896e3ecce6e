//! REJECT for IPv6: the packet turned into an ICMPv6 port-unreachable
//! (RFC 4443 type 1, code 4), sent back out of the interface it came in
//! on, as ip6tables' `REJECT --reject-with icmp6-port-unreachable` that
//! kube-proxy's IPv6 rules use; and the other errors a hop sends (hop
//! limit exceeded, Packet Too Big), built the same way.
//!
//! The error is built in a per-CPU scratch (`Icmp6Frame`), header and
//! all: IPv6's addresses on the stack cost more than the program has.

use aya_ebpf::{
    helpers::{bpf_skb_change_tail, bpf_skb_load_bytes, bpf_skb_store_bytes},
    programs::TcContext,
};
use network_types::{eth::EthHdr, ip::Ipv6Hdr};
use sluice_abi::{addr::In6, csum, stats::DropReason};

use super::{IcmpError, partial_sum, send_back};
use crate::{
    parse::{
        IP_OFF, Packet,
        ipv6::{ICMP6_DEST_UNREACH, ICMP6_PACKET_TOO_BIG, ICMP6_TIME_EXCEEDED, ICMPV6},
    },
    stats,
};

/// ICMPv6 destination unreachable's code for "port unreachable".
const ICMP6_PORT_UNREACH: u8 = 4;
/// The hop limit of the errors sent (Linux's default).
const HOP_LIMIT: u8 = 64;

/// An ICMPv6 error as it goes on the wire after the Ethernet header: the
/// IPv6 header (version; then length, next header and hop limit; the
/// addresses), then the message.
#[repr(C)]
pub struct Icmp6Frame {
    pub version: [u8; 4],
    pub len_next_hop: [u8; 4],
    pub src: In6,
    pub dst: In6,
    pub msg: IcmpError,
}

/// An ICMPv6 error to answer a packet with: its type, code, the header's
/// last four bytes, and its source.
#[derive(Clone, Copy)]
pub struct Icmp6 {
    pub kind: u8,
    pub code: u8,
    pub rest: [u8; 4],
    pub from: In6,
}

impl Icmp6 {
    /// kube-proxy's REJECT (`icmp6-port-unreachable`), from the address
    /// the client tried.
    #[inline(always)]
    pub const fn port_unreachable(p: &Packet<In6>) -> Self {
        Self {
            kind: ICMP6_DEST_UNREACH,
            code: ICMP6_PORT_UNREACH,
            rest: [0; 4],
            from: p.daddr,
        }
    }

    /// "Hop limit exceeded in transit" (type 3, code 0), from `from`.
    #[inline(always)]
    pub const fn time_exceeded(from: In6) -> Self {
        Self {
            kind: ICMP6_TIME_EXCEEDED,
            code: 0,
            rest: [0; 4],
            from,
        }
    }

    /// Packet Too Big (type 2) with the route's MTU, from `from`.
    #[inline(always)]
    pub const fn too_big(mtu: u16, from: In6) -> Self {
        let [hi, lo] = mtu.to_be_bytes();
        Self {
            kind: ICMP6_PACKET_TOO_BIG,
            code: 0,
            rest: [0, 0, hi, lo],
            from,
        }
    }
}

/// Counts `reason`, then answers `p` with ICMPv6 port-unreachable from the
/// address it was sent to.
#[inline(always)]
pub fn reject(ctx: &TcContext, p: &Packet<In6>, reason: DropReason) -> Result<i32, DropReason> {
    answer(ctx, p, reason, &Icmp6::port_unreachable(p))
}

/// Counts `reason`, then answers `p` with the ICMPv6 error `icmp`, sent
/// back out of the interface it came in on.
#[inline(always)]
pub fn answer(
    ctx: &TcContext,
    p: &Packet<In6>,
    reason: DropReason,
    icmp: &Icmp6,
) -> Result<i32, DropReason> {
    stats::dropped(reason);
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let about = crate::monitor::About::refused(sluice_abi::monitor::KIND_REJECT, reason, ifindex);
    crate::monitor::packet(p, &about);
    build(ctx, p, icmp).ok_or(DropReason::RejectFailed)?;
    send_back(ctx)
}

#[inline(always)]
#[expect(clippy::cast_possible_truncation, reason = "at most 130 bytes")]
fn build(ctx: &TcContext, p: &Packet<In6>, icmp: &Icmp6) -> Option<()> {
    let eth: EthHdr = ctx.load(0).ok()?;
    // SAFETY: this CPU's scratch entry, used by this program run only.
    let f = unsafe { &mut *crate::maps::icmp6_scratch()? };
    // The IPv6 header and the ports, what the client's stack needs to find
    // its socket; behind extension headers, the first 8 bytes of them and
    // the 8 after (the whole of one, then the ports). Two constants: a
    // length clamped at run time reached Linux 6.1's verifier spilled
    // before its bound was known ("invalid access to map value").
    let quoted: usize = if p.ihl_bytes == 40 { 48 } else { 56 };
    let skb = ctx.skb.skb;
    let inner = core::ptr::from_mut(&mut f.msg.inner).cast();
    if unsafe { bpf_skb_load_bytes(skb.cast(), IP_OFF as u32, inner, quoted as u32) } != 0 {
        return None;
    }
    let msg_len = 8 + quoted;
    let [l0, l1] = (msg_len as u16).to_be_bytes();
    f.version = [0x60, 0, 0, 0];
    f.len_next_hop = [l0, l1, ICMPV6, HOP_LIMIT];
    f.src = icmp.from;
    f.dst = p.saddr;
    f.msg.kind = icmp.kind;
    f.msg.code = icmp.code;
    f.msg.check = [0; 2];
    f.msg.unused = icmp.rest;
    // The checksum's pseudo-header (RFC 8200 §8.1): the addresses, as they
    // are in the header, then the length and next header as 32-bit words.
    let mut tail = [
        u32::from_ne_bytes((msg_len as u32).to_be_bytes()),
        u32::from_ne_bytes([0, 0, 0, ICMPV6]),
    ];
    let addrs = core::ptr::from_mut(&mut f.src).cast::<u32>();
    let sum = partial_sum(addrs, 32, 0);
    let sum = partial_sum(tail.as_mut_ptr(), size_of_val(&tail), sum);
    let sum = partial_sum(core::ptr::from_mut(&mut f.msg).cast(), msg_len, sum);
    f.msg.check = csum::finish(sum).to_ne_bytes();

    let reply_eth = EthHdr {
        dst_addr: eth.src_addr,
        src_addr: eth.dst_addr,
        ether_type: eth.ether_type,
    };
    let frame_len = (EthHdr::LEN + Ipv6Hdr::LEN + msg_len) as u32;
    if unsafe { bpf_skb_change_tail(skb, frame_len, 0) } != 0 {
        return None;
    }
    ctx.store(0, &reply_eth, 0).ok()?;
    let at = IP_OFF as u32;
    let frame = core::ptr::from_ref(&*f).cast_mut().cast();
    let len = (Ipv6Hdr::LEN + msg_len) as u32;
    if unsafe { bpf_skb_store_bytes(skb.cast(), at, frame, len, 0) } != 0 {
        return None;
    }
    Some(())
}
