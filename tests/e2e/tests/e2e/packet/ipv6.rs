//! Packet tests of IPv6 from pods (`tc_ingress`, which hands IPv6 to
//! `tc_ingress6` and its new flows to `tc_ingress6_new`): DNAT and reverse
//! NAT of TCP and UDP, extension headers, fragments, ICMPv6 rejects,
//! what passes and what is dropped; and of IPv6 from outside
//! (`tc_north_south`, which hands it to `tc_edge6`). Checksums are recomputed here from
//! scratch, over IPv6's pseudo-header (RFC 8200 §8.1).

use std::{collections::BTreeSet, net::Ipv6Addr};

use sluice_abi::{
    config::DataplaneConfig,
    proto,
    stats::{DropReason, Event},
};
use sluice_agent::{
    frontend::FrontendKey,
    model::{Desired, DesiredFrontend, External},
};

use super::{
    Harness, PodSide, TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT,
    builder::{ACK, CLIENT_MAC, HOST_MAC, SYN, TCP, UDP, fold, sum},
    harness::{Hook, Loaded},
    privileged,
};

const CLIENT6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x244, 1, 0, 0, 0, 0, 2);
const VIP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x96, 0, 0, 0, 0, 0, 0xa);
const EMPTY6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x96, 0, 0, 0, 0, 0, 0x14);
const B6: [Ipv6Addr; 3] = [
    Ipv6Addr::new(0xfd00, 0x244, 1, 0, 0, 0, 0, 0x10),
    Ipv6Addr::new(0xfd00, 0x244, 1, 0, 0, 0, 0, 0x11),
    Ipv6Addr::new(0xfd00, 0x244, 1, 0, 0, 0, 0, 0x12),
];
const ICMPV6: u8 = 58;
const HOP_BY_HOP: u8 = 0;
const FRAGMENT: u8 = 44;

/// An IPv6 packet to build.
#[derive(Clone)]
struct Spec6 {
    src: (Ipv6Addr, u16),
    dst: (Ipv6Addr, u16),
    proto: u8,
    tcp_flags: u8,
    payload: Vec<u8>,
    /// An 8-byte hop-by-hop options header (a `PadN` option) first.
    hop_by_hop: bool,
}

impl Default for Spec6 {
    fn default() -> Self {
        Self {
            src: (CLIENT6, 40000),
            dst: (VIP6, 80),
            proto: TCP,
            tcp_flags: SYN,
            payload: Vec::new(),
            hop_by_hop: false,
        }
    }
}

fn pseudo6(src: Ipv6Addr, dst: Ipv6Addr, next: u8, len: usize) -> u32 {
    sum(&src.octets())
        + sum(&dst.octets())
        + sum(&u32::try_from(len).unwrap().to_be_bytes())
        + u32::from(next)
}

/// The TCP or UDP header and payload of `spec`, its checksum computed.
fn l4(spec: &Spec6) -> Vec<u8> {
    let mut l4 = Vec::new();
    l4.extend_from_slice(&spec.src.1.to_be_bytes());
    l4.extend_from_slice(&spec.dst.1.to_be_bytes());
    if spec.proto == TCP {
        l4.extend_from_slice(&1000u32.to_be_bytes());
        l4.extend_from_slice(&0u32.to_be_bytes());
        l4.push(5 << 4);
        l4.push(spec.tcp_flags);
        l4.extend_from_slice(&64240u16.to_be_bytes());
        l4.extend_from_slice(&[0, 0, 0, 0]);
    } else {
        let len = u16::try_from(8 + spec.payload.len()).unwrap();
        l4.extend_from_slice(&len.to_be_bytes());
        l4.extend_from_slice(&[0, 0]);
    }
    l4.extend_from_slice(&spec.payload);
    let at = if spec.proto == TCP { 16 } else { 6 };
    let check = !fold(pseudo6(spec.src.0, spec.dst.0, spec.proto, l4.len()) + sum(&l4));
    let check = if spec.proto == UDP && check == 0 {
        0xffff
    } else {
        check
    };
    l4[at..at + 2].copy_from_slice(&check.to_be_bytes());
    l4
}

/// Ethernet, the IPv6 header (next header `next`) and `rest`.
fn frame6(src: Ipv6Addr, dst: Ipv6Addr, next: u8, rest: &[u8]) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&HOST_MAC);
    f.extend_from_slice(&CLIENT_MAC);
    f.extend_from_slice(&0x86ddu16.to_be_bytes());
    f.extend_from_slice(&[0x60, 0, 0, 0]);
    f.extend_from_slice(&u16::try_from(rest.len()).unwrap().to_be_bytes());
    f.push(next);
    f.push(64);
    f.extend_from_slice(&src.octets());
    f.extend_from_slice(&dst.octets());
    f.extend_from_slice(rest);
    f
}

fn build6(spec: &Spec6) -> Vec<u8> {
    let l4 = l4(spec);
    if spec.hop_by_hop {
        // Next header, length 0 (8 bytes), a PadN option of 4 bytes.
        let mut rest = vec![spec.proto, 0, 1, 4, 0, 0, 0, 0];
        rest.extend_from_slice(&l4);
        frame6(spec.src.0, spec.dst.0, HOP_BY_HOP, &rest)
    } else {
        frame6(spec.src.0, spec.dst.0, spec.proto, &l4)
    }
}

