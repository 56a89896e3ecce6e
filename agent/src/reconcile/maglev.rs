//! The Maglev tables of the frontends XDP serves: when to write, rewrite
//! or delete them, and their content (backend ids), computed from the
//! frontend's backends with `sluice_abi::maglev`. Every node computes the
//! same table from the same endpoints, whatever ids it gave them.

use std::collections::{BTreeMap, BTreeSet};

use sluice_abi::{
    maglev::{populate, table_size},
    service::maglev_chunks,
};

use super::{FrontendState, Op};
use crate::{frontend::BackendRef, model::External};

/// Writes the table frontend `old` (as it was) needs with its new slots
/// `layout`, or deletes the one it no longer needs; returns the size of
/// its table now (0: none). `configured` is the smallest table size.
pub fn sync(
    old: &FrontendState,
    external: External,
    layout: &BTreeMap<u32, BackendRef>,
    configured: u32,
    ops: &mut Vec<Op>,
) -> u32 {
    if external != External::Serve || layout.is_empty() {
        ops.extend(delete(old.id, old.maglev_size, 0));
        return 0;
    }
    let count = u32::try_from(layout.len()).unwrap_or(u32::MAX);
    let size = table_size(count, configured);
    let before: BTreeSet<BackendRef> = old
        .slots
        .iter()
        .filter(|(slot, _)| **slot < old.count)
        .map(|(_, b)| *b)
        .collect();
    let after: BTreeSet<BackendRef> = layout.values().copied().collect();
    if old.maglev_size == size && before == after {
        return size;
    }
    let Some(table) = table(&after, size) else {
        tracing::warn!(frontend = old.id, size, "cannot build a Maglev table");
        ops.extend(delete(old.id, old.maglev_size, 0));
        return 0;
    };
    ops.push(Op::PutMaglev {
        id: old.id,
        size,
        table,
    });
    // A smaller table leaves chunks behind.
    ops.extend(delete(old.id, old.maglev_size, maglev_chunks(size)));
    size
}

/// Deletes chunks `from..` of frontend `id`'s table of `size` entries.
pub fn delete(id: u32, size: u32, from: u32) -> Option<Op> {
    let to = maglev_chunks(size);
    (from < to).then_some(Op::DeleteMaglev {
        id,
        chunks: from..to,
    })
}

