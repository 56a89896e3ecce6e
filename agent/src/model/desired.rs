//! What one Service asks of the dataplane: its frontends and their
//! backends, with kube-proxy's semantics. ClusterIPs serve pods and the
//! node; external IPs, load balancer addresses and NodePorts serve traffic
//! from outside too (XDP), and under `externalTrafficPolicy: Local` get a
//! second, local scope with this node's endpoints only.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use super::{DesiredFrontend, External, ServiceInfo, ServiceKind, ServicePortInfo, SliceInfo};
use crate::frontend::FrontendKey;

/// What one Service asks of the dataplane.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServiceDesired {
    pub frontends: BTreeMap<FrontendKey, DesiredFrontend>,
    pub cluster_ips: BTreeSet<IpAddr>,
    /// The Service's creation time (`ServiceInfo::created`), which decides
    /// between claims on one frontend.
    pub created: Option<i64>,
}

/// Where this node is: its name, for the `Local` traffic policies (without
/// it no endpoint is local) and node hints; its zone, for zone hints.
#[derive(Clone, Copy, Debug, Default)]
pub struct Here<'a> {
    pub node: Option<&'a str>,
    pub zone: Option<&'a str>,
}

/// The frontends of one Service given its slices, with kube-proxy's
/// semantics: none for headless and ExternalName Services and those of
/// another proxy. Each IP family of its ClusterIPs is served on its own,
/// as kube-proxy runs a proxier per family: that family's ClusterIP,
/// external and load balancer addresses, NodePorts (at `0.0.0.0` or `::`)
/// and source ranges, with that family's endpoints.
pub fn service_desired(svc: &ServiceInfo, slices: &[&SliceInfo], here: Here<'_>) -> ServiceDesired {
    let mut desired = ServiceDesired {
        created: svc.created,
        ..ServiceDesired::default()
    };
    let ServiceKind::ClusterIp { ips } = &svc.kind else {
        return desired;
    };
    if svc.other_proxy {
        return desired;
    }
    desired.cluster_ips.extend(ips.iter().copied());
    for v6 in [false, true] {
        if ips.iter().any(|ip| ip.is_ipv6() == v6) {
            family_desired(svc, slices, here, v6, &mut desired);
        }
    }
    desired
}

/// The frontends of one family (`v6` or not) of a Service.
fn family_desired(
    svc: &ServiceInfo,
    slices: &[&SliceInfo],
    here: Here<'_>,
    v6: bool,
    desired: &mut ServiceDesired,
) {
    let ServiceKind::ClusterIp { ips } = &svc.kind else {
        return;
    };
    let ours = |ips: &[IpAddr]| -> Vec<IpAddr> {
        ips.iter()
            .copied()
            .filter(|ip| ip.is_ipv6() == v6)
            .collect()
    };
    let cluster_ips = ours(ips);
    let source_ranges: Vec<(IpAddr, u8)> = svc
        .source_ranges
        .iter()
        .copied()
        .filter(|(net, _)| net.is_ipv6() == v6)
        .collect();
    let node = here.node.unwrap_or_default();
    let topology = Topology::of(slices, here, v6);
    for port in &svc.ports {
        let Some(ip_proto) = port.protocol.ip_proto() else {
            continue;
        };
        let name = if port.name.is_empty() {
            svc.key.to_string()
        } else {
            format!("{}:{}", svc.key, port.name)
        };
        let all = backends_for(port, slices, Pick::Cluster(topology), v6);
        let front = |backends: &BTreeSet<(IpAddr, u16)>, external, source_ranges| DesiredFrontend {
            name: name.clone(),
            backends: backends.clone(),
            affinity_secs: svc.affinity_secs,
            source_ranges,
            external,
        };
        // internalTrafficPolicy is for ClusterIPs; traffic from pods to an
        // external address or a NodePort uses every endpoint (kube-proxy
        // short-circuits it inside the cluster).
        let cluster = if svc.internal_local {
            backends_for(port, slices, Pick::Local(node), v6)
        } else {
            all.clone()
        };
        for ip in &cluster_ips {
            desired.frontends.insert(
                FrontendKey::new(*ip, port.port, ip_proto),
                front(&cluster, External::No, Vec::new()),
            );
        }
        // loadBalancerSourceRanges guard the load balancer addresses only.
        let mut external: Vec<(FrontendKey, Vec<(IpAddr, u8)>)> = ours(&svc.external_ips)
            .into_iter()
            .map(|ip| (FrontendKey::new(ip, port.port, ip_proto), Vec::new()))
            .collect();
        external.extend(ours(&svc.lb_ips).into_iter().map(|ip| {
            (
                FrontendKey::new(ip, port.port, ip_proto),
                source_ranges.clone(),
            )
        }));
        if let Some(node_port) = port.node_port {
            let key = if v6 {
                FrontendKey::node_port6(node_port, ip_proto)
            } else {
                FrontendKey::node_port(node_port, ip_proto)
            };
            external.push((key, Vec::new()));
        }
        let local = svc
            .external_local
            .then(|| backends_for(port, slices, Pick::Local(node), v6));
        for (key, ranges) in external {
            match &local {
                None => {
                    desired
                        .frontends
                        .insert(key, front(&all, External::Serve, ranges));
                }
                Some(local) => {
                    desired
                        .frontends
                        .insert(key, front(&all, External::ViaLocalScope, ranges.clone()));
                    desired
                        .frontends
                        .insert(key.local_scope(), front(local, External::Serve, ranges));
                }
            }
        }
    }
}

