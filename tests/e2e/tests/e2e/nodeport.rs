//! North-south through XDP, in a lab of two nodes and a client outside the
//! cluster on one segment (`sluice_lab::Cluster`): NodePorts on either node
//! reach backends on both, `externalTrafficPolicy: Local` keeps the client's
//! address, health check NodePorts, `ClientIP` affinity, external and load
//! balancer addresses, and `loadBalancerSourceRanges`.
#![allow(clippy::unwrap_used, reason = "tests: a failure fails the test")]

use std::{
    collections::BTreeSet,
    net::{Ipv4Addr, SocketAddr},
    time::Duration,
};

use sluice_lab::{AgentOptions, Cluster, EXT_IF, Pod, require_privileges};

use crate::common::*;

const NODE_PORT: u16 = 30080;
const PLAIN_PORT: u16 = 30081;
const HEALTH_PORT: u16 = 32123;
const EXTERNAL_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 50);
const LB_IP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 7);
/// A dropped connection attempt gives up after this long.
const SHORT: Duration = Duration::from_millis(700);

fn node_name(i: usize) -> String {
    format!("node-{}", ["a", "b"][i])
}

/// The backend pod `j` of node `i`: 10.244.(i+1).(10+j).
fn pod_ip(i: usize, j: usize) -> Ipv4Addr {
    Ipv4Addr::new(
        10,
        244,
        u8::try_from(i + 1).unwrap(),
        10 + u8::try_from(j).unwrap(),
    )
}

fn pod_name(i: usize, j: usize) -> String {
    format!("n{i}b{j}")
}

/// `web`, type LoadBalancer, with NodePorts (http 30080, plain 30081 on
/// the same endpoints), the external and load balancer addresses, extra
/// `spec` lines, and endpoints (node, pod) of `backends`.
fn web(spec: &str, backends: &[(usize, usize)]) -> String {
    let eps: Vec<String> = backends
        .iter()
        .map(|&(i, j)| {
            format!(
                "{{addresses: [\"{}\"], nodeName: {}, conditions: {{ready: true}}}}",
                pod_ip(i, j),
                node_name(i)
            )
        })
        .collect();
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: web, namespace: default}}\nspec:\n  type: LoadBalancer\n  clusterIP: {VIP}\n  externalIPs: [{EXTERNAL_IP}]\n  ports:\n  - {{name: http, port: 80, nodePort: {NODE_PORT}}}\n  - {{name: plain, port: 81, nodePort: {PLAIN_PORT}}}\n{spec}status: {{loadBalancer: {{ingress: [{{ip: {LB_IP}}}]}}}}\n---\n\
         apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: web-1\n  namespace: default\n  labels: {{kubernetes.io/service-name: web}}\n\
         addressType: IPv4\nports: [{{name: http, port: 8080}}, {{name: plain, port: 8080}}]\nendpoints: [{}]\n",
        eps.join(", ")
    )
}

/// Two nodes with one backend pod each (and `extra` more on node a),
/// `web` on every node, the agents running.
fn cluster(spec: &str, backends: &[(usize, usize)]) -> Cluster {
    cluster_with(spec, backends, &[])
}

/// `cluster`, with more agent arguments.
fn cluster_with(spec: &str, backends: &[(usize, usize)], args: &[&str]) -> Cluster {
    let mut c = Cluster::new().unwrap();
    for i in 0..2 {
        let lab = c.node(i);
        let pods: BTreeSet<usize> = backends.iter().filter(|b| b.0 == i).map(|b| b.1).collect();
        for j in pods {
            lab.add_pod(&pod_name(i, j), pod_ip(i, j)).unwrap();
            lab.serve(&pod_name(i, j), &[8080], &[]).unwrap();
        }
        lab.write_manifest("web.yaml", &web(spec, backends))
            .unwrap();
    }
    for i in 0..2 {
        c.node(i)
            .start_agent(&AgentOptions {
                extra_args: ["--node-name", &node_name(i)]
                    .into_iter()
                    .chain(args.iter().copied())
                    .map(String::from)
                    .collect(),
                ..AgentOptions::default()
            })
            .unwrap();
    }
    c.route_via(EXTERNAL_IP, 0).unwrap();
    c.route_via(LB_IP, 1).unwrap();
    c
}

/// Writes `web` to both nodes and waits until both applied it.
fn apply_both(c: &mut Cluster, spec: &str, backends: &[(usize, usize)]) {
    for i in 0..2 {
        apply(c.node(i), "web.yaml", &web(spec, backends));
    }
}

