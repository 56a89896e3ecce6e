//! ICMP errors in XDP: the packet becomes an ICMP error (port-unreachable
//! from the address the client tried, as kube-proxy REJECTs external
//! traffic to a Service without endpoints; or fragmentation-needed), sent
//! back out of the interface it came in on.

use aya_ebpf::{
    EbpfContext as _,
    helpers::{bpf_xdp_adjust_head, bpf_xdp_adjust_tail, bpf_xdp_load_bytes, bpf_xdp_store_bytes},
    programs::XdpContext,
};
use network_types::{eth::EthHdr, ip::Ipv4Hdr};
use sluice_abi::{
    csum,
    stats::{DropReason, Event},
};

use super::XDP_TX;
use crate::{
    parse::{IP_OFF, Packet, ptr_at},
    reject::{self, INNER_MAX, Icmp},
    stats,
};

/// Counts `reason`, then answers with the ICMP error `icmp`, sent back out
/// of the interface the packet came in on.
#[inline(always)]
pub fn answer(
    ctx: &XdpContext,
    p: &Packet,
    reason: DropReason,
    icmp: Icmp,
) -> Result<u32, DropReason> {
    stats::dropped(reason);
    #[expect(clippy::cast_possible_truncation, reason = "an ifindex is a u32")]
    let ifindex = ctx.ingress_ifindex() as u32;
    let about = crate::monitor::About::refused(sluice_abi::monitor::KIND_REJECT, reason, ifindex);
    crate::monitor::packet(p, &about);
    build(ctx, p, &icmp).ok_or(DropReason::RejectFailed)?;
    stats::event(Event::RejectSent);
    Ok(XDP_TX)
}

#[inline(always)]
fn build(ctx: &XdpContext, p: &Packet, icmp: &Icmp) -> Option<()> {
    let eth = ptr_at::<EthHdr>(ctx, 0)?;
    let (peer, own) = unsafe { ((*eth).src_addr, (*eth).dst_addr) };
    let (msg, inner_len) = reject::message(p, icmp)?;
    let xdp = ctx.as_ptr().cast();
    let inner = core::ptr::from_mut(&mut msg.inner).cast();
    if unsafe { bpf_xdp_load_bytes(xdp, IP_OFF as u32, inner, inner_len as u32) } != 0 {
        return None;
    }
    let words = unsafe { &*core::ptr::from_ref(&*msg).cast::<[u8; 8 + INNER_MAX]>() };
    msg.check = csum::finish(csum::sum_words(0, words)).to_be_bytes();
    let msg_len = 8 + inner_len;

    let mut ip = reject::ip_header(p, msg_len, icmp.from);
    let tot_len = u16::from_be_bytes(ip.tot_len);
    let ip_bytes = unsafe { &*core::ptr::from_ref(&ip).cast::<[u8; Ipv4Hdr::LEN]>() };
    ip.check = csum::ipv4_header(ip_bytes).to_be_bytes();
    let reply_eth = EthHdr {
        dst_addr: peer,
        src_addr: own,
        ether_type: unsafe { (*eth).ether_type },
    };

    let frame_len = EthHdr::LEN + usize::from(tot_len);
    #[expect(clippy::cast_possible_wrap, reason = "frames are far below 2 GiB")]
    let delta = frame_len as i32 - p.len as i32;
    // Every byte is written below, so the frame may grow at either end: at
    // the tail where there is room, else at the head (a driver keeps
    // XDP_PACKET_HEADROOM there; a small skb under generic XDP or on a
    // veth may have no tailroom at all).
    if delta != 0
        && unsafe { bpf_xdp_adjust_tail(xdp, delta) } != 0
        && (delta < 0 || unsafe { bpf_xdp_adjust_head(xdp, -delta) } != 0)
    {
        return None;
    }
    let store = |at: usize, from: *const u8, len: usize| unsafe {
        bpf_xdp_store_bytes(xdp, at as u32, from.cast_mut().cast(), len as u32) == 0
    };
    let ok = store(0, core::ptr::from_ref(&reply_eth).cast(), EthHdr::LEN)
        && store(IP_OFF, core::ptr::from_ref(&ip).cast(), Ipv4Hdr::LEN)
        && store(
            IP_OFF + Ipv4Hdr::LEN,
            core::ptr::from_ref(&*msg).cast(),
            msg_len,
        );
    ok.then_some(())
}
