//! The EndpointSlice controller: for every Service with a selector, slices
//! of at most 100 endpoints made from the matching Pods, as
//! kube-controller-manager's. Services without a selector keep the slices
//! users write. A slice changed by a Pod or Service change carries the
//! time that change was seen (`endpoints.kubernetes.io/last-change-trigger-time`),
//! from which proxies measure their programming latency. Each endpoint
//! carries its node's zone (`topology.kubernetes.io/zone`), and, for a
//! Service with `trafficDistribution`, its hints: `PreferClose` and
//! `PreferSameZone` hint each endpoint for its own zone, `PreferSameNode`
//! for its own node and zone; when an endpoint has no zone, no endpoint
//! gets zone hints.

use std::{collections::BTreeMap, sync::Arc};

use serde_json::{Value, json};

use super::{Controller, create, delete, str_at, update};
use crate::{App, selectors::Selector, store::Event};

const MANAGED_BY: &str = "endpointslice.kubernetes.io/managed-by";
const CONTROLLER: &str = "endpointslice-controller.k8s.io";
const SERVICE_NAME: &str = "kubernetes.io/service-name";
const MAX_ENDPOINTS: usize = 100;
const TRIGGER_TIME: &str = "endpoints.kubernetes.io/last-change-trigger-time";

pub struct EndpointSlices;

impl Controller for EndpointSlices {
    fn name(&self) -> &'static str {
        "endpointslice"
    }

    fn resync(&mut self, app: &Arc<App>) {
        let (services, _) = app.store.list("core/services/");
        for svc in services {
            sync(
                app,
                str_at(&svc, "/metadata/namespace"),
                str_at(&svc, "/metadata/name"),
                None,
            );
        }
    }

    fn on_event(&mut self, app: &Arc<App>, e: &Event) {
        let ns = str_at(&e.object, "/metadata/namespace");
        // When the change that may move endpoints was seen.
        let trigger = time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .ok();
        if e.key.starts_with("core/services/") {
            // A Service that had no selector before and has none now has
            // no managed slices: skip the scan of the namespace's slices.
            if has_selector(&e.object) || e.prev.as_deref().is_some_and(has_selector) {
                sync(
                    app,
                    ns,
                    str_at(&e.object, "/metadata/name"),
                    trigger.as_deref(),
                );
            }
        } else if e.key.starts_with("core/pods/") {
            // The Services this Pod matches, before or after the change.
            let (services, _) = app.store.list(&format!("core/services/{ns}/"));
            for svc in services {
                let Some(selector) = svc
                    .pointer("/spec/selector")
                    .and_then(Value::as_object)
                    .filter(|s| !s.is_empty())
                else {
                    continue;
                };
                let sel = Selector::from_map(selector);
                if sel.matches_labels(&e.object)
                    || e.prev.as_deref().is_some_and(|p| sel.matches_labels(p))
                {
                    sync(app, ns, str_at(&svc, "/metadata/name"), trigger.as_deref());
                }
            }
        }
    }
}

/// The hints `trafficDistribution` asks for, as kube-controller-manager
/// writes them.
fn hint(distribution: &str, endpoints: &mut [Value]) {
    let (zones, nodes) = match distribution {
        "PreferClose" | "PreferSameZone" => (true, false),
        "PreferSameNode" => (true, true),
        _ => return,
    };
    let every_zone = endpoints.iter().all(|e| e.get("zone").is_some());
    for e in endpoints.iter_mut() {
        let mut hints = serde_json::Map::new();
        if zones
            && every_zone
            && let Some(zone) = e.get("zone").cloned()
        {
            hints.insert("forZones".into(), json!([{"name": zone}]));
        }
        if nodes && let Some(node) = e.get("nodeName").cloned() {
            hints.insert("forNodes".into(), json!([{"name": node}]));
        }
        if !hints.is_empty() {
            e["hints"] = Value::Object(hints);
        }
    }
}

/// One slice's content: its address type, ports and endpoints.
type Slice = (&'static str, Vec<Value>, Vec<Value>);
type PortsAndEndpoints = (Vec<Value>, Vec<Value>);

/// The Service's families, the primary first (`IPv4` when unset).
fn service_families(svc: &Value) -> Vec<&'static str> {
    svc.pointer("/spec/ipFamilies")
        .and_then(Value::as_array)
        .map(|fs| {
            fs.iter()
                .filter_map(|f| match f.as_str() {
                    Some("IPv6") => Some("IPv6"),
                    Some("IPv4") => Some("IPv4"),
                    _ => None,
                })
                .collect()
        })
        .filter(|fs: &Vec<&str>| !fs.is_empty())
        .unwrap_or_else(|| vec!["IPv4"])
}

