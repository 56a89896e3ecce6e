//! End-to-end: ClusterIP traffic between pod namespaces through the agent's
//! TC program, in the lab's routed-veth topology.
#![allow(clippy::unwrap_used, reason = "tests: a failure fails the test")]

use std::{
    io::ErrorKind,
    net::{Ipv4Addr, SocketAddr},
};

use sluice_lab::{
    AgentOptions, Lab, frame,
    lab::request_line,
    manifest::{self, Endpoint, Port},
    require_privileges,
};

use crate::common::{
    APPLY, CLIENT, SERVICE_CIDR, T, VIP, apply, backend_ip, backend_name, delete, dns, drop_count,
    event_count, http, peer, spread, web_lab, web_manifest, who,
};

fn io_kind(err: &anyhow::Error) -> Option<ErrorKind> {
    err.downcast_ref::<std::io::Error>()
        .map(std::io::Error::kind)
}

#[test]
fn tcp_through_a_cluster_ip_reaches_each_of_three_backends() {
    if !require_privileges("tcp_through_a_cluster_ip_reaches_each_of_three_backends") {
        return;
    }
    let mut lab = web_lab(3);
    lab.start_agent(&AgentOptions::default()).unwrap();
    let seen = spread(&lab, http(), 3, 60);
    assert_eq!(
        seen.keys().cloned().collect::<Vec<_>>(),
        ["b0", "b1", "b2"],
        "{seen:?}"
    );
    // The backends see the client's own address: no SNAT on this path.
    let answer = lab.pod("client").tcp_request(http(), T).unwrap();
    assert_eq!(peer(&answer).ip(), CLIENT);
}

#[test]
fn udp_request_response_through_a_cluster_ip() {
    if !require_privileges("udp_request_response_through_a_cluster_ip") {
        return;
    }
    let mut lab = web_lab(3);
    lab.start_agent(&AgentOptions::default()).unwrap();
    for _ in 0..5 {
        let (answer, from) = lab.pod("client").udp_request(dns(), T).unwrap();
        assert!(who(&answer).starts_with('b'), "{answer}");
        assert_eq!(
            from,
            dns(),
            "the answer comes from the ClusterIP:port the client asked"
        );
        assert_eq!(peer(&answer).ip(), CLIENT);
    }
}

#[test]
fn a_removed_endpoint_gets_no_new_connections_and_flows_to_the_others_survive() {
    if !require_privileges(
        "a_removed_endpoint_gets_no_new_connections_and_flows_to_the_others_survive",
    ) {
        return;
    }
    let mut lab = web_lab(3);
    lab.start_agent(&AgentOptions::default()).unwrap();
    // One long-lived connection to each backend.
    let mut conns = std::collections::BTreeMap::new();
    for _ in 0..100 {
        let mut c = lab.pod("client").tcp_connect(http(), T).unwrap();
        let name = who(&request_line(&mut c, T).unwrap());
        conns.entry(name).or_insert(c);
        if conns.len() == 3 {
            break;
        }
    }
    assert_eq!(conns.len(), 3, "connections to all three backends");

    apply(&mut lab, "web.yaml", &web_manifest(&[0, 2]));

    for (name, conn) in &mut conns {
        if name != "b1" {
            let answer =
                request_line(conn, T).unwrap_or_else(|e| panic!("flow to {name} broke: {e:#}"));
            assert_eq!(&who(&answer), name, "the flow kept its backend");
        }
    }
    for _ in 0..30 {
        let answer = lab.pod("client").tcp_request(http(), T).unwrap();
        assert_ne!(
            who(&answer),
            "b1",
            "a removed endpoint got a new connection"
        );
    }
}

