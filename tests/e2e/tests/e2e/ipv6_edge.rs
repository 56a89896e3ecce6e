//! IPv6 from outside the cluster (`tc_edge6`, in every north-south mode):
//! IPv6-only LoadBalancer Services' NodePorts on the node's IPv6 address
//! with a backend on the node and one on the other node (SNATed to the
//! node's IPv6 address there and back), an external address, a load
//! balancer address (to the other node), and an `externalTrafficPolicy:
//! Local` NodePort. 64 MiB each way with GSO and GRO on the segment and every offload
//! on the pods' veths; then the same from a client behind a link of MTU
//! 1280 (IPv6's minimum), which only works when the router's Packet Too
//! Big about a reply is translated back to the backend. A Service without
//! endpoints answers with ICMPv6 port-unreachable. A load balancer address
//! with `loadBalancerSourceRanges` admits only their clients; packets from
//! outside claiming the node's IPv6 address never reach a pod. A
//! dual-stack Service's NodePort answers on both of the node's addresses. A
//! node whose external interface has only IPv6 serves its IPv6 NodePorts.
#![allow(clippy::unwrap_used, reason = "tests: a failure fails the test")]

use std::{
    io::ErrorKind,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, UdpSocket},
    time::Duration,
};

use sluice_lab::{
    Cluster, EXT_IF,
    bulk::{self, BulkServer},
    cluster::CLIENT_IP6,
    require_privileges,
};

use crate::{bulk::both_ways, common::*};

const LOCAL_PORT: u16 = 30090;
const REMOTE_PORT: u16 = 30091;
const ETP_LOCAL_PORT: u16 = 30092;
const EMPTY_PORT: u16 = 30093;
const RANGED_PORT: u16 = 30094;
const DUAL_PORT: u16 = 30095;
/// Each way through the dual-stack Service's NodePorts.
const DUAL_SIZE: usize = 8 << 20;
/// Documentation addresses (RFC 3849), routed by the clients through
/// node a.
const EXTERNAL_IP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, 0, 0x50);
const LB_IP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 3, 0, 0, 0, 0, 7);
/// A load balancer address behind `loadBalancerSourceRanges`: the far
/// client's network only.
const RANGED_LB_IP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 3, 0, 0, 0, 0, 8);
/// The backends on node a and on node b, in their IPv6 pod networks.
const BACKENDS: [(Ipv4Addr, Ipv6Addr); 2] = [
    (
        Ipv4Addr::new(10, 244, 1, 10),
        Ipv6Addr::new(0xfd00, 0x244, 1, 0, 0, 0, 0, 0x10),
    ),
    (
        Ipv4Addr::new(10, 244, 2, 10),
        Ipv6Addr::new(0xfd00, 0x244, 2, 0, 0, 0, 0, 0x10),
    ),
];

/// An IPv6-only LoadBalancer Service `name` at `vip` with NodePort `port`,
/// more `spec` lines and, with `lb`, that load balancer address; its
/// slice holds `backend` (on its node: 0 for a, 1 for b), or nothing.
fn service6(
    name: &str,
    vip: Ipv6Addr,
    port: u16,
    backend: Option<usize>,
    spec: &str,
    lb: Option<Ipv6Addr>,
) -> String {
    let status = lb.map_or_else(String::new, |ip| {
        format!("status: {{loadBalancer: {{ingress: [{{ip: \"{ip}\"}}]}}}}\n")
    });
    let endpoints = backend.map_or_else(
        || "[]".to_owned(),
        |i| {
            let (ip, node) = (BACKENDS[i].1, ["node-a", "node-b"][i]);
            format!("[{{addresses: [\"{ip}\"], nodeName: {node}, conditions: {{ready: true}}}}]")
        },
    );
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: default}}\nspec:\n  type: LoadBalancer\n  ipFamilyPolicy: SingleStack\n  ipFamilies: [IPv6]\n  clusterIP: \"{vip}\"\n  clusterIPs: [\"{vip}\"]\n{spec}  ports:\n  - {{name: http, port: 80, nodePort: {port}}}\n{status}---\n\
         apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}-v6\n  namespace: default\n  labels: {{kubernetes.io/service-name: {name}}}\n\
         addressType: IPv6\nports: [{{name: http, port: 8080}}]\nendpoints: {endpoints}\n"
    )
}