/// The endpoint of `pod` at `ip` for Service `service`: conditions, the
/// pod, its node and zone, and its hostname under the Service's subdomain.
fn endpoint(
    app: &Arc<App>,
    pod: &Value,
    ip: &str,
    service: &str,
    publish_not_ready: bool,
) -> Value {
    let terminating = pod
        .pointer("/metadata/deletionTimestamp")
        .is_some_and(|d| !d.is_null());
    let serving = pod_ready(pod) || publish_not_ready;
    let mut endpoint = json!({
        "addresses": [ip],
        "conditions": {"ready": serving && !terminating, "serving": serving, "terminating": terminating},
        "targetRef": {"kind": "Pod", "namespace": str_at(pod, "/metadata/namespace"), "name": str_at(pod, "/metadata/name"), "uid": str_at(pod, "/metadata/uid")},
    });
    let node = str_at(pod, "/spec/nodeName");
    if !node.is_empty() {
        endpoint["nodeName"] = json!(node);
        let zone = app.store.get(&format!("core/nodes//{node}")).and_then(|n| {
            n.pointer("/metadata/labels/topology.kubernetes.io~1zone")
                .and_then(Value::as_str)
                .map(str::to_owned)
        });
        if let Some(zone) = zone {
            endpoint["zone"] = json!(zone);
        }
    }
    let hostname = str_at(pod, "/spec/hostname");
    if !hostname.is_empty() && str_at(pod, "/spec/subdomain") == service {
        endpoint["hostname"] = json!(hostname);
    }
    endpoint
}

/// The pod's address of `family` (`IPv4` or `IPv6`): from `status.podIPs`,
/// else `status.podIP`.
fn pod_ip<'a>(pod: &'a Value, family: &str) -> Option<&'a str> {
    let of_family = |ip: &&str| match ip.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V4(_)) => family == "IPv4",
        Ok(std::net::IpAddr::V6(_)) => family == "IPv6",
        Err(_) => false,
    };
    pod.pointer("/status/podIPs")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|p| p.get("ip").and_then(Value::as_str))
        .find(of_family)
        .or_else(|| Some(str_at(pod, "/status/podIP")).filter(of_family))
}

fn has_selector(svc: &Value) -> bool {
    svc.pointer("/spec/selector")
        .and_then(Value::as_object)
        .is_some_and(|s| !s.is_empty())
}

fn pod_ready(pod: &Value) -> bool {
    pod.pointer("/status/conditions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .any(|c| {
            c.get("type").and_then(Value::as_str) == Some("Ready")
                && c.get("status").and_then(Value::as_str) == Some("True")
        })
}

/// A Service port's target on one Pod: a number, or a container port name.
fn resolve_port(svc_port: &Value, pod: &Value) -> Option<i64> {
    let protocol = svc_port
        .get("protocol")
        .and_then(Value::as_str)
        .unwrap_or("TCP");
    match svc_port.get("targetPort") {
        Some(Value::Number(n)) => n.as_i64(),
        Some(Value::String(name)) => {
            if let Ok(n) = name.parse::<i64>() {
                return Some(n);
            }
            let containers = pod.pointer("/spec/containers").and_then(Value::as_array)?;
            containers
                .iter()
                .flat_map(|c| {
                    c.get("ports")
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                })
                .find_map(|p| {
                    let same_name = p.get("name").and_then(Value::as_str) == Some(name.as_str());
                    let same_proto =
                        p.get("protocol").and_then(Value::as_str).unwrap_or("TCP") == protocol;
                    (same_name && same_proto)
                        .then(|| p.get("containerPort").and_then(Value::as_i64))
                        .flatten()
                })
        }
        _ => svc_port.get("port").and_then(Value::as_i64),
    }
}

