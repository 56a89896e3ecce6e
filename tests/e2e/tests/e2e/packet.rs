//! Packet tests: `tc_ingress` run through BPF_PROG_TEST_RUN on packets built
//! here, with the maps filled by the agent's own reconcile and map code.
//! Each case checks the verdict, the rewritten addresses and ports, the
//! checksums (recomputed independently in `builder`) and the counters.
#![allow(clippy::unwrap_used, reason = "tests: a failure fails the test")]

pub mod builder;
mod conntrack;
pub mod harness;
mod ipv6;
mod matrix;
mod rewrites;

use std::{collections::BTreeSet, net::Ipv4Addr};

use builder::{
    ACK, CLIENT_MAC, FIN, HOST_MAC, SYN, Spec, TCP, UDP, build, parse_checked, parse_icmp_error,
};
use harness::{Hook, Loaded};
use sluice_abi::{
    config::DataplaneConfig,
    proto,
    service::ServiceKey,
    stats::{DropReason, Event, TrafficStats},
};
use sluice_agent::{
    dataplane::maps::sum_stats,
    model::{Desired, DesiredFrontend},
};
use sluice_lab::{Netns, require_privileges, unique_stem};

const TC_ACT_OK: u32 = 0;
const TC_ACT_SHOT: u32 = 2;
const TC_ACT_REDIRECT: u32 = 7;

const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 2);
const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const EMPTY_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 20);
const B: [Ipv4Addr; 3] = [
    Ipv4Addr::new(10, 244, 1, 10),
    Ipv4Addr::new(10, 244, 1, 11),
    Ipv4Addr::new(10, 244, 1, 12),
];

/// `tc_ingress`, as if on a pod's interface (`PodSide`).
type Harness = harness::Harness<PodSide>;

/// The node the program believes it runs in, for its route lookups: the
/// frames arrive on `vpod`, a pod's interface, through which the pods'
/// networks (`10.244.0.0/16`, `fd00:244::/32`) are routed.
struct PodSide {
    ns: Netns,
    vpod: u32,
}

impl PodSide {
    fn new() -> Self {
        let ns = Netns::create(&format!("{}-tcpkt", unique_stem())).unwrap();
        for args in [
            &[
                "link", "add", "vpod", "type", "veth", "peer", "name", "vpodp",
            ][..],
            &["link", "set", "vpod", "up"],
            &["link", "set", "vpodp", "up"],
            &["route", "add", "10.244.0.0/16", "dev", "vpod"],
            &["-6", "route", "add", "fd00:244::/32", "dev", "vpod"],
        ] {
            ns.ip(args).unwrap();
        }
        ns.sysctl("net.ipv4.ip_forward", "1").unwrap();
        ns.sysctl("net.ipv6.conf.all.forwarding", "1").unwrap();
        // SAFETY: if_nametoindex(3) reads a NUL-terminated string.
        let vpod = ns
            .run(|| unsafe { libc::if_nametoindex(c"vpod".as_ptr()) })
            .unwrap();
        assert_ne!(vpod, 0);
        Self { ns, vpod }
    }
}

impl Harness {
    /// `load`, with `conntrack_size` entries of conntrack (as the agent
    /// splits `--conntrack-size`).
    fn load_sized(config: DataplaneConfig, conntrack_size: u32) -> Self {
        Self {
            loaded: Loaded::new(Hook::Tc, &config, conntrack_size),
            side: PodSide::new(),
        }
    }

    /// The default lab: web (VIP:80/TCP and VIP:53/UDP) with three backends,
    /// and `empty` (`EMPTY_VIP`, 80/TCP and 53/UDP) without endpoints.
    fn web(config: DataplaneConfig) -> Self {
        Self::web_sized(config, sluice_abi::maps::DEFAULT_CONNTRACK_SIZE)
    }

    fn web_sized(config: DataplaneConfig, conntrack_size: u32) -> Self {
        let mut h = Self::load_sized(config, conntrack_size);
        h.set(&[
            (
                ServiceKey::new(VIP, 80, proto::TCP),
                B.iter().map(|b| (*b, 8080)).collect(),
            ),
            (
                ServiceKey::new(VIP, 53, proto::UDP),
                B.iter().map(|b| (*b, 5353)).collect(),
            ),
            (ServiceKey::new(EMPTY_VIP, 80, proto::TCP), Vec::new()),
            (ServiceKey::new(EMPTY_VIP, 53, proto::UDP), Vec::new()),
        ]);
        h
    }