/// The backends of one family (`v6` or not) of one Service port across
/// its slices.
///
/// kube-proxy: the endpoint port is the slice port with the same name and
/// protocol (the targetPort was resolved into it when the slice was made);
/// only the first address of an endpoint is used; ready endpoints are used,
/// and only when none is ready, the serving and terminating ones
/// (KEP-1669, ProxyTerminatingEndpoints). `Pick::Local` (a node name):
/// only the endpoints on that node count, as for the `Local` traffic
/// policies; with none there, the Service has no backend on this node.
/// `Pick::Cluster`: the ready endpoints the topology hints give this node.
fn backends_for(
    port: &ServicePortInfo,
    slices: &[&SliceInfo],
    pick: Pick<'_>,
    v6: bool,
) -> BTreeSet<(IpAddr, u16)> {
    let mut ready = BTreeSet::new();
    let mut terminating = BTreeSet::new();
    for slice in slices {
        let Some(slice_port) = slice
            .ports
            .iter()
            .find(|p| p.name == port.name && p.protocol == port.protocol)
        else {
            continue;
        };
        for ep in &slice.endpoints {
            let Some(addr) = ep.addresses.first().copied().filter(|a| a.is_ipv6() == v6) else {
                continue;
            };
            match pick {
                Pick::Local(node) if node.is_empty() || ep.node_name.as_deref() != Some(node) => {
                    continue;
                }
                Pick::Cluster(topology) if ep.ready && !topology.takes(ep) => continue,
                _ => {}
            }
            if ep.ready {
                ready.insert((addr, slice_port.port));
            } else if ep.serving && ep.terminating {
                terminating.insert((addr, slice_port.port));
            }
        }
    }
    if ready.is_empty() { terminating } else { ready }
}

