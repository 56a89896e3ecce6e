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
    net::IpAddr,
};

use super::{DesiredFrontend, External, ObjectKey, ServiceDesired};
use crate::frontend::FrontendKey;

/// Frontends and ClusterIPs whose desired state may have changed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Touched {
    pub frontends: BTreeSet<FrontendKey>,
    pub cluster_ips: BTreeSet<IpAddr>,
}

/// The desired state of some frontends and ClusterIPs: `None` / `false`
/// means it should not exist.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DesiredChanges {
    pub frontends: BTreeMap<FrontendKey, Option<DesiredFrontend>>,
    pub cluster_ips: BTreeMap<IpAddr, bool>,
    /// Claims on a frontend that were refused (`None`: there are none).
    pub refused: BTreeMap<FrontendKey, Option<Refused>>,
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
    claims: BTreeMap<FrontendKey, BTreeSet<Claim>>,
    ip_claims: BTreeMap<IpAddr, BTreeSet<ObjectKey>>,
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
    fn touch_address(&self, ip: IpAddr, touched: &mut Touched) {
        let (lo, hi) = FrontendKey::bounds(ip);
        touched
            .frontends
            .extend(self.claims.range(lo..=hi).map(|(k, _)| *k));
    }

    /// Whether `claim` may own `key`: an external claim may not use another
    /// Service's ClusterIP.
    fn may_own(&self, key: FrontendKey, claim: &Claim) -> bool {
        !claim.external
            || self
                .ip_claims
                .get(&key.addr)
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
                    .get(&key.addr)
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
mod tests;
