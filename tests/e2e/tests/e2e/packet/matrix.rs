//! The verdict matrix of `tc_ingress`, in the manner of Katran's packet
//! fixtures: one row per kind of packet from a pod, with the verdict, what
//! leaves (rewritten, untouched, or an ICMP error in its place) and the one
//! counter it moves. Every row runs through one loaded program whose maps
//! hold the default lab (`Harness::web`) and a service CIDR, each from a
//! source port of its own so that no row meets another's flow.

use std::net::Ipv4Addr;

use sluice_abi::{
    config::DataplaneConfig,
    stats::{DropReason, Event},
};

use super::{
    B, CLIENT, EMPTY_VIP, Harness, TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT, VIP,
    builder::{
        ACK, FIN, SYN, Spec, UDP, build, icmp_echo, other_ethertype, parse_checked,
        parse_icmp_error,
    },
    privileged,
};

/// What leaves the program.
#[derive(Debug)]
enum Out {
    /// The frame, unchanged.
    Untouched,
    /// The frame, its destination rewritten to a backend on this port;
    /// checksums valid, the source kept.
    Dnat(u16),
    /// An ICMP port-unreachable in its place, from this address.
    Unreachable(Ipv4Addr),
    /// Nothing (dropped).
    Nothing,
}

/// The one counter a row moves by one.
#[derive(Clone, Copy, Debug)]
enum Moves {
    Drop(DropReason),
    Event(Event),
}

struct Row {
    what: &'static str,
    frame: Vec<u8>,
    verdict: u32,
    out: Out,
    moves: Moves,
}

fn spec(sport: u16) -> Spec {
    Spec {
        src: (CLIENT, sport),
        ..Spec::default()
    }
}

#[expect(clippy::too_many_lines, reason = "a table, a row a case")]
fn rows() -> Vec<Row> {
    let row = |what, frame, verdict, out, moves| Row {
        what,
        frame,
        verdict,
        out,
        moves,
    };
    vec![
        row(
            "a SYN to a ClusterIP port",
            build(&spec(46001)),
            TC_ACT_OK,
            Out::Dnat(8080),
            Moves::Event(Event::NewFlow),
        ),
        row(
            "UDP to a ClusterIP port",
            build(&Spec {
                proto: UDP,
                dst: (VIP, 53),
                payload: vec![0; 12],
                ..spec(46002)
            }),
            TC_ACT_OK,
            Out::Dnat(5353),
            Moves::Event(Event::NewFlow),
        ),
        row(
            "a SYN with IPv4 options",
            build(&Spec {
                ip_options: vec![1, 1, 1, 0],
                ..spec(46003)
            }),
            TC_ACT_OK,
            Out::Dnat(8080),
            Moves::Event(Event::NewFlow),
        ),
        row(
            "a SYN to a Service without endpoints",
            build(&Spec {
                dst: (EMPTY_VIP, 80),
                ..spec(46004)
            }),
            TC_ACT_REDIRECT,
            Out::Unreachable(EMPTY_VIP),
            Moves::Drop(DropReason::NoEndpoints),
        ),
        row(
            "UDP to a Service without endpoints",
            build(&Spec {
                proto: UDP,
                dst: (EMPTY_VIP, 53),
                ..spec(46005)
            }),
            TC_ACT_REDIRECT,
            Out::Unreachable(EMPTY_VIP),
            Moves::Drop(DropReason::NoEndpoints),
        ),
        row(
            "a bare ACK to a ClusterIP, of no flow",
            build(&Spec {
                tcp_flags: ACK,
                ..spec(46006)
            }),
            TC_ACT_SHOT,
            Out::Nothing,
            Moves::Drop(DropReason::CtInvalid),
        ),
        row(
            "a FIN to a ClusterIP, of no flow",
            build(&Spec {
                tcp_flags: FIN | ACK,
                ..spec(46007)
            }),
            TC_ACT_SHOT,
            Out::Nothing,
            Moves::Drop(DropReason::CtInvalid),
        ),
        row(
            "a SYN-ACK to a ClusterIP",
            build(&Spec {
                tcp_flags: SYN | ACK,
                ..spec(46008)
            }),
            TC_ACT_SHOT,
            Out::Nothing,
            Moves::Drop(DropReason::CtInvalid),
        ),
        row(
            "a later fragment to a ClusterIP, its first unseen",
            build(&Spec {
                proto: UDP,
                dst: (VIP, 53),
                frag: 0x00b9,
                ..spec(46009)
            }),
            TC_ACT_SHOT,
            Out::Nothing,
            Moves::Drop(DropReason::Fragment),
        ),
        row(
            "TCP cut before its ports",
            build(&Spec {
                truncate: Some(14 + 20 + 10),
                ..spec(46010)
            }),
            TC_ACT_SHOT,
            Out::Nothing,
            Moves::Drop(DropReason::MalformedL4),
        ),
        row(
            "an IHL past the end of the frame",
            build(&Spec {
                ihl: Some(15),
                ..spec(46011)
            }),
            TC_ACT_SHOT,
            Out::Nothing,
            Moves::Drop(DropReason::MalformedL4),
        ),
        row(
            "a source not routed through the interface",
            build(&Spec {
                src: (Ipv4Addr::new(10, 99, 0, 1), 46012),
                ..Spec::default()
            }),
            TC_ACT_SHOT,
            Out::Nothing,
            Moves::Drop(DropReason::SpoofedSource),
        ),
        row(
            "a ClusterIP on a port no Service has",
            build(&Spec {
                dst: (VIP, 81),
                ..spec(46013)
            }),
            TC_ACT_REDIRECT,
            Out::Unreachable(VIP),
            Moves::Drop(DropReason::UnknownPort),
        ),
        row(
            "an unallocated address of the service CIDR",
            build(&Spec {
                dst: (Ipv4Addr::new(10, 96, 5, 5), 80),
                ..spec(46014)
            }),
            TC_ACT_REDIRECT,
            Out::Unreachable(Ipv4Addr::new(10, 96, 5, 5)),
            Moves::Drop(DropReason::UnallocatedIp),
        ),
        row(
            "TCP to a pod address",
            build(&Spec {
                dst: (B[0], 8080),
                ..spec(46015)
            }),
            TC_ACT_OK,
            Out::Untouched,
            Moves::Event(Event::Pass),
        ),
        row(
            "TCP outside the service CIDR",
            build(&Spec {
                dst: (Ipv4Addr::new(10, 112, 0, 1), 80),
                ..spec(46016)
            }),
            TC_ACT_OK,
            Out::Untouched,
            Moves::Event(Event::Pass),
        ),
        row(
            "a later fragment to a pod",
            build(&Spec {
                proto: UDP,
                dst: (B[0], 5353),
                frag: 0x2000,
                ..spec(46017)
            }),
            TC_ACT_OK,
            Out::Untouched,
            Moves::Event(Event::Pass),
        ),
        row(
            "an ICMP echo to a ClusterIP",
            icmp_echo(CLIENT, VIP),
            TC_ACT_OK,
            Out::Untouched,
            Moves::Event(Event::Pass),
        ),
        row(
            "IPv6",
            other_ethertype(0x86dd, 60),
            TC_ACT_OK,
            Out::Untouched,
            Moves::Event(Event::Pass),
        ),
        row(
            "ARP",
            other_ethertype(0x0806, 28),
            TC_ACT_OK,
            Out::Untouched,
            Moves::Event(Event::Pass),
        ),
        row(
            "a runt frame",
            vec![0u8; 14],
            TC_ACT_OK,
            Out::Untouched,
            Moves::Event(Event::Pass),
        ),
    ]
}

