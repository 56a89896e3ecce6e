//! TCX and XDP attachment with pinned links.
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
    ProgramError, SchedClassifier, TcAttachType, Xdp, XdpMode,
    links::{FdLink, LinkError, PinnedLink},
    tc::SchedClassifierLink,
    xdp::XdpLink,
};

use super::Error;

/// Subdirectory of the pin directory holding the links.
pub const LINKS_DIR: &str = "links";

/// Prefix of a TC link pin; the ifindex follows (indexes survive renames).
const LINK_PREFIX: &str = "tc_ingress-if";
/// Prefix of an XDP link pin.
const XDP_LINK_PREFIX: &str = "xdp_ingress-if";
/// Prefix of the pin of the TC link on an external interface
/// (`tc_external`, or `tc_north_south` with `--xdp-mode tc`).
const EXT_LINK_PREFIX: &str = "tc_external-if";

pub fn link_pin_path(pin_dir: &Path, index: u32) -> PathBuf {
    pin_dir
        .join(LINKS_DIR)
        .join(format!("{LINK_PREFIX}{index}"))
}

pub fn ext_tc_pin_path(pin_dir: &Path, index: u32) -> PathBuf {
    pin_dir
        .join(LINKS_DIR)
        .join(format!("{EXT_LINK_PREFIX}{index}"))
}

pub fn xdp_pin_path(pin_dir: &Path, index: u32) -> PathBuf {
    pin_dir
        .join(LINKS_DIR)
        .join(format!("{XDP_LINK_PREFIX}{index}"))
}

/// The interfaces with a pinned external link (XDP, `tc_external` or
/// `tc_north_south`).
pub fn xdp_pins(pin_dir: &Path) -> BTreeSet<u32> {
    let Ok(entries) = fs::read_dir(pin_dir.join(LINKS_DIR)) else {
        return BTreeSet::new();
    };
    entries
        .flatten()
        .filter_map(|e| {
            e.file_name()
                .to_str()
                .and_then(|n| {
                    n.strip_prefix(XDP_LINK_PREFIX)
                        .or_else(|| n.strip_prefix(EXT_LINK_PREFIX))
                })
                .and_then(|i| i.parse().ok())
        })
        .collect()
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
            .and_then(|n| {
                n.strip_prefix(LINK_PREFIX)
                    .or_else(|| n.strip_prefix(XDP_LINK_PREFIX))
                    .or_else(|| n.strip_prefix(EXT_LINK_PREFIX))
            })
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

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Attaches a TC program at the ingress of `iface`, pinned at `path`.
pub fn attach_pinned(
    prog: &mut SchedClassifier,
    iface: &str,
    path: &Path,
) -> Result<PinnedLink, Error> {
    pinned_link(
        prog,
        iface,
        path,
        "link",
        |prog, pinned| {
            let link = SchedClassifierLink::try_from(pinned)?;
            let id = prog.attach_to_link(link)?;
            // The link stays pinned at `path`; the handle goes.
            drop(prog.take_link(id));
            Ok(())
        },
        |prog| {
            let id = prog.attach(iface, TcAttachType::Ingress)?;
            prog.take_link(id)
        },
    )
}

/// Attaches the XDP program to interface `index` in `mode`, replacing the
/// program of a pinned link atomically when one exists (its mode stays).
pub fn attach_xdp_pinned(
    prog: &mut Xdp,
    index: u32,
    iface: &str,
    path: &Path,
    mode: XdpMode,
) -> Result<PinnedLink, Error> {
    pinned_link(
        prog,
        iface,
        path,
        "XDP link",
        |prog, pinned| {
            let link = XdpLink::try_from(pinned)?;
            let id = prog.attach_to_link(link)?;
            drop(prog.take_link(id));
            Ok(())
        },
        |prog| {
            let id = prog.attach_to_if_index(index, mode)?;
            prog.take_link(id)
        },
    )
}

/// The link pinned at `path` with `prog` in it: the pinned one, its program
/// replaced by `replace`, when there is one that takes it; else a new one
/// from `attach`, pinned there (a stale or unreadable pin is removed first).
fn pinned_link<P, L>(
    prog: &mut P,
    iface: &str,
    path: &Path,
    what: &str,
    replace: impl FnOnce(&mut P, FdLink) -> Result<(), BoxError>,
    attach: impl FnOnce(&mut P) -> Result<L, ProgramError>,
) -> Result<PinnedLink, Error>
where
    FdLink: TryFrom<L, Error = LinkError>,
{
    let pin_err = |source: BoxError| Error::PinLink {
        iface: iface.to_owned(),
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(|e| pin_err(Box::new(e)))?;
    }
    match PinnedLink::from_pin(path) {
        Ok(pinned) => match replace(prog, FdLink::from(pinned)) {
            Ok(()) => {
                tracing::info!(iface, "took over the pinned {what}");
                return PinnedLink::from_pin(path).map_err(|e| pin_err(Box::new(e)));
            }
            Err(e) => {
                tracing::info!(iface, "replacing a stale pinned {what}: {e}");
                remove_pin(path);
            }
        },
        Err(LinkError::SyscallError(e)) if e.io_error.kind() == io::ErrorKind::NotFound => {}
        Err(e) => {
            tracing::info!(iface, "replacing an unreadable {what} pin: {e}");
            remove_pin(path);
        }
    }
    let link = attach(prog).map_err(|e| Error::Attach {
        iface: iface.to_owned(),
        source: Box::new(e),
    })?;
    let fd_link = FdLink::try_from(link).map_err(|e| pin_err(Box::new(e)))?;
    fd_link.pin(path).map_err(|e| pin_err(Box::new(e)))
}
