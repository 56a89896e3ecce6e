//! The agent's one copy of the model, kept up to date from source events,
//! saying which Services each event touched so that only those are
//! recomputed and written.
//!
//! Sources speak in lists and changes, as an API server watch does: a list
//! (`List`, `Listed`…, `ListDone`) replaces everything of its kind when it
//! completes, and never before, so that a Service present before and after a
//! relist keeps its entry throughout, and objects deleted meanwhile drop
//! out. An object that no longer translates keeps its last good state.

use std::collections::{BTreeMap, BTreeSet};

use super::{Model, NodeInfo, ObjectKey, ServiceDesired, ServiceInfo, SliceInfo, service_desired};

/// One event of one kind of object. `None` is an object that did not
/// translate (the source logged why): its last good state stays.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event<T> {
    /// A full list begins.
    List,
    Listed(ObjectKey, Option<T>),
    /// The list is complete: it replaces what was there.
    ListDone,
    /// Added or changed.
    Applied(ObjectKey, Option<T>),
    Deleted(ObjectKey),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SourceEvent {
    Service(Event<ServiceInfo>),
    Slice(Event<SliceInfo>),
    Node(Event<NodeInfo>),
}

/// Objects of one kind, with a list gathered aside until it completes.
#[derive(Debug)]
struct Collection<T> {
    items: BTreeMap<ObjectKey, T>,
    relist: Option<BTreeMap<ObjectKey, T>>,
    synced: bool,
}

impl<T> Default for Collection<T> {
    fn default() -> Self {
        Self {
            items: BTreeMap::new(),
            relist: None,
            synced: false,
        }
    }
}

/// What one event did to a collection.
#[derive(Debug)]
struct Applied<T> {
    /// Keys whose object changed, with the object they had before.
    changed: Vec<(ObjectKey, Option<T>)>,
    /// A list after the first one completed.
    relisted: bool,
}

impl<T: Clone + PartialEq> Collection<T> {
    fn apply(&mut self, event: Event<T>) -> Applied<T> {
        let mut out = Applied {
            changed: Vec::new(),
            relisted: false,
        };
        match event {
            Event::List => self.relist = Some(BTreeMap::new()),
            Event::Listed(key, obj) => {
                let Some(relist) = self.relist.as_mut() else {
                    return out;
                };
                // Invalid now: its last good state survives the list.
                if let Some(v) = obj.or_else(|| self.items.get(&key).cloned()) {
                    relist.insert(key, v);
                }
            }
            Event::ListDone => {
                if let Some(relist) = self.relist.take() {
                    let old = std::mem::replace(&mut self.items, relist);
                    for (key, before) in &old {
                        if self.items.get(key) != Some(before) {
                            out.changed.push((key.clone(), Some(before.clone())));
                        }
                    }
                    out.changed.extend(
                        self.items
                            .keys()
                            .filter(|k| !old.contains_key(*k))
                            .map(|k| (k.clone(), None)),
                    );
                }
                out.relisted = self.synced;
                self.synced = true;
            }
            Event::Applied(key, Some(v)) => {
                if self.items.get(&key) != Some(&v) {
                    let before = self.items.insert(key.clone(), v);
                    out.changed.push((key, before));
                }
            }
            Event::Applied(_, None) => {}
            Event::Deleted(key) => {
                if let Some(before) = self.items.remove(&key) {
                    out.changed.push((key, Some(before)));
                }
            }
        }
        out
    }
}

/// Services, EndpointSlices and this node; slices indexed by Service.
#[derive(Debug, Default)]
pub struct Store {
    services: Collection<ServiceInfo>,
    slices: Collection<SliceInfo>,
    node: Collection<NodeInfo>,
    slices_of: BTreeMap<ObjectKey, BTreeSet<ObjectKey>>,
    /// This node's name (`--node-name`), for `internalTrafficPolicy: Local`.
    node_name: Option<String>,
    /// Trigger times of the slice changes not yet programmed (at most
    /// `MAX_TRIGGERS`, the newest kept).
    triggers: Vec<std::time::SystemTime>,
}

/// Trigger times kept while the maps cannot be written.
const MAX_TRIGGERS: usize = 4096;

