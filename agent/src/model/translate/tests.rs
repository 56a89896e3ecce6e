//! Kubernetes objects to model types: what translates, and what is refused
//! with the field at fault.

use std::net::IpAddr;

use super::*;

fn svc(yaml: &str) -> Service {
    serde_yaml::from_str(yaml).unwrap()
}

fn slice(yaml: &str) -> EndpointSlice {
    serde_yaml::from_str(yaml).unwrap()
}

#[test]
fn a_service_translates_with_defaults() {
    let s = service(&svc(
        "apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec:\n  clusterIP: 10.96.0.10\n  ports: [{port: 80}]\n",
    ))
    .unwrap();
    assert_eq!(s.key.to_string(), "default/web");
    assert_eq!(
        s.ports,
        vec![ServicePortInfo {
            name: String::new(),
            port: 80,
            protocol: Protocol::Tcp,
            node_port: None,
        }]
    );
    assert_eq!(
        s.kind,
        ServiceKind::ClusterIp {
            ips: vec!["10.96.0.10".parse().unwrap()]
        }
    );
}

#[test]
fn headless_external_name_and_proxy_label() {
    let h = service(&svc("metadata: {name: h}\nspec: {clusterIP: None}\n")).unwrap();
    assert_eq!(h.kind, ServiceKind::Headless);
    let e = service(&svc(
        "metadata: {name: e}\nspec: {type: ExternalName, externalName: example.com}\n",
    ))
    .unwrap();
    assert_eq!(
        e.kind,
        ServiceKind::ExternalName {
            name: "example.com".into()
        }
    );
    let o = service(&svc(
        "metadata: {name: o, labels: {service.kubernetes.io/service-proxy-name: other}}\nspec: {clusterIP: 10.96.0.1}\n",
    ))
    .unwrap();
    assert!(o.other_proxy);
}

#[test]
fn traffic_policy_and_session_affinity() {
    let plain = service(&svc("metadata: {name: p}\nspec: {clusterIP: 10.96.0.1}\n")).unwrap();
    assert!(!plain.internal_local);
    assert_eq!(plain.affinity_secs, 0);
    let local = service(&svc(
        "metadata: {name: s}\nspec: {clusterIP: 10.96.0.1, internalTrafficPolicy: Local, sessionAffinity: ClientIP}\n",
    ))
    .unwrap();
    assert!(local.internal_local);
    assert_eq!(local.affinity_secs, 10_800, "the API's default timeout");
    let timed = service(&svc(
        "metadata: {name: t}\nspec: {clusterIP: 10.96.0.1, sessionAffinity: ClientIP, sessionAffinityConfig: {clientIP: {timeoutSeconds: 60}}}\n",
    ))
    .unwrap();
    assert_eq!(timed.affinity_secs, 60);
    let external = service(&svc(
        "metadata: {name: e}\nspec: {clusterIP: 10.96.0.1, externalIPs: [192.0.2.50]}\nstatus: {loadBalancer: {ingress: [{ip: 198.51.100.7}, {hostname: lb.example.com}]}}\n",
    ))
    .unwrap();
    assert_eq!(
        external.external_ips,
        ["192.0.2.50".parse::<IpAddr>().unwrap()]
    );
    assert_eq!(
        external.lb_ips,
        ["198.51.100.7".parse::<IpAddr>().unwrap()],
        "hostname-only entries have no address"
    );
    let bad = service(&svc(
        "metadata: {name: b}\nspec: {clusterIP: 10.96.0.1, externalIPs: [nope]}\n",
    ));
    assert_eq!(bad.unwrap_err().field, "spec.externalIPs[0]");
    let ranged = service(&svc(
        "metadata: {name: r}\nspec: {clusterIP: 10.96.0.1, loadBalancerSourceRanges: [10.1.2.3/16, 192.0.2.0/24, 10.1.0.0/16]}\n",
    ))
    .unwrap();
    assert_eq!(
        ranged.source_ranges,
        [
            (IpAddr::from([10, 1, 0, 0]), 16),
            (IpAddr::from([192, 0, 2, 0]), 24)
        ],
        "host bits cleared, sorted, once each"
    );
    for range in ["10.0.0.0", "10.0.0.0/33", "nope/8"] {
        let bad = service(&svc(&format!(
            "metadata: {{name: b}}\nspec: {{clusterIP: 10.96.0.1, loadBalancerSourceRanges: [{range}]}}\n"
        )));
        assert_eq!(
            bad.unwrap_err().field,
            "spec.loadBalancerSourceRanges[0]",
            "{range}"
        );
    }
    let lb = service(&svc(
        "metadata: {name: h}\nspec: {clusterIP: 10.96.0.1, type: LoadBalancer, externalTrafficPolicy: Local, healthCheckNodePort: 32000}\n",
    ))
    .unwrap();
    assert_eq!(lb.health_check_node_port, Some(32000));
    assert!(lb.external_local);
    let cluster = service(&svc(
        "metadata: {name: c}\nspec: {clusterIP: 10.96.0.1, externalTrafficPolicy: Cluster, healthCheckNodePort: 32000}\n",
    ))
    .unwrap();
    assert_eq!(
        cluster.health_check_node_port, None,
        "only with the Local policy"
    );
    for (spec, field) in [
        (
            "externalTrafficPolicy: Nowhere",
            "spec.externalTrafficPolicy",
        ),
        (
            "externalTrafficPolicy: Local, healthCheckNodePort: 70000",
            "spec.healthCheckNodePort",
        ),
        (
            "internalTrafficPolicy: Nearby",
            "spec.internalTrafficPolicy",
        ),
        ("sessionAffinity: Cookie", "spec.sessionAffinity"),
        (
            "sessionAffinity: ClientIP, sessionAffinityConfig: {clientIP: {timeoutSeconds: 0}}",
            "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
        ),
        (
            "sessionAffinity: ClientIP, sessionAffinityConfig: {clientIP: {timeoutSeconds: 86401}}",
            "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
        ),
    ] {
        let bad = service(&svc(&format!(
            "metadata: {{name: b}}\nspec: {{clusterIP: 10.96.0.1, {spec}}}\n"
        )));
        assert_eq!(bad.unwrap_err().field, field, "{spec}");
    }
}

