//! IPv6 from pods on the TC path (`tc_ingress6`): pods outside socket LB's
//! cgroup reach IPv6 ClusterIPs through DNAT and reverse NAT in TC, with
//! conntrack of its own (`SLUICE_CT6_*`). Bulk transfers with offloads,
//! datagrams larger than the MTU (IPv6 fragments both ways), a Service
//! without endpoints (ICMPv6 port-unreachable), hairpin, and a pod that
//! lies about its source.
#![allow(clippy::unwrap_used, reason = "tests: a failure fails the test")]

use std::{
    collections::{BTreeMap, BTreeSet},
    io::ErrorKind,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket},
    time::Duration,
};

use sluice_agent::dataplane::conntrack::Conntrack;
use sluice_lab::{
    AgentOptions, GATEWAY6, Lab, Netns,
    bulk::{self, BulkServer, UdpEcho},
    ethtool,
    lab::request_line,
    manifest::{self, Endpoint, Port},
    require_privileges,
};

use crate::{
    common::*,
    lifecycle::start_monitor,
    socketlb::{CLIENT6, backend_ip6, dual_stack_lab, web_lab6},
};

/// `web`'s IPv6 ClusterIP.
const VIP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x96, 0, 0, 0, 0, 0, 0xa);
/// A second dual-stack Service's.
const OTHER_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 50);
const OTHER_VIP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x96, 0, 0, 0, 0, 0, 0x50);
/// The source a pod's packets get when they come back to it (hairpin).
const HAIRPIN6: Ipv6Addr = Ipv6Addr::new(0x100, 0, 0, 0, 0, 0, 0xa9fe, 0x2a01);
/// 64 MiB each way, as the IPv4 bulk tests.
const SIZE: usize = 64 << 20;
const LIMIT: Duration = Duration::from_secs(60);

/// A dual-stack Service `name` at `v4`/`v6` with `ports` (targets the
/// same), and a slice per family of `backends`' addresses (none: no
/// IPv6 slice, and the IPv4 one of b0).
fn dual_stack(
    name: &str,
    v4: Ipv4Addr,
    v6: Ipv6Addr,
    ports: &[Port],
    backends: &[usize],
) -> String {
    let ipv4: Vec<Endpoint> = backends
        .iter()
        .map(|&i| Endpoint::ready(backend_ip(i)))
        .collect();
    let ipv6: Vec<Endpoint> = backends
        .iter()
        .map(|&i| Endpoint::ready(backend_ip6(i)))
        .collect();
    let service = manifest::dual_stack_service(name, v4, v6, ports);
    let slice = |family: &str, endpoints: &[Endpoint]| {
        manifest::endpoint_slice(&format!("{name}-{family}"), name, ports, endpoints)
    };
    if ipv6.is_empty() {
        let b0 = [Endpoint::ready(backend_ip(0))];
        format!("{service}---\n{}", slice("v4", &b0))
    } else {
        format!(
            "{service}---\n{}---\n{}",
            slice("v4", &ipv4),
            slice("v6", &ipv6)
        )
    }
}

/// One datagram from a socket in `ns` connected to `to`, and what its
/// receive says: the answer, or the error the socket heard.
fn connected_udp(ns: &Netns, to: SocketAddr) -> Result<(), ErrorKind> {
    ns.run(move || {
        let s = UdpSocket::bind("[::]:0").unwrap();
        s.connect(to).unwrap();
        s.set_read_timeout(Some(T)).unwrap();
        s.send(b"hello\n").unwrap();
        s.recv(&mut [0u8; 64]).map(drop).map_err(|e| e.kind())
    })
    .unwrap()
}

/// `web` dual-stack over `n` backends (`socketlb`'s), the agent running.
fn web6(n: usize) -> Lab {
    let mut lab = dual_stack_lab(n);
    lab.start_agent(&AgentOptions::default()).unwrap();
    lab
}

