//! Packet tests of `xdp_ingress` through BPF_PROG_TEST_RUN, on packets built
//! here, with the maps filled by the agent's own reconcile and map code.
//!
//! The program runs as if the frames arrived on `ext0` of a node namespace
//! made for the test: 192.168.77.1/24 there, the other node 192.168.77.2
//! (its pods 10.244.2.0/24 behind it) and the client 192.168.77.100 with
//! permanent neighbour entries, and a local pod 10.244.1.10 on a veth. Its
//! route lookups (`bpf_fib_lookup`) see that namespace. Each case checks the
//! verdict, the rewritten addresses, ports and MACs, the checksums
//! (recomputed independently in `builder`) and the counters.
#![allow(clippy::unwrap_used, reason = "tests: a failure fails the test")]

use std::{collections::BTreeSet, net::Ipv4Addr};

use builder::{
    ACK, CLIENT_MAC, HOST_MAC, SYN, Spec, TCP, UDP, build, fragments, icmp_error, parse_checked,
    parse_icmp_error, parse_quoted, reassemble,
};
use harness::{Hook, Loaded};
use sluice_abi::{
    config::DataplaneConfig,
    proto,
    service::ServiceKey,
    stats::{DropReason, Event},
};
use sluice_agent::model::{Desired, DesiredFrontend, External};
use sluice_lab::{Netns, require_privileges};

use crate::packet::{builder, harness};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;

const NODE: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 1);
const OTHER_NODE_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x03];
const CLIENT: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 100);
const LOCAL_POD: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 10);
const REMOTE_POD: [Ipv4Addr; 2] = [Ipv4Addr::new(10, 244, 2, 10), Ipv4Addr::new(10, 244, 2, 11)];
const LB_IP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 7);
const CLUSTER_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);

/// NodePorts of the test Services.
/// The default `--snat-port-range`.
const SNAT_PORTS: std::ops::RangeInclusive<u16> = 61_000..=65_535;
const LOCAL_NP: u16 = 30080;
const REMOTE_NP: u16 = 30081;
const ETP_LOCAL_NP: u16 = 30082;
const EMPTY_NP: u16 = 30083;
const MIXED_NP: u16 = 30084;

/// The node namespace the program believes it runs in.
struct Topology {
    node: Netns,
    _wire: Netns,
    ext0: u32,
}

impl Topology {
    fn new(tag: &str) -> Self {
        let stem = format!("sl{}x{tag}", std::process::id());
        let node = Netns::create(&format!("{stem}-xnode")).unwrap();
        let wire = Netns::create(&format!("{stem}-xwire")).unwrap();
        let mac = |m: [u8; 6]| {
            m.iter()
                .map(|b| format!("{b:02x}"))
                .collect::<Vec<_>>()
                .join(":")
        };
        for args in [
            vec![
                "link",
                "add",
                "ext0",
                "type",
                "veth",
                "peer",
                "name",
                "wire0",
                "netns",
                wire.name(),
            ],
            vec!["link", "set", "ext0", "address", &mac(HOST_MAC)],
            vec!["addr", "add", "192.168.77.1/24", "dev", "ext0"],
            vec!["link", "set", "ext0", "up"],
            vec![
                "link",
                "add",
                "vpod",
                "type",
                "veth",
                "peer",
                "name",
                "vpodp",
                "netns",
                wire.name(),
            ],
            vec!["link", "set", "vpod", "up"],
            vec!["route", "add", "10.244.1.10/32", "dev", "vpod"],
            vec![
                "route",
                "add",
                "10.244.2.0/24",
                "via",
                "192.168.77.2",
                "dev",
                "ext0",
            ],
            vec![
                "neigh",
                "add",
                "192.168.77.2",
                "lladdr",
                &mac(OTHER_NODE_MAC),
                "dev",
                "ext0",
                "nud",
                "permanent",
            ],
            vec![
                "neigh",
                "add",
                "192.168.77.100",
                "lladdr",
                &mac(CLIENT_MAC),
                "dev",
                "ext0",
                "nud",
                "permanent",
            ],
            vec![
                "neigh",
                "add",
                "192.168.77.101",
                "lladdr",
                &mac(CLIENT_MAC),
                "dev",
                "ext0",
                "nud",
                "permanent",
            ],
        ] {
            node.ip(&args).unwrap();
        }
        for args in [
            ["link", "set", "wire0", "up"],
            ["link", "set", "vpodp", "up"],
        ] {
            wire.ip(&args).unwrap();
        }
        node.sysctl("net.ipv4.ip_forward", "1").unwrap();
        let ext0 = node
            // SAFETY: if_nametoindex(3) reads a NUL-terminated string.
            .run(|| unsafe { libc::if_nametoindex(c"ext0".as_ptr()) })
            .unwrap();
        assert_ne!(ext0, 0);
        Self {
            node,
            _wire: wire,
            ext0,
        }
    }
}

