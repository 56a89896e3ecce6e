//! TC and XDP attachment: TCX and XDP links, pinned; or, for TC on kernels
//! without TCX (before Linux 6.6), netlink filters.
//!
//! A pinned link keeps the program attached after the agent exits. On start,
//! an existing pinned link gets the new program through `bpf_link_update`
//! (atomic: no packet sees the interface without a program); a stale pin
//! (its interface was deleted and maybe recreated) is replaced.
//!
//! A netlink filter (a direct-action `cls_bpf` filter under the interface's
//! `clsact` qdisc) has no link to pin: it stays attached by itself. Sluice's
//! filter on an interface has a fixed priority and handle, so a restarted
//! agent finds it and replaces its program in place (`RTM_NEWTFILTER`
//! without `NLM_F_EXCL` on the same priority and handle, atomic as a link
//! update is), as Cilium does with its own fixed handles.

use std::{
    collections::BTreeSet,
    fs, io,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf,
    programs::{
        Link, ProgramError, ProgramFd, SchedClassifier, TcAttachType, Xdp, XdpMode,
        links::{FdLink, LinkError, PinnedLink},
        tc::{NlOptions, SchedClassifierLink, TcAttachOptions, TcHandle},
        xdp::XdpLink,
    },
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

/// How TC programs attach (`--tc-attach`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TcAttach {
    /// TCX where the kernel has it, else netlink.
    #[default]
    Auto,
    Tcx,
    Netlink,
}

/// The attach path in use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TcPath {
    /// TCX links (Linux 6.6 and later), pinned.
    Tcx,
    /// A `clsact` qdisc and a direct-action filter of fixed priority and
    /// handle.
    Netlink,
}

impl TcPath {
    pub const fn name(self) -> &'static str {
        match self {
            Self::Tcx => "tcx",
            Self::Netlink => "netlink",
        }
    }
}

/// On the netlink path, `tc_ingress` is pinned here under the links
/// directory: the filters' program, and the mark `sluice status` reads the
/// path from (a netlink filter has no link to pin).
const NETLINK_MARK: &str = "tc_netlink";

/// The TC attach path of the agent whose pins are in `pin_dir`, as it left
/// them: netlink (its mark), TCX (pinned TC links), or none attached.
pub fn pinned_path(pin_dir: &Path) -> Option<TcPath> {
    let links = pin_dir.join(LINKS_DIR);
    if links.join(NETLINK_MARK).exists() {
        return Some(TcPath::Netlink);
    }
    let tcx = fs::read_dir(links).ok()?.flatten().any(|e| {
        e.file_name()
            .to_str()
            .is_some_and(|n| n.starts_with(LINK_PREFIX) || n.starts_with(EXT_LINK_PREFIX))
    });
    tcx.then_some(TcPath::Tcx)
}

/// Marks the pins with `path` (see `NETLINK_MARK`).
pub fn mark_path(prog: &mut SchedClassifier, pin_dir: &Path, path: TcPath) -> Result<(), Error> {
    let mark = pin_dir.join(LINKS_DIR).join(NETLINK_MARK);
    remove_pin(&mark);
    if path == TcPath::Tcx {
        return Ok(());
    }
    let pin_err = |source: BoxError| Error::PinLink {
        iface: "(netlink filters)".to_owned(),
        path: mark.clone(),
        source,
    };
    fs::create_dir_all(pin_dir.join(LINKS_DIR)).map_err(|e| pin_err(Box::new(e)))?;
    prog.pin(&mark).map_err(|e| pin_err(Box::new(e)))
}

/// Sluice's filter on an interface's ingress: its priority (the first, so
/// that nothing ahead of it sees untranslated packets) and handle.
const FILTER_PRIORITY: u16 = 1;
const FILTER_HANDLE: TcHandle = TcHandle::new(0, 0x5c1);

