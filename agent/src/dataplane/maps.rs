//! Typed handles on the dataplane maps, from a loaded object or from pins.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::{AsFd, OwnedFd},
    path::Path,
};

use aya::{
    Ebpf,
    maps::{
        HashMap, LpmTrie, Map, MapData, MapError, PerCpuArray, PerCpuHashMap, PerCpuValues,
        lpm_trie::Key,
    },
};
use sluice_abi::{
    maps as names,
    service::{
        Backend, Backend6, ExtIf, MAGLEV_CHUNK, MaglevChunk, MaglevKey, NodeAddr, NodeAddr6,
        RefusedClaim, SVC_FLAG_MARKER, ServiceKey, ServiceKey6, ServiceName, ServiceValue, SlotKey,
        SourceRangeKey, SourceRangeKey6,
    },
    stats::TrafficStats,
};

mod node;

use super::{Error, batch};
use crate::{
    frontend::{BackendRef, FrontendKey, MapBackend, MapKey},
    plan::capacity::Resource,
    reconcile::{Current, Op, Plan},
};

/// The maps of the frontends, slots and backends, and source ranges, one
/// set per IP family (`crate::frontend`); the maps keyed by frontend or
/// backend id are shared.
pub struct Maps {
    pub services: HashMap<MapData, ServiceKey, ServiceValue>,
    pub slots: HashMap<MapData, SlotKey, Backend>,
    pub backends: HashMap<MapData, u32, Backend>,
    pub services6: HashMap<MapData, ServiceKey6, ServiceValue>,
    pub slots6: HashMap<MapData, SlotKey, Backend6>,
    pub backends6: HashMap<MapData, u32, Backend6>,
    pub service_stats: PerCpuHashMap<MapData, u32, TrafficStats>,
    pub backend_stats: PerCpuHashMap<MapData, u32, TrafficStats>,
    pub drops: PerCpuArray<MapData, u64>,
    pub events: PerCpuArray<MapData, u64>,
    pub names: HashMap<MapData, u32, ServiceName>,
    /// `ClientIP` affinity timeouts by frontend id.
    pub affinity_config: HashMap<MapData, u32, u32>,
    /// `loadBalancerSourceRanges` by frontend id.
    pub source_ranges: LpmTrie<MapData, SourceRangeKey, u8>,
    pub source_ranges6: LpmTrie<MapData, SourceRangeKey6, u8>,
    /// The node's own addresses.
    pub node_addrs: HashMap<MapData, NodeAddr, u32>,
    pub node_addrs6: HashMap<MapData, NodeAddr6, u32>,
    /// External interfaces with the XDP program, and their SNAT address.
    pub ext_ifs: HashMap<MapData, u32, ExtIf>,
    pub ext_ifs6: HashMap<MapData, u32, NodeAddr6>,
    /// Refused claims on frontends, for `sluice status`.
    pub refused: HashMap<MapData, ServiceKey, RefusedClaim>,
    pub refused6: HashMap<MapData, ServiceKey6, RefusedClaim>,
    /// Maglev tables, in chunks.
    pub maglev: HashMap<MapData, MaglevKey, MaglevChunk>,
    /// Descriptors of the maps that programming writes in batches.
    batch: BatchFds,
}

struct BatchFds {
    services: OwnedFd,
    slots: OwnedFd,
    backends: OwnedFd,
    services6: OwnedFd,
    slots6: OwnedFd,
    backends6: OwnedFd,
    names: OwnedFd,
    affinity_config: OwnedFd,
    maglev: OwnedFd,
}

/// A duplicate of a hash map's descriptor, for the batch commands aya lacks.
fn batch_fd(name: &'static str, map: &Map) -> Result<OwnedFd, Error> {
    let Map::HashMap(data) = map else {
        return Err(map_err(name)(MapError::InvalidName { name: name.into() }));
    };
    data.fd()
        .as_fd()
        .try_clone_to_owned()
        .map_err(|e| Error::Batch { name, source: e })
}

