//! North-south in XDP (`xdp_ingress` on external interfaces): the frame
//! is rewritten in place and sent back out (`XDP_TX`), out of another
//! interface (`XDP_REDIRECT`), or passed to the stack. The logic is
//! `edge.rs`'s.

pub mod ipv6;
mod reject;
mod rewrite;

use aya_ebpf::{EbpfContext as _, programs::XdpContext};
use sluice_abi::{
    config::{DataplaneConfig, XDP_HANDOFF},
    stats::{DropReason, Event},
};

use crate::{edge::Edge, fib, parse::Packet, reject::Icmp, stats};

/// XDP verdicts (`enum xdp_action`).
pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;
pub const XDP_REDIRECT: u32 = 4;

/// Marks a passed packet as handed to `tc_external` (`XDP_HANDOFF` in its
/// metadata); `false` when the driver keeps no metadata.
trait HandOff {
    fn hand_off(&self) -> bool;
}

impl HandOff for XdpContext {
    #[inline(always)]
    fn hand_off(&self) -> bool {
        let word = size_of::<u32>();
        #[expect(clippy::cast_possible_wrap, reason = "4")]
        let grow = -(word as i32);
        if unsafe { aya_ebpf::helpers::bpf_xdp_adjust_meta(self.as_ptr().cast(), grow) } != 0 {
            stats::dropped(DropReason::Rewrite);
            return false;
        }
        let (meta, data) = (self.metadata(), self.data());
        if meta + word > data {
            return false;
        }
        unsafe { *(meta as *mut u32) = XDP_HANDOFF };
        true
    }
}

impl Edge for XdpContext {
    type Verdict = u32;

    const PASS: u32 = XDP_PASS;

    #[inline(always)]
    #[expect(clippy::cast_possible_truncation, reason = "ifindexes are u32")]
    fn ingress(&self) -> u32 {
        self.ingress_ifindex() as u32
    }

    /// An XDP frame is one packet.
    #[inline(always)]
    fn route_len(&self, p: &Packet) -> u16 {
        p.tot_len
    }

    #[inline(always)]
    fn dnat(&self, p: &Packet, addr: [u8; 4], port: [u8; 2]) -> Result<(), DropReason> {
        rewrite::dst(self, p, addr, port)
    }

    #[inline(always)]
    fn snat(&self, p: &Packet, addr: [u8; 4], port: [u8; 2]) -> Result<(), DropReason> {
        rewrite::src(self, p, addr, port)
    }

    #[inline(always)]
    fn ttl_down(&self, _p: &Packet) -> Result<(), DropReason> {
        rewrite::ttl_down(self)
    }

    #[inline(always)]
    fn answer(&self, p: &Packet, reason: DropReason, icmp: Icmp) -> Result<u32, DropReason> {
        reject::answer(self, p, reason, icmp)
    }

    /// `xdp_edge6`; it does not return. Without it, IPv6 passes.
    #[inline(always)]
    fn ipv6(&self, _config: &DataplaneConfig) -> Result<u32, DropReason> {
        crate::maps::xdp_tail_call(self, crate::maps::XDP_TAIL_EDGE6);
        Ok(crate::edge::pass::<Self>())
    }

    #[inline(always)]
    fn forward(&self, route: &fib::Route) -> u32 {
        match route.hop {
            fib::Hop::Forward => {
                if rewrite::macs(self, route.dmac, route.smac).is_err() {
                    return XDP_PASS;
                }
                if route.ifindex == self.ingress() {
                    stats::event(Event::XdpTx);
                    return XDP_TX;
                }
                let action = unsafe { aya_ebpf::helpers::bpf_redirect(route.ifindex, 0) };
                if action == i64::from(XDP_REDIRECT) {
                    stats::event(Event::XdpRedirect);
                    return XDP_REDIRECT;
                }
                XDP_PASS
            }
            fib::Hop::NoNeigh => {
                // `tc_external` on this interface sends it on (the stack
                // would take its node-address source for a martian); the
                // metadata word says it is ours.
                stats::event(Event::NeighMiss);
                if !self.hand_off() {
                    return XDP_DROP;
                }
                XDP_PASS
            }
            fib::Hop::TooBig | fib::Hop::Local => XDP_PASS,
        }
    }
}
