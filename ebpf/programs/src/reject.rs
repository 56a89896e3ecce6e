//! REJECT: turn the packet into an ICMP port-unreachable and send it back
//! out of the interface it came in on.
//!
//! kube-proxy REJECTs traffic to a Service without endpoints with
//! icmp-port-unreachable, so a TCP connect fails at once with ECONNREFUSED
//! (tcp_v4_err in SYN_SENT) and a connected UDP socket sees ECONNREFUSED,
//! instead of timing out.

use aya_ebpf::{
    helpers::{
        bpf_csum_diff, bpf_redirect, bpf_skb_change_tail, bpf_skb_load_bytes, bpf_skb_store_bytes,
    },
    programs::TcContext,
};
use network_types::{eth::EthHdr, ip::Ipv4Hdr};
use sluice_abi::{
    csum, proto,
    stats::{DropReason, Event},
};

pub mod ipv6;

use crate::{
    TC_ACT_REDIRECT,
    parse::{ICMP_DEST_UNREACH, ICMP_TIME_EXCEEDED, IP_OFF, Packet},
    stats,
};

/// Original IPv4 header (with options) plus 8 bytes of L4, as RFC 792 asks.
pub const INNER_MAX: usize = 60 + 8;
pub const ICMP_PORT_UNREACH: u8 = 3;
pub const ICMP_FRAG_NEEDED: u8 = 4;

/// The ICMP error to answer a packet with.
#[derive(Clone, Copy)]
pub struct Icmp {
    pub kind: u8,
    pub code: u8,
    /// The header's last four bytes (the next-hop MTU, for frag-needed).
    pub rest: [u8; 4],
    /// The error's source address.
    pub from: [u8; 4],
}

impl Icmp {
    /// kube-proxy's REJECT, from the address the client tried.
    #[inline(always)]
    pub const fn port_unreachable(p: &Packet) -> Self {
        Self {
            kind: ICMP_DEST_UNREACH,
            code: ICMP_PORT_UNREACH,
            rest: [0; 4],
            from: p.daddr,
        }
    }

    /// "Fragmentation needed" with the route's MTU (RFC 1191), from `from`.
    #[inline(always)]
    pub const fn frag_needed(mtu: u16, from: [u8; 4]) -> Self {
        let [hi, lo] = mtu.to_be_bytes();
        Self {
            kind: ICMP_DEST_UNREACH,
            code: ICMP_FRAG_NEEDED,
            rest: [0, 0, hi, lo],
            from,
        }
    }

    /// "Time to live exceeded in transit", from `from` (the hop that
    /// would have forwarded it).
    #[inline(always)]
    pub const fn time_exceeded(from: [u8; 4]) -> Self {
        Self {
            kind: ICMP_TIME_EXCEEDED,
            code: 0,
            rest: [0; 4],
            from,
        }
    }
}

/// An ICMP error message: header, then the start of the offending packet
/// (zero-padded: zeros add nothing to the checksum).
#[repr(C)]
pub struct IcmpError {
    pub kind: u8,
    pub code: u8,
    pub check: [u8; 2],
    pub unused: [u8; 4],
    pub inner: [u8; INNER_MAX],
}

/// Counts `reason`, then answers with ICMP port-unreachable.
#[inline(always)]
pub fn reject(ctx: &TcContext, p: &Packet, reason: DropReason) -> Result<i32, DropReason> {
    answer(ctx, p, reason, Icmp::port_unreachable(p))
}

/// Counts `reason`, then answers with the ICMP error `icmp`, sent back out
/// of the interface the packet came in on.
#[inline(always)]
pub fn answer(
    ctx: &TcContext,
    p: &Packet,
    reason: DropReason,
    icmp: Icmp,
) -> Result<i32, DropReason> {
    stats::dropped(reason);
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let about = crate::monitor::About::refused(sluice_abi::monitor::KIND_REJECT, reason, ifindex);
    crate::monitor::packet(p, &about);
    build(ctx, p, &icmp).ok_or(DropReason::RejectFailed)?;
    send_back(ctx)
}

/// Sends the error a packet became back out of the interface it came in
/// on (either family).
#[inline(always)]
pub fn send_back(ctx: &TcContext) -> Result<i32, DropReason> {
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let action = unsafe { bpf_redirect(ifindex, 0) };
    if action != i64::from(TC_ACT_REDIRECT) {
        return Err(DropReason::RejectFailed);
    }
    stats::event(Event::RejectSent);
    Ok(TC_ACT_REDIRECT)
}

