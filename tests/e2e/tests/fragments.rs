//! Datagrams larger than the MTU, fragmented both ways: 8,000-byte UDP
//! echoes through a ClusterIP from a pod (TC; the backend on the node and
//! on the other node) and through NodePorts from outside (the backend on
//! the node, and on the other node behind SNAT), in every north-south
//! mode. Only the first fragment of each carries the ports; the rest
//! follow its translation.
#![allow(clippy::unwrap_used, reason = "tests: a failure fails the test")]

mod common;

use std::{
    net::{Ipv4Addr, SocketAddr},
    time::Duration,
};

use common::*;
use sluice_lab::{
    AgentOptions, Cluster,
    bulk::{self, UdpEcho},
    require_privileges,
};

const ECHO: [Ipv4Addr; 2] = [Ipv4Addr::new(10, 244, 1, 30), Ipv4Addr::new(10, 244, 2, 30)];
const LOCAL_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 50);
const REMOTE_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 51);
const LOCAL_PORT: u16 = 30095;
const REMOTE_PORT: u16 = 30096;
const SIZE: usize = 8000;
/// Echoes in the lab take microseconds.
const LIMIT: Duration = Duration::from_secs(3);

fn service(name: &str, vip: Ipv4Addr, node_port: u16, (backend, node): (Ipv4Addr, &str)) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: default}}\nspec:\n  type: NodePort\n  clusterIP: {vip}\n  ports:\n  - {{name: echo, port: 7, protocol: UDP, nodePort: {node_port}}}\n---\n\
         apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}-1\n  namespace: default\n  labels: {{kubernetes.io/service-name: {name}}}\n\
         addressType: IPv4\nports: [{{name: echo, port: 7000, protocol: UDP}}]\nendpoints: [{{addresses: [\"{backend}\"], nodeName: {node}, conditions: {{ready: true}}}}]\n"
    )
}

fn echoes(args: &[&str]) {
    let mut c = Cluster::new().unwrap();
    let mut servers = Vec::new();
    for (i, echo) in ECHO.into_iter().enumerate() {
        let lab = c.node(i);
        lab.add_pod("echo", echo).unwrap();
        servers.push(UdpEcho::start(&lab.pod("echo").ns, 7000).unwrap());
        lab.write_manifest(
            "local.yaml",
            &service("local", LOCAL_VIP, LOCAL_PORT, (ECHO[0], "node-a")),
        )
        .unwrap();
        lab.write_manifest(
            "remote.yaml",
            &service("remote", REMOTE_VIP, REMOTE_PORT, (ECHO[1], "node-b")),
        )
        .unwrap();
    }
    c.node(0).add_pod("client", CLIENT).unwrap();
    for (i, node) in ["node-a", "node-b"].into_iter().enumerate() {
        c.node(i)
            .start_agent(&AgentOptions {
                extra_args: ["--node-name", node]
                    .iter()
                    .chain(args)
                    .map(|a| (*a).to_owned())
                    .collect(),
                ..AgentOptions::default()
            })
            .unwrap();
    }
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