    fn set(&mut self, frontends: &[(ServiceKey, Vec<(Ipv4Addr, u16)>)]) {
        let mut desired = Desired::default();
        for (key, backends) in frontends {
            desired.cluster_ips.insert(key.addr().into());
            desired.frontends.insert(
                (*key).into(),
                DesiredFrontend {
                    name: format!("test/{}", key.addr()),
                    backends: backends.iter().map(|&(a, p)| (a.into(), p)).collect(),
                    ..DesiredFrontend::default()
                },
            );
        }
        self.program(&desired);
    }

    fn run(&self, frame: &[u8]) -> (u32, Vec<u8>) {
        // struct __sk_buff, zero but for ifindex (offset 40): the frame
        // arrives on the pod's interface.
        let mut ctx = [0u8; 192];
        ctx[40..44].copy_from_slice(&self.side.vpod.to_ne_bytes());
        self.loaded.run(frame, &ctx, &self.side.ns)
    }

    fn service_stats(&self, key: ServiceKey) -> TrafficStats {
        let id = self.current.frontends[&key.into()].id;
        sum_stats(&self.maps.service_stats.get(&id, 0).unwrap())
    }

    fn backend_stats(&self, key: ServiceKey, addr: Ipv4Addr) -> TrafficStats {
        let id = self.current.frontends[&key.into()]
            .slots
            .values()
            .find(|b| b.addr == addr)
            .unwrap()
            .id;
        sum_stats(&self.maps.backend_stats.get(&id, 0).unwrap())
    }
}

fn privileged(test: &str) -> bool {
    require_privileges(test)
}

/// Sends a SYN from `sport` and returns the backend it was sent to.
fn syn_backend(h: &Harness, sport: u16) -> (Ipv4Addr, u16) {
    let (verdict, out) = h.run(&build(&Spec {
        src: (CLIENT, sport),
        ..Spec::default()
    }));
    assert_eq!(verdict, TC_ACT_OK);
    let seen = parse_checked(&out);
    assert_eq!(seen.src, (CLIENT, sport), "the source is untouched");
    seen.dst
}

#[test]
fn a_syn_to_a_cluster_ip_is_dnated_to_a_backend_with_valid_checksums() {
    if !privileged("a_syn_to_a_cluster_ip_is_dnated_to_a_backend_with_valid_checksums") {
        return;
    }
    let h = Harness::web(DataplaneConfig::default());
    let (verdict, out) = h.run(&build(&Spec::default()));
    assert_eq!(verdict, TC_ACT_OK);
    let seen = parse_checked(&out);
    assert!(
        B.contains(&seen.dst.0),
        "DNAT to a backend, got {:?}",
        seen.dst
    );
    assert_eq!((seen.dst.1, seen.proto), (8080, TCP));
    assert_eq!(
        (seen.eth_dst, seen.eth_src),
        (HOST_MAC, CLIENT_MAC),
        "L2 is the stack's business"
    );
    assert_eq!(h.events(Event::NewFlow), 1);
    let stats = h.service_stats(ServiceKey::new(VIP, 80, proto::TCP));
    assert_eq!((stats.packets, stats.new_flows), (1, 1));
    assert_eq!(stats.bytes, u64::try_from(out.len()).unwrap());
    let be = h.backend_stats(ServiceKey::new(VIP, 80, proto::TCP), seen.dst.0);
    assert_eq!((be.packets, be.new_flows), (1, 1));
}

#[test]
fn a_flow_keeps_its_backend_and_flows_spread_over_all_backends() {
    if !privileged("a_flow_keeps_its_backend_and_flows_spread_over_all_backends") {
        return;
    }
    let h = Harness::web(DataplaneConfig::default());
    let first = syn_backend(&h, 41000);
    for flags in [ACK, ACK | 0x08, ACK] {
        let (_, out) = h.run(&build(&Spec {
            src: (CLIENT, 41000),
            tcp_flags: flags,
            ..Spec::default()
        }));
        assert_eq!(
            parse_checked(&out).dst,
            first,
            "every packet of the flow goes to the same backend"
        );
    }
    assert_eq!(h.events(Event::Established), 3);
    let mut seen = BTreeSet::new();
    for sport in 42000..42100 {
        seen.insert(syn_backend(&h, sport).0);
    }
    assert_eq!(
        seen,
        B.into_iter().collect(),
        "100 flows reach all three backends"
    );
}

