//! Which Services the maps can hold. Each Service costs entries in the maps
//! that have a limit: frontends (and ClusterIP markers), backend slots,
//! Maglev chunks and source ranges. The Services are admitted oldest first
//! (`creationTimestamp`, then namespace/name, as claims are decided) while
//! they fit; one that does not fit is left out whole, never half-written,
//! and is named. When room frees up, the next plan admits it by itself.
//!
//! The maps are created larger than these limits (`headroom`): a change
//! writes a frontend's new backends before it deletes the old ones, and
//! those entries in flight need room too.

use std::collections::{BTreeMap, BTreeSet};

use sluice_abi::{maglev::table_size, service::maglev_chunks};

use crate::model::{External, ObjectKey, ServiceDesired};

/// A map with a limit that Services fill.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Resource {
    /// `SLUICE_SVC`: frontends and ClusterIP markers (`--max-frontends`).
    Frontends,
    /// `SLUICE_SLOT` and `SLUICE_BACKEND`: one entry per backend of each
    /// frontend (`--max-backends`).
    Backends,
    /// `SLUICE_MAGLEV`: the Maglev tables of frontends served from outside.
    MaglevChunks,
    /// `SLUICE_SRC_RANGE`: `loadBalancerSourceRanges`, per frontend.
    SourceRanges,
}

impl Resource {
    pub const ALL: [Self; 4] = [
        Self::Frontends,
        Self::Backends,
        Self::MaglevChunks,
        Self::SourceRanges,
    ];

    /// The map it is counted in (`SLUICE_SLOT` has as many entries as
    /// `SLUICE_BACKEND`). Both IP families count against it together: the
    /// IPv6 twins (`SLUICE_SVC6`, …) are as large, so neither overflows.
    pub const fn map(self) -> &'static str {
        match self {
            Self::Frontends => "SLUICE_SVC",
            Self::Backends => "SLUICE_BACKEND",
            Self::MaglevChunks => "SLUICE_MAGLEV",
            Self::SourceRanges => "SLUICE_SRC_RANGE",
        }
    }

    const fn index(self) -> usize {
        self as usize
    }
}

/// Entries of each `Resource`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Entries([u64; 4]);

impl Entries {
    /// No limit.
    pub const UNLIMITED: Self = Self([u64::MAX; 4]);

    pub const fn get(&self, r: Resource) -> u64 {
        self.0[r.index()]
    }

    pub const fn set(&mut self, r: Resource, n: u64) {
        self.0[r.index()] = n;
    }

    /// What Service `want` takes, with Maglev tables of `maglev_size`
    /// entries at least.
    pub fn of(want: &ServiceDesired, maglev_size: u32) -> Self {
        let mut cost = Self::default();
        cost.0[Resource::Frontends.index()] =
            (want.frontends.len() + want.cluster_ips.len()) as u64;
        for front in want.frontends.values() {
            let backends = front
                .backends
                .len()
                .min(crate::reconcile::MAX_BACKENDS_PER_FRONTEND);
            cost.0[Resource::Backends.index()] += backends as u64;
            cost.0[Resource::SourceRanges.index()] += front.source_ranges.len() as u64;
            if front.external == External::Serve && backends > 0 {
                let size = table_size(u32::try_from(backends).unwrap_or(u32::MAX), maglev_size);
                cost.0[Resource::MaglevChunks.index()] += u64::from(maglev_chunks(size));
            }
        }
        cost
    }

    fn add(&mut self, other: Self) {
        for (a, b) in self.0.iter_mut().zip(other.0) {
            *a = a.saturating_add(b);
        }
    }

    fn sub(&mut self, other: Self) {
        for (a, b) in self.0.iter_mut().zip(other.0) {
            *a = a.saturating_sub(b);
        }
    }

    /// The first resource that `self` plus `more` would take past `limits`.
    fn overflow(self, more: Self, limits: Self) -> Option<Resource> {
        Resource::ALL
            .into_iter()
            .find(|r| self.get(*r).saturating_add(more.get(*r)) > limits.get(*r))
    }
}

/// The entries a map of `limit` entries is created with: room for the
/// changes in flight on top.
pub const fn map_size(limit: u32) -> u32 {
    limit.saturating_add(headroom(limit))
}