/// `spec`'s datagram as fragments of `chunk` bytes (a multiple of 8).
fn fragments6(spec: &Spec6, chunk: usize, id: u32) -> Vec<Vec<u8>> {
    let l4 = l4(spec);
    let pieces: Vec<&[u8]> = l4.chunks(chunk).collect();
    let last = pieces.len() - 1;
    pieces
        .iter()
        .enumerate()
        .map(|(i, piece)| {
            let offset = u16::try_from(i * chunk).unwrap();
            let word = offset | u16::from(i != last);
            let mut rest = vec![spec.proto, 0];
            rest.extend_from_slice(&word.to_be_bytes());
            rest.extend_from_slice(&id.to_be_bytes());
            rest.extend_from_slice(piece);
            frame6(spec.src.0, spec.dst.0, FRAGMENT, &rest)
        })
        .collect()
}

/// What a frame the program wrote holds, its L4 checksum checked.
#[derive(Debug, PartialEq, Eq)]
struct Seen6 {
    src: (Ipv6Addr, u16),
    dst: (Ipv6Addr, u16),
    proto: u8,
}

fn addrs(frame: &[u8]) -> (Ipv6Addr, Ipv6Addr) {
    let at = |o: usize| Ipv6Addr::from(<[u8; 16]>::try_from(&frame[o..o + 16]).unwrap());
    (at(22), at(38))
}

/// Parses an unfragmented frame (a hop-by-hop header allowed) and checks
/// its TCP or UDP checksum.
fn parse6_checked(frame: &[u8]) -> Seen6 {
    assert_eq!(&frame[12..14], &[0x86, 0xdd]);
    let (src, dst) = addrs(frame);
    let (mut next, mut at) = (frame[20], 54);
    if next == HOP_BY_HOP {
        next = frame[at];
        at += (usize::from(frame[at + 1]) + 1) * 8;
    }
    let l4 = &frame[at..];
    assert_eq!(
        fold(pseudo6(src, dst, next, l4.len()) + sum(l4)),
        0xffff,
        "L4 checksum of {src} -> {dst}"
    );
    let port = |o: usize| u16::from_be_bytes([l4[o], l4[o + 1]]);
    Seen6 {
        src: (src, port(0)),
        dst: (dst, port(2)),
        proto: next,
    }
}

impl Harness {
    /// IPv6 frontends and their backends, with the ClusterIPs' markers.
    fn set6(&mut self, frontends: &[(FrontendKey, Vec<(Ipv6Addr, u16)>)]) {
        let mut desired = Desired::default();
        for (key, backends) in frontends {
            desired.cluster_ips.insert(key.addr);
            desired.frontends.insert(
                *key,
                DesiredFrontend {
                    name: format!("test/{}", key.addr),
                    backends: backends.iter().map(|&(a, p)| (a.into(), p)).collect(),
                    ..DesiredFrontend::default()
                },
            );
        }
        self.program(&desired);
    }

    /// `web` on `VIP6` (80/TCP, 53/UDP) with three backends, and `EMPTY6`
    /// without endpoints.
    fn web6() -> Self {
        Self::web6_with(DataplaneConfig::default())
    }

    fn web6_with(config: DataplaneConfig) -> Self {
        let mut h = Self::load_sized(config, sluice_abi::maps::DEFAULT_CONNTRACK_SIZE);
        h.set6(&[
            (
                FrontendKey::new(VIP6, 80, proto::TCP),
                B6.iter().map(|b| (*b, 8080)).collect(),
            ),
            (
                FrontendKey::new(VIP6, 53, proto::UDP),
                B6.iter().map(|b| (*b, 5353)).collect(),
            ),
            (FrontendKey::new(EMPTY6, 80, proto::TCP), Vec::new()),
            (FrontendKey::new(EMPTY6, 53, proto::UDP), Vec::new()),
        ]);
        h
    }
}

#[test]
fn ipv6_tcp_and_udp_are_dnated_and_their_replies_reverse_natted_with_valid_checksums() {
    if !privileged(
        "ipv6_tcp_and_udp_are_dnated_and_their_replies_reverse_natted_with_valid_checksums",
    ) {
        return;
    }
    let h = Harness::web6();
    for (proto, port, target) in [(TCP, 80, 8080), (UDP, 53, 5353)] {
        let spec = Spec6 {
            dst: (VIP6, port),
            proto,
            payload: if proto == UDP {
                b"query".to_vec()
            } else {
                Vec::new()
            },
            ..Spec6::default()
        };
        let (verdict, out) = h.run(&build6(&spec));
        assert_eq!(verdict, TC_ACT_OK);
        let seen = parse6_checked(&out);
        assert_eq!(seen.src, spec.src, "the source is untouched");
        assert!(B6.contains(&seen.dst.0), "DNAT to a backend: {seen:?}");
        assert_eq!((seen.dst.1, seen.proto), (target, proto));
        // The flow keeps its backend.
        let again = parse6_checked(&h.run(&build6(&spec)).1);
        assert_eq!(again.dst, seen.dst);
        // The backend's reply comes from the ClusterIP.
        let reply = Spec6 {
            src: seen.dst,
            dst: spec.src,
            proto,
            tcp_flags: SYN | ACK,
            payload: spec.payload.clone(),
            hop_by_hop: false,
        };
        let (verdict, out) = h.run(&build6(&reply));
        assert_eq!(verdict, TC_ACT_OK);
        let back = parse6_checked(&out);
        assert_eq!((back.src, back.dst), ((VIP6, port), spec.src));
    }
    assert_eq!(h.events(Event::NewFlow), 2);
    assert_eq!(h.events(Event::Reply), 2);
}