/// A dual-stack (`RequireDualStack`) NodePort Service, `DUAL_PORT`, with
/// the backend on node a in a slice per family.
fn dual_service() -> String {
    let (v4, v6) = BACKENDS[0];
    let vip6 = vip6(0x25);
    let slice = |family: &str, ip: IpAddr| {
        format!(
            "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: dual-{family}\n  namespace: default\n  labels: {{kubernetes.io/service-name: dual}}\n\
             addressType: {family}\nports: [{{name: http, port: 8080}}]\nendpoints: [{{addresses: [\"{ip}\"], nodeName: node-a, conditions: {{ready: true}}}}]\n"
        )
    };
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: dual, namespace: default}}\nspec:\n  type: NodePort\n  ipFamilyPolicy: RequireDualStack\n  ipFamilies: [IPv4, IPv6]\n  clusterIP: \"10.96.0.95\"\n  clusterIPs: [\"10.96.0.95\", \"{vip6}\"]\n  ports:\n  - {{name: http, port: 80, nodePort: {DUAL_PORT}}}\n{}{}",
        slice("IPv4", v4.into()),
        slice("IPv6", v6.into()),
    )
}

fn vip6(n: u16) -> Ipv6Addr {
    Ipv6Addr::new(0xfd00, 0x96, 0, 0, 0, 0, 0, n)
}

/// Two nodes running agents with `args`; a bulk server on each
/// (`BACKENDS`); the Services `local` (also `EXTERNAL_IP6`), `remote` (its
/// backend on node b; also `LB_IP6`), `etp-local` and `empty` (no
/// endpoints) on both nodes; every offload on.
fn cluster6(args: &[&str]) -> (Cluster, Vec<BulkServer>) {
    cluster6_with(args, |_| {})
}

/// `cluster6`, with `before` done to the cluster before the agents start.
fn cluster6_with(args: &[&str], before: impl FnOnce(&mut Cluster)) -> (Cluster, Vec<BulkServer>) {
    let mut c = Cluster::new().unwrap();
    let mut servers = Vec::new();
    for (i, (v4, v6)) in BACKENDS.into_iter().enumerate() {
        let lab = c.node(i);
        lab.add_pod("server", v4).unwrap();
        lab.add_ipv6("server", v6).unwrap();
        servers.push(BulkServer::start(&lab.pod("server").ns, 8080).unwrap());
    }
    let services = [
        (
            "local",
            service6(
                "local",
                vip6(0x20),
                LOCAL_PORT,
                Some(0),
                &format!("  externalIPs: [\"{EXTERNAL_IP6}\"]\n"),
                None,
            ),
        ),
        (
            "remote",
            service6("remote", vip6(0x21), REMOTE_PORT, Some(1), "", Some(LB_IP6)),
        ),
        (
            "etp-local",
            service6(
                "etp-local",
                vip6(0x22),
                ETP_LOCAL_PORT,
                Some(0),
                "  externalTrafficPolicy: Local\n",
                None,
            ),
        ),
        (
            "empty",
            service6("empty", vip6(0x23), EMPTY_PORT, None, "", None),
        ),
        (
            "ranged",
            service6(
                "ranged",
                vip6(0x24),
                RANGED_PORT,
                Some(0),
                "  loadBalancerSourceRanges: [\"fd00:79::/64\"]\n",
                Some(RANGED_LB_IP6),
            ),
        ),
        ("dual", dual_service()),
    ];
    for i in 0..2 {
        for (name, yaml) in &services {
            c.node(i)
                .write_manifest(&format!("{name}.yaml"), yaml)
                .unwrap();
        }
    }
    c.offloads_on().unwrap();
    before(&mut c);
    start_agents(&mut c, args);
    for addr in [EXTERNAL_IP6, LB_IP6, RANGED_LB_IP6] {
        c.route_via6(addr, 0).unwrap();
    }
    (c, servers)
}

