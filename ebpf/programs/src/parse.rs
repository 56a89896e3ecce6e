//! Bounds-checked header access and the parse of one IPv4 TCP/UDP packet,
//! for TC (`TcContext`) and XDP (`XdpContext`) alike.

use aya_ebpf::programs::{TcContext, XdpContext};
use network_types::{
    eth::{EthHdr, EtherType},
    ip::Ipv4Hdr,
};
use sluice_abi::{
    proto,
    stats::{DropReason, Event},
};

use crate::{
    maps::{self, FragKey},
    stats,
};

pub mod ipv6;

/// Offset of the IPv4 header: pod-facing interfaces are Ethernet.
pub const IP_OFF: usize = EthHdr::LEN;
/// Offsets inside the IPv4 header.
pub const IP_CHECK_OFF: usize = IP_OFF + 10;
pub const IP_SADDR_OFF: usize = IP_OFF + 12;
pub const IP_DADDR_OFF: usize = IP_OFF + 16;
/// Offset of the TTL and protocol, one 16-bit word of the header.
pub const IP_TTL_OFF: usize = IP_OFF + 8;

/// ICMP error types (RFC 792) whose message quotes the packet it is about.
pub const ICMP_DEST_UNREACH: u8 = 3;
pub const ICMP_TIME_EXCEEDED: u8 = 11;
pub const ICMP_PARAMETER_PROBLEM: u8 = 12;

/// What the dataplane needs of a TCP or UDP packet, copied out of it: an
/// IPv4 packet (`A` = `[u8; 4]`) or an IPv6 one (`In6`, `ipv6.rs`).
pub struct Packet<A = [u8; 4]> {
    /// Offset of the L4 header (honours IPv4 options and IPv6 extension
    /// headers).
    pub l4_off: usize,
    /// IPv4 header length in bytes, 20..=60; IPv6: 40 plus the extension
    /// headers.
    pub ihl_bytes: usize,
    pub saddr: A,
    pub daddr: A,
    pub sport: [u8; 2],
    pub dport: [u8; 2],
    pub proto: u8,
    /// Raw TCP flags (`sluice_abi::conntrack::TCP_*`); 0 for UDP.
    pub tcp_flags: u8,
    /// Length of the whole frame, for byte counters.
    pub len: u32,
    /// The IPv4 total length (host order), for route MTU checks; IPv6:
    /// the payload length plus 40.
    pub tot_len: u16,
    /// Don't Fragment: a packet too big for its route is answered with
    /// ICMP fragmentation-needed rather than fragmented (always, for IPv6).
    pub df: bool,
    /// The IPv4 time to live, or the IPv6 hop limit.
    pub ttl: u8,
    /// Whether the TCP or UDP header is in this packet: not in a later
    /// fragment, whose ports are its first fragment's (the fragment map),
    /// and whose rewrites touch the IPv4 header only.
    pub l4: bool,
}

impl<A> Packet<A> {
    /// Offset of the L4 checksum field.
    #[inline(always)]
    pub const fn l4_check_off(&self) -> usize {
        if self.proto == proto::TCP {
            self.l4_off + 16
        } else {
            self.l4_off + 6
        }
    }

    #[inline(always)]
    pub const fn is_tcp(&self) -> bool {
        self.proto == proto::TCP
    }
}

pub enum Parsed<A = [u8; 4]> {
    /// Not TCP/UDP or an ICMP error: pass it.
    NotOurs,
    /// A later TCP/UDP fragment to `daddr` whose ports are not known (its
    /// first fragment was not seen; or TCP, whose flags it lacks).
    Fragment {
        daddr: A,
    },
    Packet(Packet<A>),
    /// An ICMP error (destination unreachable, time exceeded, parameter
    /// problem), not fragmented: `proto` is ICMP, the ports are zero and
    /// `l4_off` is the ICMP header's offset. What it is about is
    /// `icmp::quoted`'s to read.
    IcmpError(Packet<A>),
}

