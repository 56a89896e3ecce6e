//! `sluice status`: the Services, backends and counters, from the pins.

use std::{collections::BTreeMap, fmt::Write as _, path::Path};

use sluice_abi::{
    proto,
    service::{SVC_FLAG_MARKER, ServiceKey},
    stats::{DropReason, Event, TrafficStats},
};

use crate::dataplane::{
    Error,
    maps::{Maps, sum_stats},
};

fn proto_name(p: u8) -> &'static str {
    match p {
        proto::TCP => "TCP",
        proto::UDP => "UDP",
        _ => "?",
    }
}

/// `10.96.0.10:80/TCP`; a NodePort (every node address) is
/// `<node>:30080/TCP`, and a frontend's local-endpoints scope (the
/// `externalTrafficPolicy: Local` entry) has ` (local)` after it.
fn frontend(k: ServiceKey) -> String {
    let addr = if k.is_node_port() {
        "<node>".to_owned()
    } else {
        k.addr().to_string()
    };
    let scope = if k.scope == sluice_abi::service::SCOPE_LOCAL {
        " (local)"
    } else {
        ""
    };
    format!("{addr}:{}/{}{scope}", k.port(), proto_name(k.proto))
}

/// Traffic counters of a frontend or backend.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct Traffic {
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
}

impl From<TrafficStats> for Traffic {
    fn from(s: TrafficStats) -> Self {
        Self {
            packets: s.packets,
            bytes: s.bytes,
            new_flows: s.new_flows,
        }
    }
}

#[derive(Debug, serde::Serialize)]
pub struct BackendRow {
    pub slot: u32,
    pub address: String,
    pub traffic: Traffic,
}

#[derive(Debug, serde::Serialize)]
pub struct ServiceRow {
    /// `namespace/name:port`.
    pub name: String,
    /// `ClusterIP:port/PROTO`.
    pub frontend: String,
    pub slots: u32,
    pub traffic: Traffic,
    pub backends: Vec<BackendRow>,
}

/// What the pinned maps hold now.
#[derive(Debug, serde::Serialize)]
pub struct Snapshot {
    pub services: Vec<ServiceRow>,
    pub cluster_ips: usize,
    pub conntrack_entries: usize,
    pub drops: BTreeMap<&'static str, u64>,
    pub events: BTreeMap<&'static str, u64>,
}

/// Reads the pinned maps.
pub fn collect(pin_dir: &Path) -> Result<Snapshot, Error> {
    let maps = Maps::open_pinned(pin_dir)?;
    let names: BTreeMap<u32, String> = maps
        .names
        .iter()
        .filter_map(Result::ok)
        .map(|(id, n)| (id, n.as_str().to_owned()))
        .collect();
    let mut slots: BTreeMap<u32, Vec<(u32, sluice_abi::service::Backend)>> = BTreeMap::new();
    for (k, b) in maps.slots.iter().filter_map(Result::ok) {
        slots.entry(k.service_id).or_default().push((k.slot, b));
    }
    let mut services: Vec<_> = maps
        .services
        .iter()
        .filter_map(Result::ok)
        .filter(|(_, v)| v.flags & SVC_FLAG_MARKER == 0)
        .collect();
    services.sort_by(|a, b| {
        names
            .get(&a.1.id)
            .cmp(&names.get(&b.1.id))
            .then(a.0.cmp(&b.0))
    });
    let svc_stats = |id: u32| {
        maps.service_stats
            .get(&id, 0)
            .map(|v| sum_stats(&v))
            .unwrap_or_default()
    };
    let be_stats = |id: u32| {
        maps.backend_stats
            .get(&id, 0)
            .map(|v| sum_stats(&v))
            .unwrap_or_default()
    };
    let rows = services
        .iter()
        .map(|(key, value)| {
            let mut backends = slots.remove(&value.id).unwrap_or_default();
            backends.sort_by_key(|(slot, _)| *slot);
            ServiceRow {
                name: names.get(&value.id).cloned().unwrap_or_else(|| "?".into()),
                frontend: frontend(*key),
                slots: u32::from(value.count),
                traffic: svc_stats(value.id).into(),
                backends: backends
                    .into_iter()
                    .map(|(slot, b)| BackendRow {
                        slot,
                        address: format!("{}:{}", b.addr(), b.port()),
                        traffic: be_stats(b.id).into(),
                    })
                    .collect(),
            }
        })
        .collect();
    let cluster_ips = maps
        .services
        .keys()
        .filter_map(Result::ok)
        .filter(ServiceKey::is_marker)
        .count();
    let conntrack_entries = maps.conntrack.keys().filter_map(Result::ok).count();
    let drops = DropReason::ALL
        .iter()
        .map(|reason| (reason.label(), maps.drop_count(*reason)))
        .collect();
    let events = Event::ALL
        .iter()
        .map(|event| (event.label(), maps.event_count(*event)))
        .collect();
    Ok(Snapshot {
        services: rows,
        cluster_ips,
        conntrack_entries,
        drops,
        events,
    })
}