fn typed<T>(name: &'static str, map: Map) -> Result<T, Error>
where
    T: TryFrom<Map, Error = MapError>,
{
    T::try_from(map).map_err(|e| Error::Map {
        name,
        source: Box::new(e),
    })
}

fn map_err(name: &'static str) -> impl FnOnce(MapError) -> Error {
    move |e| Error::Map {
        name,
        source: Box::new(e),
    }
}

impl Maps {
    /// Takes the maps out of a loaded object.
    pub fn take(ebpf: &mut Ebpf) -> Result<Self, Error> {
        Self::build(|name| {
            ebpf.take_map(name).ok_or_else(|| Error::Map {
                name,
                source: Box::new(MapError::InvalidName { name: name.into() }),
            })
        })
    }

    /// Opens the maps pinned in `pin_dir` (for `sluice status`).
    pub fn open_pinned(pin_dir: &Path) -> Result<Self, Error> {
        Self::build(|name| {
            let data = super::open_pinned(pin_dir, name)?;
            Map::from_map_data(data).map_err(map_err(name))
        })
    }

    fn build(mut get: impl FnMut(&'static str) -> Result<Map, Error>) -> Result<Self, Error> {
        let services = get(names::SERVICES)?;
        let slots = get(names::SLOTS)?;
        let backends = get(names::BACKENDS)?;
        let services6 = get(names::SERVICES6)?;
        let slots6 = get(names::SLOTS6)?;
        let backends6 = get(names::BACKENDS6)?;
        let service_names = get(names::SERVICE_NAMES)?;
        let affinity_config = get(names::AFFINITY_CONFIG)?;
        let maglev = get(names::MAGLEV)?;
        let batch = BatchFds {
            maglev: batch_fd(names::MAGLEV, &maglev)?,
            affinity_config: batch_fd(names::AFFINITY_CONFIG, &affinity_config)?,
            services: batch_fd(names::SERVICES, &services)?,
            slots: batch_fd(names::SLOTS, &slots)?,
            backends: batch_fd(names::BACKENDS, &backends)?,
            services6: batch_fd(names::SERVICES6, &services6)?,
            slots6: batch_fd(names::SLOTS6, &slots6)?,
            backends6: batch_fd(names::BACKENDS6, &backends6)?,
            names: batch_fd(names::SERVICE_NAMES, &service_names)?,
        };
        Ok(Self {
            services: typed(names::SERVICES, services)?,
            slots: typed(names::SLOTS, slots)?,
            backends: typed(names::BACKENDS, backends)?,
            services6: typed(names::SERVICES6, services6)?,
            slots6: typed(names::SLOTS6, slots6)?,
            backends6: typed(names::BACKENDS6, backends6)?,
            service_stats: typed(names::SERVICE_STATS, get(names::SERVICE_STATS)?)?,
            backend_stats: typed(names::BACKEND_STATS, get(names::BACKEND_STATS)?)?,
            drops: typed(names::DROPS, get(names::DROPS)?)?,
            events: typed(names::EVENTS, get(names::EVENTS)?)?,
            names: typed(names::SERVICE_NAMES, service_names)?,
            affinity_config: typed(names::AFFINITY_CONFIG, affinity_config)?,
            source_ranges: typed(names::SOURCE_RANGES, get(names::SOURCE_RANGES)?)?,
            source_ranges6: typed(names::SOURCE_RANGES6, get(names::SOURCE_RANGES6)?)?,
            node_addrs: typed(names::NODE_ADDRS, get(names::NODE_ADDRS)?)?,
            node_addrs6: typed(names::NODE_ADDRS6, get(names::NODE_ADDRS6)?)?,
            ext_ifs: typed(names::EXT_IFS, get(names::EXT_IFS)?)?,
            ext_ifs6: typed(names::EXT_IFS6, get(names::EXT_IFS6)?)?,
            refused: typed(names::REFUSED, get(names::REFUSED)?)?,
            refused6: typed(names::REFUSED6, get(names::REFUSED6)?)?,
            maglev: typed(names::MAGLEV, maglev)?,
            batch,
        })
    }

    /// How many entries the map that counts `resource` was created with
    /// (each family's map has as many).
    pub fn max_entries(&self, resource: Resource) -> Option<u32> {
        use aya::maps::IterableMap as _;
        let info = match resource {
            Resource::Frontends => self.services.map().info(),
            Resource::Backends => self.backends.map().info(),
            Resource::MaglevChunks => self.maglev.map().info(),
            Resource::SourceRanges => self.source_ranges.map().info(),
        };
        info.ok().map(|i| i.max_entries())
    }

    /// Reads back what reconcile needs to know of the maps.
    pub fn adopt(&self) -> Result<Current, Error> {
        let services = collect(self.services.iter(), names::SERVICES)?
            .into_iter()
            .map(|(k, v)| (FrontendKey::from(k), v))
            .chain(
                collect(self.services6.iter(), names::SERVICES6)?
                    .into_iter()
                    .map(|(k, v)| (FrontendKey::from(k), v)),
            );
        let slots = collect(self.slots.iter(), names::SLOTS)?
            .into_iter()
            .map(|(k, b)| (k, BackendRef::from(b)))
            .chain(
                collect(self.slots6.iter(), names::SLOTS6)?
                    .into_iter()
                    .map(|(k, b)| (k, BackendRef::from(b))),
            );
        let labels: BTreeMap<u32, String> = collect(self.names.iter(), names::SERVICE_NAMES)?
            .into_iter()
            .map(|(id, n)| (id, n.as_str().to_owned()))
            .collect();
        let affinity: BTreeMap<u32, u32> =
            collect(self.affinity_config.iter(), names::AFFINITY_CONFIG)?
                .into_iter()
                .collect();
        let mut ranges: BTreeMap<u32, Vec<(IpAddr, u8)>> = BTreeMap::new();
        for (key, _) in collect(self.source_ranges.iter(), names::SOURCE_RANGES)? {
            let data = key.data();
            let len = u8::try_from(key.prefix_len().saturating_sub(32)).unwrap_or(32);
            ranges
                .entry(u32::from_be_bytes(data.service_id_be))
                .or_default()
                .push((Ipv4Addr::from(data.addr_be).into(), len));
        }
        for (key, _) in collect(self.source_ranges6.iter(), names::SOURCE_RANGES6)? {
            let data = key.data();
            let len = u8::try_from(key.prefix_len().saturating_sub(32)).unwrap_or(128);
            ranges
                .entry(u32::from_be_bytes(data.service_id_be))
                .or_default()
                .push((Ipv6Addr::from(data.addr_be).into(), len));
        }
        let mut maglev = BTreeMap::new();
        for key in self.maglev.keys() {
            let key = key.map_err(map_err(names::MAGLEV))?;
            if key.chunk == 0 {
                let chunk = self.maglev.get(&key, 0).map_err(map_err(names::MAGLEV))?;
                maglev.insert(key.service_id, chunk.size);
            }
        }
        Ok(Current::adopt(
            services, slots, &labels, &affinity, &ranges, &maglev,
        ))
    }

    /// Writes a plan in its order: the puts in batches, a map at a time
    /// (names before the frontends that carry them), then the deletes.
    pub fn apply_all(&mut self, plan: &Plan) -> Result<(), Error> {
        let (puts, deletes) = plan.split();
        let mut backends = Vec::new();
        let mut slots = Vec::new();
        let mut services = Vec::new();
        let mut backends6 = Vec::new();
        let mut slots6 = Vec::new();
        let mut services6 = Vec::new();
        let mut labels = Vec::new();
        let mut affinity = Vec::new();
        let mut no_affinity = Vec::new();
        let mut maglev = Vec::new();
        for op in puts {
            match op {
                Op::PutMaglev { id, size, table } => {
                    maglev.extend(maglev_chunks(*id, *size, table));
                }
                Op::PutBackend(b) => match b.map_value() {
                    MapBackend::V4(v) => backends.push((b.id, v)),
                    MapBackend::V6(v) => backends6.push((b.id, v)),
                },
                Op::PutSlot { slot, backend } => match backend.map_value() {
                    MapBackend::V4(v) => slots.push((*slot, v)),
                    MapBackend::V6(v) => slots6.push((*slot, v)),
                },
                Op::PutFrontend {
                    key,
                    value,
                    name,
                    affinity_secs,
                } => {
                    if let Some(name) = name {
                        labels.push((value.id, ServiceName::new(name)));
                    }
                    if *affinity_secs == 0 {
                        no_affinity.push(value.id);
                    } else {
                        affinity.push((value.id, *affinity_secs));
                    }
                    match key.map_key() {
                        MapKey::V4(k) => services.push((k, *value)),
                        MapKey::V6(k) => services6.push((k, *value)),
                    }
                }
                Op::PutMarker(ip) => match FrontendKey::marker(*ip).map_key() {
                    MapKey::V4(k) => services.push((k, MARKER)),
                    MapKey::V6(k) => services6.push((k, MARKER)),
                },
                // Few, and written before the frontends that point at them.
                Op::PutSourceRange { .. } => self.apply(op)?,
                _ => {}
            }
        }
        let batch = |name: &'static str| move |e| Error::Batch { name, source: e };
        batch::update(&self.batch.backends, &backends).map_err(batch(names::BACKENDS))?;
        batch::update(&self.batch.backends6, &backends6).map_err(batch(names::BACKENDS6))?;
        batch::update(&self.batch.slots, &slots).map_err(batch(names::SLOTS))?;
        batch::update(&self.batch.slots6, &slots6).map_err(batch(names::SLOTS6))?;
        batch::update(&self.batch.maglev, &maglev).map_err(batch(names::MAGLEV))?;
        batch::update(&self.batch.names, &labels).map_err(batch(names::SERVICE_NAMES))?;
        // The timeout before the flag that points at it.
        batch::update(&self.batch.affinity_config, &affinity)
            .map_err(batch(names::AFFINITY_CONFIG))?;
        batch::update(&self.batch.services, &services).map_err(batch(names::SERVICES))?;
        batch::update(&self.batch.services6, &services6).map_err(batch(names::SERVICES6))?;
        for id in no_affinity {
            self.set_affinity(id, 0)?;
        }
        for op in deletes {
            self.apply(op)?;
        }
        Ok(())
    }

    /// Writes frontend `id`'s affinity timeout, or removes it (0: none).
    fn set_affinity(&mut self, id: u32, secs: u32) -> Result<(), Error> {
        if secs == 0 {
            removed(self.affinity_config.remove(&id), names::AFFINITY_CONFIG)
        } else {
            self.affinity_config
                .insert(id, secs, 0)
                .map_err(map_err(names::AFFINITY_CONFIG))
        }
    }

    /// Applies one reconcile operation (for `apply_all`, whose batches
    /// leave these to it).
    fn apply(&mut self, op: &Op) -> Result<(), Error> {
        match op {
            Op::PutBackend(b) => match b.map_value() {
                MapBackend::V4(v) => self.backends.insert(b.id, v, 0),
                MapBackend::V6(v) => self.backends6.insert(b.id, v, 0),
            }
            .map_err(map_err(names::BACKENDS)),
            Op::PutSlot { slot, backend } => match backend.map_value() {
                MapBackend::V4(v) => self.slots.insert(slot, v, 0),
                MapBackend::V6(v) => self.slots6.insert(slot, v, 0),
            }
            .map_err(map_err(names::SLOTS)),
            Op::PutFrontend {
                key,
                value,
                name,
                affinity_secs,
            } => {
                self.set_affinity(value.id, *affinity_secs)?;
                if let Some(name) = name {
                    self.names
                        .insert(value.id, ServiceName::new(name), 0)
                        .map_err(map_err(names::SERVICE_NAMES))?;
                }
                self.put_service(*key, *value)
            }
            Op::DeleteSlot { slot, v6: false } => removed(self.slots.remove(slot), names::SLOTS),
            Op::DeleteSlot { slot, v6: true } => removed(self.slots6.remove(slot), names::SLOTS6),
            Op::DeleteFrontend { key, id } => {
                self.delete_service(*key)?;
                removed(self.names.remove(id), names::SERVICE_NAMES)?;
                removed(self.affinity_config.remove(id), names::AFFINITY_CONFIG)?;
                removed(self.service_stats.remove(id), names::SERVICE_STATS)
            }
            Op::DeleteBackend { id, v6 } => {
                if *v6 {
                    removed(self.backends6.remove(id), names::BACKENDS6)?;
                } else {
                    removed(self.backends.remove(id), names::BACKENDS)?;
                }
                removed(self.backend_stats.remove(id), names::BACKEND_STATS)
            }
            Op::PutMarker(ip) => self.put_service(FrontendKey::marker(*ip), MARKER),
            Op::PutSourceRange { id, net, len } => match *net {
                IpAddr::V4(net) => self
                    .source_ranges
                    .insert(&range_key(*id, net, *len), 1, 0)
                    .map_err(map_err(names::SOURCE_RANGES)),
                IpAddr::V6(net) => self
                    .source_ranges6
                    .insert(&range_key6(*id, net, *len), 1, 0)
                    .map_err(map_err(names::SOURCE_RANGES6)),
            },
            Op::DeleteSourceRange { id, net, len } => match *net {
                IpAddr::V4(net) => removed(
                    self.source_ranges.remove(&range_key(*id, net, *len)),
                    names::SOURCE_RANGES,
                ),
                IpAddr::V6(net) => removed(
                    self.source_ranges6.remove(&range_key6(*id, net, *len)),
                    names::SOURCE_RANGES6,
                ),
            },
            Op::DeleteMarker(ip) => self.delete_service(FrontendKey::marker(*ip)),
            Op::PutMaglev { id, size, table } => {
                for (key, chunk) in maglev_chunks(*id, *size, table) {
                    self.maglev
                        .insert(key, chunk, 0)
                        .map_err(map_err(names::MAGLEV))?;
                }
                Ok(())
            }
            Op::DeleteMaglev { id, chunks } => {
                for chunk in chunks.clone() {
                    let key = MaglevKey {
                        service_id: *id,
                        chunk,
                    };
                    removed(self.maglev.remove(&key), names::MAGLEV)?;
                }
                Ok(())
            }
        }
    }

    fn put_service(&mut self, key: FrontendKey, value: ServiceValue) -> Result<(), Error> {
        match key.map_key() {
            MapKey::V4(k) => self
                .services
                .insert(k, value, 0)
                .map_err(map_err(names::SERVICES)),
            MapKey::V6(k) => self
                .services6
                .insert(k, value, 0)
                .map_err(map_err(names::SERVICES6)),
        }
    }

    fn delete_service(&mut self, key: FrontendKey) -> Result<(), Error> {
        match key.map_key() {
            MapKey::V4(k) => removed(self.services.remove(&k), names::SERVICES),
            MapKey::V6(k) => removed(self.services6.remove(&k), names::SERVICES6),
        }
    }

    /// The refused claims of both families (unreadable entries skipped).
    pub fn refused_claims(&self) -> Vec<(FrontendKey, RefusedClaim)> {
        let v4 = self.refused.iter().filter_map(Result::ok);
        let v6 = self.refused6.iter().filter_map(Result::ok);
        v4.map(|(k, r)| (k.into(), r))
            .chain(v6.map(|(k, r)| (k.into(), r)))
            .collect()
    }

    /// Records the refused claims on frontend `key` (`None`: there are none).
    pub fn set_refused(
        &mut self,
        key: FrontendKey,
        claim: Option<RefusedClaim>,
    ) -> Result<(), Error> {
        match (key.map_key(), claim) {
            (MapKey::V4(k), Some(c)) => self
                .refused
                .insert(k, c, 0)
                .map_err(map_err(names::REFUSED)),
            (MapKey::V4(k), None) => removed(self.refused.remove(&k), names::REFUSED),
            (MapKey::V6(k), Some(c)) => self
                .refused6
                .insert(k, c, 0)
                .map_err(map_err(names::REFUSED6)),
            (MapKey::V6(k), None) => removed(self.refused6.remove(&k), names::REFUSED6),
        }
    }

    /// Whether `addr` is an allocated ClusterIP (its marker is there).
    pub fn is_cluster_ip(&self, addr: [u8; 4]) -> bool {
        self.services
            .get(&ServiceKey::marker(Ipv4Addr::from(addr)), 0)
            .is_ok()
    }

    /// Packets dropped for `reason`, summed over CPUs (0 if unreadable).
    pub fn drop_count(&self, reason: sluice_abi::stats::DropReason) -> u64 {
        counter(&self.drops, reason as u32)
    }

    /// Times `event` happened, summed over CPUs (0 if unreadable).
    pub fn event_count(&self, event: sluice_abi::stats::Event) -> u64 {
        counter(&self.events, event as u32)
    }
}

/// Makes hash map `map` hold exactly `want`, writing only what differs.
fn sync_map<K, V>(
    map: &mut HashMap<MapData, K, V>,
    want: &BTreeMap<K, V>,
    name: &'static str,
) -> Result<(), Error>
where
    K: aya::Pod + Ord,
    V: aya::Pod + PartialEq,
{
    let held: BTreeMap<K, V> = map
        .iter()
        .collect::<Result<_, _>>()
        .map_err(map_err(name))?;
    for (key, value) in want {
        if held.get(key) != Some(value) {
            map.insert(key, value, 0).map_err(map_err(name))?;
        }
    }
    for key in held.keys().filter(|k| !want.contains_key(k)) {
        removed(map.remove(key), name)?;
    }
    Ok(())
}

/// A Maglev table of `size` entries, cut into its map chunks.
fn maglev_chunks(id: u32, size: u32, table: &[u32]) -> Vec<(MaglevKey, MaglevChunk)> {
    table
        .chunks(MAGLEV_CHUNK as usize)
        .zip(0u32..)
        .map(|(entries, chunk)| {
            let mut ids = [0u32; MAGLEV_CHUNK as usize];
            for (slot, id) in ids.iter_mut().zip(entries) {
                *slot = *id;
            }
            (
                MaglevKey {
                    service_id: id,
                    chunk,
                },
                MaglevChunk { size, ids },
            )
        })
        .collect()
}

/// The LPM key of range `net/len` of frontend `id`.
fn range_key(id: u32, net: Ipv4Addr, len: u8) -> Key<SourceRangeKey> {
    Key::new(
        SourceRangeKey::prefix_len(len),
        SourceRangeKey::new(id, net),
    )
}

/// The LPM key of IPv6 range `net/len` of frontend `id`.
fn range_key6(id: u32, net: Ipv6Addr, len: u8) -> Key<SourceRangeKey6> {
    Key::new(
        SourceRangeKey::prefix_len(len),
        SourceRangeKey6::new(id, net),
    )
}

/// The frontend entry that marks an allocated ClusterIP.
const MARKER: ServiceValue = ServiceValue {
    id: 0,
    count: 0,
    flags: SVC_FLAG_MARKER,
};

fn collect<K, V>(
    iter: impl Iterator<Item = Result<(K, V), MapError>>,
    name: &'static str,
) -> Result<Vec<(K, V)>, Error> {
    iter.collect::<Result<Vec<_>, _>>().map_err(map_err(name))
}

/// Deleting what is already gone is fine: the goal state is reached.
fn removed(result: Result<(), MapError>, name: &'static str) -> Result<(), Error> {
    match result {
        Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
        Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        Err(e) => Err(map_err(name)(e)),
    }
}

/// Sums per-CPU values.
pub fn sum_stats(values: &PerCpuValues<TrafficStats>) -> TrafficStats {
    values
        .iter()
        .fold(TrafficStats::default(), |acc, v| acc.sum(*v))
}

pub fn sum_counter(values: &PerCpuValues<u64>) -> u64 {
    values.iter().fold(0u64, |acc, v| acc.wrapping_add(*v))
}

pub fn counter(array: &PerCpuArray<MapData, u64>, index: u32) -> u64 {
    array
        .get(&index, 0)
        .map(|v| sum_counter(&v))
        .unwrap_or_default()
}
