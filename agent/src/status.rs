//! `sluice status`: the Services, backends and counters, from the pins.

use std::{collections::BTreeMap, fmt::Write as _, path::Path};

use sluice_abi::{
    proto,
    service::{SVC_FLAG_MARKER, ServiceValue},
    stats::{DropReason, Event, TrafficStats},
};

use crate::{
    dataplane::{
        Error,
        conntrack::{Census, Conntrack},
        maps::{Maps, sum_stats},
    },
    frontend::{BackendRef, FrontendKey, HostPort},
    plan::capacity::Resource,
};

mod metrics;
pub use metrics::{Counters, PerService, node_metrics, service_metrics};

fn proto_name(p: u8) -> &'static str {
    match p {
        proto::TCP => "TCP",
        proto::UDP => "UDP",
        _ => "?",
    }
}

/// `10.96.0.10:80/TCP` or `[fd00:96::a]:80/TCP`; a NodePort (every node
/// address of its family) is `<node>:30080/TCP` or `[<node>]:30080/TCP`,
/// and a frontend's local-endpoints scope (the `externalTrafficPolicy:
/// Local` entry) has ` (local)` after it.
pub fn frontend(k: FrontendKey) -> String {
    let at = match (k.is_node_port(), k.is_ipv6()) {
        (true, false) => format!("<node>:{}", k.port),
        (true, true) => format!("[<node>]:{}", k.port),
        (false, _) => HostPort(k.addr, k.port).to_string(),
    };
    let scope = if k.scope == sluice_abi::service::SCOPE_LOCAL {
        " (local)"
    } else {
        ""
    };
    format!("{at}/{}{scope}", proto_name(k.proto))
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
    /// What its flags ask for (`flag_words`); empty for a plain ClusterIP.
    pub flags: String,
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
#[derive(Debug, Default, serde::Serialize)]
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
    let mut slots: BTreeMap<u32, Vec<(u32, BackendRef)>> = BTreeMap::new();
    for (k, b) in maps.slots.iter().filter_map(Result::ok) {
        slots
            .entry(k.service_id)
            .or_default()
            .push((k.slot, b.into()));
    }
    for (k, b) in maps.slots6.iter().filter_map(Result::ok) {
        slots
            .entry(k.service_id)
            .or_default()
            .push((k.slot, b.into()));
    }
    let all: Vec<(FrontendKey, ServiceValue)> = maps
        .services
        .iter()
        .filter_map(Result::ok)
        .map(|(k, v)| (k.into(), v))
        .chain(
            maps.services6
                .iter()
                .filter_map(Result::ok)
                .map(|(k, v)| (k.into(), v)),
        )
        .collect();
    let cluster_ips = all.iter().filter(|(k, _)| k.is_marker()).count();
    let services = all
        .into_iter()
        .filter(|(_, v)| v.flags & SVC_FLAG_MARKER == 0);
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
    let rows = service_rows(
        services,
        |id| names.get(&id).cloned(),
        slots,
        |v| flag_words(v.flags),
        |id| svc_stats(id).into(),
        |id| be_stats(id).into(),
    );
    let mut refused: Vec<RefusedRow> = maps
        .refused_claims()
        .into_iter()
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

/// What a frontend's flags ask for, in words: `affinity`, `source-ranges`,
/// `external` (reachable from outside), `external-local`
/// (`externalTrafficPolicy: Local`) and `maglev`.
pub fn flag_list(flags: u16) -> impl Iterator<Item = &'static str> {
    use sluice_abi::service::{
        SVC_FLAG_AFFINITY, SVC_FLAG_EXT_LOCAL, SVC_FLAG_EXTERNAL, SVC_FLAG_MAGLEV,
        SVC_FLAG_SOURCE_RANGES,
    };
    [
        (SVC_FLAG_AFFINITY, "affinity"),
        (SVC_FLAG_SOURCE_RANGES, "source-ranges"),
        (SVC_FLAG_EXTERNAL, "external"),
        (SVC_FLAG_EXT_LOCAL, "external-local"),
        (SVC_FLAG_MAGLEV, "maglev"),
    ]
    .into_iter()
    .filter(move |(bit, _)| flags & bit != 0)
    .map(|(_, word)| word)
}

/// `flag_list`, space-separated.
pub fn flag_words(flags: u16) -> String {
    flag_list(flags).collect::<Vec<_>>().join(" ")
}

