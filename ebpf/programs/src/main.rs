//! Sluice's kernel programs: the entry points, each handing its packet to
//! the module with the logic.
//! - `tc_ingress`, on the host side of pod-facing interfaces: `pod::run`;
//!   IPv6 packets go on to `tc_ingress6` (a tail call): `pod::run6`, and
//!   from there to `tc_ingress6_new` (new flows) and `tc_ingress6_icmp`
//!   (ICMPv6 errors).
//! - `xdp_ingress` on external interfaces, for traffic from outside the
//!   cluster, or `tc_north_south` where XDP cannot: `edge::run`; and
//!   `tc_external` behind XDP, for the packets XDP handed to the stack.
//!   IPv6 from outside: `xdp_ingress` hands it to `xdp_edge6` (a tail
//!   call; `xdp::ipv6`), which translates established flows' packets,
//!   hands new flows, and flows still in the new flows' table, to
//!   `xdp_edge6_flow`, `xdp_edge6_new` and `xdp_edge6_reply`, and passes
//!   the rest; `tc_external` behind it, or `tc_north_south`, hands
//!   that to `tc_edge6` (`edge::ipv6`), and from there new flows go on to
//!   `tc_edge6_new` and ICMPv6 errors to `tc_edge6_icmp`.
//! - `sock_*`: socket LB on a cgroup (`sock.rs`), for IPv4 and IPv6
//!   sockets (and IPv6 sockets' IPv4-mapped addresses).
//!
//! A drop is counted with its reason, and shown to a monitor, here.
#![no_std]
#![no_main]

mod conntrack;
mod edge;
mod family;
mod fib;
mod icmp;
mod lb;
mod maps;
mod monitor;
mod nat;
mod parse;
mod pod;
mod reject;
mod sock;
mod stats;
mod xdp;

use aya_ebpf::{
    Global,
    bindings::{__sk_buff, xdp_md},
    macros::{cgroup_sock_addr, classifier},
    programs::{SockAddrContext, TcContext, XdpContext},
};
use network_types::eth::EtherType;
use sluice_abi::{
    config::{DataplaneConfig, XDP_HANDOFF},
    stats::{DropReason, Event},
};

use crate::{parse::Parsed, sock::Family};

/// TC verdicts (linux/pkt_cls.h), as the classifier returns them.
pub const TC_ACT_OK: i32 = 0;
pub const TC_ACT_SHOT: i32 = 2;
pub const TC_ACT_REDIRECT: i32 = 7;

/// Set by the agent at load time (`EbpfLoader::override_global`).
#[unsafe(no_mangle)]
static CONFIG: Global<DataplaneConfig> = Global::new(DataplaneConfig::DEFAULT);

// The three large programs are written out rather than through aya's
// `#[classifier]` and `#[xdp]`, whose entry calls the program as a BPF
// function of its own: Linux 6.1's verifier counts every frame of a call
// chain as at least 32 bytes of the 512, and that frame's 32 and a
// `memset` call's 32 left xdp_ingress over the limit there. Here the
// program is the entry.

/// Pod-facing interfaces' ingress (`classifier`: TC, direct action).
#[unsafe(no_mangle)]
#[unsafe(link_section = "classifier")]
pub fn tc_ingress(skb: *mut __sk_buff) -> i32 {
    let ctx = TcContext::new(skb);
    match pod::run(&ctx, &CONFIG.load()) {
        Ok(action) => action,
        Err(reason) => tc_drop(&ctx, reason),
    }
}

/// The load-time configuration, read in place, a field where it is used:
/// `CONFIG.load()` copies all of it, which in IPv6's larger program costs
/// more stack than there is (each byte of its IPv6 address a register,
/// spilled). `black_box` keeps the compiler from taking the fields for the
/// initializer's, as the volatile copy does.
#[inline(always)]
fn config() -> &'static DataplaneConfig {
    let at = core::hint::black_box(core::ptr::from_ref(&CONFIG));
    // SAFETY: `Global` is `repr(transparent)` over an always initialised
    // `DataplaneConfig`, which the loader writes before the program runs.
    unsafe { &*at.cast::<DataplaneConfig>() }
}

/// Pod-facing interfaces' IPv6 packets: `tc_ingress` tail-calls this
/// program (`SLUICE_TAIL`), so that each family's path has the 512 bytes
/// of stack a program gets.
#[unsafe(no_mangle)]
#[unsafe(link_section = "classifier")]
pub fn tc_ingress6(skb: *mut __sk_buff) -> i32 {
    let ctx = TcContext::new(skb);
    match pod::run6(&ctx, config()) {
        Ok(action) => action,
        Err(reason) => tc_drop(&ctx, reason),
    }
}

