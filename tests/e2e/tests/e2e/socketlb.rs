//! Socket LB end to end: the agent attaches its cgroup programs to the
//! lab's own cgroup (`--cgroup-path`), and the clients here are processes
//! (`sluice-probe`) started inside it, in the node namespace or in a pod.
#![allow(clippy::unwrap_used, reason = "tests: a failure fails the test")]

use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv6Addr, SocketAddr},
    process::Command,
    time::{Duration, Instant},
};

use sluice_agent::dataplane::conntrack::Conntrack;
use sluice_lab::{
    AgentOptions, GATEWAY, GATEWAY6, Lab, Netns, enter_on_spawn,
    manifest::{self, Endpoint, Port},
    process::Process,
    require_privileges,
};

use crate::common::*;

/// The probe's command line, to run in `ns` inside the lab's cgroup, and
/// the namespace file that must stay open until it is spawned.
fn probe_command(lab: &Lab, ns: &Netns, args: &[&str]) -> (Command, std::fs::File) {
    // `timeout` bounds the whole run; the probe bounds each of its waits.
    let mut cmd = Command::new("timeout");
    cmd.arg("30").arg(probe_bin()).args(args);
    let file = ns.open().unwrap();
    enter_on_spawn(&mut cmd, &file);
    lab.cgroup().enter_on_spawn(&mut cmd).unwrap();
    (cmd, file)
}

/// Runs the probe to its end; its output lines.
pub(crate) fn probe(lab: &Lab, ns: &Netns, args: &[&str]) -> Vec<String> {
    let (mut cmd, _ns) = probe_command(lab, ns, args);
    let out = cmd.output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

pub(crate) fn line<'a>(lines: &'a [String], prefix: &str) -> &'a str {
    lines
        .iter()
        .find_map(|l| l.strip_prefix(prefix))
        .unwrap_or_else(|| panic!("no `{prefix}` line in {lines:?}"))
}

fn conntrack_entries(lab: &Lab) -> u64 {
    Conntrack::open_pinned(&lab.pin_dir())
        .unwrap()
        .census()
        .entries()
}

#[test]
fn from_the_node_tcp_and_udp_reach_every_backend_and_show_the_cluster_ip() {
    if !require_privileges("from_the_node_tcp_and_udp_reach_every_backend_and_show_the_cluster_ip")
    {
        return;
    }
    let mut lab = web_lab(3);
    lab.start_agent(&AgentOptions::default()).unwrap();
    reach_every_backend_from_the_node(&lab, http(), dns());
}

#[test]
fn ipv6_sockets_reach_ipv4_services_through_mapped_addresses() {
    if !require_privileges("ipv6_sockets_reach_ipv4_services_through_mapped_addresses") {
        return;
    }
    let mut lab = web_lab(3);
    lab.start_agent(&AgentOptions::default()).unwrap();
    reach_every_backend_from_the_node(&lab, mapped(http()), mapped(dns()));
    // From a pod in the cgroup: translated at connect(), so TC has nothing
    // to NAT (without the IPv6 hooks TC would, and the entries show it).
    let client = &lab.pod("client").ns;
    for _ in 0..5 {
        let out = probe(&lab, client, &["tcp", &mapped(http()).to_string()]);
        assert_eq!(line(&out, "peer "), mapped(http()).to_string());
        assert!(who(line(&out, "reply ")).starts_with('b'), "{out:?}");
    }
    assert_eq!(conntrack_entries(&lab), 0);
}

/// `web`'s IPv6 ClusterIP.
const VIP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x96, 0, 0, 0, 0, 0, 0xa);

pub(crate) fn backend_ip6(i: usize) -> Ipv6Addr {
    Ipv6Addr::new(
        0xfd00,
        0x244,
        1,
        0,
        0,
        0,
        0,
        0x10 + u16::try_from(i).unwrap(),
    )
}

