//! End-to-end: kube-proxy behaviour a platform team checks before it
//! replaces kube-proxy: `ipMode: Proxy` load balancer addresses left to
//! the load balancer, and topology hints followed from the Node's zone.
#![allow(clippy::unwrap_used, reason = "tests: a failure fails the test")]

use std::net::{Ipv4Addr, SocketAddr};

use sluice_lab::{AgentOptions, require_privileges};

use crate::common::{SERVICE_CIDR, T, apply, start_agent_on_apiserver, web_lab, who};

const LB_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);

/// `web` of type LoadBalancer at `LB_IP`, in `ip_mode`, backed by `b0`.
fn load_balanced(ip_mode: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: web, namespace: default}}\n\
spec:\n  type: LoadBalancer\n  clusterIP: 10.96.0.10\n  ports: [{{name: http, port: 80, nodePort: 30080, protocol: TCP}}]\n\
status:\n  loadBalancer:\n    ingress: [{{ip: {LB_IP}, ipMode: {ip_mode}}}]\n---\n\
apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: web-1\n  namespace: default\n  labels: {{kubernetes.io/service-name: web}}\n\
addressType: IPv4\nendpoints: [{{addresses: [10.244.1.10], conditions: {{ready: true}}}}]\nports: [{{name: http, port: 8080, protocol: TCP}}]\n"
    )
}

#[test]
fn a_load_balancer_address_in_proxy_mode_is_left_to_the_load_balancer() {
    if !require_privileges("a_load_balancer_address_in_proxy_mode_is_left_to_the_load_balancer") {
        return;
    }
    let mut lab = web_lab(1);
    // The load balancer: a host beside the node that owns the address,
    // answering as `lb`.
    lab.add_outsider("lb", LB_IP).unwrap();
    lab.serve("lb", &[80], &[]).unwrap();
    lab.remove_manifest("web.yaml").unwrap();
    lab.write_manifest("web.yaml", &load_balanced("VIP"))
        .unwrap();
    lab.start_agent(&AgentOptions {
        service_cidr: Some(SERVICE_CIDR.into()),
        ..AgentOptions::default()
    })
    .unwrap();
    let to_lb = SocketAddr::from((LB_IP, 80));
    let ask = |lab: &sluice_lab::Lab| who(&lab.pod("client").tcp_request(to_lb, T).unwrap());
    // VIP: short-circuited to the backend inside the cluster.
    assert_eq!(ask(&lab), "b0");
    // Proxy: the connection leaves for the load balancer.
    apply(&mut lab, "web.yaml", &load_balanced("Proxy"));
    for _ in 0..3 {
        assert_eq!(ask(&lab), "lb");
    }
    // The ClusterIP is still the Service's.
    assert_eq!(
        who(&lab
            .pod("client")
            .tcp_request(SocketAddr::from((Ipv4Addr::new(10, 96, 0, 10), 80)), T)
            .unwrap()),
        "b0"
    );
}

/// Node `node-a` in zone-a, and `web` (no selector) with endpoints b0 in
/// zone-a, b1 in zone-b and b2 in zone-c, hinted for their zones (as the
/// EndpointSlice controller writes them for `trafficDistribution:
/// PreferClose`); `near` with the same endpoints hinted for their nodes
/// (`PreferSameNode`).
fn topology_objects(with_b0: bool) -> String {
    let ep = |i: usize, node: &str, zone: &str, hints: &str| {
        format!(
            "- addresses: [10.244.1.1{i}]\n  nodeName: {node}\n  zone: {zone}\n  conditions: {{ready: true}}\n  hints: {hints}\n"
        )
    };
    let zone_hints = |zone: &str| format!("{{forZones: [{{name: {zone}}}]}}");
    let node_hints = |node: &str, zone: &str| {
        format!("{{forZones: [{{name: {zone}}}], forNodes: [{{name: {node}}}]}}")
    };
    let mut web = String::new();
    let mut near = String::new();
    for (i, node, zone) in [
        (0, "node-a", "zone-a"),
        (1, "node-b", "zone-b"),
        (2, "node-c", "zone-c"),
    ] {
        if i == 0 && !with_b0 {
            continue;
        }
        web.push_str(&ep(i, node, zone, &zone_hints(zone)));
        near.push_str(&ep(i, node, zone, &node_hints(node, zone)));
    }
    let service = |name: &str, ip: &str, distribution: &str, endpoints: &str| {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: default}}\n\
spec: {{clusterIP: {ip}, trafficDistribution: {distribution}, ports: [{{name: http, port: 80, targetPort: 8080}}]}}\n---\n\
apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}-1\n  namespace: default\n  labels: {{kubernetes.io/service-name: {name}}}\n\
addressType: IPv4\nports: [{{name: http, port: 8080, protocol: TCP}}]\nendpoints:\n{endpoints}---\n"
        )
    };
    format!(
        "apiVersion: v1\nkind: Node\nmetadata: {{name: node-a, labels: {{topology.kubernetes.io/zone: zone-a}}}}\n---\n{}{}",
        service("web", "10.96.0.10", "PreferClose", &web),
        service("near", "10.96.0.12", "PreferSameNode", &near)
    )
}

/// The backends that answered up to `max` connections to `to`, until
/// `want` of them did.
fn reached(lab: &sluice_lab::Lab, to: Ipv4Addr, want: usize, max: usize) -> Vec<String> {
    crate::common::spread(lab, SocketAddr::from((to, 80)), want, max)
        .into_keys()
        .collect()
}

#[test]
fn topology_hints_keep_traffic_in_the_nodes_zone_or_on_the_node_and_fall_back_to_all() {
    if !require_privileges(
        "topology_hints_keep_traffic_in_the_nodes_zone_or_on_the_node_and_fall_back_to_all",
    ) {
        return;
    }
    let mut lab = web_lab(3);
    lab.start_apiserver(&[]).unwrap();
    let file = lab.dir().join("topology.yaml");
    std::fs::write(&file, topology_objects(true)).unwrap();
    lab.apiserver()
        .kubectl(&["apply", "-f", file.to_str().unwrap()])
        .unwrap();
    start_agent_on_apiserver(&mut lab);
    let web = Ipv4Addr::new(10, 96, 0, 10);
    let near = Ipv4Addr::new(10, 96, 0, 12);
    // 30 connections: each of three backends would be missed by all of
    // them with a chance of (2/3)^30, 5e-6.
    assert_eq!(
        reached(&lab, web, 3, 30),
        ["b0"],
        "the zone-a endpoint only"
    );
    assert_eq!(reached(&lab, near, 3, 30), ["b0"], "the node's own only");

    // The zone-a endpoint goes: no hint for zone-a is left, so every
    // endpoint is used.
    std::fs::write(&file, topology_objects(false)).unwrap();
    lab.apiserver()
        .kubectl(&["apply", "-f", file.to_str().unwrap()])
        .unwrap();
    let mut all = Vec::new();
    for _ in 0..50 {
        all = reached(&lab, web, 2, 30);
        if all == ["b1", "b2"] {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(all, ["b1", "b2"], "every endpoint once none is hinted here");
}
