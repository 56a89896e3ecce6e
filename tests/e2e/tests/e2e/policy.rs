//! Traffic policy and session affinity on the ClusterIP paths (TC and
//! socket LB): `internalTrafficPolicy: Local` and `sessionAffinity:
//! ClientIP`.
#![allow(clippy::unwrap_used, reason = "tests: a failure fails the test")]

use std::{
    collections::BTreeSet,
    net::{Ipv4Addr, SocketAddr},
    process::Command,
};

use sluice_lab::{AgentOptions, Lab, enter_on_spawn, require_privileges};

use crate::common::*;

const NODE: &str = "lab-node";

/// `web` on the three lab backends, the first two on this node, with extra
/// `spec` lines.
fn web(spec: &str, nodes: [&str; 3]) -> String {
    let eps: Vec<String> = (0..3)
        .map(|i| {
            format!(
                "{{addresses: [\"{}\"], nodeName: {}, conditions: {{ready: true}}}}",
                backend_ip(i),
                nodes[i]
            )
        })
        .collect();
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: web, namespace: default}}\nspec:\n  clusterIP: {VIP}\n  ports: [{{name: http, port: 80}}]\n{spec}---\n\
         apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: web-1\n  namespace: default\n  labels: {{kubernetes.io/service-name: web}}\n\
         addressType: IPv4\nports: [{{name: http, port: 8080}}]\nendpoints: [{}]\n",
        eps.join(", ")
    )
}

fn agent_on_node() -> AgentOptions {
    AgentOptions {
        extra_args: vec!["--node-name".into(), NODE.into()],
        ..AgentOptions::default()
    }
}

/// The backends that answer `n` connections from pod `pod`.
fn answering(lab: &Lab, pod: &str, n: usize) -> BTreeSet<String> {
    (0..n)
        .map(|_| who(&lab.pod(pod).tcp_request(http(), T).unwrap()))
        .collect()
}

#[test]
fn internal_traffic_policy_local_uses_only_this_nodes_endpoints() {
    if !require_privileges("internal_traffic_policy_local_uses_only_this_nodes_endpoints") {
        return;
    }
    let mut lab = web_lab(3);
    let local = "  internalTrafficPolicy: Local\n";
    lab.write_manifest("web.yaml", &web(local, [NODE, NODE, "other"]))
        .unwrap();
    lab.start_agent(&agent_on_node()).unwrap();
    let seen = answering(&lab, "client", 40);
    assert_eq!(
        seen,
        BTreeSet::from(["b0".to_owned(), "b1".to_owned()]),
        "only this node's endpoints"
    );

    // Cluster policy: every endpoint.
    apply(&mut lab, "web.yaml", &web("", [NODE, NODE, "other"]));
    assert_eq!(answering(&lab, "client", 60).len(), 3);

    // Local with no endpoint on this node: refused, not sent elsewhere.
    apply(
        &mut lab,
        "web.yaml",
        &web(local, ["other", "other", "other"]),
    );
    let refused = lab.pod("client").tcp_request(http(), T).unwrap_err();
    assert!(refused.to_string().contains("refused"), "{refused:#}");
}

