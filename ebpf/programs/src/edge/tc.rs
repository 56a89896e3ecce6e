//! North-south in TC (`tc_north_south` at an external interface's
//! ingress, `--xdp-mode tc`): for drivers or setups where XDP cannot be
//! used. Rewrites go through the skb checksum helpers, and a translated
//! packet is redirected to its next hop.

use aya_ebpf::{
    helpers::{bpf_redirect, bpf_redirect_neigh},
    programs::TcContext,
};
use sluice_abi::{
    config::DataplaneConfig,
    stats::{DropReason, Event},
};

use super::Edge;
use crate::{
    TC_ACT_OK, TC_ACT_REDIRECT, fib, nat,
    parse::Packet,
    reject::{self, Icmp},
    stats,
};

impl Edge for TcContext {
    type Verdict = i32;

    const PASS: i32 = TC_ACT_OK;

    #[inline(always)]
    fn ingress(&self) -> u32 {
        unsafe { (*self.skb.skb).ifindex }
    }

    /// An skb may be a GSO packet: the kernel checks each segment.
    #[inline(always)]
    fn route_len(&self, _p: &Packet) -> u16 {
        0
    }

    #[inline(always)]
    fn dnat(&self, p: &Packet, addr: [u8; 4], port: [u8; 2]) -> Result<(), DropReason> {
        nat::rewrite_dst(self, p, addr, port)
    }

    #[inline(always)]
    fn snat(&self, p: &Packet, addr: [u8; 4], port: [u8; 2]) -> Result<(), DropReason> {
        nat::rewrite_src(self, p, addr, port)
    }

    #[inline(always)]
    fn ttl_down(&self, p: &Packet) -> Result<(), DropReason> {
        nat::ttl_down(self, p)
    }

    #[inline(always)]
    fn answer(&self, p: &Packet, reason: DropReason, icmp: Icmp) -> Result<i32, DropReason> {
        reject::answer(self, p, reason, icmp)
    }

    /// `tc_edge6`; it does not return. Without it, IPv6 passes.
    #[inline(always)]
    fn ipv6(&self, _config: &DataplaneConfig) -> Result<i32, DropReason> {
        crate::maps::tail_call(self, crate::maps::TAIL_EDGE6);
        Ok(super::pass::<Self>())
    }

    #[inline(always)]
    fn forward(&self, route: &fib::Route) -> i32 {
        let action = match route.hop {
            fib::Hop::Forward => {
                if self.store(0, &route.dmac, 0).is_err() || self.store(6, &route.smac, 0).is_err()
                {
                    return Self::PASS;
                }
                unsafe { bpf_redirect(route.ifindex, 0) }
            }
            fib::Hop::NoNeigh => unsafe {
                bpf_redirect_neigh(route.ifindex, core::ptr::null_mut(), 0, 0)
            },
            fib::Hop::TooBig | fib::Hop::Local => return Self::PASS,
        };
        if action == i64::from(TC_ACT_REDIRECT) {
            stats::event(Event::TcForward);
            TC_ACT_REDIRECT
        } else {
            Self::PASS
        }
    }
}