/// `web` dual-stack (`10.96.0.10` and `fd00:96::a`), with an IPv4 and an
/// IPv6 slice of `backends`, and NodePorts 30080 (http) and 30053 (dns).
fn dual_stack_web(backends: &[usize]) -> String {
    let ports = [
        Port::tcp("http", 80).node_port(30080),
        Port::udp("dns", 53).node_port(30053),
    ];
    let targets = [Port::tcp("http", 8080), Port::udp("dns", 5353)];
    let v4: Vec<Endpoint> = backends
        .iter()
        .map(|&i| Endpoint::ready(backend_ip(i)))
        .collect();
    let v6: Vec<Endpoint> = backends
        .iter()
        .map(|&i| Endpoint::ready(backend_ip6(i)))
        .collect();
    format!(
        "{}---\n{}---\n{}",
        manifest::dual_stack_service("web", VIP, VIP6, &ports),
        manifest::endpoint_slice("web-v4", "web", &targets, &v4),
        manifest::endpoint_slice("web-v6", "web", &targets, &v6),
    )
}

/// The client pod's IPv6 address.
pub(crate) const CLIENT6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x244, 1, 0, 0, 0, 0, 2);

/// `web_lab(n)` with IPv6 on the client and the backends.
pub(crate) fn web_lab6(n: usize) -> Lab {
    let mut lab = web_lab(n);
    lab.add_ipv6("client", CLIENT6).unwrap();
    for i in 0..n {
        lab.add_ipv6(&backend_name(i), backend_ip6(i)).unwrap();
    }
    lab
}

/// `web_lab6(n)` with `web` dual-stack.
pub(crate) fn dual_stack_lab(n: usize) -> Lab {
    let lab = web_lab6(n);
    lab.write_manifest("web.yaml", &dual_stack_web(&(0..n).collect::<Vec<_>>()))
        .unwrap();
    lab
}

#[test]
fn an_ipv6_cluster_ip_and_node_port_reach_every_backend_from_the_node_and_a_pod() {
    if !require_privileges(
        "an_ipv6_cluster_ip_and_node_port_reach_every_backend_from_the_node_and_a_pod",
    ) {
        return;
    }
    let mut lab = dual_stack_lab(3);
    lab.start_agent(&AgentOptions::default()).unwrap();
    let http6 = SocketAddr::from((VIP6, 80));
    reach_every_backend_from_the_node(&lab, http6, SocketAddr::from((VIP6, 53)));
    // The IPv4 half of the dual-stack Service still works.
    reach_every_backend_from_the_node(&lab, http(), dns());
    let client = &lab.pod("client").ns;
    for _ in 0..5 {
        let out = probe(&lab, client, &["tcp", &http6.to_string()]);
        assert_eq!(line(&out, "peer "), http6.to_string());
        let answer = line(&out, "reply ");
        assert!(who(answer).starts_with('b'), "{out:?}");
        assert_eq!(
            peer(answer).ip(),
            CLIENT6,
            "the backend sees the pod's IPv6 address"
        );
    }
    // The NodePorts on the node's IPv6 address (and its IPv4 one), from a pod.
    for node in [
        SocketAddr::from((GATEWAY6, 30080)),
        SocketAddr::from((GATEWAY, 30080)),
    ] {
        let out = probe(&lab, client, &["tcp", &node.to_string()]);
        assert_eq!(line(&out, "peer "), node.to_string());
        assert!(who(line(&out, "reply ")).starts_with('b'), "{out:?}");
    }
    let out = probe(&lab, client, &["udp", &format!("[{GATEWAY6}]:30053"), "2"]);
    let (from, answer) = line(&out, "reply ").split_once(' ').unwrap();
    assert_eq!(from, format!("[{GATEWAY6}]:30053"));
    assert!(who(answer).starts_with('b'), "{out:?}");
    // An unknown port of the IPv6 ClusterIP is refused at once.
    let out = probe(&lab, lab.node(), &["tcp", "[fd00:96::a]:81"]);
    assert!(line(&out, "error ").starts_with("ECONNREFUSED"), "{out:?}");
    let status = lab.status(&sluice_lab::default_bin()).unwrap();
    assert!(
        status.contains("[fd00:96::a]:80/TCP") && status.contains("[fd00:244:1::10]:8080"),
        "status shows the IPv6 frontend and backends: {status}"
    );
}