/// `xdp_ingress`, as if on `ext0` of the test's node (`Topology`).
type Harness = harness::Harness<Topology>;

/// A test frontend: key, backends, how XDP uses it.
type Frontend = (ServiceKey, Vec<(Ipv4Addr, u16)>, External);

/// The test Services.
fn services() -> Vec<Frontend> {
    let remote = REMOTE_POD.iter().map(|b| (*b, 8080)).collect::<Vec<_>>();
    let np = |port| ServiceKey::node_port(port, proto::TCP);
    vec![
        (np(LOCAL_NP), vec![(LOCAL_POD, 8080)], External::Serve),
        (np(REMOTE_NP), remote.clone(), External::Serve),
        (
            ServiceKey::node_port(REMOTE_NP, proto::UDP),
            remote.clone(),
            External::Serve,
        ),
        // externalTrafficPolicy: Local with no endpoint here.
        (np(ETP_LOCAL_NP), remote.clone(), External::ViaLocalScope),
        (np(ETP_LOCAL_NP).local_scope(), Vec::new(), External::Serve),
        (np(EMPTY_NP), Vec::new(), External::Serve),
        (
            ServiceKey::node_port(EMPTY_NP, proto::UDP),
            Vec::new(),
            External::Serve,
        ),
        // Local policy, endpoints here and elsewhere.
        (
            np(MIXED_NP),
            vec![(LOCAL_POD, 8080), (REMOTE_POD[0], 8080)],
            External::ViaLocalScope,
        ),
        (
            np(MIXED_NP).local_scope(),
            vec![(LOCAL_POD, 8080)],
            External::Serve,
        ),
        (
            ServiceKey::new(LB_IP, 80, proto::TCP),
            remote,
            External::Serve,
        ),
        (
            ServiceKey::new(CLUSTER_IP, 80, proto::TCP),
            vec![(LOCAL_POD, 8080)],
            External::No,
        ),
    ]
}

impl Harness {
    fn new(tag: &str) -> Self {
        let topo = Topology::new(tag);
        let config = DataplaneConfig::default().with_nodeport_range(30000, 32767);
        let mut loaded = Loaded::new(Hook::Xdp, &config, sluice_abi::maps::DEFAULT_CONNTRACK_SIZE);
        loaded
            .maps
            .set_node_addrs(&BTreeSet::from([NODE.into()]), |_| true)
            .unwrap();
        loaded.maps.set_ext_if(topo.ext0, Some(NODE)).unwrap();
        let mut h = Self { loaded, side: topo };
        h.set(&services(), &[]);
        h
    }

    /// Programs frontends; `ranges` go on the load balancer address.
    fn set(&mut self, frontends: &[Frontend], ranges: &[(Ipv4Addr, u8)]) {
        let mut desired = Desired::default();
        for (key, backends, external) in frontends {
            if *external == External::No {
                desired.cluster_ips.insert(key.addr().into());
            }
            desired.frontends.insert(
                (*key).into(),
                DesiredFrontend {
                    name: format!("test/{}:{}", key.addr(), key.port()),
                    backends: backends.iter().map(|&(a, p)| (a.into(), p)).collect(),
                    source_ranges: if key.addr() == LB_IP {
                        ranges.iter().map(|&(a, l)| (a.into(), l)).collect()
                    } else {
                        Vec::new()
                    },
                    external: *external,
                    ..DesiredFrontend::default()
                },
            );
        }
        self.program(&desired);
    }

    fn run(&self, frame: &[u8]) -> (u32, Vec<u8>) {
        // struct xdp_md: data, data_end, data_meta, ingress_ifindex,
        // rx_queue_index, egress_ifindex.
        let len = u32::try_from(frame.len()).unwrap();
        let ctx: Vec<u8> = [0, len, 0, self.side.ext0, 0, 0]
            .iter()
            .flat_map(|v: &u32| v.to_ne_bytes())
            .collect();
        self.loaded.run(frame, &ctx, &self.side.node)
    }
}

