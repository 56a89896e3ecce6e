//! The kernel's route to a translated packet's destination
//! (`bpf_fib_lookup`), for XDP and TC; and, in TC, sending a packet along
//! it (`bpf_redirect_neigh`).

use aya_ebpf::{
    EbpfContext,
    bindings::{
        BPF_FIB_LKUP_RET_FRAG_NEEDED, BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS,
        bpf_fib_lookup,
    },
    helpers::{bpf_fib_lookup as fib_lookup, bpf_redirect_neigh},
    programs::TcContext,
};
use sluice_abi::{addr::In6, service::ExtIf};

use crate::{maps, parse::Packet};

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

/// Where the stack would send a packet: `hop` says how, the other fields
/// what goes with it (zero otherwise). A struct whose every field is set,
/// rather than an enum with payloads: copies of an enum's undefined bytes
/// reach the verifier as uninitialised registers.
#[derive(Clone, Copy)]
pub struct Route {
    pub hop: Hop,
    /// `Forward`, `NoNeigh`, `TooBig`: the interface out.
    pub ifindex: u32,
    /// `Forward`: from `smac` to the neighbour `dmac`.
    pub smac: [u8; 6],
    pub dmac: [u8; 6],
    /// `TooBig`: the route's MTU.
    pub mtu: u16,
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Hop {
    /// Out of `ifindex`, to the neighbour `dmac`, from `smac`.
    Forward,
    /// Out of `ifindex`, but the neighbour is not resolved yet.
    NoNeigh,
    /// The packet (a segment of it, for a GSO packet) is larger than the
    /// route's `mtu`.
    TooBig,
    /// Delivered on this node, or not forwarded as it is (a local address,
    /// forwarding off, no route): the stack decides.
    Local,
}

impl Route {
    /// No route looked up: the stack decides.
    pub const LOCAL: Self = Self::of(Hop::Local);

    const fn of(hop: Hop) -> Self {
        Self {
            hop,
            ifindex: 0,
            smac: [0; 6],
            dmac: [0; 6],
            mtu: 0,
        }
    }

    /// The external interface the route leaves through, if it does: the
    /// destination is on another host.
    #[inline(always)]
    pub fn external(&self) -> Option<ExtIf> {
        match self.hop {
            Hop::Forward | Hop::NoNeigh | Hop::TooBig => maps::ext_if(self.ifindex),
            Hop::Local => None,
        }
    }

