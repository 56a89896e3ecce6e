//! The parse of one IPv6 TCP/UDP packet: the fixed header, then at most
//! `MAX_EXT_HEADERS` extension headers (hop-by-hop, routing, destination
//! options, fragment), then the ports. A fragment header is handled as
//! IPv4's fragments are: the first fragment's ports are remembered for the
//! later ones (`FragKey6`).

use network_types::ip::Ipv6Hdr;
use sluice_abi::{
    addr::In6,
    proto,
    stats::{DropReason, Event},
};

use super::{Frame, IP_OFF, Packet, Parsed};
use crate::{
    maps::{self, FragKey6},
    stats,
};

/// Offsets inside the IPv6 header.
pub const IP6_SADDR_OFF: usize = IP_OFF + 8;
pub const IP6_DADDR_OFF: usize = IP_OFF + 24;

/// Extension headers (RFC 8200 §4) and ICMPv6's next-header value.
const HOP_BY_HOP: u8 = 0;
const ROUTING: u8 = 43;
const FRAGMENT: u8 = 44;
const DEST_OPTS: u8 = 60;
pub const ICMPV6: u8 = 58;

/// How many extension headers are walked before the packet is passed as
/// not ours: a bound for the verifier, and more than real traffic has.
const MAX_EXT_HEADERS: usize = 4;

/// ICMPv6 error types (RFC 4443), which quote the packet they are about;
/// everything else (neighbour discovery, echo, MLD) passes untouched.
pub const ICMP6_DEST_UNREACH: u8 = 1;
pub const ICMP6_PACKET_TOO_BIG: u8 = 2;
pub const ICMP6_TIME_EXCEEDED: u8 = 3;
pub const ICMP6_PARAM_PROBLEM: u8 = 4;

/// Parses the IPv6 header, its extension headers and the TCP/UDP ports;
/// the frame is known to be IPv6 (its Ethernet type).
#[inline(always)]
pub fn parse(ctx: &impl Frame) -> Result<Parsed<In6>, DropReason> {
    // Copied out as words: the addresses are then moved a word at a time
    // (read in place, at alignment 1, each is 16 byte loads and as many
    // registers, which spill).
    let h: [u32; 10] = ctx.read(IP_OFF).ok_or(DropReason::MalformedIp)?;
    let [w0, w1, s0, s1, s2, s3, d0, d1, d2, d3] = h;
    let [vcf, ..] = w0.to_ne_bytes();
    let [l0, l1, mut next, hop_limit] = w1.to_ne_bytes();
    let payload_len = [l0, l1];
    let saddr = In6([s0, s1, s2, s3]);
    let daddr = In6([d0, d1, d2, d3]);
    if vcf >> 4 != 6 {
        // Not IPv6 whatever its Ethernet type says: nothing to translate,
        // and the stack discards it.
        return Ok(Parsed::NotOurs);
    }
    let mut l4_off = IP_OFF + Ipv6Hdr::LEN;
    // The fragment header's offset-and-flags word and identification.
    let mut frag: Option<([u8; 2], [u8; 4])> = None;
    for _ in 0..MAX_EXT_HEADERS {
        if !matches!(next, HOP_BY_HOP | ROUTING | DEST_OPTS | FRAGMENT) {
            break;
        }
        // Every extension header is at least 8 bytes: next header, then
        // its length (in 8 bytes, less the first 8), or the fragment's
        // offset and id.
        let [nh, len, o0, o1, i0, i1, i2, i3] =
            ctx.read::<[u8; 8]>(l4_off).ok_or(DropReason::MalformedIp)?;
        if next == FRAGMENT {
            frag = Some(([o0, o1], [i0, i1, i2, i3]));
            l4_off += 8;
        } else {
            l4_off += (usize::from(len) + 1) * 8;
        }
        next = nh;
    }
    let icmp = next == ICMPV6;
    if next != proto::TCP && next != proto::UDP && !icmp {
        // Another protocol, ESP, or more extension headers than walked.
        return Ok(Parsed::NotOurs);
    }
    // The offset is in the high 13 bits, the more-fragments flag the low one.
    let (fragment, later, id) = match frag {
        Some((word, id)) => {
            let w = u16::from_be_bytes(word);
            (w & 0xfff9 != 0, w & 0xfff8 != 0, id)
        }
        None => (false, false, [0; 4]),
    };
    if fragment && icmp {
        return Ok(Parsed::NotOurs);
    }
    let mut packet = Packet {
        l4_off,
        ihl_bytes: l4_off - IP_OFF,
        saddr,
        daddr,
        sport: [0; 2],
        dport: [0; 2],
        proto: next,
        tcp_flags: 0,
        len: ctx.len(),
        tot_len: u16::from_be_bytes(payload_len).saturating_add(Ipv6Hdr::LEN as u16),
        // IPv6 routers never fragment: a packet too big is always answered.
        df: true,
        ttl: hop_limit,
        l4: !later,
    };
    let key = || FragKey6 {
        saddr,
        daddr,
        id,
        proto: next,
        _pad: [0; 3],
    };
    if later {
        // As IPv4's (`parse.rs`), written out: a shared function's
        // returned enum reaches the verifier with uninitialised bytes.
        if next != proto::UDP {
            return Ok(Parsed::Fragment { daddr });
        }
        let Some([sport, dport]) = maps::fragment_ports6(&key()) else {
            return Ok(Parsed::Fragment { daddr });
        };
        packet.sport = sport;
        packet.dport = dport;
        stats::event(Event::FragmentFollowed);
        return Ok(Parsed::Packet(packet));
    }
    if icmp {
        let Some([kind, ..]) = ctx.read::<[u8; 8]>(l4_off) else {
            return Ok(Parsed::NotOurs);
        };
        if !matches!(
            kind,
            ICMP6_DEST_UNREACH | ICMP6_PACKET_TOO_BIG | ICMP6_TIME_EXCEEDED | ICMP6_PARAM_PROBLEM
        ) {
            return Ok(Parsed::NotOurs);
        }
        return Ok(Parsed::IcmpError(packet));
    }
    let (sport, dport, tcp_flags) = super::ports(ctx, l4_off, next)?;
    packet.sport = sport;
    packet.dport = dport;
    packet.tcp_flags = tcp_flags;
    if fragment {
        maps::remember_fragment6(&key(), [sport, dport]);
    }
    Ok(Parsed::Packet(packet))
}
