//! Claims on frontends: who owns each, who is refused, and the desired
//! state of what a change touched.

use std::net::IpAddr;

use sluice_abi::proto;

use super::*;
use crate::frontend::FrontendKey;

fn svc(name: &str) -> ObjectKey {
    ObjectKey {
        namespace: "default".into(),
        name: name.into(),
    }
}

fn want(ip: [u8; 4], port: u16, backend: u8, name: &str) -> ServiceDesired {
    let ip = IpAddr::from(ip);
    ServiceDesired {
        frontends: BTreeMap::from([(
            FrontendKey::new(ip, port, proto::TCP),
            DesiredFrontend {
                name: name.into(),
                backends: BTreeSet::from([(IpAddr::from([10, 0, 0, backend]), 8080)]),
                affinity_secs: 0,
                source_ranges: Vec::new(),
                ..DesiredFrontend::default()
            },
        )]),
        cluster_ips: BTreeSet::from([ip]),
        created: None,
    }
}

#[test]
fn a_change_touches_only_its_own_frontends() {
    let mut f = Frontends::default();
    let mut t = Touched::default();
    f.set(&svc("a"), Some(want([10, 96, 0, 1], 80, 1, "a")), &mut t);
    f.set(&svc("b"), Some(want([10, 96, 0, 2], 80, 2, "b")), &mut t);
    assert_eq!(f.len(), 2);

    let mut t = Touched::default();
    f.set(&svc("a"), Some(want([10, 96, 0, 1], 80, 3, "a")), &mut t);
    let changes = f.changes(&t);
    assert_eq!(changes.frontends.len(), 1);
    let (key, front) = changes.frontends.iter().next().unwrap();
    assert_eq!(key.addr, IpAddr::from([10, 96, 0, 1]));
    assert!(
        front
            .as_ref()
            .unwrap()
            .backends
            .contains(&(IpAddr::from([10, 0, 0, 3]), 8080))
    );
    assert_eq!(
        changes.cluster_ips,
        BTreeMap::from([(IpAddr::from([10, 96, 0, 1]), true)])
    );

    // Gone: its frontend and ClusterIP should not exist.
    let mut t = Touched::default();
    f.set(&svc("a"), None, &mut t);
    let changes = f.changes(&t);
    assert_eq!(changes.frontends.values().collect::<Vec<_>>(), [&None]);
    assert_eq!(changes.cluster_ips.values().collect::<Vec<_>>(), [&false]);
    assert_eq!(f.len(), 1);
}

/// `want`, external (an `externalIPs` frontend: no ClusterIP), created at `t`.
fn external(ip: [u8; 4], port: u16, backend: u8, name: &str, t: Option<i64>) -> ServiceDesired {
    let mut w = want(ip, port, backend, name);
    w.cluster_ips.clear();
    for f in w.frontends.values_mut() {
        f.external = External::Serve;
    }
    w.created = t;
    w
}

fn owner(c: &DesiredChanges, key: FrontendKey) -> Option<String> {
    c.frontends[&key].as_ref().map(|d| d.name.clone())
}

fn refused(c: &DesiredChanges, key: FrontendKey) -> Option<(String, Vec<String>)> {
    c.refused[&key].as_ref().map(|r| {
        (
            r.owner.name.clone(),
            r.claimants.iter().map(|k| k.name.clone()).collect(),
        )
    })
}

const VIP: [u8; 4] = [10, 96, 0, 1];

fn key(ip: [u8; 4], port: u16) -> FrontendKey {
    FrontendKey::new(IpAddr::from(ip), port, proto::TCP)
}

#[test]
fn among_equal_claims_the_oldest_wins_then_the_first_name_and_the_next_takes_over() {
    let mut f = Frontends::default();
    let mut t = Touched::default();
    let ip = [192, 0, 2, 50];
    f.set(&svc("a"), Some(external(ip, 80, 1, "a", Some(20))), &mut t);
    f.set(&svc("z"), Some(external(ip, 80, 2, "z", Some(10))), &mut t);
    f.set(&svc("m"), Some(external(ip, 80, 3, "m", None)), &mut t);
    let c = f.changes(&t);
    assert_eq!(owner(&c, key(ip, 80)).as_deref(), Some("z"), "the oldest");
    assert_eq!(
        refused(&c, key(ip, 80)),
        Some(("z".into(), vec!["a".into(), "m".into()])),
        "then by age; no time last"
    );
    let mut t = Touched::default();
    f.set(&svc("z"), None, &mut t);
    let c = f.changes(&t);
    assert_eq!(owner(&c, key(ip, 80)).as_deref(), Some("a"));
    let mut t = Touched::default();
    f.set(&svc("a"), None, &mut t);
    let c = f.changes(&t);
    assert_eq!(owner(&c, key(ip, 80)).as_deref(), Some("m"));
    assert_eq!(refused(&c, key(ip, 80)), None, "nothing refused now");

    // Without creation times (manifests): namespace/name.
    let mut f = Frontends::default();
    let mut t = Touched::default();
    f.set(&svc("z"), Some(external(ip, 80, 2, "z", None)), &mut t);
    f.set(&svc("a"), Some(external(ip, 80, 1, "a", None)), &mut t);
    assert_eq!(owner(&f.changes(&t), key(ip, 80)).as_deref(), Some("a"));
}

#[test]
fn a_cluster_ip_belongs_to_its_service_whatever_the_order_or_the_age() {
    for order in [["dns", "evil"], ["evil", "dns"]] {
        let mut f = Frontends::default();
        let mut t = Touched::default();
        for name in order {
            let w = if name == "dns" {
                let mut w = want(VIP, 53, 1, "dns");
                w.created = Some(100);
                w
            } else {
                // Older, and claiming the ClusterIP's port and another.
                let mut w = external(VIP, 53, 9, "evil", Some(1));
                w.frontends
                    .extend(external(VIP, 8443, 9, "evil", Some(1)).frontends);
                w
            };
            f.set(&svc(name), Some(w), &mut t);
        }
        let c = f.changes(&t);
        assert_eq!(owner(&c, key(VIP, 53)).as_deref(), Some("dns"), "{order:?}");
        assert_eq!(
            owner(&c, key(VIP, 8443)),
            None,
            "no other Service uses the ClusterIP, on any port"
        );
        for port in [53, 8443] {
            assert_eq!(
                refused(&c, key(VIP, port)),
                Some(("dns".into(), vec!["evil".into()])),
                "{order:?} {port}"
            );
        }
        // The ClusterIP's Service goes: the address is free.
        let mut t = Touched::default();
        f.set(&svc("dns"), None, &mut t);
        let c = f.changes(&t);
        assert_eq!(owner(&c, key(VIP, 8443)).as_deref(), Some("evil"));
        assert_eq!(owner(&c, key(VIP, 53)).as_deref(), Some("evil"));
    }
}
