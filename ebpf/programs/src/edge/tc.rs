//! North-south in TC (`tc_north_south` at an external interface's
//! ingress, `--xdp-mode tc`): for drivers or setups where XDP cannot be
//! used. Rewrites go through the skb checksum helpers, and a translated
//! packet is redirected to its next hop.

use aya_ebpf::{
    helpers::{bpf_redirect, bpf_redirect_neigh},
    programs::TcContext,
};
use sluice_abi::stats::{DropReason, Event};

use super::Edge;
use crate::{TC_ACT_OK, TC_ACT_REDIRECT, fib, nat, parse::Packet, reject, stats};

impl Edge for TcContext {
    type Verdict = i32;

    const PASS: i32 = TC_ACT_OK;

    #[inline(always)]
    fn ingress(&self) -> u32 {
        unsafe { (*self.skb.skb).ifindex }
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
    fn reject(&self, p: &Packet, reason: DropReason) -> Result<i32, DropReason> {
        reject::reject(self, p, reason)
    }

    #[inline(always)]
    fn forward(&self, route: &fib::Route) -> i32 {
        let action = match *route {
            fib::Route::Forward {
                ifindex,
                smac,
                dmac,
            } => {
                if self.store(0, &dmac, 0).is_err() || self.store(6, &smac, 0).is_err() {
                    return Self::PASS;
                }
                unsafe { bpf_redirect(ifindex, 0) }
            }
            fib::Route::NoNeigh { ifindex } => unsafe {
                bpf_redirect_neigh(ifindex, core::ptr::null_mut(), 0, 0)
            },
            fib::Route::Local => return Self::PASS,
        };
        if action == i64::from(TC_ACT_REDIRECT) {
            stats::event(Event::TcForward);
            TC_ACT_REDIRECT
        } else {
            Self::PASS
        }
    }
}