#[test]
fn an_ipv6_service_without_endpoints_refuses_connect_at_once() {
    if !require_privileges("an_ipv6_service_without_endpoints_refuses_connect_at_once") {
        return;
    }
    let mut lab = dual_stack_lab(1);
    lab.write_manifest("web.yaml", &dual_stack_web(&[]))
        .unwrap();
    lab.start_agent(&AgentOptions::default()).unwrap();
    let out = probe(&lab, lab.node(), &["tcp", "[fd00:96::a]:80"]);
    assert!(line(&out, "error ").starts_with("ECONNREFUSED"), "{out:?}");
}

/// An IPv4 address as an IPv6 socket names it: `[::ffff:a.b.c.d]:port`.
fn mapped(to: SocketAddr) -> SocketAddr {
    let IpAddr::V4(v4) = to.ip() else {
        return to;
    };
    SocketAddr::from((v4.to_ipv6_mapped(), to.port()))
}

/// From the node: TCP reaches each of the three backends and
/// `getpeername` shows `http`; unconnected UDP reaches each and `recvfrom`
/// shows `dns`; a connected UDP socket's peer and sources are `dns`.
fn reach_every_backend_from_the_node(lab: &Lab, http: SocketAddr, dns: SocketAddr) {
    let http_s = http.to_string();
    let dns_s = dns.to_string();

    let mut tcp = BTreeSet::new();
    for _ in 0..40 {
        let out = probe(lab, lab.node(), &["tcp", &http_s]);
        assert_eq!(
            line(&out, "peer "),
            http_s,
            "getpeername shows the ClusterIP"
        );
        tcp.insert(who(line(&out, "reply ")));
        if tcp.len() == 3 {
            break;
        }
    }
    assert_eq!(
        tcp.len(),
        3,
        "TCP from the node reaches every backend: {tcp:?}"
    );

    let mut udp = BTreeSet::new();
    for _ in 0..40 {
        let out = probe(lab, lab.node(), &["udp", &dns_s, "2"]);
        let reply = line(&out, "reply ");
        let (from, answer) = reply.split_once(' ').unwrap();
        assert_eq!(from, dns_s, "recvfrom shows the ClusterIP:port");
        udp.insert(who(answer));
        if udp.len() == 3 {
            break;
        }
    }
    assert_eq!(
        udp.len(),
        3,
        "unconnected UDP reaches every backend: {udp:?}"
    );

    let out = probe(lab, lab.node(), &["udp-connected", &dns_s, "3"]);
    assert_eq!(line(&out, "peer "), dns_s);
    let replies: BTreeSet<&str> = out
        .iter()
        .filter_map(|l| l.strip_prefix("reply "))
        .map(|r| r.split_once(' ').unwrap().0)
        .collect();
    assert_eq!(replies, BTreeSet::from([dns_s.as_str()]), "{out:?}");
}

#[test]
fn a_pod_connection_through_the_socket_hook_leaves_no_conntrack_entry() {
    if !require_privileges("a_pod_connection_through_the_socket_hook_leaves_no_conntrack_entry") {
        return;
    }
    let mut lab = web_lab(2);
    lab.start_agent(&AgentOptions::default()).unwrap();
    let client = &lab.pod("client").ns;
    for _ in 0..5 {
        let out = probe(&lab, client, &["tcp", &http().to_string()]);
        let answer = line(&out, "reply ");
        assert!(who(answer).starts_with('b'), "{out:?}");
        assert_eq!(peer(answer).ip(), CLIENT, "the backend sees the pod");
    }
    assert_eq!(
        conntrack_entries(&lab),
        0,
        "translated at connect(): the TC program had nothing to NAT"
    );
    // The same request from outside the cgroup goes through TC's NAT.
    lab.pod("client").tcp_request(http(), T).unwrap();
    assert!(conntrack_entries(&lab) > 0);
}

#[test]
fn a_connected_udp_socket_never_reaches_a_removed_backend() {
    if !require_privileges("a_connected_udp_socket_never_reaches_a_removed_backend") {
        return;
    }
    stale_udp_is_closed(web_lab(2), dns(), |kept| web_manifest(&[kept]));
}

#[test]
fn an_ipv6_socket_connected_to_a_mapped_address_never_reaches_a_removed_backend() {
    if !require_privileges(
        "an_ipv6_socket_connected_to_a_mapped_address_never_reaches_a_removed_backend",
    ) {
        return;
    }
    stale_udp_is_closed(web_lab(2), mapped(dns()), |kept| web_manifest(&[kept]));
}