#[test]
fn client_ip_affinity_keeps_a_client_on_one_backend_while_clients_spread() {
    if !require_privileges("client_ip_affinity_keeps_a_client_on_one_backend_while_clients_spread")
    {
        return;
    }
    let mut lab = web_lab(3);
    let clients: Vec<String> = (0..8).map(|i| format!("c{i}")).collect();
    for (i, name) in clients.iter().enumerate() {
        lab.add_pod(
            name,
            Ipv4Addr::new(10, 244, 2, 10 + u8::try_from(i).unwrap()),
        )
        .unwrap();
    }
    let affinity =
        "  sessionAffinity: ClientIP\n  sessionAffinityConfig: {clientIP: {timeoutSeconds: 600}}\n";
    lab.write_manifest("web.yaml", &web(affinity, [NODE, NODE, NODE]))
        .unwrap();
    lab.start_agent(&agent_on_node()).unwrap();

    // Each client sticks to one backend; the clients spread over several.
    let mut picks = BTreeSet::new();
    for name in &clients {
        let seen = answering(&lab, name, 12);
        assert_eq!(seen.len(), 1, "{name} moved: {seen:?}");
        picks.extend(seen);
    }
    assert!(
        picks.len() > 1,
        "every client got the same backend: {picks:?}"
    );

    // Without affinity the same client spreads.
    apply(&mut lab, "web.yaml", &web("", [NODE, NODE, NODE]));
    assert!(answering(&lab, "c0", 40).len() > 1);

    // Back with affinity: a client whose backend leaves moves to a live one
    // and sticks there.
    apply(&mut lab, "web.yaml", &web(affinity, [NODE, NODE, NODE]));
    let first = answering(&lab, "c0", 1).pop_first().unwrap();
    let gone: usize = first.trim_start_matches('b').parse().unwrap();
    let mut nodes = [NODE, NODE, NODE];
    nodes[gone] = "gone";
    let mut without = web(affinity, nodes);
    // Drop the removed endpoint altogether.
    without = without.replace(
        &format!(
            "{{addresses: [\"{}\"], nodeName: gone, conditions: {{ready: true}}}}, ",
            backend_ip(gone)
        ),
        "",
    );
    without = without.replace(
        &format!(
            ", {{addresses: [\"{}\"], nodeName: gone, conditions: {{ready: true}}}}",
            backend_ip(gone)
        ),
        "",
    );
    apply(&mut lab, "web.yaml", &without);
    let after = answering(&lab, "c0", 12);
    assert_eq!(after.len(), 1, "{after:?}");
    assert!(!after.contains(&first), "still sent to the removed {first}");
}

#[test]
fn client_ip_affinity_holds_for_socket_lb_clients_by_network_namespace() {
    if !require_privileges("client_ip_affinity_holds_for_socket_lb_clients_by_network_namespace") {
        return;
    }
    let mut lab = web_lab(3);
    let affinity = "  sessionAffinity: ClientIP\n";
    lab.write_manifest("web.yaml", &web(affinity, [NODE, NODE, NODE]))
        .unwrap();
    lab.start_agent(&agent_on_node()).unwrap();
    // Separate processes in the node namespace: one client for affinity.
    let seen: BTreeSet<String> = (0..10)
        .map(|_| {
            let out = probe_tcp(&lab, http());
            let reply = out
                .lines()
                .find_map(|l| l.strip_prefix("reply "))
                .unwrap_or_else(|| panic!("{out}"))
                .to_owned();
            who(&reply)
        })
        .collect();
    assert_eq!(seen.len(), 1, "{seen:?}");
}

#[test]
fn external_and_load_balancer_ips_reach_every_backend() {
    if !require_privileges("external_and_load_balancer_ips_reach_every_backend") {
        return;
    }
    let mut lab = web_lab(3);
    let external = "  type: LoadBalancer\n  externalIPs: [192.0.2.50]\nstatus: {loadBalancer: {ingress: [{ip: 198.51.100.7}]}}\n";
    lab.write_manifest("web.yaml", &web(external, [NODE, NODE, NODE]))
        .unwrap();
    lab.start_agent(&agent_on_node()).unwrap();
    for ip in [Ipv4Addr::new(192, 0, 2, 50), Ipv4Addr::new(198, 51, 100, 7)] {
        let to = SocketAddr::from((ip, 80));
        // From a pod: TC's NAT, the reply from the address asked for.
        let seen: BTreeSet<String> = (0..60)
            .map(|_| who(&lab.pod("client").tcp_request(to, T).unwrap()))
            .collect();
        assert_eq!(seen.len(), 3, "{ip}: {seen:?}");
        // From the node: socket LB.
        let out = probe_tcp(&lab, to);
        assert!(out.contains(&format!("peer {to}")), "{out}");
        assert!(out.contains("reply b"), "{out}");
    }
}

