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
mod tests {
    use std::net::IpAddr;

    use super::{
        decode::{PARALLEL_BYTES, parse_yaml, parse_yaml_stream, split_documents},
        *,
    };
    use crate::model::ServiceKind;

    const WEB: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec:\n  clusterIP: 10.96.0.10\n  ports: [{name: http, port: 80}]\n";
    const WEB_SLICE: &str = "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: web-1\n  labels: {kubernetes.io/service-name: web}\naddressType: IPv4\nports: [{name: http, port: 8080}]\nendpoints: [{addresses: [10.0.0.1]}]\n";

    fn write(dir: &Path, name: &str, content: &str) {
        fs::write(dir.join(name), content).unwrap();
    }

    fn cluster_ip(m: &Model, name: &str) -> IpAddr {
        match &m.services[&ObjectKey {
            namespace: "default".into(),
            name: name.into(),
        }]
            .kind
        {
            ServiceKind::ClusterIp { ips } => ips[0],
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn multi_document_yaml_json_and_lists_load() {
        let d = tempfile::tempdir().unwrap();
        write(d.path(), "a.yaml", &format!("{WEB}---\n{WEB_SLICE}---\n"));
        write(
            d.path(),
            "b.json",
            r#"{"apiVersion":"v1","kind":"List","items":[{"apiVersion":"v1","kind":"Service","metadata":{"name":"api","namespace":"prod"},"spec":{"clusterIP":"10.96.0.11","ports":[{"port":443}]}}]}"#,
        );
        write(
            d.path(),
            "c.yml",
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: ignored}\n",
        );
        write(d.path(), "notes.txt", "not a manifest");
        let mut m = ManifestDir::new(d.path());
        let scan = m.rescan().unwrap();
        assert!(scan.changed);
        assert!(scan.problems.is_empty(), "{:?}", scan.problems);
        let model = m.model();
        assert_eq!(model.services.len(), 2);
        assert_eq!(model.slices.len(), 1);
        assert_eq!(
            cluster_ip(&model, "web"),
            "10.96.0.10".parse::<IpAddr>().unwrap()
        );
        assert!(
            !m.rescan().unwrap().changed,
            "an unchanged directory is not reparsed"
        );
    }

    #[test]
    fn a_broken_file_keeps_its_last_good_objects_and_the_rest_applies() {
        let d = tempfile::tempdir().unwrap();
        write(d.path(), "web.yaml", WEB);
        write(d.path(), "slice.yaml", WEB_SLICE);
        let mut m = ManifestDir::new(d.path());
        m.rescan().unwrap();
        write(
            d.path(),
            "web.yaml",
            "apiVersion: v1\nkind: Service\nmetadata: {name: web\n",
        );
        write(
            d.path(),
            "slice.yaml",
            &WEB_SLICE.replace("10.0.0.1", "10.0.0.2"),
        );
        let scan = m.rescan().unwrap();
        assert_eq!(scan.problems.len(), 1);
        let msg = scan.problems[0].to_string();
        assert!(
            msg.contains("web.yaml") && msg.contains("invalid YAML"),
            "{msg}"
        );
        let model = m.model();
        assert_eq!(
            cluster_ip(&model, "web"),
            "10.96.0.10".parse::<IpAddr>().unwrap()
        );
        let slice = model.slices.values().next().unwrap();
        assert_eq!(
            slice.endpoints[0].addresses[0],
            "10.0.0.2".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn an_invalid_object_keeps_its_last_good_state_and_is_named() {
        let d = tempfile::tempdir().unwrap();
        let api = "apiVersion: v1\nkind: Service\nmetadata: {name: api}\nspec: {clusterIP: 10.96.0.11, ports: [{port: 443}]}\n";
        write(d.path(), "svc.yaml", &format!("{WEB}---\n{api}"));
        let mut m = ManifestDir::new(d.path());
        m.rescan().unwrap();
        // web gets a bad IP, api a new port: api changes, web keeps 10.96.0.10.
        let bad = WEB.replace("10.96.0.10", "10.96.0.999");
        write(
            d.path(),
            "svc.yaml",
            &format!("{bad}---\n{}", api.replace("443", "8443")),
        );
        let scan = m.rescan().unwrap();
        assert_eq!(scan.problems.len(), 1);
        let msg = scan.problems[0].to_string();
        assert!(
            msg.contains("svc.yaml")
                && msg.contains("Service `default/web`")
                && msg.contains("spec.clusterIP"),
            "{msg}"
        );
        let model = m.model();
        assert_eq!(
            cluster_ip(&model, "web"),
            "10.96.0.10".parse::<IpAddr>().unwrap()
        );
        let api = &model.services[&ObjectKey {
            namespace: "default".into(),
            name: "api".into(),
        }];
        assert_eq!(api.ports[0].port, 8443);
        // A schema error (a string where a number belongs) is reported the same way.
        write(
            d.path(),
            "svc.yaml",
            &WEB.replace("port: 80", "port: eighty"),
        );
        let scan = m.rescan().unwrap();
        assert!(
            scan.problems[0]
                .to_string()
                .contains("Service `default/web`"),
            "{}",
            scan.problems[0]
        );
        assert_eq!(m.model().services.len(), 1, "api was removed from the file");
    }

    #[test]
    fn removed_files_remove_their_objects_and_duplicates_are_reported() {
        let d = tempfile::tempdir().unwrap();
        write(d.path(), "a.yaml", WEB);
        write(d.path(), "b.yaml", &WEB.replace("10.96.0.10", "10.96.0.20"));
        let mut m = ManifestDir::new(d.path());
        let scan = m.rescan().unwrap();
        assert_eq!(scan.problems.len(), 1);
        assert!(
            scan.problems[0].to_string().contains("also defined"),
            "{}",
            scan.problems[0]
        );
        assert_eq!(
            cluster_ip(&m.model(), "web"),
            "10.96.0.10".parse::<IpAddr>().unwrap()
        );
        fs::remove_file(d.path().join("a.yaml")).unwrap();
        assert!(m.rescan().unwrap().changed);
        assert_eq!(
            cluster_ip(&m.model(), "web"),
            "10.96.0.20".parse::<IpAddr>().unwrap()
        );
        fs::remove_file(d.path().join("b.yaml")).unwrap();
        m.rescan().unwrap();
        assert!(m.model().services.is_empty());
    }

    /// `n` Services and their slices as one YAML stream, over 256 KiB.
    fn many(n: usize) -> String {
        let mut out = String::new();
        for i in 0..n {
            out.push_str(
                &WEB.replace("name: web", &format!("name: web-{i}"))
                    .replace("10.96.0.10", &format!("10.96.{}.{}", i / 250, i % 250 + 1)),
            );
            out.push_str("---\n");
            out.push_str(
                &WEB_SLICE
                    .replace("service-name: web", &format!("service-name: web-{i}"))
                    .replace("name: web-1", &format!("name: web-{i}-1")),
            );
            out.push_str("---\n");
        }
        out
    }

    #[test]
    fn a_large_yaml_stream_is_parsed_in_pieces_as_in_one() {
        let text = many(1500);
        assert!(text.len() > PARALLEL_BYTES);
        let pieces = split_documents(&text, 4);
        assert_eq!(pieces.len(), 4);
        assert_eq!(pieces.concat(), text);
        assert!(pieces[1..].iter().all(|p| p.starts_with("---\n")));
        let whole = parse_yaml_stream(&text).unwrap();
        assert_eq!(whole.len(), 3000);
        assert_eq!(parse_yaml(&text).unwrap(), whole);
        // Directives belong to the document after them: no cutting.
        assert_eq!(
            split_documents(&format!("%YAML 1.2\n---\n{text}"), 4).len(),
            1
        );
    }

    #[test]
    fn an_error_late_in_a_large_stream_names_the_line_of_the_file() {
        let mut text = many(1500);
        let line = text.lines().count() + 2;
        text.push_str("apiVersion: v1\nkind: [unclosed\n");
        let message = parse_yaml(&text).unwrap_err().to_string();
        assert!(message.contains(&format!("line {line}")), "{message}");
    }

    #[test]
    fn a_watched_change_rereads_only_the_files_it_names() {
        let d = tempfile::tempdir().unwrap();
        let api = "apiVersion: v1\nkind: Service\nmetadata: {name: api}\nspec:\n  clusterIP: 10.96.0.11\n  ports: [{port: 443}]\n";
        write(d.path(), "a.yaml", WEB);
        write(d.path(), "b.yaml", api);
        let mut m = ManifestDir::new(d.path());
        m.rescan().unwrap();

        write(d.path(), "a.yaml", &WEB.replace("10.96.0.10", "10.96.0.20"));
        write(d.path(), "b.yaml", &api.replace("10.96.0.11", "10.96.0.21"));
        // The watcher may prefix paths otherwise than the directory's name.
        let named: BTreeSet<PathBuf> = [PathBuf::from("/elsewhere/a.yaml")].into();
        let scan = m.rescan_paths(&named);
        assert_eq!(scan.touched.len(), 1, "{:?}", scan.touched);
        assert_eq!(
            cluster_ip(&m.model(), "web"),
            "10.96.0.20".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            cluster_ip(&m.model(), "api"),
            "10.96.0.11".parse::<IpAddr>().unwrap(),
            "b.yaml was not named, so not reread"
        );

        // A named file that is gone takes its objects with it.
        fs::remove_file(d.path().join("a.yaml")).unwrap();
        let scan = m.rescan_paths(&[d.path().join("a.yaml")].into());
        assert!(scan.changed);
        assert!(m.model().services.values().all(|s| s.key.name != "web"));
        // A full rescan (after lost events) finds the rest.
        m.rescan().unwrap();
        assert_eq!(
            cluster_ip(&m.model(), "api"),
            "10.96.0.21".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn a_rescan_sends_only_what_the_changed_files_held() {
        let d = tempfile::tempdir().unwrap();
        let api = "apiVersion: v1\nkind: Service\nmetadata: {name: api}\nspec:\n  clusterIP: 10.96.0.11\n  ports: [{port: 443}]\n";
        write(d.path(), "a.yaml", &format!("{WEB}---\n{WEB_SLICE}"));
        write(d.path(), "b.yaml", api);
        let mut m = ManifestDir::new(d.path());
        m.rescan().unwrap();

        // web moves to another address in a.yaml; b.yaml is untouched.
        write(
            d.path(),
            "a.yaml",
            &format!(
                "{}---\n{WEB_SLICE}",
                WEB.replace("10.96.0.10", "10.96.0.20")
            ),
        );
        let scan = m.rescan().unwrap();
        let events = m.changes(&scan.touched);
        assert_eq!(events.len(), 2, "web and its slice only: {events:?}");
        assert!(events.iter().all(|e| matches!(
            e,
            SourceEvent::Service(Event::Applied(k, _)) | SourceEvent::Slice(Event::Applied(k, _))
                if k.name.starts_with("web")
        )));

        // The slice goes: one deletion.
        write(d.path(), "a.yaml", &WEB.replace("10.96.0.10", "10.96.0.20"));
        let scan = m.rescan().unwrap();
        let events = m.changes(&scan.touched);
        assert!(
            events.contains(&SourceEvent::Slice(Event::Deleted(ObjectKey {
                namespace: "default".into(),
                name: "web-1".into(),
            })))
        );

        // A duplicate in a later file wins once the first one is removed.
        write(d.path(), "c.yaml", &WEB.replace("10.96.0.10", "10.96.0.30"));
        m.rescan().unwrap();
        fs::remove_file(d.path().join("a.yaml")).unwrap();
        let scan = m.rescan().unwrap();
        let events = m.changes(&scan.touched);
        assert_eq!(events.len(), 1, "{events:?}");
        assert_eq!(
            cluster_ip(&m.model(), "web"),
            "10.96.0.30".parse::<IpAddr>().unwrap()
        );
        assert!(
            matches!(&events[0], SourceEvent::Service(Event::Applied(_, Some(s))) if s.kind == m.model().services.values().find(|v| v.key.name == "web").unwrap().kind)
        );
    }
}
