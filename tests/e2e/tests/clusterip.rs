//! End-to-end: ClusterIP load balancing between pod namespaces.

use std::{collections::BTreeMap, net::{Ipv4Addr, SocketAddr}, time::Duration};

use sluice_lab::{AgentOptions, Lab, manifest::{self, Endpoint, Port}, require_privileges};

const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const T: Duration = Duration::from_secs(2);

fn backend_ip(i: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 244, 1, 10 + i)
}

#[test]
fn tcp_through_a_cluster_ip_reaches_each_of_three_backends() {
    if !require_privileges("tcp_through_a_cluster_ip_reaches_each_of_three_backends") {
        return;
    }
    let mut lab = Lab::new().unwrap();
    lab.add_pod("client", Ipv4Addr::new(10, 244, 1, 2)).unwrap();
    for i in 0..3 {
        let name = format!("b{i}");
        lab.add_pod(&name, backend_ip(i)).unwrap();
        lab.serve(&name, &[8080], &[]).unwrap();
    }
    let eps: Vec<Endpoint> = (0..3).map(|i| Endpoint::ready(backend_ip(i))).collect();
    lab.write_manifest(
        "web.yaml",
        &manifest::service_with_endpoints("web", VIP, &[Port::tcp("http", 80)], &[Port::tcp("http", 8080)], &eps),
    )
    .unwrap();
    lab.start_agent(&AgentOptions::default()).unwrap();
    let mut seen = BTreeMap::new();
    for _ in 0..60 {
        let answer = lab.pod("client").tcp_request(SocketAddr::from((VIP, 80)), T).unwrap();
        let backend = answer.split_whitespace().next().unwrap().to_owned();
        *seen.entry(backend).or_insert(0) += 1;
        if seen.len() == 3 {
            break;
        }
    }
    assert_eq!(seen.keys().cloned().collect::<Vec<_>>(), ["b0", "b1", "b2"], "{seen:?}");
}