#[test]
fn a_deleted_service_no_longer_reaches_any_backend() {
    if !require_privileges("a_deleted_service_no_longer_reaches_any_backend") {
        return;
    }
    for cidr in [None, Some(SERVICE_CIDR)] {
        let mut lab = web_lab(2);
        lab.start_agent(&AgentOptions {
            service_cidr: cidr.map(Into::into),
            ..AgentOptions::default()
        })
        .unwrap();
        lab.pod("client").tcp_request(http(), T).unwrap();
        delete(&mut lab, "web.yaml");
        let err = lab.pod("client").tcp_request(http(), T).unwrap_err();
        if cidr.is_some() {
            // kube-proxy nftables: an unallocated service IP is rejected.
            assert_eq!(io_kind(&err), Some(ErrorKind::ConnectionRefused), "{err:#}");
        }
        let udp = lab.pod("client").udp_request(dns(), T);
        assert!(udp.is_err(), "UDP still answered: {udp:?}");
    }
}

#[test]
fn a_service_without_endpoints_refuses_a_connect_in_under_a_second() {
    if !require_privileges("a_service_without_endpoints_refuses_a_connect_in_under_a_second") {
        return;
    }
    let mut lab = web_lab(1);
    lab.write_manifest("web.yaml", &web_manifest(&[])).unwrap();
    lab.start_agent(&AgentOptions::default()).unwrap();
    let client = lab.pod("client");
    // A one-second connect timeout: a dropped SYN would end in TimedOut.
    let err = client
        .tcp_connect(http(), std::time::Duration::from_secs(1))
        .unwrap_err();
    assert_eq!(io_kind(&err), Some(ErrorKind::ConnectionRefused), "{err:#}");
    // A connected UDP socket gets the ICMP error as ECONNREFUSED.
    let udp = client.udp_socket().unwrap();
    udp.connect(dns()).unwrap();
    udp.set_read_timeout(Some(T)).unwrap();
    udp.send(b"hello").unwrap();
    let err = udp.recv(&mut [0u8; 64]).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ConnectionRefused, "{err}");
}

#[test]
fn several_ports_on_one_service_each_reach_their_own_target_port() {
    if !require_privileges("several_ports_on_one_service_each_reach_their_own_target_port") {
        return;
    }
    let mut lab = Lab::new().unwrap();
    lab.add_pod("client", CLIENT).unwrap();
    for i in 0..2 {
        lab.add_pod(&backend_name(i), backend_ip(i)).unwrap();
        lab.serve(&backend_name(i), &[8080, 9091], &[5353]).unwrap();
    }
    let eps = [
        Endpoint::ready(backend_ip(0)),
        Endpoint::ready(backend_ip(1)),
    ];
    lab.write_manifest(
        "web.yaml",
        &manifest::service_with_endpoints(
            "web",
            VIP,
            &[
                Port::tcp("http", 80),
                Port::tcp("admin", 9090),
                Port::udp("dns", 53),
            ],
            &[
                Port::tcp("http", 8080),
                Port::tcp("admin", 9091),
                Port::udp("dns", 5353),
            ],
            &eps,
        ),
    )
    .unwrap();
    lab.start_agent(&AgentOptions::default()).unwrap();
    assert_eq!(spread(&lab, http(), 2, 40).len(), 2);
    assert_eq!(spread(&lab, SocketAddr::from((VIP, 9090)), 2, 40).len(), 2);
    lab.pod("client").udp_request(dns(), T).unwrap();
    // A port the Service does not have is not load-balanced.
    assert!(
        lab.pod("client")
            .tcp_request(SocketAddr::from((VIP, 8080)), T)
            .is_err()
    );
}

#[test]
fn a_named_target_port_resolved_into_the_slice_is_used() {
    if !require_privileges("a_named_target_port_resolved_into_the_slice_is_used") {
        return;
    }
    let mut lab = Lab::new().unwrap();
    lab.add_pod("client", CLIENT).unwrap();
    lab.add_pod("b0", backend_ip(0)).unwrap();
    // The backend listens on 8081 only: the container port named `web`.
    lab.serve("b0", &[8081], &[]).unwrap();
    let svc = "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: default}\nspec:\n  clusterIP: 10.96.0.10\n  ports:\n  - {name: http, port: 80, protocol: TCP, targetPort: web}\n";
    let slice = manifest::endpoint_slice(
        "web-1",
        "web",
        &[Port::tcp("http", 8081)],
        &[Endpoint::ready(backend_ip(0))],
    );
    lab.write_manifest("web.yaml", &format!("{svc}---\n{slice}"))
        .unwrap();
    lab.start_agent(&AgentOptions::default()).unwrap();
    let answer = lab.pod("client").tcp_request(http(), T).unwrap();
    assert_eq!(who(&answer), "b0");
}