#[test]
fn node_ports_of_node_port_and_load_balancer_services() {
    let node_ports = service(&svc(
        "metadata: {name: n}\nspec: {clusterIP: 10.96.0.1, type: NodePort, ports: [{port: 80, nodePort: 30080}]}\n",
    ))
    .unwrap();
    assert_eq!(node_ports.ports[0].node_port, Some(30080));
    assert!(!node_ports.external_local);
    let plain = service(&svc(
        "metadata: {name: p}\nspec: {clusterIP: 10.96.0.1, ports: [{port: 80, nodePort: 30080}]}\n",
    ))
    .unwrap();
    assert_eq!(
        plain.ports[0].node_port, None,
        "a ClusterIP Service has no NodePort"
    );
    let bad = service(&svc(
        "metadata: {name: b}\nspec: {clusterIP: 10.96.0.1, type: NodePort, ports: [{port: 80, nodePort: 70000}]}\n",
    ));
    assert_eq!(bad.unwrap_err().field, "spec.ports[0].nodePort");
}

#[test]
fn bad_services_name_the_object_and_field() {
    let bad_ip = service(&svc(
        "metadata: {name: web, namespace: prod}\nspec: {clusterIP: 10.96.0.300}\n",
    ));
    assert_eq!(
        bad_ip.unwrap_err().to_string(),
        "Service `prod/web`: spec.clusterIP: `10.96.0.300` is not an IP address"
    );
    let port0 = service(&svc(
        "metadata: {name: web}\nspec: {clusterIP: 10.96.0.1, ports: [{port: 0}]}\n",
    ));
    assert_eq!(port0.unwrap_err().field, "spec.ports[0].port");
    let big = service(&svc(
        "metadata: {name: web}\nspec: {clusterIP: 10.96.0.1, ports: [{port: 70000}]}\n",
    ));
    assert!(big.unwrap_err().message.contains("70000 is out of range"));
    let proto = service(&svc(
        "metadata: {name: web}\nspec: {clusterIP: 10.96.0.1, ports: [{port: 80, protocol: ICMP}]}\n",
    ));
    assert_eq!(
        proto.unwrap_err().message,
        "unknown protocol `ICMP` (TCP, UDP or SCTP)"
    );
    let no_ip = service(&svc("metadata: {name: web}\nspec: {ports: [{port: 80}]}\n"));
    assert_eq!(no_ip.unwrap_err().field, "spec.clusterIP");
}

#[test]
fn a_slice_translates_with_condition_defaults() {
    let s = endpoint_slice(&slice(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: web-abc\n  labels: {kubernetes.io/service-name: web}\naddressType: IPv4\nports: [{name: http, port: 8080}]\nendpoints:\n- addresses: [10.0.0.1]\n- addresses: [10.0.0.2]\n  conditions: {ready: false, serving: true, terminating: true}\n",
    ))
    .unwrap();
    assert_eq!(s.service.as_deref(), Some("web"));
    assert_eq!(
        s.ports,
        vec![SlicePortInfo {
            name: "http".into(),
            port: 8080,
            protocol: Protocol::Tcp
        }]
    );
    assert!(s.endpoints[0].ready && s.endpoints[0].serving && !s.endpoints[0].terminating);
    assert!(!s.endpoints[1].ready && s.endpoints[1].serving && s.endpoints[1].terminating);
}

#[test]
fn bad_slices_are_rejected() {
    let bad = endpoint_slice(&slice(
        "metadata: {name: s}\naddressType: IPv4\nendpoints: [{addresses: [not-an-ip]}]\n",
    ));
    assert_eq!(bad.unwrap_err().field, "endpoints[0].addresses[0]");
    let family = endpoint_slice(&slice(
        "metadata: {name: s}\naddressType: IPv4\nendpoints: [{addresses: ['fd00::1']}]\n",
    ));
    assert!(family.unwrap_err().message.contains("addressType"));
    for ip in ["127.0.0.1", "0.0.0.0", "169.254.169.254", "224.0.0.1"] {
        let special = endpoint_slice(&slice(&format!(
            "metadata: {{name: s}}\naddressType: IPv4\nendpoints: [{{addresses: [{ip}]}}]\n"
        )));
        assert_eq!(
            special.unwrap_err().field,
            "endpoints[0].addresses[0]",
            "{ip}"
        );
    }
    let port = endpoint_slice(&slice(
        "metadata: {name: s}\naddressType: IPv4\nports: [{port: -1}]\nendpoints: []\n",
    ));
    assert_eq!(port.unwrap_err().field, "ports[0].port");
}