/// Which endpoints a frontend gets.
#[derive(Clone, Copy, Debug)]
enum Pick<'a> {
    /// The cluster's, as the topology hints say for this node.
    Cluster(Topology<'a>),
    /// This node's only (the `Local` policies).
    Local(&'a str),
}

/// How topology hints narrow a Service's cluster endpoints on this node,
/// as kube-proxy decides it (`CategorizeEndpoints`): same-node when every
/// ready endpoint has node hints and one is for this node; else same-zone
/// when every ready endpoint has zone hints and one is for this node's
/// zone; else every endpoint. The EndpointSlice controller writes the
/// hints for `trafficDistribution` (and topology-aware routing).
#[derive(Clone, Copy, Debug)]
enum Topology<'a> {
    All,
    SameNode(&'a str),
    SameZone(&'a str),
}

impl<'a> Topology<'a> {
    /// Over the ready endpoints of one family, as kube-proxy's proxier of
    /// that family sees them.
    fn of(slices: &[&SliceInfo], here: Here<'a>, v6: bool) -> Self {
        let ready = || {
            slices
                .iter()
                .flat_map(|s| &s.endpoints)
                .filter(|ep| ep.ready && ep.addresses.first().is_some_and(|a| a.is_ipv6() == v6))
        };
        if ready().next().is_none() {
            return Self::All;
        }
        if let Some(node) = here.node.filter(|n| !n.is_empty())
            && ready().all(|ep| !ep.for_nodes.is_empty())
            && ready().any(|ep| ep.for_nodes.iter().any(|n| n == node))
        {
            return Self::SameNode(node);
        }
        if let Some(zone) = here.zone.filter(|z| !z.is_empty())
            && ready().all(|ep| !ep.for_zones.is_empty())
            && ready().any(|ep| ep.for_zones.iter().any(|z| z == zone))
        {
            return Self::SameZone(zone);
        }
        Self::All
    }

    fn takes(self, ep: &super::EndpointInfo) -> bool {
        match self {
            Self::All => true,
            Self::SameNode(node) => ep.for_nodes.iter().any(|n| n == node),
            Self::SameZone(zone) => ep.for_zones.iter().any(|z| z == zone),
        }
    }
}

#[cfg(test)]
mod tests {
    use sluice_abi::{proto, service::SCOPE_LOCAL};

    use super::*;
    use crate::model::{EndpointInfo, Protocol};

    fn web(external_local: bool) -> ServiceInfo {
        let ips = vec!["10.96.0.10".parse().unwrap()];
        let ports = vec![ServicePortInfo {
            name: "http".into(),
            port: 80,
            protocol: Protocol::Tcp,
            node_port: Some(30080),
        }];
        ServiceInfo {
            external_local,
            external_ips: vec!["192.0.2.50".parse().unwrap()],
            lb_ips: vec!["198.51.100.7".parse().unwrap()],
            source_ranges: vec![("10.0.0.0".parse().unwrap(), 8)],
            ..ServiceInfo::test("web", ServiceKind::ClusterIp { ips }, ports)
        }
    }

    fn slice() -> SliceInfo {
        let ep = |ip: &str, node: &str| EndpointInfo {
            node_name: Some(node.into()),
            ..EndpointInfo::test(ip)
        };
        SliceInfo::test(
            "web-1",
            "web",
            &[("http", 8080, Protocol::Tcp)],
            vec![ep("10.244.1.10", "a"), ep("10.244.2.10", "b")],
        )
    }

    #[test]
    fn node_ports_and_external_addresses_are_served_from_outside_with_every_endpoint() {
        let s = slice();
        let d = service_desired(
            &web(false),
            &[&s],
            Here {
                node: Some("a"),
                zone: None,
            },
        );
        let np = FrontendKey::node_port(30080, proto::TCP);
        let lb = FrontendKey::new("198.51.100.7".parse::<IpAddr>().unwrap(), 80, proto::TCP);
        let ext = FrontendKey::new("192.0.2.50".parse::<IpAddr>().unwrap(), 80, proto::TCP);
        let cluster = FrontendKey::new("10.96.0.10".parse::<IpAddr>().unwrap(), 80, proto::TCP);
        assert_eq!(d.frontends.len(), 4, "{:?}", d.frontends.keys());
        for key in [np, lb, ext] {
            assert_eq!(d.frontends[&key].external, External::Serve, "{key:?}");
            assert_eq!(d.frontends[&key].backends.len(), 2);
        }
        assert_eq!(d.frontends[&cluster].external, External::No);
        assert_eq!(
            d.frontends[&lb].source_ranges.len(),
            1,
            "ranges on the load balancer address"
        );
        assert!(
            d.frontends[&np].source_ranges.is_empty() && d.frontends[&ext].source_ranges.is_empty()
        );
    }

    #[test]
    fn external_traffic_policy_local_adds_a_local_scope_with_this_nodes_endpoints() {
        let s = slice();
        let d = service_desired(
            &web(true),
            &[&s],
            Here {
                node: Some("a"),
                zone: None,
            },
        );
        let np = FrontendKey::node_port(30080, proto::TCP);
        assert_eq!(d.frontends[&np].external, External::ViaLocalScope);
        assert_eq!(
            d.frontends[&np].backends.len(),
            2,
            "pods still reach every endpoint"
        );
        let local = &d.frontends[&np.local_scope()];
        assert_eq!(np.local_scope().scope, SCOPE_LOCAL);
        assert_eq!(local.external, External::Serve);
        assert_eq!(
            local.backends.iter().copied().collect::<Vec<_>>(),
            [("10.244.1.10".parse().unwrap(), 8080)]
        );
        let lb = FrontendKey::new("198.51.100.7".parse::<IpAddr>().unwrap(), 80, proto::TCP)
            .local_scope();
        assert_eq!(d.frontends[&lb].source_ranges.len(), 1);
        // Without a node name nothing is local.
        let d = service_desired(&web(true), &[&s], Here::default());
        assert!(d.frontends[&np.local_scope()].backends.is_empty());
        assert_eq!(
            d.frontends.len(),
            7,
            "three external frontends in two scopes and the ClusterIP"
        );
    }
}