/// Every frontend, through node a, from `from`.
fn every_frontend(c: &Cluster, from: &sluice_lab::Pod, what: &str) {
    let node = c.node_ip6(0);
    for (to, path) in [
        ((node, LOCAL_PORT), "IPv6 NodePort, backend on the node"),
        (
            (node, REMOTE_PORT),
            "IPv6 NodePort, backend on the other node",
        ),
        (
            (node, ETP_LOCAL_PORT),
            "IPv6 NodePort, externalTrafficPolicy: Local",
        ),
        ((EXTERNAL_IP6, 80), "IPv6 external IP"),
        (
            (LB_IP6, 80),
            "IPv6 load balancer IP, backend on the other node",
        ),
    ] {
        both_ways(from, SocketAddr::from(to), &format!("{path}{what}"));
    }
}

/// Short flows to each NodePort, each a new connection.
const SHORT_FLOWS: u64 = 100;

/// `SHORT_FLOWS` short flows to the NodePort whose backend is on the other
/// node, and as many to the `externalTrafficPolicy: Local` one: XDP makes
/// each flow and translates it from its first packet (its handshake's
/// packets too, in the new flows' table), so that TC sends on none of
/// their packets and XDP passes none on untouched, but for a next hop's
/// neighbour entry once.
fn short_flows_in_xdp(c: &Cluster) {
    let lab = c.node_ref(0);
    let count = |name| event_count(lab, name);
    let before = ["new_flow", "tc_forward", "pass", "xdp_tx"].map(count);
    let node = c.node_ip6(0);
    for port in [REMOTE_PORT, ETP_LOCAL_PORT] {
        for i in 0..SHORT_FLOWS {
            let to = SocketAddr::from((node, port));
            bulk::download(&c.client().ns, to, 1024, Duration::from_secs(5))
                .unwrap_or_else(|e| panic!("short flow {i} to {to}: {e:#}"));
        }
    }
    let [new_flows, tc_forward, passed, xdp_tx] = ["new_flow", "tc_forward", "pass", "xdp_tx"]
        .map(count)
        .iter()
        .zip(before)
        .map(|(after, before)| after - before)
        .collect::<Vec<_>>()[..]
    else {
        unreachable!()
    };
    eprintln!(
        "short flows: {new_flows} new, {tc_forward} sent on by TC, {passed} passed by XDP, {xdp_tx} sent on by XDP"
    );
    assert!(new_flows >= 2 * SHORT_FLOWS, "each a new flow");
    assert!(
        xdp_tx >= 5 * SHORT_FLOWS,
        "XDP sent on the other node's flows' packets, handshakes and all"
    );
    assert!(
        tc_forward < SHORT_FLOWS / 10,
        "TC sent on hardly any of them: {tc_forward}"
    );
    assert!(
        passed < SHORT_FLOWS / 4,
        "XDP left hardly any packet to TC: {passed}"
    );
}

