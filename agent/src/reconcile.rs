//! Desired state minus current state: the map operations that turn one into
//! the other. Pure: no kernel, no network, unit-tested on its own.
//!
//! The operations of each frontend are ordered so that a packet never finds a
//! frontend without a valid backend: new backends and slots are written
//! before the frontend's count grows, holes left by removed backends are
//! filled (from the tail) before the count shrinks, and trailing slots and
//! removed backends are deleted last. Backends that stay keep their slot and
//! id, so established flows to them are untouched, and a single endpoint
//! change costs O(1) writes, not O(Services).

mod maglev;

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
};

use sluice_abi::service::{
    Backend, SVC_FLAG_AFFINITY, SVC_FLAG_EXT_LOCAL, SVC_FLAG_EXTERNAL, SVC_FLAG_MAGLEV,
    SVC_FLAG_MARKER, SVC_FLAG_SOURCE_RANGES, ServiceKey, ServiceValue, SlotKey,
};

use crate::model::{
    Desired, DesiredFrontend, External,
    frontends::{DesiredChanges, Touched},
};

/// One write or delete in the dataplane maps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// A new backend (its counters appear with its first packet).
    PutBackend(Backend),
    PutSlot {
        slot: SlotKey,
        backend: Backend,
    },
    /// Create or update a frontend; `name` is set when it is new or renamed.
    /// `affinity_secs` is its `ClientIP` affinity timeout (0: none), written
    /// next to it when `value.flags` has `SVC_FLAG_AFFINITY`.
    PutFrontend {
        key: ServiceKey,
        value: ServiceValue,
        name: Option<String>,
        affinity_secs: u32,
    },
    DeleteSlot(SlotKey),
    /// Remove a frontend, its name and its counters.
    DeleteFrontend {
        key: ServiceKey,
        id: u32,
    },
    /// Remove a backend and its counters.
    DeleteBackend(u32),
    PutMarker(Ipv4Addr),
    DeleteMarker(Ipv4Addr),
    /// A source range (network, prefix length) of frontend `id`.
    PutSourceRange {
        id: u32,
        net: Ipv4Addr,
        len: u8,
    },
    DeleteSourceRange {
        id: u32,
        net: Ipv4Addr,
        len: u8,
    },
    /// Frontend `id`'s Maglev table of `size` entries: backend ids.
    PutMaglev {
        id: u32,
        size: u32,
        table: Vec<u32>,
    },
    /// Chunks `chunks` of frontend `id`'s Maglev table.
    DeleteMaglev {
        id: u32,
        chunks: std::ops::Range<u32>,
    },
}

impl Op {
    /// The phase of the map writes this belongs to (see `write_order`).
    const fn phase(&self) -> u8 {
        match self {
            Self::PutMarker(_) | Self::PutBackend(_) | Self::PutSourceRange { .. } => 0,
            Self::PutSlot { .. } | Self::PutMaglev { .. } => 1,
            Self::PutFrontend { .. } => 2,
            Self::DeleteFrontend { .. } => 3,
            Self::DeleteSlot(_) | Self::DeleteMaglev { .. } => 4,
            Self::DeleteBackend(_) | Self::DeleteMarker(_) | Self::DeleteSourceRange { .. } => 5,
        }
    }
}

/// The order in which the maps are written, so that the writes of many
/// frontends can go in batches and every frontend stays valid throughout:
/// new backends, then slots and Maglev tables, then frontends (a count
/// grows only once its slots exist, and shrinks before the slots past it
/// go), then removed frontends, their slots and tables, and the backends
/// nothing points at any more.
/// Within a phase, `ops`' order is kept. Backend and frontend ids are not
/// reused within one list of operations, so no write is moved past a
/// delete of the same entry.
pub fn write_order(ops: &[Op]) -> Vec<&Op> {
    let mut ordered: Vec<&Op> = ops.iter().collect();
    ordered.sort_by_key(|op| op.phase());
    ordered
}

