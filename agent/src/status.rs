//! `sluice status`: the Services, backends and counters, from the pins.

use std::{collections::BTreeMap, fmt::Write as _, path::Path};

use aya::maps::{MapData, PerCpuArray};
use sluice_abi::{
    maps as names, proto,
    service::{SVC_FLAG_MARKER, ServiceKey},
    stats::{DropReason, Event, TrafficStats},
};

use crate::{
    dataplane::{
        Error,
        conntrack::{Census, Conntrack},
        maps::{Maps, counter, sum_stats},
    },
    plan::capacity::Resource,
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
pub(crate) fn frontend(k: ServiceKey) -> String {
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

/// A frontend with claims that another Service's holds refused.
#[derive(Debug, serde::Serialize)]
pub struct RefusedRow {
    pub frontend: String,
    /// The Service holding it.
    pub owner: String,
    /// The strongest refused claim, and how many there are.
    pub claimant: String,
    pub claimants: u32,
}

/// What the pinned maps hold now.
#[derive(Debug, serde::Serialize)]
pub struct Snapshot {
    pub services: Vec<ServiceRow>,
    pub refused: Vec<RefusedRow>,
    pub cluster_ips: usize,
    pub conntrack: Census,
    pub drops: BTreeMap<&'static str, u64>,
    pub events: BTreeMap<&'static str, u64>,
    /// Entries and size of the maps Services fill.
    pub maps: Vec<MapRow>,
}

#[derive(Debug, serde::Serialize)]
pub struct MapRow {
    pub map: &'static str,
    pub entries: usize,
    /// The map's size, with the headroom for changes in flight.
    pub size: u32,
}

/// Reads the pinned maps; conntrack from `conntrack` (the agent's
/// collector's latest census) or, without it, from a census of the maps.
pub fn collect(pin_dir: &Path, conntrack: Option<Census>) -> Result<Snapshot, Error> {
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
    let rows: Vec<ServiceRow> = services
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
    let mut refused: Vec<RefusedRow> = maps
        .refused
        .iter()
        .filter_map(Result::ok)
        .map(|(key, r)| RefusedRow {
            frontend: frontend(key),
            owner: r.owner.as_str().to_owned(),
            claimant: r.claimant.as_str().to_owned(),
            claimants: r.claimants,
        })
        .collect();
    refused.sort_by(|a, b| a.frontend.cmp(&b.frontend));
    let conntrack = match conntrack {
        Some(c) => c,
        None => Conntrack::open_pinned(pin_dir)?.census(),
    };
    let counters = Counters::read(|r| maps.drop_count(r), |e| maps.event_count(e));
    let map_rows = map_rows(&maps, &rows, cluster_ips);
    Ok(Snapshot {
        services: rows,
        refused,
        cluster_ips,
        conntrack,
        drops: counters.drops,
        events: counters.events,
        maps: map_rows,
    })
}

/// The maps Services fill: entries, and size.
fn map_rows(maps: &Maps, rows: &[ServiceRow], cluster_ips: usize) -> Vec<MapRow> {
    let size = |r| maps.max_entries(r).unwrap_or_default();
    vec![
        MapRow {
            map: Resource::Frontends.map(),
            entries: rows.len() + cluster_ips,
            size: size(Resource::Frontends),
        },
        MapRow {
            map: Resource::Backends.map(),
            entries: rows.iter().map(|r| r.backends.len()).sum(),
            size: size(Resource::Backends),
        },
    ]
}

/// Renders the status table.
pub fn render(pin_dir: &Path) -> Result<String, Error> {
    let snap = collect(pin_dir, None)?;
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
    if !snap.refused.is_empty() {
        let _ = writeln!(
            out,
            "\n{:<32} {:<32} {:<32}\n(a ClusterIP belongs to its Service; of equal claims the oldest wins)",
            "REFUSED CLAIM ON", "HELD BY", "REFUSED"
        );
        for r in &snap.refused {
            let more = if r.claimants > 1 {
                format!(" (+{})", r.claimants - 1)
            } else {
                String::new()
            };
            let _ = writeln!(
                out,
                "{:<32} {:<32} {}{more}",
                r.frontend, r.owner, r.claimant
            );
        }
    }
    let path = crate::dataplane::pinned_path(pin_dir).map_or("none attached", |p| p.name());
    let _ = writeln!(out, "\nTC attach path: {path}");
    let _ = writeln!(
        out,
        "ClusterIPs: {}   conntrack entries: {}",
        snap.cluster_ips,
        snap.conntrack.entries()
    );
    let _ = write!(out, "maps:");
    for m in &snap.maps {
        let _ = write!(out, " {} {}/{}", m.map, m.entries, m.size);
    }
    out.push('\n');
    render_conntrack(&mut out, &snap.conntrack);
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

/// The Services the agent at `health` left out of the maps, from its
/// `/readyz`; empty when none are (or the agent does not answer).
pub fn left_out(health: std::net::SocketAddr) -> String {
    use std::io::{Read as _, Write as _};
    let timeout = std::time::Duration::from_secs(1);
    let answer = (|| -> std::io::Result<String> {
        let mut s = std::net::TcpStream::connect_timeout(&health, timeout)?;
        s.set_read_timeout(Some(timeout))?;
        s.write_all(b"GET /readyz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")?;
        let mut out = String::new();
        s.take(1 << 20).read_to_string(&mut out)?;
        Ok(out)
    })();
    let Ok(answer) = answer else {
        return String::new();
    };
    let body = answer.split("\r\n\r\n").nth(1).unwrap_or_default();
    let Ok(v) = serde_json::from_str::<serde_json::Value>(body) else {
        return String::new();
    };
    let Some(list) = v.pointer("/capacity/leftOut").and_then(|l| l.as_array()) else {
        return String::new();
    };
    let mut out = format!(
        "\nLEFT OUT (they do not fit in the maps; the oldest Services are kept): {}\n",
        list.len()
    );
    for l in list {
        let service = l.get("service").and_then(|s| s.as_str()).unwrap_or("?");
        let map = l.get("map").and_then(|s| s.as_str()).unwrap_or("?");
        let _ = writeln!(out, "{service:<48} {map}");
    }
    out
}

/// The conntrack maps: fill, entries by state, and what became of entries.
fn render_conntrack(out: &mut String, c: &Census) {
    let _ = writeln!(
        out,
        "\n{:<18} {:<12} {:>9} {:>9} {:>6}  {:<44} {:>10} {:>10} {:>10}",
        "CONNTRACK",
        "MAP",
        "ENTRIES",
        "CAPACITY",
        "FILL",
        "BY STATE",
        "INSERTED",
        "EXPIRED",
        "EVICTED"
    );
    for m in &c.maps {
        let states: Vec<String> = m
            .states()
            .filter(|(_, n)| *n > 0)
            .map(|(l, n)| format!("{l}={n}"))
            .collect();
        let _ = writeln!(
            out,
            "{:<18} {:<12} {:>9} {:>9} {:>5.1}%  {:<44} {:>10} {:>10} {:>10}",
            m.table,
            m.map,
            m.entries,
            m.capacity,
            m.fill() * 100.0,
            states.join(" "),
            m.inserted,
            m.expired,
            m.evicted
        );
    }
    if let Some(p) = &c.pass {
        let _ = writeln!(
            out,
            "last collection: {} entries read, {} expired, {:.1} ms",
            p.visited,
            p.removed,
            p.seconds * 1000.0
        );
    }
}

/// `counts` in the order of `labels` (the ABI's order, not the alphabet).
fn ordered<'a>(
    counts: &'a BTreeMap<&'static str, u64>,
    labels: impl Iterator<Item = &'static str> + 'a,
) -> impl Iterator<Item = (&'static str, u64)> + 'a {
    labels.map(|l| (l, counts.get(l).copied().unwrap_or(0)))
}

/// The node-level counters: drops by reason and events.
#[derive(Debug, Default)]
pub struct Counters {
    pub drops: BTreeMap<&'static str, u64>,
    pub events: BTreeMap<&'static str, u64>,
}

impl Counters {
    fn read(maps_drops: impl Fn(DropReason) -> u64, maps_events: impl Fn(Event) -> u64) -> Self {
        Self {
            drops: DropReason::ALL
                .iter()
                .map(|r| (r.label(), maps_drops(*r)))
                .collect(),
            events: Event::ALL
                .iter()
                .map(|e| (e.label(), maps_events(*e)))
                .collect(),
        }
    }

    /// From the two pinned per-CPU arrays alone: a fixed number of lookups,
    /// whatever the number of Services.
    pub fn from_pins(pin_dir: &Path) -> Result<Self, Error> {
        let open = |name: &'static str| -> Result<PerCpuArray<MapData, u64>, Error> {
            let data = crate::dataplane::open_pinned(pin_dir, name)?;
            PerCpuArray::try_from(aya::maps::Map::PerCpuArray(data)).map_err(|e| Error::Map {
                name,
                source: Box::new(e),
            })
        };
        let (drops, events) = (open(names::DROPS)?, open(names::EVENTS)?);
        Ok(Self::read(
            |r| counter(&drops, r as u32),
            |e| counter(&events, e as u32),
        ))
    }
}

/// Prometheus text of the node: drops by reason, events, the number of
/// frontends with refused claims, and conntrack. Its size does not grow
/// with the Services.
pub fn node_metrics(counters: &Counters, refused: usize, conntrack: &Census) -> String {
    let mut out = String::new();
    family(
        &mut out,
        "sluice_dataplane_drops_total",
        "counter",
        "Packets dropped in the kernel, by reason.",
    );
    for (reason, n) in &counters.drops {
        let _ = writeln!(
            out,
            "sluice_dataplane_drops_total{{reason=\"{reason}\"}} {n}"
        );
    }
    family(
        &mut out,
        "sluice_dataplane_events_total",
        "counter",
        "Dataplane events, by kind.",
    );
    for (event, n) in &counters.events {
        let _ = writeln!(
            out,
            "sluice_dataplane_events_total{{event=\"{event}\"}} {n}"
        );
    }
    family(
        &mut out,
        "sluice_frontends_refused",
        "gauge",
        "Frontends with claims refused because another Service holds them.",
    );
    let _ = writeln!(out, "sluice_frontends_refused {refused}");
    conntrack_metrics(&mut out, conntrack);
    out
}

/// A per-Service counter: name, help, and its value.
type PerService = (&'static str, &'static str, fn(&Traffic) -> u64);

/// Prometheus text per Service frontend (`--metrics-per-service`): traffic
/// and refused claims.
pub fn service_metrics(snap: &Snapshot) -> String {
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
        family(
            &mut out,
            &format!("sluice_service_{what}_total"),
            "counter",
            help,
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
    if !snap.refused.is_empty() {
        family(
            &mut out,
            "sluice_frontend_refused_claims",
            "gauge",
            "Claims refused on a frontend, with its holder and the strongest refused claim.",
        );
        for r in &snap.refused {
            let _ = writeln!(
                out,
                "sluice_frontend_refused_claims{{frontend=\"{}\",owner=\"{}\",claimant=\"{}\"}} {}",
                r.frontend, r.owner, r.claimant, r.claimants
            );
        }
    }
    out
}

/// A per-map conntrack series: name, type, help, and its value.
type PerMap = (
    &'static str,
    &'static str,
    &'static str,
    fn(&crate::dataplane::conntrack::MapCensus) -> f64,
);

#[expect(clippy::cast_precision_loss, reason = "metrics are floats")]
fn conntrack_metrics(out: &mut String, c: &Census) {
    family(
        out,
        "sluice_conntrack_entries",
        "gauge",
        "Conntrack entries (two per flow), by table, map and state.",
    );
    for m in &c.maps {
        for (state, n) in m.states() {
            let _ = writeln!(
                out,
                "sluice_conntrack_entries{{table=\"{}\",map=\"{}\",state=\"{state}\"}} {n}",
                m.table, m.map
            );
        }
    }
    let per_map: [PerMap; 6] = [
        (
            "capacity",
            "gauge",
            "Entries a conntrack map holds at most.",
            |m| f64::from(m.capacity),
        ),
        (
            "fill_ratio",
            "gauge",
            "Entries over capacity of a conntrack map.",
            |m| m.fill(),
        ),
        (
            "inserted_total",
            "counter",
            "Conntrack entries the dataplane created (new flows, and flows moved to the established map).",
            |m| m.inserted as f64,
        ),
        (
            "expired_total",
            "counter",
            "Conntrack entries the garbage collector removed, their lifetime over.",
            |m| m.expired as f64,
        ),
        (
            "evicted_total",
            "counter",
            "Conntrack entries of flows not yet established pushed out of a full new-flow map by newer ones.",
            |m| m.evicted as f64,
        ),
        (
            "removed_total",
            "counter",
            "Conntrack entries the dataplane removed (replaced flows, and flows moved to the established map).",
            |m| m.removed as f64,
        ),
    ];
    for (name, kind, help, value) in per_map {
        family(out, &format!("sluice_conntrack_{name}"), kind, help);
        for m in &c.maps {
            let _ = writeln!(
                out,
                "sluice_conntrack_{name}{{table=\"{}\",map=\"{}\"}} {}",
                m.table,
                m.map,
                value(m)
            );
        }
    }
    if let Some(p) = &c.pass {
        let name = "sluice_conntrack_gc_duration_seconds";
        family(
            out,
            name,
            "gauge",
            "How long the last conntrack garbage collection took.",
        );
        let _ = writeln!(out, "{name} {}", p.seconds);
        let name = "sluice_conntrack_gc_visited_entries";
        family(
            out,
            name,
            "gauge",
            "Entries the last conntrack garbage collection read.",
        );
        let _ = writeln!(out, "{name} {}", p.visited);
    }
}

/// The `# HELP` and `# TYPE` lines of a metric family.
fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
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
