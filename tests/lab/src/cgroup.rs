//! A cgroup (v2) of the lab's own, for socket LB: the agent attaches its
//! socket programs here (never to the machine's root cgroup), and test
//! clients that should go through them are started inside it. Removed on
//! drop; ones left by dead lab processes are removed by `reap_stale`.

use std::{
    fs,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow};

use crate::{lab::LAB_DIR_PREFIX, netns::owner_is_dead};

/// Where cgroup2 is mounted: the hybrid layout's `unified` directory, or
/// the unified layout's `/sys/fs/cgroup`.
pub fn cgroup2_root() -> Result<PathBuf> {
    ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| {
            nix::sys::statfs::statfs(p)
                .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC)
        })
        .ok_or_else(|| anyhow!("no cgroup2 file system at /sys/fs/cgroup(/unified)"))
}

pub struct Cgroup {
    path: PathBuf,
}

impl Cgroup {
    /// `sluice-lab-<stem>` under the cgroup2 root.
    pub fn create(stem: &str) -> Result<Self> {
        let path = cgroup2_root()?.join(format!("{LAB_DIR_PREFIX}{stem}"));
        fs::create_dir(&path).with_context(|| format!("creating cgroup {}", path.display()))?;
        Ok(Self { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Makes a command join this cgroup before it runs.
    pub fn enter_on_spawn(&self, cmd: &mut std::process::Command) -> Result<()> {
        use std::os::{fd::AsRawFd as _, unix::process::CommandExt as _};
        let procs = fs::OpenOptions::new()
            .write(true)
            .open(self.path.join("cgroup.procs"))?;
        let fd = procs.as_raw_fd();
        // SAFETY: write(2) of a static buffer is async-signal-safe; the
        // descriptor stays open in the closure (moved into it).
        unsafe {
            cmd.pre_exec(move || {
                let _keep = &procs;
                // "0": the writing process itself.
                if libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        Ok(())
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        // Its processes may still be exiting: a bounded wait.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match fs::remove_dir(&self.path) {
                Ok(()) => return,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
                Err(e) if Instant::now() >= deadline => {
                    eprintln!("warning: removing cgroup {}: {e}", self.path.display());
                    return;
                }
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }
}

/// Removes the cgroups of lab processes that are gone.
pub(crate) fn reap_stale() {
    let Ok(root) = cgroup2_root() else { return };
    let Ok(entries) = fs::read_dir(&root) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.strip_prefix(LAB_DIR_PREFIX).is_some_and(owner_is_dead) {
            let _ = fs::remove_dir(entry.path());
        }
    }
}
