//! ICMP errors through Services, end to end: a connected UDP client whose
//! backend has no listener gets ECONNREFUSED through a ClusterIP (TC, the
//! backend on the client's node or the other) and through a NodePort
//! (the backend here, or on the other node behind SNAT); and a probe with
//! a limited time to live, sent through two routers to a NodePort, hears
//! time-exceeded from each hop in turn, this node included, then the
//! backend's port-unreachable.
#![allow(clippy::unwrap_used, reason = "tests: a failure fails the test")]

use std::{
    net::{Ipv4Addr, SocketAddr},
    time::Duration,
};

use sluice_lab::{
    Cluster,
    probe::{self, Outcome},
    require_privileges,
};

use crate::common::*;

/// Backends without a listener, one on each node.
const QUIET: [Ipv4Addr; 2] = [Ipv4Addr::new(10, 244, 1, 20), Ipv4Addr::new(10, 244, 2, 20)];
const LOCAL_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 30);
const REMOTE_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 31);
const LOCAL_PORT: u16 = 30090;
const REMOTE_PORT: u16 = 30091;
/// Long enough for any answer in the lab (they take microseconds).
const WAIT: Duration = Duration::from_secs(3);

/// Two nodes, a backend without a listener on each, a client pod on node
/// a, the Services `local` and `remote`; the agents run with `args`.
fn quiet_cluster(args: &[&str]) -> Cluster {
    let mut c = Cluster::new().unwrap();
    for (i, quiet) in QUIET.into_iter().enumerate() {
        let lab = c.node(i);
        lab.add_pod("quiet", quiet).unwrap();
        lab.write_manifest(
            "local.yaml",
            &udp_node_port(
                "local",
                LOCAL_VIP,
                (53, LOCAL_PORT, 5353),
                (QUIET[0], "node-a"),
            ),
        )
        .unwrap();
        lab.write_manifest(
            "remote.yaml",
            &udp_node_port(
                "remote",
                REMOTE_VIP,
                (53, REMOTE_PORT, 5353),
                (QUIET[1], "node-b"),
            ),
        )
        .unwrap();
    }
    c.node(0).add_pod("client", CLIENT).unwrap();
    start_agents(&mut c, args);
    c
}

fn refused(args: &[&str]) {
    let c = quiet_cluster(args);
    let pod = &c.node_ref(0).pod("client").ns;
    let node = c.node_ip(0);
    for (from, to, what) in [
        (pod, (LOCAL_VIP, 53), "ClusterIP, backend on the node"),
        (
            pod,
            (REMOTE_VIP, 53),
            "ClusterIP, backend on the other node",
        ),
        (
            &c.client().ns,
            (node, LOCAL_PORT),
            "NodePort, backend on the node",
        ),
        (
            &c.client().ns,
            (node, REMOTE_PORT),
            "NodePort, backend on the other node",
        ),
    ] {
        let got = probe::udp(from, SocketAddr::from(to), 64, WAIT).unwrap();
        assert_eq!(
            got,
            Outcome::port_unreachable(to.0),
            "{what}: ECONNREFUSED, as from the address the client sent to"
        );
    }
    assert!(event_count(c.node_ref(0), "icmp_error") >= 3);
}

#[test]
fn a_connected_udp_client_gets_econnrefused_through_a_service_in_xdp_mode() {
    if !require_privileges("a_connected_udp_client_gets_econnrefused_through_a_service_in_xdp_mode")
    {
        return;
    }
    refused(&[]);
}

#[test]
fn a_connected_udp_client_gets_econnrefused_through_a_service_in_generic_xdp_mode() {
    if !require_privileges(
        "a_connected_udp_client_gets_econnrefused_through_a_service_in_generic_xdp_mode",
    ) {
        return;
    }
    refused(&["--xdp-mode", "generic"]);
}

#[test]
fn a_connected_udp_client_gets_econnrefused_through_a_service_in_tc_mode() {
    if !require_privileges("a_connected_udp_client_gets_econnrefused_through_a_service_in_tc_mode")
    {
        return;
    }
    refused(&["--xdp-mode", "tc"]);
}

/// Probes through two routers to a NodePort of node a, at each TTL: the
/// routers (r1, then r2 on its side towards the client), node a (BPF
/// forwards, or the stack does for the backend here), node b for the
/// backend there, and the backend's ECONNREFUSED from the NodePort.
fn traceroute(args: &[&str]) {
    let c = quiet_cluster(args);
    let far = c.add_far_client(1500).unwrap();
    let (a, b) = (c.node_ip(0), c.node_ip(1));
    let r1 = Ipv4Addr::new(192, 168, 79, 1);
    let r2 = Ipv4Addr::new(192, 168, 78, 2);
    for (port, hops) in [
        (
            REMOTE_PORT,
            vec![
                Outcome::time_exceeded(r1),
                Outcome::time_exceeded(r2),
                Outcome::time_exceeded(a),
                Outcome::time_exceeded(b),
                Outcome::port_unreachable(a),
            ],
        ),
        (
            LOCAL_PORT,
            vec![
                Outcome::time_exceeded(r1),
                Outcome::time_exceeded(r2),
                Outcome::time_exceeded(a),
                Outcome::port_unreachable(a),
            ],
        ),
    ] {
        for (ttl, want) in (1..).zip(hops) {
            let got = probe::udp(&far.client.ns, SocketAddr::from((a, port)), ttl, WAIT).unwrap();
            assert_eq!(got, want, "NodePort {port}, TTL {ttl}");
        }
    }
    assert!(drop_count(c.node_ref(0), "ttl_exceeded") >= 2);
}

#[test]
fn a_ttl_limited_probe_through_a_node_port_hears_from_each_hop_in_xdp_mode() {
    if !require_privileges(
        "a_ttl_limited_probe_through_a_node_port_hears_from_each_hop_in_xdp_mode",
    ) {
        return;
    }
    traceroute(&[]);
}

#[test]
fn a_ttl_limited_probe_through_a_node_port_hears_from_each_hop_in_generic_xdp_mode() {
    if !require_privileges(
        "a_ttl_limited_probe_through_a_node_port_hears_from_each_hop_in_generic_xdp_mode",
    ) {
        return;
    }
    traceroute(&["--xdp-mode", "generic"]);
}

#[test]
fn a_ttl_limited_probe_through_a_node_port_hears_from_each_hop_in_tc_mode() {
    if !require_privileges("a_ttl_limited_probe_through_a_node_port_hears_from_each_hop_in_tc_mode")
    {
        return;
    }
    traceroute(&["--xdp-mode", "tc"]);
}
