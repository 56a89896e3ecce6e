//! What the Service maps can hold, and a change cut into steps that fit:
//! the maps sized from `--max-frontends` and `--max-backends`, the limits
//! the planner admits Services against, and the writes of one sync in
//! steps within the maps' headroom, removals first.

use std::collections::BTreeSet;

use sluice_abi::maps as names;

use super::{Options, maps};
use crate::{
    model::frontends::DesiredChanges,
    plan::capacity::{self, Entries, Resource},
};

/// The maps whose size follows `--max-frontends` and `--max-backends`, and
/// the limit each is created for.
pub(super) fn capacity_maps(opts: &Options) -> [(&'static str, u32); 7] {
    [
        (names::SERVICES, opts.max_frontends),
        (names::SERVICE_NAMES, opts.max_frontends),
        (names::AFFINITY_CONFIG, opts.max_frontends),
        (names::SERVICE_STATS, opts.max_frontends),
        (names::SLOTS, opts.max_backends),
        (names::BACKENDS, opts.max_backends),
        (names::BACKEND_STATS, opts.max_backends),
    ]
}

/// What the maps can hold. A pinned map made smaller by an earlier
/// configuration stays (replacing it would empty it under live traffic);
/// its limit is then what it holds less the headroom, until `sluice
/// cleanup`.
pub(super) fn limits(opts: &Options, maps: &maps::Maps) -> Entries {
    let mut limits = Entries::UNLIMITED;
    let asked = [
        (Resource::Frontends, Some(opts.max_frontends)),
        (Resource::Backends, Some(opts.max_backends)),
        (Resource::MaglevChunks, None),
        (Resource::SourceRanges, None),
    ];
    for (resource, asked) in asked {
        let held = maps.max_entries(resource).unwrap_or_default();
        let usable = match asked {
            // Created for `limit` with its headroom on top.
            Some(limit) => {
                let usable = limit.min(held.saturating_sub(capacity::headroom(limit)));
                if usable < limit {
                    tracing::warn!(
                        map = resource.map(),
                        pinned = held,
                        asked = limit,
                        usable,
                        "a pinned map is smaller than the configuration asks; it stays until `sluice cleanup`"
                    );
                }
                usable
            }
            // Of a fixed size: the headroom comes out of it.
            None => held.saturating_sub(capacity::headroom(held)),
        };
        limits.set(resource, u64::from(usable));
    }
    limits
}

/// `changes` in the steps they are written in: first every removal, so that
/// deletes proceed whatever the puts meet; then the frontends to write
/// (each with its ClusterIP's marker), in steps whose new entries fit in
/// the maps' headroom.
pub(super) fn steps(changes: &DesiredChanges, limits: &Entries) -> Vec<DesiredChanges> {
    let room = |r: Resource| {
        let limit = u32::try_from(limits.get(r)).unwrap_or(u32::MAX);
        usize::try_from(capacity::headroom(limit)).unwrap_or(usize::MAX)
    };
    let (frontend_room, backend_room) = (room(Resource::Frontends), room(Resource::Backends));
    let mut removals = DesiredChanges::default();
    let mut markers = BTreeSet::new();
    for (ip, want) in &changes.cluster_ips {
        if *want {
            markers.insert(*ip);
        } else {
            removals.cluster_ips.insert(*ip, false);
        }
    }
    let mut steps = Vec::new();
    let mut step = DesiredChanges::default();
    let (mut frontends, mut backends) = (0, 0);
    let mut last: Option<crate::frontend::FrontendKey> = None;
    for (key, want) in &changes.frontends {
        let Some(front) = want else {
            removals.frontends.insert(*key, None);
            continue;
        };
        let marker = markers.remove(&key.addr);
        let (f, b) = (1 + usize::from(marker), front.backends.len());
        // A frontend's scopes (the `Local` policies' entries) go together.
        let same = last.is_some_and(|k| k.local_scope() == key.local_scope());
        if last.is_some() && !same && (frontends + f > frontend_room || backends + b > backend_room)
        {
            steps.push(std::mem::take(&mut step));
            (frontends, backends) = (0, 0);
        }
        step.frontends.insert(*key, want.clone());
        if marker {
            step.cluster_ips.insert(key.addr, true);
        }
        (frontends, backends) = (frontends + f, backends + b);
        last = Some(*key);
    }
    // ClusterIPs without a frontend to write.
    for ip in markers {
        if frontends + 1 > frontend_room {
            steps.push(std::mem::take(&mut step));
            frontends = 0;
        }
        step.cluster_ips.insert(ip, true);
        frontends += 1;
    }
    steps.push(step);
    steps.insert(0, removals);
    steps.retain(|s| !s.frontends.is_empty() || !s.cluster_ips.is_empty());
    steps
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use sluice_abi::proto;

    use super::*;
    use crate::{frontend::FrontendKey, model::DesiredFrontend};

    #[test]
    fn removals_go_first_and_writes_in_steps_that_fit_the_headroom() {
        let mut changes = DesiredChanges::default();
        for i in 0..200u8 {
            let key = FrontendKey::new(IpAddr::from([10, 96, 0, i]), 80, proto::TCP);
            let want = (i % 4 != 0).then(|| DesiredFrontend {
                backends: (0..10)
                    .map(|b| (IpAddr::from([10, 0, i, b]), 8080))
                    .collect(),
                ..DesiredFrontend::default()
            });
            changes.frontends.insert(key, want);
            changes.cluster_ips.insert(key.addr, i % 4 != 0);
        }
        let mut limits = Entries::UNLIMITED;
        // Headroom: 64 frontends, 125 backends.
        limits.set(Resource::Frontends, 400);
        limits.set(Resource::Backends, 1000);
        let steps = steps(&changes, &limits);
        let removals = &steps[0];
        assert_eq!(removals.frontends.len(), 50);
        assert!(removals.frontends.values().all(Option::is_none));
        assert!(removals.cluster_ips.values().all(|want| !want));
        let mut written = 0;
        for step in &steps[1..] {
            assert!(step.frontends.values().all(Option::is_some));
            let backends: usize = step
                .frontends
                .values()
                .flatten()
                .map(|f| f.backends.len())
                .sum();
            assert!(backends <= 125, "{backends}");
            assert!(step.frontends.len() + step.cluster_ips.len() <= 64);
            assert!(
                step.cluster_ips
                    .keys()
                    .all(|ip| step.frontends.keys().any(|k| k.addr == *ip))
            );
            written += step.frontends.len();
        }
        assert_eq!(written, 150);
        assert_eq!(steps.len(), 1 + 150_usize.div_ceil(12));
    }
}