fn from_client(sport: u16, dst: (Ipv4Addr, u16)) -> Spec {
    Spec {
        src: (CLIENT, sport),
        dst,
        ..Spec::default()
    }
}

#[test]
fn xdp_a_node_port_with_a_local_backend_is_dnated_and_passed_to_the_stack() {
    if !require_privileges("xdp_a_node_port_with_a_local_backend_is_dnated_and_passed_to_the_stack")
    {
        return;
    }
    let h = Harness::new("local");
    let frame = build(&from_client(40000, (NODE, LOCAL_NP)));
    let (verdict, out) = h.run(&frame);
    assert_eq!(verdict, XDP_PASS);
    let seen = parse_checked(&out);
    assert_eq!(seen.dst, (LOCAL_POD, 8080), "DNAT to the pod");
    assert_eq!(seen.src, (CLIENT, 40000), "no SNAT for a backend here");
    assert_eq!(
        (seen.eth_dst, seen.eth_src),
        (HOST_MAC, CLIENT_MAC),
        "L2 is the stack's"
    );
    assert_eq!(h.events(Event::NewFlow), 1);
    assert_eq!(h.events(Event::Snat), 0);
}

#[test]
fn xdp_a_remote_backend_is_dnated_snated_and_sent_back_out_and_its_replies_reversed() {
    if !require_privileges(
        "xdp_a_remote_backend_is_dnated_snated_and_sent_back_out_and_its_replies_reversed",
    ) {
        return;
    }
    let h = Harness::new("remote");
    for (proto, sport) in [(TCP, 40001), (UDP, 40002)] {
        let spec = Spec {
            proto,
            payload: if proto == UDP {
                b"ping".to_vec()
            } else {
                Vec::new()
            },
            ..from_client(sport, (NODE, REMOTE_NP))
        };
        let (verdict, out) = h.run(&build(&spec));
        assert_eq!(verdict, XDP_TX, "back out of ext0");
        let seen = parse_checked(&out);
        assert!(
            REMOTE_POD.contains(&seen.dst.0) && seen.dst.1 == 8080,
            "{seen:?}"
        );
        assert_eq!(seen.src.0, NODE, "SNAT to the node");
        assert!(
            SNAT_PORTS.contains(&seen.src.1),
            "a port of the SNAT range, never the client's: {seen:?}"
        );
        assert_eq!(
            (seen.eth_dst, seen.eth_src),
            (OTHER_NODE_MAC, HOST_MAC),
            "to the node the pod lives on"
        );

        // The backend's reply comes back to the node's address and port.
        let reply = Spec {
            src: seen.dst,
            dst: seen.src,
            tcp_flags: SYN | ACK,
            ..spec.clone()
        };
        let (verdict, out) = h.run(&build(&reply));
        assert_eq!(verdict, XDP_TX);
        let back = parse_checked(&out);
        assert_eq!(back.src, (NODE, REMOTE_NP), "from the NodePort");
        assert_eq!(back.dst, (CLIENT, sport), "to the client");
        assert_eq!((back.eth_dst, back.eth_src), (CLIENT_MAC, HOST_MAC));

        // Later packets of the flow follow it.
        let (verdict, out) = h.run(&build(&Spec {
            tcp_flags: ACK,
            ..spec
        }));
        assert_eq!(verdict, XDP_TX);
        assert_eq!(parse_checked(&out).dst, seen.dst);
    }
    assert_eq!(h.events(Event::Snat), 2);
    assert_eq!(h.events(Event::Reply), 2);
    assert_eq!(h.events(Event::XdpTx), 6);
}

#[test]
fn xdp_snat_ports_never_collide_and_come_from_their_own_range() {
    if !require_privileges("xdp_snat_ports_never_collide_and_come_from_their_own_range") {
        return;
    }
    let mut h = Harness::new("ports");
    // One backend: every flow shares its address and port.
    let one = vec![(REMOTE_POD[0], 8080)];
    h.set(
        &[(
            ServiceKey::node_port(REMOTE_NP, proto::TCP),
            one,
            External::Serve,
        )],
        &[],
    );
    // Many clients on one port, and client ports of every kind (the
    // node's ephemeral range, the NodePort range, the SNAT range itself).
    let mut ports = BTreeSet::new();
    let clients: Vec<(Ipv4Addr, u16)> = (0..200u8)
        .map(|i| (Ipv4Addr::new(192, 168, 77, 101), 40_000 + u16::from(i)))
        .chain([
            (CLIENT, 40_000),
            (CLIENT, 31_000),
            (CLIENT, 62_000),
            (CLIENT, 1_024),
        ])
        .collect();
    for src in &clients {
        let (verdict, out) = h.run(&build(&Spec {
            src: *src,
            dst: (NODE, REMOTE_NP),
            ..Spec::default()
        }));
        assert_eq!(verdict, XDP_TX);
        let port = parse_checked(&out).src.1;
        assert!(SNAT_PORTS.contains(&port), "{src:?}: {port}");
        ports.insert(port);
    }
    assert_eq!(ports.len(), clients.len(), "no two flows share a SNAT port");
}

