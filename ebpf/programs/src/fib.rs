//! The kernel's route to a translated packet's destination
//! (`bpf_fib_lookup`), for XDP and TC; and, in TC, sending a packet along
//! it (`bpf_redirect_neigh`).

use aya_ebpf::{
    EbpfContext,
    bindings::{BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS, bpf_fib_lookup},
    helpers::{bpf_fib_lookup as fib_lookup, bpf_redirect_neigh},
    programs::TcContext,
};
use sluice_abi::service::ExtIf;

use crate::{maps, parse::Packet};

const AF_INET: u8 = 2;

/// Where the stack would send a packet.
pub enum Route {
    /// Out of `ifindex`, to the neighbour `dmac`, from `smac`.
    Forward {
        ifindex: u32,
        smac: [u8; 6],
        dmac: [u8; 6],
    },
    /// Out of `ifindex`, but the neighbour is not resolved yet.
    NoNeigh { ifindex: u32 },
    /// Delivered on this node, or not forwarded as it is (a local address,
    /// forwarding off, no route, a packet over the MTU): the stack decides.
    Local,
}

impl Route {
    /// The external interface the route leaves through, if it does: the
    /// destination is on another host.
    #[inline(always)]
    pub fn external(&self) -> Option<ExtIf> {
        match *self {
            Self::Forward { ifindex, .. } | Self::NoNeigh { ifindex } => maps::ext_if(ifindex),
            Self::Local => None,
        }
    }
}

/// The route of `p` once its addresses are `src` → `dst`, as if it arrived
/// on interface `ingress`.
#[inline(always)]
pub fn lookup(
    ctx: &impl EbpfContext,
    ingress: u32,
    p: &Packet,
    src: [u8; 4],
    dst: [u8; 4],
) -> Route {
    // SAFETY: a plain C struct of integers; all-zero is a valid value.
    let mut params: bpf_fib_lookup = unsafe { core::mem::zeroed() };
    params.family = AF_INET;
    params.l4_protocol = p.proto;
    params.sport = u16::from_ne_bytes(p.sport);
    params.dport = u16::from_ne_bytes(p.dport);
    params.__bindgen_anon_1.tot_len = p.tot_len;
    params.ifindex = ingress;
    params.__bindgen_anon_3.ipv4_src = u32::from_ne_bytes(src);
    params.__bindgen_anon_4.ipv4_dst = u32::from_ne_bytes(dst);
    #[expect(clippy::cast_possible_truncation, reason = "the struct is 64 bytes")]
    let size = size_of::<bpf_fib_lookup>() as i32;
    let rc = unsafe { fib_lookup(ctx.as_ptr(), &raw mut params, size, 0) };
    match u32::try_from(rc) {
        Ok(BPF_FIB_LKUP_RET_SUCCESS) => Route::Forward {
            ifindex: params.ifindex,
            smac: params.smac,
            dmac: params.dmac,
        },
        Ok(BPF_FIB_LKUP_RET_NO_NEIGH) => Route::NoNeigh {
            ifindex: params.ifindex,
        },
        _ => Route::Local,
    }
}

/// Sends a packet whose source became one of the node's own addresses
/// (the reply of a NodePort flow, or a flow XDP translated) straight to
/// its next hop: the stack would drop it as a martian, a local address
/// arriving from outside. `None`: no route; the stack decides.
#[inline(always)]
pub fn redirect(ctx: &TcContext, p: &Packet, src: [u8; 4], dst: [u8; 4]) -> Option<i32> {
    let ingress = unsafe { (*ctx.skb.skb).ingress_ifindex };
    let ifindex = match lookup(ctx, ingress, p, src, dst) {
        Route::Forward { ifindex, .. } | Route::NoNeigh { ifindex } => ifindex,
        Route::Local => return None,
    };
    let action = unsafe { bpf_redirect_neigh(ifindex, core::ptr::null_mut(), 0, 0) };
    i32::try_from(action).ok()
}