/// `n` requests over new connections from `client` to `to`: the
/// (backend, peer it saw) pairs.
fn answers(client: &Pod, to: SocketAddr, n: usize) -> BTreeSet<(String, Ipv4Addr)> {
    (0..n)
        .map(|_| {
            let a = client.tcp_request(to, T).unwrap();
            let SocketAddr::V4(seen) = peer(&a) else {
                panic!("{a}")
            };
            (who(&a), *seen.ip())
        })
        .collect()
}

fn backends_of(seen: &BTreeSet<(String, Ipv4Addr)>) -> BTreeSet<String> {
    seen.iter().map(|(b, _)| b.clone()).collect()
}

#[test]
fn a_node_port_on_either_node_reaches_backends_on_both_nodes() {
    if !require_privileges("a_node_port_on_either_node_reaches_backends_on_both_nodes") {
        return;
    }
    let c = cluster("", &[(0, 0), (1, 0)]);
    reaches_both_nodes(&c);
    // The forwarding happened in XDP, back out of the interface.
    assert_ne!(event_count(c.node_ref(0), "xdp_tx"), 0);
    // The node's own sockets take no NodePort and no SNAT port.
    let reserved = c
        .node_ref(0)
        .node()
        .run(|| std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_reserved_ports"))
        .unwrap()
        .unwrap();
    for range in ["30000-32767", "61000-65535"] {
        assert!(reserved.contains(range), "{range} in {reserved}");
    }
}

#[test]
fn with_xdp_mode_tc_a_node_port_on_either_node_reaches_backends_on_both_nodes() {
    if !require_privileges(
        "with_xdp_mode_tc_a_node_port_on_either_node_reaches_backends_on_both_nodes",
    ) {
        return;
    }
    let c = cluster_with("", &[(0, 0), (1, 0)], &["--xdp-mode", "tc"]);
    reaches_both_nodes(&c);
    // The same forwarding, in TC: redirected at the interface's ingress,
    // with no XDP program on it.
    assert_ne!(event_count(c.node_ref(0), "tc_forward"), 0);
    assert_eq!(event_count(c.node_ref(0), "xdp_tx"), 0);
    let link = c
        .node_ref(0)
        .node()
        .ip(&["-d", "link", "show", "dev", EXT_IF])
        .unwrap();
    assert!(!link.contains("xdp"), "{link}");
}

/// A node port on either node reaches the backends on both; a backend on
/// the other node sees this node's address (SNAT), one here the client's.
fn reaches_both_nodes(c: &Cluster) {
    for i in 0..2 {
        let node = c.node_ip(i);
        let seen = answers(c.client(), SocketAddr::from((node, NODE_PORT)), 40);
        assert_eq!(
            backends_of(&seen),
            BTreeSet::from([pod_name(0, 0), pod_name(1, 0)]),
            "via node {i}: {seen:?}"
        );
        for (backend, saw) in &seen {
            let local = backend == &pod_name(i, 0);
            // A backend here sees the client; one on the other node sees
            // this node (SNAT), and replies through it.
            let want = if local { c.client().ip } else { node };
            assert_eq!(*saw, want, "via node {i}, {backend}");
        }
    }
}

#[test]
fn external_traffic_policy_local_keeps_the_client_address_and_a_node_without_endpoints_drops() {
    if !require_privileges(
        "external_traffic_policy_local_keeps_the_client_address_and_a_node_without_endpoints_drops",
    ) {
        return;
    }
    let local = format!("  externalTrafficPolicy: Local\n  healthCheckNodePort: {HEALTH_PORT}\n");
    // Two endpoints on node a, none on node b.
    let mut c = cluster(&local, &[(0, 0), (0, 1)]);
    let seen = answers(c.client(), SocketAddr::from((c.node_ip(0), NODE_PORT)), 30);
    assert_eq!(backends_of(&seen).len(), 2, "{seen:?}");
    assert!(
        seen.iter().all(|(_, saw)| *saw == c.client().ip),
        "the backend sees the client's own address: {seen:?}"
    );
    let dropped = c
        .client()
        .tcp_request(SocketAddr::from((c.node_ip(1), NODE_PORT)), SHORT)
        .unwrap_err();
    assert!(
        !dropped.to_string().contains("refused"),
        "dropped, not refused: {dropped:#}"
    );

    // The health check NodePort, from outside: 200 where endpoints are, 503 elsewhere.
    let health = |c: &Cluster, i: usize| {
        http_from(
            c.client(),
            SocketAddr::from((c.node_ip(i), HEALTH_PORT)),
            "/healthz",
        )
    };
    let (status, body) = health(&c, 0).unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"localEndpoints\":2"), "{body}");
    let (status, body) = health(&c, 1).unwrap();
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("\"localEndpoints\":0"), "{body}");

    // Cluster policy again: node b serves too, through node a's pods.
    c.node(1).add_pod(&pod_name(1, 0), pod_ip(1, 0)).unwrap();
    c.node(1).serve(&pod_name(1, 0), &[8080], &[]).unwrap();
    apply_both(&mut c, "", &[(0, 0), (0, 1), (1, 0)]);
    let seen = answers(c.client(), SocketAddr::from((c.node_ip(1), NODE_PORT)), 40);
    assert_eq!(backends_of(&seen).len(), 3, "{seen:?}");
}

