//! Which Service owns which frontend (ClusterIP, port, protocol) and which
//! ClusterIPs are allocated, kept per Service, so that a change to one
//! Service yields the desired state of just the frontends it touches.
//!
//! Two Services may claim one frontend (from hand-written manifests; the API
//! server allocates ClusterIPs uniquely): the one with the greatest
//! namespace/name wins, as in `Model::desired`, and the other takes over when
//! the winner goes.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
};

use sluice_abi::service::ServiceKey;

use super::{DesiredFrontend, ObjectKey, ServiceDesired};

/// Frontends and ClusterIPs whose desired state may have changed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Touched {
    pub frontends: BTreeSet<ServiceKey>,
    pub cluster_ips: BTreeSet<Ipv4Addr>,
}

/// The desired state of some frontends and ClusterIPs: `None` / `false`
/// means it should not exist.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DesiredChanges {
    pub frontends: BTreeMap<ServiceKey, Option<DesiredFrontend>>,
    pub cluster_ips: BTreeMap<Ipv4Addr, bool>,
}

#[derive(Debug, Default)]
pub struct Frontends {
    by_service: BTreeMap<ObjectKey, ServiceDesired>,
    claims: BTreeMap<ServiceKey, BTreeSet<ObjectKey>>,
    ip_claims: BTreeMap<Ipv4Addr, BTreeSet<ObjectKey>>,
}

impl Frontends {
    /// Sets what Service `service` wants (`None`: it is gone), and adds
    /// every frontend and ClusterIP whose state that may change to
    /// `touched`.
    pub fn set(
        &mut self,
        service: &ObjectKey,
        want: Option<ServiceDesired>,
        touched: &mut Touched,
    ) {
        if let Some(old) = self.by_service.remove(service) {
            for key in old.frontends.keys() {
                release(&mut self.claims, key, service);
                touched.frontends.insert(*key);
            }
            for ip in &old.cluster_ips {
                release(&mut self.ip_claims, ip, service);
                touched.cluster_ips.insert(*ip);
            }
        }
        let Some(want) = want else { return };
        for key in want.frontends.keys() {
            self.claims.entry(*key).or_default().insert(service.clone());
            touched.frontends.insert(*key);
        }
        for ip in &want.cluster_ips {
            self.ip_claims
                .entry(*ip)
                .or_default()
                .insert(service.clone());
            touched.cluster_ips.insert(*ip);
        }
        if !want.frontends.is_empty() || !want.cluster_ips.is_empty() {
            self.by_service.insert(service.clone(), want);
        }
    }

    /// The desired state of the touched frontends and ClusterIPs.
    pub fn changes(&self, touched: &Touched) -> DesiredChanges {
        let frontends = touched
            .frontends
            .iter()
            .map(|key| {
                let winner = self.claims.get(key).and_then(|owners| owners.last());
                let want = winner
                    .and_then(|svc| self.by_service.get(svc))
                    .and_then(|d| d.frontends.get(key))
                    .cloned();
                (*key, want)
            })
            .collect();
        let cluster_ips = touched
            .cluster_ips
            .iter()
            .map(|ip| (*ip, self.ip_claims.contains_key(ip)))
            .collect();
        DesiredChanges {
            frontends,
            cluster_ips,
        }
    }

    /// Everything there is, as touched (for a full sync).
    pub fn all(&self) -> Touched {
        Touched {
            frontends: self.claims.keys().copied().collect(),
            cluster_ips: self.ip_claims.keys().copied().collect(),
        }
    }

    /// Number of frontends.
    pub fn len(&self) -> usize {
        self.claims.len()
    }

    pub fn is_empty(&self) -> bool {
        self.claims.is_empty()
    }
}

fn release<K: Ord>(claims: &mut BTreeMap<K, BTreeSet<ObjectKey>>, key: &K, service: &ObjectKey) {
    if let Some(owners) = claims.get_mut(key) {
        owners.remove(service);
        if owners.is_empty() {
            claims.remove(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use sluice_abi::proto;

    use super::*;

    fn svc(name: &str) -> ObjectKey {
        ObjectKey {
            namespace: "default".into(),
            name: name.into(),
        }
    }

    fn want(ip: [u8; 4], port: u16, backend: u8, name: &str) -> ServiceDesired {
        let ip = Ipv4Addr::from(ip);
        ServiceDesired {
            frontends: BTreeMap::from([(
                ServiceKey::new(ip, port, proto::TCP),
                DesiredFrontend {
                    name: name.into(),
                    backends: BTreeSet::from([(Ipv4Addr::new(10, 0, 0, backend), 8080)]),
                    affinity_secs: 0,
                    source_ranges: Vec::new(),
                    ..DesiredFrontend::default()
                },
            )]),
            cluster_ips: BTreeSet::from([ip]),
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
        assert_eq!(key.addr(), Ipv4Addr::new(10, 96, 0, 1));
        assert!(
            front
                .as_ref()
                .unwrap()
                .backends
                .contains(&(Ipv4Addr::new(10, 0, 0, 3), 8080))
        );
        assert_eq!(
            changes.cluster_ips,
            BTreeMap::from([(Ipv4Addr::new(10, 96, 0, 1), true)])
        );

        // Gone: its frontend and ClusterIP should not exist.
        let mut t = Touched::default();
        f.set(&svc("a"), None, &mut t);
        let changes = f.changes(&t);
        assert_eq!(changes.frontends.values().collect::<Vec<_>>(), [&None]);
        assert_eq!(changes.cluster_ips.values().collect::<Vec<_>>(), [&false]);
        assert_eq!(f.len(), 1);
    }

    #[test]
    fn of_two_claims_the_greatest_name_wins_and_the_other_takes_over() {
        let mut f = Frontends::default();
        let mut t = Touched::default();
        f.set(&svc("z"), Some(want([10, 96, 0, 1], 80, 2, "z")), &mut t);
        f.set(&svc("a"), Some(want([10, 96, 0, 1], 80, 1, "a")), &mut t);
        let name = |c: &DesiredChanges| {
            c.frontends
                .values()
                .next()
                .unwrap()
                .as_ref()
                .map(|d| d.name.clone())
        };
        assert_eq!(name(&f.changes(&t)).as_deref(), Some("z"));
        let mut t = Touched::default();
        f.set(&svc("z"), None, &mut t);
        let changes = f.changes(&t);
        assert_eq!(name(&changes).as_deref(), Some("a"));
        assert_eq!(
            changes.cluster_ips.values().collect::<Vec<_>>(),
            [&true],
            "a still claims the ClusterIP"
        );
    }
}