/// A frontend as it is in the maps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FrontendState {
    pub id: u32,
    pub name: String,
    pub count: u32,
    pub slots: BTreeMap<u32, Backend>,
    /// `ClientIP` affinity timeout in seconds; 0: none.
    pub affinity_secs: u32,
    /// Source ranges (network, prefix length); empty: any client.
    pub source_ranges: Vec<(Ipv4Addr, u8)>,
    /// How traffic from outside uses it.
    pub external: External,
    /// The size of its Maglev table; 0: none.
    pub maglev_size: u32,
}

impl FrontendState {
    /// A frontend not in the maps yet.
    fn empty(id: u32) -> Self {
        Self {
            id,
            name: String::new(),
            count: 0,
            slots: BTreeMap::new(),
            affinity_secs: 0,
            source_ranges: Vec::new(),
            external: External::No,
            maglev_size: 0,
        }
    }
}

/// What the dataplane maps hold, as far as reconcile is concerned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Current {
    pub frontends: BTreeMap<ServiceKey, FrontendState>,
    pub markers: BTreeSet<Ipv4Addr>,
    next_service_id: u32,
    next_backend_id: u32,
    /// The configured Maglev table size (`--maglev-table-size`); larger
    /// frontends get larger tables (`maglev::table_size`).
    maglev_size: u32,
}

impl Default for Current {
    fn default() -> Self {
        Self {
            frontends: BTreeMap::new(),
            markers: BTreeSet::new(),
            next_service_id: 0,
            next_backend_id: 0,
            maglev_size: sluice_abi::maglev::DEFAULT_TABLE_SIZE,
        }
    }
}

/// Most backends one frontend can have (`ServiceValue::count` is a u16).
pub const MAX_BACKENDS_PER_FRONTEND: usize = u16::MAX as usize;

impl Current {
    /// Rebuilds the state from map contents (adopting pinned maps after a
    /// restart), so that the next reconcile writes only what changed.
    pub fn adopt(
        services: impl IntoIterator<Item = (ServiceKey, ServiceValue)>,
        slots: impl IntoIterator<Item = (SlotKey, Backend)>,
        names: &BTreeMap<u32, String>,
        affinity: &BTreeMap<u32, u32>,
        source_ranges: &BTreeMap<u32, Vec<(Ipv4Addr, u8)>>,
        maglev_sizes: &BTreeMap<u32, u32>,
    ) -> Self {
        let mut current = Self::default();
        let mut by_id = BTreeMap::new();
        for (key, value) in services {
            if value.flags & SVC_FLAG_MARKER != 0 {
                current.markers.insert(key.addr());
                continue;
            }
            by_id.insert(value.id, key);
            let name = names.get(&value.id).cloned().unwrap_or_default();
            current.frontends.insert(
                key,
                FrontendState {
                    id: value.id,
                    name,
                    count: u32::from(value.count),
                    slots: BTreeMap::new(),
                    affinity_secs: if value.flags & SVC_FLAG_AFFINITY == 0 {
                        0
                    } else {
                        affinity.get(&value.id).copied().unwrap_or(0)
                    },
                    source_ranges: source_ranges.get(&value.id).cloned().unwrap_or_default(),
                    external: external_of(value.flags),
                    maglev_size: maglev_sizes.get(&value.id).copied().unwrap_or(0),
                },
            );
            current.next_service_id = current.next_service_id.max(value.id);
        }
        for (slot, backend) in slots {
            current.next_backend_id = current.next_backend_id.max(backend.id);
            if let Some(f) = by_id
                .get(&slot.service_id)
                .and_then(|k| current.frontends.get_mut(k))
            {
                f.slots.insert(slot.slot, backend);
            }
        }
        current
    }

    /// The same, with Maglev tables of `size` entries (a prime) at least.
    #[must_use]
    pub fn with_maglev_size(mut self, size: u32) -> Self {
        self.maglev_size = size;
        self
    }

    /// The smallest Maglev table.
    pub const fn maglev_size(&self) -> u32 {
        self.maglev_size
    }