/// Chooses the attach path: `wanted`, or with `auto` what the kernel has.
/// TCX is probed by querying loopback's TCX ingress (read-only; a kernel
/// without TCX refuses the attach type).
pub fn choose(wanted: TcAttach) -> Result<TcPath, Error> {
    let probe = SchedClassifier::query_tcx("lo", TcAttachType::Ingress);
    let path = match (wanted, probe) {
        (TcAttach::Netlink, _) => TcPath::Netlink,
        (TcAttach::Tcx | TcAttach::Auto, Ok(_)) => TcPath::Tcx,
        (TcAttach::Tcx, Err(e)) => return Err(Error::NoTcx(Box::new(e))),
        (TcAttach::Auto, Err(e)) => {
            tracing::info!("no TCX in this kernel ({e}): TC programs attach through netlink");
            TcPath::Netlink
        }
    };
    tracing::info!(path = path.name(), "TC attach path");
    Ok(path)
}

/// A TC program's attachment to an interface.
pub enum TcLink {
    /// A TCX link, pinned: it stays when the agent exits.
    Pinned { _link: PinnedLink },
    /// Sluice's netlink filter: it stays by itself, also when the agent
    /// exits.
    Netlink,
}

impl TcLink {
    /// Takes the program off interface `index` (it left the list, or is
    /// gone; it may have been renamed). A pinned link goes with its pin,
    /// which the caller removes.
    pub fn detach(self, index: u32) {
        if let Self::Netlink = self {
            let Ok(name) = nix::net::if_::if_indextoname(index) else {
                // Gone, and its filter with it.
                return;
            };
            let iface = name.to_string_lossy();
            let filter = SchedClassifierLink::attached(
                &iface,
                TcAttachType::Ingress,
                FILTER_PRIORITY,
                FILTER_HANDLE,
                None,
            );
            if let Err(e) = filter.map_err(ProgramError::IOError).and_then(Link::detach) {
                tracing::warn!(%iface, "removing the TC filter: {e}");
            }
        }
    }
}

/// Attaches a TC program at the ingress of `iface` along `path`: a TCX
/// link pinned at `pin` (replacing a pinned link's program in place), or
/// Sluice's netlink filter (replacing its program in place when it is
/// there; a TCX link pinned there before is removed).
pub fn attach_tc(
    prog: &mut SchedClassifier,
    iface: &str,
    pin: &Path,
    path: TcPath,
) -> Result<TcLink, Error> {
    match path {
        TcPath::Tcx => attach_pinned(prog, iface, pin).map(|link| TcLink::Pinned { _link: link }),
        TcPath::Netlink => {
            remove_pin(pin);
            attach_filter(prog, iface).map(|()| TcLink::Netlink)
        }
    }
}

/// Removes the netlink filters of the programs `names` from the ingress
/// of every interface of this namespace.
pub fn remove_filters(names: &[&str]) {
    // This namespace's interfaces (rtnetlink; sysfs may be another's).
    let Ok(interfaces) = nix::net::if_::if_nameindex() else {
        return;
    };
    for interface in &interfaces {
        let Ok(iface) = interface.name().to_str() else {
            continue;
        };
        for name in names {
            match aya::programs::tc::qdisc_detach_program(iface, TcAttachType::Ingress, name) {
                Ok(()) => tracing::info!(iface, program = name, "removed the TC filter"),
                Err(e) => tracing::debug!(iface, program = name, "no TC filter to remove: {e}"),
            }
        }
    }
}

fn attach_filter(prog: &mut SchedClassifier, iface: &str) -> Result<(), Error> {
    let attach_err = |source: ProgramError| Error::Attach {
        iface: iface.to_owned(),
        source: Box::new(source),
    };
    // There may be one already (ours, or another tool's): that is fine.
    if let Err(e) = aya::programs::tc::qdisc_add_clsact(iface) {
        tracing::debug!(iface, "adding the clsact qdisc: {e}");
    }
    let ours = SchedClassifierLink::attached(
        iface,
        TcAttachType::Ingress,
        FILTER_PRIORITY,
        FILTER_HANDLE,
        None,
    )
    .map_err(|e| attach_err(ProgramError::IOError(e)))?;
    let id = match prog.attach_to_link(ours) {
        Ok(id) => {
            tracing::info!(iface, "took over the TC filter");
            id
        }
        // No filter of ours there yet.
        Err(_) => prog
            .attach_with_options(
                iface,
                TcAttachType::Ingress,
                TcAttachOptions::Netlink(NlOptions {
                    priority: FILTER_PRIORITY,
                    handle: FILTER_HANDLE,
                    classid: None,
                }),
            )
            .map_err(attach_err)?,
    };
    let link = prog.take_link(id).map_err(attach_err)?;
    // Dropping the handle would delete the filter (aya detaches its links
    // on drop); the filter must outlive the agent, as a pinned link does.
    // The handle holds no resource (an interface index, a priority, a
    // handle), so forgetting it leaks nothing.
    std::mem::forget(link);
    Ok(())
}

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