/// `far`: also from behind a link of MTU 1280. Generic XDP passes IPv6 to
/// the same TC program as native XDP, so it skips that part.
fn every_path(args: &[&str], far: bool) {
    let (c, _servers) = cluster6(args);
    let lab = c.node_ref(0);
    let new_flows = event_count(lab, "new_flow");
    if !args.contains(&"tc") {
        short_flows_in_xdp(&c);
    }
    let xdp_tx = event_count(lab, "xdp_tx");
    every_frontend(&c, c.client(), "");
    if args.contains(&"tc") {
        assert_eq!(event_count(lab, "xdp_tx"), xdp_tx, "no XDP in tc mode");
    } else {
        // The client, node a and node b share a segment: the flows to
        // node b's backend leave as they came, translated in XDP.
        assert!(
            event_count(lab, "xdp_tx") > xdp_tx + 10_000,
            "XDP translated and sent on the established flows' packets"
        );
    }
    // A dual-stack Service: its NodePort on each of the node's families
    // reaches the backend's address of that family.
    for node in [IpAddr::from(c.node_ip(0)), IpAddr::from(c.node_ip6(0))] {
        let to = SocketAddr::from((node, DUAL_PORT));
        let what = format!("dual-stack Service's NodePort at {to}");
        bulk::download(&c.client().ns, to, DUAL_SIZE, Duration::from_secs(30))
            .unwrap_or_else(|e| panic!("{what}: download: {e:#}"));
        bulk::upload(&c.client().ns, to, DUAL_SIZE, Duration::from_secs(30))
            .unwrap_or_else(|e| panic!("{what}: upload: {e:#}"));
    }
    assert!(
        event_count(lab, "new_flow") >= new_flows + 10,
        "each transfer was a new flow through the frontend"
    );
    assert!(
        event_count(lab, "snat") >= 4,
        "flows to the other node's backend were SNATed"
    );
    // A Service without endpoints: kube-proxy's REJECT, ICMPv6
    // port-unreachable, which the client's connect hears at once.
    let to = SocketAddr::from((c.node_ip6(0), EMPTY_PORT));
    let refused = c
        .client()
        .ns
        .run(move || TcpStream::connect_timeout(&to, Duration::from_secs(5)).map(drop))
        .unwrap();
    assert_eq!(
        refused.map_err(|e| e.kind()),
        Err(ErrorKind::ConnectionRefused),
        "a NodePort without endpoints refuses"
    );
    assert!(drop_count(lab, "no_endpoints") > 0);
    if !far {
        return;
    }
    // Through a link of MTU 1280: the second router's Packet Too Big about
    // the backend's segments, translated back to the backend.
    let far = c.add_far_client(1280).unwrap();
    for addr in [EXTERNAL_IP6, LB_IP6] {
        far.route_via6(addr, c.node_ip6(0)).unwrap();
    }
    let errors = event_count(lab, "icmp_error");
    every_frontend(&c, &far.client, ", path MTU 1280");
    assert!(
        event_count(lab, "icmp_error") > errors,
        "the routers' Packet Too Big were translated"
    );
}

#[test]
fn ipv6_bulk_and_path_mtu_through_every_frontend_and_a_dual_stack_service_in_native_xdp() {
    if !require_privileges(
        "ipv6_bulk_and_path_mtu_through_every_frontend_and_a_dual_stack_service_in_native_xdp",
    ) {
        return;
    }
    every_path(&["--xdp-mode", "native"], true);
}

#[test]
fn ipv6_bulk_through_every_frontend_and_a_dual_stack_service_in_generic_xdp() {
    if !require_privileges(
        "ipv6_bulk_through_every_frontend_and_a_dual_stack_service_in_generic_xdp",
    ) {
        return;
    }
    every_path(&["--xdp-mode", "generic"], false);
}

#[test]
fn ipv6_bulk_and_path_mtu_through_every_frontend_and_a_dual_stack_service_in_tc_mode() {
    if !require_privileges(
        "ipv6_bulk_and_path_mtu_through_every_frontend_and_a_dual_stack_service_in_tc_mode",
    ) {
        return;
    }
    every_path(&["--xdp-mode", "tc"], true);
}

/// Node a as on an IPv6-only cluster: its interface on the segment keeps
/// only its IPv6 address. The agent takes it for external all the same
/// (a global IPv6 address; without it, IPv4's), and serves the IPv6
/// NodePorts on it in XDP: 8 MiB each way to the backend on the node and
/// to the one on the other node, SNATed to the interface's IPv6 address.
#[test]
fn a_node_whose_external_interface_has_only_ipv6_serves_ipv6_node_ports_in_xdp() {
    if !require_privileges(
        "a_node_whose_external_interface_has_only_ipv6_serves_ipv6_node_ports_in_xdp",
    ) {
        return;
    }
    let (mut c, _servers) = cluster6_with(&["--xdp-mode", "native"], |c| {
        c.node(0)
            .node()
            .ip(&["-4", "addr", "flush", "dev", EXT_IF])
            .unwrap();
    });
    let attached = c
        .node(0)
        .agent()
        .wait_for("external interface attached", 0, Duration::from_secs(10))
        .unwrap();
    assert!(
        attached.contains(EXT_IF),
        "{EXT_IF}, without an IPv4 address, is external: {attached}"
    );
    let lab = c.node_ref(0);
    let (xdp_tx, snat) = (event_count(lab, "xdp_tx"), event_count(lab, "snat"));
    let node = c.node_ip6(0);
    for port in [LOCAL_PORT, REMOTE_PORT] {
        let to = SocketAddr::from((node, port));
        bulk::download(&c.client().ns, to, DUAL_SIZE, Duration::from_secs(30))
            .unwrap_or_else(|e| panic!("download through {to}: {e:#}"));
        bulk::upload(&c.client().ns, to, DUAL_SIZE, Duration::from_secs(30))
            .unwrap_or_else(|e| panic!("upload through {to}: {e:#}"));
    }
    assert!(
        event_count(lab, "snat") > snat,
        "flows to the other node's backend were SNATed to the IPv6 address"
    );
    assert!(
        event_count(lab, "xdp_tx") > xdp_tx + 1_000,
        "and sent on in XDP"
    );
}