#[test]
fn xdp_external_traffic_policy_local_keeps_the_client_and_drops_without_local_endpoints() {
    if !require_privileges(
        "xdp_external_traffic_policy_local_keeps_the_client_and_drops_without_local_endpoints",
    ) {
        return;
    }
    let h = Harness::new("etp");
    let (verdict, _) = h.run(&build(&from_client(40010, (NODE, ETP_LOCAL_NP))));
    assert_eq!(verdict, XDP_DROP, "endpoints elsewhere, none here: dropped");
    assert_eq!(h.drops(DropReason::NoLocalEndpoints), 1);
    for sport in 40020..40040 {
        let (verdict, out) = h.run(&build(&from_client(sport, (NODE, MIXED_NP))));
        assert_eq!(verdict, XDP_PASS);
        let seen = parse_checked(&out);
        assert_eq!(seen.dst, (LOCAL_POD, 8080), "only the endpoint here");
        assert_eq!(seen.src, (CLIENT, sport), "the client's address is kept");
    }
    assert_eq!(h.events(Event::Snat), 0);
}

/// An IPv6-only node's external interface has no IPv4 address to SNAT
/// to (`0.0.0.0`): IPv4 flows to backends on other nodes are dropped and
/// counted, and those to backends here are still served.
#[test]
fn xdp_without_an_ipv4_snat_address_flows_to_other_nodes_are_dropped_and_local_ones_served() {
    if !require_privileges(
        "xdp_without_an_ipv4_snat_address_flows_to_other_nodes_are_dropped_and_local_ones_served",
    ) {
        return;
    }
    let mut h = Harness::new("nosnat");
    h.loaded
        .maps
        .set_ext_if(h.side.ext0, Some(Ipv4Addr::UNSPECIFIED))
        .unwrap();
    let (verdict, _) = h.run(&build(&from_client(40050, (NODE, REMOTE_NP))));
    assert_eq!(verdict, XDP_DROP, "no address to SNAT to: dropped");
    assert_eq!(h.drops(DropReason::NoSnatAddress), 1);
    assert_eq!(h.events(Event::Snat), 0);
    let (verdict, out) = h.run(&build(&from_client(40051, (NODE, LOCAL_NP))));
    assert_eq!(verdict, XDP_PASS, "a backend here needs no SNAT");
    assert_eq!(parse_checked(&out).dst, (LOCAL_POD, 8080));
}

#[test]
fn xdp_a_source_outside_load_balancer_source_ranges_is_dropped_and_counted() {
    if !require_privileges(
        "xdp_a_source_outside_load_balancer_source_ranges_is_dropped_and_counted",
    ) {
        return;
    }
    let mut h = Harness::new("ranges");
    h.set(&services(), &[(Ipv4Addr::new(192, 168, 77, 96), 30)]);
    // 192.168.77.96/30 holds .96 to .99: the client (.100) is outside.
    let (verdict, _) = h.run(&build(&from_client(40030, (LB_IP, 80))));
    assert_eq!(verdict, XDP_DROP);
    assert_eq!(h.drops(DropReason::SourceRange), 1);
    let inside = Spec {
        src: (Ipv4Addr::new(192, 168, 77, 97), 40031),
        dst: (LB_IP, 80),
        ..Spec::default()
    };
    h.side
        .node
        .ip(&[
            "neigh",
            "add",
            "192.168.77.97",
            "lladdr",
            "02:00:00:00:00:02",
            "dev",
            "ext0",
            "nud",
            "permanent",
        ])
        .unwrap();
    let (verdict, out) = h.run(&build(&inside));
    assert_eq!(verdict, XDP_TX, "inside the range: served");
    assert!(REMOTE_POD.contains(&parse_checked(&out).dst.0));
}

