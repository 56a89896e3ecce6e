//! The Prometheus text of the health port: the node's series (drops,
//! events, refused claims, conntrack; a fixed number, whatever the number of
//! Services) and, when asked, the series per Service frontend.

use std::{collections::BTreeMap, fmt::Write as _, path::Path};

use aya::maps::{MapData, PerCpuArray};
use sluice_abi::{
    maps as names,
    stats::{DropReason, Event},
};

use super::{Snapshot, Traffic};
use crate::dataplane::{Error, conntrack::Census, maps::counter};

/// The node-level counters: drops by reason and events.
#[derive(Debug, Default)]
pub struct Counters {
    pub drops: BTreeMap<&'static str, u64>,
    pub events: BTreeMap<&'static str, u64>,
}

impl Counters {
    pub(super) fn read(
        maps_drops: impl Fn(DropReason) -> u64,
        maps_events: impl Fn(Event) -> u64,
    ) -> Self {
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

/// Which frontends get series of their own in `/metrics`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PerService {
    /// None: node-level series only, as kube-proxy has (the default).
    #[default]
    Off,
    /// Every frontend (`--metrics-per-service true`).
    All,
    /// The N frontends with the most packets at each walk
    /// (`--metrics-per-service-top N`): bounded whatever the Services.
    Top(usize),
}

/// A per-Service counter: name, help, and its value.
type ServiceCounter = (&'static str, &'static str, fn(&Traffic) -> u64);

/// Prometheus text per Service frontend (`--metrics-per-service`): traffic
/// and refused claims; with `top`, only the `top` frontends with the most
/// packets (ties by name), and every refused claim.
pub fn service_metrics(snap: &Snapshot, top: Option<usize>) -> String {
    let mut out = String::new();
    let mut services: Vec<_> = snap.services.iter().collect();
    if let Some(top) = top {
        services.sort_by(|a, b| {
            b.traffic
                .packets
                .cmp(&a.traffic.packets)
                .then_with(|| (&a.name, &a.frontend).cmp(&(&b.name, &b.frontend)))
        });
        services.truncate(top);
    }
    let per_service: [ServiceCounter; 3] = [
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
        for svc in &services {
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
        "Conntrack entries (two per flow), by table, map, state and IP family.",
    );
    for m in &c.maps {
        for (state, n) in m.states() {
            let _ = writeln!(
                out,
                "sluice_conntrack_entries{{table=\"{}\",map=\"{}\",state=\"{state}\",family=\"{}\"}} {n}",
                m.table, m.map, m.family
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
                "sluice_conntrack_{name}{{table=\"{}\",map=\"{}\",family=\"{}\"}} {}",
                m.table,
                m.map,
                m.family,
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
    use super::*;
    use crate::status::ServiceRow;

    fn row(name: &str, packets: u64) -> ServiceRow {
        ServiceRow {
            name: format!("default/{name}:http"),
            frontend: format!("10.96.0.{}:80/TCP", name.len()),
            slots: 1,
            flags: String::new(),
            traffic: Traffic {
                packets,
                bytes: packets * 100,
                new_flows: 1,
            },
            backends: Vec::new(),
        }
    }

    fn named(text: &str) -> Vec<&str> {
        text.lines()
            .filter(|l| l.starts_with("sluice_service_packets_total{"))
            .filter_map(|l| l.split('"').nth(1))
            .collect()
    }

    #[test]
    fn top_n_keeps_the_busiest_frontends_and_all_keeps_every_one() {
        let snap = Snapshot {
            services: vec![row("a", 5), row("bb", 50), row("ccc", 0), row("dddd", 500)],
            ..Snapshot::default()
        };
        assert_eq!(
            named(&service_metrics(&snap, Some(2))),
            ["default/dddd:http", "default/bb:http"]
        );
        assert_eq!(named(&service_metrics(&snap, None)).len(), 4);
        assert_eq!(named(&service_metrics(&snap, Some(10))).len(), 4);
    }
}