/// Room for the entries of a change in flight: an eighth of the limit, at
/// least 64. A sync writes its changes in steps of at most this many.
pub const fn headroom(limit: u32) -> u32 {
    let h = limit / 8;
    if h < 64 { 64 } else { h }
}

/// The Services with frontends, their cost, and those left out. While
/// everything fits (the usual case) a change costs O(log n); the order of
/// admission is only sorted out while something does not.
#[derive(Debug)]
pub struct Admission {
    limits: Entries,
    maglev_size: u32,
    /// Each Service's creation time (its place in the order of admission:
    /// the oldest first, those without one last, then by namespace/name)
    /// and cost.
    cost: BTreeMap<ObjectKey, (i64, Entries)>,
    /// The order of admission, built while something does not fit and kept
    /// until a Service comes, goes or changes its creation time.
    order: Option<Vec<(i64, ObjectKey)>>,
    /// The cost of every Service.
    total: Entries,
    /// The cost of the Services admitted.
    used: Entries,
    /// Services that did not fit, and the first map they did not fit in.
    left_out: BTreeMap<ObjectKey, Resource>,
}

impl Default for Admission {
    fn default() -> Self {
        Self {
            limits: Entries::UNLIMITED,
            maglev_size: sluice_abi::maglev::DEFAULT_TABLE_SIZE,
            cost: BTreeMap::new(),
            order: None,
            total: Entries::default(),
            used: Entries::default(),
            left_out: BTreeMap::new(),
        }
    }
}

impl Admission {
    /// The maps' limits, and the smallest Maglev table (before the first
    /// Service is set).
    pub const fn set_limits(&mut self, limits: Entries, maglev_size: u32) {
        self.limits = limits;
        self.maglev_size = maglev_size;
    }

    /// Service `key` now wants `want` (`None`: it is gone).
    pub fn set(&mut self, key: &ObjectKey, want: Option<&ServiceDesired>) {
        let before = self.cost.remove(key);
        if let Some((_, cost)) = before {
            self.total.sub(cost);
        }
        let Some(want) = want.filter(|w| !w.frontends.is_empty() || !w.cluster_ips.is_empty())
        else {
            self.left_out.remove(key);
            if before.is_some() {
                self.order = None;
            }
            return;
        };
        let cost = Entries::of(want, self.maglev_size);
        let created = want.created.unwrap_or(i64::MAX);
        if before.is_none_or(|(c, _)| c != created) {
            self.order = None;
        }
        self.cost.insert(key.clone(), (created, cost));
        self.total.add(cost);
    }

    /// Decides again who is admitted; returns the Services that came in or
    /// went out.
    pub fn admit(&mut self) -> BTreeSet<ObjectKey> {
        let mut left_out = BTreeMap::new();
        if self
            .total
            .overflow(Entries::default(), self.limits)
            .is_none()
        {
            self.used = self.total;
        } else {
            let cost = &self.cost;
            let order = self.order.get_or_insert_with(|| {
                let mut order: Vec<(i64, ObjectKey)> =
                    cost.iter().map(|(k, (c, _))| (*c, k.clone())).collect();
                order.sort_unstable();
                order
            });
            let mut used = Entries::default();
            for (_, key) in order.iter() {
                let Some((_, c)) = cost.get(key) else {
                    continue;
                };
                match used.overflow(*c, self.limits) {
                    None => used.add(*c),
                    Some(full) => {
                        left_out.insert(key.clone(), full);
                    }
                }
            }
            self.used = used;
        }
        let old = std::mem::replace(&mut self.left_out, left_out);
        let (old, new): (BTreeSet<_>, BTreeSet<_>) = (
            old.into_keys().collect(),
            self.left_out.keys().cloned().collect(),
        );
        old.symmetric_difference(&new).cloned().collect()
    }

    pub fn admitted(&self, key: &ObjectKey) -> bool {
        !self.left_out.contains_key(key)
    }

    /// The Services left out, oldest first, with the map each did not fit.
    pub fn left_out(&self) -> Vec<(ObjectKey, Resource)> {
        let mut out: Vec<(i64, ObjectKey, Resource)> = self
            .left_out
            .iter()
            .map(|(key, r)| {
                let created = self.cost.get(key).map_or(i64::MAX, |(c, _)| *c);
                (created, key.clone(), *r)
            })
            .collect();
        out.sort_unstable();
        out.into_iter().map(|(_, key, r)| (key, r)).collect()
    }

