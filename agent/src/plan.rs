//! From source events to map changes, incrementally: the store says which
//! Services an event touched, the frontend index turns those into the
//! desired state of just their frontends, and reconcile writes the
//! difference. A change costs in proportion to the Services it touches,
//! not to the number of Services. What the maps cannot hold is left out
//! whole, by Service (`capacity`).

pub mod capacity;

use std::collections::{BTreeMap, BTreeSet};

use capacity::{Admission, Entries};

use crate::model::{
    NodeInfo, ObjectKey,
    frontends::{DesiredChanges, Frontends, Touched},
    store::{SourceEvent, Store},
};

#[derive(Debug, Default)]
pub struct Planner {
    store: Store,
    frontends: Frontends,
    /// Which Services fit in the maps.
    admission: Admission,
    /// Services changed since the last plan.
    dirty: BTreeSet<ObjectKey>,
    /// Services changed since the last `take_changed` (for DNS).
    changed: BTreeSet<ObjectKey>,
    /// Whether a plan has been made; the first covers everything, including
    /// what the (adopted) maps hold that nothing asks for any more.
    planned: bool,
    /// The last write failed: the next plan covers everything.
    full: bool,
}

impl Planner {
    /// A planner for the node named `node_name` (`--node-name`).
    pub fn new(node_name: Option<String>) -> Self {
        let mut planner = Self::default();
        planner.store.set_node_name(node_name);
        planner
    }

    /// The maps' limits, and the smallest Maglev table (before the first
    /// plan).
    pub const fn set_limits(&mut self, limits: Entries, maglev_size: u32) {
        self.admission.set_limits(limits, maglev_size);
    }

    /// Which Services fit, and which are left out.
    pub const fn admission(&self) -> &Admission {
        &self.admission
    }

    pub fn apply(&mut self, batch: Vec<SourceEvent>) {
        let mut dirty = BTreeSet::new();
        for event in batch {
            self.store.apply(event, &mut dirty);
        }
        self.changed.extend(dirty.iter().cloned());
        self.dirty.extend(dirty);
    }

    /// Services changed since the last call, for other readers of the
    /// model (DNS); the store has their current state.
    pub fn take_changed(&mut self) -> BTreeSet<ObjectKey> {
        std::mem::take(&mut self.changed)
    }

    /// The trigger times of the EndpointSlice changes the last written plan
    /// carried.
    pub fn take_triggers(&mut self) -> Vec<std::time::SystemTime> {
        self.store.take_triggers()
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Whether Services and EndpointSlices have both been listed.
    pub fn synced(&self) -> bool {
        self.store.synced()
    }

    /// The desired state of whatever changed since the last plan; `None`
    /// until the sources have listed Services and EndpointSlices. `held`
    /// gives what the maps hold, for a full plan.
    pub fn plan(&mut self, held: impl FnOnce() -> Touched) -> Option<DesiredChanges> {
        if !self.store.synced() {
            return None;
        }
        let mut touched = Touched::default();
        let mut wants = BTreeMap::new();
        for key in std::mem::take(&mut self.dirty) {
            let want = self.store.service_desired(&key);
            self.admission.set(&key, want.as_ref());
            wants.insert(key, want);
        }
        // Services that came in or went out with these changes.
        for key in self.admission.admit() {
            self.changed.insert(key.clone());
            if let std::collections::btree_map::Entry::Vacant(e) = wants.entry(key) {
                let want = self.store.service_desired(e.key());
                e.insert(want);
            }
        }
        for (key, want) in wants {
            let want = want.filter(|_| self.admission.admitted(&key));
            self.frontends.set(&key, want, &mut touched);
        }
        if !self.planned || self.full {
            touched = self.frontends.all();
            let held = held();
            touched.frontends.extend(held.frontends);
            touched.cluster_ips.extend(held.cluster_ips);
        }
        self.planned = true;
        Some(self.frontends.changes(&touched))
    }

    /// Whether the plan was written; after a failure the next plan is full.
    pub fn done(&mut self, ok: bool) {
        self.full = !ok;
    }

    /// Number of frontends.
    pub fn frontends(&self) -> usize {
        self.frontends.len()
    }

    pub fn node(&self) -> Option<&NodeInfo> {
        self.store.node()
    }
}

#[cfg(test)]
mod tests;