/// Renders the status table.
pub fn render(pin_dir: &Path) -> Result<String, Error> {
    let snap = collect(pin_dir)?;
    let mut out = String::new();
    let row = |out: &mut String, a: &str, b: &str, c: &str, s: Traffic| {
        let _ = writeln!(
            out,
            "{a:<32} {b:<24} {c:>8} {:>10} {:>12} {:>10}",
            s.packets, s.bytes, s.new_flows
        );
    };
    let _ = writeln!(
        out,
        "{:<32} {:<24} {:>8} {:>10} {:>12} {:>10}",
        "SERVICE", "FRONTEND / BACKEND", "SLOTS", "PACKETS", "BYTES", "NEW FLOWS"
    );
    for svc in &snap.services {
        row(
            &mut out,
            &svc.name,
            &svc.frontend,
            &svc.slots.to_string(),
            svc.traffic,
        );
        for b in &svc.backends {
            let label = format!("  -> {}", b.address);
            row(&mut out, "", &label, &format!("#{}", b.slot), b.traffic);
        }
    }
    let _ = writeln!(
        out,
        "\nClusterIPs: {}   conntrack entries: {}",
        snap.cluster_ips, snap.conntrack_entries
    );
    let _ = write!(out, "drops:");
    for (reason, n) in ordered(&snap.drops, DropReason::ALL.iter().map(|r| r.label())) {
        let _ = write!(out, " {reason}={n}");
    }
    let _ = write!(out, "\nevents:");
    for (event, n) in ordered(&snap.events, Event::ALL.iter().map(|e| e.label())) {
        let _ = write!(out, " {event}={n}");
    }
    out.push('\n');
    Ok(out)
}

/// `counts` in the order of `labels` (the ABI's order, not the alphabet).
fn ordered<'a>(
    counts: &'a BTreeMap<&'static str, u64>,
    labels: impl Iterator<Item = &'static str> + 'a,
) -> impl Iterator<Item = (&'static str, u64)> + 'a {
    labels.map(|l| (l, counts.get(l).copied().unwrap_or(0)))
}

/// A per-Service counter: name, help, and its value.
type PerService = (&'static str, &'static str, fn(&Traffic) -> u64);

/// Prometheus text: traffic per Service port, drops by reason, events.
pub fn metrics(snap: &Snapshot) -> String {
    let mut out = String::new();
    let per_service: [PerService; 3] = [
        ("packets", "Packets to a Service frontend.", |t| t.packets),
        ("bytes", "Bytes to a Service frontend.", |t| t.bytes),
        (
            "new_flows",
            "Flows a Service frontend load-balanced.",
            |t| t.new_flows,
        ),
    ];
    for (what, help, value) in per_service {
        let _ = writeln!(
            out,
            "# HELP sluice_service_{what}_total {help}\n# TYPE sluice_service_{what}_total counter"
        );
        for svc in &snap.services {
            let _ = writeln!(
                out,
                "sluice_service_{what}_total{{service=\"{}\",frontend=\"{}\"}} {}",
                svc.name,
                svc.frontend,
                value(&svc.traffic)
            );
        }
    }
    out.push_str("# HELP sluice_dataplane_drops_total Packets dropped in the kernel, by reason.\n# TYPE sluice_dataplane_drops_total counter\n");
    for (reason, n) in &snap.drops {
        let _ = writeln!(
            out,
            "sluice_dataplane_drops_total{{reason=\"{reason}\"}} {n}"
        );
    }
    out.push_str("# HELP sluice_dataplane_events_total Dataplane events, by kind.\n# TYPE sluice_dataplane_events_total counter\n");
    for (event, n) in &snap.events {
        let _ = writeln!(
            out,
            "sluice_dataplane_events_total{{event=\"{event}\"}} {n}"
        );
    }
    let _ = writeln!(
        out,
        "# HELP sluice_conntrack_entries Conntrack entries (two per flow).\n# TYPE sluice_conntrack_entries gauge\nsluice_conntrack_entries {}",
        snap.conntrack_entries
    );
    out
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use sluice_abi::{proto, service::ServiceKey};

    use super::frontend;

    #[test]
    fn frontends_name_node_ports_and_local_scopes() {
        let vip = ServiceKey::new(Ipv4Addr::new(10, 96, 0, 10), 80, proto::TCP);
        assert_eq!(frontend(vip), "10.96.0.10:80/TCP");
        let np = ServiceKey::node_port(30080, proto::UDP);
        assert_eq!(frontend(np), "<node>:30080/UDP");
        assert_eq!(frontend(np.local_scope()), "<node>:30080/UDP (local)");
    }
}