/// One row per frontend (ClusterIP markers left out by the caller), in
/// Service-name then frontend order, with its backends in slot order:
/// the rows of `sluice status` from the pinned maps, and of the golden
/// cases' dumps from the simulated ones, with a frontend id's and a
/// backend id's counters.
pub fn service_rows(
    frontends: impl IntoIterator<Item = (FrontendKey, ServiceValue)>,
    name: impl Fn(u32) -> Option<String>,
    mut slots: BTreeMap<u32, Vec<(u32, BackendRef)>>,
    flags: impl Fn(&ServiceValue) -> String,
    frontend_traffic: impl Fn(u32) -> Traffic,
    backend_traffic: impl Fn(u32) -> Traffic,
) -> Vec<ServiceRow> {
    let mut frontends: Vec<(FrontendKey, ServiceValue, Option<String>)> = frontends
        .into_iter()
        .map(|(k, v)| (k, v, name(v.id)))
        .collect();
    frontends.sort_by(|a, b| a.2.cmp(&b.2).then(a.0.cmp(&b.0)));
    frontends
        .into_iter()
        .map(|(key, value, name)| {
            let mut backends = slots.remove(&value.id).unwrap_or_default();
            backends.sort_by_key(|(slot, _)| *slot);
            ServiceRow {
                name: name.unwrap_or_else(|| "?".into()),
                frontend: frontend(key),
                slots: u32::from(value.count),
                flags: flags(&value),
                traffic: frontend_traffic(value.id),
                backends: backends
                    .into_iter()
                    .map(|(slot, b)| BackendRow {
                        slot,
                        address: HostPort(b.addr, b.port).to_string(),
                        traffic: backend_traffic(b.id),
                    })
                    .collect(),
            }
        })
        .collect()
}

/// The table of frontends, their flags and their backends, and the refused
/// claims, as `sluice status` prints them; without `traffic`, no counters
/// (the golden cases' dumps, `agent/tests/golden.rs`).
pub fn services_table(services: &[ServiceRow], refused: &[RefusedRow], traffic: bool) -> String {
    let mut out = String::new();
    let row = |out: &mut String, a: &str, b: &str, c: &str, s: Traffic| {
        let line = if traffic {
            format!(
                "{a:<32} {b:<24} {c:>8} {:>10} {:>12} {:>10}",
                s.packets, s.bytes, s.new_flows
            )
        } else {
            format!("{a:<32} {b:<24} {c:>8}")
        };
        let _ = writeln!(out, "{}", line.trim_end());
    };
    let header = if traffic {
        format!(
            "{:<32} {:<24} {:>8} {:>10} {:>12} {:>10}",
            "SERVICE", "FRONTEND / BACKEND", "SLOTS", "PACKETS", "BYTES", "NEW FLOWS"
        )
    } else {
        format!(
            "{:<32} {:<24} {:>8}",
            "SERVICE", "FRONTEND / BACKEND", "SLOTS"
        )
    };
    let _ = writeln!(out, "{header}");
    for svc in services {
        row(
            &mut out,
            &svc.name,
            &svc.frontend,
            &svc.slots.to_string(),
            svc.traffic,
        );
        if !svc.flags.is_empty() {
            let _ = writeln!(out, "{:<32}   {}", "", svc.flags);
        }
        for b in &svc.backends {
            let label = format!("  -> {}", b.address);
            row(&mut out, "", &label, &format!("#{}", b.slot), b.traffic);
        }
    }
    refused_table(&mut out, refused);
    out
}

/// The refused claims, if there are any.
fn refused_table(out: &mut String, refused: &[RefusedRow]) {
    if !refused.is_empty() {
        let _ = writeln!(
            out,
            "\n{:<32} {:<32} REFUSED\n(a ClusterIP belongs to its Service; of equal claims the oldest wins)",
            "REFUSED CLAIM ON", "HELD BY"
        );
        for r in refused {
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
}

/// Renders the status table.
pub fn render(pin_dir: &Path) -> Result<String, Error> {
    let snap = collect(pin_dir, None)?;
    let mut out = services_table(&snap.services, &snap.refused, true);
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
        "\n{:<18} {:<12} {:>9} {:>9} {:>6}  {:<44} {:>10} {:>10} {:>10}  FAMILY",
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
            "{:<18} {:<12} {:>9} {:>9} {:>5.1}%  {:<44} {:>10} {:>10} {:>10}  {}",
            m.table,
            m.map,
            m.entries,
            m.capacity,
            m.fill() * 100.0,
            states.join(" "),
            m.inserted,
            m.expired,
            m.evicted,
            m.family
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

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use sluice_abi::proto;

    use super::frontend;
    use crate::frontend::FrontendKey;

    #[test]
    fn frontends_name_node_ports_and_local_scopes() {
        let vip = FrontendKey::new(IpAddr::from([10, 96, 0, 10]), 80, proto::TCP);
        assert_eq!(frontend(vip), "10.96.0.10:80/TCP");
        let np = FrontendKey::node_port(30080, proto::UDP);
        assert_eq!(frontend(np), "<node>:30080/UDP");
        assert_eq!(frontend(np.local_scope()), "<node>:30080/UDP (local)");
    }
}
