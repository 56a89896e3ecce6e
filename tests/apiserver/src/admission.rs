//! Defaulting and validation on create and update, per kind: what
//! kube-apiserver's registries and admission plugins do for the types here.

mod cluster_ips;
mod csr;
mod node_ports;

use std::{collections::BTreeSet, net::Ipv4Addr};

use base64::Engine as _;
pub use cluster_ips::IpAllocator;
pub use csr::{approval_update, status_update as csr_status_update, validate_csr_request};
pub use node_ports::{PortAllocator, node_ports};
use serde_json::{Value, json};

use crate::{
    authn::UserInfo,
    error::{ApiError, ApiResult},
    request::ResourceRequest,
};

fn invalid(kind: &str, obj: &Value, message: impl AsRef<str>) -> ApiError {
    let name = obj
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    ApiError::invalid(kind, name, message)
}

/// Defaults and validates a new object; `ips` allocates ClusterIPs and
/// `ports` NodePorts.
pub fn on_create(
    rr: &ResourceRequest,
    obj: &mut Value,
    user: &UserInfo,
    ips: &IpAllocator,
    ports: &PortAllocator,
) -> ApiResult<()> {
    let kind = rr.resource.kind;
    match kind {
        "Namespace" => {
            obj["status"] = json!({"phase": "Active"});
            obj["spec"] = json!({"finalizers": ["kubernetes"]});
        }
        "Service" => service_create(obj, ips, ports)?,
        "Secret" => secret_defaults(obj),
        "Pod" => {
            // A new Pod has not been scheduled or started: its status is the
            // kubelet's to write (through /status).
            obj["status"] = json!({"phase": "Pending"});
        }
        "EndpointSlice" => validate_slice(obj)?,
        "CertificateSigningRequest" => csr::on_create(obj, user)?,
        _ => {}
    }
    Ok(())
}

/// Applies update rules: immutable and allocated fields, and status handled
/// by its own subresource. `old` is the stored object; `ports` holds the
/// NodePorts.
pub fn on_update(
    rr: &ResourceRequest,
    old: &Value,
    new: &mut Value,
    (ips, ports): (&IpAllocator, &PortAllocator),
) -> ApiResult<()> {
    let kind = rr.resource.kind;
    let sub = rr.subresource.as_deref();
    match (kind, sub) {
        ("CertificateSigningRequest", Some("approval")) => return approval_update(old, new),
        ("CertificateSigningRequest", Some("status")) => return csr_status_update(old, new),
        (_, Some("status")) => {
            // Only the status changes through /status.
            let status = new.get("status").cloned().unwrap_or(Value::Null);
            let rv = new.pointer("/metadata/resourceVersion").cloned();
            *new = old.clone();
            new["status"] = status;
            if let Some(rv) = rv {
                new["metadata"]["resourceVersion"] = rv;
            }
            return Ok(());
        }
        _ => {}
    }
    if rr.resource.subresources.contains(&"status") || kind == "CertificateSigningRequest" {
        // The main resource does not change the status (nor, for CSRs, the spec).
        match old.get("status") {
            Some(s) => new["status"] = s.clone(),
            None => {
                if let Some(o) = new.as_object_mut() {
                    o.remove("status");
                }
            }
        }
    }
    match kind {
        "Service" => service_update(old, new, ips, ports)?,
        "Secret" => secret_defaults(new),
        "EndpointSlice" => validate_slice(new)?,
        "CertificateSigningRequest" | "Namespace" => new["spec"] = old["spec"].clone(),
        _ => {}
    }
    Ok(())
}

/// What deleting an object frees.
pub fn on_delete(kind: &str, old: &Value, ips: &IpAllocator, ports: &PortAllocator) {
    if kind == "Service" {
        for ip in cluster_ips(old) {
            ips.release(ip);
        }
        for port in node_ports(old) {
            ports.release(port);
        }
    }
}

pub fn cluster_ips(svc: &Value) -> Vec<std::net::IpAddr> {
    svc.pointer("/spec/clusterIPs")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .chain(svc.pointer("/spec/clusterIP"))
        .filter_map(|ip| ip.as_str()?.parse().ok())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect()
}

fn service_create(obj: &mut Value, ips: &IpAllocator, ports: &PortAllocator) -> ApiResult<()> {
    service_ips(obj, ips)?;
    if let Err(e) = node_ports::assign(ports, obj, None) {
        for ip in cluster_ips(obj) {
            ips.release(ip);
        }
        return Err(invalid("Service", obj, e));
    }
    Ok(())
}

/// The type, ports and ClusterIPs of a new Service.
fn service_ips(obj: &mut Value, ips: &IpAllocator) -> ApiResult<()> {
    let spec = obj.get("spec").cloned().unwrap_or_else(|| json!({}));
    let kind = spec
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("ClusterIP")
        .to_owned();
    obj["spec"]["type"] = json!(kind);
    service_ports(obj)?;
    if kind == "ExternalName" {
        if spec
            .get("externalName")
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
        {
            return Err(invalid("Service", obj, "spec.externalName: Required value"));
        }
        return Ok(());
    }
    obj["spec"]["sessionAffinity"] = spec
        .get("sessionAffinity")
        .cloned()
        .unwrap_or_else(|| json!("None"));
    let requested = spec
        .get("clusterIP")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if requested == "None" {
        obj["spec"]["clusterIPs"] = json!(["None"]);
        return Ok(());
    }
    let mut new_spec = obj["spec"].take();
    let assigned = cluster_ips::assign(&mut new_spec, ips);
    obj["spec"] = new_spec;
    assigned.map_err(|e| invalid("Service", obj, e))?;
    obj["spec"]["internalTrafficPolicy"] = spec
        .get("internalTrafficPolicy")
        .cloned()
        .unwrap_or_else(|| json!("Cluster"));
    Ok(())
}

