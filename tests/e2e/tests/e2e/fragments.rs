//! Datagrams larger than the MTU, fragmented both ways: 8,000-byte UDP
//! echoes through a ClusterIP from a pod (TC; the backend on the node and
//! on the other node) and through NodePorts from outside (the backend on
//! the node, and on the other node behind SNAT), in every north-south
//! mode. Only the first fragment of each carries the ports; the rest
//! follow its translation.
#![allow(clippy::unwrap_used, reason = "tests: a failure fails the test")]

use std::{
    net::{Ipv4Addr, SocketAddr},
    time::Duration,
};

use sluice_lab::{
    Cluster,
    bulk::{self, UdpEcho},
    require_privileges,
};

use crate::common::*;

const ECHO: [Ipv4Addr; 2] = [Ipv4Addr::new(10, 244, 1, 30), Ipv4Addr::new(10, 244, 2, 30)];
const LOCAL_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 50);
const REMOTE_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 51);
const LOCAL_PORT: u16 = 30095;
const REMOTE_PORT: u16 = 30096;
const SIZE: usize = 8000;
/// Echoes in the lab take microseconds.
const LIMIT: Duration = Duration::from_secs(3);

fn echoes(args: &[&str]) {
    let mut c = Cluster::new().unwrap();
    let mut servers = Vec::new();
    for (i, echo) in ECHO.into_iter().enumerate() {
        let lab = c.node(i);
        lab.add_pod("echo", echo).unwrap();
        servers.push(UdpEcho::start(&lab.pod("echo").ns, 7000).unwrap());
        lab.write_manifest(
            "local.yaml",
            &udp_node_port(
                "local",
                LOCAL_VIP,
                (7, LOCAL_PORT, 7000),
                (ECHO[0], "node-a"),
            ),
        )
        .unwrap();
        lab.write_manifest(
            "remote.yaml",
            &udp_node_port(
                "remote",
                REMOTE_VIP,
                (7, REMOTE_PORT, 7000),
                (ECHO[1], "node-b"),
            ),
        )
        .unwrap();
    }
    c.node(0).add_pod("client", CLIENT).unwrap();
    start_agents(&mut c, args);
    let pod = &c.node_ref(0).pod("client").ns;
    let node = c.node_ip(0);
    for (from, to, what) in [
        (pod, (LOCAL_VIP, 7), "ClusterIP, backend on the node"),
        (pod, (REMOTE_VIP, 7), "ClusterIP, backend on the other node"),
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
        for n in [100, SIZE] {
            bulk::udp_echo(from, SocketAddr::from(to), n, LIMIT)
                .unwrap_or_else(|e| panic!("{what}, {n} bytes: {e:#}"));
        }
    }
    assert!(event_count(c.node_ref(0), "fragment_followed") > 0);
    drop(servers);
}

#[test]
fn datagrams_larger_than_the_mtu_pass_both_ways_through_services_in_xdp_mode() {
    if !require_privileges(
        "datagrams_larger_than_the_mtu_pass_both_ways_through_services_in_xdp_mode",
    ) {
        return;
    }
    echoes(&[]);
}

#[test]
fn datagrams_larger_than_the_mtu_pass_both_ways_through_services_in_generic_xdp_mode() {
    if !require_privileges(
        "datagrams_larger_than_the_mtu_pass_both_ways_through_services_in_generic_xdp_mode",
    ) {
        return;
    }
    echoes(&["--xdp-mode", "generic"]);
}

#[test]
fn datagrams_larger_than_the_mtu_pass_both_ways_through_services_in_tc_mode() {
    if !require_privileges(
        "datagrams_larger_than_the_mtu_pass_both_ways_through_services_in_tc_mode",
    ) {
        return;
    }
    echoes(&["--xdp-mode", "tc"]);
}