#[test]
fn replies_are_reverse_natted_to_the_cluster_ip() {
    if !privileged("replies_are_reverse_natted_to_the_cluster_ip") {
        return;
    }
    let h = Harness::web(DataplaneConfig::default());
    let backend = syn_backend(&h, 43000);
    let reply = Spec {
        src: backend,
        dst: (CLIENT, 43000),
        tcp_flags: SYN | ACK,
        ..Spec::default()
    };
    let (verdict, out) = h.run(&build(&reply));
    assert_eq!(verdict, TC_ACT_OK);
    let seen = parse_checked(&out);
    assert_eq!(
        seen.src,
        (VIP, 80),
        "the client sees the ClusterIP as the source"
    );
    assert_eq!(seen.dst, (CLIENT, 43000));
    assert_eq!(h.events(Event::Reply), 1);
    assert_eq!(
        h.service_stats(ServiceKey::new(VIP, 80, proto::TCP))
            .packets,
        2
    );

    // The same backend answering another client port is not a reply of ours.
    let stray = Spec {
        src: backend,
        dst: (CLIENT, 43001),
        tcp_flags: ACK,
        ..Spec::default()
    };
    let frame = build(&stray);
    assert_eq!(h.run(&frame), (TC_ACT_OK, frame));
}

#[test]
fn udp_is_natted_both_ways_with_and_without_a_checksum() {
    if !privileged("udp_is_natted_both_ways_with_and_without_a_checksum") {
        return;
    }
    let h = Harness::web(DataplaneConfig::default());
    for (sport, no_checksum) in [(50000, false), (50001, true)] {
        let spec = Spec {
            src: (CLIENT, sport),
            dst: (VIP, 53),
            proto: UDP,
            payload: b"query".to_vec(),
            udp_no_checksum: no_checksum,
            ..Spec::default()
        };
        let (verdict, out) = h.run(&build(&spec));
        assert_eq!(verdict, TC_ACT_OK);
        let seen = parse_checked(&out);
        assert!(
            B.contains(&seen.dst.0) && seen.dst.1 == 5353 && seen.proto == UDP,
            "{seen:?}"
        );
        assert_eq!(
            seen.l4_check == 0,
            no_checksum,
            "a zero UDP checksum stays zero, a real one stays real"
        );

        let reply = Spec {
            src: seen.dst,
            dst: (CLIENT, sport),
            ..spec.clone()
        };
        let (verdict, out) = h.run(&build(&reply));
        assert_eq!(verdict, TC_ACT_OK);
        let back = parse_checked(&out);
        assert_eq!(back.src, (VIP, 53));
        assert_eq!(back.l4_check == 0, no_checksum);
    }
}

#[test]
fn traffic_that_is_not_for_a_service_passes_untouched() {
    if !privileged("traffic_that_is_not_for_a_service_passes_untouched") {
        return;
    }
    let h = Harness::web(DataplaneConfig::default());
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "TCP to a pod IP",
            build(&Spec {
                dst: (B[0], 8080),
                ..Spec::default()
            }),
        ),
        (
            "TCP to the ClusterIP on another port",
            build(&Spec {
                dst: (VIP, 81),
                ..Spec::default()
            }),
        ),
        (
            "UDP to the TCP-only port",
            build(&Spec {
                dst: (VIP, 80),
                proto: UDP,
                ..Spec::default()
            }),
        ),
        (
            "ICMP echo to the ClusterIP",
            builder::icmp_echo(CLIENT, VIP),
        ),
        ("IPv6", builder::other_ethertype(0x86dd, 60)),
        ("ARP", builder::other_ethertype(0x0806, 28)),
        ("a runt frame", vec![0u8; 14]),
    ];
    for (what, frame) in cases {
        assert_eq!(h.run(&frame), (TC_ACT_OK, frame.clone()), "{what}");
    }
    assert_eq!(h.events(Event::Pass), 7);
    assert_eq!(h.events(Event::NewFlow), 0);
}

