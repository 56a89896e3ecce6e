//! Conntrack in user space: the garbage collector that removes entries
//! past their lifetime, the census of what the eight maps hold (for
//! `/metrics` and `sluice status`), the default size, and the conversion
//! of the previous layout's entries on upgrade.
//!
//! The programs expire nothing themselves: an entry past its lifetime is
//! treated as gone when a packet finds it, and the collector removes it
//! for good. A pass reads each map in batches (`BPF_MAP_LOOKUP_BATCH`, 4096
//! entries a call) and removes, one at a time, only what expired, after
//! checking it again: its cost is one read of every entry plus two calls
//! per expired entry.

use std::{
    collections::HashMap as StdHashMap,
    os::fd::{AsFd as _, OwnedFd},
    path::Path,
    sync::{Arc, Condvar, Mutex},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use aya::{
    Pod,
    maps::{HashMap, Map, MapData, PerCpuArray, PerCpuValues},
};
use sluice_abi::{
    addr::In6,
    conntrack::{
        CT_COUNTERS, CT_EXPIRED, CT_INSERTED, CT_REMOVED, CT_STATES, CT_TIER_ESTABLISHED, CT_TIERS,
        CtEntry, CtEntry6, CtEntryOf, CtKey, CtKey6, CtKeyOf, CtTable, Lifetimes, partner,
    },
    maps as names,
};

use super::{Error, batch};

mod convert;
pub use convert::convert_v2;

/// The conntrack maps of both families and their counters, opened from
/// the pins.
pub struct Conntrack {
    v4: Family<[u8; 4]>,
    /// Absent in pins of a build before IPv6 conntrack (`sluice status`
    /// against an older agent).
    v6: Option<Family<In6>>,
}

/// One family's eight maps and their counters.
struct Family<A> {
    label: &'static str,
    maps: Vec<CtMap<A>>,
    stats: PerCpuArray<MapData, u64>,
}

struct CtMap<A> {
    /// `CtTable::map` index.
    index: u32,
    name: &'static str,
    map: HashMap<MapData, CtKeyOf<A>, CtEntryOf<A>>,
    /// A duplicate descriptor for batch reads.
    fd: OwnedFd,
    capacity: u32,
}

impl<A> CtMap<A> {
    fn table(&self) -> CtTable {
        CtTable(self.index / CT_TIERS)
    }

    fn tier_label(&self) -> &'static str {
        if self.index % CT_TIERS == CT_TIER_ESTABLISHED {
            "established"
        } else {
            "new"
        }
    }
}

fn map_err(name: &'static str) -> impl FnOnce(aya::maps::MapError) -> Error {
    move |e| Error::Map {
        name,
        source: Box::new(e),
    }
}

impl Conntrack {
    pub fn open_pinned(pin_dir: &Path) -> Result<Self, Error> {
        let v4 = Family::open(pin_dir, "ipv4", &names::CONNTRACK, names::CONNTRACK_STATS)?;
        let v6 = if pin_dir.join(names::CONNTRACK6_STATS).exists() {
            Some(Family::open(
                pin_dir,
                "ipv6",
                &names::CONNTRACK6,
                names::CONNTRACK6_STATS,
            )?)
        } else {
            None
        };
        Ok(Self { v4, v6 })
    }

    /// Every IPv4 entry, with its table and map (`CT_TIER_*`): for tests
    /// and debugging.
    pub fn entries(&self) -> Vec<(CtTable, u32, CtKey, CtEntry)> {
        self.v4.entries()
    }

    /// Every IPv6 entry, as `entries`.
    pub fn entries6(&self) -> Vec<(CtTable, u32, CtKey6, CtEntry6)> {
        self.v6.as_ref().map(Family::entries).unwrap_or_default()
    }

    /// What the maps hold, without removing anything.
    pub fn census(&self) -> Census {
        let mut maps = self.v4.census();
        if let Some(v6) = &self.v6 {
            maps.extend(v6.census());
        }
        Census { maps, pass: None }
    }

