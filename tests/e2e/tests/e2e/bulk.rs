//! Bulk transfers through every Service path, with TSO, GSO and GRO on
//! for every pod's veth (and GSO and GRO on the segment, whose frames keep
//! finished checksums, as from a NIC): 64 MiB each way through a ClusterIP
//! from a pod (TC, and socket LB for a process in the lab's cgroup), and
//! from outside through a NodePort whose backend is on
//! the node, one whose backend is on the other node, an
//! `externalTrafficPolicy: Local` NodePort, an external IP and a load
//! balancer IP, in each north-south mode (native XDP, generic XDP, TC).
//! One request and one reply fit in a packet; a download is 64 KiB
//! super-packets that the wire carries as many.
#![allow(clippy::unwrap_used, reason = "tests: a failure fails the test")]

use std::{
    net::{Ipv4Addr, SocketAddr},
    process::Command,
    time::Duration,
};

use sluice_lab::{
    Cluster,
    bulk::{self, BulkServer},
    enter_on_spawn, require_privileges,
};

use crate::common::*;

const SIZE: usize = 64 << 20;
/// A transfer that stalls takes far longer than this (on veth 64 MiB take
/// well under a second).
const LIMIT: Duration = Duration::from_secs(60);
const LOCAL_PORT: u16 = 30080;
const REMOTE_PORT: u16 = 30081;
const ETP_LOCAL_PORT: u16 = 30082;
const EXTERNAL_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 50);
const LB_IP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 7);
const LOCAL_BACKEND: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 10);
const REMOTE_BACKEND: Ipv4Addr = Ipv4Addr::new(10, 244, 2, 10);