    #[inline(always)]
    pub fn too_big(&self) -> bool {
        self.hop == Hop::TooBig
    }
}

/// The route of `p` once its addresses are `src` → `dst`, as if it arrived
/// on interface `ingress`.
///
/// `tot_len` is the length the route's MTU is checked against: an XDP
/// frame's own (`Packet::tot_len`: one frame, one packet); or, for an skb,
/// 0, which makes the kernel check each segment of a GSO packet rather
/// than the whole (`is_skb_forwardable`): a TSO or GRO packet of 64 KiB is
/// many packets of the MTU on the wire.
#[inline(always)]
pub fn lookup(
    ctx: &impl EbpfContext,
    ingress: u32,
    p: &Packet,
    src: [u8; 4],
    dst: [u8; 4],
    tot_len: u16,
) -> Route {
    let Some(params) = maps::fib_scratch() else {
        return Route::LOCAL;
    };
    // SAFETY: this CPU's scratch entry, a plain C struct of integers, for
    // this program run only (no other program runs on the CPU meanwhile).
    zero(params);
    let params = unsafe { &mut *params };
    params.family = AF_INET;
    params.l4_protocol = p.proto;
    params.sport = u16::from_ne_bytes(p.sport);
    params.dport = u16::from_ne_bytes(p.dport);
    params.__bindgen_anon_1.tot_len = tot_len;
    params.ifindex = ingress;
    params.__bindgen_anon_3.ipv4_src = u32::from_ne_bytes(src);
    params.__bindgen_anon_4.ipv4_dst = u32::from_ne_bytes(dst);
    #[expect(clippy::cast_possible_truncation, reason = "the struct is 64 bytes")]
    let size = size_of::<bpf_fib_lookup>() as i32;
    let rc = unsafe { fib_lookup(ctx.as_ptr(), core::ptr::from_mut(params), size, 0) };
    if let Some(found) = found(rc, params) {
        return found;
    }
    match u32::try_from(rc) {
        Ok(BPF_FIB_LKUP_RET_FRAG_NEEDED) => {
            // The union's other member: the route's MTU.
            let mtu = unsafe { params.__bindgen_anon_1.mtu_result };
            // An MTU check of `tot_len` fails before the interface out is
            // known (an skb's, without `tot_len`, after): once more without.
            let out = if tot_len == 0 {
                params.ifindex
            } else {
                // The inputs are as they were but for the length.
                params.__bindgen_anon_1.tot_len = 0;
                let rc = unsafe { fib_lookup(ctx.as_ptr(), core::ptr::from_mut(params), size, 0) };
                let known = matches!(
                    u32::try_from(rc),
                    Ok(BPF_FIB_LKUP_RET_SUCCESS | BPF_FIB_LKUP_RET_NO_NEIGH)
                );
                if known { params.ifindex } else { 0 }
            };
            Route {
                ifindex: out,
                mtu,
                ..Route::of(Hop::TooBig)
            }
        }
        _ => Route::of(Hop::Local),
    }
}

/// Zeroes a scratch entry a word at a time. `*params = zeroed()` becomes a
/// call to `memset`, a BPF function of its own: Linux 6.1's verifier counts
/// every frame on a call chain as at least 32 bytes of the 512.
#[inline(always)]
fn zero(params: *mut bpf_fib_lookup) {
    const WORDS: usize = size_of::<bpf_fib_lookup>() / size_of::<u64>();
    let words = params.cast::<u64>();
    for i in 0..WORDS {
        // SAFETY: within the 64-byte, 8-aligned map value; volatile, so
        // that the stores stay stores.
        unsafe { words.add(i).write_volatile(0) };
    }
}

/// The route of an skb in TC (MTU checked per segment) whose addresses
/// become `src` → `dst`.
#[inline(always)]
pub fn route(ctx: &TcContext, p: &Packet, src: [u8; 4], dst: [u8; 4]) -> Route {
    let ingress = unsafe { (*ctx.skb.skb).ingress_ifindex };
    lookup(ctx, ingress, p, src, dst, 0)
}

/// Strict reverse path (RFC 3704) for a packet arriving on a pod's
/// interface: whether the route back to its source leaves through that
/// same interface.
#[inline(always)]
pub fn source_routed_here(ctx: &TcContext, p: &Packet) -> bool {
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let back = lookup(ctx, ifindex, p, p.daddr, p.saddr, 0);
    back.hop != Hop::Local && back.ifindex == ifindex
}

/// Strict reverse path for an IPv6 packet arriving on a pod's interface,
/// as `source_routed_here`.
#[inline(always)]
pub fn source_routed_here6(ctx: &TcContext, p: &Packet<In6>) -> bool {
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let back = route6(ctx, ifindex, p, (p.daddr, p.dport), (p.saddr, p.sport), 0);
    matches!(back.hop, Hop::Forward | Hop::NoNeigh) && back.ifindex == ifindex
}

/// The route of an IPv6 packet arriving on `ingress` whose addresses and
/// ports become `src` → `dst`. The MTU is checked against `tot_len`, as
/// `lookup`'s: an XDP frame's own; 0 for an skb, checked per segment. A
/// route too big reports the MTU.
#[inline(always)]
pub fn route6(
    ctx: &impl EbpfContext,
    ingress: u32,
    p: &Packet<In6>,
    src: (In6, [u8; 2]),
    dst: (In6, [u8; 2]),
    tot_len: u16,
) -> Route {
    let Some(params) = maps::fib_scratch() else {
        return Route::LOCAL;
    };
    zero(params);
    // SAFETY: this CPU's scratch entry, as in `lookup`.
    let params = unsafe { &mut *params };
    params.family = AF_INET6;
    params.l4_protocol = p.proto;
    params.sport = u16::from_ne_bytes(src.1);
    params.dport = u16::from_ne_bytes(dst.1);
    params.__bindgen_anon_1.tot_len = tot_len;
    params.ifindex = ingress;
    params.__bindgen_anon_3.ipv6_src = src.0.0;
    params.__bindgen_anon_4.ipv6_dst = dst.0.0;
    #[expect(clippy::cast_possible_truncation, reason = "the struct is 64 bytes")]
    let size = size_of::<bpf_fib_lookup>() as i32;
    let rc = unsafe { fib_lookup(ctx.as_ptr(), core::ptr::from_mut(params), size, 0) };
    if let Some(found) = found(rc, params) {
        return found;
    }
    if u32::try_from(rc) == Ok(BPF_FIB_LKUP_RET_FRAG_NEEDED) {
        return Route {
            ifindex: params.ifindex,
            mtu: unsafe { params.__bindgen_anon_1.mtu_result },
            ..Route::of(Hop::TooBig)
        };
    }
    Route::of(Hop::Local)
}

/// The route a lookup that returned `rc` found, when it found one to
/// forward along: its next hop, or its interface when the neighbour is not
/// resolved yet.
#[inline(always)]
fn found(rc: i64, params: &bpf_fib_lookup) -> Option<Route> {
    match u32::try_from(rc) {
        Ok(BPF_FIB_LKUP_RET_SUCCESS) => Some(Route {
            ifindex: params.ifindex,
            smac: params.smac,
            dmac: params.dmac,
            ..Route::of(Hop::Forward)
        }),
        Ok(BPF_FIB_LKUP_RET_NO_NEIGH) => Some(Route {
            ifindex: params.ifindex,
            ..Route::of(Hop::NoNeigh)
        }),
        _ => None,
    }
}

/// Sends a packet whose source became one of the node's own addresses
/// (the reply of a NodePort flow, or a flow XDP translated) along `route`
/// (from `route`), straight to its next hop: the stack would drop it as a
/// martian, a local address arriving from outside. `None`: not a forward;
/// the caller decides.
#[inline(always)]
pub fn redirect(route: &Route) -> Option<i32> {
    if !matches!(route.hop, Hop::Forward | Hop::NoNeigh) {
        return None;
    }
    let action = unsafe { bpf_redirect_neigh(route.ifindex, core::ptr::null_mut(), 0, 0) };
    i32::try_from(action).ok()
}