#[test]
fn a_service_without_endpoints_answers_icmp_port_unreachable() {
    if !privileged("a_service_without_endpoints_answers_icmp_port_unreachable") {
        return;
    }
    let h = Harness::web(DataplaneConfig::default());
    for (proto, port, options) in [
        (TCP, 80, Vec::new()),
        (UDP, 53, Vec::new()),
        (TCP, 80, vec![1, 1, 1, 0]),
    ] {
        let spec = Spec {
            dst: (EMPTY_VIP, port),
            proto,
            ip_options: options.clone(),
            ..Spec::default()
        };
        let original = build(&spec);
        let (verdict, out) = h.run(&original);
        assert_eq!(
            verdict, TC_ACT_REDIRECT,
            "sent back out of the interface it came in on"
        );
        assert_eq!(
            (&out[0..6], &out[6..12]),
            (&CLIENT_MAC[..], &HOST_MAC[..]),
            "MACs swapped"
        );
        let (kind, code, src, dst, quoted) = parse_icmp_error(&out);
        assert_eq!(
            (kind, code),
            (3, 3),
            "destination unreachable, port unreachable"
        );
        assert_eq!((src, dst), (EMPTY_VIP, CLIENT));
        let ihl = 20 + options.len();
        assert_eq!(
            quoted,
            original[14..14 + ihl + 8],
            "the original header and 8 bytes of L4 are quoted"
        );
    }
    assert_eq!(h.drops(DropReason::NoEndpoints), 3);
    assert_eq!(h.events(Event::RejectSent), 3);
}

#[test]
fn with_a_service_cidr_unallocated_ips_and_unknown_ports_are_rejected() {
    if !privileged("with_a_service_cidr_unallocated_ips_and_unknown_ports_are_rejected") {
        return;
    }
    let h = Harness::web(DataplaneConfig::with_service_cidr(
        Ipv4Addr::new(10, 96, 0, 0),
        12,
    ));
    let unallocated = build(&Spec {
        dst: (Ipv4Addr::new(10, 96, 5, 5), 80),
        ..Spec::default()
    });
    assert_eq!(h.run(&unallocated).0, TC_ACT_REDIRECT);
    assert_eq!(h.drops(DropReason::UnallocatedIp), 1);
    let unknown_port = build(&Spec {
        dst: (VIP, 81),
        ..Spec::default()
    });
    let (verdict, out) = h.run(&unknown_port);
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!(parse_icmp_error(&out).2, VIP);
    assert_eq!(h.drops(DropReason::UnknownPort), 1);
    // Outside the range, and ordinary pod traffic, still pass.
    for dst in [(Ipv4Addr::new(10, 112, 0, 1), 80), (B[1], 8080)] {
        let frame = build(&Spec {
            dst,
            ..Spec::default()
        });
        assert_eq!(h.run(&frame), (TC_ACT_OK, frame.clone()));
    }
    // And the Service itself still works.
    assert!(B.contains(&syn_backend(&h, 44000).0));
}

#[test]
fn truncated_l4_headers_are_dropped_and_counted() {
    if !privileged("truncated_l4_headers_are_dropped_and_counted") {
        return;
    }
    let h = Harness::web(DataplaneConfig::default());
    let short_tcp = build(&Spec {
        truncate: Some(14 + 20 + 10),
        ..Spec::default()
    });
    assert_eq!(h.run(&short_tcp).0, TC_ACT_SHOT);
    assert_eq!(h.drops(DropReason::MalformedL4), 1);
    // IHL says 60 bytes of header: the frame ends before the ports.
    let long_ihl = build(&Spec {
        ihl: Some(15),
        ..Spec::default()
    });
    assert_eq!(h.run(&long_ihl).0, TC_ACT_SHOT);
    assert_eq!(h.drops(DropReason::MalformedL4), 2);
    assert_eq!(h.events(Event::NewFlow), 0);
    // BPF_PROG_TEST_RUN refuses malformed IPv4 headers itself (EINVAL), so
    // MalformedIp is exercised end to end instead, with a raw frame from a pod.
}

#[test]
fn ipv4_options_move_the_ports_and_are_honoured() {
    if !privileged("ipv4_options_move_the_ports_and_are_honoured") {
        return;
    }
    let h = Harness::web(DataplaneConfig::default());
    // Eight bytes of options: NOPs and an end-of-options.
    let spec = Spec {
        ip_options: vec![1, 1, 1, 1, 1, 1, 1, 0],
        src: (CLIENT, 45000),
        ..Spec::default()
    };
    let (verdict, out) = h.run(&build(&spec));
    assert_eq!(verdict, TC_ACT_OK);
    let seen = parse_checked(&out);
    assert!(B.contains(&seen.dst.0) && seen.dst.1 == 8080, "{seen:?}");
    assert_eq!(seen.src, (CLIENT, 45000));
}