/// 10,000 UDP datagrams from the client's segment to the backend on node
/// a, each claiming node a's own IPv6 address as its source: none reaches
/// the pod, and each is counted. A load balancer address with
/// `loadBalancerSourceRanges` answers the far client (in them) and drops
/// the near one (outside them).
fn forged_and_ranged(args: &[&str]) {
    let (c, _servers) = cluster6(args);
    let lab = c.node_ref(0);
    let pod = lab.pod("server");
    let socket = pod
        .ns
        .run(|| UdpSocket::bind((Ipv6Addr::UNSPECIFIED, 9999)))
        .unwrap()
        .unwrap();
    let hop = sluice_lab::frame::Hop {
        src_mac: c.client().mac("eth0").unwrap(),
        dst_mac: sluice_lab::mac_of(lab.node(), EXT_IF).unwrap(),
    };
    let node = c.node_ip6(0);
    let frames: Vec<Vec<u8>> = (0..10_000u16)
        .map(|i| sluice_lab::frame::udp6(hop, (node, 20_000 + i), (BACKENDS[0].1, 9999), 16))
        .collect();
    c.client().send_frames(frames).unwrap();
    // A datagram from the real client, sent after them, marks the end.
    let pods = format!("{}/64", sluice_lab::cluster::pod_net6(1));
    let via = node.to_string();
    c.client()
        .ns
        .ip(&["-6", "route", "add", &pods, "via", &via])
        .unwrap();
    let client = c
        .client()
        .ns
        .run(|| UdpSocket::bind((Ipv6Addr::UNSPECIFIED, 0)))
        .unwrap()
        .unwrap();
    client
        .send_to(b"real", SocketAddr::from((BACKENDS[0].1, 9999)))
        .unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut buf = [0u8; 64];
    let (n, from) = socket.recv_from(&mut buf).unwrap();
    assert_eq!(
        (&buf[..n], from.ip()),
        (&b"real"[..], IpAddr::from(CLIENT_IP6)),
        "the first datagram the pod gets is the real one: no forged one came"
    );
    assert!(drop_count(lab, "forged_source") >= 10_000);

    let to = SocketAddr::from((RANGED_LB_IP6, 80));
    let far = c.add_far_client(1500).unwrap();
    far.route_via6(RANGED_LB_IP6, node).unwrap();
    bulk::download(&far.client.ns, to, 1 << 20, Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("a client in the ranges is answered: {e:#}"));
    let near = bulk::download(&c.client().ns, to, 1 << 20, Duration::from_secs(2));
    assert!(near.is_err(), "a client outside the ranges is not answered");
    assert!(drop_count(lab, "source_range") > 0);
}

#[test]
fn ipv6_forged_node_sources_and_sources_outside_ranges_are_dropped_in_native_xdp() {
    if !require_privileges(
        "ipv6_forged_node_sources_and_sources_outside_ranges_are_dropped_in_native_xdp",
    ) {
        return;
    }
    forged_and_ranged(&["--xdp-mode", "native"]);
}

#[test]
fn ipv6_forged_node_sources_and_sources_outside_ranges_are_dropped_in_tc_mode() {
    if !require_privileges(
        "ipv6_forged_node_sources_and_sources_outside_ranges_are_dropped_in_tc_mode",
    ) {
        return;
    }
    forged_and_ranged(&["--xdp-mode", "tc"]);
}
