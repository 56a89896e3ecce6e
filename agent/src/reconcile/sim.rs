//! The Service maps, simulated: what a `Plan` leaves in them, written an
//! operation at a time, without a kernel. Reconcile's tests and the golden
//! cases (`agent/tests/golden.rs`) run on it, and check after every
//! operation that a packet would find a backend (`check`).

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use sluice_abi::service::{SVC_FLAG_MARKER, ServiceValue, SlotKey};

use super::Op;
use crate::frontend::{BackendRef, FrontendKey};

/// The maps reconcile writes, as ordered maps; both families' in one
/// (keys and backends say which).
#[derive(Clone, Debug, Default)]
pub struct SimMaps {
    pub services: BTreeMap<FrontendKey, ServiceValue>,
    pub slots: BTreeMap<SlotKey, BackendRef>,
    pub backends: BTreeMap<u32, BackendRef>,
    pub names: BTreeMap<u32, String>,
    pub affinity: BTreeMap<u32, u32>,
    pub ranges: BTreeSet<(u32, IpAddr, u8)>,
    /// Frontend id → its Maglev table's size.
    pub maglev: BTreeMap<u32, u32>,
    /// Operations applied so far.
    pub writes: usize,
}

impl SimMaps {
    /// Applies one operation, as the dataplane writes it.
    pub fn apply(&mut self, op: &Op) {
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
            Op::DeleteSlot { slot, .. } => {
                self.slots.remove(slot);
            }
            Op::DeleteFrontend { key, id } => {
                self.services.remove(key);
                self.names.remove(id);
                self.affinity.remove(id);
            }
            Op::DeleteBackend { id, .. } => {
                self.backends.remove(id);
            }
            Op::PutMarker(ip) => {
                let v = ServiceValue {
                    id: 0,
                    count: 0,
                    flags: SVC_FLAG_MARKER,
                };
                self.services.insert(FrontendKey::marker(*ip), v);
            }
            Op::DeleteMarker(ip) => {
                self.services.remove(&FrontendKey::marker(*ip));
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
    }

    /// Whether a packet to any frontend would find a backend: every slot
    /// below a frontend's count holds one, a Maglev frontend has its table,
    /// and an affinity flag has its timeout. The first fault, named.
    pub fn check(&self) -> Result<(), String> {
        use sluice_abi::service::{SVC_FLAG_AFFINITY, SVC_FLAG_MAGLEV};
        for (key, v) in &self.services {
            if v.flags & SVC_FLAG_MARKER != 0 {
                continue;
            }
            for slot in 0..u32::from(v.count) {
                let at = SlotKey {
                    service_id: v.id,
                    slot,
                };
                if !self.slots.contains_key(&at) {
                    return Err(format!("{key:?}: slot {slot} of {} is empty", v.count));
                }
            }
            if v.flags & SVC_FLAG_MAGLEV != 0 && !self.maglev.contains_key(&v.id) {
                return Err(format!("{key:?}: the Maglev flag without a table"));
            }
            if v.flags & SVC_FLAG_AFFINITY != 0 && !self.affinity.contains_key(&v.id) {
                return Err(format!("{key:?}: the affinity flag without a timeout"));
            }
        }
        Ok(())
    }

    /// The backends in frontend `key`'s slots below its count.
    pub fn backends_of(&self, key: FrontendKey) -> BTreeSet<(IpAddr, u16)> {
        let Some(v) = self.services.get(&key) else {
            return BTreeSet::new();
        };
        (0..u32::from(v.count))
            .filter_map(|slot| {
                self.slots.get(&SlotKey {
                    service_id: v.id,
                    slot,
                })
            })
            .map(|b| (b.addr, b.port))
            .collect()
    }
}