#[test]
fn an_ipv6_connected_udp_socket_never_reaches_a_removed_backend() {
    if !require_privileges("an_ipv6_connected_udp_socket_never_reaches_a_removed_backend") {
        return;
    }
    let dns6 = SocketAddr::from((VIP6, 53));
    stale_udp_is_closed(dual_stack_lab(2), dns6, |kept| dual_stack_web(&[kept]));
}

/// A pod's connected UDP socket to `dns` streams; one backend is removed
/// (`web.yaml` becomes `with_only(kept)`); the socket is closed, and the
/// new one reaches the other backend only.
fn stale_udp_is_closed(mut lab: Lab, dns: SocketAddr, with_only: impl Fn(usize) -> String) {
    lab.start_agent(&AgentOptions::default()).unwrap();
    let (cmd, ns) = probe_command(
        &lab,
        &lab.pod("client").ns,
        &["udp-stream", &dns.to_string(), "8"],
    );
    let mut stream = Process::spawn("probe", cmd, false).unwrap();
    drop(ns);
    let first = stream.wait_for("reply ", 0, T).unwrap();
    let removed = who(first.trim_start_matches("reply "));
    let kept: usize = usize::from(removed == backend_name(0));
    let mark = stream.log_len();

    apply(&mut lab, "web.yaml", &with_only(kept));
    // The socket is closed under the application, which connects again.
    let error = stream
        .wait_for("error ", mark, Duration::from_secs(5))
        .unwrap();
    let after = stream.log_len();
    stream
        .wait_for("reply ", after, Duration::from_secs(5))
        .unwrap();
    let log = stream.log();
    let lines: Vec<&str> = log.lines().collect();
    let err_at = lines.iter().rposition(|l| l.starts_with("error ")).unwrap();
    let replies: BTreeSet<String> = lines[err_at..]
        .iter()
        .filter_map(|l| l.strip_prefix("reply "))
        .map(who)
        .collect();
    assert_eq!(
        replies,
        BTreeSet::from([backend_name(kept)]),
        "after `{}` only the remaining backend answers",
        error.trim()
    );
    assert!(
        lab.agent().log().contains("closed connected UDP sockets"),
        "the agent says what it did"
    );
}

#[test]
fn a_service_without_endpoints_refuses_connect_at_once() {
    if !require_privileges("a_service_without_endpoints_refuses_connect_at_once") {
        return;
    }
    let mut lab = web_lab(1);
    lab.write_manifest("web.yaml", &web_manifest(&[])).unwrap();
    lab.start_agent(&AgentOptions::default()).unwrap();
    let t = Instant::now();
    let out = probe(&lab, lab.node(), &["tcp", &http().to_string()]);
    let elapsed = t.elapsed();
    let error = line(&out, "error ");
    assert!(error.starts_with("ECONNREFUSED"), "{out:?}");
    let micros: u64 = error
        .split_whitespace()
        .nth(2)
        .and_then(|n| n.parse().ok())
        .unwrap();
    // Refused inside connect(): no packet, no timeout (bound, not a benchmark).
    assert!(micros < 1_000_000, "{error} ({elapsed:?} with the process)");
}

#[test]
fn socket_lb_stays_after_a_stop_and_goes_when_turned_off() {
    if !require_privileges("socket_lb_stays_after_a_stop_and_goes_when_turned_off") {
        return;
    }
    let mut lab = web_lab(1);
    lab.start_agent(&AgentOptions::default()).unwrap();
    let http_s = http().to_string();
    lab.take_agent().unwrap().stop().unwrap();
    let out = probe(&lab, lab.node(), &["tcp", &http_s]);
    assert_eq!(
        who(line(&out, "reply ")),
        backend_name(0),
        "the pinned links stay"
    );

    lab.start_agent(&AgentOptions {
        extra_args: vec!["--socket-lb=false".into()],
        ..AgentOptions::default()
    })
    .unwrap();
    assert!(!lab.pin_dir().join("links/sock_connect4").exists());
    let out = probe(&lab, lab.node(), &["tcp", &http_s]);
    assert!(
        out.iter().any(|l| l.starts_with("error ")),
        "with socket LB off the node has no way to the ClusterIP: {out:?}"
    );
}
