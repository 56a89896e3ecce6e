//! Which Service owns which frontend (ClusterIP, port, protocol) and which
//! ClusterIPs are allocated, kept per Service, so that a change to one
//! Service yields the desired state of just the frontends it touches.
//!
//! Two Services may claim one frontend: any Service author can write
//! `externalIPs` (and a load balancer controller `status.loadBalancer`)
//! equal to another Service's frontend, and hand-written manifests can
//! repeat anything. The API server's rules decide, the same on every node
//! and after every restart:
//! - a ClusterIP belongs to its Service: no other Service's external or
//!   load balancer address may use it, on any port;
//! - a ClusterIP claim beats an external one on the same frontend;
//! - among equal claims the oldest Service wins (`creationTimestamp`, then
//!   namespace/name).
//!
//! A refused claim is reported (`DesiredChanges::refused`); when the owner
//! goes, the next claim takes over. `Model::desired` decides through here too.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
};

use sluice_abi::service::ServiceKey;

use super::{DesiredFrontend, External, ObjectKey, ServiceDesired};

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
    /// Claims on a frontend that were refused (`None`: there are none).
    pub refused: BTreeMap<ServiceKey, Option<Refused>>,
}

/// The claims on one frontend that lost, and who holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refused {
    /// The Service that owns the frontend, or its address (a ClusterIP).
    pub owner: ObjectKey,
    /// The refused Services, the strongest claim first.
    pub claimants: Vec<ObjectKey>,
}

/// A Service's claim on a frontend. Ordered so that the first valid one
/// owns it: ClusterIP claims before external ones, then the oldest
/// Service (a Service without a creation time after those with one), then
/// namespace/name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Claim {
    external: bool,
    created: i64,
    service: ObjectKey,
}

impl Claim {
    fn new(service: &ObjectKey, want: &ServiceDesired, front: &DesiredFrontend) -> Self {
        Self {
            external: front.external != External::No,
            created: want.created.unwrap_or(i64::MAX),
            service: service.clone(),
        }
    }
}

#[derive(Debug, Default)]
pub struct Frontends {
    by_service: BTreeMap<ObjectKey, ServiceDesired>,
    claims: BTreeMap<ServiceKey, BTreeSet<Claim>>,
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
            for (key, front) in &old.frontends {
                release(&mut self.claims, key, &Claim::new(service, &old, front));
                touched.frontends.insert(*key);
            }
            for ip in &old.cluster_ips {
                release(&mut self.ip_claims, ip, service);
                touched.cluster_ips.insert(*ip);
                self.touch_address(*ip, touched);
            }
        }
        let Some(want) = want else { return };
        for (key, front) in &want.frontends {
            let claim = Claim::new(service, &want, front);
            self.claims.entry(*key).or_default().insert(claim);
            touched.frontends.insert(*key);
        }
        for ip in &want.cluster_ips {
            self.ip_claims
                .entry(*ip)
                .or_default()
                .insert(service.clone());
            touched.cluster_ips.insert(*ip);
            self.touch_address(*ip, touched);
        }
        if !want.frontends.is_empty() || !want.cluster_ips.is_empty() {
            self.by_service.insert(service.clone(), want);
        }
    }

    /// Every frontend at `ip`, whose owner may change with who holds `ip`
    /// as a ClusterIP.
    fn touch_address(&self, ip: Ipv4Addr, touched: &mut Touched) {
        let lo = ServiceKey {
            addr_be: ip.octets(),
            port_be: [0; 2],
            proto: 0,
            scope: 0,
        };
        let hi = ServiceKey {
            port_be: [u8::MAX; 2],
            proto: u8::MAX,
            scope: u8::MAX,
            ..lo
        };
        touched
            .frontends
            .extend(self.claims.range(lo..=hi).map(|(k, _)| *k));
    }

    /// Whether `claim` may own `key`: an external claim may not use another
    /// Service's ClusterIP.
    fn may_own(&self, key: ServiceKey, claim: &Claim) -> bool {
        !claim.external
            || self
                .ip_claims
                .get(&key.addr())
                .is_none_or(|owners| owners.iter().all(|o| *o == claim.service))
    }

    /// The desired state of the touched frontends and ClusterIPs.
    pub fn changes(&self, touched: &Touched) -> DesiredChanges {
        let mut frontends = BTreeMap::new();
        let mut refused = BTreeMap::new();
        for key in &touched.frontends {
            let claims = self.claims.get(key);
            let owner = claims.and_then(|c| c.iter().find(|claim| self.may_own(*key, claim)));
            let want = owner
                .and_then(|claim| self.by_service.get(&claim.service))
                .and_then(|d| d.frontends.get(key))
                .cloned();
            frontends.insert(*key, want);
            let losers: Vec<ObjectKey> = claims
                .into_iter()
                .flatten()
                .filter(|c| Some(*c) != owner)
                .map(|c| c.service.clone())
                .collect();
            let holder = owner.map(|c| c.service.clone()).or_else(|| {
                // Refused for the address: its ClusterIP's Service.
                self.ip_claims
                    .get(&key.addr())
                    .and_then(|o| o.first().cloned())
            });
            let refusal = match holder {
                Some(owner) if !losers.is_empty() => Some(Refused {
                    owner,
                    claimants: losers,
                }),
                _ => None,
            };
            refused.insert(*key, refusal);
        }
        let cluster_ips = touched
            .cluster_ips
            .iter()
            .map(|ip| (*ip, self.ip_claims.contains_key(ip)))
            .collect();
        DesiredChanges {
            frontends,
            cluster_ips,
            refused,
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

fn release<K: Ord, C: Ord>(claims: &mut BTreeMap<K, BTreeSet<C>>, key: &K, claim: &C) {
    if let Some(owners) = claims.get_mut(key) {
        owners.remove(claim);
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

    fn owner(c: &DesiredChanges, key: ServiceKey) -> Option<String> {
        c.frontends[&key].as_ref().map(|d| d.name.clone())
    }

    fn refused(c: &DesiredChanges, key: ServiceKey) -> Option<(String, Vec<String>)> {
        c.refused[&key].as_ref().map(|r| {
            (
                r.owner.name.clone(),
                r.claimants.iter().map(|k| k.name.clone()).collect(),
            )
        })
    }

    const VIP: [u8; 4] = [10, 96, 0, 1];

    fn key(ip: [u8; 4], port: u16) -> ServiceKey {
        ServiceKey::new(Ipv4Addr::from(ip), port, proto::TCP)
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
}