#[test]
fn a_source_outside_load_balancer_source_ranges_is_dropped_and_counted() {
    if !require_privileges("a_source_outside_load_balancer_source_ranges_is_dropped_and_counted") {
        return;
    }
    let mut lab = web_lab(3);
    lab.add_pod("outsider", Ipv4Addr::new(10, 244, 2, 10))
        .unwrap();
    let lb = "  type: LoadBalancer\n  loadBalancerSourceRanges: [10.244.1.0/24]\nstatus: {loadBalancer: {ingress: [{ip: 198.51.100.7}]}}\n";
    lab.write_manifest("web.yaml", &web(lb, [NODE, NODE, NODE]))
        .unwrap();
    lab.start_agent(&agent_on_node()).unwrap();
    let to = SocketAddr::from(([198, 51, 100, 7], 80));
    let short = std::time::Duration::from_millis(500);
    // Inside the range: served.
    assert!(who(&lab.pod("client").tcp_request(to, T).unwrap()).starts_with('b'));
    // Outside: dropped (no answer at all), and counted.
    let dropped = lab.pod("outsider").tcp_request(to, short).unwrap_err();
    assert!(!dropped.to_string().contains("refused"), "{dropped:#}");
    let metrics = http_get(&lab, SocketAddr::from(([127, 0, 0, 1], 10256)), "/metrics")
        .unwrap()
        .1;
    let counted = metrics
        .lines()
        .find(|l| l.contains("reason=\"source_range\""))
        .unwrap_or_else(|| panic!("{metrics}"));
    assert!(!counted.trim_end().ends_with(" 0"), "{counted}");
    // The ClusterIP of the same Service is not behind the ranges.
    assert!(who(&lab.pod("outsider").tcp_request(http(), T).unwrap()).starts_with('b'));
}

/// Polls `GET /healthz` on the node's port `port` until `want(status,
/// body)`, for at most 5 s; the last answer.
fn health_until(
    lab: &Lab,
    port: u16,
    want: impl Fn(Option<&(u16, String)>) -> bool,
) -> Option<(u16, String)> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let got = http_get(lab, SocketAddr::from(([127, 0, 0, 1], port)), "/healthz");
        if want(got.as_ref()) || std::time::Instant::now() >= deadline {
            return got;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[test]
fn health_check_node_port_reports_this_nodes_endpoints() {
    if !require_privileges("health_check_node_port_reports_this_nodes_endpoints") {
        return;
    }
    let mut lab = web_lab(3);
    let etp_local =
        "  type: LoadBalancer\n  externalTrafficPolicy: Local\n  healthCheckNodePort: 32123\n";
    lab.write_manifest("web.yaml", &web(etp_local, [NODE, NODE, "other"]))
        .unwrap();
    lab.start_agent(&agent_on_node()).unwrap();
    let (status, body) = health_until(&lab, 32123, |g| g.is_some()).unwrap();
    assert_eq!(status, 200, "{body}");
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["localEndpoints"], 2, "{body}");
    assert_eq!(json["service"]["name"], "web");

    // No endpoint on this node: 503, as kube-proxy answers.
    lab.write_manifest("web.yaml", &web(etp_local, ["other", "other", "other"]))
        .unwrap();
    let (status, body) = health_until(&lab, 32123, |g| g.is_some_and(|(s, _)| *s == 503)).unwrap();
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("\"localEndpoints\":0"), "{body}");

    // Cluster policy: the port closes.
    lab.write_manifest(
        "web.yaml",
        &web("  type: LoadBalancer\n", [NODE, NODE, NODE]),
    )
    .unwrap();
    assert!(health_until(&lab, 32123, |g| g.is_none()).is_none());
}

/// `sluice-probe tcp` from the node namespace, inside the lab's cgroup.
fn probe_tcp(lab: &Lab, to: SocketAddr) -> String {
    let mut cmd = Command::new("timeout");
    cmd.arg("30")
        .arg(env!("CARGO_BIN_EXE_sluice-probe"))
        .arg("tcp")
        .arg(to.to_string());
    let ns = lab.node().open().unwrap();
    enter_on_spawn(&mut cmd, &ns);
    lab.cgroup().enter_on_spawn(&mut cmd).unwrap();
    let out = cmd.output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}