#[test]
fn ipv6_extension_headers_are_walked_and_later_fragments_follow_their_first() {
    if !privileged("ipv6_extension_headers_are_walked_and_later_fragments_follow_their_first") {
        return;
    }
    let h = Harness::web6();
    let spec = Spec6 {
        hop_by_hop: true,
        ..Spec6::default()
    };
    let (verdict, out) = h.run(&build6(&spec));
    assert_eq!(verdict, TC_ACT_OK);
    let seen = parse6_checked(&out);
    assert!(B6.contains(&seen.dst.0), "DNAT behind a hop-by-hop header");
    assert_eq!(out[54..56], [TCP, 0], "the extension header stays");

    // A 3,000-byte datagram in fragments of 1,232: the first has the
    // ports, the others follow it to the same backend.
    let spec = Spec6 {
        dst: (VIP6, 53),
        proto: UDP,
        payload: (0..3000u32).map(|i| (i % 251) as u8).collect(),
        ..Spec6::default()
    };
    let frags = fragments6(&spec, 1232, 7);
    assert_eq!(frags.len(), 3);
    let mut backend = None;
    let mut l4 = Vec::new();
    for f in &frags {
        let (verdict, out) = h.run(f);
        assert_eq!(verdict, TC_ACT_OK);
        let (src, dst) = addrs(&out);
        assert_eq!(src, CLIENT6);
        assert!(B6.contains(&dst), "every fragment DNATed: {dst}");
        assert_eq!(*backend.get_or_insert(dst), dst, "to one backend");
        assert_eq!(out.len(), f.len());
        l4.extend_from_slice(&out[62..]);
    }
    // Reassembled, the datagram's checksum holds for its new destination.
    let dst = backend.unwrap();
    assert_eq!(
        fold(pseudo6(CLIENT6, dst, UDP, l4.len()) + sum(&l4)),
        0xffff
    );
    assert_eq!(u16::from_be_bytes([l4[2], l4[3]]), 5353);
    assert_eq!(h.events(Event::FragmentFollowed), 2);

    // A later fragment whose first was never seen: dropped, counted.
    let lost = fragments6(&spec, 1232, 8);
    assert_eq!(h.run(&lost[1]).0, TC_ACT_SHOT);
    assert_eq!(h.drops(DropReason::Fragment), 1);
}

#[test]
fn an_ipv6_service_without_endpoints_answers_icmpv6_port_unreachable() {
    if !privileged("an_ipv6_service_without_endpoints_answers_icmpv6_port_unreachable") {
        return;
    }
    let h = Harness::web6();
    for (proto, port) in [(TCP, 80), (UDP, 53)] {
        let original = build6(&Spec6 {
            dst: (EMPTY6, port),
            proto,
            ..Spec6::default()
        });
        let (verdict, out) = h.run(&original);
        assert_eq!(verdict, TC_ACT_REDIRECT, "back out of its interface");
        assert_eq!((&out[0..6], &out[6..12]), (&CLIENT_MAC[..], &HOST_MAC[..]));
        assert_eq!(out[20], ICMPV6);
        let (src, dst) = addrs(&out);
        assert_eq!((src, dst), (EMPTY6, CLIENT6), "from the address tried");
        let icmp = &out[54..];
        assert_eq!(
            usize::from(u16::from_be_bytes([out[18], out[19]])),
            icmp.len()
        );
        assert_eq!((icmp[0], icmp[1]), (1, 4), "port unreachable");
        assert_eq!(
            fold(pseudo6(src, dst, ICMPV6, icmp.len()) + sum(icmp)),
            0xffff,
            "ICMPv6 checksum"
        );
        assert_eq!(
            icmp[8..],
            original[14..14 + 48],
            "the header and the ports quoted"
        );
    }
    assert_eq!(h.drops(DropReason::NoEndpoints), 2);
    assert_eq!(h.events(Event::RejectSent), 2);
}

#[test]
fn icmpv6_passes_untouched_and_sources_not_routed_through_the_pod_are_dropped() {
    if !privileged("icmpv6_passes_untouched_and_sources_not_routed_through_the_pod_are_dropped") {
        return;
    }
    let h = Harness::web6();
    // A neighbour solicitation (135) and an echo request (128).
    for kind in [135u8, 128] {
        let body = [kind, 0, 0, 0, 0, 0, 0, 0];
        let frame = frame6(CLIENT6, VIP6, ICMPV6, &body);
        assert_eq!(h.run(&frame), (TC_ACT_OK, frame.clone()));
    }
    // Traffic between pods: not a Service.
    let direct = build6(&Spec6 {
        dst: (B6[0], 8080),
        ..Spec6::default()
    });
    assert_eq!(h.run(&direct), (TC_ACT_OK, direct.clone()));
    // From an address routed elsewhere (not through this pod's interface).
    let forged = build6(&Spec6 {
        src: (Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1), 40000),
        ..Spec6::default()
    });
    assert_eq!(h.run(&forged).0, TC_ACT_SHOT);
    assert_eq!(h.drops(DropReason::SpoofedSource), 1);
    assert_eq!(h.events(Event::NewFlow), 0);
}

