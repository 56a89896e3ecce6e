//! Packet tests of the rewrites beyond DNAT: ICMP errors about translated
//! flows, from a pod (the error's destination and the packet it quotes
//! are translated back, and every checksum, the error's IPv4 header, the
//! ICMP checksum over the quote, the quoted IPv4 header and TCP or UDP
//! checksum, is recomputed independently in `builder`); hairpin SNAT;
//! and fragments, whose reassembled datagram's checksum is checked.

use std::net::Ipv4Addr;

use sluice_abi::{
    config::DataplaneConfig,
    proto,
    service::ServiceKey,
    stats::{DropReason, Event},
};

use super::{
    CLIENT, Harness, TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT, VIP,
    builder::{
        CLIENT_MAC, HOST_MAC, ICMP, SYN, Spec, TCP, UDP, build, fragments, icmp_error,
        parse_checked, parse_icmp_error, parse_quoted, reassemble,
    },
    privileged,
};

/// A router between the client and the backend (the node's own address
/// on the pods' side, say).
const ROUTER: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 1);
const PORT_UNREACH: (u8, u8, [u8; 4]) = (3, 3, [0; 4]);
/// Fragmentation needed, next-hop MTU 1280.
const FRAG_NEEDED: (u8, u8, [u8; 4]) = (3, 4, [0, 0, 0x05, 0x00]);
const TTL_EXCEEDED: (u8, u8, [u8; 4]) = (11, 0, [0; 4]);
/// The source of a pod's packets to itself through a Service.
const HAIRPIN: Ipv4Addr = Ipv4Addr::new(169, 254, 42, 1);

fn udp_query(sport: u16) -> Spec {
    Spec {
        src: (CLIENT, sport),
        dst: (VIP, 53),
        proto: UDP,
        payload: b"query".to_vec(),
        ..Spec::default()
    }
}

#[test]
fn a_backends_port_unreachable_reaches_the_client_as_from_the_cluster_ip() {
    if !privileged("a_backends_port_unreachable_reaches_the_client_as_from_the_cluster_ip") {
        return;
    }
    let h = Harness::web(DataplaneConfig::default());
    let (verdict, dnated) = h.run(&build(&udp_query(40100)));
    assert_eq!(verdict, TC_ACT_OK);
    let backend = parse_checked(&dnated).dst;

    // The backend has no listener: its error quotes the datagram it got.
    let error = icmp_error((backend.0, CLIENT), PORT_UNREACH, &dnated);
    let (verdict, out) = h.run(&error);
    assert_eq!(verdict, TC_ACT_OK, "to the client, through the stack");
    let (kind, code, src, dst, quote) = parse_icmp_error(&out);
    assert_eq!((kind, code), (3, 3));
    assert_eq!(src, VIP, "from the address the client sent to");
    assert_eq!(dst, CLIENT);
    let quoted = parse_quoted(&quote);
    assert_eq!(quoted.src, (CLIENT, 40100));
    assert_eq!(quoted.dst, (VIP, 53), "the datagram as the client sent it");
    assert_eq!(h.events(Event::IcmpError), 1);
}