#[test]
fn xdp_a_node_port_without_endpoints_answers_icmp_port_unreachable() {
    if !require_privileges("xdp_a_node_port_without_endpoints_answers_icmp_port_unreachable") {
        return;
    }
    let h = Harness::new("reject");
    for (proto, payload) in [
        (TCP, Vec::new()),
        (UDP, b"a longer datagram than the reply".to_vec()),
    ] {
        let original = build(&Spec {
            proto,
            payload,
            ..from_client(40040, (NODE, EMPTY_NP))
        });
        let (verdict, out) = h.run(&original);
        assert_eq!(verdict, XDP_TX);
        assert_eq!(
            (&out[0..6], &out[6..12]),
            (&CLIENT_MAC[..], &HOST_MAC[..]),
            "MACs swapped"
        );
        let (kind, code, src, dst, quoted) = parse_icmp_error(&out);
        assert_eq!((kind, code), (3, 3));
        assert_eq!((src, dst), (NODE, CLIENT));
        assert_eq!(quoted, original[14..14 + 20 + 8]);
    }
    assert_eq!(h.drops(DropReason::NoEndpoints), 2);
    assert_eq!(h.events(Event::RejectSent), 2);
}

#[test]
fn xdp_traffic_that_is_not_for_an_external_frontend_passes_untouched() {
    if !require_privileges("xdp_traffic_that_is_not_for_an_external_frontend_passes_untouched") {
        return;
    }
    let h = Harness::new("pass");
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("ARP", builder::other_ethertype(0x0806, 28)),
        ("IPv6", builder::other_ethertype(0x86dd, 60)),
        ("ICMP echo to the node", builder::icmp_echo(CLIENT, NODE)),
        (
            "the node's own SSH port",
            build(&from_client(40050, (NODE, 22))),
        ),
        (
            "a port in the range that is no NodePort",
            build(&from_client(40051, (NODE, 31999))),
        ),
        (
            "UDP to a TCP NodePort",
            build(&Spec {
                proto: UDP,
                ..from_client(40052, (NODE, LOCAL_NP))
            }),
        ),
        (
            "a ClusterIP from outside",
            build(&from_client(40053, (CLUSTER_IP, 80))),
        ),
        (
            "a later fragment to a NodePort, its first unseen",
            build(&Spec {
                frag: 0x00b9,
                proto: UDP,
                ..from_client(40054, (NODE, REMOTE_NP))
            }),
        ),
        (
            "to another address",
            build(&from_client(
                40055,
                (Ipv4Addr::new(192, 168, 77, 5), LOCAL_NP),
            )),
        ),
        ("a runt frame", vec![0u8; 14]),
    ];
    for (what, frame) in &cases {
        assert_eq!(h.run(frame), (XDP_PASS, frame.clone()), "{what}");
    }
    assert_eq!(h.events(Event::Pass), u64::try_from(cases.len()).unwrap());
    assert_eq!(h.events(Event::NewFlow), 0);
}

#[test]
fn xdp_every_node_sends_a_flow_to_the_same_backend() {
    if !require_privileges("xdp_every_node_sends_a_flow_to_the_same_backend") {
        return;
    }
    // Two nodes, programmed in different orders (so with other ids), pick
    // the same backend for each flow through their Maglev tables.
    let a = Harness::new("maglev-a");
    let mut b = Harness::new("maglev-b");
    b.set(&services().into_iter().rev().collect::<Vec<_>>(), &[]);
    let mut spread = BTreeSet::new();
    for sport in 41000..41064 {
        let frame = build(&from_client(sport, (NODE, REMOTE_NP)));
        let (_, out_a) = a.run(&frame);
        let (_, out_b) = b.run(&frame);
        let (da, db) = (parse_checked(&out_a).dst, parse_checked(&out_b).dst);
        assert_eq!(da, db, "flow from port {sport}");
        spread.insert(da);
    }
    assert_eq!(spread.len(), 2, "flows spread over both backends");
    assert_eq!(a.events(Event::MaglevMiss), 0);
}