/// An ICMPv6 error from `src` to `dst` quoting `quote` (from its IPv6
/// header on), its checksum computed.
fn icmp6_error(
    src: Ipv6Addr,
    dst: Ipv6Addr,
    kind: u8,
    code: u8,
    rest: [u8; 4],
    quote: &[u8],
) -> Vec<u8> {
    let mut msg = vec![kind, code, 0, 0];
    msg.extend_from_slice(&rest);
    msg.extend_from_slice(quote);
    let check = !fold(pseudo6(src, dst, ICMPV6, msg.len()) + sum(&msg));
    msg[2..4].copy_from_slice(&check.to_be_bytes());
    frame6(src, dst, ICMPV6, &msg)
}

/// The ICMPv6 message of `frame` after its checksum is checked: the
/// error's addresses, its type and code, and the quote parsed (its own
/// checksum checked too).
fn parse_icmp6_checked(frame: &[u8]) -> (Ipv6Addr, Ipv6Addr, u8, u8, Seen6) {
    assert_eq!(frame[20], ICMPV6);
    let (src, dst) = addrs(frame);
    let msg = &frame[54..];
    assert_eq!(
        fold(pseudo6(src, dst, ICMPV6, msg.len()) + sum(msg)),
        0xffff,
        "ICMPv6 checksum"
    );
    // The quote as a frame of its own, to check its L4 checksum.
    let mut quote = frame[..14].to_vec();
    quote.extend_from_slice(&msg[8..]);
    (src, dst, msg[0], msg[1], parse6_checked(&quote))
}

#[test]
fn icmpv6_errors_about_translated_flows_are_translated_both_ways() {
    if !privileged("icmpv6_errors_about_translated_flows_are_translated_both_ways") {
        return;
    }
    let h = Harness::web6();
    let query = Spec6 {
        dst: (VIP6, 53),
        proto: UDP,
        payload: b"query".to_vec(),
        ..Spec6::default()
    };
    let sent = h.run(&build6(&query)).1;
    let backend = parse6_checked(&sent).dst;

    // The backend has no listener: its port-unreachable quotes the query
    // as it arrived (to the backend), and goes to the client.
    let unreachable = icmp6_error(backend.0, CLIENT6, 1, 4, [0; 4], &sent[14..]);
    let (verdict, out) = h.run(&unreachable);
    assert_eq!(verdict, TC_ACT_OK);
    let (src, dst, kind, code, quoted) = parse_icmp6_checked(&out);
    assert_eq!((kind, code), (1, 4));
    assert_eq!(
        (src, dst),
        (VIP6, CLIENT6),
        "from the address the client tried"
    );
    assert_eq!(
        (quoted.src, quoted.dst),
        (query.src, (VIP6, 53)),
        "the query as sent"
    );

    // The client's Packet Too Big about a reply (VIP6 -> client, as it
    // arrived): to the backend, about what the backend sent.
    let reply = Spec6 {
        src: backend,
        dst: query.src,
        proto: UDP,
        payload: vec![7; 1400],
        ..Spec6::default()
    };
    let arrived = h.run(&build6(&reply)).1;
    assert_eq!(parse6_checked(&arrived).src, (VIP6, 53));
    let too_big = icmp6_error(
        CLIENT6,
        VIP6,
        2,
        0,
        1280u32.to_be_bytes(),
        &arrived[14..14 + 1232],
    );
    let (verdict, out) = h.run(&too_big);
    assert_eq!(verdict, TC_ACT_OK);
    assert_eq!(out[20], ICMPV6);
    let (src, dst) = addrs(&out);
    assert_eq!((src, dst), (CLIENT6, backend.0), "to the backend");
    let msg = &out[54..];
    assert_eq!(
        fold(pseudo6(src, dst, ICMPV6, msg.len()) + sum(msg)),
        0xffff,
        "ICMPv6 checksum"
    );
    assert_eq!(
        (msg[0], &msg[4..8]),
        (2, &1280u32.to_be_bytes()[..]),
        "the MTU kept"
    );
    let (qsrc, qdst) = addrs(&[&out[..14], &msg[8..]].concat());
    assert_eq!(
        (qsrc, qdst),
        (backend.0, CLIENT6),
        "the reply as the backend sent it"
    );
    assert_eq!(u16::from_be_bytes([msg[48], msg[49]]), backend.1);
    assert_eq!(h.events(Event::IcmpError), 2);

    // An error about no flow of ours passes as it is.
    let stray = icmp6_error(
        B6[1],
        CLIENT6,
        1,
        4,
        [0; 4],
        &build6(&Spec6 {
            dst: (B6[1], 9999),
            proto: UDP,
            ..Spec6::default()
        })[14..],
    );
    assert_eq!(h.run(&stray), (TC_ACT_OK, stray.clone()));
}

