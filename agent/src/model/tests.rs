//! The model: what a Service and its slices ask of the dataplane.

use std::net::IpAddr;

use super::*;
use crate::frontend::FrontendKey;

fn svc(name: &str, ip: &str, ports: &[(&str, u16, Protocol)]) -> ServiceInfo {
    let ports = ports
        .iter()
        .map(|&(n, p, protocol)| ServicePortInfo {
            name: n.into(),
            port: p,
            protocol,
            node_port: None,
        })
        .collect();
    let ips = vec![ip.parse().unwrap()];
    ServiceInfo::test(name, ServiceKind::ClusterIp { ips }, ports)
}

fn ep(ip: &str, ready: bool, serving: bool, terminating: bool) -> EndpointInfo {
    EndpointInfo {
        addresses: vec![ip.parse().unwrap()],
        ready,
        serving,
        terminating,
        hostname: None,
        node_name: None,
        pod_name: None,
        for_zones: Vec::new(),
        for_nodes: Vec::new(),
    }
}

fn slice(
    name: &str,
    service: &str,
    ports: &[(&str, u16, Protocol)],
    eps: Vec<EndpointInfo>,
) -> SliceInfo {
    SliceInfo::test(name, service, ports, eps)
}

fn model(services: Vec<ServiceInfo>, slices: Vec<SliceInfo>) -> Model {
    Model {
        services: services.into_iter().map(|s| (s.key.clone(), s)).collect(),
        slices: slices.into_iter().map(|s| (s.key.clone(), s)).collect(),
        node: None,
    }
}

fn backends(d: &Desired, ip: &str, port: u16, proto: u8) -> Vec<(IpAddr, u16)> {
    d.frontends[&FrontendKey::new(ip.parse::<IpAddr>().unwrap(), port, proto)]
        .backends
        .iter()
        .copied()
        .collect()
}

#[test]
fn named_ports_map_to_the_slice_port_of_the_same_name_and_protocol() {
    let m = model(
        vec![svc(
            "web",
            "10.96.0.10",
            &[("http", 80, Protocol::Tcp), ("dns", 53, Protocol::Udp)],
        )],
        vec![slice(
            "web-1",
            "web",
            &[
                ("http", 8080, Protocol::Tcp),
                ("dns", 5353, Protocol::Udp),
                ("http", 9999, Protocol::Udp),
            ],
            vec![ep("10.0.0.1", true, true, false)],
        )],
    );
    let d = m.desired();
    assert_eq!(
        backends(&d, "10.96.0.10", 80, proto::TCP),
        vec![("10.0.0.1".parse().unwrap(), 8080)]
    );
    assert_eq!(
        backends(&d, "10.96.0.10", 53, proto::UDP),
        vec![("10.0.0.1".parse().unwrap(), 5353)]
    );
    assert_eq!(d.frontends.len(), 2);
    assert!(d.cluster_ips.contains(&"10.96.0.10".parse().unwrap()));
    assert_eq!(
        d.frontends[&FrontendKey::new("10.96.0.10".parse::<IpAddr>().unwrap(), 80, proto::TCP)]
            .name,
        "default/web:http"
    );
}

#[test]
fn only_ready_endpoints_unless_none_then_serving_terminating() {
    let ports = &[("", 80, Protocol::Tcp)];
    let with_ready = model(
        vec![svc("web", "10.96.0.10", ports)],
        vec![slice(
            "web-1",
            "web",
            ports,
            vec![
                ep("10.0.0.1", true, true, false),
                ep("10.0.0.2", false, true, true),
                ep("10.0.0.3", false, false, false),
            ],
        )],
    );
    assert_eq!(
        backends(&with_ready.desired(), "10.96.0.10", 80, proto::TCP),
        vec![("10.0.0.1".parse().unwrap(), 80)]
    );

    let none_ready = model(
        vec![svc("web", "10.96.0.10", ports)],
        vec![slice(
            "web-1",
            "web",
            ports,
            vec![
                ep("10.0.0.2", false, true, true),
                ep("10.0.0.3", false, false, true),
                ep("10.0.0.4", false, true, false),
            ],
        )],
    );
    assert_eq!(
        backends(&none_ready.desired(), "10.96.0.10", 80, proto::TCP),
        vec![("10.0.0.2".parse().unwrap(), 80)]
    );
}