impl Store {
    /// Applies one event; adds the Services whose frontends may have
    /// changed to `dirty`.
    pub fn apply(&mut self, event: SourceEvent, dirty: &mut BTreeSet<ObjectKey>) {
        match event {
            SourceEvent::Service(e) => {
                let applied = self.services.apply(e);
                if applied.relisted {
                    tracing::info!(services = self.services.items.len(), "relisted Services");
                }
                dirty.extend(applied.changed.into_iter().map(|(k, _)| k));
            }
            SourceEvent::Slice(e) => {
                let applied = self.slices.apply(e);
                if applied.relisted {
                    tracing::info!(
                        endpoint_slices = self.slices.items.len(),
                        "relisted EndpointSlices"
                    );
                }
                for (key, before) in applied.changed {
                    let now = self.slices.items.get(&key).and_then(|s| s.trigger_time);
                    if let Some(t) = now
                        && before.as_ref().and_then(|b| b.trigger_time) != Some(t)
                    {
                        if self.triggers.len() == MAX_TRIGGERS {
                            self.triggers.remove(0);
                        }
                        self.triggers.push(t);
                    }
                    if let Some(service) = before.as_ref().and_then(SliceInfo::service_key) {
                        unindex(&mut self.slices_of, &service, &key);
                        dirty.insert(service);
                    }
                    if let Some(service) =
                        self.slices.items.get(&key).and_then(SliceInfo::service_key)
                    {
                        self.slices_of
                            .entry(service.clone())
                            .or_default()
                            .insert(key);
                        dirty.insert(service);
                    }
                }
            }
            SourceEvent::Node(e) => {
                let zone = self.node().and_then(|n| n.zone.clone());
                self.node.apply(e);
                // Zone hints are read against this node's zone.
                if self.node().and_then(|n| n.zone.clone()) != zone {
                    dirty.extend(self.services.items.keys().cloned());
                }
            }
        }
    }

    /// Whether Services and EndpointSlices have both been listed: before
    /// that, the model is incomplete and must not be programmed.
    pub fn synced(&self) -> bool {
        self.services.synced && self.slices.synced
    }

    /// What Service `key` asks of the dataplane (`None` when it is gone).
    pub fn service_desired(&self, key: &ObjectKey) -> Option<ServiceDesired> {
        let svc = self.services.items.get(key)?;
        let node = self
            .node_name
            .as_deref()
            .or_else(|| self.node().map(|n| n.name.as_str()));
        let zone = self.node().and_then(|n| n.zone.as_deref());
        Some(service_desired(
            svc,
            &self.slices_of(key),
            super::desired::Here { node, zone },
        ))
    }

    /// The trigger times of slice changes since the last call
    /// (`kubeproxy_network_programming_duration_seconds`).
    pub fn take_triggers(&mut self) -> Vec<std::time::SystemTime> {
        std::mem::take(&mut self.triggers)
    }

    /// Sets this node's name (before the first event).
    pub fn set_node_name(&mut self, name: Option<String>) {
        self.node_name = name;
    }

    pub fn service(&self, key: &ObjectKey) -> Option<&ServiceInfo> {
        self.services.items.get(key)
    }

    /// The EndpointSlices of Service `key`.
    pub fn slices_of(&self, key: &ObjectKey) -> Vec<&SliceInfo> {
        self.slices_of
            .get(key)
            .into_iter()
            .flatten()
            .filter_map(|k| self.slices.items.get(k))
            .collect()
    }

    /// Every Service's key.
    pub fn service_keys(&self) -> impl Iterator<Item = &ObjectKey> {
        self.services.items.keys()
    }

    /// This node (the watch selects it by name; at most one).
    pub fn node(&self) -> Option<&NodeInfo> {
        self.node.items.values().next()
    }
}

fn unindex(
    index: &mut BTreeMap<ObjectKey, BTreeSet<ObjectKey>>,
    service: &ObjectKey,
    slice: &ObjectKey,
) {
    if let Some(set) = index.get_mut(service) {
        set.remove(slice);
        if set.is_empty() {
            index.remove(service);
        }
    }
}