#[inline(always)]
fn build(ctx: &TcContext, p: &Packet, icmp: &Icmp) -> Option<()> {
    let eth: EthHdr = ctx.load(0).ok()?;
    let (msg, inner_len) = message(p, icmp)?;
    let skb = ctx.skb.skb;
    let inner = core::ptr::from_mut(&mut msg.inner).cast();
    if unsafe { bpf_skb_load_bytes(skb.cast(), IP_OFF as u32, inner, inner_len as u32) } != 0 {
        return None;
    }
    let msg_len = 8 + inner_len;
    msg.check = checksum(core::ptr::from_mut(&mut *msg).cast(), msg_len).to_ne_bytes();

    let mut ip = ip_header(p, msg_len, icmp.from);
    let tot_len = u16::from_be_bytes(ip.tot_len);
    ip.check = checksum(core::ptr::from_mut(&mut ip).cast(), Ipv4Hdr::LEN).to_ne_bytes();
    let reply_eth = EthHdr {
        dst_addr: eth.src_addr,
        src_addr: eth.dst_addr,
        ether_type: eth.ether_type,
    };

    let frame_len = (EthHdr::LEN + usize::from(tot_len)) as u32;
    if unsafe { bpf_skb_change_tail(skb, frame_len, 0) } != 0 {
        return None;
    }
    ctx.store(0, &reply_eth, 0).ok()?;
    ctx.store(IP_OFF, &ip, 0).ok()?;
    let at = (IP_OFF + Ipv4Hdr::LEN) as u32;
    let msg_ptr = core::ptr::from_ref(&*msg).cast_mut().cast();
    if unsafe { bpf_skb_store_bytes(skb.cast(), at, msg_ptr, msg_len as u32, 0) } != 0 {
        return None;
    }
    Some(())
}

/// The ICMP error `icmp` for `p`, its quote still empty, in this CPU's
/// scratch (not the stack, which a program has 512 bytes of), and how many
/// bytes of `p` from its IPv4 header on go into it: a multiple of 4 in
/// 28..=68 (the checksum helpers want whole words).
#[inline(always)]
pub fn message(p: &Packet, icmp: &Icmp) -> Option<(&'static mut IcmpError, usize)> {
    // The volatile read hides the known range from LLVM, so the mask stays
    // in the code and the verifier sees the bound it needs.
    let ihl = unsafe { core::ptr::read_volatile(&raw const p.ihl_bytes) };
    // SAFETY: this CPU's scratch entry, used by this program run only.
    let msg = unsafe { &mut *crate::maps::icmp_scratch()? };
    msg.kind = icmp.kind;
    msg.code = icmp.code;
    msg.check = [0; 2];
    msg.unused = icmp.rest;
    // Zeroed a word at a time: `[0; INNER_MAX]` becomes a call to memset,
    // a BPF function of its own, whose frame Linux 6.1's verifier counts
    // as 32 bytes of the 512.
    let words = core::ptr::from_mut(&mut msg.inner).cast::<u32>();
    for i in 0..INNER_MAX / size_of::<u32>() {
        // SAFETY: within `inner` (68 bytes at offset 8 of the map value).
        unsafe { words.add(i).write_volatile(0) };
    }
    Some((msg, (ihl & 0x3c) + 8))
}

/// The IPv4 header of the error for `p`, from `from`, around `msg_len`
/// bytes of ICMP, its checksum not yet computed.
#[inline(always)]
#[expect(clippy::cast_possible_truncation, reason = "at most 96 bytes")]
pub fn ip_header(p: &Packet, msg_len: usize, from: [u8; 4]) -> Ipv4Hdr {
    Ipv4Hdr {
        vihl: 0x45,
        // Linux sends ICMP errors with precedence "internetwork control".
        tos: 0xc0,
        tot_len: ((Ipv4Hdr::LEN + msg_len) as u16).to_be_bytes(),
        id: [0; 2],
        frags: [0; 2],
        ttl: 64,
        proto: proto::ICMP,
        check: [0; 2],
        src_addr: from,
        dst_addr: p.saddr,
    }
}

/// The Internet checksum of `len` bytes (a multiple of 4) at `data`.
#[inline(always)]
fn checksum(data: *mut u32, len: usize) -> u16 {
    csum::finish(partial_sum(data, len, 0))
}

/// The 32-bit partial sum of `len` bytes (a multiple of 4) at `data`,
/// added to `seed`: the helper sums native-order words, so that folding
/// it gives the field value in memory order.
#[inline(always)]
pub fn partial_sum(data: *mut u32, len: usize, seed: u32) -> u32 {
    let sum = unsafe { bpf_csum_diff(core::ptr::null_mut(), 0, data, len as u32, seed) };
    sum as u32
}
