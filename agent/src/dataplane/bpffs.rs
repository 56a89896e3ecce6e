//! The bpffs pin directory: mounting it, checking pinned layouts, cleanup.

use std::{
    fs, io,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use aya::maps::{MapData, MapType};
use nix::{
    mount::{MsFlags, mount, umount},
    sys::statfs::{BPF_FS_MAGIC, statfs},
};
use sluice_abi::{
    affinity::{AffinityKey, AffinityValue},
    conntrack::{CT_COUNTERS, CT_TABLES, CT_TIER_NEW, CT_TIERS, CtEntry, CtKey},
    maps as names,
    service::{
        Backend, ExtIf, MaglevChunk, MaglevKey, NodeAddr, RefusedClaim, ServiceKey, ServiceName,
        ServiceValue, SlotKey, SourceRangeKey,
    },
    sock::{SockRevKey, SockRevValue},
    stats::{DropReason, Event, TrafficStats},
};

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

/// Expected layout of each pinned map: (key size, value size).
fn layout(name: &str) -> Option<(usize, usize)> {
    Some(match name {
        names::SERVICES => (size_of::<ServiceKey>(), size_of::<ServiceValue>()),
        names::SLOTS => (size_of::<SlotKey>(), size_of::<Backend>()),
        names::BACKENDS => (size_of::<u32>(), size_of::<Backend>()),
        _ if names::CONNTRACK.contains(&name) => (size_of::<CtKey>(), size_of::<CtEntry>()),
        names::CONNTRACK_STATS => (size_of::<u32>(), size_of::<u64>()),
        names::SERVICE_STATS | names::BACKEND_STATS => {
            (size_of::<u32>(), size_of::<TrafficStats>())
        }
        names::DROPS | names::EVENTS => (size_of::<u32>(), size_of::<u64>()),
        names::SERVICE_NAMES => (size_of::<u32>(), size_of::<ServiceName>()),
        names::SOCK_REV => (size_of::<SockRevKey>(), size_of::<SockRevValue>()),
        names::AFFINITY_CONFIG => (size_of::<u32>(), size_of::<u32>()),
        names::AFFINITY => (size_of::<AffinityKey>(), size_of::<AffinityValue>()),
        names::SOURCE_RANGES => (size_of::<u32>() + size_of::<SourceRangeKey>(), 1),
        names::NODE_ADDRS => (size_of::<NodeAddr>(), size_of::<u32>()),
        names::EXT_IFS => (size_of::<u32>(), size_of::<ExtIf>()),
        names::REFUSED => (size_of::<ServiceKey>(), size_of::<RefusedClaim>()),
        names::MAGLEV => (size_of::<MaglevKey>(), size_of::<MaglevChunk>()),
        names::MONITOR => (0, 0),
        names::MONITOR_ON => (size_of::<u32>(), size_of::<u32>()),
        names::MONITOR_LIMIT => (
            size_of::<u32>(),
            size_of::<sluice_abi::monitor::MonitorLimiter>(),
        ),
        _ => return None,
    })
}

/// aya reuses a pinned map whatever its shape. A pin whose layout differs
/// from this build's (an upgrade that should have renamed the map), or a
/// conntrack map of another size or type, is removed so that it is created
/// anew. A new conntrack map forgets its flows, as Cilium's does on resize.
pub fn drop_incompatible_pins(pin_dir: &Path, conntrack_sizes: &[u32; 8]) {
    for name in names::PINNED {
        let path = pin_dir.join(name);
        let Ok(map) = MapData::from_pin(&path) else {
            continue;
        };
        let Ok(info) = map.info() else { continue };
        let (key, value) = layout(name).unwrap_or_default();
        let wrong_layout = info.key_size() as usize != key || info.value_size() as usize != value;
        let count = match name {
            names::DROPS => Some(DropReason::COUNT),
            names::EVENTS => Some(Event::COUNT),
            names::CONNTRACK_STATS => Some(CT_TABLES * CT_TIERS * CT_COUNTERS),
            _ => None,
        };
        let wrong_count = count.is_some_and(|n| info.max_entries() != n);
        let resized = names::CONNTRACK
            .iter()
            .zip(conntrack_sizes)
            .zip(0u32..)
            .find(|((n, _), _)| **n == name)
            .is_some_and(|((_, size), index)| {
                let lru = index % CT_TIERS == CT_TIER_NEW;
                let want = if lru { MapType::LruHash } else { MapType::Hash };
                info.max_entries() != *size || info.map_type().ok() != Some(want)
            });
        if wrong_layout || wrong_count || resized {
            tracing::warn!(
                map = name,
                old_entries = info.max_entries(),
                "the pinned map does not fit this build or configuration; recreating it"
            );
            if let Err(e) = fs::remove_file(&path) {
                tracing::warn!(map = name, "cannot remove the pin: {e}");
            }
        }
    }
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
