//! Watching the manifest directory (inotify, through `notify`): bursts of
//! changes within the debounce are read once; a lost event queue rereads
//! everything.

use std::{
    collections::BTreeSet,
    io,
    path::{Path, PathBuf},
};

use super::{ManifestDir, ManifestError, is_manifest_name};
use crate::model::store::list_events;

/// What the directory watch saw.
enum Change {
    /// These files changed; `whole` if one was renamed into place.
    Files { paths: Vec<PathBuf>, whole: bool },
    /// Events were lost (queue overflow): reread everything.
    Lost,
}

/// The files to reread after a burst of changes.
enum Pending {
    Paths(BTreeSet<PathBuf>),
    All,
}

impl Default for Pending {
    fn default() -> Self {
        Self::Paths(BTreeSet::new())
    }
}

impl Pending {
    /// Adds a change; whether it was a whole file renamed into place.
    fn add(&mut self, change: Change) -> bool {
        match change {
            Change::Files { paths, whole } => {
                if let Self::Paths(pending) = self {
                    pending.extend(paths);
                }
                whole
            }
            Change::Lost => {
                *self = Self::All;
                false
            }
        }
    }
}

/// Reads `dir` now (failing if it cannot be read), sends its model as a
/// full list, and sends it again as files change; changes within
/// `debounce` of each other are read once. A manifest renamed into place
/// is read at once (it is whole).
pub fn spawn(
    dir: &Path,
    events: crate::source::Events,
    debounce: std::time::Duration,
) -> Result<crate::source::AbortOnDrop, ManifestError> {
    use notify::Watcher as _;
    let (tx, mut changes) = tokio::sync::mpsc::unbounded_channel();
    // Watch before the first scan, so that no change falls in between.
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let change = match event {
            // Overflow and the like: rescan everything, after the usual pause.
            Err(_) => Some(Change::Lost),
            Ok(e) if e.need_rescan() => Some(Change::Lost),
            // Our own reads show up as access events.
            Ok(e) if matches!(e.kind, notify::EventKind::Access(_)) => None,
            // A manifest renamed into place is whole (`kubectl cp`, atomic
            // saves): no need to wait for more writes.
            Ok(e) => Some(Change::Files {
                whole: matches!(
                    e.kind,
                    notify::EventKind::Modify(notify::event::ModifyKind::Name(
                        notify::event::RenameMode::To | notify::event::RenameMode::Both
                    ))
                ) && e.paths.iter().any(|p| is_manifest_name(p)),
                paths: e.paths,
            }),
        };
        if let Some(change) = change {
            // The receiver is gone only when the agent is stopping.
            let _ = tx.send(change);
        }
    })
    .and_then(|mut w| {
        w.watch(dir, notify::RecursiveMode::NonRecursive)
            .map(|()| w)
    })
    .map_err(|e| ManifestError::ReadDir {
        dir: dir.to_path_buf(),
        source: io::Error::other(e),
    })?;
    let mut manifests = ManifestDir::new(dir);
    let started = std::time::Instant::now();
    let first = manifests.rescan()?;
    for problem in &first.problems {
        tracing::warn!("{problem}");
    }
    let model = manifests.model();
    tracing::info!(
        files = manifests.files.len(),
        services = model.services.len(),
        took_ms = started.elapsed().as_millis(),
        "manifests read"
    );
    // The receiver is gone only when the agent is stopping.
    let _ = events.send(list_events(&model));
    Ok(crate::source::AbortOnDrop(tokio::spawn(async move {
        let _keep = &mut watcher;
        while let Some(change) = changes.recv().await {
            let mut pending = Pending::default();
            // Writes in place come in steps: wait for more, unless a whole
            // manifest is renamed into place meanwhile (an atomic write's
            // temporary file comes first).
            if !pending.add(change) {
                let _ = tokio::time::timeout(debounce, async {
                    while let Some(change) = changes.recv().await {
                        if pending.add(change) {
                            break;
                        }
                    }
                })
                .await;
            }
            while let Ok(change) = changes.try_recv() {
                pending.add(change);
            }
            let scan = match pending {
                Pending::Paths(paths) => Ok(manifests.rescan_paths(&paths)),
                Pending::All => manifests.rescan(),
            };
            match scan {
                Ok(scan) => {
                    for problem in &scan.problems {
                        tracing::warn!("{problem}");
                    }
                    // Only what the changed files held: a change costs what
                    // it touches, not the size of the directory.
                    if scan.changed && events.send(manifests.changes(&scan.touched)).is_err() {
                        return;
                    }
                }
                Err(e) => tracing::warn!("{e}: {:?}", std::error::Error::source(&e)),
            }
        }
    })))
}
