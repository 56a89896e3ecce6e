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
    net::IpAddr,
};

pub use desired::{Here, ServiceDesired, service_desired};
use sluice_abi::proto;

use crate::frontend::FrontendKey;

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
    /// `spec.loadBalancerSourceRanges`, for the load balancer addresses
    /// (each applies to the addresses of its family).
    pub source_ranges: Vec<(IpAddr, u8)>,
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

#[cfg(test)]
impl SliceInfo {
    /// For tests: slice `default/name` of Service `service`, with `ports`
    /// (name, port, protocol) and `endpoints`; change fields with `..`.
    pub fn test(
        name: &str,
        service: &str,
        ports: &[(&str, u16, Protocol)],
        endpoints: Vec<EndpointInfo>,
    ) -> Self {
        Self {
            key: ObjectKey {
                namespace: "default".into(),
                name: name.into(),
            },
            service: Some(service.into()),
            ports: ports
                .iter()
                .map(|&(name, port, protocol)| SlicePortInfo {
                    name: name.into(),
                    port,
                    protocol,
                })
                .collect(),
            endpoints,
            trigger_time: None,
        }
    }
}

#[cfg(test)]
impl EndpointInfo {
    /// For tests: a ready endpoint at `addr`, on no node in particular;
    /// change fields with `..`.
    pub fn test(addr: &str) -> Self {
        Self {
            addresses: addr.parse().into_iter().collect(),
            ready: true,
            serving: true,
            terminating: false,
            hostname: None,
            node_name: None,
            pod_name: None,
            for_zones: Vec::new(),
            for_nodes: Vec::new(),
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
    /// The pod it targets (`targetRef` of kind Pod), for DNS's
    /// `endpoint_pod_names`.
    pub pod_name: Option<String>,
    /// Topology hints (`hints.forZones`, `hints.forNodes`): the zones and
    /// nodes whose traffic it should take (`trafficDistribution`).
    pub for_zones: Vec<String>,
    pub for_nodes: Vec<String>,
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
    /// Its `topology.kubernetes.io/zone` label, for topology hints.
    pub zone: Option<String>,
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
    pub backends: BTreeSet<(IpAddr, u16)>,
    /// `ClientIP` session affinity timeout in seconds; 0: none.
    pub affinity_secs: u32,
    /// Only these clients (network, prefix length) may open flows; empty:
    /// any.
    pub source_ranges: Vec<(IpAddr, u8)>,
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
    pub frontends: BTreeMap<FrontendKey, DesiredFrontend>,
    /// Every allocated ClusterIP (for rejecting unknown ports).
    pub cluster_ips: BTreeSet<IpAddr>,
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
            let here = Here {
                node: self.node.as_ref().map(|n| n.name.as_str()),
                zone: self.node.as_ref().and_then(|n| n.zone.as_deref()),
            };
            let want = service_desired(svc, slices, here);
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
mod tests;
