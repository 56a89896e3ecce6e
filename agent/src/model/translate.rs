//! Kubernetes objects (k8s-openapi types) to model types, with validation.
//!
//! An invalid object is reported with the field at fault; the caller keeps
//! that object's last good state.

use std::net::IpAddr;

use k8s_openapi::api::{
    core::v1::{Node, Service, ServiceSpec},
    discovery::v1::{Endpoint, EndpointSlice},
};
use thiserror::Error;

use super::{
    EndpointInfo, LABEL_SERVICE_NAME, LABEL_SERVICE_PROXY_NAME, NodeInfo, ObjectKey, Protocol,
    ServiceInfo, ServiceKind, ServicePortInfo, SliceInfo, SlicePortInfo,
};

/// Why an object was rejected.
#[derive(Debug, Error, PartialEq, Eq)]
#[error("{kind} `{object}`: {field}: {message}")]
pub struct InvalidObject {
    pub kind: &'static str,
    pub object: String,
    pub field: String,
    pub message: String,
}

const DEFAULT_NAMESPACE: &str = "default";

fn object_key(
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> Option<ObjectKey> {
    let name = meta.name.clone().filter(|n| !n.is_empty())?;
    let namespace = meta
        .namespace
        .clone()
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| DEFAULT_NAMESPACE.into());
    Some(ObjectKey { namespace, name })
}

struct Checker {
    kind: &'static str,
    object: String,
}

impl Checker {
    fn err(&self, field: impl Into<String>, message: impl Into<String>) -> InvalidObject {
        InvalidObject {
            kind: self.kind,
            object: self.object.clone(),
            field: field.into(),
            message: message.into(),
        }
    }

    fn port(&self, field: String, port: i32) -> Result<u16, InvalidObject> {
        u16::try_from(port)
            .ok()
            .filter(|&p| p != 0)
            .ok_or_else(|| self.err(field, format!("{port} is out of range 1-65535")))
    }

    fn protocol(&self, field: String, protocol: Option<&str>) -> Result<Protocol, InvalidObject> {
        match protocol.unwrap_or("TCP") {
            "TCP" => Ok(Protocol::Tcp),
            "UDP" => Ok(Protocol::Udp),
            "SCTP" => Ok(Protocol::Sctp),
            other => Err(self.err(
                field,
                format!("unknown protocol `{other}` (TCP, UDP or SCTP)"),
            )),
        }
    }

    fn ip(&self, field: String, ip: &str) -> Result<IpAddr, InvalidObject> {
        ip.parse()
            .map_err(|_| self.err(field, format!("`{ip}` is not an IP address")))
    }

    /// An IPv4 CIDR, as its network address and prefix length (host bits
    /// cleared, as the API server accepts `10.0.0.1/8` too).
    fn cidr(&self, field: &str, cidr: &str) -> Result<(IpAddr, u8), InvalidObject> {
        crate::cidr::parse_ip(cidr)
            .ok_or_else(|| self.err(field, format!("`{cidr}` is not a CIDR")))
    }
}