#[test]
fn xdp_a_packet_too_big_for_the_route_to_its_backend_gets_frag_needed_with_the_mtu() {
    if !require_privileges(
        "xdp_a_packet_too_big_for_the_route_to_its_backend_gets_frag_needed_with_the_mtu",
    ) {
        return;
    }
    let h = Harness::new("toobig");
    // Locked: forwarding takes a route's MTU only then (else the device's).
    h.side
        .node
        .ip(&[
            "route",
            "replace",
            "10.244.2.0/24",
            "via",
            "192.168.77.2",
            "dev",
            "ext0",
            "mtu",
            "lock",
            "1000",
        ])
        .unwrap();
    let big = |sport, df| Spec {
        payload: vec![0xab; 1300],
        frag: if df { 0x4000 } else { 0 },
        ..from_client(sport, (NODE, REMOTE_NP))
    };
    let original = build(&big(40050, true));
    let (verdict, out) = h.run(&original);
    assert_eq!(verdict, XDP_TX, "answered, back out of ext0");
    let (kind, code, src, dst, quoted) = parse_icmp_error(&out);
    assert_eq!((kind, code), (3, 4), "fragmentation needed");
    assert_eq!((src, dst), (NODE, CLIENT), "from the address it sent to");
    assert_eq!(
        u16::from_be_bytes([out[14 + 20 + 6], out[14 + 20 + 7]]),
        1000,
        "the next hop's MTU"
    );
    assert_eq!(
        quoted,
        original[14..14 + 20 + 8],
        "its packet, as it sent it"
    );
    // Without DF nothing can be said: dropped (BPF cannot fragment).
    let (verdict, _) = h.run(&build(&big(40051, false)));
    assert_eq!(verdict, XDP_DROP);
    assert_eq!(h.drops(DropReason::FragNeeded), 2);
    // What fits goes on.
    let (verdict, out) = h.run(&build(&Spec {
        payload: vec![0xab; 900],
        frag: 0x4000,
        ..from_client(40052, (NODE, REMOTE_NP))
    }));
    assert_eq!(verdict, XDP_TX);
    assert!(REMOTE_POD.contains(&parse_checked(&out).dst.0));
}

/// A router between the client and the node.
const ROUTER: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 254);

#[test]
fn xdp_icmp_errors_about_snated_flows_are_translated_both_ways() {
    if !require_privileges("xdp_icmp_errors_about_snated_flows_are_translated_both_ways") {
        return;
    }
    let h = Harness::new("icmpsnat");
    // A datagram to a NodePort whose backend is on the other node: SNATed.
    let query = Spec {
        proto: UDP,
        payload: b"query".to_vec(),
        ..from_client(40060, (NODE, REMOTE_NP))
    };
    let (verdict, snated) = h.run(&build(&query));
    assert_eq!(verdict, XDP_TX);
    let backend = parse_checked(&snated).dst;
    // The backend has no listener: its error goes to the node's address,
    // about the datagram as it got it, and on to the client as if from
    // the NodePort, about the datagram as the client sent it.
    let error = icmp_error((backend.0, NODE), (3, 3, [0; 4]), &snated);
    let (verdict, out) = h.run(&error);
    assert_eq!(verdict, XDP_TX, "back out, to the client");
    let (kind, code, src, dst, quote) = parse_icmp_error(&out);
    assert_eq!((kind, code), (3, 3));
    assert_eq!((src, dst), (NODE, CLIENT));
    let quoted = parse_quoted(&quote);
    assert_eq!(
        (quoted.src, quoted.dst),
        ((CLIENT, 40060), (NODE, REMOTE_NP))
    );
    assert_eq!((&out[0..6], &out[6..12]), (&CLIENT_MAC[..], &HOST_MAC[..]));

    // A segment from the backend, on its way to the client, is too big
    // for a router's next link: the router tells the NodePort's address;
    // the error goes on to the backend, about the segment as it sent it.
    let syn = from_client(40061, (NODE, REMOTE_NP));
    let (_, out) = h.run(&build(&syn));
    let out = parse_checked(&out);
    let (backend, snat) = (out.dst, out.src);
    let (verdict, reply) = h.run(&build(&Spec {
        src: backend,
        dst: snat,
        tcp_flags: SYN | ACK,
        ..syn
    }));
    assert_eq!(verdict, XDP_TX);
    let error = icmp_error((ROUTER, NODE), (3, 4, [0, 0, 5, 0]), &reply);
    let (verdict, out) = h.run(&error);
    assert_eq!(verdict, XDP_TX, "on to the node the backend lives on");
    assert_eq!(
        (&out[0..6], &out[6..12]),
        (&OTHER_NODE_MAC[..], &HOST_MAC[..])
    );
    let (kind, code, src, dst, quote) = parse_icmp_error(&out);
    assert_eq!((kind, code), (3, 4));
    assert_eq!((src, dst), (ROUTER, backend.0), "the router, as itself");
    let quoted = parse_quoted(&quote);
    assert_eq!((quoted.src, quoted.dst), (backend, snat));
    assert_eq!(h.events(Event::IcmpError), 2);
}

