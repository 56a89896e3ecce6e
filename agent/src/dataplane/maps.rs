//! Typed handles on the dataplane maps, from a loaded object or from pins.

use std::{collections::BTreeMap, path::Path};

use aya::{
    Ebpf,
    maps::{HashMap, Map, MapData, MapError, PerCpuArray, PerCpuHashMap, PerCpuValues},
    util::nr_cpus,
};
use sluice_abi::{
    conntrack::{CtKey, CtValue},
    maps as names,
    service::{Backend, SVC_FLAG_MARKER, ServiceKey, ServiceName, ServiceValue, SlotKey},
    stats::TrafficStats,
};

use super::Error;
use crate::reconcile::{Current, Op};

/// `BPF_NOEXIST`: create only.
const NOEXIST: u64 = 1;

pub struct Maps {
    pub services: HashMap<MapData, ServiceKey, ServiceValue>,
    pub slots: HashMap<MapData, SlotKey, Backend>,
    pub backends: HashMap<MapData, u32, Backend>,
    pub conntrack: HashMap<MapData, CtKey, CtValue>,
    pub service_stats: PerCpuHashMap<MapData, u32, TrafficStats>,
    pub backend_stats: PerCpuHashMap<MapData, u32, TrafficStats>,
    pub drops: PerCpuArray<MapData, u64>,
    pub events: PerCpuArray<MapData, u64>,
    pub names: HashMap<MapData, u32, ServiceName>,
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
        Ok(Self {
            services: typed(names::SERVICES, get(names::SERVICES)?)?,
            slots: typed(names::SLOTS, get(names::SLOTS)?)?,
            backends: typed(names::BACKENDS, get(names::BACKENDS)?)?,
            conntrack: typed(names::CONNTRACK, get(names::CONNTRACK)?)?,
            service_stats: typed(names::SERVICE_STATS, get(names::SERVICE_STATS)?)?,
            backend_stats: typed(names::BACKEND_STATS, get(names::BACKEND_STATS)?)?,
            drops: typed(names::DROPS, get(names::DROPS)?)?,
            events: typed(names::EVENTS, get(names::EVENTS)?)?,
            names: typed(names::SERVICE_NAMES, get(names::SERVICE_NAMES)?)?,
        })
    }

    /// Reads back what reconcile needs to know of the maps.
    pub fn adopt(&self) -> Result<Current, Error> {
        let services = collect(self.services.iter(), names::SERVICES)?;
        let slots = collect(self.slots.iter(), names::SLOTS)?;
        let labels: BTreeMap<u32, String> = collect(self.names.iter(), names::SERVICE_NAMES)?
            .into_iter()
            .map(|(id, n)| (id, n.as_str().to_owned()))
            .collect();
        Ok(Current::adopt(services, slots, &labels))
    }

    /// Applies one reconcile operation.
    pub fn apply(&mut self, op: &Op) -> Result<(), Error> {
        match op {
            Op::PutBackend(b) => {
                self.backends
                    .insert(b.id, b, 0)
                    .map_err(map_err(names::BACKENDS))?;
                zero_stats(&mut self.backend_stats, b.id, names::BACKEND_STATS)
            }
            Op::PutSlot { slot, backend } => self
                .slots
                .insert(slot, backend, 0)
                .map_err(map_err(names::SLOTS)),
            Op::PutService { key, value, name } => {
                if let Some(name) = name {
                    zero_stats(&mut self.service_stats, value.id, names::SERVICE_STATS)?;
                    self.names
                        .insert(value.id, ServiceName::new(name), 0)
                        .map_err(map_err(names::SERVICE_NAMES))?;
                }
                self.services
                    .insert(key, value, 0)
                    .map_err(map_err(names::SERVICES))
            }
            Op::DeleteSlot(slot) => removed(self.slots.remove(slot), names::SLOTS),
            Op::DeleteService { key, id } => {
                removed(self.services.remove(key), names::SERVICES)?;
                removed(self.names.remove(id), names::SERVICE_NAMES)?;
                removed(self.service_stats.remove(id), names::SERVICE_STATS)
            }
            Op::DeleteBackend(id) => {
                removed(self.backends.remove(id), names::BACKENDS)?;
                removed(self.backend_stats.remove(id), names::BACKEND_STATS)
            }
            Op::PutMarker(ip) => {
                let value = ServiceValue {
                    id: 0,
                    count: 0,
                    flags: SVC_FLAG_MARKER,
                };
                self.services
                    .insert(ServiceKey::marker(*ip), value, 0)
                    .map_err(map_err(names::SERVICES))
            }
            Op::DeleteMarker(ip) => removed(
                self.services.remove(&ServiceKey::marker(*ip)),
                names::SERVICES,
            ),
        }
    }
}

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

/// Creates the counters of an id unless they exist (they survive restarts).
fn zero_stats(
    map: &mut PerCpuHashMap<MapData, u32, TrafficStats>,
    id: u32,
    name: &'static str,
) -> Result<(), Error> {
    let cpus = nr_cpus().map_err(|(_, e)| Error::Cpus(e))?;
    let zeros = PerCpuValues::try_from(vec![TrafficStats::default(); cpus]).map_err(Error::Cpus)?;
    match map.insert(id, zeros, NOEXIST) {
        Ok(()) => Ok(()),
        Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::EEXIST) => Ok(()),
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