    /// Removes what is past its lifetime at `now` (`CLOCK_MONOTONIC`, as
    /// `bpf_ktime_get_ns`), and says what the maps held.
    pub fn collect_garbage(&mut self, l: &Lifetimes, now: u64) -> Census {
        let started = Instant::now();
        let mut pass = PassStats {
            visited: 0,
            removed: 0,
            seconds: 0.0,
        };
        let mut maps = self.v4.collect_garbage(l, now, &mut pass);
        if let Some(v6) = &mut self.v6 {
            maps.extend(v6.collect_garbage(l, now, &mut pass));
        }
        pass.seconds = started.elapsed().as_secs_f64();
        Census {
            maps,
            pass: Some(pass),
        }
    }
}

impl<A> Family<A>
where
    A: Copy + Eq + std::hash::Hash,
    CtKeyOf<A>: Pod + Eq + std::hash::Hash,
    CtEntryOf<A>: Pod,
{
    fn open(
        pin_dir: &Path,
        label: &'static str,
        names: &'static [&'static str; 8],
        stats_name: &'static str,
    ) -> Result<Self, Error> {
        let mut maps = Vec::with_capacity(names.len());
        for (index, name) in (0u32..).zip(names.iter().copied()) {
            let data = super::open_pinned(pin_dir, name)?;
            let info = data.info().map_err(map_err(name))?;
            let fd = data
                .fd()
                .as_fd()
                .try_clone_to_owned()
                .map_err(|e| Error::Batch { name, source: e })?;
            let map = Map::from_map_data(data).map_err(map_err(name))?;
            let map = HashMap::try_from(map).map_err(map_err(name))?;
            maps.push(CtMap {
                index,
                name,
                map,
                fd,
                capacity: info.max_entries(),
            });
        }
        let data = super::open_pinned(pin_dir, stats_name)?;
        let stats = PerCpuArray::try_from(Map::from_map_data(data).map_err(map_err(stats_name))?)
            .map_err(map_err(stats_name))?;
        Ok(Self { label, maps, stats })
    }

    /// Counter `counter` of map `index`, summed over CPUs.
    fn counter(&self, index: u32, counter: u32) -> u64 {
        self.stats
            .get(&(index * CT_COUNTERS + counter), 0)
            .map_or(0, |v| super::maps::sum_counter(&v))
    }

    /// Adds `n` to map `index`'s expired counter (the agent's slot: the
    /// first CPU's; the programs never write it).
    fn add_expired(&mut self, index: u32, n: u64) {
        if n == 0 {
            return;
        }
        let at = index * CT_COUNTERS + CT_EXPIRED;
        let Ok(mut values) = self.stats.get(&at, 0).map(|v| v.to_vec()) else {
            return;
        };
        if let Some(first) = values.first_mut() {
            *first = first.wrapping_add(n);
        }
        if let Ok(values) = PerCpuValues::try_from(values)
            && let Err(e) = self.stats.set(at, values, 0)
        {
            tracing::debug!("conntrack counters: {e}");
        }
    }

    fn entries(&self) -> Vec<(CtTable, u32, CtKeyOf<A>, CtEntryOf<A>)> {
        let mut out = Vec::new();
        for m in &self.maps {
            let (table, tier) = (m.table(), m.index % CT_TIERS);
            let read = batch::for_each::<CtKeyOf<A>, CtEntryOf<A>>(&m.fd, |k, e| {
                out.push((table, tier, *k, *e));
            });
            if let Err(e) = read {
                tracing::warn!(map = m.name, "reading conntrack: {e}");
            }
        }
        out
    }

    fn census(&self) -> Vec<MapCensus> {
        self.maps
            .iter()
            .map(|m| self.map_census(m, |_, _| {}))
            .collect()
    }

    fn collect_garbage(&mut self, l: &Lifetimes, now: u64, pass: &mut PassStats) -> Vec<MapCensus> {
        let mut censuses = Vec::with_capacity(self.maps.len());
        for i in 0..self.maps.len() {
            let tcp = self.maps[i].table().is_tcp();
            let mut candidates: StdHashMap<CtKeyOf<A>, CtEntryOf<A>> = StdHashMap::new();
            let census = self.map_census(&self.maps[i], |k, e| {
                if e.expired_since(e.last_seen_ns, tcp, now, l) {
                    candidates.insert(*k, *e);
                }
            });
            pass.visited += census.entries;
            let m = &mut self.maps[i];
            let mut gone = 0;
            for (k, e) in &candidates {
                // A flow lives while either direction does.
                let other = partner(k, e);
                if !candidates.contains_key(&other) && m.map.get(&other, 0).is_ok() {
                    continue;
                }
                // Checked again: a packet may have refreshed it since.
                let still = m
                    .map
                    .get(k, 0)
                    .is_ok_and(|e| e.expired_since(e.last_seen_ns, tcp, now, l));
                if still && m.map.remove(k).is_ok() {
                    gone += 1;
                }
            }
            let index = m.index;
            self.add_expired(index, gone);
            pass.removed += gone;
            censuses.push(census);
        }
        censuses
    }

    /// One map's census; `visit` sees every entry.
    fn map_census(
        &self,
        m: &CtMap<A>,
        mut visit: impl FnMut(&CtKeyOf<A>, &CtEntryOf<A>),
    ) -> MapCensus {
        // Counters first: entries inserted while the map is read make the
        // eviction count low, never high.
        let [inserted, removed, expired] =
            [CT_INSERTED, CT_REMOVED, CT_EXPIRED].map(|c| self.counter(m.index, c));
        let mut by_state = [0u64; 4];
        let read = batch::for_each::<CtKeyOf<A>, CtEntryOf<A>>(&m.fd, |k, e| {
            if let Some(n) = by_state.get_mut(usize::from(e.state)) {
                *n += 1;
            }
            visit(k, e);
        });
        if let Err(e) = read {
            tracing::warn!(map = m.name, "reading conntrack: {e}");
        }
        let entries: u64 = by_state.iter().sum();
        MapCensus {
            family: self.label,
            table: m.table().label(),
            map: m.tier_label(),
            capacity: m.capacity,
            entries,
            by_state,
            inserted,
            removed,
            expired,
            evicted: inserted
                .saturating_sub(removed)
                .saturating_sub(expired)
                .saturating_sub(entries),
        }
    }
}

