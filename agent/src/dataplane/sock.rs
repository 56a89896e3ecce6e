//! Socket LB: the cgroup `sock_addr` programs and their pinned links.
//!
//! The programs are attached to one cgroup (v2) and act on every
//! process in its subtree. Their links are pinned next to the TC links, so
//! they keep working while the agent is down. A restart attaches the new
//! programs first and then renames their pins over the old ones: the old
//! links go with their pins, and for a moment both run, which is harmless
//! (the second program sees a backend address, not a frontend).

use std::{
    fs, io,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf,
    programs::{
        CgroupAttachMode, CgroupSockAddr,
        links::{FdLink, PinnedLink},
    },
};

use super::{Error, attach::LINKS_DIR};

/// The programs in the eBPF object (their pins have the same names). The
/// `*6` programs serve IPv6 frontends and IPv6 sockets' IPv4-mapped
/// addresses.
pub const PROGRAMS: [&str; 8] = [
    "sock_connect4",
    "sock_sendmsg4",
    "sock_recvmsg4",
    "sock_getpeername4",
    "sock_connect6",
    "sock_sendmsg6",
    "sock_recvmsg6",
    "sock_getpeername6",
];

/// The cgroup2 mount point, from /proc/self/mountinfo.
pub fn cgroup2_root() -> io::Result<PathBuf> {
    let info = fs::read_to_string("/proc/self/mountinfo")?;
    info.lines()
        .find_map(|line| {
            // `id parent major:minor root mount-point options ... - fstype source`
            let (left, right) = line.split_once(" - ")?;
            if right.split_whitespace().next()? != "cgroup2" {
                return None;
            }
            left.split_whitespace().nth(4).map(unescape)
        })
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no cgroup2 file system is mounted"))
}

/// mountinfo escapes spaces, tabs, newlines and backslashes as `\ooo`.
fn unescape(field: &str) -> PathBuf {
    let mut out = String::with_capacity(field.len());
    let mut rest = field;
    while let Some(i) = rest.find('\\') {
        out.push_str(&rest[..i]);
        let code = rest
            .get(i + 1..i + 4)
            .and_then(|o| u8::from_str_radix(o, 8).ok());
        if let Some(c) = code {
            out.push(char::from(c));
            rest = &rest[i + 4..];
        } else {
            out.push('\\');
            rest = &rest[i + 1..];
        }
    }
    out.push_str(rest);
    PathBuf::from(out)
}

fn pin_path(pin_dir: &Path, program: &str) -> PathBuf {
    pin_dir.join(LINKS_DIR).join(program)
}

/// Loads the programs and attaches them to `cgroup`, replacing the pinned
/// links of an earlier run (on this cgroup or another).
pub fn attach(ebpf: &mut Ebpf, cgroup: &Path, pin_dir: &Path) -> Result<(), Error> {
    let err = |program: &'static str| {
        move |source: Box<dyn std::error::Error + Send + Sync>| Error::SocketLb {
            program,
            cgroup: cgroup.to_path_buf(),
            source,
        }
    };
    let dir = fs::File::open(cgroup).map_err(|e| err(PROGRAMS[0])(Box::new(e)))?;
    fs::create_dir_all(pin_dir.join(LINKS_DIR)).map_err(|e| err(PROGRAMS[0])(Box::new(e)))?;
    for name in PROGRAMS {
        let prog: &mut CgroupSockAddr = ebpf
            .program_mut(name)
            .and_then(|p| p.try_into().ok())
            .ok_or(Error::MissingProgram(name))?;
        prog.load().map_err(|e| err(name)(Box::new(e)))?;
        // Links on a cgroup always allow others next to them.
        let id = prog
            .attach(&dir, CgroupAttachMode::Single)
            .map_err(|e| err(name)(Box::new(e)))?;
        let link = prog.take_link(id).map_err(|e| err(name)(Box::new(e)))?;
        let link = FdLink::try_from(link).map_err(|e| err(name)(Box::new(e)))?;
        let path = pin_path(pin_dir, name);
        // bpffs refuses names with a dot.
        let fresh = pin_path(pin_dir, &format!("{name}_new"));
        super::attach::remove_pin(&fresh);
        let pinned: PinnedLink = link.pin(&fresh).map_err(|e| err(name)(Box::new(e)))?;
        fs::rename(&fresh, &path).map_err(|e| err(name)(Box::new(e)))?;
        // The pin holds the link from here on.
        drop(pinned);
    }
    tracing::info!(cgroup = %cgroup.display(), "socket LB attached");
    Ok(())
}

/// Removes the pinned socket LB links (socket LB turned off): their
/// programs leave the cgroup.
pub fn detach(pin_dir: &Path) {
    for name in PROGRAMS {
        let path = pin_path(pin_dir, name);
        if path.exists() {
            tracing::info!(pin = %path.display(), "socket LB is off: removing its link");
            super::attach::remove_pin(&path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_paths_are_unescaped() {
        assert_eq!(
            unescape(r"/sys/fs/cgroup/a\040b\134c"),
            PathBuf::from(r"/sys/fs/cgroup/a b\c")
        );
        assert_eq!(unescape(r"/x\y"), PathBuf::from(r"/x\y"));
    }
}