#[test]
fn an_interface_created_after_the_agent_started_gets_the_program() {
    if !require_privileges("an_interface_created_after_the_agent_started_gets_the_program") {
        return;
    }
    let mut lab = web_lab(1);
    lab.start_agent(&AgentOptions::default()).unwrap();
    let mark = lab.agent().log_len();
    let late = lab.add_pod("late", Ipv4Addr::new(10, 244, 1, 99)).unwrap();
    let iface = late.host_if.clone();
    lab.agent()
        .wait_for(&format!("iface=\"{iface}\""), mark, APPLY)
        .unwrap();
    let answer = lab.pod("late").tcp_request(http(), T).unwrap();
    assert_eq!(who(&answer), "b0");
    assert_eq!(peer(&answer).ip(), Ipv4Addr::new(10, 244, 1, 99));
}

#[test]
fn only_interfaces_matching_the_list_get_the_program() {
    if !require_privileges("only_interfaces_matching_the_list_get_the_program") {
        return;
    }
    let mut lab = web_lab(1);
    lab.add_pod("other", Ipv4Addr::new(10, 244, 1, 50)).unwrap();
    // veth0 (client) and veth1 (b0) match; veth2 (other) does not.
    lab.start_agent(&AgentOptions {
        interfaces: "veth0,veth1".into(),
        ..AgentOptions::default()
    })
    .unwrap();
    lab.pod("client").tcp_request(http(), T).unwrap();
    assert!(
        lab.pod("other").tcp_request(http(), T).is_err(),
        "traffic from an unmatched interface was balanced"
    );
}

#[test]
fn with_a_service_cidr_unallocated_ips_and_unknown_ports_are_refused() {
    if !require_privileges("with_a_service_cidr_unallocated_ips_and_unknown_ports_are_refused") {
        return;
    }
    let mut lab = web_lab(1);
    lab.start_agent(&AgentOptions {
        service_cidr: Some(SERVICE_CIDR.into()),
        ..AgentOptions::default()
    })
    .unwrap();
    let client = lab.pod("client");
    for to in [
        SocketAddr::from((Ipv4Addr::new(10, 96, 7, 7), 80)),
        SocketAddr::from((VIP, 81)),
    ] {
        let err = client.tcp_connect(to, T).unwrap_err();
        assert_eq!(
            io_kind(&err),
            Some(ErrorKind::ConnectionRefused),
            "{to}: {err:#}"
        );
    }
    client.tcp_request(http(), T).unwrap();
    // Pod-to-pod traffic is not Service traffic.
    client
        .tcp_request(SocketAddr::from((backend_ip(0), 8080)), T)
        .unwrap();
}

#[test]
fn serving_terminating_endpoints_are_used_only_when_none_is_ready() {
    if !require_privileges("serving_terminating_endpoints_are_used_only_when_none_is_ready") {
        return;
    }
    let mut lab = web_lab(3);
    // (ready, serving, terminating) of b0, b1, b2.
    let slice = |conds: [(bool, bool, bool); 3]| {
        let eps: Vec<Endpoint> = conds
            .iter()
            .enumerate()
            .map(|(i, &(ready, serving, terminating))| Endpoint {
                ip: backend_ip(i).into(),
                ready,
                serving,
                terminating,
            })
            .collect();
        manifest::service_with_endpoints(
            "web",
            VIP,
            &[Port::tcp("http", 80)],
            &[Port::tcp("http", 8080)],
            &eps,
        )
    };
    let draining = (false, true, true);
    let down = (false, false, false);
    lab.write_manifest("web.yaml", &slice([(true, true, false), draining, down]))
        .unwrap();
    lab.start_agent(&AgentOptions::default()).unwrap();
    for _ in 0..20 {
        assert_eq!(
            who(&lab.pod("client").tcp_request(http(), T).unwrap()),
            "b0",
            "only the ready endpoint"
        );
    }
    // None ready: b1 is serving and terminating; b0 and b2 are down.
    apply(&mut lab, "web.yaml", &slice([down, draining, down]));
    for _ in 0..20 {
        assert_eq!(
            who(&lab.pod("client").tcp_request(http(), T).unwrap()),
            "b1",
            "the serving terminating endpoint"
        );
    }
}