#[test]
fn with_an_ipv6_service_cidr_unallocated_addresses_and_unknown_ports_are_rejected() {
    if !privileged("with_an_ipv6_service_cidr_unallocated_addresses_and_unknown_ports_are_rejected")
    {
        return;
    }
    let unknown_port = build6(&Spec6 {
        dst: (VIP6, 81),
        ..Spec6::default()
    });
    let unallocated = build6(&Spec6 {
        dst: (Ipv6Addr::new(0xfd00, 0x96, 0, 0, 0, 0, 0, 0x99), 80),
        ..Spec6::default()
    });
    let outside = build6(&Spec6 {
        dst: (Ipv6Addr::new(0xfd00, 0x97, 0, 0, 0, 0, 0, 1), 80),
        ..Spec6::default()
    });
    // Without the range, all three pass as they are.
    let h = Harness::web6();
    for frame in [&unknown_port, &unallocated, &outside] {
        assert_eq!(h.run(frame), (TC_ACT_OK, frame.clone()));
    }
    let config = DataplaneConfig::default()
        .with_service_cidr6(Ipv6Addr::new(0xfd00, 0x96, 0, 0, 0, 0, 0, 0), 108);
    let h = Harness::web6_with(config);
    for (frame, reason) in [
        (&unknown_port, DropReason::UnknownPort),
        (&unallocated, DropReason::UnallocatedIp),
    ] {
        let (verdict, out) = h.run(frame);
        assert_eq!(verdict, TC_ACT_REDIRECT, "{reason:?}");
        assert_eq!((out[20], out[54], out[55]), (ICMPV6, 1, 4), "{reason:?}");
        assert_eq!(h.drops(reason), 1);
    }
    assert_eq!(h.run(&outside), (TC_ACT_OK, outside.clone()));
}

/// The node's IPv6 address, a client and a router outside, and the
/// NodePorts of the edge tests.
const NODE6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x77, 0, 0, 0, 0, 0, 1);
const OUTSIDE6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x77, 0, 0, 0, 0, 0, 0x100);
const ROUTER6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x77, 0, 0, 0, 0, 0, 0xfe);
const NP: u16 = 30090;
const REMOTE_NP: u16 = 30091;
const EMPTY_NP: u16 = 30093;
/// A backend on another node, behind `OTHER_NODE6` on `ext0`.
const REMOTE6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x244, 2, 0, 0, 0, 0, 0x10);
const OTHER_NODE6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x77, 0, 0, 0, 0, 0, 2);

impl Harness {
    /// `tc_north_south` (`--xdp-mode tc`), whose IPv6 goes on to
    /// `tc_edge6`: `NODE6` serves NodePorts; NodePort `NP`/TCP goes to
    /// `B6[0]`:8080, `REMOTE_NP`/TCP to `REMOTE6`:8080 on the other node
    /// (behind `ext0`, an external interface whose SNAT address is `NODE6`),
    /// `EMPTY_NP`/TCP has no endpoints.
    fn edge6() -> Self {
        let config = DataplaneConfig::default().with_nodeport_range(30000, 32767);
        let loaded = Loaded::new(
            Hook::TcEdge,
            &config,
            sluice_abi::maps::DEFAULT_CONNTRACK_SIZE,
        );
        let mut h = Self {
            loaded,
            side: PodSide::new(),
        };
        h.maps
            .set_node_addrs(&BTreeSet::from([NODE6.into()]), |_| true)
            .unwrap();
        let ns = &h.side.ns;
        let other = OTHER_NODE6.to_string();
        for args in [
            &[
                "link", "add", "ext0", "type", "veth", "peer", "name", "wire0",
            ][..],
            &["link", "set", "ext0", "up"],
            &["link", "set", "wire0", "up"],
            &["-6", "addr", "add", "fd00:77::1/64", "dev", "ext0", "nodad"],
            &[
                "-6",
                "route",
                "add",
                "fd00:244:2::/64",
                "via",
                &other,
                "dev",
                "ext0",
            ],
            &[
                "-6",
                "neigh",
                "add",
                &other,
                "lladdr",
                "02:00:00:00:00:03",
                "dev",
                "ext0",
                "nud",
                "permanent",
            ],
        ] {
            ns.ip(args).unwrap();
        }
        // SAFETY: if_nametoindex(3) reads a NUL-terminated string.
        let ext0 = ns
            .run(|| unsafe { libc::if_nametoindex(c"ext0".as_ptr()) })
            .unwrap();
        h.maps
            .set_ext_if(ext0, Some(std::net::Ipv4Addr::new(192, 168, 77, 1)))
            .unwrap();
        h.maps.set_ext_if6(ext0, Some(NODE6)).unwrap();
        h.program(&edge6_desired(&[]));
        h
    }

    /// `edge6` with `xdp_ingress` and its tail calls loaded, and the
    /// client's neighbour entry; and `ext0`'s index, for `run_xdp`.
    fn edge6_xdp() -> (Self, u32) {
        let mut h = Self::edge6();
        h.loaded.load_xdp();
        let ns = &h.side.ns;
        ns.ip(&[
            "-6",
            "neigh",
            "add",
            &OUTSIDE6.to_string(),
            "lladdr",
            "02:00:00:00:00:04",
            "dev",
            "ext0",
            "nud",
            "permanent",
        ])
        .unwrap();
        // SAFETY: if_nametoindex(3) reads a NUL-terminated string.
        let ext0 = ns
            .run(|| unsafe { libc::if_nametoindex(c"ext0".as_ptr()) })
            .unwrap();
        (h, ext0)
    }
}