pub fn service(svc: &Service) -> Result<ServiceInfo, InvalidObject> {
    let key = object_key(&svc.metadata).ok_or_else(|| InvalidObject {
        kind: "Service",
        object: "?".into(),
        field: "metadata.name".into(),
        message: "is required".into(),
    })?;
    let c = Checker {
        kind: "Service",
        object: key.to_string(),
    };
    let spec = svc.spec.clone().unwrap_or_default();
    let other_proxy = svc
        .metadata
        .labels
        .as_ref()
        .is_some_and(|l| l.contains_key(LABEL_SERVICE_PROXY_NAME));

    // NodePorts are allocated for these types only (and not for a load
    // balancer with `allocateLoadBalancerNodePorts: false`, which leaves
    // the field out).
    let node_ports = matches!(spec.type_.as_deref(), Some("NodePort" | "LoadBalancer"));
    let mut ports = Vec::new();
    for (i, p) in spec.ports.iter().flatten().enumerate() {
        let port = c.port(format!("spec.ports[{i}].port"), p.port)?;
        let node_port = match p.node_port {
            Some(n) if node_ports => Some(c.port(format!("spec.ports[{i}].nodePort"), n)?),
            _ => None,
        };
        let protocol = c.protocol(format!("spec.ports[{i}].protocol"), p.protocol.as_deref())?;
        let name = p.name.clone().unwrap_or_default();
        if ports.iter().any(|q: &ServicePortInfo| q.name == name) {
            return Err(c.err(
                format!("spec.ports[{i}].name"),
                format!("duplicate port name `{name}`"),
            ));
        }
        ports.push(ServicePortInfo {
            name,
            port,
            protocol,
            node_port,
        });
    }

    let kind = if spec.type_.as_deref() == Some("ExternalName") {
        let name = spec.external_name.clone().filter(|n| !n.is_empty());
        ServiceKind::ExternalName {
            name: name
                .ok_or_else(|| c.err("spec.externalName", "is required for type ExternalName"))?,
        }
    } else if spec.cluster_ip.as_deref() == Some("None") {
        ServiceKind::Headless
    } else {
        // clusterIPs, when set, lists clusterIP first (dual-stack).
        let listed: Vec<(String, &str)> = match (&spec.cluster_ips, &spec.cluster_ip) {
            (Some(ips), _) if !ips.is_empty() => ips
                .iter()
                .enumerate()
                .map(|(i, ip)| (format!("spec.clusterIPs[{i}]"), ip.as_str()))
                .collect(),
            (_, Some(ip)) if !ip.is_empty() => vec![("spec.clusterIP".into(), ip.as_str())],
            _ => {
                return Err(c.err(
                    "spec.clusterIP",
                    "is required: without an apiserver nothing allocates one",
                ));
            }
        };
        let ips = listed
            .into_iter()
            .map(|(field, ip)| c.ip(field, ip))
            .collect::<Result<Vec<_>, _>>()?;
        if let (Some(first), Some(ip)) = (
            ips.first(),
            spec.cluster_ip.as_deref().filter(|ip| !ip.is_empty()),
        ) && c.ip("spec.clusterIP".into(), ip)? != *first
        {
            return Err(c.err("spec.clusterIPs[0]", "must equal spec.clusterIP"));
        }
        ServiceKind::ClusterIp { ips }
    };
    let (internal_local, affinity_secs) = policies(&c, &spec)?;
    let (external_local, health_check_node_port) = external_policy(&c, &spec)?;
    let (external_ips, lb_ips, source_ranges) = external_addresses(&c, svc, &spec)?;
    let created = svc
        .metadata
        .creation_timestamp
        .as_ref()
        .map(|t| t.0.as_second());
    Ok(ServiceInfo {
        key,
        created,
        kind,
        ports,
        other_proxy,
        publish_not_ready: spec.publish_not_ready_addresses.unwrap_or(false),
        internal_local,
        affinity_secs,
        external_local,
        health_check_node_port,
        external_ips,
        lb_ips,
        source_ranges,
    })
}

/// Whether `externalTrafficPolicy` is `Local`, and then the Service's
/// `healthCheckNodePort` (the API server allocates one for type
/// LoadBalancer).
fn external_policy(c: &Checker, spec: &ServiceSpec) -> Result<(bool, Option<u16>), InvalidObject> {
    match spec.external_traffic_policy.as_deref() {
        None | Some("Cluster") => Ok((false, None)),
        Some("Local") => {
            let port = spec
                .health_check_node_port
                .map(|p| c.port("spec.healthCheckNodePort".into(), p))
                .transpose()?;
            Ok((true, port))
        }
        Some(other) => Err(c.err(
            "spec.externalTrafficPolicy",
            format!("`{other}`: must be Cluster or Local"),
        )),
    }
}