#[test]
fn client_ip_affinity_keeps_a_client_on_one_backend_while_another_client_spreads() {
    if !require_privileges(
        "client_ip_affinity_keeps_a_client_on_one_backend_while_another_client_spreads",
    ) {
        return;
    }
    let sticky = "  sessionAffinity: ClientIP\n";
    let c = cluster(sticky, &[(0, 0), (0, 1), (1, 0), (1, 1)]);
    for i in 0..2 {
        let to = SocketAddr::from((c.node_ip(i), NODE_PORT));
        let seen = backends_of(&answers(c.client(), to, 16));
        assert_eq!(seen.len(), 1, "via node {i}, the client moved: {seen:?}");
    }
    // Other clients stick too, each to its own pick: together they spread
    // (all ten on one of four backends: 4 in a million).
    let mut picks = BTreeSet::new();
    for k in 0..10u8 {
        let other = c
            .add_client(&format!("c{k}"), Ipv4Addr::new(192, 168, 77, 101 + k))
            .unwrap();
        let seen = backends_of(&answers(
            &other,
            SocketAddr::from((c.node_ip(0), NODE_PORT)),
            6,
        ));
        assert_eq!(seen.len(), 1, "client {k} moved: {seen:?}");
        picks.extend(seen);
    }
    assert!(
        picks.len() > 1,
        "every client got the same backend: {picks:?}"
    );
}

#[test]
fn an_external_ip_and_a_load_balancer_ip_reach_the_backends_from_outside() {
    if !require_privileges("an_external_ip_and_a_load_balancer_ip_reach_the_backends_from_outside")
    {
        return;
    }
    let c = cluster("", &[(0, 0), (1, 0)]);
    // The external IP is routed through node a, the load balancer IP
    // through node b.
    for ip in [EXTERNAL_IP, LB_IP] {
        let seen = answers(c.client(), SocketAddr::from((ip, 80)), 40);
        assert_eq!(backends_of(&seen).len(), 2, "{ip}: {seen:?}");
    }
}

#[test]
fn a_source_outside_load_balancer_source_ranges_is_refused_at_the_node() {
    if !require_privileges("a_source_outside_load_balancer_source_ranges_is_refused_at_the_node") {
        return;
    }
    let ranges = "  loadBalancerSourceRanges: [192.168.77.96/30]\n";
    let c = cluster(ranges, &[(0, 0), (1, 0)]);
    let inside = c
        .add_client("inside", Ipv4Addr::new(192, 168, 77, 97))
        .unwrap();
    inside
        .ns
        .ip(&[
            "route",
            "add",
            &format!("{LB_IP}/32"),
            "via",
            &c.node_ip(1).to_string(),
        ])
        .unwrap();
    let to = SocketAddr::from((LB_IP, 80));
    assert!(inside.tcp_request(to, T).unwrap().starts_with('n'));
    let dropped = c.client().tcp_request(to, SHORT).unwrap_err();
    assert!(!dropped.to_string().contains("refused"), "{dropped:#}");
    let metrics = http_get(
        c.node_ref(1),
        SocketAddr::from(([127, 0, 0, 1], 10256)),
        "/metrics",
    )
    .unwrap()
    .1;
    let counted = metrics
        .lines()
        .find(|l| l.contains("reason=\"source_range\""))
        .unwrap_or_else(|| panic!("{metrics}"));
    assert!(!counted.trim_end().ends_with(" 0"), "{counted}");
    // The NodePort of the same Service is not behind the ranges.
    let np = SocketAddr::from((c.node_ip(1), NODE_PORT));
    assert!(c.client().tcp_request(np, T).unwrap().starts_with('n'));
}