#[test]
fn later_fragments_to_a_cluster_ip_without_their_first_are_dropped_and_counted_others_pass() {
    if !privileged(
        "later_fragments_to_a_cluster_ip_without_their_first_are_dropped_and_counted_others_pass",
    ) {
        return;
    }
    let h = Harness::web(DataplaneConfig::default());
    // Offset 0x00b9 (1480 bytes in): its first fragment was never seen.
    for proto in [UDP, TCP] {
        let later = build(&Spec {
            frag: 0x00b9,
            proto,
            dst: (VIP, 53),
            ..Spec::default()
        });
        assert_eq!(h.run(&later).0, TC_ACT_SHOT);
    }
    assert_eq!(h.drops(DropReason::Fragment), 2);
    let elsewhere = build(&Spec {
        frag: 0x2000,
        proto: UDP,
        dst: (B[0], 5353),
        ..Spec::default()
    });
    assert_eq!(h.run(&elsewhere), (TC_ACT_OK, elsewhere.clone()));
}

#[test]
fn a_udp_flow_moves_off_a_removed_backend_and_tcp_drains() {
    if !privileged("a_udp_flow_moves_off_a_removed_backend_and_tcp_drains") {
        return;
    }
    let mut h = Harness::web(DataplaneConfig::default());
    let udp = |sport| Spec {
        src: (CLIENT, sport),
        dst: (VIP, 53),
        proto: UDP,
        ..Spec::default()
    };
    let (_, out) = h.run(&build(&udp(51000)));
    let udp_backend = parse_checked(&out).dst.0;
    let tcp_backend = syn_backend(&h, 46000).0;

    // Remove the UDP flow's backend from both frontends.
    let keep = |port| {
        B.iter()
            .filter(|b| **b != udp_backend)
            .map(|b| (*b, port))
            .collect::<Vec<_>>()
    };
    h.set(&[
        (ServiceKey::new(VIP, 80, proto::TCP), keep(8080)),
        (ServiceKey::new(VIP, 53, proto::UDP), keep(5353)),
        (ServiceKey::new(EMPTY_VIP, 80, proto::TCP), Vec::new()),
        (ServiceKey::new(EMPTY_VIP, 53, proto::UDP), Vec::new()),
    ]);
    let (_, out) = h.run(&build(&udp(51000)));
    let moved = parse_checked(&out).dst.0;
    assert_ne!(
        moved, udp_backend,
        "the next datagram goes to a live backend"
    );
    assert!(B.contains(&moved));
    assert_eq!(h.events(Event::Reselect), 1);

    // An established TCP flow keeps its backend, removed (it drains) or not.
    let (_, out) = h.run(&build(&Spec {
        src: (CLIENT, 46000),
        tcp_flags: ACK,
        ..Spec::default()
    }));
    assert_eq!(parse_checked(&out).dst.0, tcp_backend);
    // New connections never reach the removed backend.
    for sport in 47000..47060 {
        assert_ne!(syn_backend(&h, sport).0, udp_backend);
    }
}

#[test]
fn a_syn_reusing_the_tuple_of_a_closed_connection_is_balanced_again() {
    if !privileged("a_syn_reusing_the_tuple_of_a_closed_connection_is_balanced_again") {
        return;
    }
    let h = Harness::web(DataplaneConfig::default());
    syn_backend(&h, 48000);
    // A retransmitted SYN is the same connection.
    syn_backend(&h, 48000);
    assert_eq!(h.events(Event::Reselect), 0);
    let fin = build(&Spec {
        src: (CLIENT, 48000),
        tcp_flags: FIN | ACK,
        ..Spec::default()
    });
    assert_eq!(h.run(&fin).0, TC_ACT_OK);
    syn_backend(&h, 48000);
    assert_eq!(
        h.events(Event::Reselect),
        1,
        "a SYN after a FIN starts a new flow"
    );
    assert_eq!(h.events(Event::NewFlow), 2);
}