/// `edge6`'s NodePorts, and `extra` ones (TCP, to port 8080 of their
/// backends).
fn edge6_desired(extra: &[(u16, &[Ipv6Addr])]) -> Desired {
    let mut desired = Desired::default();
    let base: [(u16, &[Ipv6Addr]); 3] = [(NP, &B6[..1]), (REMOTE_NP, &[REMOTE6]), (EMPTY_NP, &[])];
    for &(port, backends) in base.iter().chain(extra) {
        desired.frontends.insert(
            FrontendKey::node_port6(port, proto::TCP),
            DesiredFrontend {
                name: format!("test/np{port}"),
                backends: backends.iter().map(|&b| (b.into(), 8080)).collect(),
                external: External::Serve,
                ..DesiredFrontend::default()
            },
        );
    }
    desired
}

#[test]
fn ipv6_from_outside_is_dnated_its_packet_too_big_translated_and_forgeries_dropped() {
    if !privileged(
        "ipv6_from_outside_is_dnated_its_packet_too_big_translated_and_forgeries_dropped",
    ) {
        return;
    }
    let h = Harness::edge6();
    let syn = Spec6 {
        src: (OUTSIDE6, 41000),
        dst: (NODE6, NP),
        ..Spec6::default()
    };
    let (verdict, out) = h.run(&build6(&syn));
    assert_eq!(
        verdict, TC_ACT_OK,
        "to the stack, which routes it to the pod"
    );
    let seen = parse6_checked(&out);
    assert_eq!((seen.src, seen.dst), (syn.src, (B6[0], 8080)), "DNAT only");
    // The flow keeps its backend.
    let ack = Spec6 {
        tcp_flags: ACK,
        ..syn.clone()
    };
    assert_eq!(parse6_checked(&h.run(&build6(&ack)).1).dst, (B6[0], 8080));
    assert_eq!(h.events(Event::NewFlow), 1);
    // The first packet too: once its flow is made, it is translated as the
    // flow's next packets are.
    assert_eq!(h.events(Event::Established), 2);

    // A router's Packet Too Big about a reply (NODE6:NP -> client, as the
    // pod's interface sent it out): to the backend, about what it sent.
    let reply = build6(&Spec6 {
        src: (NODE6, NP),
        dst: syn.src,
        tcp_flags: ACK,
        payload: vec![7; 1400],
        ..Spec6::default()
    });
    let too_big = icmp6_error(
        ROUTER6,
        NODE6,
        2,
        0,
        1280u32.to_be_bytes(),
        &reply[14..14 + 1232],
    );
    let (verdict, out) = h.run(&too_big);
    assert_eq!(verdict, TC_ACT_OK);
    let (src, dst) = addrs(&out);
    assert_eq!((src, dst), (ROUTER6, B6[0]), "to the backend");
    let msg = &out[54..];
    assert_eq!(
        fold(pseudo6(src, dst, ICMPV6, msg.len()) + sum(msg)),
        0xffff,
        "ICMPv6 checksum"
    );
    assert_eq!((msg[0], &msg[4..8]), (2, &1280u32.to_be_bytes()[..]));
    let (qsrc, qdst) = addrs(&[&out[..14], &msg[8..]].concat());
    assert_eq!(
        (qsrc, qdst),
        (B6[0], OUTSIDE6),
        "the reply as the backend sent it"
    );
    assert_eq!(u16::from_be_bytes([msg[48], msg[49]]), 8080);
    assert_eq!(h.events(Event::IcmpError), 1);

    // No endpoints: ICMPv6 port-unreachable from the node's address.
    let empty = build6(&Spec6 {
        dst: (NODE6, EMPTY_NP),
        ..syn.clone()
    });
    let (verdict, out) = h.run(&empty);
    assert_eq!(verdict, TC_ACT_REDIRECT, "back out of its interface");
    let (src, dst) = addrs(&out);
    let msg = &out[54..];
    assert_eq!((src, dst, msg[0], msg[1]), (NODE6, OUTSIDE6, 1, 4));
    assert_eq!(
        fold(pseudo6(src, dst, ICMPV6, msg.len()) + sum(msg)),
        0xffff,
        "ICMPv6 checksum"
    );
    assert_eq!(
        msg[8..],
        empty[14..14 + 48],
        "the header and the ports quoted"
    );
    assert_eq!(h.drops(DropReason::NoEndpoints), 1);

    // From outside with the node's own address as source: forged.
    let forged = build6(&Spec6 {
        src: (NODE6, 41001),
        ..syn
    });
    assert_eq!(h.run(&forged).0, TC_ACT_SHOT);
    assert_eq!(h.drops(DropReason::ForgedSource), 1);
    assert_eq!(h.events(Event::NewFlow), 1);
}

