//! Pinned maps across upgrades and downgrades. Each pinned map's layout has
//! a version (`sluice_abi::maps::layout_version`), stamped beside the pins
//! in `SLUICE_LAYOUT` (name → version) once this build's programs are
//! loaded. At the next start:
//! - a pin of this build's version, or an unstamped one (left by a build
//!   from before the stamps), whose key and value sizes, type and fixed
//!   size are this build's, is adopted: its entries, conntrack's flows
//!   among them, carry on;
//! - a pin of another version (a newer build's, after a downgrade, or an
//!   older one with no conversion), or of another shape, or a conntrack map
//!   of another size (`--conntrack-size`), is replaced: removed so that it
//!   is created anew, with a warning naming the entries lost, and counted
//!   (`Replaced`, shown as `sluice_pinned_map_replaced_total`).
//!
//! Layouts that changed by name (`names::LEGACY`) are converted where a
//! conversion exists (conntrack's `SLUICE_CT_V2`).

use std::{collections::BTreeMap, fs, os::fd::AsFd as _, path::Path};

use aya::maps::{HashMap, Map, MapData, MapType};
use sluice_abi::{
    affinity::{AffinityKey, AffinityValue},
    conntrack::{CT_COUNTERS, CT_TABLES, CT_TIER_NEW, CT_TIERS, CtEntry, CtEntry6, CtKey, CtKey6},
    maps as names,
    service::{
        Backend, Backend6, ExtIf, MaglevChunk, MaglevKey, NodeAddr, NodeAddr6, RefusedClaim,
        ServiceKey, ServiceKey6, ServiceName, ServiceValue, SlotKey, SourceRangeKey,
        SourceRangeKey6,
    },
    sock::{SockRevKey, SockRevKey6, SockRevValue, SockRevValue6},
    stats::{DropReason, Event, TrafficStats},
};

use super::{Error, batch};

/// A pinned map replaced at load: what it held is lost.
#[derive(Clone, Debug)]
pub struct Replaced {
    pub map: &'static str,
    /// Entries it held.
    pub entries: u64,
    pub why: String,
}

/// The stamp map's key: a map name, zero-padded.
type Name = [u8; 16];

fn stamp_key(name: &str) -> Name {
    let mut key = [0u8; 16];
    for (k, b) in key.iter_mut().zip(name.bytes()) {
        *k = b;
    }
    key
}

/// The versions stamped in `pin_dir`; `None` when nothing is stamped.
fn read_stamps(pin_dir: &Path) -> Option<BTreeMap<Name, u32>> {
    let data = MapData::from_pin(pin_dir.join(names::LAYOUT)).ok()?;
    let map: HashMap<MapData, Name, u32> = HashMap::try_from(Map::HashMap(data)).ok()?;
    Some(map.iter().filter_map(Result::ok).collect())
}

/// Writes this build's version of every pinned map into the loaded
/// `SLUICE_LAYOUT`.
pub fn stamp(map: Map) -> Result<(), Error> {
    let err = |e| Error::Map {
        name: names::LAYOUT,
        source: Box::new(e),
    };
    let mut stamps: HashMap<MapData, Name, u32> = HashMap::try_from(map).map_err(err)?;
    for name in names::PINNED {
        stamps
            .insert(stamp_key(name), names::layout_version(name), 0)
            .map_err(err)?;
    }
    Ok(())
}

/// The map type each pinned map has in this build.
fn map_type(name: &str) -> MapType {
    match name {
        names::CONNTRACK_STATS
        | names::CONNTRACK6_STATS
        | names::DROPS
        | names::EVENTS
        | names::MONITOR_LIMIT => MapType::PerCpuArray,
        names::SERVICE_STATS | names::BACKEND_STATS => MapType::PerCpuHash,
        names::SOCK_REV | names::SOCK_REV6 | names::AFFINITY => MapType::LruHash,
        names::SOURCE_RANGES | names::SOURCE_RANGES6 => MapType::LpmTrie,
        names::MONITOR => MapType::RingBuf,
        names::MONITOR_ON => MapType::Array,
        names::TAIL_CALLS | names::XDP_TAIL_CALLS => MapType::ProgramArray,
        _ => match names::conntrack_map(name) {
            Some((index, _)) if index % CT_TIERS == CT_TIER_NEW => MapType::LruHash,
            _ => MapType::Hash,
        },
    }
}

/// Why a pinned map of this build's version cannot be adopted, if it
/// cannot: its key or value size, type, fixed size, or (conntrack) the
/// configured size differ.
fn misfit(
    name: &'static str,
    info: &aya::maps::MapInfo,
    conntrack_sizes: &[u32; 8],
) -> Option<String> {
    let (key, value) = layout(name).unwrap_or_default();
    if info.key_size() as usize != key || info.value_size() as usize != value {
        return Some(format!(
            "key and value of {} and {} bytes, this build's {key} and {value}",
            info.key_size(),
            info.value_size()
        ));
    }
    let have = info.map_type().ok();
    if have != Some(map_type(name)) {
        return Some(format!("type {have:?}, this build's {:?}", map_type(name)));
    }
    let count = match name {
        names::DROPS => Some(DropReason::COUNT),
        names::EVENTS => Some(Event::COUNT),
        names::CONNTRACK_STATS | names::CONNTRACK6_STATS => {
            Some(CT_TABLES * CT_TIERS * CT_COUNTERS)
        }
        names::TAIL_CALLS => Some(names::TAIL_SLOTS),
        names::XDP_TAIL_CALLS => Some(names::XDP_TAIL_SLOTS),
        _ => names::conntrack_map(name)
            .and_then(|(index, _)| conntrack_sizes.get(index as usize).copied()),
    };
    count
        .filter(|n| info.max_entries() != *n)
        .map(|n| format!("{} entries, {n} wanted", info.max_entries()))
}