/// What one conntrack map holds, and what happened to its entries.
#[derive(Clone, Debug, serde::Serialize)]
pub struct MapCensus {
    /// `ipv4` or `ipv6`: each family has tables of its own.
    pub family: &'static str,
    /// `east_west_tcp`, `east_west_other`, `north_south_tcp`, `north_south_other`.
    pub table: &'static str,
    /// `established` or `new`.
    pub map: &'static str,
    pub capacity: u32,
    pub entries: u64,
    /// Entries by state, in `CT_STATES` order.
    pub by_state: [u64; 4],
    /// Entries the programs inserted, removed, and the collector expired.
    pub inserted: u64,
    pub removed: u64,
    pub expired: u64,
    /// Entries an LRU map evicted to make room (new-flow maps only): what
    /// was inserted less what was removed, expired or is there now.
    pub evicted: u64,
}

impl MapCensus {
    pub fn fill(&self) -> f64 {
        if self.capacity == 0 {
            return 0.0;
        }
        #[expect(clippy::cast_precision_loss, reason = "a ratio")]
        let fill = self.entries as f64 / f64::from(self.capacity);
        fill
    }

    /// `(label, entries)` by state.
    pub fn states(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        CT_STATES
            .iter()
            .zip(self.by_state)
            .map(|((_, l), n)| (*l, n))
    }
}

/// One collector pass.
#[derive(Clone, Debug, serde::Serialize)]
pub struct PassStats {
    pub visited: u64,
    pub removed: u64,
    pub seconds: f64,
}

/// What the conntrack maps hold.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Census {
    pub maps: Vec<MapCensus>,
    /// The collector's last pass (the agent's census only).
    pub pass: Option<PassStats>,
}

impl Census {
    pub fn entries(&self) -> u64 {
        self.maps.iter().map(|m| m.entries).sum()
    }
}

/// The latest census, shared with the health port.
pub type Latest = Arc<Mutex<Option<Census>>>;

/// The garbage collector's thread; stopped and joined on drop.
pub struct Collector {
    stop: Arc<(Mutex<bool>, Condvar)>,
    thread: Option<JoinHandle<()>>,
    latest: Latest,
}