/// Writes Service `ns/name`'s slices; those that change carry `trigger`.
fn sync(app: &Arc<App>, ns: &str, name: &str, trigger: Option<&str>) {
    let svc = app.store.get(&format!("core/services/{ns}/{name}"));
    let selector = svc
        .as_ref()
        .and_then(|s| s.pointer("/spec/selector"))
        .and_then(Value::as_object)
        .filter(|s| !s.is_empty())
        .cloned();
    let (slices, _) = app
        .store
        .list(&format!("discovery.k8s.io/endpointslices/{ns}/"));
    let service_label = format!("/metadata/labels/{}", SERVICE_NAME.replace('/', "~1"));
    let managed_label = format!("/metadata/labels/{}", MANAGED_BY.replace('/', "~1"));
    let mut managed: Vec<Arc<Value>> = slices
        .into_iter()
        .filter(|s| str_at(s, &service_label) == name && str_at(s, &managed_label) == CONTROLLER)
        .collect();
    managed.sort_by_key(|s| str_at(s, "/metadata/name").to_owned());
    let (Some(svc), Some(selector)) = (svc, selector) else {
        // Deleted, or no selector any more: our slices go.
        for s in managed {
            delete(
                app,
                "discovery.k8s.io",
                "endpointslices",
                ns,
                str_at(&s, "/metadata/name"),
            );
        }
        return;
    };
    let desired = desired_slices(app, &svc, &Selector::from_map(&selector));
    let uid = str_at(&svc, "/metadata/uid").to_owned();
    for (i, (family, ports, endpoints)) in desired.iter().enumerate() {
        let content = |obj: &mut Value| {
            obj["addressType"] = json!(family);
            obj["ports"] = json!(ports);
            obj["endpoints"] = json!(endpoints);
        };
        match managed.get(i) {
            Some(existing) => {
                let slice_name = str_at(existing, "/metadata/name").to_owned();
                let result = update(
                    app,
                    ("discovery.k8s.io", "endpointslices", ns, &slice_name, None),
                    |obj| {
                        let before = obj.clone();
                        content(obj);
                        let changed = *obj != before;
                        if changed && let Some(t) = trigger {
                            obj["metadata"]["annotations"][TRIGGER_TIME] = json!(t);
                        }
                        changed
                    },
                );
                if let Err(e) = result {
                    tracing::warn!(service = name, "updating EndpointSlice {slice_name}: {e}");
                }
            }
            None => {
                let mut obj = json!({
                    "apiVersion": "discovery.k8s.io/v1",
                    "kind": "EndpointSlice",
                    "metadata": {
                        "generateName": format!("{name}-"),
                        "namespace": ns,
                        "labels": {SERVICE_NAME: name, MANAGED_BY: CONTROLLER},
                        "ownerReferences": [{"apiVersion": "v1", "kind": "Service", "name": name, "uid": uid,
                            "controller": true, "blockOwnerDeletion": true}],
                    },
                });
                content(&mut obj);
                if let Some(t) = trigger {
                    obj["metadata"]["annotations"] = json!({TRIGGER_TIME: t});
                }
                if let Err(e) = create(app, "discovery.k8s.io", "endpointslices", ns, obj) {
                    tracing::warn!(service = name, "creating an EndpointSlice: {e}");
                }
            }
        }
    }
    for extra in managed.iter().skip(desired.len()) {
        delete(
            app,
            "discovery.k8s.io",
            "endpointslices",
            ns,
            str_at(extra, "/metadata/name"),
        );
    }
}

/// Endpoints grouped by address family (one slice per family of the
/// Service's `ipFamilies`, from each pod's `podIPs`) and resolved port set,
/// in chunks of at most 100.
fn desired_slices(app: &Arc<App>, svc: &Value, selector: &Selector) -> Vec<Slice> {
    let ns = str_at(svc, "/metadata/namespace");
    let name = str_at(svc, "/metadata/name");
    let svc_ports: Vec<Value> = svc
        .pointer("/spec/ports")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let publish_not_ready = svc
        .pointer("/spec/publishNotReadyAddresses")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let families = service_families(svc);
    let (pods, _) = app.store.list(&format!("core/pods/{ns}/"));
    // (family, port set) → (ports, endpoints).
    let mut groups: BTreeMap<(&'static str, String), PortsAndEndpoints> = BTreeMap::new();
    for pod in pods.iter().filter(|p| selector.matches_labels(p)) {
        let phase = str_at(pod, "/status/phase");
        if matches!(phase, "Succeeded" | "Failed") {
            continue;
        }
        for family in &families {
            let Some(ip) = pod_ip(pod, family) else {
                continue;
            };
            let endpoint = endpoint(app, pod, ip, name, publish_not_ready);
            let ports: Vec<Value> = svc_ports
                .iter()
                .filter_map(|p| {
                    let port = resolve_port(p, pod)?;
                    let mut out = json!({
                        "name": p.get("name").and_then(Value::as_str).unwrap_or_default(),
                        "port": port,
                        "protocol": p.get("protocol").and_then(Value::as_str).unwrap_or("TCP"),
                    });
                    if let Some(app_protocol) = p.get("appProtocol") {
                        out["appProtocol"] = app_protocol.clone();
                    }
                    Some(out)
                })
                .collect();
            let key = serde_json::to_string(&ports).unwrap_or_default();
            groups
                .entry((family, key))
                .or_insert_with(|| (ports, Vec::new()))
                .1
                .push(endpoint);
        }
    }
    let distribution = str_at(svc, "/spec/trafficDistribution");
    for (_, endpoints) in groups.values_mut() {
        hint(distribution, endpoints);
    }
    let mut out = Vec::new();
    for ((family, _), (ports, mut endpoints)) in groups {
        endpoints.sort_by_key(|e| {
            e.pointer("/targetRef/name")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned()
        });
        for chunk in endpoints.chunks(MAX_ENDPOINTS) {
            out.push((family, ports.clone(), chunk.to_vec()));
        }
    }
    if out.is_empty() {
        // kube-controller-manager keeps one empty placeholder slice.
        out.push((families[0], Vec::new(), Vec::new()));
    }
    out
}