/// New IPv6 flows from pods: `tc_ingress6` tail-calls this program for a
/// packet that starts one.
#[unsafe(no_mangle)]
#[unsafe(link_section = "classifier")]
pub fn tc_ingress6_new(skb: *mut __sk_buff) -> i32 {
    let ctx = TcContext::new(skb);
    match pod::run6_new(&ctx, config()) {
        Ok(action) => action,
        Err(reason) => tc_drop(&ctx, reason),
    }
}

/// ICMPv6 errors from pods: `tc_ingress6` tail-calls this program for
/// them, to be translated if they are about a translated flow.
#[unsafe(no_mangle)]
#[unsafe(link_section = "classifier")]
pub fn tc_ingress6_icmp(skb: *mut __sk_buff) -> i32 {
    let ctx = TcContext::new(skb);
    match pod::run6_icmp(&ctx) {
        Ok(action) => action,
        Err(reason) => tc_drop(&ctx, reason),
    }
}

/// IPv6 from outside at an external interface (`edge::ipv6`), in every
/// mode: `tc_north_south` and `tc_external` tail-call this program.
#[unsafe(no_mangle)]
#[unsafe(link_section = "classifier")]
pub fn tc_edge6(skb: *mut __sk_buff) -> i32 {
    let ctx = TcContext::new(skb);
    match edge::ipv6::run(&ctx, config()) {
        Ok(action) => action,
        Err(reason) => tc_drop(&ctx, reason),
    }
}

/// New IPv6 flows from outside: `tc_edge6` tail-calls this program.
#[unsafe(no_mangle)]
#[unsafe(link_section = "classifier")]
pub fn tc_edge6_new(skb: *mut __sk_buff) -> i32 {
    let ctx = TcContext::new(skb);
    match edge::ipv6::run_new(&ctx, config()) {
        Ok(action) => action,
        Err(reason) => tc_drop(&ctx, reason),
    }
}

/// ICMPv6 errors from outside: `tc_edge6` tail-calls this program.
#[unsafe(no_mangle)]
#[unsafe(link_section = "classifier")]
pub fn tc_edge6_icmp(skb: *mut __sk_buff) -> i32 {
    let ctx = TcContext::new(skb);
    match edge::ipv6::run_icmp(&ctx) {
        Ok(action) => action,
        Err(reason) => tc_drop(&ctx, reason),
    }
}

/// On external interfaces, behind `xdp_ingress`: a packet XDP translated
/// but passed to the stack (its next hop had no neighbour entry yet) has
/// one of the node's addresses as source; it is sent on from here. Only
/// those: XDP marks them (`XDP_HANDOFF`); any other packet with a node's
/// source address is forged.
#[classifier]
pub fn tc_external(ctx: TcContext) -> i32 {
    match try_tc_external(&ctx) {
        Ok(action) => action,
        Err(reason) => tc_drop(&ctx, reason),
    }
}

/// Counts a dropped packet (and shows it to a monitor).
#[inline(always)]
fn tc_drop(ctx: &TcContext, reason: DropReason) -> i32 {
    stats::dropped(reason);
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    monitor::dropped_frame(ctx.data(), ctx.data_end(), reason, ifindex);
    TC_ACT_SHOT
}

#[inline(always)]
fn try_tc_external(ctx: &TcContext) -> Result<i32, DropReason> {
    if parse::ether_type(ctx) == Some(EtherType::Ipv6 as u16) {
        // XDP translated it for a backend here: the stack's.
        if handed_off(ctx) {
            return Ok(TC_ACT_OK);
        }
        // IPv6 from outside, which XDP passed on: `tc_edge6`.
        maps::tail_call(ctx, maps::TAIL_EDGE6);
        return Ok(TC_ACT_OK);
    }
    let p = match parse::parse(ctx)? {
        Parsed::Packet(p) | Parsed::IcmpError(p) => p,
        Parsed::NotOurs | Parsed::Fragment { .. } => return Ok(TC_ACT_OK),
    };
    if !maps::is_node_addr(p.saddr) {
        return Ok(TC_ACT_OK);
    }
    if !handed_off(ctx) {
        return Err(DropReason::ForgedSource);
    }
    let route = fib::route(ctx, &p, p.saddr, p.daddr);
    if route.too_big() {
        return Err(DropReason::FragNeeded);
    }
    Ok(fib::redirect(&route).unwrap_or(TC_ACT_OK))
}

/// Whether XDP handed this packet over (`XDP_HANDOFF` in the metadata it
/// left in front of the packet).
#[inline(always)]
fn handed_off(ctx: &TcContext) -> bool {
    let skb = ctx.skb.skb;
    let (meta, data) = unsafe { ((*skb).data_meta as usize, (*skb).data as usize) };
    if meta + size_of::<u32>() > data {
        return false;
    }
    unsafe { *(meta as *const u32) == XDP_HANDOFF }
}