/// The events that make a store hold exactly `model`: a full list of each
/// kind (a source that rereads everything, such as a manifest directory).
pub fn list_events(model: &Model) -> Vec<SourceEvent> {
    let mut events = vec![SourceEvent::Service(Event::List)];
    events.extend(
        model
            .services
            .iter()
            .map(|(k, v)| SourceEvent::Service(Event::Listed(k.clone(), Some(v.clone())))),
    );
    events.push(SourceEvent::Service(Event::ListDone));
    events.push(SourceEvent::Slice(Event::List));
    events.extend(
        model
            .slices
            .iter()
            .map(|(k, v)| SourceEvent::Slice(Event::Listed(k.clone(), Some(v.clone())))),
    );
    events.push(SourceEvent::Slice(Event::ListDone));
    events
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str) -> ObjectKey {
        ObjectKey {
            namespace: "default".into(),
            name: name.into(),
        }
    }

    fn apply(c: &mut Collection<i32>, e: Event<i32>) -> Applied<i32> {
        c.apply(e)
    }

    fn changed_keys(a: &Applied<i32>) -> Vec<String> {
        a.changed.iter().map(|(k, _)| k.name.clone()).collect()
    }

    #[test]
    fn a_relist_is_swapped_in_whole_and_drops_what_was_deleted_meanwhile() {
        let mut c = Collection::default();
        apply(&mut c, Event::List);
        apply(&mut c, Event::Listed(key("a"), Some(1)));
        apply(&mut c, Event::Listed(key("b"), Some(2)));
        assert!(
            !c.synced && c.items.is_empty(),
            "nothing counts before the first list completes"
        );
        let first = apply(&mut c, Event::ListDone);
        assert!(!first.relisted, "the first list is not a relist");
        assert_eq!(changed_keys(&first), ["a", "b"]);

        // A relist: until it completes, every object stays as it was.
        apply(&mut c, Event::List);
        apply(&mut c, Event::Listed(key("a"), Some(10)));
        apply(&mut c, Event::Listed(key("c"), Some(3)));
        assert_eq!(c.items.get(&key("a")), Some(&1));
        assert_eq!(
            c.items.get(&key("b")),
            Some(&2),
            "b keeps its entry while the relist is under way"
        );
        let done = apply(&mut c, Event::ListDone);
        assert!(done.relisted);
        // b was deleted while the watch was down; a changed; c is new.
        assert_eq!(c.items, BTreeMap::from([(key("a"), 10), (key("c"), 3)]));
        let mut keys = changed_keys(&done);
        keys.sort();
        assert_eq!(keys, ["a", "b", "c"]);
    }

    #[test]
    fn an_invalid_object_keeps_its_last_good_state_across_updates_and_relists() {
        let mut c = Collection::default();
        apply(&mut c, Event::List);
        apply(&mut c, Event::Listed(key("a"), Some(1)));
        apply(&mut c, Event::ListDone);
        assert!(
            apply(&mut c, Event::Applied(key("a"), None))
                .changed
                .is_empty()
        );
        assert_eq!(c.items.get(&key("a")), Some(&1));
        apply(&mut c, Event::List);
        apply(&mut c, Event::Listed(key("a"), None));
        apply(&mut c, Event::Listed(key("c"), None));
        let done = apply(&mut c, Event::ListDone);
        assert!(
            done.changed.is_empty(),
            "nothing changed: {:?}",
            done.changed
        );
        assert_eq!(
            c.items,
            BTreeMap::from([(key("a"), 1)]),
            "a new invalid object is not added"
        );
        assert_eq!(
            changed_keys(&apply(&mut c, Event::Deleted(key("a")))),
            ["a"]
        );
        assert!(c.items.is_empty());
        assert!(apply(&mut c, Event::Deleted(key("a"))).changed.is_empty());
    }

    #[test]
    fn an_unchanged_object_touches_nothing() {
        let mut c = Collection::default();
        apply(&mut c, Event::List);
        apply(&mut c, Event::ListDone);
        assert_eq!(
            changed_keys(&apply(&mut c, Event::Applied(key("a"), Some(1)))),
            ["a"]
        );
        assert!(
            apply(&mut c, Event::Applied(key("a"), Some(1)))
                .changed
                .is_empty()
        );
    }

    #[test]
    fn a_change_of_this_nodes_zone_plans_every_service_again() {
        use crate::model::{NodeInfo, ServiceInfo, ServiceKind};
        let mut store = Store::default();
        let mut dirty = BTreeSet::new();
        let svc = ServiceInfo::test(
            "web",
            ServiceKind::ClusterIp {
                ips: vec!["10.96.0.10".parse().unwrap()],
            },
            Vec::new(),
        );
        store.apply(
            SourceEvent::Service(Event::Applied(key("web"), Some(svc))),
            &mut dirty,
        );
        let node = |zone: &str| {
            SourceEvent::Node(Event::Applied(
                key("n1"),
                Some(NodeInfo {
                    name: "n1".into(),
                    zone: Some(zone.into()),
                    ..NodeInfo::default()
                }),
            ))
        };
        for (event, replanned) in [(node("a"), true), (node("a"), false), (node("b"), true)] {
            dirty.clear();
            store.apply(event, &mut dirty);
            assert_eq!(dirty.contains(&key("web")), replanned, "{dirty:?}");
        }
    }
}