    fn alloc_service_id(&mut self) -> u32 {
        self.next_service_id = self.next_service_id.wrapping_add(1).max(1);
        self.next_service_id
    }

    fn alloc_backend_id(&mut self) -> u32 {
        self.next_backend_id = self.next_backend_id.wrapping_add(1).max(1);
        self.next_backend_id
    }

    /// Every frontend and ClusterIP the maps hold.
    pub fn scope(&self) -> Touched {
        Touched {
            frontends: self.frontends.keys().copied().collect(),
            cluster_ips: self.markers.clone(),
        }
    }

    /// Number of backends over all frontends.
    pub fn backend_count(&self) -> usize {
        self.frontends.values().map(|f| f.slots.len()).sum()
    }
}

/// Computes the operations that make `current` equal `desired`, and updates
/// `current` as if they had been applied.
pub fn reconcile(desired: &Desired, current: &mut Current) -> Vec<Op> {
    let mut changes = DesiredChanges::default();
    for key in current.frontends.keys() {
        changes.frontends.insert(*key, None);
    }
    for (key, want) in &desired.frontends {
        changes.frontends.insert(*key, Some(want.clone()));
    }
    for ip in &current.markers {
        changes.cluster_ips.insert(*ip, false);
    }
    for ip in &desired.cluster_ips {
        changes.cluster_ips.insert(*ip, true);
    }
    reconcile_changes(&changes, current)
}

/// As `reconcile`, for the frontends and ClusterIPs in `changes` only: the
/// cost is that of the change, not of every Service.
#[tracing::instrument(level = "debug", skip_all)]
pub fn reconcile_changes(changes: &DesiredChanges, current: &mut Current) -> Vec<Op> {
    let mut ops = Vec::new();
    for (ip, _) in changes.cluster_ips.iter().filter(|(_, want)| **want) {
        if current.markers.insert(*ip) {
            ops.push(Op::PutMarker(*ip));
        }
    }
    for (key, want) in &changes.frontends {
        let Some(want) = want else { continue };
        let backends: Vec<(Ipv4Addr, u16)> = want
            .backends
            .iter()
            .copied()
            .take(MAX_BACKENDS_PER_FRONTEND)
            .collect();
        sync_frontend(current, *key, want, &backends, &mut ops);
    }
    for (key, _) in changes.frontends.iter().filter(|(_, want)| want.is_none()) {
        if let Some(f) = current.frontends.remove(key) {
            ops.push(Op::DeleteFrontend {
                key: *key,
                id: f.id,
            });
            for slot in f.slots.keys() {
                ops.push(Op::DeleteSlot(SlotKey {
                    service_id: f.id,
                    slot: *slot,
                }));
            }
            let ids: BTreeSet<u32> = f.slots.values().map(|b| b.id).collect();
            ops.extend(ids.into_iter().map(Op::DeleteBackend));
            ops.extend(
                f.source_ranges
                    .iter()
                    .map(|&(net, len)| Op::DeleteSourceRange { id: f.id, net, len }),
            );
            ops.extend(maglev::delete(f.id, f.maglev_size, 0));
        }
    }
    for (ip, _) in changes.cluster_ips.iter().filter(|(_, want)| !**want) {
        if current.markers.remove(ip) {
            ops.push(Op::DeleteMarker(*ip));
        }
    }
    ops
}

/// Writes the ranges of frontend `id` that are new, deletes those that
/// went.
fn sync_source_ranges(id: u32, old: &[(Ipv4Addr, u8)], new: &[(Ipv4Addr, u8)], ops: &mut Vec<Op>) {
    ops.extend(
        new.iter()
            .filter(|r| !old.contains(r))
            .map(|&(net, len)| Op::PutSourceRange { id, net, len }),
    );
    ops.extend(
        old.iter()
            .filter(|r| !new.contains(r))
            .map(|&(net, len)| Op::DeleteSourceRange { id, net, len }),
    );
}