    /// Entries the admitted Services take, as planned.
    pub const fn used(&self) -> Entries {
        self.used
    }

    pub const fn limits(&self) -> Entries {
        self.limits
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use sluice_abi::proto;

    use super::*;
    use crate::{frontend::FrontendKey, model::DesiredFrontend};

    fn key(name: &str) -> ObjectKey {
        ObjectKey {
            namespace: "default".into(),
            name: name.into(),
        }
    }

    /// A ClusterIP Service with `backends` endpoints, created at `created`.
    fn service(i: u8, created: Option<i64>, backends: u8) -> ServiceDesired {
        let ip = IpAddr::from([10, 96, 0, i]);
        let front = DesiredFrontend {
            name: format!("default/s{i}:http"),
            backends: (0..backends)
                .map(|b| (IpAddr::from([10, 0, i, b]), 8080))
                .collect(),
            ..DesiredFrontend::default()
        };
        ServiceDesired {
            frontends: [(FrontendKey::new(ip, 80, proto::TCP), front)].into(),
            cluster_ips: [ip].into(),
            created,
        }
    }

    fn limits(frontends: u64, backends: u64) -> Entries {
        let mut l = Entries::UNLIMITED;
        l.set(Resource::Frontends, frontends);
        l.set(Resource::Backends, backends);
        l
    }

    #[test]
    fn the_oldest_services_that_fit_are_admitted_the_rest_named() {
        let mut a = Admission::default();
        a.set_limits(limits(1000, 20), 251);
        // s1 is the youngest, s3 the oldest; s4 has no creation time.
        for (i, created) in [(1, Some(30)), (2, Some(20)), (3, Some(10)), (4, None)] {
            a.set(&key(&format!("s{i}")), Some(&service(i, created, 8)));
        }
        let changed = a.admit();
        assert_eq!(changed, [key("s1"), key("s4")].into());
        assert_eq!(
            a.left_out(),
            [
                (key("s1"), Resource::Backends),
                (key("s4"), Resource::Backends)
            ]
        );
        assert!(a.admitted(&key("s2")) && a.admitted(&key("s3")));
        assert_eq!(a.used().get(Resource::Backends), 16);
        assert_eq!(a.used().get(Resource::Frontends), 4);

        // A smaller younger Service fits in what is left.
        a.set(&key("s5"), Some(&service(5, Some(40), 4)));
        assert_eq!(a.admit(), BTreeSet::new());
        assert!(a.admitted(&key("s5")));

        // An older Service grows: the youngest admitted goes out, whole.
        a.set(&key("s3"), Some(&service(3, Some(10), 12)));
        assert_eq!(a.admit(), [key("s5")].into());
        assert!(a.admitted(&key("s2")));

        // Room frees up: the oldest of those left out come back.
        a.set(&key("s3"), None);
        let back = a.admit();
        assert_eq!(back, [key("s1"), key("s5")].into());
        assert_eq!(a.left_out(), [(key("s4"), Resource::Backends)]);
    }

    #[test]
    fn frontends_and_markers_count_against_their_map() {
        let mut a = Admission::default();
        a.set_limits(limits(5, 1000), 251);
        for i in 1..=3 {
            a.set(
                &key(&format!("s{i}")),
                Some(&service(i, Some(i64::from(i)), 1)),
            );
        }
        a.admit();
        assert_eq!(a.left_out(), [(key("s3"), Resource::Frontends)]);
    }

    #[test]
    fn a_served_frontend_costs_its_maglev_table() {
        let mut want = service(1, None, 3);
        for f in want.frontends.values_mut() {
            f.external = External::Serve;
        }
        let cost = Entries::of(&want, 16_381);
        assert_eq!(
            cost.get(Resource::MaglevChunks),
            u64::from(maglev_chunks(16_381))
        );
        assert_eq!(
            Entries::of(&service(1, None, 3), 16_381).get(Resource::MaglevChunks),
            0
        );
    }

    #[test]
    fn maps_have_room_for_changes_in_flight() {
        assert_eq!(map_size(100), 164);
        assert_eq!(map_size(524_288), 524_288 + 65_536);
    }
}