/// The packet's network protocol (the Ethernet type): IPv4, IPv6, or
/// another, which is passed.
#[inline(always)]
pub fn ether_type(ctx: &impl Frame) -> Option<u16> {
    let eth = ptr_at::<EthHdr>(ctx, 0)?;
    // The raw field: never read an enum from packet memory.
    Some(unsafe { (*eth).ether_type })
}

/// The packet memory of a program's context.
pub trait Frame: Sized {
    fn data(&self) -> usize;
    fn data_end(&self) -> usize;
    /// Bytes in the whole packet.
    fn len(&self) -> u32;
    /// Makes the first `len` bytes linear, if they are not; `false` when
    /// that failed or is not possible (XDP frames are linear already).
    fn pull(&self, len: u32) -> bool;

    /// A copy of the `T` at `off`, linear or not.
    #[inline(always)]
    fn read<T: Copy>(&self, off: usize) -> Option<T> {
        ptr_at::<T>(self, off).map(|p| unsafe { p.read_unaligned() })
    }
}

impl Frame for TcContext {
    #[inline(always)]
    fn data(&self) -> usize {
        Self::data(self)
    }

    #[inline(always)]
    fn data_end(&self) -> usize {
        Self::data_end(self)
    }

    #[inline(always)]
    fn len(&self) -> u32 {
        Self::len(self)
    }

    #[inline(always)]
    fn pull(&self, len: u32) -> bool {
        self.pull_data(len).is_ok()
    }

    /// `bpf_skb_load_bytes`: the bytes need not be in the linear area.
    #[inline(always)]
    fn read<T: Copy>(&self, off: usize) -> Option<T> {
        self.load(off).ok()
    }
}

impl Frame for XdpContext {
    #[inline(always)]
    fn data(&self) -> usize {
        Self::data(self)
    }

    #[inline(always)]
    fn data_end(&self) -> usize {
        Self::data_end(self)
    }

    #[inline(always)]
    #[expect(
        clippy::cast_possible_truncation,
        reason = "an XDP frame is at most a few pages"
    )]
    fn len(&self) -> u32 {
        (Self::data_end(self) - Self::data(self)) as u32
    }

    #[inline(always)]
    fn pull(&self, _len: u32) -> bool {
        false
    }
}

/// Returns a pointer to a `T` at `off`, if the linear data holds it.
#[inline(always)]
pub fn ptr_at<T>(ctx: &impl Frame, off: usize) -> Option<*const T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + off + size_of::<T>() > end {
        return None;
    }
    Some((start + off) as *const T)
}

/// Like `ptr_at`, for writing.
#[inline(always)]
pub fn ptr_at_mut<T>(ctx: &impl Frame, off: usize) -> Option<*mut T> {
    ptr_at::<T>(ctx, off).map(<*const T>::cast_mut)
}

/// Like `ptr_at`, but pulls non-linear data in first when the packet is long
/// enough: headers of forwarded packets are not always in the linear area.
#[inline(always)]
pub fn header<T>(ctx: &impl Frame, off: usize) -> Option<*const T> {
    if let Some(p) = ptr_at::<T>(ctx, off) {
        return Some(p);
    }
    let want = off + size_of::<T>();
    if (ctx.len() as usize) < want {
        return None;
    }
    if !ctx.pull(want as u32) {
        return None;
    }
    ptr_at::<T>(ctx, off)
}

/// The ports of the TCP or UDP header at `l4_off`, and TCP's flags (0
/// for UDP); either family.
#[inline(always)]
pub fn ports(
    ctx: &impl Frame,
    l4_off: usize,
    l4proto: u8,
) -> Result<([u8; 2], [u8; 2], u8), DropReason> {
    if l4proto == proto::TCP {
        let tcp = header::<[u8; 20]>(ctx, l4_off).ok_or(DropReason::MalformedL4)?;
        let [s0, s1, d0, d1, _, _, _, _, _, _, _, _, _, flags, ..] = unsafe { *tcp };
        Ok(([s0, s1], [d0, d1], flags))
    } else {
        let udp = header::<[u8; 8]>(ctx, l4_off).ok_or(DropReason::MalformedL4)?;
        let [s0, s1, d0, d1, ..] = unsafe { *udp };
        Ok(([s0, s1], [d0, d1], 0))
    }
}