/// `spec.externalIPs`, the load balancer addresses and
/// `spec.loadBalancerSourceRanges`.
fn external_addresses(
    c: &Checker,
    svc: &Service,
    spec: &ServiceSpec,
) -> Result<External, InvalidObject> {
    let mut external_ips = Vec::new();
    for (i, ip) in spec.external_ips.iter().flatten().enumerate() {
        external_ips.push(c.ip(format!("spec.externalIPs[{i}]"), ip)?);
    }
    let ingress = svc
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref());
    let mut lb_ips = Vec::new();
    for (i, entry) in ingress.into_iter().flatten().enumerate() {
        // Hostname-only entries (some cloud load balancers) have no address.
        // `ipMode: Proxy` (KEP-1860): the load balancer proxies, so the
        // address is not short-circuited; traffic to it goes out to the
        // load balancer, as kube-proxy leaves it.
        if entry.ip_mode.as_deref() == Some("Proxy") {
            continue;
        }
        if let Some(ip) = &entry.ip {
            lb_ips.push(c.ip(format!("status.loadBalancer.ingress[{i}].ip"), ip)?);
        }
    }
    let mut source_ranges = Vec::new();
    for (i, cidr) in spec
        .load_balancer_source_ranges
        .iter()
        .flatten()
        .enumerate()
    {
        source_ranges.push(c.cidr(&format!("spec.loadBalancerSourceRanges[{i}]"), cidr)?);
    }
    source_ranges.sort_unstable();
    source_ranges.dedup();
    Ok((external_ips, lb_ips, source_ranges))
}

/// What `external_addresses` finds.
type External = (Vec<IpAddr>, Vec<IpAddr>, Vec<(IpAddr, u8)>);

/// `internalTrafficPolicy` (Local or not) and the `ClientIP` affinity
/// timeout (0: none) of a Service spec.
fn policies(c: &Checker, spec: &ServiceSpec) -> Result<(bool, u32), InvalidObject> {
    let internal_local = match spec.internal_traffic_policy.as_deref() {
        None | Some("Cluster") => false,
        Some("Local") => true,
        Some(other) => {
            return Err(c.err(
                "spec.internalTrafficPolicy",
                format!("`{other}`: must be Cluster or Local"),
            ));
        }
    };
    let affinity_secs = match spec.session_affinity.as_deref() {
        None | Some("None") => 0,
        Some("ClientIP") => {
            let timeout = spec
                .session_affinity_config
                .as_ref()
                .and_then(|c| c.client_ip.as_ref())
                .and_then(|c| c.timeout_seconds)
                .unwrap_or(DEFAULT_AFFINITY_SECS);
            u32::try_from(timeout)
                .ok()
                .filter(|t| (1..=MAX_AFFINITY_SECS).contains(t))
                .ok_or_else(|| {
                    c.err(
                        "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
                        format!("{timeout}: must be 1 to {MAX_AFFINITY_SECS}"),
                    )
                })?
        }
        Some(other) => {
            return Err(c.err(
                "spec.sessionAffinity",
                format!("`{other}`: must be None or ClientIP"),
            ));
        }
    };
    Ok((internal_local, affinity_secs))
}

/// `sessionAffinityConfig.clientIP.timeoutSeconds` by default (3 hours) and
/// at most (1 day), as the API server validates it.
pub const DEFAULT_AFFINITY_SECS: i32 = 10_800;
pub const MAX_AFFINITY_SECS: u32 = 86_400;

pub fn endpoint_slice(slice: &EndpointSlice) -> Result<SliceInfo, InvalidObject> {
    let key = object_key(&slice.metadata).ok_or_else(|| InvalidObject {
        kind: "EndpointSlice",
        object: "?".into(),
        field: "metadata.name".into(),
        message: "is required".into(),
    })?;
    let c = Checker {
        kind: "EndpointSlice",
        object: key.to_string(),
    };
    let ip_family = match slice.address_type.as_str() {
        "IPv4" => Some(false),
        "IPv6" => Some(true),
        "FQDN" => None,
        other => return Err(c.err("addressType", format!("unknown address type `{other}`"))),
    };
    let service = slice
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(LABEL_SERVICE_NAME))
        .cloned();

    let mut ports = Vec::new();
    for (i, p) in slice.ports.iter().flatten().enumerate() {
        // kube-proxy skips ports without a number ("all ports").
        let Some(number) = p.port else { continue };
        let port = c.port(format!("ports[{i}].port"), number)?;
        let protocol = c.protocol(format!("ports[{i}].protocol"), p.protocol.as_deref())?;
        ports.push(SlicePortInfo {
            name: p.name.clone().unwrap_or_default(),
            port,
            protocol,
        });
    }

    let mut endpoints = Vec::new();
    for (i, ep) in slice.endpoints.iter().enumerate() {
        endpoints.push(endpoint(&c, i, ep, ip_family)?);
    }
    let trigger_time = slice
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(TRIGGER_TIME))
        .and_then(|t| {
            time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).ok()
        })
        .map(std::time::SystemTime::from);
    Ok(SliceInfo {
        key,
        service,
        ports,
        endpoints,
        trigger_time,
    })
}