#[test]
fn a_renamed_interface_is_detached_when_it_leaves_the_list_and_attached_once_when_back() {
    if !require_privileges(
        "a_renamed_interface_is_detached_when_it_leaves_the_list_and_attached_once_when_back",
    ) {
        return;
    }
    let mut lab = web_lab(1);
    lab.start_agent(&AgentOptions::default()).unwrap();
    let client_if = lab.pod("client").host_if.clone();
    lab.pod("client").tcp_request(http(), T).unwrap();

    let rename = |lab: &mut Lab, from: &str, to: &str, expect: &str| {
        let mark = lab.agent().log_len();
        let node = lab.node();
        node.ip(&["link", "set", from, "down"]).unwrap();
        node.ip(&["link", "set", from, "name", to]).unwrap();
        node.ip(&["link", "set", to, "up"]).unwrap();
        // Taking the device down flushed the pod's route on the node.
        node.ip(&["route", "replace", &format!("{CLIENT}/32"), "dev", to])
            .unwrap();
        lab.agent().wait_for(expect, mark, APPLY).unwrap();
    };
    rename(
        &mut lab,
        &client_if,
        "pod-client",
        "renamed out of the interface list",
    );
    let direct = SocketAddr::from((backend_ip(0), 8080));
    lab.pod("client")
        .tcp_request(direct, T)
        .expect("the pod is routed");
    assert!(
        lab.pod("client").tcp_request(http(), T).is_err(),
        "still balanced after leaving the list"
    );
    rename(&mut lab, "pod-client", "vethclient", "attached");
    assert_eq!(
        who(&lab.pod("client").tcp_request(http(), T).unwrap()),
        "b0"
    );
    let status = lab.status(&sluice_lab::default_bin()).unwrap();
    let mut conn = lab.pod("client").tcp_connect(http(), T).unwrap();
    request_line(&mut conn, T).unwrap();
    let after = lab.status(&sluice_lab::default_bin()).unwrap();
    // One program on the interface: one new flow counted, not two.
    let flows = |s: &str| -> u64 {
        s.split_whitespace()
            .find_map(|w| w.strip_prefix("new_flow="))
            .unwrap()
            .parse()
            .unwrap()
    };
    assert_eq!(flows(&after), flows(&status) + 1);
}

#[test]
fn a_pod_that_forges_another_pods_source_gets_no_service_translation() {
    if !require_privileges("a_pod_that_forges_another_pods_source_gets_no_service_translation") {
        return;
    }
    let mut lab = web_lab(3);
    lab.start_agent(&AgentOptions::default()).unwrap();
    let client = lab.pod("client");
    let hop = frame::Hop::pod_to_node(client, lab.node()).unwrap();
    let flows = event_count(&lab, "new_flow");
    // b1's address, routed through b1's interface, not the client's.
    let forged: Vec<Vec<u8>> = (0..1000u16)
        .map(|i| frame::udp(hop, (backend_ip(1), 20_000 + i), (VIP, 53), 8, true))
        .collect();
    client
        .ns
        .spawn(move || frame::RawSocket::open("eth0")?.send_all(&forged))
        .unwrap()
        .join()
        .unwrap()
        .unwrap()
        .unwrap();
    // The drops are counted as the frames arrive: wait for all of them.
    let deadline = std::time::Instant::now() + T;
    while drop_count(&lab, "spoofed_source") < 1000 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(drop_count(&lab, "spoofed_source"), 1000);
    assert_eq!(event_count(&lab, "new_flow"), flows, "no flow was created");
    // The client's own traffic is translated as ever.
    lab.pod("client").udp_request(dns(), T).unwrap();
}
