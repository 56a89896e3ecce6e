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
pub mod sim;

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use sluice_abi::service::{
    SVC_FLAG_AFFINITY, SVC_FLAG_EXT_LOCAL, SVC_FLAG_EXTERNAL, SVC_FLAG_MAGLEV, SVC_FLAG_MARKER,
    SVC_FLAG_SOURCE_RANGES, ServiceValue, SlotKey,
};

use crate::{
    frontend::{BackendRef, FrontendKey},
    model::{
        Desired, DesiredFrontend, External,
        frontends::{DesiredChanges, Touched},
    },
};

/// One write or delete in the dataplane maps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// A new backend (its counters appear with its first packet).
    PutBackend(BackendRef),
    PutSlot {
        slot: SlotKey,
        backend: BackendRef,
    },
    /// Create or update a frontend; `name` is set when it is new or renamed.
    /// `affinity_secs` is its `ClientIP` affinity timeout (0: none), written
    /// next to it when `value.flags` has `SVC_FLAG_AFFINITY`.
    PutFrontend {
        key: FrontendKey,
        value: ServiceValue,
        name: Option<String>,
        affinity_secs: u32,
    },
    /// A slot of a frontend of the family `v6` says.
    DeleteSlot {
        slot: SlotKey,
        v6: bool,
    },
    /// Remove a frontend, its name and its counters.
    DeleteFrontend {
        key: FrontendKey,
        id: u32,
    },
    /// Remove a backend (of the family `v6` says) and its counters.
    DeleteBackend {
        id: u32,
        v6: bool,
    },
    PutMarker(IpAddr),
    DeleteMarker(IpAddr),
    /// A source range (network, prefix length) of frontend `id`.
    PutSourceRange {
        id: u32,
        net: IpAddr,
        len: u8,
    },
    DeleteSourceRange {
        id: u32,
        net: IpAddr,
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
    /// The phase of the map writes this belongs to (see `Plan`).
    const fn phase(&self) -> u8 {
        match self {
            Self::PutMarker(_) | Self::PutBackend(_) | Self::PutSourceRange { .. } => 0,
            Self::PutSlot { .. } | Self::PutMaglev { .. } => 1,
            Self::PutFrontend { .. } => 2,
            Self::DeleteFrontend { .. } => 3,
            Self::DeleteSlot { .. } | Self::DeleteMaglev { .. } => 4,
            Self::DeleteBackend { .. } | Self::DeleteMarker(_) | Self::DeleteSourceRange { .. } => {
                5
            }
        }
    }
}

/// Map operations in the order they are written, so that the writes of
/// many frontends can go in batches and every frontend stays valid
/// throughout: new backends, then slots and Maglev tables, then frontends
/// (a count grows only once its slots exist, and shrinks before the slots
/// past it go), then removed frontends, their slots and tables, and the
/// backends nothing points at any more. Within a phase, the order the
/// frontends were reconciled in is kept. Backend and frontend ids are not
/// reused within one plan, so no write is moved past a delete of the same
/// entry. The writer takes it as it is (`Maps::apply_all`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan(Vec<Op>);

impl Plan {
    fn new(mut ops: Vec<Op>) -> Self {
        ops.sort_by_key(Op::phase);
        Self(ops)
    }

    /// The writes (phases 0 to 2), then the deletes.
    pub fn split(&self) -> (&[Op], &[Op]) {
        self.0
            .split_at(self.0.partition_point(|op| op.phase() <= 2))
    }
}

impl std::ops::Deref for Plan {
    type Target = [Op];

    fn deref(&self) -> &[Op] {
        &self.0
    }
}

/// A frontend as it is in the maps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FrontendState {
    pub id: u32,
    pub name: String,
    pub count: u32,
    pub slots: BTreeMap<u32, BackendRef>,
    /// `ClientIP` affinity timeout in seconds; 0: none.
    pub affinity_secs: u32,
    /// Source ranges (network, prefix length); empty: any client.
    pub source_ranges: Vec<(IpAddr, u8)>,
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
    pub frontends: BTreeMap<FrontendKey, FrontendState>,
    pub markers: BTreeSet<IpAddr>,
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
        services: impl IntoIterator<Item = (FrontendKey, ServiceValue)>,
        slots: impl IntoIterator<Item = (SlotKey, BackendRef)>,
        names: &BTreeMap<u32, String>,
        affinity: &BTreeMap<u32, u32>,
        source_ranges: &BTreeMap<u32, Vec<(IpAddr, u8)>>,
        maglev_sizes: &BTreeMap<u32, u32>,
    ) -> Self {
        let mut current = Self::default();
        let mut by_id = BTreeMap::new();
        for (key, value) in services {
            if value.flags & SVC_FLAG_MARKER != 0 {
                current.markers.insert(key.addr);
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

/// Computes the operations that make `current` equal `desired`, in write
/// order, and updates `current` as if they had been applied.
pub fn reconcile(desired: &Desired, current: &mut Current) -> Plan {
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
pub fn reconcile_changes(changes: &DesiredChanges, current: &mut Current) -> Plan {
    let mut ops = Vec::new();
    for (ip, _) in changes.cluster_ips.iter().filter(|(_, want)| **want) {
        if current.markers.insert(*ip) {
            ops.push(Op::PutMarker(*ip));
        }
    }
    for (key, want) in &changes.frontends {
        let Some(want) = want else { continue };
        let backends: Vec<(IpAddr, u16)> = want
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
            let v6 = key.is_ipv6();
            for slot in f.slots.keys() {
                let slot = SlotKey {
                    service_id: f.id,
                    slot: *slot,
                };
                ops.push(Op::DeleteSlot { slot, v6 });
            }
            let ids: BTreeSet<u32> = f.slots.values().map(|b| b.id).collect();
            ops.extend(ids.into_iter().map(|id| Op::DeleteBackend { id, v6 }));
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
    Plan::new(ops)
}

/// Writes the ranges of frontend `id` that are new, deletes those that
/// went.
fn sync_source_ranges(id: u32, old: &[(IpAddr, u8)], new: &[(IpAddr, u8)], ops: &mut Vec<Op>) {
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
    key: FrontendKey,
    desired: &DesiredFrontend,
    want: &[(IpAddr, u16)],
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
    let wanted: BTreeSet<(IpAddr, u16)> = want.iter().copied().collect();
    let new_len = u32::try_from(want.len()).unwrap_or(u32::MAX);

    // Backends that stay keep their slot when it is still in range.
    let mut layout: BTreeMap<u32, BackendRef> = BTreeMap::new();
    let mut kept: BTreeSet<(IpAddr, u16)> = BTreeSet::new();
    let mut moved: Vec<BackendRef> = Vec::new();
    for (&slot, b) in &old.slots {
        let addr = (b.addr, b.port);
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
            added.push(BackendRef::new(current.alloc_backend_id(), addr, port));
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
    let v6 = key.is_ipv6();
    for &slot in old.slots.keys().filter(|&&s| s >= new_len) {
        let slot = SlotKey {
            service_id: id,
            slot,
        };
        ops.push(Op::DeleteSlot { slot, v6 });
    }
    let live: BTreeSet<u32> = new.slots.values().map(|b| b.id).collect();
    let removed: BTreeSet<u32> = old
        .slots
        .values()
        .map(|b| b.id)
        .filter(|i| !live.contains(i))
        .collect();
    ops.extend(removed.into_iter().map(|id| Op::DeleteBackend { id, v6 }));

    current.frontends.insert(key, new);
}

#[cfg(test)]
mod tests;