/// A frontend's `ServiceValue::flags`.
fn frontend_flags(f: &FrontendState) -> u16 {
    let mut flags = 0;
    if f.affinity_secs != 0 {
        flags |= SVC_FLAG_AFFINITY;
    }
    if !f.source_ranges.is_empty() {
        flags |= SVC_FLAG_SOURCE_RANGES;
    }
    match f.external {
        External::No => {}
        External::Serve => flags |= SVC_FLAG_EXTERNAL,
        External::ViaLocalScope => flags |= SVC_FLAG_EXTERNAL | SVC_FLAG_EXT_LOCAL,
    }
    if f.maglev_size != 0 {
        flags |= SVC_FLAG_MAGLEV;
    }
    flags
}

/// How traffic from outside uses a frontend with these flags.
const fn external_of(flags: u16) -> External {
    if flags & SVC_FLAG_EXTERNAL == 0 {
        External::No
    } else if flags & SVC_FLAG_EXT_LOCAL != 0 {
        External::ViaLocalScope
    } else {
        External::Serve
    }
}

fn sync_frontend(
    current: &mut Current,
    key: ServiceKey,
    desired: &DesiredFrontend,
    want: &[(Ipv4Addr, u16)],
    ops: &mut Vec<Op>,
) {
    let name = desired.name.as_str();
    let affinity_secs = desired.affinity_secs;
    let is_new = !current.frontends.contains_key(&key);
    let old = match current.frontends.get(&key) {
        Some(f) => f.clone(),
        None => FrontendState::empty(current.alloc_service_id()),
    };
    let id = old.id;
    let wanted: BTreeSet<(Ipv4Addr, u16)> = want.iter().copied().collect();
    let new_len = u32::try_from(want.len()).unwrap_or(u32::MAX);

    // Backends that stay keep their slot when it is still in range.
    let mut layout: BTreeMap<u32, Backend> = BTreeMap::new();
    let mut kept: BTreeSet<(Ipv4Addr, u16)> = BTreeSet::new();
    let mut moved: Vec<Backend> = Vec::new();
    for (&slot, b) in &old.slots {
        let addr = (b.addr(), b.port());
        if slot >= old.count || !wanted.contains(&addr) || !kept.insert(addr) {
            continue;
        }
        if slot < new_len {
            layout.insert(slot, *b);
        } else {
            moved.push(*b);
        }
    }
    let mut added = Vec::new();
    for &(addr, port) in want {
        if !kept.contains(&(addr, port)) {
            added.push(Backend::new(current.alloc_backend_id(), addr, port));
        }
    }
    // New backends, then those beyond the new end, go into the lowest free
    // slots: the holes the removed backends left first.
    let free: Vec<u32> = (0..new_len).filter(|s| !layout.contains_key(s)).collect();
    for (slot, b) in free.into_iter().zip(added.iter().chain(&moved).copied()) {
        layout.insert(slot, b);
    }

    ops.extend(added.iter().copied().map(Op::PutBackend));
    for (&slot, b) in &layout {
        if old.slots.get(&slot) != Some(b) {
            ops.push(Op::PutSlot {
                slot: SlotKey {
                    service_id: id,
                    slot,
                },
                backend: *b,
            });
        }
    }
    let ranges = &desired.source_ranges;
    sync_source_ranges(id, &old.source_ranges, ranges, ops);
    let maglev_size = maglev::sync(&old, desired.external, &layout, current.maglev_size, ops);
    let new = FrontendState {
        id,
        name: name.to_owned(),
        count: new_len,
        slots: layout,
        affinity_secs,
        source_ranges: ranges.clone(),
        external: desired.external,
        maglev_size,
    };
    let renamed = old.name != name;
    let flags = frontend_flags(&new);
    if is_new
        || renamed
        || old.count != new_len
        || old.affinity_secs != affinity_secs
        || flags != frontend_flags(&old)
    {
        let value = ServiceValue {
            id,
            count: u16::try_from(new_len).unwrap_or(u16::MAX),
            flags,
        };
        ops.push(Op::PutFrontend {
            key,
            value,
            name: (is_new || renamed).then(|| name.to_owned()),
            affinity_secs,
        });
    }
    for &slot in old.slots.keys().filter(|&&s| s >= new_len) {
        ops.push(Op::DeleteSlot(SlotKey {
            service_id: id,
            slot,
        }));
    }
    let live: BTreeSet<u32> = new.slots.values().map(|b| b.id).collect();
    let removed: BTreeSet<u32> = old
        .slots
        .values()
        .map(|b| b.id)
        .filter(|i| !live.contains(i))
        .collect();
    ops.extend(removed.into_iter().map(Op::DeleteBackend));

    current.frontends.insert(key, new);
}