#[test]
fn internal_traffic_policy_local_keeps_this_nodes_endpoints_only() {
    let ports = &[("", 80, Protocol::Tcp)];
    let mut local = svc("web", "10.96.0.10", ports);
    local.internal_local = true;
    let mut here = ep("10.0.0.1", true, true, false);
    here.node_name = Some("n1".into());
    let mut there = ep("10.0.0.2", true, true, false);
    there.node_name = Some("n2".into());
    let mut m = model(
        vec![local],
        vec![slice("web-1", "web", ports, vec![here, there])],
    );
    // No node name known: nothing is local.
    assert!(backends(&m.desired(), "10.96.0.10", 80, proto::TCP).is_empty());
    m.node = Some(NodeInfo {
        name: "n1".into(),
        addresses: Vec::new(),
        leaving: None,
        zone: None,
    });
    assert_eq!(
        backends(&m.desired(), "10.96.0.10", 80, proto::TCP),
        vec![("10.0.0.1".parse().unwrap(), 80)]
    );
    // External addresses get frontends (no ClusterIP marker), with
    // every endpoint: internalTrafficPolicy is for ClusterIPs.
    let with_external = ServiceInfo {
        external_ips: vec!["192.0.2.50".parse().unwrap()],
        ..m.services.values().next().unwrap().clone()
    };
    m.services.insert(with_external.key.clone(), with_external);
    let d = m.desired();
    assert_eq!(backends(&d, "192.0.2.50", 80, proto::TCP).len(), 2);
    assert_eq!(backends(&d, "10.96.0.10", 80, proto::TCP).len(), 1);
    assert!(!d.cluster_ips.contains(&"192.0.2.50".parse().unwrap()));
    let cluster = ServiceInfo {
        internal_local: false,
        affinity_secs: 30,
        external_ips: Vec::new(),
        lb_ips: Vec::new(),
        ..m.services.values().next().unwrap().clone()
    };
    m.services.insert(cluster.key.clone(), cluster);
    let d = m.desired();
    assert_eq!(backends(&d, "10.96.0.10", 80, proto::TCP).len(), 2);
    assert_eq!(
        d.frontends[&FrontendKey::new("10.96.0.10".parse::<IpAddr>().unwrap(), 80, proto::TCP)]
            .affinity_secs,
        30
    );
}

#[test]
fn slices_merge_and_join_only_their_own_service() {
    let ports = &[("", 80, Protocol::Tcp)];
    let m = model(
        vec![
            svc("web", "10.96.0.10", ports),
            svc("api", "10.96.0.11", ports),
        ],
        vec![
            slice(
                "web-1",
                "web",
                ports,
                vec![ep("10.0.0.1", true, true, false)],
            ),
            slice(
                "web-2",
                "web",
                ports,
                vec![
                    ep("10.0.0.2", true, true, false),
                    ep("10.0.0.1", true, true, false),
                ],
            ),
            slice(
                "api-1",
                "api",
                ports,
                vec![ep("10.0.0.9", true, true, false)],
            ),
        ],
    );
    let d = m.desired();
    assert_eq!(backends(&d, "10.96.0.10", 80, proto::TCP).len(), 2);
    assert_eq!(
        backends(&d, "10.96.0.11", 80, proto::TCP),
        vec![("10.0.0.9".parse().unwrap(), 80)]
    );
}

#[test]
fn headless_other_proxy_and_sctp_get_no_frontend() {
    let ports = &[("", 80, Protocol::Tcp)];
    let mut headless = svc("h", "10.96.0.1", ports);
    headless.kind = ServiceKind::Headless;
    let mut other = svc("o", "10.96.0.2", ports);
    other.other_proxy = true;
    let sctp = svc("s", "10.96.0.3", &[("", 80, Protocol::Sctp)]);
    let d = model(vec![headless, other, sctp], vec![]).desired();
    assert!(d.frontends.is_empty());
    assert_eq!(
        d.cluster_ips.len(),
        1,
        "the SCTP Service's ClusterIP is still allocated"
    );
}

#[test]
fn a_service_without_endpoints_has_an_empty_frontend() {
    let d = model(
        vec![svc("web", "10.96.0.10", &[("", 80, Protocol::Tcp)])],
        vec![],
    )
    .desired();
    assert!(backends(&d, "10.96.0.10", 80, proto::TCP).is_empty());
}