#[test]
fn a_pod_outside_socket_lb_reaches_every_backend_of_an_ipv6_cluster_ip_through_tc() {
    if !require_privileges(
        "a_pod_outside_socket_lb_reaches_every_backend_of_an_ipv6_cluster_ip_through_tc",
    ) {
        return;
    }
    let lab = web6(3);
    let new_flows = event_count(&lab, "new_flow");
    let http6 = SocketAddr::from((VIP6, 80));
    // The test's threads are not in the lab's cgroup: TC translates.
    let seen = spread(&lab, http6, 3, 60);
    assert_eq!(seen.len(), 3, "every backend answers: {seen:?}");
    let client = lab.pod("client");
    for i in 0..10 {
        let answer = client.tcp_request(http6, T).unwrap();
        assert_eq!(peer(&answer).ip(), CLIENT6, "no SNAT: {answer}");
        let (answer, from) = client
            .udp_request(SocketAddr::from((VIP6, 53)), T)
            .unwrap_or_else(|e| panic!("UDP request {i}: {e:#}"));
        assert_eq!(from, SocketAddr::from((VIP6, 53)), "reverse NAT: {answer}");
        assert!(who(&answer).starts_with('b'), "{answer}");
    }
    assert!(
        event_count(&lab, "new_flow") >= new_flows + 23,
        "TC made the flows, not socket LB"
    );
    // Both directions of the flows, in IPv6's own tables.
    let entries = Conntrack::open_pinned(&lab.pin_dir()).unwrap().entries6();
    let ours = entries
        .iter()
        .filter(|(table, _, k, _)| {
            table.label().starts_with("east_west")
                && Ipv6Addr::from(k.saddr_be) == CLIENT6
                && Ipv6Addr::from(k.daddr_be) == VIP6
        })
        .count();
    assert!(ours >= 20, "original entries of the client's flows: {ours}");
    assert!(
        Conntrack::open_pinned(&lab.pin_dir())
            .unwrap()
            .entries()
            .iter()
            .all(|(_, _, k, _)| Ipv4Addr::from(k.daddr_be) != VIP),
        "nothing went to IPv4's tables"
    );
    // The IPv4 half still works.
    let answer = client.tcp_request(http(), T).unwrap();
    assert_eq!(peer(&answer).ip(), CLIENT, "{answer}");
}

#[test]
fn ipv6_bulk_transfers_and_datagrams_larger_than_the_mtu_pass_tc_with_offloads() {
    if !require_privileges(
        "ipv6_bulk_transfers_and_datagrams_larger_than_the_mtu_pass_tc_with_offloads",
    ) {
        return;
    }
    let mut lab = web_lab6(1);
    let ports = [Port::tcp("bulk", 9000), Port::udp("echo", 9001)];
    lab.write_manifest(
        "bulk.yaml",
        &dual_stack("bulk", OTHER_VIP, OTHER_VIP6, &ports, &[0]),
    )
    .unwrap();
    // TSO, GSO and GRO on both ends of both veths: 64 KiB packets.
    for name in ["client", &backend_name(0)] {
        let pod = lab.pod(name);
        ethtool::offloads_on(&pod.ns, "eth0").unwrap();
        ethtool::offloads_on(lab.node(), &pod.host_if).unwrap();
    }
    let b0 = &lab.pod(&backend_name(0)).ns;
    let _bulk = BulkServer::start(b0, 9000).unwrap();
    let _echo = UdpEcho::start(b0, 9001).unwrap();
    lab.start_agent(&AgentOptions::default()).unwrap();
    let client = &lab.pod("client").ns;
    let to = SocketAddr::from((OTHER_VIP6, 9000));
    let down = bulk::download(client, to, SIZE, LIMIT).unwrap();
    let up = bulk::upload(client, to, SIZE, LIMIT).unwrap();
    eprintln!("IPv6 ClusterIP (TC): 64 MiB down in {down:?}, up in {up:?}");
    // 8,000 bytes: six fragments each way.
    let followed = event_count(&lab, "fragment_followed");
    for n in [8_000, 1_500, 20_000] {
        bulk::udp_echo(client, SocketAddr::from((OTHER_VIP6, 9001)), n, T)
            .unwrap_or_else(|e| panic!("{n}-byte datagram: {e:#}"));
    }
    assert!(
        event_count(&lab, "fragment_followed") > followed + 10,
        "the later fragments followed their first, both ways"
    );
}