#[test]
fn ipv6_from_outside_to_a_backend_on_another_node_is_snated_and_its_replies_reversed() {
    if !privileged(
        "ipv6_from_outside_to_a_backend_on_another_node_is_snated_and_its_replies_reversed",
    ) {
        return;
    }
    let h = Harness::edge6();
    let syn = Spec6 {
        src: (OUTSIDE6, 41000),
        dst: (NODE6, REMOTE_NP),
        ..Spec6::default()
    };
    let sent = build6(&syn);
    let (verdict, out) = h.run(&sent);
    assert_eq!(verdict, TC_ACT_REDIRECT, "straight to the next hop");
    let seen = parse6_checked(&out);
    assert_eq!(
        seen.dst,
        (REMOTE6, 8080),
        "DNAT to the other node's backend"
    );
    assert_eq!(seen.src.0, NODE6, "SNAT to the interface's IPv6 address");
    assert!(
        seen.src.1 >= 61_000,
        "a port of the SNAT range: {}",
        seen.src.1
    );
    assert_eq!(out[21], sent[21] - 1, "one hop");
    assert_eq!(h.events(Event::Snat), 1);

    // The backend's reply, to the SNAT address: back to the client, from
    // the NodePort.
    let reply = Spec6 {
        src: (REMOTE6, 8080),
        dst: seen.src,
        tcp_flags: SYN | ACK,
        ..Spec6::default()
    };
    let (verdict, out) = h.run(&build6(&reply));
    assert_eq!(verdict, TC_ACT_REDIRECT);
    let back = parse6_checked(&out);
    assert_eq!((back.src, back.dst), ((NODE6, REMOTE_NP), syn.src));
    assert_eq!(h.events(Event::Reply), 1);

    // With its hop limit spent, the client hears so from the node, about
    // the packet it sent.
    let mut last_hop = build6(&Spec6 {
        src: (OUTSIDE6, 41001),
        ..syn
    });
    last_hop[21] = 1;
    let (verdict, out) = h.run(&last_hop);
    assert_eq!(verdict, TC_ACT_REDIRECT, "back out of its interface");
    let (src, dst) = addrs(&out);
    assert_eq!((src, dst, out[54], out[55]), (NODE6, OUTSIDE6, 3, 0));
    assert_eq!(h.drops(DropReason::TtlExceeded), 1);
}

/// XDP verdicts (`enum xdp_action`).
const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;

/// IPv6 flows from outside are created and translated in XDP
/// (`xdp_edge6` and its tail calls), from their first packet: a client's
/// SYN to the other node's backend DNATed, SNATed and sent back out with a
/// hop taken, the backend's SYN-ACK (its flow still in the new flows'
/// table) translated back to the client, the handshake's last ACK sent on;
/// then the flow's data each way. Checksums are checked independently.
/// Extension headers are TC's: XDP passes them untouched.
#[test]
fn ipv6_flows_from_outside_are_created_and_translated_in_xdp_with_valid_checksums() {
    if !privileged("ipv6_flows_from_outside_are_created_and_translated_in_xdp_with_valid_checksums")
    {
        return;
    }
    let (h, ext0) = Harness::edge6_xdp();
    let xdp = |frame: &[u8]| h.loaded.run_xdp(frame, ext0, &h.side.ns);

    let syn = Spec6 {
        src: (OUTSIDE6, 42000),
        dst: (NODE6, REMOTE_NP),
        ..Spec6::default()
    };
    let first = build6(&syn);
    let (verdict, out) = xdp(&first);
    assert_eq!(verdict, XDP_TX, "a new flow, made and sent on in XDP");
    let seen = parse6_checked(&out);
    assert_eq!(
        seen.dst,
        (REMOTE6, 8080),
        "DNAT to the other node's backend"
    );
    assert_eq!(seen.src.0, NODE6, "SNAT to the interface's IPv6 address");
    assert_eq!(out[21], first[21] - 1, "one hop");
    assert_eq!(out[..6], [2, 0, 0, 0, 0, 3], "to the other node's MAC");
    assert_eq!((h.events(Event::NewFlow), h.events(Event::Snat)), (1, 1));
    let snat = seen.src;
    let synack = Spec6 {
        src: (REMOTE6, 8080),
        dst: snat,
        tcp_flags: SYN | ACK,
        ..Spec6::default()
    };
    let (verdict, out) = xdp(&build6(&synack));
    assert_eq!(verdict, XDP_TX, "the SYN-ACK, its flow not yet established");
    let back = parse6_checked(&out);
    assert_eq!((back.src, back.dst), ((NODE6, REMOTE_NP), syn.src));
    assert_eq!(out[..6], [2, 0, 0, 0, 0, 4], "to the client's MAC");
    let ack = build6(&Spec6 {
        tcp_flags: ACK,
        ..syn.clone()
    });
    let (verdict, out) = xdp(&ack);
    assert_eq!(verdict, XDP_TX);
    assert_eq!(parse6_checked(&out).dst, (REMOTE6, 8080));
    assert_eq!(
        h.events(Event::CtEstablished),
        1,
        "the handshake done: the flow moved to the established flows' table"
    );

    let data = Spec6 {
        tcp_flags: ACK,
        payload: b"to the backend".to_vec(),
        ..syn.clone()
    };
    let sent = build6(&data);
    let (verdict, out) = xdp(&sent);
    assert_eq!(verdict, XDP_TX, "back out of ext0, to the other node");
    let seen = parse6_checked(&out);
    assert_eq!((seen.src, seen.dst), (snat, (REMOTE6, 8080)));
    assert_eq!(out[21], sent[21] - 1, "one hop");
    assert_eq!(out[..6], [2, 0, 0, 0, 0, 3], "to the other node's MAC");
    assert_eq!(&out[74..], b"to the backend");

    let reply = Spec6 {
        src: (REMOTE6, 8080),
        dst: snat,
        tcp_flags: ACK,
        payload: b"to the client".to_vec(),
        ..Spec6::default()
    };
    let (verdict, out) = xdp(&build6(&reply));
    assert_eq!(verdict, XDP_TX);
    let back = parse6_checked(&out);
    assert_eq!((back.src, back.dst), ((NODE6, REMOTE_NP), syn.src));
    assert_eq!(out[..6], [2, 0, 0, 0, 0, 4], "to the client's MAC");
    assert_eq!(h.events(Event::XdpTx), 5, "every packet of the flow");

    // Extension headers are TC's to walk.
    let hop_by_hop = build6(&Spec6 {
        hop_by_hop: true,
        ..data
    });
    assert_eq!(xdp(&hop_by_hop), (XDP_PASS, hop_by_hop.clone()));
}