#[test]
fn xdp_a_routers_frag_needed_about_a_local_backends_reply_reaches_the_backend() {
    if !require_privileges(
        "xdp_a_routers_frag_needed_about_a_local_backends_reply_reaches_the_backend",
    ) {
        return;
    }
    let h = Harness::new("icmplocal");
    let syn = from_client(40062, (NODE, LOCAL_NP));
    let (verdict, _) = h.run(&build(&syn));
    assert_eq!(verdict, XDP_PASS);
    // The backend's reply, as TC on its interface sent it on.
    let reply = build(&Spec {
        src: (NODE, LOCAL_NP),
        dst: (CLIENT, 40062),
        tcp_flags: SYN | ACK,
        ..syn
    });
    let error = icmp_error((ROUTER, NODE), (3, 4, [0, 0, 5, 0]), &reply);
    let (verdict, out) = h.run(&error);
    assert_eq!(
        verdict, XDP_PASS,
        "to the stack, which routes it to the pod"
    );
    let (_, _, src, dst, quote) = parse_icmp_error(&out);
    assert_eq!((src, dst), (ROUTER, LOCAL_POD));
    let quoted = parse_quoted(&quote);
    assert_eq!(
        (quoted.src, quoted.dst),
        ((LOCAL_POD, 8080), (CLIENT, 40062))
    );
    // An error that claims to come from the node itself is forged.
    let forged = icmp_error((NODE, NODE), (3, 4, [0, 0, 5, 0]), &reply);
    assert_eq!(h.run(&forged).0, XDP_DROP);
    assert_eq!(h.drops(DropReason::ForgedSource), 1);
}

#[test]
fn xdp_forwarding_takes_one_hop_off_the_ttl_and_a_packet_at_its_last_hop_gets_time_exceeded() {
    if !require_privileges(
        "xdp_forwarding_takes_one_hop_off_the_ttl_and_a_packet_at_its_last_hop_gets_time_exceeded",
    ) {
        return;
    }
    let h = Harness::new("ttl");
    // Sent on by XDP to the other node: one hop less, checksum right.
    let (verdict, out) = h.run(&build(&Spec {
        ttl: 5,
        ..from_client(40070, (NODE, REMOTE_NP))
    }));
    assert_eq!(verdict, XDP_TX);
    let snated = parse_checked(&out);
    assert_eq!(out[14 + 8], 4, "the TTL");
    // Its reply, sent on to the client by XDP, too.
    let (verdict, back) = h.run(&build(&Spec {
        src: snated.dst,
        dst: snated.src,
        tcp_flags: SYN | ACK,
        ttl: 9,
        ..Spec::default()
    }));
    assert_eq!(verdict, XDP_TX);
    parse_checked(&back);
    assert_eq!(back[14 + 8], 8);

    // The last hop: to a backend elsewhere or here, the sender is told,
    // from this node's address, about the packet as it sent it.
    for (sport, port) in [(40071, REMOTE_NP), (40072, LOCAL_NP)] {
        let probe = build(&Spec {
            ttl: 1,
            ..from_client(sport, (NODE, port))
        });
        let (verdict, out) = h.run(&probe);
        assert_eq!(verdict, XDP_TX, "answered");
        let (kind, code, src, dst, quoted) = parse_icmp_error(&out);
        assert_eq!((kind, code), (11, 0), "time exceeded in transit");
        assert_eq!((src, dst), (NODE, CLIENT));
        assert_eq!(quoted, probe[14..14 + 20 + 8]);
    }
    assert_eq!(h.drops(DropReason::TtlExceeded), 2);
    assert_eq!(
        h.events(Event::NewFlow),
        1,
        "an expired probe starts no flow"
    );
}