/// The table of `size` entries over `backends`: backend ids. Backends are
/// ordered by address and port, so the table does not depend on ids.
pub fn table(backends: &BTreeSet<BackendRef>, size: u32) -> Option<Vec<u32>> {
    let mut keyed: Vec<(u64, u32)> = backends.iter().map(|b| (b.maglev_key(), b.id)).collect();
    keyed.sort_unstable();
    keyed.dedup_by_key(|(key, _)| *key);
    let keys: Vec<u64> = keyed.iter().map(|(key, _)| *key).collect();
    let mut entries = vec![0u32; usize::try_from(size).ok()?];
    let mut next = vec![0u32; keys.len()];
    populate(&keys, &mut entries, &mut next).ok()?;
    entries
        .into_iter()
        .map(|i| keyed.get(usize::try_from(i).ok()?).map(|(_, id)| *id))
        .collect()
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use sluice_abi::{
        maglev::DEFAULT_TABLE_SIZE,
        proto,
        service::{MAGLEV_CHUNK, SVC_FLAG_MAGLEV},
    };

    use super::*;
    use crate::{
        frontend::FrontendKey,
        model::{Desired, DesiredFrontend},
        reconcile::{Current, reconcile},
    };

    fn node_port() -> FrontendKey {
        FrontendKey::node_port(30080, proto::TCP)
    }

    fn desired(external: External, backends: &[u8]) -> Desired {
        let mut d = Desired::default();
        d.frontends.insert(
            node_port(),
            DesiredFrontend {
                name: "default/web".into(),
                backends: backends
                    .iter()
                    .map(|&b| (IpAddr::from([10, 244, 2, b]), 8080))
                    .collect(),
                external,
                ..DesiredFrontend::default()
            },
        );
        d
    }

    /// The backend addresses a table points at, entry by entry.
    fn addresses(current: &Current, table: &[u32]) -> Vec<IpAddr> {
        let by_id: BTreeMap<u32, IpAddr> = current.frontends[&node_port()]
            .slots
            .values()
            .map(|b| (b.id, b.addr))
            .collect();
        table.iter().map(|id| by_id[id]).collect()
    }

    fn put_maglev(ops: &[Op]) -> Option<(u32, Vec<u32>)> {
        ops.iter().find_map(|op| match op {
            Op::PutMaglev { size, table, .. } => Some((*size, table.clone())),
            _ => None,
        })
    }

    #[test]
    fn a_served_frontend_gets_its_table_before_its_flag() {
        let mut current = Current::default();
        let ops = reconcile(&desired(External::Serve, &[1, 2, 3]), &mut current);
        let (size, table) = put_maglev(&ops).unwrap();
        assert_eq!(size, DEFAULT_TABLE_SIZE);
        assert_eq!(table.len(), DEFAULT_TABLE_SIZE as usize);
        let seen: BTreeSet<IpAddr> = addresses(&current, &table).into_iter().collect();
        assert_eq!(seen.len(), 3, "every backend has entries");
        let order: &[Op] = &ops;
        let table_at = order
            .iter()
            .position(|op| matches!(op, Op::PutMaglev { .. }))
            .unwrap();
        let service_at = order
            .iter()
            .position(|op| matches!(op, Op::PutFrontend { value, .. } if value.flags & SVC_FLAG_MAGLEV != 0))
            .unwrap();
        assert!(table_at < service_at, "{order:?}");
    }

    #[test]
    fn every_node_builds_the_same_table_whatever_its_ids() {
        let mut a = Current::default();
        let mut b = Current::default();
        // Node b has seen other frontends first: its ids differ.
        let mut warm = desired(External::No, &[7, 8, 9]);
        warm.frontends = warm
            .frontends
            .into_values()
            .map(|f| {
                (
                    FrontendKey::new(IpAddr::from([10, 96, 0, 1]), 80, proto::TCP),
                    f,
                )
            })
            .collect();
        reconcile(&warm, &mut b);
        let mut both = desired(External::Serve, &[1, 2, 3, 4]);
        let ta = put_maglev(&reconcile(&both, &mut a)).unwrap().1;
        both.frontends.extend(warm.frontends);
        let tb = put_maglev(&reconcile(&both, &mut b)).unwrap().1;
        assert_ne!(ta, tb, "the ids differ");
        assert_eq!(addresses(&a, &ta), addresses(&b, &tb));
    }

    #[test]
    fn tables_follow_backend_changes_and_go_when_no_longer_served() {
        let mut current = Current::default();
        reconcile(&desired(External::Serve, &[1, 2, 3]), &mut current);
        // Nothing changed: nothing written.
        assert!(reconcile(&desired(External::Serve, &[1, 2, 3]), &mut current).is_empty());
        let ops = reconcile(&desired(External::Serve, &[1, 2]), &mut current);
        let table = put_maglev(&ops).unwrap().1;
        assert!(
            !addresses(&current, &table).contains(&IpAddr::from([10, 244, 2, 3])),
            "the removed backend has no entry"
        );
        // Local policy: this entry serves pods; the local scope has the table.
        let ops = reconcile(&desired(External::ViaLocalScope, &[1, 2]), &mut current);
        let chunks = maglev_chunks(DEFAULT_TABLE_SIZE);
        assert!(
            ops.iter()
                .any(|op| matches!(op, Op::DeleteMaglev { chunks: c, .. } if *c == (0..chunks)))
        );
        assert_eq!(current.frontends[&node_port()].maglev_size, 0);
        // Served again, then without endpoints: the table goes.
        reconcile(&desired(External::Serve, &[1]), &mut current);
        let ops = reconcile(&desired(External::Serve, &[]), &mut current);
        assert!(ops.iter().any(|op| matches!(op, Op::DeleteMaglev { .. })));
        // And a removed frontend's table goes with it.
        reconcile(&desired(External::Serve, &[1]), &mut current);
        let ops = reconcile(&Desired::default(), &mut current);
        assert!(ops.iter().any(|op| matches!(op, Op::DeleteMaglev { .. })));
    }

    #[test]
    fn more_backends_grow_the_table_and_fewer_shrink_it_chunk_by_chunk() {
        let many: Vec<u8> = (1..=60).collect();
        let mut current = Current::default();
        reconcile(&desired(External::Serve, &[1]), &mut current);
        let ops = reconcile(&desired(External::Serve, &many), &mut current);
        let (size, _) = put_maglev(&ops).unwrap();
        assert!(size >= 60 * 650, "{size}");
        let ops = reconcile(&desired(External::Serve, &[1]), &mut current);
        let (small, _) = put_maglev(&ops).unwrap();
        assert_eq!(small, DEFAULT_TABLE_SIZE);
        let trailing = ops.iter().find_map(|op| match op {
            Op::DeleteMaglev { chunks, .. } => Some(chunks.clone()),
            _ => None,
        });
        assert_eq!(
            trailing,
            Some(maglev_chunks(DEFAULT_TABLE_SIZE)..size.div_ceil(MAGLEV_CHUNK))
        );
    }
}