/// North-south at an external interface's ingress, in TC rather than XDP
/// (`--xdp-mode tc`). It sends translated packets on itself, so
/// `tc_external` is not attached beside it.
#[unsafe(no_mangle)]
#[unsafe(link_section = "classifier")]
pub fn tc_north_south(skb: *mut __sk_buff) -> i32 {
    let ctx = TcContext::new(skb);
    match edge::run(&ctx, &CONFIG.load()) {
        Ok(action) => action,
        Err(reason) => tc_drop(&ctx, reason),
    }
}

#[unsafe(no_mangle)]
#[unsafe(link_section = "xdp")]
pub fn xdp_ingress(md: *mut xdp_md) -> u32 {
    let ctx = XdpContext::new(md);
    match edge::run(&ctx, &CONFIG.load()) {
        Ok(action) => action,
        Err(reason) => xdp_drop(&ctx, reason),
    }
}

/// IPv6 from outside in XDP, from `xdp_ingress` (a tail call), its source
/// checked there: a tracked flow's packets translated (`xdp::ipv6`).
#[unsafe(no_mangle)]
#[unsafe(link_section = "xdp")]
pub fn xdp_edge6(md: *mut xdp_md) -> u32 {
    let ctx = XdpContext::new(md);
    match xdp::ipv6::run(&ctx, &CONFIG.load()) {
        Ok(action) => action,
        Err(reason) => xdp_drop(&ctx, reason),
    }
}

/// A client's IPv6 packet from outside whose flow `xdp_edge6` did not
/// find established, or under `externalTrafficPolicy: Local`
/// (`xdp::ipv6`).
#[unsafe(no_mangle)]
#[unsafe(link_section = "xdp")]
pub fn xdp_edge6_flow(md: *mut xdp_md) -> u32 {
    let ctx = XdpContext::new(md);
    match xdp::ipv6::run_flow(&ctx, &CONFIG.load()) {
        Ok(action) => action,
        Err(reason) => xdp_drop(&ctx, reason),
    }
}

/// A new IPv6 flow from outside, from `xdp_edge6_flow` (`xdp::ipv6`).
#[unsafe(no_mangle)]
#[unsafe(link_section = "xdp")]
pub fn xdp_edge6_new(md: *mut xdp_md) -> u32 {
    let ctx = XdpContext::new(md);
    match xdp::ipv6::run_new(&ctx, &CONFIG.load()) {
        Ok(action) => action,
        Err(reason) => xdp_drop(&ctx, reason),
    }
}

/// A backend's IPv6 reply whose flow `xdp_edge6` did not find
/// established (`xdp::ipv6`).
#[unsafe(no_mangle)]
#[unsafe(link_section = "xdp")]
pub fn xdp_edge6_reply(md: *mut xdp_md) -> u32 {
    let ctx = XdpContext::new(md);
    match xdp::ipv6::run_reply(&ctx) {
        Ok(action) => action,
        Err(reason) => xdp_drop(&ctx, reason),
    }
}

/// Counts a dropped frame (and shows it to a monitor).
#[inline(always)]
fn xdp_drop(ctx: &XdpContext, reason: DropReason) -> u32 {
    stats::dropped(reason);
    #[expect(clippy::cast_possible_truncation, reason = "an ifindex is a u32")]
    let ifindex = ctx.ingress_ifindex() as u32;
    monitor::dropped_frame(ctx.data(), ctx.data_end(), reason, ifindex);
    xdp::XDP_DROP
}

#[cgroup_sock_addr(connect4)]
pub fn sock_connect4(ctx: SockAddrContext) -> i32 {
    sock::translate(&ctx, Family::V4, &CONFIG.load(), Event::SockConnect)
}

#[cgroup_sock_addr(sendmsg4)]
pub fn sock_sendmsg4(ctx: SockAddrContext) -> i32 {
    sock::translate(&ctx, Family::V4, &CONFIG.load(), Event::SockSendmsg)
}

#[cgroup_sock_addr(recvmsg4)]
pub fn sock_recvmsg4(ctx: SockAddrContext) -> i32 {
    sock::reverse(&ctx, Family::V4)
}

#[cgroup_sock_addr(getpeername4)]
pub fn sock_getpeername4(ctx: SockAddrContext) -> i32 {
    sock::reverse(&ctx, Family::V4)
}

#[cgroup_sock_addr(connect6)]
pub fn sock_connect6(ctx: SockAddrContext) -> i32 {
    sock::translate6(&ctx, &CONFIG.load(), Event::SockConnect)
}

#[cgroup_sock_addr(sendmsg6)]
pub fn sock_sendmsg6(ctx: SockAddrContext) -> i32 {
    sock::translate6(&ctx, &CONFIG.load(), Event::SockSendmsg)
}

#[cgroup_sock_addr(recvmsg6)]
pub fn sock_recvmsg6(ctx: SockAddrContext) -> i32 {
    sock::reverse6(&ctx)
}

#[cgroup_sock_addr(getpeername6)]
pub fn sock_getpeername6(ctx: SockAddrContext) -> i32 {
    sock::reverse6(&ctx)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