/// Every node picks the same backend for an IPv6 flow from outside,
/// through its Maglev table: one node in TC, the other in XDP and
/// programmed with another frontend first (so its backends have other
/// ids); over 64 flows both backends are used.
#[test]
fn ipv6_flows_from_outside_get_the_same_backend_on_every_node_through_maglev() {
    if !privileged("ipv6_flows_from_outside_get_the_same_backend_on_every_node_through_maglev") {
        return;
    }
    let maglev_np: u16 = 30095;
    let two = [REMOTE6, Ipv6Addr::new(0xfd00, 0x244, 2, 0, 0, 0, 0, 0x20)];
    let mut a = Harness::edge6();
    a.program(&edge6_desired(&[(maglev_np, &two)]));
    let (mut b, ext0) = Harness::edge6_xdp();
    let other = [Ipv6Addr::new(0xfd00, 0x244, 2, 0, 0, 0, 0, 5)];
    b.program(&edge6_desired(&[(30096, &other)]));
    b.program(&edge6_desired(&[(30096, &other), (maglev_np, &two)]));
    let mut spread = BTreeSet::new();
    for sport in 41000..41064 {
        let frame = build6(&Spec6 {
            src: (OUTSIDE6, sport),
            dst: (NODE6, maglev_np),
            ..Spec6::default()
        });
        let (_, out_a) = a.run(&frame);
        let (verdict, out_b) = b.loaded.run_xdp(&frame, ext0, &b.side.ns);
        assert_eq!(verdict, XDP_TX);
        let (da, db) = (parse6_checked(&out_a).dst, parse6_checked(&out_b).dst);
        assert_eq!(da, db, "flow from port {sport}");
        spread.insert(da);
    }
    assert_eq!(spread.len(), 2, "flows spread over both backends");
    assert_eq!(
        (a.events(Event::MaglevMiss), b.events(Event::MaglevMiss)),
        (0, 0)
    );
}

/// In XDP, a new IPv6 flow from outside to a backend on this node is
/// DNATed and passed to the stack, marked for `tc_external`; one to a
/// frontend without endpoints is passed untouched, for TC to REJECT; a
/// segment of no flow that cannot start one is dropped (`ct_invalid`).
#[test]
fn ipv6_new_flows_from_outside_to_a_backend_here_are_dnated_in_xdp() {
    if !privileged("ipv6_new_flows_from_outside_to_a_backend_here_are_dnated_in_xdp") {
        return;
    }
    let (h, ext0) = Harness::edge6_xdp();
    let xdp = |frame: &[u8]| h.loaded.run_xdp(frame, ext0, &h.side.ns);
    // To a backend here: DNATed, for the stack to route to the pod.
    let local = Spec6 {
        src: (OUTSIDE6, 42001),
        dst: (NODE6, NP),
        ..Spec6::default()
    };
    let (verdict, out) = xdp(&build6(&local));
    assert_eq!(verdict, XDP_PASS);
    // The run's output starts at the metadata, which says XDP translated
    // the packet (so `tc_external` lets it by).
    let (meta, out) = out.split_at(4);
    assert_eq!(meta, sluice_abi::config::XDP_HANDOFF.to_ne_bytes());
    let seen = parse6_checked(out);
    assert_eq!(
        (seen.src, seen.dst),
        (local.src, (B6[0], 8080)),
        "DNAT only"
    );
    assert_eq!(h.events(Event::NewFlow), 1);

    // Without endpoints: TC's REJECT.
    let empty = build6(&Spec6 {
        src: (OUTSIDE6, 42002),
        dst: (NODE6, EMPTY_NP),
        ..Spec6::default()
    });
    assert_eq!(xdp(&empty), (XDP_PASS, empty.clone()));
    // A segment of no flow, which cannot start one.
    let stray = build6(&Spec6 {
        src: (OUTSIDE6, 42003),
        dst: (NODE6, REMOTE_NP),
        tcp_flags: ACK,
        ..Spec6::default()
    });
    assert_eq!(xdp(&stray).0, XDP_DROP);
    assert_eq!(h.drops(DropReason::CtInvalid), 1);
    assert_eq!(h.events(Event::NewFlow), 1);
}