/// A Service `name` of type LoadBalancer with the NodePort `port` and one
/// backend (`backend` on node `node`), and more `spec` lines; with
/// `lb_ip`, that load balancer address.
fn service(
    name: &str,
    vip: Ipv4Addr,
    port: u16,
    (backend, node): (Ipv4Addr, &str),
    spec: &str,
    lb_ip: Option<Ipv4Addr>,
) -> String {
    let status = lb_ip.map_or_else(String::new, |ip| {
        format!("status: {{loadBalancer: {{ingress: [{{ip: {ip}}}]}}}}\n")
    });
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: default}}\nspec:\n  type: LoadBalancer\n  clusterIP: {vip}\n{spec}  ports:\n  - {{name: http, port: 80, nodePort: {port}}}\n{status}---\n\
         apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}-1\n  namespace: default\n  labels: {{kubernetes.io/service-name: {name}}}\n\
         addressType: IPv4\nports: [{{name: http, port: 8080}}]\nendpoints: [{{addresses: [\"{backend}\"], nodeName: {node}, conditions: {{ready: true}}}}]\n"
    )
}

/// The Services: `local` (its backend on node a), `remote` (on node b;
/// also an external IP and a load balancer IP), `etp-local` (node a's
/// backend, `externalTrafficPolicy: Local`).
fn services() -> [(&'static str, String); 3] {
    let a = (LOCAL_BACKEND, "node-a");
    let b = (REMOTE_BACKEND, "node-b");
    [
        ("local", service("local", VIP, LOCAL_PORT, a, "", None)),
        (
            "remote",
            service(
                "remote",
                Ipv4Addr::new(10, 96, 0, 11),
                REMOTE_PORT,
                b,
                &format!("  externalIPs: [{EXTERNAL_IP}]\n"),
                Some(LB_IP),
            ),
        ),
        (
            "etp-local",
            service(
                "etp-local",
                Ipv4Addr::new(10, 96, 0, 12),
                ETP_LOCAL_PORT,
                a,
                "  externalTrafficPolicy: Local\n",
                None,
            ),
        ),
    ]
}

/// Two nodes, a bulk server on each (node a: 10.244.1.10, node b:
/// 10.244.2.10) and a client pod on node a; the `services`; every offload
/// on; the agents running with `args`; the external and load balancer
/// addresses routed through node a.
fn bulk_cluster(args: &[&str]) -> (Cluster, Vec<BulkServer>) {
    let mut c = Cluster::new().unwrap();
    let mut servers = Vec::new();
    for (i, backend) in [LOCAL_BACKEND, REMOTE_BACKEND].into_iter().enumerate() {
        let lab = c.node(i);
        lab.add_pod("server", backend).unwrap();
        servers.push(BulkServer::start(&lab.pod("server").ns, 8080).unwrap());
        for (name, yaml) in services() {
            lab.write_manifest(&format!("{name}.yaml"), &yaml).unwrap();
        }
    }
    c.node(0).add_pod("client", CLIENT).unwrap();
    c.offloads_on().unwrap();
    start_agents(&mut c, args);
    c.route_via(EXTERNAL_IP, 0).unwrap();
    c.route_via(LB_IP, 0).unwrap();
    (c, servers)
}

/// 64 MiB down and up through `to`, from `from`.
pub fn both_ways(from: &sluice_lab::Pod, to: SocketAddr, what: &str) {
    let down = bulk::download(&from.ns, to, SIZE, LIMIT)
        .unwrap_or_else(|e| panic!("{what}: download: {e:#}"));
    let up =
        bulk::upload(&from.ns, to, SIZE, LIMIT).unwrap_or_else(|e| panic!("{what}: upload: {e:#}"));
    eprintln!("{what}: 64 MiB down in {down:?}, up in {up:?}");
}

fn every_path(args: &[&str]) {
    let (c, _servers) = bulk_cluster(args);
    both_ways(
        c.node_ref(0).pod("client"),
        SocketAddr::from((VIP, 80)),
        "ClusterIP from a pod (TC)",
    );
    through_socket_lb(&c);
    north_south(&c, c.client(), "");
}

/// The same through the ClusterIP from a process in the lab's cgroup,
/// which socket LB connects straight to the backend.
fn through_socket_lb(c: &Cluster) {
    let lab = c.node_ref(0);
    let connects = event_count(lab, "sock_connect");
    // `timeout` bounds the whole run; the probe bounds each transfer.
    let mut cmd = Command::new("timeout");
    cmd.arg("150").arg(probe_bin()).args([
        "bulk",
        &SocketAddr::from((VIP, 80)).to_string(),
        &SIZE.to_string(),
    ]);
    let ns = lab.pod("client").ns.open().unwrap();
    enter_on_spawn(&mut cmd, &ns);
    lab.cgroup().enter_on_spawn(&mut cmd).unwrap();
    let out = cmd.output().unwrap();
    let lines = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && lines.contains("down ") && lines.contains("up "),
        "ClusterIP through socket LB: {lines}"
    );
    eprintln!(
        "ClusterIP from a pod (socket LB): {}",
        lines.replace('\n', " ")
    );
    assert!(
        event_count(lab, "sock_connect") >= connects + 2,
        "socket LB connected both"
    );
}

/// Every north-south frontend, from `from` (`what` says which client).
fn north_south(c: &Cluster, from: &sluice_lab::Pod, what: &str) {
    let node = c.node_ip(0);
    for (to, path) in [
        ((node, LOCAL_PORT), "NodePort, backend on the node"),
        ((node, REMOTE_PORT), "NodePort, backend on the other node"),
        (
            (node, ETP_LOCAL_PORT),
            "NodePort, externalTrafficPolicy: Local",
        ),
        ((EXTERNAL_IP, 80), "external IP, backend on the other node"),
        ((LB_IP, 80), "load balancer IP, backend on the other node"),
    ] {
        both_ways(from, SocketAddr::from(to), &format!("{path}{what}"));
    }
}

/// The same transfers from a client behind a link of MTU 1280 between two
/// routers, while its own interface and every other link have 1500:
/// the backends' segments are too big for that link, and only the
/// router's ICMP fragmentation-needed, translated back to the backend,
/// lets them through (path MTU discovery).
fn through_a_smaller_mtu(args: &[&str]) {
    let (c, _servers) = bulk_cluster(args);
    let far = c.add_far_client(1280).unwrap();
    for addr in [EXTERNAL_IP, LB_IP] {
        far.route_via(addr, c.node_ip(0)).unwrap();
    }
    north_south(&c, &far.client, ", path MTU 1280");
    // The routers' errors were translated on the node the client reaches.
    assert!(event_count(c.node_ref(0), "icmp_error") > 0);
}

#[test]
fn bulk_transfers_with_offloads_pass_every_path_in_native_xdp() {
    if !require_privileges("bulk_transfers_with_offloads_pass_every_path_in_native_xdp") {
        return;
    }
    every_path(&["--xdp-mode", "native"]);
}

#[test]
fn bulk_transfers_with_offloads_pass_every_path_in_generic_xdp() {
    if !require_privileges("bulk_transfers_with_offloads_pass_every_path_in_generic_xdp") {
        return;
    }
    every_path(&["--xdp-mode", "generic"]);
}

#[test]
fn bulk_transfers_with_offloads_pass_every_path_in_tc_mode() {
    if !require_privileges("bulk_transfers_with_offloads_pass_every_path_in_tc_mode") {
        return;
    }
    every_path(&["--xdp-mode", "tc"]);
}

#[test]
fn path_mtu_discovery_works_through_every_north_south_frontend_in_native_xdp() {
    if !require_privileges(
        "path_mtu_discovery_works_through_every_north_south_frontend_in_native_xdp",
    ) {
        return;
    }
    through_a_smaller_mtu(&["--xdp-mode", "native"]);
}

#[test]
fn path_mtu_discovery_works_through_every_north_south_frontend_in_generic_xdp() {
    if !require_privileges(
        "path_mtu_discovery_works_through_every_north_south_frontend_in_generic_xdp",
    ) {
        return;
    }
    through_a_smaller_mtu(&["--xdp-mode", "generic"]);
}

#[test]
fn path_mtu_discovery_works_through_every_north_south_frontend_in_tc_mode() {
    if !require_privileges("path_mtu_discovery_works_through_every_north_south_frontend_in_tc_mode")
    {
        return;
    }
    through_a_smaller_mtu(&["--xdp-mode", "tc"]);
}
