//! Object storage: every object in memory for reads, every write committed
//! to an embedded database (redb) in the data directory, with monotonically
//! increasing resourceVersions and a bounded event history for watches.

use std::{
    collections::{BTreeMap, VecDeque},
    path::Path,
    sync::{Arc, Mutex, MutexGuard},
};

use anyhow::{Context as _, Result};
use redb::{Database, ReadableDatabase as _, ReadableTable as _, TableDefinition};
use serde_json::{Value, json};
use tokio::sync::broadcast;

use crate::error::{ApiError, ApiResult};

const OBJECTS: TableDefinition<&str, &[u8]> = TableDefinition::new("objects");
const EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("events");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const META_RV: &str = "resourceVersion";
const META_COMPACTED: &str = "compacted";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventType {
    Added,
    Modified,
    Deleted,
}

impl EventType {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Added => "ADDED",
            Self::Modified => "MODIFIED",
            Self::Deleted => "DELETED",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "ADDED" => Some(Self::Added),
            "MODIFIED" => Some(Self::Modified),
            "DELETED" => Some(Self::Deleted),
            _ => None,
        }
    }
}

/// One change, as stored and as sent to watchers.
#[derive(Debug)]
pub struct Event {
    pub rv: u64,
    pub kind: EventType,
    pub key: String,
    pub object: Arc<Value>,
    /// The object before the change (selectors decide ADDED/DELETED on it).
    pub prev: Option<Arc<Value>>,
}

struct State {
    rv: u64,
    objects: BTreeMap<String, Arc<Value>>,
    history: VecDeque<Arc<Event>>,
    /// Events up to and including this resourceVersion are gone.
    compacted: u64,
}

pub struct Store {
    /// Bumped by compaction: open watches end, and resume with 410.
    epoch: tokio::sync::watch::Sender<u64>,
    db: Database,
    state: Mutex<State>,
    tx: broadcast::Sender<Arc<Event>>,
    history_limit: usize,
}

/// What a watch starts from.
pub enum WatchStart {
    /// Events after the given resourceVersion, from history.
    Backlog(Vec<Arc<Event>>),
    /// Every current object (the watch had no resourceVersion).
    Snapshot(Vec<Arc<Value>>, u64),
}

/// The key of an object: `<group>/<resource>/<namespace>/<name>`.
pub fn object_key(resource_prefix: &str, namespace: &str, name: &str) -> String {
    format!("{resource_prefix}/{namespace}/{name}")
}

pub fn resource_version(obj: &Value) -> Option<u64> {
    obj.pointer("/metadata/resourceVersion")?
        .as_str()?
        .parse()
        .ok()
}