fn service_ports(obj: &mut Value) -> ApiResult<()> {
    let Some(ports) = obj.pointer_mut("/spec/ports").and_then(Value::as_array_mut) else {
        return Ok(());
    };
    let mut problems = Vec::new();
    for (i, p) in ports.iter_mut().enumerate() {
        let port = p.get("port").and_then(Value::as_i64).unwrap_or(0);
        if !(1..=65535).contains(&port) {
            problems.push(format!("spec.ports[{i}].port: Invalid value: {port}: must be between 1 and 65535, inclusive"));
        }
        let protocol = p
            .get("protocol")
            .and_then(Value::as_str)
            .unwrap_or("TCP")
            .to_owned();
        if !matches!(protocol.as_str(), "TCP" | "UDP" | "SCTP") {
            problems.push(format!(
                "spec.ports[{i}].protocol: Unsupported value: \"{protocol}\""
            ));
        }
        // 0 is "unset" (kubectl's protobuf bodies carry it explicitly).
        if p.get("nodePort").and_then(Value::as_i64) == Some(0)
            && let Some(map) = p.as_object_mut()
        {
            map.remove("nodePort");
        }
        p["protocol"] = json!(protocol);
        if p.get("targetPort").is_none_or(Value::is_null) {
            p["targetPort"] = json!(port);
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(invalid(
            "Service",
            obj,
            format!("[{}]", problems.join(", ")),
        ))
    }
}

fn service_update(
    old: &Value,
    new: &mut Value,
    ips: &IpAllocator,
    ports: &PortAllocator,
) -> ApiResult<()> {
    service_ports(new)?;
    // Allocated values stay unless the update names them (kube-apiserver's
    // patchAllocatedValues); changing them is refused.
    for field in ["clusterIP", "clusterIPs", "ipFamilies", "ipFamilyPolicy"] {
        let keep = new
            .pointer(&format!("/spec/{field}"))
            .is_none_or(|v| v.is_null() || v == "");
        if keep {
            if let Some(v) = old.pointer(&format!("/spec/{field}")) {
                new["spec"][field] = v.clone();
            }
        } else if field == "clusterIP"
            && new.pointer("/spec/clusterIP") != old.pointer("/spec/clusterIP")
        {
            return Err(invalid(
                "Service",
                new,
                "spec.clusterIP: Invalid value: field is immutable",
            ));
        }
    }
    let old_spec = old.get("spec").cloned().unwrap_or_else(|| json!({}));
    let mut spec = new["spec"].take();
    let changed = cluster_ips::change_policy(&old_spec, &mut spec, ips);
    new["spec"] = spec;
    changed.map_err(|e| invalid("Service", new, e))?;
    if new.pointer("/spec/type").is_none_or(Value::is_null) {
        new["spec"]["type"] = old
            .pointer("/spec/type")
            .cloned()
            .unwrap_or_else(|| json!("ClusterIP"));
    }
    node_ports::assign(ports, new, Some(old)).map_err(|e| invalid("Service", new, e))
}

/// `stringData` is written into `data` (base64), as the API server does.
fn secret_defaults(obj: &mut Value) {
    if let Some(Value::Object(string_data)) =
        obj.as_object_mut().and_then(|o| o.remove("stringData"))
    {
        for (k, v) in string_data {
            let encoded =
                base64::engine::general_purpose::STANDARD.encode(v.as_str().unwrap_or_default());
            obj["data"][k] = json!(encoded);
        }
    }
    if obj.get("type").is_none_or(Value::is_null) {
        obj["type"] = json!("Opaque");
    }
}

fn validate_slice(obj: &Value) -> ApiResult<()> {
    let family = obj
        .get("addressType")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if !matches!(family, "IPv4" | "IPv6" | "FQDN") {
        return Err(invalid(
            "EndpointSlice",
            obj,
            format!("addressType: Unsupported value: \"{family}\""),
        ));
    }
    for (i, ep) in obj
        .get("endpoints")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        for (j, a) in ep
            .get("addresses")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            let a = a.as_str().unwrap_or_default();
            let ok = match family {
                "IPv4" => a.parse::<Ipv4Addr>().is_ok(),
                "IPv6" => a.parse::<std::net::Ipv6Addr>().is_ok(),
                _ => !a.is_empty(),
            };
            if !ok {
                return Err(invalid(
                    "EndpointSlice",
                    obj,
                    format!(
                        "endpoints[{i}].addresses[{j}]: Invalid value: \"{a}\": must be a valid {family} address"
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// The RFC 3339 time now, at second precision (as Kubernetes writes it).
pub fn now() -> String {
    let now = time::OffsetDateTime::now_utc();
    let now = now.replace_nanosecond(0).unwrap_or(now);
    now.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}