#[test]
fn an_ipv6_service_without_endpoints_refuses_a_pod_outside_socket_lb_with_icmpv6() {
    if !require_privileges(
        "an_ipv6_service_without_endpoints_refuses_a_pod_outside_socket_lb_with_icmpv6",
    ) {
        return;
    }
    let mut lab = web6(1);
    let ports = [Port::tcp("http", 8080), Port::udp("dns", 5353)];
    apply(
        &mut lab,
        "empty.yaml",
        &dual_stack("empty", OTHER_VIP, OTHER_VIP6, &ports, &[]),
    );
    let rejects = drop_count(&lab, "no_endpoints");
    let client = lab.pod("client");
    let err = client
        .tcp_request(SocketAddr::from((OTHER_VIP6, 8080)), T)
        .unwrap_err();
    let io = err
        .downcast_ref::<std::io::Error>()
        .map(std::io::Error::kind);
    assert_eq!(io, Some(ErrorKind::ConnectionRefused), "{err:#}");
    // A connected UDP socket hears the ICMPv6 error as ECONNREFUSED.
    assert_eq!(
        connected_udp(&client.ns, SocketAddr::from((OTHER_VIP6, 5353))),
        Err(ErrorKind::ConnectionRefused)
    );
    assert!(drop_count(&lab, "no_endpoints") >= rejects + 2);
    // The IPv4 half has its endpoint.
    let answer = client
        .tcp_request(SocketAddr::from((OTHER_VIP, 8080)), T)
        .unwrap();
    assert_eq!(who(&answer), backend_name(0));
}

#[test]
fn a_pod_reaches_itself_through_an_ipv6_service_whose_only_backend_it_is() {
    if !require_privileges("a_pod_reaches_itself_through_an_ipv6_service_whose_only_backend_it_is")
    {
        return;
    }
    let mut lab = web6(3);
    let ports = [Port::tcp("http", 8080), Port::udp("dns", 5353)];
    apply(
        &mut lab,
        "self.yaml",
        &dual_stack("self", OTHER_VIP, OTHER_VIP6, &ports, &[0]),
    );
    let b0 = lab.pod(&backend_name(0));
    for i in 0..20 {
        let answer = b0
            .tcp_request(SocketAddr::from((OTHER_VIP6, 8080)), T)
            .unwrap_or_else(|e| panic!("TCP request {i}: {e:#}"));
        assert_eq!(who(&answer), backend_name(0));
        assert_eq!(peer(&answer).ip(), HAIRPIN6, "{answer}");
        let (answer, from) = b0
            .udp_request(SocketAddr::from((OTHER_VIP6, 5353)), T)
            .unwrap_or_else(|e| panic!("UDP request {i}: {e:#}"));
        assert_eq!(from, SocketAddr::from((OTHER_VIP6, 5353)));
        assert_eq!(peer(&answer).ip(), HAIRPIN6, "{answer}");
    }
    assert!(event_count(&lab, "hairpin") >= 80, "both ways");
}

#[test]
fn a_connected_udp_client_hears_econnrefused_when_its_ipv6_backend_has_no_listener() {
    if !require_privileges(
        "a_connected_udp_client_hears_econnrefused_when_its_ipv6_backend_has_no_listener",
    ) {
        return;
    }
    let mut lab = web6(1);
    // A port b0 does not listen on.
    let ports = [Port::udp("closed", 9999)];
    apply(
        &mut lab,
        "closed.yaml",
        &dual_stack("closed", OTHER_VIP, OTHER_VIP6, &ports, &[0]),
    );
    let errors = event_count(&lab, "icmp_error");
    // b0's port-unreachable, translated back, is ECONNREFUSED on the
    // client's socket, connected to the ClusterIP.
    assert_eq!(
        connected_udp(&lab.pod("client").ns, SocketAddr::from((OTHER_VIP6, 9999))),
        Err(ErrorKind::ConnectionRefused)
    );
    assert!(event_count(&lab, "icmp_error") > errors, "translated in TC");
}

/// `web` dual-stack on b0..b2 with extra `spec` lines, each endpoint of
/// its IPv6 slice on the node `nodes` names (`None`: left out).
fn web6_on(spec: &str, nodes: [Option<&str>; 3]) -> String {
    let eps: Vec<String> = (0..3)
        .filter_map(|i| {
            nodes[i].map(|node| {
                format!(
                    "{{addresses: [\"{}\"], nodeName: {node}, conditions: {{ready: true}}}}",
                    backend_ip6(i)
                )
            })
        })
        .collect();
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: web, namespace: default}}\nspec:\n  ipFamilyPolicy: RequireDualStack\n  ipFamilies: [IPv4, IPv6]\n  clusterIP: {VIP}\n  clusterIPs: [\"{VIP}\", \"{VIP6}\"]\n  ports: [{{name: http, port: 80}}]\n{spec}---\n\
         apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: web-v6\n  namespace: default\n  labels: {{kubernetes.io/service-name: web}}\n\
         addressType: IPv6\nports: [{{name: http, port: 8080}}]\nendpoints: [{}]\n",
        eps.join(", ")
    )
}