#[test]
fn a_routers_errors_about_a_flow_are_translated_both_ways_and_keep_their_source() {
    if !privileged("a_routers_errors_about_a_flow_are_translated_both_ways_and_keep_their_source") {
        return;
    }
    let h = Harness::web(DataplaneConfig::default());
    let (_, dnated) = h.run(&build(&Spec {
        src: (CLIENT, 40101),
        ..Spec::default()
    }));
    let backend = parse_checked(&dnated).dst;

    // On the way to the backend: time exceeded, from the router.
    let (verdict, out) = h.run(&icmp_error((ROUTER, CLIENT), TTL_EXCEEDED, &dnated));
    assert_eq!(verdict, TC_ACT_OK);
    let (kind, _, src, dst, quote) = parse_icmp_error(&out);
    assert_eq!(kind, 11);
    assert_eq!((src, dst), (ROUTER, CLIENT), "the router is seen as itself");
    let quoted = parse_quoted(&quote);
    assert_eq!((quoted.src, quoted.dst), ((CLIENT, 40101), (VIP, 80)));

    // On the way back: the backend's SYN+ACK, reverse-NATed, is too big
    // for a link towards the client; the error goes to the backend.
    let (verdict, reply) = h.run(&build(&Spec {
        src: backend,
        dst: (CLIENT, 40101),
        tcp_flags: SYN | 0x10,
        ..Spec::default()
    }));
    assert_eq!(verdict, TC_ACT_OK);
    assert_eq!(parse_checked(&reply).src, (VIP, 80));
    let (verdict, out) = h.run(&icmp_error((ROUTER, VIP), FRAG_NEEDED, &reply));
    assert_eq!(verdict, TC_ACT_OK);
    let (kind, code, src, dst, quote) = parse_icmp_error(&out);
    assert_eq!((kind, code), (3, 4));
    assert_eq!(
        &out[14 + 20 + 4..14 + 20 + 8],
        &FRAG_NEEDED.2,
        "the MTU is kept"
    );
    assert_eq!((src, dst), (ROUTER, backend.0), "to the backend");
    let quoted = parse_quoted(&quote);
    assert_eq!(quoted.proto, TCP);
    assert_eq!(
        (quoted.src, quoted.dst),
        (backend, (CLIENT, 40101)),
        "the segment as the backend sent it"
    );
    assert_eq!(h.events(Event::IcmpError), 2);
}

#[test]
fn a_clients_port_unreachable_about_a_reply_reaches_the_backend() {
    if !privileged("a_clients_port_unreachable_about_a_reply_reaches_the_backend") {
        return;
    }
    let h = Harness::web(DataplaneConfig::default());
    let (_, dnated) = h.run(&build(&udp_query(40102)));
    let backend = parse_checked(&dnated).dst;
    let (_, reply) = h.run(&build(&Spec {
        src: backend,
        dst: (CLIENT, 40102),
        ..udp_query(0)
    }));
    // The client's socket is gone: it answers the reply's source.
    let (verdict, out) = h.run(&icmp_error((CLIENT, VIP), PORT_UNREACH, &reply));
    assert_eq!(verdict, TC_ACT_OK);
    let (_, _, src, dst, quote) = parse_icmp_error(&out);
    assert_eq!((src, dst), (CLIENT, backend.0));
    let quoted = parse_quoted(&quote);
    assert_eq!((quoted.src, quoted.dst), (backend, (CLIENT, 40102)));
}

#[test]
fn an_icmp_error_about_no_tracked_flow_passes_untouched() {
    if !privileged("an_icmp_error_about_no_tracked_flow_passes_untouched") {
        return;
    }
    let h = Harness::web(DataplaneConfig::default());
    let stray = build(&Spec {
        src: (CLIENT, 40103),
        dst: (Ipv4Addr::new(10, 244, 1, 10), 5353),
        proto: UDP,
        payload: b"x".to_vec(),
        ..Spec::default()
    });
    let error = icmp_error(
        (Ipv4Addr::new(10, 244, 1, 10), CLIENT),
        PORT_UNREACH,
        &stray,
    );
    let (verdict, out) = h.run(&error);
    assert_eq!(verdict, TC_ACT_OK);
    assert_eq!(out, error, "untouched");
    assert_eq!(out[14 + 9], ICMP);
    assert_eq!(h.events(Event::IcmpError), 0);
}