impl Store {
    pub fn open(path: &Path, history_limit: usize) -> Result<Self> {
        let db = Database::create(path).with_context(|| format!("opening {}", path.display()))?;
        let mut state = State {
            rv: 0,
            objects: BTreeMap::new(),
            history: VecDeque::new(),
            compacted: 0,
        };
        {
            let txn = db.begin_write()?;
            txn.open_table(OBJECTS)?;
            txn.open_table(EVENTS)?;
            txn.open_table(META)?;
            txn.commit()?;
        }
        let read = db.begin_read()?;
        let meta = read.open_table(META)?;
        state.rv = meta.get(META_RV)?.map_or(0, |v| v.value());
        state.compacted = meta.get(META_COMPACTED)?.map_or(state.rv, |v| v.value());
        for entry in read.open_table(OBJECTS)?.iter()? {
            let (k, v) = entry?;
            state.objects.insert(
                k.value().to_owned(),
                Arc::new(serde_json::from_slice(v.value())?),
            );
        }
        for entry in read.open_table(EVENTS)?.iter()? {
            let (rv, v) = entry?;
            let e: Value = serde_json::from_slice(v.value())?;
            let kind = e["type"]
                .as_str()
                .and_then(EventType::parse)
                .context("bad event in history")?;
            state.history.push_back(Arc::new(Event {
                rv: rv.value(),
                kind,
                key: e["key"].as_str().unwrap_or_default().to_owned(),
                object: Arc::new(e["object"].clone()),
                prev: e
                    .get("prev")
                    .filter(|p| !p.is_null())
                    .map(|p| Arc::new(p.clone())),
            }));
        }
        drop(read);
        let (tx, _) = broadcast::channel(16_384);
        let (epoch, _) = tokio::sync::watch::channel(0);
        Ok(Self {
            epoch,
            db,
            state: Mutex::new(state),
            tx,
            history_limit,
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn current_rv(&self) -> u64 {
        self.lock().rv
    }

    pub fn get(&self, key: &str) -> Option<Arc<Value>> {
        self.lock().objects.get(key).cloned()
    }

    /// Objects whose key starts with `prefix` and sorts after `after` (if
    /// given), with their keys, at most `limit` of them; and the store's
    /// resourceVersion.
    pub fn list_page(
        &self,
        prefix: &str,
        after: Option<&str>,
        mut keep: impl FnMut(&Value) -> bool,
        limit: Option<usize>,
    ) -> (Vec<(String, Arc<Value>)>, bool, u64) {
        let state = self.lock();
        let start = match after {
            Some(after) => std::ops::Bound::Excluded(after.to_owned()),
            None => std::ops::Bound::Included(prefix.to_owned()),
        };
        let mut matching = state
            .objects
            .range((start, std::ops::Bound::Unbounded))
            .take_while(|(k, _)| k.starts_with(prefix))
            .filter(|(_, v)| keep(v));
        let items: Vec<(String, Arc<Value>)> = matching
            .by_ref()
            .take(limit.unwrap_or(usize::MAX))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let more = limit.is_some() && matching.next().is_some();
        (items, more, state.rv)
    }

    /// Objects whose key starts with `prefix`, and the store's resourceVersion.
    pub fn list(&self, prefix: &str) -> (Vec<Arc<Value>>, u64) {
        let state = self.lock();
        let items = scan(&state.objects, prefix).cloned().collect();
        (items, state.rv)
    }

    /// Creates, replaces or deletes the object at `key` as `f` decides from
    /// the current one; all under one lock, so `f` sees the latest state.
    /// `f` returns the new object (`None` deletes). Returns the stored object
    /// (for a delete, the last state).
    pub fn mutate(
        &self,
        key: &str,
        f: impl FnOnce(Option<&Value>) -> ApiResult<Option<Value>>,
    ) -> ApiResult<Arc<Value>> {
        let mut state = self.lock();
        let old = state.objects.get(key).cloned();
        let new = f(old.as_deref())?;
        let (kind, object) = match (new, &old) {
            (None, None) => return Err(ApiError::internal("nothing to delete")),
            (None, Some(_)) => (EventType::Deleted, None),
            (Some(new), None) => (EventType::Added, Some(new)),
            (Some(new), Some(_)) => (EventType::Modified, Some(new)),
        };
        self.commit(&mut state, key, kind, object, old)
            .map_err(|e| ApiError::internal(format!("storage: {e:#}")))
    }

    fn commit(
        &self,
        state: &mut State,
        key: &str,
        kind: EventType,
        object: Option<Value>,
        prev: Option<Arc<Value>>,
    ) -> Result<Arc<Value>> {
        let rv = state.rv + 1;
        let stored = match object {
            Some(mut obj) => {
                obj["metadata"]["resourceVersion"] = Value::String(rv.to_string());
                Arc::new(obj)
            }
            // A DELETED event carries the last state, at the new resourceVersion.
            None => {
                let mut obj = prev
                    .as_deref()
                    .cloned()
                    .context("delete without an object")?;
                obj["metadata"]["resourceVersion"] = Value::String(rv.to_string());
                Arc::new(obj)
            }
        };
        let event = Arc::new(Event {
            rv,
            kind,
            key: key.to_owned(),
            object: stored.clone(),
            prev,
        });
        let drop_before = (state.history.len() + 1).saturating_sub(self.history_limit);
        let txn = self.db.begin_write()?;
        {
            let mut objects = txn.open_table(OBJECTS)?;
            if kind == EventType::Deleted {
                objects.remove(key)?;
            } else {
                objects.insert(key, serde_json::to_vec(&*stored)?.as_slice())?;
            }
            let mut events = txn.open_table(EVENTS)?;
            let record = json!({
                "type": kind.as_str(),
                "key": key,
                "object": &*stored,
                "prev": event.prev.as_deref(),
            });
            events.insert(rv, serde_json::to_vec(&record)?.as_slice())?;
            let mut compacted = state.compacted;
            for old in state.history.iter().take(drop_before) {
                events.remove(old.rv)?;
                compacted = old.rv;
            }
            let mut meta = txn.open_table(META)?;
            meta.insert(META_RV, rv)?;
            meta.insert(META_COMPACTED, compacted)?;
            state.compacted = compacted;
        }
        txn.commit()?;
        state.history.drain(..drop_before);
        state.rv = rv;
        if kind == EventType::Deleted {
            state.objects.remove(key);
        } else {
            state.objects.insert(key.to_owned(), stored.clone());
        }
        state.history.push_back(event.clone());
        // Nobody listening is fine.
        let _ = self.tx.send(event);
        Ok(stored)
    }

    /// Starts a watch of keys under `prefix`: the backlog after `rv` (or a
    /// snapshot when `rv` is `None`) and a receiver for what follows, with
    /// nothing lost in between. A compacted `rv` is `Expired` (410).
    pub fn watch(
        &self,
        prefix: &str,
        rv: Option<u64>,
    ) -> ApiResult<(WatchStart, broadcast::Receiver<Arc<Event>>)> {
        let state = self.lock();
        let rx = self.tx.subscribe();
        let Some(rv) = rv else {
            let items = scan(&state.objects, prefix).cloned().collect();
            return Ok((WatchStart::Snapshot(items, state.rv), rx));
        };
        if rv < state.compacted {
            return Err(ApiError::expired(format!(
                "too old resource version: {rv} ({})",
                state.compacted + 1
            )));
        }
        let backlog = state
            .history
            .iter()
            .filter(|e| e.rv > rv && e.key.starts_with(prefix))
            .cloned()
            .collect();
        Ok((WatchStart::Backlog(backlog), rx))
    }

    /// Changes when the history is compacted.
    pub fn epoch(&self) -> tokio::sync::watch::Receiver<u64> {
        self.epoch.subscribe()
    }

    /// Every change from now on (controllers).
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Event>> {
        self.tx.subscribe()
    }

    /// Forgets the whole event history: every watch resuming from an older
    /// resourceVersion gets 410 and must relist (as after etcd compaction).
    pub fn compact(&self) -> Result<u64> {
        let mut state = self.lock();
        let txn = self.db.begin_write()?;
        {
            let mut events = txn.open_table(EVENTS)?;
            for e in &state.history {
                events.remove(e.rv)?;
            }
            txn.open_table(META)?.insert(META_COMPACTED, state.rv)?;
        }
        txn.commit()?;
        state.history.clear();
        state.compacted = state.rv;
        self.epoch.send_modify(|e| *e += 1);
        Ok(state.rv)
    }
}

fn scan<'a>(
    objects: &'a BTreeMap<String, Arc<Value>>,
    prefix: &'a str,
) -> impl Iterator<Item = &'a Arc<Value>> {
    objects
        .range(prefix.to_owned()..)
        .take_while(move |(k, _)| k.starts_with(prefix))
        .map(|(_, v)| v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(name: &str) -> Value {
        json!({"metadata": {"name": name}})
    }

    #[test]
    fn writes_survive_a_reopen_with_their_resource_versions() {
        let dir = tempdir();
        {
            let s = Store::open(&dir.join("db"), 100).unwrap();
            s.mutate("core/services/default/a", |_| Ok(Some(obj("a"))))
                .unwrap();
            let b = s
                .mutate("core/services/default/b", |_| Ok(Some(obj("b"))))
                .unwrap();
            assert_eq!(resource_version(&b), Some(2));
            s.mutate("core/services/default/a", |_| Ok(None)).unwrap();
        }
        let s = Store::open(&dir.join("db"), 100).unwrap();
        assert_eq!(s.current_rv(), 3);
        let (items, rv) = s.list("core/services/");
        assert_eq!((items.len(), rv), (1, 3));
        let (start, _) = s.watch("core/services/", Some(1)).unwrap();
        let WatchStart::Backlog(events) = start else {
            panic!()
        };
        let kinds: Vec<_> = events.iter().map(|e| (e.rv, e.kind)).collect();
        assert_eq!(kinds, [(2, EventType::Added), (3, EventType::Deleted)]);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn old_resource_versions_expire_with_the_history() {
        let dir = tempdir();
        let s = Store::open(&dir.join("db"), 3).unwrap();
        for i in 0..5 {
            s.mutate(&format!("core/pods/default/p{i}"), |_| Ok(Some(obj("p"))))
                .unwrap();
        }
        assert!(
            s.watch("core/pods/", Some(2)).is_ok(),
            "events 3..5 are kept"
        );
        let err = s.watch("core/pods/", Some(1)).err().unwrap();
        assert_eq!((err.code, err.reason), (410, "Expired"));
        s.compact().unwrap();
        assert_eq!(s.watch("core/pods/", Some(4)).err().unwrap().code, 410);
        assert!(s.watch("core/pods/", Some(5)).is_ok());
        std::fs::remove_dir_all(dir).unwrap();
    }

    fn tempdir() -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!(
            "sluice-store-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&d).unwrap();
        d
    }
}
