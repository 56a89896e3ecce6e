//! The bpffs pin directory: mounting it, removing earlier layouts' pins, cleanup.

use std::{
    fs, io,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use nix::{
    mount::{MsFlags, mount, umount},
    sys::statfs::{BPF_FS_MAGIC, statfs},
};
use sluice_abi::maps as names;

use super::{Error, attach::LINKS_DIR};

/// The conventional bpffs mount point.
const SYS_FS_BPF: &str = "/sys/fs/bpf";

fn is_bpffs(path: &Path) -> bool {
    statfs(path).is_ok_and(|s| s.filesystem_type() == BPF_FS_MAGIC)
}

fn bpffs_err(path: &Path) -> impl FnOnce(io::Error) -> Error + '_ {
    move |source| Error::Bpffs {
        path: path.to_path_buf(),
        source,
    }
}

fn mount_bpffs(at: &Path) -> Result<(), Error> {
    tracing::info!(path = %at.display(), "mounting bpffs");
    mount(
        Some("bpf"),
        at,
        Some("bpf"),
        MsFlags::empty(),
        Some("mode=0700"),
    )
    .map_err(|e| bpffs_err(at)(io::Error::from(e)))
}

/// Makes `pin_dir` a directory on bpffs, mounting bpffs when nothing is
/// mounted: at /sys/fs/bpf for a pin directory below it (sysfs does not allow
/// directories to be made), else at the pin directory itself.
pub fn ensure(pin_dir: &Path) -> Result<(), Error> {
    let existing = pin_dir
        .ancestors()
        .find(|p| p.exists())
        .unwrap_or(Path::new("/"));
    if !is_bpffs(existing) {
        let sys = Path::new(SYS_FS_BPF);
        if pin_dir.starts_with(sys) && pin_dir != sys && !is_bpffs(sys) {
            mount_bpffs(sys)?;
        } else {
            fs::create_dir_all(pin_dir).map_err(bpffs_err(pin_dir))?;
            mount_bpffs(pin_dir)?;
        }
    }
    fs::create_dir_all(pin_dir).map_err(bpffs_err(pin_dir))?;
    if !is_bpffs(pin_dir) {
        return Err(bpffs_err(pin_dir)(io::Error::other(
            "not on a bpffs after mounting",
        )));
    }
    Ok(())
}

/// Removes the pins of maps of earlier layouts (`names::LEGACY`), once this
/// build's maps exist: the old programs, replaced in their links, were the
/// last users.
pub fn remove_legacy_pins(pin_dir: &Path) {
    for name in names::LEGACY {
        let path = pin_dir.join(name);
        match fs::remove_file(&path) {
            Ok(()) => tracing::info!(map = name, "removed the pin of an earlier map layout"),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(map = name, "cannot remove an old pin: {e}"),
        }
    }
}

/// `sluice cleanup`: unpin the links (detaching the programs) and the maps,
/// remove the pin directory, and unmount the bpffs the agent mounted there.
pub fn cleanup(pin_dir: &Path) -> Result<(), Error> {
    if !pin_dir.exists() {
        return Ok(());
    }
    let links = pin_dir.join(LINKS_DIR);
    if let Ok(entries) = fs::read_dir(&links) {
        for entry in entries.flatten() {
            fs::remove_file(entry.path()).map_err(bpffs_err(pin_dir))?;
        }
        fs::remove_dir(&links).map_err(bpffs_err(&links))?;
    }
    for name in names::PINNED.iter().chain(&names::LEGACY) {
        match fs::remove_file(pin_dir.join(name)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(bpffs_err(pin_dir)(e)),
        }
    }
    if is_mount_point(pin_dir) {
        umount(pin_dir).map_err(|e| bpffs_err(pin_dir)(io::Error::from(e)))?;
    }
    match fs::remove_dir(pin_dir) {
        Ok(()) => Ok(()),
        // Something else lives there (not ours): leave it.
        Err(e) if e.raw_os_error() == Some(libc::ENOTEMPTY) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(bpffs_err(pin_dir)(e)),
    }
}

fn is_mount_point(path: &Path) -> bool {
    let parent: PathBuf = path
        .parent()
        .map_or_else(|| PathBuf::from("/"), Path::to_path_buf);
    match (fs::metadata(path), fs::metadata(&parent)) {
        (Ok(a), Ok(b)) => a.dev() != b.dev(),
        _ => false,
    }
}