/// Parses Ethernet, IPv4 and the TCP/UDP ports.
#[inline(always)]
pub fn parse(ctx: &impl Frame) -> Result<Parsed, DropReason> {
    let Some(eth) = ptr_at::<EthHdr>(ctx, 0) else {
        return Ok(Parsed::NotOurs);
    };
    // Compare the raw field: never read an enum from packet memory.
    if unsafe { (*eth).ether_type } != EtherType::Ipv4 as u16 {
        return Ok(Parsed::NotOurs);
    }
    let ip = header::<Ipv4Hdr>(ctx, IP_OFF).ok_or(DropReason::MalformedIp)?;
    let (vihl, l4proto, frags, saddr, daddr, tot_len, ttl, id) = unsafe {
        (
            (*ip).vihl,
            (*ip).proto,
            (*ip).frags,
            (*ip).src_addr,
            (*ip).dst_addr,
            (*ip).tot_len,
            (*ip).ttl,
            (*ip).id,
        )
    };
    if vihl >> 4 != 4 {
        return Err(DropReason::MalformedIp);
    }
    let ihl_bytes = usize::from(vihl & 0x0f) * 4;
    if ihl_bytes < Ipv4Hdr::LEN {
        return Err(DropReason::MalformedIp);
    }
    let icmp = l4proto == proto::ICMP;
    if l4proto != proto::TCP && l4proto != proto::UDP && !icmp {
        return Ok(Parsed::NotOurs);
    }
    // More-fragments flag or a non-zero offset.
    let fragment = u16::from_be_bytes(frags) & 0x3fff != 0;
    let later = u16::from_be_bytes(frags) & 0x1fff != 0;
    if fragment && icmp {
        return Ok(Parsed::NotOurs);
    }
    let frag = FragKey {
        saddr,
        daddr,
        id,
        proto: l4proto,
        _pad: 0,
    };
    let l4_off = IP_OFF + ihl_bytes;
    let len = ctx.len();
    let mut packet = Packet {
        l4_off,
        ihl_bytes,
        saddr,
        daddr,
        sport: [0; 2],
        dport: [0; 2],
        proto: l4proto,
        tcp_flags: 0,
        len,
        tot_len: u16::from_be_bytes(tot_len),
        df: u16::from_be_bytes(frags) & 0x4000 != 0,
        ttl,
        l4: !later,
    };
    if later {
        // The ports are the first fragment's. A TCP segment's flags would
        // be missing too: TCP is never fragmented in practice (DF).
        if l4proto != proto::UDP {
            return Ok(Parsed::Fragment { daddr });
        }
        let Some([sport, dport]) = maps::fragment_ports(&frag) else {
            return Ok(Parsed::Fragment { daddr });
        };
        packet.sport = sport;
        packet.dport = dport;
        stats::event(Event::FragmentFollowed);
        return Ok(Parsed::Packet(packet));
    }
    if icmp {
        let Some(h) = header::<[u8; 8]>(ctx, l4_off) else {
            return Ok(Parsed::NotOurs);
        };
        let [kind, ..] = unsafe { *h };
        if !matches!(
            kind,
            ICMP_DEST_UNREACH | ICMP_TIME_EXCEEDED | ICMP_PARAMETER_PROBLEM
        ) {
            return Ok(Parsed::NotOurs);
        }
        return Ok(Parsed::IcmpError(packet));
    }
    let (sport, dport, tcp_flags) = ports(ctx, l4_off, l4proto)?;
    packet.sport = sport;
    packet.dport = dport;
    packet.tcp_flags = tcp_flags;
    if fragment {
        // A first fragment: its datagram's later fragments follow it.
        maps::remember_fragment(&frag, [sport, dport]);
    }
    Ok(Parsed::Packet(packet))
}