#[test]
fn a_node_address_added_later_serves_node_ports_until_it_is_removed() {
    if !require_privileges("a_node_address_added_later_serves_node_ports_until_it_is_removed") {
        return;
    }
    let mut c = cluster("", &[(0, 0), (1, 0)]);
    let extra = Ipv4Addr::new(192, 168, 77, 11);
    let to = SocketAddr::from((extra, NODE_PORT));
    let from = c.node(0).agent().log_len();
    c.node_ref(0)
        .node()
        .ip(&["addr", "add", &format!("{extra}/24"), "dev", EXT_IF])
        .unwrap();
    // The agent learns it from rtnetlink and writes it to the map.
    c.node(0)
        .agent()
        .wait_for(&extra.to_string(), from, T)
        .unwrap();
    let seen = answers(c.client(), to, 30);
    assert_eq!(
        backends_of(&seen),
        BTreeSet::from([pod_name(0, 0), pod_name(1, 0)]),
        "{seen:?}"
    );

    let from = c.node(0).agent().log_len();
    c.node_ref(0)
        .node()
        .ip(&["addr", "del", &format!("{extra}/24"), "dev", EXT_IF])
        .unwrap();
    c.node(0)
        .agent()
        .wait_for("node addresses (NodePorts)", from, T)
        .unwrap();
    // No longer the node's: its NodePorts are gone with it (the client's
    // neighbour entry may still send frames there).
    assert!(c.client().tcp_request(to, SHORT).is_err());
    let seen = answers(c.client(), SocketAddr::from((c.node_ip(0), NODE_PORT)), 10);
    assert!(!seen.is_empty());
}

/// 10,000 UDP datagrams from the client's segment to a pod on node a,
/// each claiming node a's own address as its source; how many the pod got.
fn forge_node_sources(c: &Cluster) -> usize {
    let pod = c.node_ref(0).pod(&pod_name(0, 0));
    let socket = pod.udp_socket_on(9999).unwrap();
    let hop = sluice_lab::frame::Hop {
        src_mac: c.client().mac("eth0").unwrap(),
        dst_mac: sluice_lab::mac_of(c.node_ref(0).node(), EXT_IF).unwrap(),
    };
    let node = c.node_ip(0);
    let frames: Vec<Vec<u8>> = (0..10_000u16)
        .map(|i| sluice_lab::frame::udp(hop, (node, 20_000 + i), (pod_ip(0, 0), 9999), 16, true))
        .collect();
    c.client().send_frames(frames).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut buf = [0u8; 64];
    let mut got = 0;
    // Bounded: at most as many as were sent, each wait short.
    while got < 10_000 && socket.recv_from(&mut buf).is_ok() {
        got += 1;
    }
    got
}

/// `xdp`: the agents attach XDP (whose hand-off to TC must keep working).
fn forged_sources_never_reach_a_pod(args: &[&str], xdp: bool) {
    let c = cluster_with("", &[(0, 0), (1, 0)], args);
    assert_eq!(
        forge_node_sources(&c),
        0,
        "no forged datagram reaches the pod"
    );
    assert!(drop_count(c.node_ref(0), "forged_source") >= 10_000);
    // Real traffic still flows both ways, to backends here and elsewhere;
    // with the neighbours forgotten, XDP's hand-off to TC too.
    c.node_ref(0)
        .node()
        .ip(&["neigh", "flush", "dev", EXT_IF])
        .unwrap();
    let misses = event_count(c.node_ref(0), "neigh_miss");
    reaches_both_nodes(&c);
    if xdp {
        assert!(
            event_count(c.node_ref(0), "neigh_miss") > misses,
            "XDP handed translated packets to TC"
        );
    }
}

#[test]
fn packets_from_outside_claiming_a_node_address_never_reach_a_pod_and_are_counted() {
    if !require_privileges(
        "packets_from_outside_claiming_a_node_address_never_reach_a_pod_and_are_counted",
    ) {
        return;
    }
    forged_sources_never_reach_a_pod(&[], true);
}

#[test]
fn with_xdp_mode_tc_packets_claiming_a_node_address_never_reach_a_pod() {
    if !require_privileges("with_xdp_mode_tc_packets_claiming_a_node_address_never_reach_a_pod") {
        return;
    }
    forged_sources_never_reach_a_pod(&["--xdp-mode", "tc"], false);
}
