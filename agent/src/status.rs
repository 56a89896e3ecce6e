//! `sluice status`: the Services, backends and counters, from the pins.

use std::{collections::BTreeMap, fmt::Write as _, path::Path};

use sluice_abi::{
    proto,
    service::{SVC_FLAG_MARKER, ServiceKey},
    stats::{DropReason, Event, TrafficStats},
};

use crate::dataplane::{
    Error,
    maps::{Maps, sum_counter, sum_stats},
};

fn proto_name(p: u8) -> &'static str {
    match p {
        proto::TCP => "TCP",
        proto::UDP => "UDP",
        _ => "?",
    }
}

fn frontend(k: ServiceKey) -> String {
    format!("{}:{}/{}", k.addr(), k.port(), proto_name(k.proto))
}

/// Renders the status table.
pub fn render(pin_dir: &Path) -> Result<String, Error> {
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

    let mut out = String::new();
    let row = |out: &mut String, a: &str, b: &str, c: &str, s: TrafficStats| {
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
    for (key, value) in &services {
        let name = names.get(&value.id).map_or("?", String::as_str);
        row(
            &mut out,
            name,
            &frontend(*key),
            &value.count.to_string(),
            svc_stats(value.id),
        );
        let mut backends = slots.remove(&value.id).unwrap_or_default();
        backends.sort_by_key(|(slot, _)| *slot);
        for (slot, b) in backends {
            let label = format!("  -> {}:{}", b.addr(), b.port());
            row(&mut out, "", &label, &format!("#{slot}"), be_stats(b.id));
        }
    }
    let markers = maps
        .services
        .keys()
        .filter_map(Result::ok)
        .filter(ServiceKey::is_marker)
        .count();
    let conntrack = maps.conntrack.keys().filter_map(Result::ok).count();
    let _ = writeln!(
        out,
        "\nClusterIPs: {markers}   conntrack entries: {conntrack}"
    );
    let _ = write!(out, "drops:");
    for reason in DropReason::ALL {
        let n = maps
            .drops
            .get(&(*reason as u32), 0)
            .map(|v| sum_counter(&v))
            .unwrap_or_default();
        let _ = write!(out, " {}={n}", reason.label());
    }
    let _ = write!(out, "\nevents:");
    for event in Event::ALL {
        let n = maps
            .events
            .get(&(*event as u32), 0)
            .map(|v| sum_counter(&v))
            .unwrap_or_default();
        let _ = write!(out, " {}={n}", event.label());
    }
    out.push('\n');
    Ok(out)
}
