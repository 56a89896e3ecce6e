//! Server-side printing: `meta.k8s.io/v1` Tables, what `kubectl get` asks
//! for (`Accept: application/json;as=Table;…`), with kube-apiserver's
//! columns for the kinds served here.

use serde_json::{Value, json};

use crate::resources::ResourceType;

pub fn wanted(accept: &str) -> bool {
    accept.contains("as=Table")
}

fn s<'a>(obj: &'a Value, pointer: &str) -> &'a str {
    obj.pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_default()
}

fn list<'a>(obj: &'a Value, pointer: &str) -> &'a [Value] {
    obj.pointer(pointer)
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

fn or_none(v: String) -> String {
    if v.is_empty() { "<none>".into() } else { v }
}

/// kubectl's short durations: `45s`, `3m20s`, `5h`, `3d4h`, `60d`.
pub fn human(secs: i64) -> String {
    let secs = secs.max(0);
    let (m, h, d) = (secs / 60, secs / 3600, secs / 86_400);
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 600 => format!("{m}m{}s", s % 60),
        s if s < 3 * 3600 => format!("{m}m"),
        s if s < 8 * 3600 => format!("{h}h{}m", m % 60),
        s if s < 2 * 86_400 => format!("{h}h"),
        s if s < 8 * 86_400 => format!("{d}d{}h", h % 24),
        _ => format!("{d}d"),
    }
}

fn age(obj: &Value) -> String {
    let created = time::OffsetDateTime::parse(
        s(obj, "/metadata/creationTimestamp"),
        &time::format_description::well_known::Rfc3339,
    );
    created.map_or_else(
        |_| "<unknown>".into(),
        |t| human((time::OffsetDateTime::now_utc() - t).whole_seconds()),
    )
}

/// (name, type, priority) of each column, and the cells of one object.
fn columns(kind: &str) -> Vec<(&'static str, &'static str, u8)> {
    let mut c = vec![("Name", "string", 0)];
    c.extend(match kind {
        "Service" => vec![
            ("Type", "string", 0),
            ("Cluster-IP", "string", 0),
            ("External-IP", "string", 0),
            ("Port(s)", "string", 0),
            ("Age", "string", 0),
            ("Selector", "string", 1),
        ],
        "EndpointSlice" => vec![
            ("AddressType", "string", 0),
            ("Ports", "string", 0),
            ("Endpoints", "string", 0),
            ("Age", "string", 0),
        ],
        "CertificateSigningRequest" => vec![
            ("Age", "string", 0),
            ("SignerName", "string", 0),
            ("Requestor", "string", 0),
            ("RequestedDuration", "string", 0),
            ("Condition", "string", 0),
        ],
        "Pod" => vec![
            ("Ready", "string", 0),
            ("Status", "string", 0),
            ("Restarts", "string", 0),
            ("Age", "string", 0),
            ("IP", "string", 1),
            ("Node", "string", 1),
        ],
        "Node" => vec![
            ("Status", "string", 0),
            ("Roles", "string", 0),
            ("Age", "string", 0),
            ("Version", "string", 0),
            ("Internal-IP", "string", 1),
        ],
        "Namespace" => vec![("Status", "string", 0), ("Age", "string", 0)],
        "Secret" => vec![
            ("Type", "string", 0),
            ("Data", "integer", 0),
            ("Age", "string", 0),
        ],
        "ServiceAccount" => vec![("Secrets", "integer", 0), ("Age", "string", 0)],
        "ConfigMap" => vec![("Data", "integer", 0), ("Age", "string", 0)],
        "ClusterRoleBinding" | "RoleBinding" => vec![("Role", "string", 0), ("Age", "string", 0)],
        _ => vec![("Age", "string", 0)],
    });
    c
}

