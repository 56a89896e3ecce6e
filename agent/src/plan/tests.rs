//! Incremental plans, proved against a full reconcile.

use std::{collections::BTreeMap, net::IpAddr};

use super::*;
use crate::{
    model::{
        EndpointInfo, Model, Protocol, ServiceInfo, ServiceKind, ServicePortInfo, SliceInfo,
        store::{Event, list_events},
    },
    reconcile::{Current, reconcile, reconcile_changes},
};

/// A deterministic generator: no dependency, the same run every time.
struct Rng(u64);

impl Rng {
    fn next(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

fn key(name: String) -> ObjectKey {
    ObjectKey {
        namespace: "default".into(),
        name,
    }
}

fn service(rng: &mut Rng, i: u64) -> ServiceInfo {
    // Few ClusterIPs, so that Services collide on frontends.
    let ip: IpAddr = format!("10.96.0.{}", 1 + rng.next(4)).parse().unwrap();
    let kind = match rng.next(6) {
        0 => ServiceKind::Headless,
        _ => ServiceKind::ClusterIp { ips: vec![ip] },
    };
    let mut ports = vec![ServicePortInfo {
        name: "http".into(),
        port: 80,
        protocol: Protocol::Tcp,
        node_port: None,
    }];
    if rng.next(2) == 0 {
        ports.push(ServicePortInfo {
            name: "dns".into(),
            port: 53,
            protocol: Protocol::Udp,
            node_port: None,
        });
    }
    ServiceInfo {
        // Of two claims, the older (or, with no time, the first name) wins.
        created: (rng.next(3) != 0).then(|| i64::try_from(rng.next(4)).unwrap_or(0)),
        other_proxy: rng.next(8) == 0,
        // Sometimes another Service's ClusterIP (refused while that
        // Service holds it).
        external_ips: (0..rng.next(3) / 2)
            .map(|_| format!("10.96.0.{}", 1 + rng.next(4)).parse().unwrap())
            .collect(),
        ..ServiceInfo::test(&format!("s{i}"), kind, ports)
    }
}

fn slice(rng: &mut Rng, j: u64) -> SliceInfo {
    let endpoints = (0..rng.next(5))
        .map(|_| EndpointInfo {
            addresses: vec![format!("10.0.0.{}", 1 + rng.next(10)).parse().unwrap()],
            ready: rng.next(4) != 0,
            serving: true,
            terminating: rng.next(2) == 0,
            hostname: None,
            node_name: None,
            pod_name: None,
            for_zones: Vec::new(),
            for_nodes: Vec::new(),
        })
        .collect();
    SliceInfo {
        key: key(format!("e{j}")),
        service: (rng.next(7) != 0).then(|| format!("s{}", rng.next(6))),
        ..SliceInfo::test(
            "",
            "",
            &[("http", 8080, Protocol::Tcp), ("dns", 5353, Protocol::Udp)],
            endpoints,
        )
    }
}

/// One random event, applied to `truth` as the store should see it.
fn event(rng: &mut Rng, truth: &mut Model) -> Vec<SourceEvent> {
    match rng.next(10) {
        0..=2 => {
            let i = rng.next(6);
            let s = service(rng, i);
            truth.services.insert(s.key.clone(), s.clone());
            vec![SourceEvent::Service(Event::Applied(s.key.clone(), Some(s)))]
        }
        3 => {
            let k = key(format!("s{}", rng.next(6)));
            truth.services.remove(&k);
            vec![SourceEvent::Service(Event::Deleted(k))]
        }
        4..=6 => {
            let j = rng.next(8);
            let s = slice(rng, j);
            truth.slices.insert(s.key.clone(), s.clone());
            vec![SourceEvent::Slice(Event::Applied(s.key.clone(), Some(s)))]
        }
        7 => {
            let k = key(format!("e{}", rng.next(8)));
            truth.slices.remove(&k);
            vec![SourceEvent::Slice(Event::Deleted(k))]
        }
        8 => {
            // An invalid update: nothing changes.
            vec![SourceEvent::Slice(Event::Applied(
                key(format!("e{}", rng.next(8))),
                None,
            ))]
        }
        _ => {
            // A relist in which some objects changed and some are gone.
            for _ in 0..3 {
                let i = rng.next(6);
                let s = service(rng, i);
                truth.services.insert(s.key.clone(), s);
                truth.slices.remove(&key(format!("e{}", rng.next(8))));
            }
            list_events(truth)
        }
    }
}

/// Frontend key → (name, backends), and the markers: ids aside, what
/// the maps hold.
/// Frontend → (name, backends); and the markers.
type Content = (
    BTreeMap<String, (String, BTreeSet<(String, u16)>)>,
    BTreeSet<String>,
);

fn content(c: &Current) -> Content {
    let frontends = c
        .frontends
        .iter()
        .map(|(k, f)| {
            let backends = f
                .slots
                .values()
                .map(|b| (b.addr.to_string(), b.port))
                .collect();
            (
                format!("{}:{}/{}", k.addr, k.port, k.proto),
                (f.name.clone(), backends),
            )
        })
        .collect();
    (
        frontends,
        c.markers.iter().map(ToString::to_string).collect(),
    )
}

#[test]
fn incremental_plans_give_the_maps_what_a_full_reconcile_gives() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut truth = Model::default();
    let mut planner = Planner::default();
    let (mut incremental, mut full) = (Current::default(), Current::default());
    planner.apply(list_events(&truth));
    for step in 0..2000 {
        let mut batch = Vec::new();
        for _ in 0..=rng.next(3) {
            batch.extend(event(&mut rng, &mut truth));
        }
        planner.apply(batch);
        let changes = planner.plan(|| incremental.scope()).unwrap();
        reconcile_changes(&changes, &mut incremental);
        planner.done(true);
        reconcile(&truth.desired(), &mut full);
        assert_eq!(content(&incremental), content(&full), "step {step}");
    }
}

/// `s<i>`: ClusterIP 10.96.1.`i`, http 80/TCP.
fn http_service(i: u8, created: Option<i64>) -> ServiceInfo {
    let ips = vec![IpAddr::from([10, 96, 1, i])];
    let ports = vec![ServicePortInfo {
        name: "http".into(),
        port: 80,
        protocol: Protocol::Tcp,
        node_port: None,
    }];
    ServiceInfo {
        created,
        ..ServiceInfo::test(&format!("s{i}"), ServiceKind::ClusterIp { ips }, ports)
    }
}

#[test]
fn one_changed_slice_plans_only_its_services_frontends() {
    let mut rng = Rng(7);
    let mut model = Model::default();
    for i in 0..100u8 {
        let s = http_service(i, None);
        model.services.insert(s.key.clone(), s);
        let mut e = slice(&mut rng, u64::from(i));
        e.service = Some(format!("s{i}"));
        model.slices.insert(e.key.clone(), e);
    }
    let mut planner = Planner::default();
    planner.apply(list_events(&model));
    let first = planner.plan(Touched::default).unwrap();
    assert_eq!(first.frontends.len(), 100);
    planner.done(true);

    let mut e = slice(&mut rng, 42);
    e.service = Some("s42".into());
    planner.apply(vec![SourceEvent::Slice(Event::Applied(
        e.key.clone(),
        Some(e),
    ))]);
    let next = planner.plan(|| unreachable!("not a full plan")).unwrap();
    assert_eq!(next.frontends.len(), 1);
    assert_eq!(
        next.cluster_ips.keys().collect::<Vec<_>>(),
        [&"10.96.1.42".parse::<IpAddr>().unwrap()]
    );

    // A failed write makes the next plan full again.
    planner.done(false);
    let full = planner.plan(Touched::default).unwrap();
    assert_eq!(full.frontends.len(), 100);
}

#[test]
fn services_that_do_not_fit_are_never_planned_and_come_back_when_room_frees() {
    use capacity::Resource;
    let mut rng = Rng(11);
    let mut model = Model::default();
    for i in 0..150u8 {
        let s = http_service(i, Some(i64::from(i)));
        model.services.insert(s.key.clone(), s);
    }
    // A frontend and a marker each: 100 Services fill 200 entries.
    let mut limits = Entries::UNLIMITED;
    limits.set(Resource::Frontends, 200);
    let mut planner = Planner::default();
    planner.set_limits(limits, 251);
    planner.apply(list_events(&model));
    let mut current = Current::default();
    let changes = planner.plan(Touched::default).unwrap();
    reconcile_changes(&changes, &mut current);
    planner.done(true);
    assert_eq!(current.frontends.len(), 100);
    assert_eq!(current.markers.len(), 100);
    let served: BTreeSet<u8> = current
        .markers
        .iter()
        .filter_map(|ip| match ip {
            IpAddr::V4(v4) => Some(v4.octets()[3]),
            IpAddr::V6(_) => None,
        })
        .collect();
    assert_eq!(served, (0..100).collect(), "the oldest");
    let left_out = planner.admission().left_out();
    assert_eq!(left_out.len(), 50);
    assert_eq!(left_out[0], (key("s100".into()), Resource::Frontends));
    assert_eq!(planner.take_changed().len(), 150);

    // An endpoint change to a Service left out writes nothing.
    let mut e = slice(&mut rng, 140);
    e.service = Some("s140".into());
    planner.apply(vec![SourceEvent::Slice(Event::Applied(
        e.key.clone(),
        Some(e),
    ))]);
    let changes = planner.plan(|| unreachable!()).unwrap();
    assert!(reconcile_changes(&changes, &mut current).is_empty());
    planner.done(true);

    // 60 deleted: the other 50 come in, with no full plan.
    let deletes = (0..60).map(|i| SourceEvent::Service(Event::Deleted(key(format!("s{i}")))));
    planner.apply(deletes.collect());
    let changes = planner.plan(|| unreachable!()).unwrap();
    reconcile_changes(&changes, &mut current);
    assert_eq!(current.frontends.len(), 90);
    assert!(planner.admission().left_out().is_empty());
    let changed = planner.take_changed();
    assert!(changed.contains(&key("s149".into())) && changed.contains(&key("s0".into())));
}

#[test]
fn nothing_is_planned_before_both_kinds_are_listed() {
    let mut planner = Planner::default();
    planner.apply(vec![
        SourceEvent::Service(Event::List),
        SourceEvent::Service(Event::ListDone),
    ]);
    assert!(planner.plan(Touched::default).is_none());
    planner.apply(vec![
        SourceEvent::Slice(Event::List),
        SourceEvent::Slice(Event::ListDone),
    ]);
    assert!(planner.plan(Touched::default).is_some());
}
