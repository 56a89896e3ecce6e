//! The desired-state model: Services and EndpointSlices as the dataplane (and
//! later DNS) need them, whichever source they came from.
//!
//! Sources (the manifest directory now, the apiserver later) translate
//! Kubernetes objects into `ServiceInfo` and `SliceInfo` and publish a whole
//! `Model`; consumers derive what they need from it, e.g. `Model::desired`.

mod desired;
pub mod frontends;
pub mod store;
pub mod translate;

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    net::{IpAddr, Ipv4Addr},
};

pub use desired::{ServiceDesired, service_desired};
use sluice_abi::{proto, service::ServiceKey};

/// Label that joins an EndpointSlice to its Service.
pub const LABEL_SERVICE_NAME: &str = "kubernetes.io/service-name";
/// Services carrying this label belong to another proxy (kube-proxy skips them).
pub const LABEL_SERVICE_PROXY_NAME: &str = "service.kubernetes.io/service-proxy-name";

/// Namespace and name of an object.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey {
    pub namespace: String,
    pub name: String,
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    /// The IP protocol number, if the dataplane handles it.
    pub const fn ip_proto(self) -> Option<u8> {
        match self {
            Self::Tcp => Some(proto::TCP),
            Self::Udp => Some(proto::UDP),
            Self::Sctp => None,
        }
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Tcp => "TCP",
            Self::Udp => "UDP",
            Self::Sctp => "SCTP",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServiceKind {
    /// Has virtual IPs (ClusterIP, NodePort and LoadBalancer Services).
    ClusterIp { ips: Vec<IpAddr> },
    /// `clusterIP: None`: no virtual IP, DNS answers with endpoints.
    Headless,
    /// A DNS alias.
    ExternalName { name: String },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServicePortInfo {
    /// Empty for the single unnamed port.
    pub name: String,
    pub port: u16,
    pub protocol: Protocol,
    /// Its `nodePort` (types NodePort and LoadBalancer).
    pub node_port: Option<u16>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
#[expect(
    clippy::struct_excessive_bools,
    reason = "independent fields of the Service spec, as the API has them"
)]
pub struct ServiceInfo {
    pub key: ObjectKey,
    /// `metadata.creationTimestamp` in seconds since the epoch (`None`: not
    /// given, as in most manifests): of two Services claiming one frontend,
    /// the older keeps it.
    pub created: Option<i64>,
    pub kind: ServiceKind,
    pub ports: Vec<ServicePortInfo>,
    /// Labelled for another proxy: no dataplane entry.
    pub other_proxy: bool,
    /// `spec.publishNotReadyAddresses`: DNS lists every endpoint, ready or not.
    pub publish_not_ready: bool,
    /// `spec.internalTrafficPolicy: Local`: only this node's endpoints.
    pub internal_local: bool,
    /// `spec.sessionAffinity: ClientIP`: its timeout in seconds (0: none).
    pub affinity_secs: u32,
    /// `spec.externalTrafficPolicy: Local`: external traffic (NodePorts,
    /// external and load balancer addresses) uses this node's endpoints
    /// only and keeps the client's address.
    pub external_local: bool,
    /// `spec.externalTrafficPolicy: Local`: its `healthCheckNodePort`, if
    /// it has one.
    pub health_check_node_port: Option<u16>,
    /// `spec.externalIPs`: more addresses of the Service's ports.
    pub external_ips: Vec<IpAddr>,
    /// `status.loadBalancer.ingress[].ip`: its load balancer addresses.
    pub lb_ips: Vec<IpAddr>,
    /// `spec.loadBalancerSourceRanges`, for the load balancer addresses.
    pub source_ranges: Vec<(Ipv4Addr, u8)>,
}

#[cfg(test)]
impl ServiceInfo {
    /// For tests: Service `default/name` of `kind` with `ports`, every other
    /// field as a plain Service has it; change fields with `..`.
    pub fn test(name: &str, kind: ServiceKind, ports: Vec<ServicePortInfo>) -> Self {
        Self {
            key: ObjectKey {
                namespace: "default".into(),
                name: name.into(),
            },
            created: None,
            kind,
            ports,
            other_proxy: false,
            publish_not_ready: false,
            internal_local: false,
            affinity_secs: 0,
            external_local: false,
            health_check_node_port: None,
            external_ips: Vec::new(),
            lb_ips: Vec::new(),
            source_ranges: Vec::new(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlicePortInfo {
    pub name: String,
    pub port: u16,
    pub protocol: Protocol,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointInfo {
    pub addresses: Vec<IpAddr>,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
    pub hostname: Option<String>,
    pub node_name: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SliceInfo {
    pub key: ObjectKey,
    /// The Service it belongs to (`kubernetes.io/service-name`), if labelled.
    pub service: Option<String>,
    pub ports: Vec<SlicePortInfo>,
    pub endpoints: Vec<EndpointInfo>,
    /// When the change that made this version was seen
    /// (`endpoints.kubernetes.io/last-change-trigger-time`), as the
    /// EndpointSlice controller wrote it.
    pub trigger_time: Option<std::time::SystemTime>,
}

/// This node, as its Node object says.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeInfo {
    pub name: String,
    /// (type, address): `InternalIP`, `ExternalIP`, `Hostname`, ….
    pub addresses: Vec<(String, String)>,
    /// Why the node takes no new traffic from load balancers: it is being
    /// deleted, or the cluster autoscaler is removing it (KEP-3836).
    pub leaving: Option<String>,
}

/// Every Service and EndpointSlice a source knows (and this node).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Model {
    pub services: BTreeMap<ObjectKey, ServiceInfo>,
    pub slices: BTreeMap<ObjectKey, SliceInfo>,
    pub node: Option<NodeInfo>,
}

/// One frontend the dataplane should have.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DesiredFrontend {
    /// `namespace/name:port-name`, for `sluice status`.
    pub name: String,
    pub backends: BTreeSet<(Ipv4Addr, u16)>,
    /// `ClientIP` session affinity timeout in seconds; 0: none.
    pub affinity_secs: u32,
    /// Only these clients (network, prefix length) may open flows; empty:
    /// any.
    pub source_ranges: Vec<(Ipv4Addr, u8)>,
    /// Whether and how traffic from outside the cluster (XDP) uses it.
    pub external: External,
}

/// How the XDP program, on the node's external interfaces, uses a frontend.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum External {
    /// A ClusterIP: not served from outside.
    #[default]
    No,
    /// Served from outside, through a Maglev table of its backends.
    Serve,
    /// `externalTrafficPolicy: Local`: external traffic uses the frontend's
    /// local scope (this node's endpoints); this entry serves pods.
    ViaLocalScope,
}

/// What the dataplane maps should hold.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Desired {
    pub frontends: BTreeMap<ServiceKey, DesiredFrontend>,
    /// Every allocated IPv4 ClusterIP (for rejecting unknown ports).
    pub cluster_ips: BTreeSet<Ipv4Addr>,
}

impl Model {
    /// The frontends and backends this model asks for, with kube-proxy's
    /// semantics.
    pub fn desired(&self) -> Desired {
        let mut by_service: BTreeMap<ObjectKey, Vec<&SliceInfo>> = BTreeMap::new();
        for slice in self.slices.values() {
            if let Some(service) = slice.service_key() {
                by_service.entry(service).or_default().push(slice);
            }
        }
        // Claims on one frontend are decided where the planner decides them.
        let mut claims = frontends::Frontends::default();
        let mut touched = frontends::Touched::default();
        for svc in self.services.values() {
            let slices = by_service.get(&svc.key).map_or(&[][..], Vec::as_slice);
            let node = self.node.as_ref().map(|n| n.name.as_str());
            let want = service_desired(svc, slices, node);
            claims.set(&svc.key, Some(want), &mut touched);
        }
        let changes = claims.changes(&claims.all());
        Desired {
            frontends: changes
                .frontends
                .into_iter()
                .filter_map(|(k, f)| Some((k, f?)))
                .collect(),
            cluster_ips: changes
                .cluster_ips
                .into_iter()
                .filter_map(|(ip, on)| on.then_some(ip))
                .collect(),
        }
    }
}

impl SliceInfo {
    /// The Service this slice belongs to, by its `kubernetes.io/service-name`.
    pub fn service_key(&self) -> Option<ObjectKey> {
        self.service.as_ref().map(|name| ObjectKey {
            namespace: self.key.namespace.clone(),
            name: name.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(ns: &str, name: &str) -> ObjectKey {
        ObjectKey {
            namespace: ns.into(),
            name: name.into(),
        }
    }

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
        }
    }

    fn slice(
        name: &str,
        service: &str,
        ports: &[(&str, u16, Protocol)],
        eps: Vec<EndpointInfo>,
    ) -> SliceInfo {
        SliceInfo {
            key: key("default", name),
            service: Some(service.into()),
            ports: ports
                .iter()
                .map(|&(n, p, protocol)| SlicePortInfo {
                    name: n.into(),
                    port: p,
                    protocol,
                })
                .collect(),
            endpoints: eps,
            trigger_time: None,
        }
    }

    fn model(services: Vec<ServiceInfo>, slices: Vec<SliceInfo>) -> Model {
        Model {
            services: services.into_iter().map(|s| (s.key.clone(), s)).collect(),
            slices: slices.into_iter().map(|s| (s.key.clone(), s)).collect(),
            node: None,
        }
    }

    fn backends(d: &Desired, ip: &str, port: u16, proto: u8) -> Vec<(Ipv4Addr, u16)> {
        d.frontends[&ServiceKey::new(ip.parse().unwrap(), port, proto)]
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
            d.frontends[&ServiceKey::new("10.96.0.10".parse().unwrap(), 80, proto::TCP)].name,
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
            d.frontends[&ServiceKey::new("10.96.0.10".parse().unwrap(), 80, proto::TCP)]
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
}