#[cfg(test)]
mod tests {
    use sluice_abi::proto;

    use super::*;

    /// The maps, simulated, with the invariant checked after every op.
    #[derive(Default)]
    struct FakeMaps {
        services: BTreeMap<ServiceKey, ServiceValue>,
        slots: BTreeMap<SlotKey, Backend>,
        backends: BTreeMap<u32, Backend>,
        names: BTreeMap<u32, String>,
        affinity: BTreeMap<u32, u32>,
        ranges: BTreeSet<(u32, Ipv4Addr, u8)>,
        maglev: BTreeMap<u32, u32>,
        writes: usize,
    }

    impl FakeMaps {
        /// Applies `ops` in the order the dataplane writes them.
        fn apply(&mut self, ops: &[Op], allowed: &BTreeSet<(Ipv4Addr, u16)>) {
            for op in write_order(ops) {
                self.writes += 1;
                match op {
                    Op::PutBackend(b) => {
                        self.backends.insert(b.id, *b);
                    }
                    Op::PutSlot { slot, backend } => {
                        self.slots.insert(*slot, *backend);
                    }
                    Op::PutFrontend {
                        key,
                        value,
                        name,
                        affinity_secs,
                    } => {
                        if *affinity_secs == 0 {
                            self.affinity.remove(&value.id);
                        } else {
                            self.affinity.insert(value.id, *affinity_secs);
                        }
                        self.services.insert(*key, *value);
                        if let Some(n) = name {
                            self.names.insert(value.id, n.clone());
                        }
                    }
                    Op::DeleteSlot(s) => {
                        self.slots.remove(s);
                    }
                    Op::DeleteFrontend { key, id } => {
                        self.services.remove(key);
                        self.names.remove(id);
                        self.affinity.remove(id);
                    }
                    Op::DeleteBackend(id) => {
                        self.backends.remove(id);
                    }
                    Op::PutMarker(ip) => {
                        let v = ServiceValue {
                            id: 0,
                            count: 0,
                            flags: SVC_FLAG_MARKER,
                        };
                        self.services.insert(ServiceKey::marker(*ip), v);
                    }
                    Op::DeleteMarker(ip) => {
                        self.services.remove(&ServiceKey::marker(*ip));
                    }
                    Op::PutSourceRange { id, net, len } => {
                        self.ranges.insert((*id, *net, *len));
                    }
                    Op::DeleteSourceRange { id, net, len } => {
                        self.ranges.remove(&(*id, *net, *len));
                    }
                    Op::PutMaglev { id, size, .. } => {
                        self.maglev.insert(*id, *size);
                    }
                    Op::DeleteMaglev { id, .. } => {
                        self.maglev.remove(id);
                    }
                }
                self.check_every_slot_is_valid(allowed);
            }
        }

        /// Every slot below a frontend's count holds a backend of the old or
        /// the new desired state: no packet ever finds no backend.
        fn check_every_slot_is_valid(&self, allowed: &BTreeSet<(Ipv4Addr, u16)>) {
            for (key, v) in &self.services {
                if v.flags & SVC_FLAG_MARKER != 0 {
                    continue;
                }
                for slot in 0..u32::from(v.count) {
                    let b = self.slots.get(&SlotKey {
                        service_id: v.id,
                        slot,
                    });
                    let b =
                        b.unwrap_or_else(|| panic!("{key:?} slot {slot} of {} is empty", v.count));
                    assert!(
                        allowed.contains(&(b.addr(), b.port())),
                        "slot {slot} holds {b:?}"
                    );
                }
            }
        }