const NODE: &str = "lab-node";

fn agent_on_node() -> AgentOptions {
    AgentOptions {
        extra_args: vec!["--node-name".into(), NODE.into()],
        ..AgentOptions::default()
    }
}

/// The backends that answer `n` connections to `web`'s IPv6 ClusterIP from
/// pod `pod`.
fn answering6(lab: &Lab, pod: &str, n: usize) -> BTreeSet<String> {
    (0..n)
        .map(|_| {
            who(&lab
                .pod(pod)
                .tcp_request(SocketAddr::from((VIP6, 80)), T)
                .unwrap())
        })
        .collect()
}

#[test]
fn an_ipv6_endpoint_removed_gets_no_new_connections_and_flows_to_the_others_survive() {
    if !require_privileges(
        "an_ipv6_endpoint_removed_gets_no_new_connections_and_flows_to_the_others_survive",
    ) {
        return;
    }
    let mut lab = web_lab6(3);
    let all = [Some(NODE); 3];
    lab.write_manifest("web.yaml", &web6_on("", all)).unwrap();
    lab.start_agent(&agent_on_node()).unwrap();
    let http6 = SocketAddr::from((VIP6, 80));
    let mut conns = BTreeMap::new();
    for _ in 0..100 {
        let mut c = lab.pod("client").tcp_connect(http6, T).unwrap();
        let name = who(&request_line(&mut c, T).unwrap());
        conns.entry(name).or_insert(c);
        if conns.len() == 3 {
            break;
        }
    }
    assert_eq!(conns.len(), 3, "connections to all three backends");
    apply(
        &mut lab,
        "web.yaml",
        &web6_on("", [Some(NODE), None, Some(NODE)]),
    );
    for (name, conn) in &mut conns {
        if name != "b1" {
            let answer =
                request_line(conn, T).unwrap_or_else(|e| panic!("flow to {name} broke: {e:#}"));
            assert_eq!(&who(&answer), name, "the flow kept its backend");
        }
    }
    let seen = answering6(&lab, "client", 30);
    assert!(
        !seen.contains("b1"),
        "a removed endpoint got a new connection: {seen:?}"
    );
}

#[test]
fn internal_traffic_policy_local_and_client_ip_affinity_hold_for_ipv6_through_tc() {
    if !require_privileges(
        "internal_traffic_policy_local_and_client_ip_affinity_hold_for_ipv6_through_tc",
    ) {
        return;
    }
    let mut lab = web_lab6(3);
    let clients: Vec<String> = (0..8).map(|i| format!("c{i}")).collect();
    for (i, name) in (0u8..).zip(&clients) {
        lab.add_pod(name, Ipv4Addr::new(10, 244, 2, 10 + i))
            .unwrap();
        let ip6 = Ipv6Addr::new(0xfd00, 0x244, 2, 0, 0, 0, 0, 0x10 + u16::from(i));
        lab.add_ipv6(name, ip6).unwrap();
    }
    let local = "  internalTrafficPolicy: Local\n";
    lab.write_manifest(
        "web.yaml",
        &web6_on(local, [Some(NODE), Some(NODE), Some("other")]),
    )
    .unwrap();
    lab.start_agent(&agent_on_node()).unwrap();
    assert_eq!(
        answering6(&lab, "client", 40),
        BTreeSet::from(["b0".to_owned(), "b1".to_owned()]),
        "only this node's endpoints"
    );
    // Local with none here: refused, not sent elsewhere.
    apply(&mut lab, "web.yaml", &web6_on(local, [Some("other"); 3]));
    let refused = lab
        .pod("client")
        .tcp_request(SocketAddr::from((VIP6, 80)), T)
        .unwrap_err();
    assert!(refused.to_string().contains("refused"), "{refused:#}");

    // ClientIP affinity: each client sticks to one backend; the clients
    // spread over several.
    let affinity =
        "  sessionAffinity: ClientIP\n  sessionAffinityConfig: {clientIP: {timeoutSeconds: 600}}\n";
    apply(&mut lab, "web.yaml", &web6_on(affinity, [Some(NODE); 3]));
    let mut picks = BTreeSet::new();
    for name in &clients {
        let seen = answering6(&lab, name, 12);
        assert_eq!(seen.len(), 1, "{name} moved: {seen:?}");
        picks.extend(seen);
    }
    assert!(
        picks.len() > 1,
        "every client got the same backend: {picks:?}"
    );
    assert!(event_count(&lab, "affinity_hit") >= 80);
}