fn cells(kind: &str, o: &Value) -> Vec<Value> {
    let mut c = vec![json!(s(o, "/metadata/name"))];
    let count = |p: &str| {
        o.pointer(p)
            .and_then(Value::as_object)
            .map_or(0, serde_json::Map::len)
    };
    c.extend(match kind {
        "Service" => service(o),
        "EndpointSlice" => endpoint_slice(o),
        "CertificateSigningRequest" => csr(o),
        "Pod" => pod(o),
        "Node" => node(o),
        "Namespace" => vec![json!(s(o, "/status/phase")), json!(age(o))],
        "Secret" => vec![json!(s(o, "/type")), json!(count("/data")), json!(age(o))],
        "ServiceAccount" => vec![json!(list(o, "/secrets").len()), json!(age(o))],
        "ConfigMap" => vec![json!(count("/data") + count("/binaryData")), json!(age(o))],
        "ClusterRoleBinding" | "RoleBinding" => {
            vec![
                json!(format!(
                    "{}/{}",
                    s(o, "/roleRef/kind"),
                    s(o, "/roleRef/name")
                )),
                json!(age(o)),
            ]
        }
        _ => vec![json!(age(o))],
    });
    c
}

fn service(o: &Value) -> Vec<Value> {
    let ports: Vec<String> = list(o, "/spec/ports")
        .iter()
        .map(|p| {
            let proto = p.get("protocol").and_then(Value::as_str).unwrap_or("TCP");
            let port = p.get("port").and_then(Value::as_i64).unwrap_or_default();
            match p.get("nodePort").and_then(Value::as_i64) {
                Some(np) => format!("{port}:{np}/{proto}"),
                None => format!("{port}/{proto}"),
            }
        })
        .collect();
    let external: Vec<String> = list(o, "/spec/externalIPs")
        .iter()
        .chain(
            list(o, "/status/loadBalancer/ingress")
                .iter()
                .filter_map(|i| i.get("ip")),
        )
        .filter_map(|v| v.as_str().map(str::to_owned))
        .collect();
    let selector = o
        .pointer("/spec/selector")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                .collect::<Vec<_>>()
                .join(",")
        });
    let external_name = s(o, "/spec/type") == "ExternalName";
    let cluster_ip = if external_name {
        "<none>"
    } else {
        s(o, "/spec/clusterIP")
    };
    let external = if external_name {
        s(o, "/spec/externalName").to_owned()
    } else {
        external.join(",")
    };
    vec![
        json!(s(o, "/spec/type")),
        json!(cluster_ip),
        json!(or_none(external)),
        json!(or_none(ports.join(","))),
        json!(age(o)),
        json!(or_none(selector.unwrap_or_default())),
    ]
}

fn endpoint_slice(o: &Value) -> Vec<Value> {
    let ports: Vec<String> = list(o, "/ports")
        .iter()
        .filter_map(|p| p.get("port").and_then(Value::as_i64).map(|p| p.to_string()))
        .collect();
    let addrs: Vec<&str> = list(o, "/endpoints")
        .iter()
        .flat_map(|e| {
            e.get("addresses")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
        })
        .filter_map(Value::as_str)
        .collect();
    let shown = addrs.iter().take(3).copied().collect::<Vec<_>>().join(",");
    let endpoints = match addrs.len() {
        0 => "<unset>".to_owned(),
        n if n > 3 => format!("{shown} + {} more...", n - 3),
        _ => shown,
    };
    let ports = if ports.is_empty() {
        "<unset>".to_owned()
    } else {
        ports.join(",")
    };
    vec![
        json!(s(o, "/addressType")),
        json!(ports),
        json!(endpoints),
        json!(age(o)),
    ]
}

fn csr(o: &Value) -> Vec<Value> {
    let types: Vec<&str> = list(o, "/status/conditions")
        .iter()
        .filter_map(|c| c.get("type").and_then(Value::as_str))
        .collect();
    let mut condition = if types.is_empty() {
        "Pending".to_owned()
    } else {
        types.join(",")
    };
    if !s(o, "/status/certificate").is_empty() {
        condition.push_str(",Issued");
    }
    let duration = o
        .pointer("/spec/expirationSeconds")
        .and_then(Value::as_i64)
        .map_or_else(|| "<none>".to_owned(), human);
    vec![
        json!(age(o)),
        json!(s(o, "/spec/signerName")),
        json!(s(o, "/spec/username")),
        json!(duration),
        json!(condition),
    ]
}

