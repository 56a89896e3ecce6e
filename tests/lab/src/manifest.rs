//! Service and EndpointSlice manifests for the lab, as YAML text.

use std::{
    fmt::Write as _,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

/// One Service port: name (may be empty), port, protocol, and the
/// NodePort of a NodePort Service's port.
#[derive(Clone, Debug)]
pub struct Port {
    pub name: String,
    pub port: u16,
    pub protocol: &'static str,
    pub node_port: Option<u16>,
}

impl Port {
    pub fn tcp(name: &str, port: u16) -> Self {
        Self {
            name: name.into(),
            port,
            protocol: "TCP",
            node_port: None,
        }
    }

    /// The same port with a NodePort (the Service becomes a NodePort one).
    #[must_use]
    pub const fn node_port(mut self, port: u16) -> Self {
        self.node_port = Some(port);
        self
    }

    pub fn udp(name: &str, port: u16) -> Self {
        Self {
            name: name.into(),
            port,
            protocol: "UDP",
            node_port: None,
        }
    }
}

/// One endpoint of a slice and its conditions.
#[derive(Clone, Debug)]
pub struct Endpoint {
    pub ip: IpAddr,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
}

impl Endpoint {
    pub fn ready(ip: impl Into<IpAddr>) -> Self {
        Self {
            ip: ip.into(),
            ready: true,
            serving: true,
            terminating: false,
        }
    }
}

fn ports_yaml(out: &mut String, ports: &[Port], target: bool) {
    if ports.is_empty() {
        return;
    }
    out.push_str(if target { "ports:\n" } else { "  ports:\n" });
    let indent = if target { "" } else { "  " };
    for p in ports {
        let _ = writeln!(
            out,
            "{indent}- port: {}\n{indent}  protocol: {}",
            p.port, p.protocol
        );
        if !p.name.is_empty() {
            let _ = writeln!(out, "{indent}  name: {}", p.name);
        }
        if let Some(node_port) = p.node_port {
            let _ = writeln!(out, "{indent}  nodePort: {node_port}");
        }
    }
}

/// A ClusterIP Service (no selector: the slices are written by hand).
pub fn service(name: &str, cluster_ip: Ipv4Addr, ports: &[Port]) -> String {
    let mut out = format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: default\nspec:\n  clusterIP: {cluster_ip}\n"
    );
    ports_yaml(&mut out, ports, false);
    out
}

/// A dual-stack Service (`RequireDualStack`, IPv4 first): of type
/// NodePort when a port has one, else ClusterIP.
pub fn dual_stack_service(name: &str, v4: Ipv4Addr, v6: Ipv6Addr, ports: &[Port]) -> String {
    let kind = if ports.iter().any(|p| p.node_port.is_some()) {
        "NodePort"
    } else {
        "ClusterIP"
    };
    let mut out = format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: default\nspec:\n  type: {kind}\n  ipFamilyPolicy: RequireDualStack\n  ipFamilies: [IPv4, IPv6]\n  clusterIP: {v4}\n  clusterIPs: [\"{v4}\", \"{v6}\"]\n"
    );
    ports_yaml(&mut out, ports, false);
    out
}

/// An EndpointSlice of `service`; `ports` carry the endpoint (target) ports.
/// Its address type is its first endpoint's family (IPv4 when empty).
pub fn endpoint_slice(name: &str, service: &str, ports: &[Port], endpoints: &[Endpoint]) -> String {
    let family = if endpoints.first().is_some_and(|e| e.ip.is_ipv6()) {
        "IPv6"
    } else {
        "IPv4"
    };
    let mut out = format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}\n  namespace: default\n  labels:\n    kubernetes.io/service-name: {service}\naddressType: {family}\n"
    );
    ports_yaml(&mut out, ports, true);
    out.push_str("endpoints:\n");
    if endpoints.is_empty() {
        out.truncate(out.len() - 1);
        out.push_str(" []\n");
    }
    for e in endpoints {
        let _ = writeln!(
            out,
            "- addresses: [\"{}\"]\n  conditions: {{ready: {}, serving: {}, terminating: {}}}",
            e.ip, e.ready, e.serving, e.terminating
        );
    }
    out
}

/// A Service and its one slice, as one multi-document file.
pub fn service_with_endpoints(
    name: &str,
    cluster_ip: Ipv4Addr,
    ports: &[Port],
    target_ports: &[Port],
    endpoints: &[Endpoint],
) -> String {
    format!(
        "{}---\n{}",
        service(name, cluster_ip, ports),
        endpoint_slice(&format!("{name}-1"), name, target_ports, endpoints)
    )
}