#[test]
fn a_pod_reaching_itself_through_a_service_is_snated_to_the_hairpin_address_and_sent_back_in() {
    if !privileged(
        "a_pod_reaching_itself_through_a_service_is_snated_to_the_hairpin_address_and_sent_back_in",
    ) {
        return;
    }
    let mut h = Harness::load_sized(
        DataplaneConfig::default(),
        sluice_abi::maps::DEFAULT_CONNTRACK_SIZE,
    );
    h.set(&[
        (ServiceKey::new(VIP, 80, proto::TCP), vec![(CLIENT, 8080)]),
        (ServiceKey::new(VIP, 53, proto::UDP), vec![(CLIENT, 5353)]),
    ]);
    for (proto, sport, port) in [(TCP, 40200, 8080), (UDP, 40201, 5353)] {
        let to = if proto == TCP { 80 } else { 53 };
        let spec = Spec {
            src: (CLIENT, sport),
            dst: (VIP, to),
            proto,
            payload: if proto == UDP {
                b"q".to_vec()
            } else {
                Vec::new()
            },
            ..Spec::default()
        };
        let (verdict, out) = h.run(&build(&spec));
        assert_eq!(verdict, TC_ACT_REDIRECT, "straight back into the pod");
        let seen = parse_checked(&out);
        assert_eq!(seen.dst, (CLIENT, port), "to itself");
        assert_eq!(seen.src.0, HAIRPIN, "from the hairpin address");
        assert!(
            (61_000..=65_535).contains(&seen.src.1),
            "a port of the SNAT range: {seen:?}"
        );
        assert_eq!(
            (seen.eth_dst, seen.eth_src),
            (CLIENT_MAC, HOST_MAC),
            "to the pod's own MAC"
        );
        // Its answer comes back out and goes back in, from the Service.
        let (verdict, back) = h.run(&build(&Spec {
            src: seen.dst,
            dst: seen.src,
            tcp_flags: SYN | 0x10,
            ..spec.clone()
        }));
        assert_eq!(verdict, TC_ACT_REDIRECT);
        let back = parse_checked(&back);
        assert_eq!((back.src, back.dst), ((VIP, to), (CLIENT, sport)));
    }
    assert_eq!(h.events(Event::Hairpin), 4);
}

#[test]
fn a_fragmented_datagram_follows_its_first_fragment_both_ways() {
    if !privileged("a_fragmented_datagram_follows_its_first_fragment_both_ways") {
        return;
    }
    let h = Harness::web(DataplaneConfig::default());
    let query = build(&Spec {
        payload: (0..8000u32)
            .map(|i| u8::try_from(i % 251).unwrap())
            .collect(),
        ..udp_query(40300)
    });
    let parts = fragments(&query, 1480, 0x4242);
    assert_eq!(parts.len(), 6);
    // A later fragment before its first: its ports are unknown.
    let (verdict, _) = h.run(&parts[1]);
    assert_eq!(
        verdict, TC_ACT_SHOT,
        "to a ClusterIP, it cannot be translated"
    );
    assert_eq!(h.drops(DropReason::Fragment), 1);

    let mut out = Vec::new();
    for part in &parts {
        let (verdict, written) = h.run(part);
        assert_eq!(verdict, TC_ACT_OK);
        out.push(written);
    }
    let datagram = parse_checked(&reassemble(&out));
    let backend = datagram.dst;
    assert_eq!(backend.1, 5353, "every fragment DNATed: {datagram:?}");
    assert_eq!(datagram.src, (CLIENT, 40300));
    assert_eq!(h.events(Event::FragmentFollowed), 5);

    // The answer, as large, fragmented by the backend.
    let answer = build(&Spec {
        src: backend,
        dst: (CLIENT, 40300),
        payload: vec![7; 8000],
        ..udp_query(0)
    });
    let mut back = Vec::new();
    for part in fragments(&answer, 1480, 0x0101) {
        let (verdict, written) = h.run(&part);
        assert_eq!(verdict, TC_ACT_OK);
        back.push(written);
    }
    let datagram = parse_checked(&reassemble(&back));
    assert_eq!((datagram.src, datagram.dst), ((VIP, 53), (CLIENT, 40300)));
}

#[test]
fn a_pod_that_lies_about_its_source_gets_no_translation() {
    if !privileged("a_pod_that_lies_about_its_source_gets_no_translation") {
        return;
    }
    let h = Harness::web(DataplaneConfig::default());
    // Not routed through the pod's interface (the pods' network is).
    let elsewhere = Ipv4Addr::new(10, 99, 0, 1);
    let (verdict, _) = h.run(&build(&Spec {
        src: (elsewhere, 40400),
        ..Spec::default()
    }));
    assert_eq!(verdict, TC_ACT_SHOT, "to a frontend");
    let (verdict, _) = h.run(&build(&Spec {
        src: (elsewhere, 40401),
        ..udp_query(0)
    }));
    assert_eq!(verdict, TC_ACT_SHOT);
    assert_eq!(h.drops(DropReason::SpoofedSource), 2);
    assert_eq!(h.events(Event::NewFlow), 0, "no flow for a forged source");
    // The same from the pods' network is translated.
    let (verdict, out) = h.run(&build(&udp_query(40402)));
    assert_eq!(verdict, TC_ACT_OK);
    assert_eq!(parse_checked(&out).dst.1, 5353);
}