        fn backends_of(&self, key: ServiceKey) -> BTreeSet<(Ipv4Addr, u16)> {
            let v = self.services[&key];
            (0..u32::from(v.count))
                .map(|slot| {
                    let b = self.slots[&SlotKey {
                        service_id: v.id,
                        slot,
                    }];
                    (b.addr(), b.port())
                })
                .collect()
        }
    }

    fn ip(last: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 0, 0, last)
    }

    fn vip() -> ServiceKey {
        ServiceKey::new(Ipv4Addr::new(10, 96, 0, 10), 80, proto::TCP)
    }

    fn desired(sets: &[(ServiceKey, &[u8])]) -> Desired {
        let mut d = Desired::default();
        for (key, backends) in sets {
            d.cluster_ips.insert(key.addr());
            d.frontends.insert(
                *key,
                DesiredFrontend {
                    name: format!("default/svc-{}", key.addr()),
                    backends: backends.iter().map(|&b| (ip(b), 8080)).collect(),
                    ..DesiredFrontend::default()
                },
            );
        }
        d
    }

    /// Applies a sequence of desired states, checking the invariant
    /// throughout; returns the maps and the ops of the last step.
    fn run(steps: &[Desired]) -> (FakeMaps, Vec<Op>, Current) {
        let mut current = Current::default();
        let mut maps = FakeMaps::default();
        let mut before: BTreeSet<(Ipv4Addr, u16)> = BTreeSet::new();
        let mut last = Vec::new();
        for d in steps {
            let now: BTreeSet<_> = d
                .frontends
                .values()
                .flat_map(|f| f.backends.iter().copied())
                .collect();
            let allowed = before.union(&now).copied().collect();
            last = reconcile(d, &mut current);
            maps.apply(&last, &allowed);
            for (key, f) in &d.frontends {
                assert_eq!(
                    maps.backends_of(*key),
                    f.backends,
                    "{key:?} after the update"
                );
            }
            assert_eq!(maps.services.len(), d.frontends.len() + d.cluster_ips.len());
            before = now;
        }
        (maps, last, current)
    }

    fn vip2() -> ServiceKey {
        ServiceKey::new(Ipv4Addr::new(10, 96, 0, 11), 80, proto::TCP)
    }

    #[test]
    fn the_writes_of_many_frontends_are_grouped_by_phase() {
        let d = desired(&[(vip(), &[1, 2]), (vip2(), &[3])]);
        let ops = reconcile(&d, &mut Current::default());
        let phases: Vec<u8> = write_order(&ops).iter().map(|op| op.phase()).collect();
        assert_eq!(phases, [0, 0, 0, 0, 0, 1, 1, 1, 2, 2]);
    }

    #[test]
    fn frontends_growing_shrinking_and_going_in_one_list_stay_valid() {
        // The invariant is checked after every write, in write order.
        let (maps, _, _) = run(&[
            desired(&[(vip(), &[1, 2, 3]), (vip2(), &[4])]),
            desired(&[(vip(), &[2]), (vip2(), &[4, 5, 6])]),
            desired(&[(vip2(), &[6, 7])]),
        ]);
        assert_eq!(maps.backends.len(), 2, "the removed backends are deleted");
        assert_eq!(maps.slots.len(), 2);
    }

    #[test]
    fn a_new_frontend_writes_backends_then_slots_then_the_service() {
        let (_, ops, _) = run(&[desired(&[(vip(), &[1, 2])])]);
        let kinds: Vec<&str> = ops
            .iter()
            .map(|o| match o {
                Op::PutMarker(_) => "marker",
                Op::PutBackend(_) => "backend",
                Op::PutSlot { .. } => "slot",
                Op::PutFrontend { .. } => "service",
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(
            kinds,
            ["marker", "backend", "backend", "slot", "slot", "service"]
        );
    }

    #[test]
    fn nothing_changes_nothing_is_written() {
        let d = desired(&[(vip(), &[1, 2, 3])]);
        let (_, ops, _) = run(&[d.clone(), d]);
        assert!(ops.is_empty(), "{ops:?}");
    }

    #[test]
    fn adding_one_endpoint_is_three_writes() {
        let (_, ops, _) = run(&[
            desired(&[(vip(), &[1, 2, 3])]),
            desired(&[(vip(), &[1, 2, 3, 4])]),
        ]);
        assert_eq!(ops.len(), 3, "{ops:?}");
        assert!(matches!(ops[0], Op::PutBackend(_)));
        assert!(matches!(
            ops[1],
            Op::PutSlot {
                slot: SlotKey { slot: 3, .. },
                ..
            }
        ));
        assert!(matches!(ops[2], Op::PutFrontend { name: None, .. }));
    }

    #[test]
    fn removing_an_endpoint_moves_the_tail_into_its_slot_before_shrinking() {
        let (maps, ops, _) = run(&[
            desired(&[(vip(), &[1, 2, 3])]),
            desired(&[(vip(), &[1, 3])]),
        ]);
        // Slot of 10.0.0.2 gets the tail (10.0.0.3), count shrinks, tail slot and backend go.
        assert!(
            matches!(&ops[0], Op::PutSlot { backend, .. } if backend.addr() == ip(3)),
            "{ops:?}"
        );
        assert!(matches!(
            ops[1],
            Op::PutFrontend {
                value: ServiceValue { count: 2, .. },
                ..
            }
        ));
        assert!(matches!(ops[2], Op::DeleteSlot(SlotKey { slot: 2, .. })));
        assert!(matches!(ops[3], Op::DeleteBackend(_)));
        assert_eq!(ops.len(), 4);
        assert_eq!(maps.backends.len(), 2);
    }

    #[test]
    fn backends_that_stay_keep_their_ids() {
        let mut current = Current::default();
        reconcile(&desired(&[(vip(), &[1, 2, 3])]), &mut current);
        let ids = |c: &Current| -> BTreeMap<Ipv4Addr, u32> {
            c.frontends[&vip()]
                .slots
                .values()
                .map(|b| (b.addr(), b.id))
                .collect()
        };
        let before = ids(&current);
        reconcile(&desired(&[(vip(), &[1, 3, 4, 5])]), &mut current);
        let after = ids(&current);
        assert_eq!(before[&ip(1)], after[&ip(1)]);
        assert_eq!(before[&ip(3)], after[&ip(3)]);
        assert!(
            !after.values().any(|id| *id == before[&ip(2)]),
            "a new backend never reuses a live id"
        );
    }

    #[test]
    fn endpoints_going_to_zero_and_back_and_frontends_going_away() {
        let other = ServiceKey::new(Ipv4Addr::new(10, 96, 0, 11), 53, proto::UDP);
        let (maps, ops, _) = run(&[
            desired(&[(vip(), &[1, 2]), (other, &[7])]),
            desired(&[(vip(), &[]), (other, &[7])]),
            desired(&[(vip(), &[3]), (other, &[7])]),
            desired(&[(vip(), &[3])]),
        ]);
        assert!(ops.contains(&Op::DeleteMarker(other.addr())));
        assert!(
            matches!(ops[0], Op::DeleteFrontend { .. }),
            "the frontend goes before its slots: {ops:?}"
        );
        assert!(maps.slots.len() == 1 && maps.backends.len() == 1);
    }

    #[test]
    fn random_churn_keeps_every_slot_valid() {
        // A small deterministic generator: no dependency, same sequence each run.
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let keys = [
            vip(),
            ServiceKey::new(Ipv4Addr::new(10, 96, 0, 11), 80, proto::TCP),
        ];
        let mut steps = Vec::new();
        for _ in 0..300 {
            let mut sets: Vec<(ServiceKey, Vec<u8>)> = Vec::new();
            for key in keys {
                if next() % 5 == 0 {
                    continue;
                }
                let set: Vec<u8> = (1..=12u8).filter(|_| next() % 2 == 0).collect();
                sets.push((key, set));
            }
            let borrowed: Vec<(ServiceKey, &[u8])> =
                sets.iter().map(|(k, v)| (*k, v.as_slice())).collect();
            steps.push(desired(&borrowed));
        }
        run(&steps);
    }

    #[test]
    fn turning_affinity_on_and_off_rewrites_only_the_frontend() {
        let plain = desired(&[(vip(), &[1, 2])]);
        let mut sticky = plain.clone();
        sticky.frontends.get_mut(&vip()).unwrap().affinity_secs = 600;
        let (maps, ops, _) = run(&[plain.clone(), sticky]);
        assert!(matches!(
            &ops[..],
            [Op::PutFrontend { value, affinity_secs: 600, name: None, .. }]
                if value.flags & SVC_FLAG_AFFINITY != 0
        ));
        assert_eq!(maps.affinity.values().copied().collect::<Vec<_>>(), [600]);
        let mut sticky = plain.clone();
        sticky.frontends.get_mut(&vip()).unwrap().affinity_secs = 600;
        let (maps, ops, _) = run(&[sticky, plain]);
        assert!(matches!(
            &ops[..],
            [Op::PutFrontend { value, affinity_secs: 0, .. }] if value.flags == 0
        ));
        assert!(maps.affinity.is_empty());
    }

    #[test]
    fn source_ranges_are_written_before_their_flag_and_go_with_their_frontend() {
        let plain = desired(&[(vip(), &[1])]);
        let mut ranged = plain.clone();
        ranged.frontends.get_mut(&vip()).unwrap().source_ranges =
            vec![(Ipv4Addr::new(10, 244, 1, 0), 24)];
        let (maps, ops, current) = run(&[plain.clone(), ranged]);
        let id = current.frontends[&vip()].id;
        assert_eq!(
            maps.ranges,
            BTreeSet::from([(id, Ipv4Addr::new(10, 244, 1, 0), 24)])
        );
        let phases: Vec<u8> = write_order(&ops).iter().map(|op| op.phase()).collect();
        assert_eq!(phases, [0, 2], "the range, then the flag: {ops:?}");
        assert!(matches!(
            &ops[..],
            [Op::PutSourceRange { .. }, Op::PutFrontend { value, .. }]
                if value.flags & SVC_FLAG_SOURCE_RANGES != 0
        ));
        let mut ranged = plain;
        ranged.frontends.get_mut(&vip()).unwrap().source_ranges =
            vec![(Ipv4Addr::new(10, 244, 1, 0), 24)];
        let (maps, _, _) = run(&[ranged, Desired::default()]);
        assert!(maps.ranges.is_empty(), "a removed frontend's ranges go too");
    }

    #[test]
    fn adopting_the_maps_after_a_restart_writes_nothing() {
        let mut d = desired(&[(vip(), &[1, 2, 3])]);
        d.frontends.get_mut(&vip()).unwrap().affinity_secs = 60;
        let (maps, _, before) = run(std::slice::from_ref(&d));
        let mut adopted = Current::adopt(
            maps.services.iter().map(|(k, v)| (*k, *v)),
            maps.slots.iter().map(|(k, v)| (*k, *v)),
            &maps.names,
            &maps.affinity,
            &BTreeMap::new(),
            &BTreeMap::new(),
        );
        assert_eq!(adopted.frontends, before.frontends);
        assert!(reconcile(&d, &mut adopted).is_empty());
        // New ids continue after the adopted ones.
        reconcile(&desired(&[(vip(), &[1, 2, 3, 4])]), &mut adopted);
        let ids: BTreeSet<u32> = adopted.frontends[&vip()]
            .slots
            .values()
            .map(|b| b.id)
            .collect();
        assert_eq!(ids.len(), 4);
    }
}