fn pod(o: &Value) -> Vec<Value> {
    let total = list(o, "/spec/containers").len();
    let ready = list(o, "/status/containerStatuses")
        .iter()
        .filter(|c| c.get("ready").and_then(Value::as_bool) == Some(true))
        .count();
    let terminating = o
        .pointer("/metadata/deletionTimestamp")
        .is_some_and(|d| !d.is_null());
    let status = if terminating {
        "Terminating"
    } else {
        s(o, "/status/phase")
    };
    vec![
        json!(format!("{ready}/{total}")),
        json!(status),
        json!("0"),
        json!(age(o)),
        json!(or_none(s(o, "/status/podIP").to_owned())),
        json!(or_none(s(o, "/spec/nodeName").to_owned())),
    ]
}

fn node(o: &Value) -> Vec<Value> {
    let ready = list(o, "/status/conditions")
        .iter()
        .find(|c| c.get("type").and_then(Value::as_str) == Some("Ready"));
    let status = match ready.and_then(|c| c.get("status")).and_then(Value::as_str) {
        Some("True") => "Ready",
        Some("False") => "NotReady",
        _ => "Unknown",
    };
    let internal = list(o, "/status/addresses")
        .iter()
        .find(|a| a.get("type").and_then(Value::as_str) == Some("InternalIP"))
        .and_then(|a| a.get("address"))
        .and_then(Value::as_str)
        .unwrap_or("<none>");
    vec![
        json!(status),
        json!("<none>"),
        json!(age(o)),
        json!(s(o, "/status/nodeInfo/kubeletVersion")),
        json!(internal),
    ]
}

/// A Table of `objects`; each row carries the object (`includeObject=Object`)
/// or its metadata (the default).
pub fn table(
    resource: &ResourceType,
    objects: &[&Value],
    rv: Option<u64>,
    full_objects: bool,
) -> Value {
    let defs: Vec<Value> = columns(resource.kind)
        .into_iter()
        .map(|(name, ty, priority)| {
            let format = if name == "Name" { "name" } else { "" };
            json!({"name": name, "type": ty, "format": format, "description": "", "priority": priority})
        })
        .collect();
    let rows: Vec<Value> = objects
        .iter()
        .map(|o| {
            let object = if full_objects {
                (*o).clone()
            } else {
                json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": o.get("metadata")})
            };
            json!({"cells": cells(resource.kind, o), "object": object})
        })
        .collect();
    let mut meta = json!({});
    if let Some(rv) = rv {
        meta["resourceVersion"] = json!(rv.to_string());
    }
    json!({"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": meta, "columnDefinitions": defs, "rows": rows})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_like_kubectls() {
        assert_eq!(human(45), "45s");
        assert_eq!(human(200), "3m20s");
        assert_eq!(human(3600), "60m");
        assert_eq!(human(5 * 3600 + 120), "5h2m");
        assert_eq!(human(30 * 3600), "30h");
        assert_eq!(human(3 * 86_400 + 4 * 3600), "3d4h");
        assert_eq!(human(60 * 86_400), "60d");
    }

    #[test]
    fn service_and_csr_rows() {
        let svc = json!({"metadata": {"name": "web"}, "spec": {"type": "ClusterIP", "clusterIP": "10.96.0.10",
            "ports": [{"port": 80, "protocol": "TCP"}, {"port": 53, "protocol": "UDP"}], "selector": {"app": "web"}}});
        let c = cells("Service", &svc);
        assert_eq!(
            &c[..5],
            &[
                json!("web"),
                json!("ClusterIP"),
                json!("10.96.0.10"),
                json!("<none>"),
                json!("80/TCP,53/UDP")
            ]
        );
        let csr = json!({"metadata": {"name": "x"}, "spec": {"signerName": "s", "username": "u"},
            "status": {"conditions": [{"type": "Approved"}], "certificate": "Zm9v"}});
        assert_eq!(
            cells("CertificateSigningRequest", &csr)[5],
            json!("Approved,Issued")
        );
    }
}
