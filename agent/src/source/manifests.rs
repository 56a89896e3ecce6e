//! The manifest-directory source: `*.yaml`, `*.yml` and `*.json` files
//! (multi-document YAML and `kind: List` included) holding `v1 Service` and
//! `discovery.k8s.io/v1 EndpointSlice` objects.
//!
//! Each file is parsed on its own. A file that does not parse keeps all its
//! objects' last good state; an object that is invalid keeps its own last
//! good state; everything else is applied. Every problem is reported with the
//! file name and, where known, the object.
//!
//! Here: the directory's files and objects, and what a rescan changed
//! (`ManifestDir`); `decode`: one file's objects; `watch`: the directory
//! watch that drives rescans.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs, io,
    path::{Path, PathBuf},
};

use thiserror::Error;

use crate::model::{
    Model, ObjectKey, ServiceInfo, SliceInfo,
    store::{Event, SourceEvent},
    translate::InvalidObject,
};

mod decode;
mod watch;

use decode::parse_file;
pub use watch::spawn;

#[derive(Debug, Error)]
pub enum ManifestError {
    #[error("cannot read manifest directory `{}`", dir.display())]
    ReadDir {
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("`{}`: cannot read the file", file.display())]
    ReadFile {
        file: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("`{}`: {message}; keeping the file's last good objects", file.display())]
    Parse { file: PathBuf, message: String },
    #[error("`{}`: {source}; keeping its last good state", file.display())]
    Invalid {
        file: PathBuf,
        #[source]
        source: InvalidObject,
    },
    #[error("`{}`: {kind} `{object}` is also defined in `{}`; using that one", file.display(), first.display())]
    Duplicate {
        file: PathBuf,
        first: PathBuf,
        kind: &'static str,
        object: ObjectKey,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum ObjectId {
    Service(ObjectKey),
    Slice(ObjectKey),
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Object {
    Service(ServiceInfo),
    Slice(SliceInfo),
}

#[derive(Default)]
struct FileState {
    content: Vec<u8>,
    objects: BTreeMap<ObjectId, Object>,
}

/// The objects of one manifest directory, file by file.
pub struct ManifestDir {
    dir: PathBuf,
    files: BTreeMap<PathBuf, FileState>,
}

/// What a rescan found.
#[derive(Debug, Default)]
pub struct Scan {
    /// Whether any file was added, changed or removed.
    pub changed: bool,
    pub problems: Vec<ManifestError>,
    /// The objects of the files that changed, before and after.
    pub touched: BTreeSet<ObjectId>,
}

impl ManifestDir {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            files: BTreeMap::new(),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Rereads the directory, parsing only files whose content changed.
    pub fn rescan(&mut self) -> Result<Scan, ManifestError> {
        let read_dir = |source| ManifestError::ReadDir {
            dir: self.dir.clone(),
            source,
        };
        let mut present = BTreeSet::new();
        for entry in fs::read_dir(&self.dir).map_err(read_dir)? {
            let path = entry.map_err(read_dir)?.path();
            if is_manifest_name(&path) && path.is_file() {
                present.insert(path);
            }
        }
        let gone: Vec<PathBuf> = self
            .files
            .keys()
            .filter(|path| !present.contains(*path))
            .cloned()
            .collect();
        Ok(self.update(gone, present))
    }

    /// Rereads only `paths`, the files the directory watch named: a change
    /// costs the size of the files it touched, not of the directory.
    pub fn rescan_paths(&mut self, paths: &BTreeSet<PathBuf>) -> Scan {
        let mut present = BTreeSet::new();
        let mut gone = Vec::new();
        // The watch is not recursive: every path names a file of the
        // directory, whichever prefix the watcher gave it.
        for path in paths
            .iter()
            .filter_map(|p| p.file_name())
            .map(|n| self.dir.join(n))
        {
            if is_manifest_name(&path) && path.is_file() {
                present.insert(path);
            } else if self.files.contains_key(&path) {
                gone.push(path);
            }
        }
        self.update(gone, present)
    }

    /// Forgets the files `gone` and rereads the files `present`.
    fn update(&mut self, gone: Vec<PathBuf>, present: BTreeSet<PathBuf>) -> Scan {
        let mut scan = Scan::default();
        for path in gone {
            if let Some(state) = self.files.remove(&path) {
                scan.changed = true;
                scan.touched.extend(state.objects.into_keys());
            }
        }
        for path in present {
            let content = match fs::read(&path) {
                Ok(c) => c,
                // Removed between listing and reading: its removal is an
                // event of its own.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(source) => {
                    scan.problems
                        .push(ManifestError::ReadFile { file: path, source });
                    continue;
                }
            };
            // File times are too coarse to tell a rewrite of the same size:
            // compare the bytes.
            if self
                .files
                .get(&path)
                .is_some_and(|old| old.content == content)
            {
                continue;
            }
            scan.changed = true;
            let old = self.files.remove(&path).unwrap_or_default();
            let objects = parse_file(&path, &content, &old.objects, &mut scan.problems);
            let objects = objects.unwrap_or(old.objects.clone());
            scan.touched.extend(old.objects.into_keys());
            scan.touched.extend(objects.keys().cloned());
            self.files.insert(path, FileState { content, objects });
        }
        if scan.changed {
            self.check_duplicates(&scan.touched, &mut scan.problems);
        }
        scan
    }

    /// Reports the objects among `touched` that more than one file defines
    /// (the others were checked when they last changed).
    fn check_duplicates(&self, touched: &BTreeSet<ObjectId>, problems: &mut Vec<ManifestError>) {
        for id in touched {
            let mut holders = self
                .files
                .iter()
                .filter(|(_, state)| state.objects.contains_key(id))
                .map(|(path, _)| path);
            let Some(first) = holders.next() else {
                continue;
            };
            for path in holders {
                let (kind, object) = match id {
                    ObjectId::Service(k) => ("Service", k.clone()),
                    ObjectId::Slice(k) => ("EndpointSlice", k.clone()),
                };
                problems.push(ManifestError::Duplicate {
                    file: path.clone(),
                    first: first.clone(),
                    kind,
                    object,
                });
            }
        }
    }

    /// What `id` is now: the first file's object of that id, if any.
    fn resolve(&self, id: &ObjectId) -> Option<&Object> {
        self.files.values().find_map(|state| state.objects.get(id))
    }

    /// The events that bring a consumer of the last model to the current
    /// one, given the objects a rescan touched: only those.
    pub fn changes(&self, touched: &BTreeSet<ObjectId>) -> Vec<SourceEvent> {
        touched
            .iter()
            .map(|id| match (id, self.resolve(id)) {
                (_, Some(Object::Service(s))) => {
                    SourceEvent::Service(Event::Applied(s.key.clone(), Some(s.clone())))
                }
                (_, Some(Object::Slice(s))) => {
                    SourceEvent::Slice(Event::Applied(s.key.clone(), Some(s.clone())))
                }
                (ObjectId::Service(key), None) => SourceEvent::Service(Event::Deleted(key.clone())),
                (ObjectId::Slice(key), None) => SourceEvent::Slice(Event::Deleted(key.clone())),
            })
            .collect()
    }

    /// The union of all files' objects; for duplicates, the first file wins.
    pub fn model(&self) -> Model {
        let mut model = Model::default();
        for state in self.files.values() {
            for object in state.objects.values() {
                match object {
                    Object::Service(s) => {
                        model
                            .services
                            .entry(s.key.clone())
                            .or_insert_with(|| s.clone());
                    }
                    Object::Slice(s) => {
                        model
                            .slices
                            .entry(s.key.clone())
                            .or_insert_with(|| s.clone());
                    }
                }
            }
        }
        model
    }
}

/// `*.yaml`, `*.yml` or `*.json`, and not hidden: editors' temporary and
/// hidden files are not manifests.
fn is_manifest_name(path: &Path) -> bool {
    let is_manifest = path
        .extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| matches!(e, "yaml" | "yml" | "json"));
    let hidden = path
        .file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with('.'));
    is_manifest && !hidden
}

#[cfg(test)]
mod tests;