/// Replaces the pins this build cannot adopt (see the module's header);
/// returns what was replaced.
pub fn check(pin_dir: &Path, conntrack_sizes: &[u32; 8]) -> Vec<Replaced> {
    let stamps = read_stamps(pin_dir);
    let mut replaced = Vec::new();
    let mut found = 0;
    for name in names::PINNED {
        let path = pin_dir.join(name);
        let Ok(map) = MapData::from_pin(&path) else {
            continue;
        };
        found += 1;
        let Ok(info) = map.info() else { continue };
        let want = names::layout_version(name);
        let stamped = stamps
            .as_ref()
            .and_then(|s| s.get(&stamp_key(name)).copied());
        let why = match stamped {
            Some(v) if v != want => Some(format!(
                "layout version {v}, this build's {want}, and no conversion between them"
            )),
            _ => misfit(name, &info, conntrack_sizes),
        };
        let Some(why) = why else { continue };
        let entries = match info.map_type() {
            Ok(MapType::RingBuf) => 0,
            _ => batch::count_keys(map.fd().as_fd(), info.key_size() as usize).unwrap_or(0),
        };
        tracing::warn!(
            map = name,
            entries,
            "the pinned map cannot be adopted ({why}); replacing it, and what it held is lost"
        );
        if let Err(e) = fs::remove_file(&path) {
            tracing::warn!(map = name, "cannot remove the pin: {e}");
            continue;
        }
        replaced.push(Replaced {
            map: name,
            entries,
            why,
        });
    }
    if stamps.is_none() && found > replaced.len() {
        tracing::info!(
            "the pins carry no layout versions (an earlier build's): adopted those of this build's shape"
        );
    }
    replaced
}

/// Expected layout of each pinned map: (key size, value size).
fn layout(name: &str) -> Option<(usize, usize)> {
    Some(match name {
        names::SERVICES => (size_of::<ServiceKey>(), size_of::<ServiceValue>()),
        names::SLOTS => (size_of::<SlotKey>(), size_of::<Backend>()),
        names::BACKENDS => (size_of::<u32>(), size_of::<Backend>()),
        names::SERVICES6 => (size_of::<ServiceKey6>(), size_of::<ServiceValue>()),
        names::SLOTS6 => (size_of::<SlotKey>(), size_of::<Backend6>()),
        names::BACKENDS6 => (size_of::<u32>(), size_of::<Backend6>()),
        _ if names::CONNTRACK.contains(&name) => (size_of::<CtKey>(), size_of::<CtEntry>()),
        _ if names::CONNTRACK6.contains(&name) => (size_of::<CtKey6>(), size_of::<CtEntry6>()),
        names::CONNTRACK_STATS | names::CONNTRACK6_STATS => (size_of::<u32>(), size_of::<u64>()),
        names::SERVICE_STATS | names::BACKEND_STATS => {
            (size_of::<u32>(), size_of::<TrafficStats>())
        }
        names::DROPS | names::EVENTS => (size_of::<u32>(), size_of::<u64>()),
        names::SERVICE_NAMES => (size_of::<u32>(), size_of::<ServiceName>()),
        names::SOCK_REV => (size_of::<SockRevKey>(), size_of::<SockRevValue>()),
        names::SOCK_REV6 => (size_of::<SockRevKey6>(), size_of::<SockRevValue6>()),
        names::AFFINITY_CONFIG => (size_of::<u32>(), size_of::<u32>()),
        names::AFFINITY => (size_of::<AffinityKey>(), size_of::<AffinityValue>()),
        names::SOURCE_RANGES => (size_of::<u32>() + size_of::<SourceRangeKey>(), 1),
        names::SOURCE_RANGES6 => (size_of::<u32>() + size_of::<SourceRangeKey6>(), 1),
        names::NODE_ADDRS => (size_of::<NodeAddr>(), size_of::<u32>()),
        names::NODE_ADDRS6 => (size_of::<NodeAddr6>(), size_of::<u32>()),
        names::EXT_IFS => (size_of::<u32>(), size_of::<ExtIf>()),
        names::EXT_IFS6 => (size_of::<u32>(), size_of::<NodeAddr6>()),
        names::REFUSED => (size_of::<ServiceKey>(), size_of::<RefusedClaim>()),
        names::REFUSED6 => (size_of::<ServiceKey6>(), size_of::<RefusedClaim>()),
        names::MAGLEV => (size_of::<MaglevKey>(), size_of::<MaglevChunk>()),
        names::MONITOR => (0, 0),
        names::MONITOR_ON | names::TAIL_CALLS | names::XDP_TAIL_CALLS => {
            (size_of::<u32>(), size_of::<u32>())
        }
        names::LAYOUT => (size_of::<Name>(), size_of::<u32>()),
        names::MONITOR_LIMIT => (
            size_of::<u32>(),
            size_of::<sluice_abi::monitor::MonitorLimiter>(),
        ),
        _ => return None,
    })
}
