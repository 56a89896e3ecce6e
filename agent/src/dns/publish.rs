//! What each Service publishes in DNS, from the model: the agent's side of
//! the cluster zone (`sluice_dns::zone`).

use std::net::IpAddr;

use hickory_proto::rr::Name;
use sluice_dns::zone::{DnsEndpoint, DnsKind, DnsPort, DnsService, Proto};

use crate::model::{Protocol, ServiceInfo, ServiceKind, SliceInfo};

fn proto(p: Protocol) -> Proto {
    match p {
        Protocol::Tcp => Proto::Tcp,
        Protocol::Udp => Proto::Udp,
        Protocol::Sctp => Proto::Sctp,
    }
}

/// `10.244.1.5` → `10-244-1-5`; `fd00::1` → `fd00--1`.
fn dashed(ip: IpAddr) -> String {
    ip.to_string().replace(['.', ':'], "-")
}

/// What Service `svc` publishes, given its slices. With `pod_names`
/// (CoreDNS's `endpoint_pod_names`), an endpoint without a hostname is
/// named by its pod, else by its dashed address.
pub fn dns_service(svc: &ServiceInfo, slices: &[&SliceInfo], pod_names: bool) -> DnsService {
    let kind = match &svc.kind {
        ServiceKind::ClusterIp { ips } => DnsKind::ClusterIp(ips.clone()),
        ServiceKind::Headless => DnsKind::Headless,
        ServiceKind::ExternalName { name } => {
            match Name::from_ascii(name).map(|n| n.to_lowercase()) {
                Ok(mut n) => {
                    n.set_fqdn(true);
                    DnsKind::ExternalName(n)
                }
                // Not a valid name: nothing to point at.
                Err(_) => DnsKind::Headless,
            }
        }
    };
    let port = |name: &str, protocol, port| DnsPort {
        name: name.to_ascii_lowercase(),
        protocol: proto(protocol),
        port,
    };
    let ports = svc
        .ports
        .iter()
        .map(|p| port(&p.name, p.protocol, p.port))
        .collect();
    let mut endpoints: Vec<DnsEndpoint> = Vec::new();
    for slice in slices {
        let slice_ports: Vec<DnsPort> = slice
            .ports
            .iter()
            .map(|p| port(&p.name, p.protocol, p.port))
            .collect();
        for ep in &slice.endpoints {
            if !(ep.ready || svc.publish_not_ready) {
                continue;
            }
            let Some(first) = ep.addresses.first() else {
                continue;
            };
            let name = ep
                .hostname
                .as_deref()
                .filter(|h| !h.is_empty())
                .or_else(|| {
                    ep.pod_name
                        .as_deref()
                        .filter(|p| pod_names && !p.is_empty())
                })
                .map_or_else(|| dashed(*first), str::to_ascii_lowercase);
            // Dual-stack Services have a slice per family: one endpoint.
            if let Some(same) = endpoints.iter_mut().find(|e| e.name == name) {
                for a in &ep.addresses {
                    if !same.ips.contains(a) {
                        same.ips.push(*a);
                    }
                }
            } else {
                endpoints.push(DnsEndpoint {
                    name,
                    ips: ep.addresses.clone(),
                    ports: slice_ports.clone(),
                });
            }
        }
    }
    DnsService {
        kind,
        ports,
        endpoints,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::EndpointInfo;

    fn svc(kind: ServiceKind) -> ServiceInfo {
        ServiceInfo::test("db", kind, Vec::new())
    }

    fn ep(ip: &str, hostname: Option<&str>, ready: bool) -> EndpointInfo {
        EndpointInfo {
            addresses: vec![ip.parse().unwrap()],
            ready,
            serving: ready,
            terminating: false,
            hostname: hostname.map(Into::into),
            node_name: None,
            pod_name: None,
            for_zones: Vec::new(),
            for_nodes: Vec::new(),
        }
    }

    fn slice(endpoints: Vec<EndpointInfo>) -> SliceInfo {
        SliceInfo::test("db-x", "db", &[("PG", 5432, Protocol::Tcp)], endpoints)
    }

    #[test]
    fn only_ready_endpoints_are_published_unless_the_service_says_otherwise() {
        let mut db = svc(ServiceKind::Headless);
        let s = slice(vec![
            ep("10.0.0.1", None, true),
            ep("10.0.0.3", Some("X"), false),
        ]);
        let published = dns_service(&db, &[&s], false);
        assert_eq!(published.endpoints.len(), 1);
        assert_eq!(
            published.endpoints[0].name, "10-0-0-1",
            "no hostname: the dashed address"
        );
        assert_eq!(
            published.endpoints[0].ports[0].name, "pg",
            "names are lowercase"
        );
        db.publish_not_ready = true;
        let all = dns_service(&db, &[&s], false);
        assert_eq!(all.endpoints.len(), 2);
        assert_eq!(all.endpoints[1].name, "x");
    }

    #[test]
    fn with_endpoint_pod_names_an_endpoint_without_hostname_is_named_by_its_pod() {
        let db = svc(ServiceKind::Headless);
        let pod = |ip, hostname, pod: &str| EndpointInfo {
            pod_name: Some(pod.into()),
            ..ep(ip, hostname, true)
        };
        let s = slice(vec![
            pod("10.0.0.1", None, "DB-0"),
            pod("10.0.0.2", Some("primary"), "db-1"),
            ep("10.0.0.3", None, true),
        ]);
        let names = |pod_names| -> Vec<String> {
            dns_service(&db, &[&s], pod_names)
                .endpoints
                .into_iter()
                .map(|e| e.name)
                .collect()
        };
        assert_eq!(names(true), ["db-0", "primary", "10-0-0-3"]);
        assert_eq!(names(false), ["10-0-0-1", "primary", "10-0-0-3"]);
    }

    #[test]
    fn a_dual_stack_endpoint_in_two_slices_is_one_name_with_both_addresses() {
        let db = svc(ServiceKind::Headless);
        let v4 = slice(vec![ep("10.0.0.1", Some("db-0"), true)]);
        let v6 = slice(vec![ep("fd00::1", Some("db-0"), true)]);
        let published = dns_service(&db, &[&v4, &v6], false);
        assert_eq!(published.endpoints.len(), 1);
        assert_eq!(published.endpoints[0].ips.len(), 2);
    }

    #[test]
    fn an_external_name_is_an_absolute_lowercase_alias() {
        let ext = svc(ServiceKind::ExternalName {
            name: "WWW.Example.org".into(),
        });
        let DnsKind::ExternalName(target) = dns_service(&ext, &[], false).kind else {
            panic!("an alias")
        };
        assert_eq!(target.to_string(), "www.example.org.");
    }
}
