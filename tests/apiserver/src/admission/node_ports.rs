//! NodePorts, as kube-apiserver's Service registry hands them out: every
//! port of a `NodePort` or `LoadBalancer` Service gets one from the range
//! (`--service-node-port-range`) unless it names its own, and a
//! `LoadBalancer` with `externalTrafficPolicy: Local` gets a
//! `healthCheckNodePort`. A port is never held twice; updates keep the
//! ports they do not change, and deletes free them.

use std::{collections::BTreeSet, sync::Mutex};

use serde_json::{Value, json};

/// The NodePort range and the ports taken in it.
pub struct PortAllocator {
    min: u16,
    max: u16,
    used: Mutex<BTreeSet<u16>>,
}

impl PortAllocator {
    /// `range` is `MIN-MAX`, as kube-apiserver's flag.
    pub fn new(range: &str) -> anyhow::Result<Self> {
        let (min, max) = range
            .split_once('-')
            .ok_or_else(|| anyhow::anyhow!("`{range}` is not a port range MIN-MAX"))?;
        let (min, max): (u16, u16) = (min.trim().parse()?, max.trim().parse()?);
        anyhow::ensure!(
            min > 0 && min <= max,
            "`{range}`: an empty or invalid port range"
        );
        Ok(Self {
            min,
            max,
            used: Mutex::new(BTreeSet::new()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeSet<u16>> {
        self.used
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn claim(&self, port: u16) -> Result<(), String> {
        if !(self.min..=self.max).contains(&port) {
            return Err(format!(
                "provided port is not in the valid range. The range of valid ports is {}-{}",
                self.min, self.max
            ));
        }
        if !self.lock().insert(port) {
            return Err("provided port is already allocated".into());
        }
        Ok(())
    }

    /// A random free port (kube-apiserver's allocator is random too).
    pub fn allocate(&self) -> Result<u16, String> {
        let mut used = self.lock();
        let size = u32::from(self.max - self.min) + 1;
        let start = rand::random::<u32>() % size;
        for i in 0..size {
            let Ok(port) = u16::try_from(u32::from(self.min) + (start + i) % size) else {
                continue;
            };
            if used.insert(port) {
                return Ok(port);
            }
        }
        Err("range is full".into())
    }

    pub fn release(&self, port: u16) {
        self.lock().remove(&port);
    }
}

/// The NodePorts a stored Service holds (its ports' and its health check's).
pub fn node_ports(svc: &Value) -> Vec<u16> {
    svc.pointer("/spec/ports")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|p| p.get("nodePort"))
        .chain(svc.pointer("/spec/healthCheckNodePort"))
        .filter_map(|v| u16::try_from(v.as_u64()?).ok())
        .filter(|p| *p != 0)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect()
}

/// Gives `svc` (already defaulted) its NodePorts: kept from `old` for a
/// port of the same number and protocol when it names none, claimed when
/// it names one `old` did not hold, allocated otherwise; `old`'s ports that
/// are no longer used are freed. On an error nothing changes.
pub fn assign(ports: &PortAllocator, svc: &mut Value, old: Option<&Value>) -> Result<(), String> {
    let kind = svc
        .pointer("/spec/type")
        .and_then(Value::as_str)
        .unwrap_or("ClusterIP")
        .to_owned();
    let wants_node_ports = matches!(kind.as_str(), "NodePort" | "LoadBalancer");
    let held: BTreeSet<u16> = old
        .map(node_ports)
        .unwrap_or_default()
        .into_iter()
        .collect();
    let mut taken = Vec::new();
    let result = assign_ports(ports, svc, old, wants_node_ports, &held, &mut taken);
    if result.is_err() {
        for p in taken {
            ports.release(p);
        }
        return result;
    }
    let now: BTreeSet<u16> = node_ports(svc).into_iter().collect();
    for p in held.difference(&now) {
        ports.release(*p);
    }
    Ok(())
}

fn assign_ports(
    ports: &PortAllocator,
    svc: &mut Value,
    old: Option<&Value>,
    wants_node_ports: bool,
    held: &BTreeSet<u16>,
    taken: &mut Vec<u16>,
) -> Result<(), String> {
    let as_port = |v: Option<&Value>| {
        v.and_then(Value::as_u64)
            .and_then(|n| u16::try_from(n).ok())
            .filter(|n| *n != 0)
    };
    let old_ports: Vec<Value> = old
        .and_then(|o| o.pointer("/spec/ports"))
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    // Which port each slot wants: (port index or None for the health
    // check, the port it names or keeps).
    let mut wanted: Vec<(Option<usize>, Option<u16>)> = Vec::new();
    let new_ports = svc
        .pointer("/spec/ports")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for (i, p) in new_ports.iter().enumerate() {
        let requested = as_port(p.get("nodePort"));
        if !wants_node_ports {
            if requested.is_some() {
                return Err(format!(
                    "spec.ports[{i}].nodePort: Forbidden: may not be used when `type` is 'ClusterIP'"
                ));
            }
            continue;
        }
        // kube-apiserver's patchAllocatedValues: an update that leaves the
        // nodePort out keeps the one it had.
        let kept = requested.or_else(|| {
            old_ports
                .iter()
                .find(|o| o.get("port") == p.get("port") && o.get("protocol") == p.get("protocol"))
                .and_then(|o| as_port(o.get("nodePort")))
                .filter(|n| held.contains(n))
        });
        wanted.push((Some(i), kept));
    }
    let spec = &svc["spec"];
    let local = spec.get("externalTrafficPolicy").and_then(Value::as_str) == Some("Local");
    let is_lb = spec.get("type").and_then(Value::as_str) == Some("LoadBalancer");
    let requested = as_port(spec.get("healthCheckNodePort"));
    if is_lb && local {
        let kept = requested.or_else(|| {
            as_port(old.and_then(|o| o.pointer("/spec/healthCheckNodePort")))
                .filter(|n| held.contains(n))
        });
        wanted.push((None, kept));
    } else if requested.is_some() {
        return Err("spec.healthCheckNodePort: Invalid value: may only be set when `type` is 'LoadBalancer' and `externalTrafficPolicy` is 'Local'".into());
    } else if let Some(o) = svc["spec"].as_object_mut() {
        o.remove("healthCheckNodePort");
    }
    let field = |slot: Option<usize>| {
        slot.map_or_else(
            || "spec.healthCheckNodePort".to_owned(),
            |i| format!("spec.ports[{i}].nodePort"),
        )
    };
    // Named ports first, as kube-apiserver: an allocation must not take
    // a port another slot of the same Service asks for.
    for &(slot, want) in &wanted {
        if let Some(p) = want
            && !held.contains(&p)
        {
            ports
                .claim(p)
                .map_err(|e| format!("{}: Invalid value: {p}: {e}", field(slot)))?;
            taken.push(p);
        }
    }
    for (slot, want) in wanted {
        let port = match want {
            Some(p) => p,
            None => {
                let p = ports.allocate().map_err(|e| {
                    format!(
                        "{}: Internal error: failed to allocate a nodePort: {e}",
                        field(slot)
                    )
                })?;
                taken.push(p);
                p
            }
        };
        let target = match slot {
            Some(i) => svc.pointer_mut(&format!("/spec/ports/{i}")),
            None => svc.pointer_mut("/spec"),
        };
        let key = if slot.is_some() {
            "nodePort"
        } else {
            "healthCheckNodePort"
        };
        if let Some(Value::Object(o)) = target {
            o.insert(key.to_owned(), json!(port));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]

    use super::*;

    fn svc(kind: &str, ports: &Value) -> Value {
        json!({"metadata": {"name": "web"}, "spec": {"type": kind, "ports": ports}})
    }

    #[test]
    fn named_node_ports_are_claimed_before_others_are_allocated() {
        // A random allocation must never take the port a later slot names.
        for _ in 0..50 {
            let a = PortAllocator::new("30000-30001").unwrap();
            let mut s = svc(
                "NodePort",
                &json!([{"port": 80, "protocol": "TCP"}, {"port": 81, "protocol": "TCP", "nodePort": 30001}]),
            );
            assign(&a, &mut s, None).unwrap();
            assert_eq!(s["spec"]["ports"][0]["nodePort"], 30000);
        }
    }

    #[test]
    fn node_ports_are_allocated_kept_claimed_and_freed() {
        let a = PortAllocator::new("30000-30002").unwrap();
        let mut s = svc(
            "NodePort",
            &json!([{"port": 80, "protocol": "TCP"}, {"port": 81, "protocol": "TCP", "nodePort": 30001}]),
        );
        assign(&a, &mut s, None).unwrap();
        let first = s["spec"]["ports"][0]["nodePort"].as_u64().unwrap();
        assert!(first == 30000 || first == 30002, "{first}");
        assert_eq!(s["spec"]["ports"][1]["nodePort"], 30001);
        // The range is now held but for one port; a second Service naming
        // a held one is refused, and nothing it took stays taken.
        let mut other = svc(
            "NodePort",
            &json!([{"port": 1, "protocol": "UDP"}, {"port": 2, "protocol": "TCP", "nodePort": 30001}]),
        );
        let e = assign(&a, &mut other, None).unwrap_err();
        assert!(
            e.contains("spec.ports[1].nodePort") && e.contains("already allocated"),
            "{e}"
        );
        let free = a.allocate().unwrap();
        assert!(u64::from(free) != first && free != 30001);
        a.release(free);

        // An update that leaves nodePort out keeps it; one that drops a
        // port frees its nodePort.
        let old = s.clone();
        let mut new = svc("NodePort", &json!([{"port": 80, "protocol": "TCP"}]));
        assign(&a, &mut new, Some(&old)).unwrap();
        assert_eq!(new["spec"]["ports"][0]["nodePort"].as_u64(), Some(first));
        a.claim(30001).unwrap();

        // Back to ClusterIP: every nodePort is freed; naming one is refused.
        let old = new.clone();
        let mut cip = svc("ClusterIP", &json!([{"port": 80, "protocol": "TCP"}]));
        assign(&a, &mut cip, Some(&old)).unwrap();
        a.claim(u16::try_from(first).unwrap()).unwrap();
        let mut bad = svc("ClusterIP", &json!([{"port": 80, "nodePort": 30005}]));
        assert!(
            assign(&a, &mut bad, None)
                .unwrap_err()
                .contains("Forbidden")
        );
        assert!(a.claim(32000).unwrap_err().contains("valid range"));
    }

    #[test]
    fn a_local_load_balancer_gets_a_health_check_node_port() {
        let a = PortAllocator::new("30000-32767").unwrap();
        let mut s = svc("LoadBalancer", &json!([{"port": 80, "protocol": "TCP"}]));
        s["spec"]["externalTrafficPolicy"] = json!("Local");
        assign(&a, &mut s, None).unwrap();
        let hc = s["spec"]["healthCheckNodePort"].as_u64().unwrap();
        assert_ne!(Some(hc), s["spec"]["ports"][0]["nodePort"].as_u64());
        let held = node_ports(&s);
        assert_eq!(held.len(), 2, "{held:?}");
        let mut cluster = svc("NodePort", &json!([{"port": 80, "protocol": "TCP"}]));
        cluster["spec"]["healthCheckNodePort"] = json!(31000);
        assert!(assign(&a, &mut cluster, None).is_err());
    }
}