#[test]
fn every_kind_of_packet_from_a_pod_gets_its_verdict_its_output_and_its_counter() {
    if !privileged("every_kind_of_packet_from_a_pod_gets_its_verdict_its_output_and_its_counter") {
        return;
    }
    let h = Harness::web(DataplaneConfig::with_service_cidr(
        Ipv4Addr::new(10, 96, 0, 0),
        12,
    ));
    let count = |m: Moves| match m {
        Moves::Drop(r) => h.drops(r),
        Moves::Event(e) => h.events(e),
    };
    let mut failures = Vec::new();
    for row in rows() {
        let before = count(row.moves);
        let (verdict, out) = h.run(&row.frame);
        let mut wrong = Vec::new();
        if verdict != row.verdict {
            wrong.push(format!("verdict {verdict}, not {}", row.verdict));
        }
        match row.out {
            Out::Untouched if out != row.frame => wrong.push("the frame was changed".into()),
            Out::Dnat(port) if verdict == TC_ACT_OK => {
                let seen = parse_checked(&out);
                if !(B.contains(&seen.dst.0) && seen.dst.1 == port) {
                    wrong.push(format!("sent to {:?}, not a backend on {port}", seen.dst));
                }
                let sent = parse_checked(&row.frame);
                if seen.src != sent.src {
                    wrong.push(format!("the source became {:?}", seen.src));
                }
            }
            Out::Unreachable(from) if verdict == TC_ACT_REDIRECT => {
                let (kind, code, src, dst, _) = parse_icmp_error(&out);
                if (kind, code, src, dst) != (3, 3, from, CLIENT) {
                    wrong.push(format!(
                        "ICMP {kind}/{code} from {src} to {dst}, not port-unreachable from {from}"
                    ));
                }
            }
            _ => {}
        }
        let moved = count(row.moves) - before;
        if moved != 1 {
            wrong.push(format!("{:?} moved by {moved}, not 1", row.moves));
        }
        if !wrong.is_empty() {
            failures.push(format!("{}: {}", row.what, wrong.join("; ")));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