#[test]
fn xdp_a_fragmented_datagram_follows_its_first_fragment_through_snat_both_ways() {
    if !require_privileges(
        "xdp_a_fragmented_datagram_follows_its_first_fragment_through_snat_both_ways",
    ) {
        return;
    }
    let h = Harness::new("frag");
    let query = build(&Spec {
        proto: UDP,
        payload: (0..8000u32)
            .map(|i| u8::try_from(i % 251).unwrap())
            .collect(),
        ..from_client(40080, (NODE, REMOTE_NP))
    });
    let mut out = Vec::new();
    for part in fragments(&query, 1480, 0x1234) {
        let (verdict, written) = h.run(&part);
        assert_eq!(verdict, XDP_TX, "every fragment sent on");
        assert_eq!(
            (&written[0..6], &written[6..12]),
            (&OTHER_NODE_MAC[..], &HOST_MAC[..])
        );
        out.push(written);
    }
    let datagram = parse_checked(&reassemble(&out));
    assert!(REMOTE_POD.contains(&datagram.dst.0) && datagram.dst.1 == 8080);
    assert_eq!(datagram.src.0, NODE, "SNATed");
    assert_eq!(h.events(Event::FragmentFollowed), 5);

    let answer = build(&Spec {
        src: datagram.dst,
        dst: datagram.src,
        proto: UDP,
        payload: vec![9; 8000],
        ..Spec::default()
    });
    let mut back = Vec::new();
    for part in fragments(&answer, 1480, 0x4321) {
        let (verdict, written) = h.run(&part);
        assert_eq!(verdict, XDP_TX);
        back.push(written);
    }
    let datagram = parse_checked(&reassemble(&back));
    assert_eq!(
        (datagram.src, datagram.dst),
        ((NODE, REMOTE_NP), (CLIENT, 40080))
    );
}

#[test]
fn xdp_node_ports_answer_only_on_the_node_addresses_that_serve_them() {
    if !require_privileges("xdp_node_ports_answer_only_on_the_node_addresses_that_serve_them") {
        return;
    }
    // A second node address, outside `--nodeport-addresses`.
    let other = Ipv4Addr::new(192, 168, 77, 2);
    let mut h = Harness::new("npaddrs");
    h.loaded
        .maps
        .set_node_addrs(&BTreeSet::from([NODE.into(), other.into()]), |a| a == NODE)
        .unwrap();
    let frame = build(&from_client(40070, (other, LOCAL_NP)));
    let (verdict, out) = h.run(&frame);
    assert_eq!(
        (verdict, out),
        (XDP_PASS, frame),
        "untouched on the other address"
    );
    assert_eq!(h.events(Event::NewFlow), 0);
    let (verdict, out) = h.run(&build(&from_client(40071, (NODE, LOCAL_NP))));
    assert_eq!(verdict, XDP_PASS);
    assert_eq!(
        parse_checked(&out).dst,
        (LOCAL_POD, 8080),
        "DNAT on its own"
    );
    assert_eq!(h.events(Event::NewFlow), 1);
    // A node address still: a packet from outside forged with its source
    // is dropped, whether or not it serves NodePorts.
    let forged = build(&Spec {
        src: (other, 40072),
        dst: (NODE, LOCAL_NP),
        ..Spec::default()
    });
    assert_eq!(h.run(&forged).0, XDP_DROP);
}

/// An IPv6 UDP frame from `src` to `dst` (its checksum left zero: nothing
/// here reads it).
fn udp6(src: std::net::Ipv6Addr, dst: std::net::Ipv6Addr) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&HOST_MAC);
    f.extend_from_slice(&CLIENT_MAC);
    f.extend_from_slice(&0x86ddu16.to_be_bytes());
    f.extend_from_slice(&[0x60, 0, 0, 0, 0, 8, UDP, 64]);
    f.extend_from_slice(&src.octets());
    f.extend_from_slice(&dst.octets());
    f.extend_from_slice(&[0x9c, 0x40, 0x00, 0x35, 0, 8, 0, 0]);
    f
}

#[test]
fn xdp_drops_ipv6_from_outside_with_a_node_address_as_source_and_passes_the_rest() {
    if !require_privileges(
        "xdp_drops_ipv6_from_outside_with_a_node_address_as_source_and_passes_the_rest",
    ) {
        return;
    }
    let node6: std::net::Ipv6Addr = "fd00:77::1".parse().unwrap();
    let client6: std::net::Ipv6Addr = "fd00:77::100".parse().unwrap();
    let mut h = Harness::new("forged6");
    h.maps
        .set_node_addrs(&BTreeSet::from([NODE.into(), node6.into()]), |_| true)
        .unwrap();
    let honest = udp6(client6, node6);
    assert_eq!(h.run(&honest), (XDP_PASS, honest.clone()));
    for _ in 0..3 {
        let forged = udp6(node6, client6);
        assert_eq!(h.run(&forged).0, XDP_DROP, "a node source from outside");
    }
    assert_eq!(h.drops(DropReason::ForgedSource), 3);
}
