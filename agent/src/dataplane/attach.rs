//! TCX attachment with pinned links.
//!
//! A pinned link keeps the program attached after the agent exits. On start,
//! an existing pinned link gets the new program through `bpf_link_update`
//! (atomic: no packet sees the interface without a program); a stale pin
//! (its interface was deleted and maybe recreated) is replaced.

use std::{
    collections::BTreeSet,
    fs, io,
    path::{Path, PathBuf},
};

use aya::programs::{
    SchedClassifier, TcAttachType,
    links::{FdLink, LinkError, PinnedLink},
    tc::SchedClassifierLink,
};

use super::Error;

/// Subdirectory of the pin directory holding the links.
pub const LINKS_DIR: &str = "links";

/// Prefix of a link pin; the ifindex follows (indexes survive renames).
const LINK_PREFIX: &str = "tc_ingress-if";

pub fn link_pin_path(pin_dir: &Path, index: u32) -> PathBuf {
    pin_dir
        .join(LINKS_DIR)
        .join(format!("{LINK_PREFIX}{index}"))
}

/// Removes the pins of links whose interface index is not in `present`.
pub fn prune_pins(pin_dir: &Path, present: &BTreeSet<u32>) {
    let Ok(entries) = fs::read_dir(pin_dir.join(LINKS_DIR)) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let index = name
            .to_str()
            .and_then(|n| n.strip_prefix(LINK_PREFIX))
            .and_then(|i| i.parse().ok());
        if index.is_some_and(|i| !present.contains(&i)) {
            tracing::info!(pin = %entry.path().display(), "removing the pin of a deleted interface");
            remove_pin(&entry.path());
        }
    }
}

pub fn remove_pin(path: &Path) {
    if let Err(e) = fs::remove_file(path)
        && e.kind() != io::ErrorKind::NotFound
    {
        tracing::warn!(path = %path.display(), "cannot remove a stale link pin: {e}");
    }
}

pub fn attach_pinned(
    prog: &mut SchedClassifier,
    iface: &str,
    path: &Path,
) -> Result<PinnedLink, Error> {
    let pin_err = |source: Box<dyn std::error::Error + Send + Sync>| Error::PinLink {
        iface: iface.to_owned(),
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(|e| pin_err(Box::new(e)))?;
    }
    match PinnedLink::from_pin(path) {
        Ok(pinned) => {
            let fd_link = FdLink::from(pinned);
            let replaced = SchedClassifierLink::try_from(fd_link)
                .map_err(|e| Box::new(e) as Box<dyn std::error::Error + Send + Sync>)
                .and_then(|link| prog.attach_to_link(link).map_err(|e| Box::new(e) as _));
            match replaced {
                Ok(id) => {
                    // The link stays pinned at `path`; keep a handle on it.
                    drop(prog.take_link(id));
                    tracing::info!(iface, "took over the pinned link");
                    return PinnedLink::from_pin(path).map_err(|e| pin_err(Box::new(e)));
                }
                Err(e) => {
                    tracing::info!(iface, "replacing a stale pinned link: {e}");
                    remove_pin(path);
                }
            }
        }
        Err(LinkError::SyscallError(e)) if e.io_error.kind() == io::ErrorKind::NotFound => {}
        Err(e) => {
            tracing::info!(iface, "replacing an unreadable link pin: {e}");
            remove_pin(path);
        }
    }
    let id = prog
        .attach(iface, TcAttachType::Ingress)
        .map_err(|e| Error::Attach {
            iface: iface.to_owned(),
            source: Box::new(e),
        })?;
    let link = prog.take_link(id).map_err(|e| Error::Attach {
        iface: iface.to_owned(),
        source: Box::new(e),
    })?;
    let fd_link = FdLink::try_from(link).map_err(|e| pin_err(Box::new(e)))?;
    fd_link.pin(path).map_err(|e| pin_err(Box::new(e)))
}
