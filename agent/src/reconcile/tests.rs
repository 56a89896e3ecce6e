//! Reconcile against simulated maps, with the invariant (every frontend
//! finds a valid backend) checked after every operation.

use std::net::IpAddr;

use sluice_abi::proto;

use super::{sim::SimMaps, *};
use crate::frontend::FrontendKey;

/// Applies `ops` in their order, as the dataplane writes a `Plan`,
/// checking after each that a packet finds a backend, and one of the old
/// or the new desired state (`allowed`).
fn apply(maps: &mut SimMaps, ops: &[Op], allowed: &BTreeSet<(IpAddr, u16)>) {
    for op in ops {
        maps.apply(op);
        maps.check().unwrap();
        for (key, v) in &maps.services {
            for slot in 0..u32::from(v.count) {
                let b = maps.slots[&SlotKey {
                    service_id: v.id,
                    slot,
                }];
                assert!(
                    allowed.contains(&(b.addr, b.port)),
                    "{key:?} slot {slot} holds {b:?}"
                );
            }
        }
    }
}

fn ip(last: u8) -> IpAddr {
    IpAddr::from([10, 0, 0, last])
}

fn vip() -> FrontendKey {
    FrontendKey::new(IpAddr::from([10, 96, 0, 10]), 80, proto::TCP)
}

fn desired(sets: &[(FrontendKey, &[u8])]) -> Desired {
    let mut d = Desired::default();
    for (key, backends) in sets {
        d.cluster_ips.insert(key.addr);
        d.frontends.insert(
            *key,
            DesiredFrontend {
                name: format!("default/svc-{}", key.addr),
                backends: backends.iter().map(|&b| (ip(b), 8080)).collect(),
                ..DesiredFrontend::default()
            },
        );
    }
    d
}

/// Applies a sequence of desired states, checking the invariant
/// throughout; returns the maps and the ops of the last step.
fn run(steps: &[Desired]) -> (SimMaps, Plan, Current) {
    let mut current = Current::default();
    let mut maps = SimMaps::default();
    let mut before: BTreeSet<(IpAddr, u16)> = BTreeSet::new();
    let mut last = Plan::default();
    for d in steps {
        let now: BTreeSet<_> = d
            .frontends
            .values()
            .flat_map(|f| f.backends.iter().copied())
            .collect();
        let allowed = before.union(&now).copied().collect();
        last = reconcile(d, &mut current);
        apply(&mut maps, &last, &allowed);
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

fn vip2() -> FrontendKey {
    FrontendKey::new(IpAddr::from([10, 96, 0, 11]), 80, proto::TCP)
}

#[test]
fn the_writes_of_many_frontends_are_grouped_by_phase() {
    let d = desired(&[(vip(), &[1, 2]), (vip2(), &[3])]);
    let ops = reconcile(&d, &mut Current::default());
    let phases: Vec<u8> = ops.iter().map(Op::phase).collect();
    assert_eq!(
        phases,
        [0, 0, 0, 0, 0, 1, 1, 1, 2, 2],
        "the plan is in write order"
    );
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
        matches!(&ops[0], Op::PutSlot { backend, .. } if backend.addr == ip(3)),
        "{ops:?}"
    );
    assert!(matches!(
        ops[1],
        Op::PutFrontend {
            value: ServiceValue { count: 2, .. },
            ..
        }
    ));
    assert!(matches!(
        ops[2],
        Op::DeleteSlot {
            slot: SlotKey { slot: 2, .. },
            v6: false
        }
    ));
    assert!(matches!(ops[3], Op::DeleteBackend { v6: false, .. }));
    assert_eq!(ops.len(), 4);
    assert_eq!(maps.backends.len(), 2);
}

#[test]
fn backends_that_stay_keep_their_ids() {
    let mut current = Current::default();
    reconcile(&desired(&[(vip(), &[1, 2, 3])]), &mut current);
    let ids = |c: &Current| -> BTreeMap<IpAddr, u32> {
        c.frontends[&vip()]
            .slots
            .values()
            .map(|b| (b.addr, b.id))
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
    let other = FrontendKey::new(IpAddr::from([10, 96, 0, 11]), 53, proto::UDP);
    let (maps, ops, _) = run(&[
        desired(&[(vip(), &[1, 2]), (other, &[7])]),
        desired(&[(vip(), &[]), (other, &[7])]),
        desired(&[(vip(), &[3]), (other, &[7])]),
        desired(&[(vip(), &[3])]),
    ]);
    assert!(ops.contains(&Op::DeleteMarker(other.addr)));
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
        FrontendKey::new(IpAddr::from([10, 96, 0, 11]), 80, proto::TCP),
    ];
    let mut steps = Vec::new();
    for _ in 0..300 {
        let mut sets: Vec<(FrontendKey, Vec<u8>)> = Vec::new();
        for key in keys {
            if next() % 5 == 0 {
                continue;
            }
            let set: Vec<u8> = (1..=12u8).filter(|_| next() % 2 == 0).collect();
            sets.push((key, set));
        }
        let borrowed: Vec<(FrontendKey, &[u8])> =
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
        vec![(IpAddr::from([10, 244, 1, 0]), 24)];
    let (maps, ops, current) = run(&[plain.clone(), ranged]);
    let id = current.frontends[&vip()].id;
    assert_eq!(
        maps.ranges,
        BTreeSet::from([(id, IpAddr::from([10, 244, 1, 0]), 24)])
    );
    let phases: Vec<u8> = ops.iter().map(Op::phase).collect();
    assert_eq!(phases, [0, 2], "the range, then the flag: {ops:?}");
    assert!(matches!(
        &ops[..],
        [Op::PutSourceRange { .. }, Op::PutFrontend { value, .. }]
            if value.flags & SVC_FLAG_SOURCE_RANGES != 0
    ));
    let mut ranged = plain;
    ranged.frontends.get_mut(&vip()).unwrap().source_ranges =
        vec![(IpAddr::from([10, 244, 1, 0]), 24)];
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

#[test]
fn an_ipv6_frontends_deletes_go_to_its_familys_maps() {
    let six = FrontendKey::new("fd00:96::a".parse::<IpAddr>().unwrap(), 80, proto::TCP);
    let mut d = Desired::default();
    d.frontends.insert(
        six,
        DesiredFrontend {
            name: "default/six".into(),
            backends: [("fd00:244::1".parse().unwrap(), 8080)].into(),
            ..DesiredFrontend::default()
        },
    );
    let mut current = Current::default();
    let _ = reconcile(&d, &mut current);
    let ops = reconcile(&Desired::default(), &mut current);
    assert!(
        ops.iter()
            .any(|op| matches!(op, Op::DeleteSlot { v6: true, .. }))
            && ops
                .iter()
                .any(|op| matches!(op, Op::DeleteBackend { v6: true, .. }))
            && !ops.iter().any(|op| matches!(
                op,
                Op::DeleteSlot { v6: false, .. } | Op::DeleteBackend { v6: false, .. }
            )),
        "{ops:?}"
    );
}