/// The XDP program of the object.
pub(super) fn xdp_program(ebpf: &mut Ebpf) -> Result<&mut Xdp, Error> {
    xdp(ebpf, super::XDP_PROGRAM)
}

/// The pod-facing TC program of the object.
pub(super) fn tc_program(ebpf: &mut Ebpf) -> Result<&mut SchedClassifier, Error> {
    classifier(ebpf, super::TC_PROGRAM)
}

/// Loads the programs other programs hand packets on to and puts them in
/// the tail-call map (`SLUICE_TAIL`), each at its slot (`TAILS`):
/// `tc_ingress6`, IPv6 from pods, `tc_ingress6_new`, their new flows, and
/// `tc_ingress6_icmp`, their ICMPv6 errors; `tc_edge6` and its two, the
/// same for IPv6 from outside; and `xdp_edge6` in `SLUICE_XDP_TAIL`
/// (`XDP_TAILS`), IPv6 from outside in XDP. Without them, IPv6 passes
/// untouched. `wanted` picks them by name (the agent takes every one; a test, those
/// of the program it runs).
pub fn link_tail_calls(ebpf: &mut Ebpf, wanted: impl Fn(&str) -> bool) -> Result<(), Error> {
    let mut tc = Vec::with_capacity(super::TAILS.len());
    for (slot, name) in (0u32..).zip(super::TAILS) {
        if wanted(name) {
            let prog = classifier(ebpf, name)?;
            prog.load().map_err(program_err(name))?;
            tc.push((slot, owned_fd(prog.fd(), name)?));
        }
    }
    set_tails(ebpf, sluice_abi::maps::TAIL_CALLS, &tc)?;
    let mut xdp_tails = Vec::with_capacity(super::XDP_TAILS.len());
    for (slot, name) in (0u32..).zip(super::XDP_TAILS) {
        if wanted(name) {
            let prog = xdp(ebpf, name)?;
            prog.load().map_err(program_err(name))?;
            xdp_tails.push((slot, owned_fd(prog.fd(), name)?));
        }
    }
    set_tails(ebpf, sluice_abi::maps::XDP_TAIL_CALLS, &xdp_tails)
}

/// A loaded program's descriptor, for a program array.
fn owned_fd(fd: Result<&ProgramFd, ProgramError>, name: &'static str) -> Result<ProgramFd, Error> {
    fd.and_then(|fd| fd.try_clone().map_err(ProgramError::IOError))
        .map_err(program_err(name))
}

fn program_err(name: &'static str) -> impl Fn(ProgramError) -> Error {
    move |e| Error::Program {
        name,
        source: Box::new(e),
    }
}

/// Puts each program in its slot of program array `map_name`.
fn set_tails(
    ebpf: &mut Ebpf,
    map_name: &'static str,
    fds: &[(u32, ProgramFd)],
) -> Result<(), Error> {
    let map_err = |e| Error::Map {
        name: map_name,
        source: Box::new(e),
    };
    let map = ebpf.map_mut(map_name).ok_or(Error::Map {
        name: map_name,
        source: Box::new(aya::maps::MapError::InvalidName {
            name: map_name.into(),
        }),
    })?;
    let mut tails = aya::maps::ProgramArray::try_from(map).map_err(map_err)?;
    for (slot, fd) in fds {
        tails.set(*slot, fd, 0).map_err(map_err)?;
    }
    Ok(())
}

/// A TC program of the object, by name.
/// The XDP program `name` of the object.
fn xdp<'a>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut Xdp, Error> {
    ebpf.program_mut(name)
        .and_then(|p| <&mut Xdp>::try_from(p).ok())
        .ok_or(Error::MissingProgram(name))
}

pub(super) fn classifier<'a>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<&'a mut SchedClassifier, Error> {
    ebpf.program_mut(name)
        .and_then(|p| <&mut SchedClassifier>::try_from(p).ok())
        .ok_or(Error::MissingProgram(name))
}