/// When the change behind an EndpointSlice's version was seen, as its
/// controller writes it.
const TRIGGER_TIME: &str = "endpoints.kubernetes.io/last-change-trigger-time";

fn is_link_local(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => v6.is_unicast_link_local(),
    }
}

fn endpoint(
    c: &Checker,
    i: usize,
    ep: &Endpoint,
    ipv6: Option<bool>,
) -> Result<EndpointInfo, InvalidObject> {
    let mut addresses = Vec::new();
    if let Some(ipv6) = ipv6 {
        if ep.addresses.is_empty() {
            return Err(c.err(format!("endpoints[{i}].addresses"), "must not be empty"));
        }
        for (j, a) in ep.addresses.iter().enumerate() {
            let field = format!("endpoints[{i}].addresses[{j}]");
            let ip = c.ip(field.clone(), a)?;
            if ip.is_ipv6() != ipv6 {
                return Err(c.err(
                    field,
                    format!("`{a}` does not match the slice's addressType"),
                ));
            }
            // As the API server validates: these never reach a pod.
            if ip.is_loopback() || ip.is_unspecified() || ip.is_multicast() || is_link_local(ip) {
                return Err(c.err(
                    field,
                    format!("`{a}` is a loopback, unspecified, link-local or multicast address"),
                ));
            }
            addresses.push(ip);
        }
    }
    // EndpointConditions: nil ready/serving mean true, nil terminating false.
    let cond = ep.conditions.clone().unwrap_or_default();
    Ok(EndpointInfo {
        addresses,
        ready: cond.ready.unwrap_or(true),
        serving: cond.serving.unwrap_or(true),
        terminating: cond.terminating.unwrap_or(false),
        hostname: ep.hostname.clone(),
        node_name: ep.node_name.clone(),
        pod_name: ep
            .target_ref
            .as_ref()
            .filter(|r| r.kind.as_deref() == Some("Pod"))
            .and_then(|r| r.name.clone()),
        for_zones: ep
            .hints
            .iter()
            .flat_map(|h| h.for_zones.iter().flatten())
            .map(|z| z.name.clone())
            .collect(),
        for_nodes: ep
            .hints
            .iter()
            .flat_map(|h| h.for_nodes.iter().flatten())
            .map(|n| n.name.clone())
            .collect(),
    })
}

pub fn node(node: &Node) -> NodeInfo {
    let addresses = node
        .status
        .as_ref()
        .and_then(|s| s.addresses.as_ref())
        .into_iter()
        .flatten()
        .map(|a| (a.type_.clone(), a.address.clone()))
        .collect();
    let tainted = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .is_some_and(|t| t.iter().any(|t| t.key == TO_BE_DELETED_TAINT));
    let leaving = if node.metadata.deletion_timestamp.is_some() {
        Some("the Node is being deleted".to_owned())
    } else if tainted {
        Some(format!("the Node has the {TO_BE_DELETED_TAINT} taint"))
    } else {
        None
    };
    NodeInfo {
        name: node.metadata.name.clone().unwrap_or_default(),
        addresses,
        leaving,
        zone: node
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("topology.kubernetes.io/zone"))
            .cloned(),
    }
}

/// The taint the cluster autoscaler puts on a node it is removing.
const TO_BE_DELETED_TAINT: &str = "ToBeDeletedByClusterAutoscaler";

#[cfg(test)]
mod tests;