#[test]
fn ipv6_flows_through_tc_survive_an_agent_restart() {
    if !require_privileges("ipv6_flows_through_tc_survive_an_agent_restart") {
        return;
    }
    let mut lab = web6(3);
    let http6 = SocketAddr::from((VIP6, 80));
    let mut conn = lab.pod("client").tcp_connect(http6, T).unwrap();
    let backend = who(&request_line(&mut conn, T).unwrap());
    let exit = lab.take_agent().unwrap().stop().unwrap();
    assert!(exit.success(), "SIGTERM exits cleanly: {exit}");
    // No agent: the pinned programs, their tail calls and the maps serve.
    assert_eq!(who(&request_line(&mut conn, T).unwrap()), backend);
    assert_eq!(spread(&lab, http6, 3, 60).len(), 3);
    lab.start_agent(&AgentOptions::default()).unwrap();
    assert_eq!(
        who(&request_line(&mut conn, T).unwrap()),
        backend,
        "the connection survived the restart"
    );
    assert_eq!(spread(&lab, http6, 3, 60).len(), 3);
}

#[test]
fn a_pod_outside_socket_lb_reaches_ipv6_node_ports_on_the_nodes_ipv6_address_through_tc() {
    if !require_privileges(
        "a_pod_outside_socket_lb_reaches_ipv6_node_ports_on_the_nodes_ipv6_address_through_tc",
    ) {
        return;
    }
    // `web` has NodePorts 30080 (http) and 30053 (dns).
    let lab = web6(3);
    let node = SocketAddr::from((GATEWAY6, 30080));
    let seen = spread(&lab, node, 3, 60);
    assert_eq!(seen.len(), 3, "every backend answers: {seen:?}");
    let client = lab.pod("client");
    let answer = client.tcp_request(node, T).unwrap();
    assert_eq!(peer(&answer).ip(), CLIENT6, "no SNAT from a pod: {answer}");
    let (answer, from) = client
        .udp_request(SocketAddr::from((GATEWAY6, 30053)), T)
        .unwrap();
    assert_eq!(from, SocketAddr::from((GATEWAY6, 30053)), "{answer}");
    // A port no NodePort has is the node's own business.
    let closed = client
        .tcp_request(SocketAddr::from((GATEWAY6, 30099)), T)
        .unwrap_err();
    assert!(closed.to_string().contains("refused"), "{closed:#}");
}

#[test]
fn the_monitor_shows_ipv6_rejects_and_new_flows_through_tc() {
    if !require_privileges("the_monitor_shows_ipv6_rejects_and_new_flows_through_tc") {
        return;
    }
    let mut lab = web6(1);
    let ports = [Port::tcp("http", 8080)];
    apply(
        &mut lab,
        "empty.yaml",
        &dual_stack("empty", OTHER_VIP, OTHER_VIP6, &ports, &[]),
    );
    let mut monitor = start_monitor(&lab, &["--addr", &CLIENT6.to_string()]);
    let client = lab.pod("client");
    assert!(
        client
            .tcp_request(SocketAddr::from((OTHER_VIP6, 8080)), T)
            .is_err()
    );
    let line = monitor.wait_for("\"reject\"", 0, T).unwrap();
    let event: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(event["reason"], "no_endpoints", "{line}");
    assert_eq!(event["dst"], format!("[{OTHER_VIP6}]:8080"), "{line}");
    assert_eq!(event["frontend"], "default/empty:http", "{line}");
    assert!(
        event["src"]
            .as_str()
            .unwrap()
            .starts_with(&format!("[{CLIENT6}]:")),
        "{line}"
    );
    let mark = monitor.log_len();
    assert_eq!(
        who(&client.tcp_request(SocketAddr::from((VIP6, 80)), T).unwrap()),
        "b0"
    );
    let line = monitor.wait_for("\"new-flow\"", mark, T).unwrap();
    let event: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(event["dst"], format!("[{VIP6}]:80"), "{line}");
    assert_eq!(
        event["backend"],
        format!("[{}]:8080", backend_ip6(0)),
        "{line}"
    );
    assert_eq!(event["frontend"], "default/web:http", "{line}");
    assert!(monitor.stop().unwrap().success());
}