impl Collector {
    /// Starts a pass now and then every `interval`.
    pub fn spawn(pin_dir: &Path, lifetimes: Lifetimes, interval: Duration) -> Result<Self, Error> {
        let mut ct = Conntrack::open_pinned(pin_dir)?;
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let latest: Latest = Arc::default();
        let (stop2, latest2) = (stop.clone(), latest.clone());
        let thread = std::thread::Builder::new()
            .name("conntrack-gc".into())
            .spawn(move || collect_loop(&mut ct, &lifetimes, interval, &stop2, &latest2))
            .map_err(|e| Error::Thread {
                name: "conntrack-gc",
                source: e,
            })?;
        Ok(Self {
            stop,
            thread: Some(thread),
            latest,
        })
    }

    pub fn latest(&self) -> Latest {
        self.latest.clone()
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        let (flag, cv) = &*self.stop;
        if let Ok(mut stop) = flag.lock() {
            *stop = true;
        }
        cv.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// An established map this full is worth a warning: when it is full, new
/// flows are no longer protected from floods.
const FILL_WARNING: f64 = 0.9;

fn collect_loop(
    ct: &mut Conntrack,
    l: &Lifetimes,
    interval: Duration,
    stop: &(Mutex<bool>, Condvar),
    latest: &Mutex<Option<Census>>,
) {
    let mut warned = [false; 16];
    let mut evicted_seen = [0u64; 16];
    loop {
        let mut census = ct.collect_garbage(l, monotonic_ns());
        for (i, m) in census.maps.iter_mut().enumerate() {
            // Monotonic, whatever the reading's timing.
            evicted_seen[i] = evicted_seen[i].max(m.evicted);
            m.evicted = evicted_seen[i];
            let full = m.map == "established" && m.fill() >= FILL_WARNING;
            if full && !warned[i] {
                tracing::warn!(
                    table = m.table,
                    entries = m.entries,
                    capacity = m.capacity,
                    "a conntrack table's established map is nearly full: new flows will not be protected from floods (raise --conntrack-size)"
                );
            }
            warned[i] = full;
        }
        if let Some(p) = &census.pass {
            tracing::debug!(
                visited = p.visited,
                removed = p.removed,
                took_ms = p.seconds * 1000.0,
                "conntrack garbage collected"
            );
        }
        if let Ok(mut slot) = latest.lock() {
            *slot = Some(census);
        }
        let (flag, cv) = stop;
        let Ok(guard) = flag.lock() else { return };
        let Ok((guard, _)) = cv.wait_timeout_while(guard, interval, |stop| !*stop) else {
            return;
        };
        if *guard {
            return;
        }
    }
}

/// `CLOCK_MONOTONIC` in nanoseconds: the clock of `bpf_ktime_get_ns`.
pub fn monotonic_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).map_or(0, |t| {
        u64::try_from(t.tv_sec()).unwrap_or(0) * 1_000_000_000
            + u64::try_from(t.tv_nsec()).unwrap_or(0)
    })
}

/// Bytes of kernel memory per conntrack entry, as the maps' `memlock`
/// reports them on Linux 6.18 (x86-64): 120 in the established (hash)
/// maps, 128 in the new-flow (LRU) maps, which hold a quarter.
pub const BYTES_PER_ENTRY: u64 = 122;

/// The default `--conntrack-size`: 0.25 % of the node's memory, as
/// Cilium's dynamic map sizing (`--bpf-map-dynamic-size-ratio`), no fewer
/// than `DEFAULT_CONNTRACK_SIZE` entries and no more than 4 Mi.
pub fn default_size() -> u32 {
    let total = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| mem_total_bytes(&m))
        .unwrap_or(0);
    size_for_memory(total)
}

fn size_for_memory(bytes: u64) -> u32 {
    let entries = bytes / 400 / BYTES_PER_ENTRY;
    let entries = entries.clamp(
        u64::from(names::DEFAULT_CONNTRACK_SIZE),
        u64::from(MAX_DEFAULT_SIZE),
    );
    // A multiple of 1024: the split is then exact.
    u32::try_from(entries & !1023).unwrap_or(MAX_DEFAULT_SIZE)
}

const MAX_DEFAULT_SIZE: u32 = 4 << 20;

fn mem_total_bytes(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

#[cfg(test)]
mod tests;
