//! Named network namespaces (`ip netns`), entered per thread.

use std::{
    fs::{self, File},
    path::PathBuf,
    sync::atomic::{AtomicU32, Ordering},
    thread,
};

use anyhow::{Context as _, Result, anyhow};
use nix::sched::{CloneFlags, setns};

use crate::ip;

/// Prefix of every namespace the lab creates: `sl<pid>x<n>-<role>`.
const PREFIX: &str = "sl";
const NETNS_DIR: &str = "/run/netns";
/// Per-namespace files `ip netns exec` bind-mounts over /etc (resolv.conf).
const ETC_NETNS_DIR: &str = "/etc/netns";

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A unique name stem for this process: `sl<pid>x<n>`.
pub fn unique_stem() -> String {
    format!(
        "{PREFIX}{}x{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// A network namespace, deleted on drop.
pub struct Netns {
    name: String,
}

impl Netns {
    pub fn create(name: &str) -> Result<Self> {
        ip(&["netns", "add", name])?;
        let ns = Self {
            name: name.to_owned(),
        };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from(NETNS_DIR).join(&self.name)
    }

    /// `ip -n NAME ARGS…`
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        ip(&all)
    }

    /// Sets a sysctl inside the namespace (through its own /proc/sys view).
    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        let path = format!("/proc/sys/{}", key.replace('.', "/"));
        let value = value.to_owned();
        self.run(move || fs::write(&path, value).with_context(|| format!("writing {path}")))?
    }

    /// Opens the namespace file, for `setns`.
    pub fn open(&self) -> Result<File> {
        File::open(self.path()).with_context(|| format!("opening {}", self.path().display()))
    }

    /// Runs `f` on a thread that has entered this namespace. Sockets made
    /// there stay in the namespace wherever they are used afterwards.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
        let file = self.open()?;
        thread::spawn(move || {
            setns(&file, CloneFlags::CLONE_NEWNET).context("setns")?;
            Ok(f())
        })
        .join()
        .map_err(|_| anyhow!("a thread in namespace {} panicked", self.name))?
    }

    /// Moves the calling thread into this namespace until the guard drops
    /// (also on a panic), e.g. for `BPF_PROG_TEST_RUN` of an XDP program,
    /// whose ingress interface the kernel looks up in the caller's
    /// namespace.
    pub fn enter(&self) -> Result<Entered> {
        let home = File::open("/proc/thread-self/ns/net").context("opening this thread's netns")?;
        setns(&self.open()?, CloneFlags::CLONE_NEWNET).context("setns")?;
        Ok(Entered { home })
    }

    /// Spawns `f` on a thread in this namespace and returns its handle.
    pub fn spawn<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<thread::JoinHandle<Result<T>>> {
        let file = self.open()?;
        Ok(thread::spawn(move || {
            setns(&file, CloneFlags::CLONE_NEWNET).context("setns")?;
            Ok(f())
        }))
    }
}

impl Netns {
    /// The resolv.conf that commands run with `command` see: written to
    /// /etc/netns/<name>/, which `ip netns exec` bind-mounts over /etc.
    pub fn set_resolv_conf(&self, content: &str) -> Result<()> {
        let dir = PathBuf::from(ETC_NETNS_DIR).join(&self.name);
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        fs::write(dir.join("resolv.conf"), content)?;
        Ok(())
    }

    /// `ip netns exec <name> <program>`: a command that runs inside, with
    /// this namespace's /etc files.
    pub fn command(&self, program: &str) -> std::process::Command {
        let mut cmd = std::process::Command::new("ip");
        cmd.args(["netns", "exec", &self.name, program]);
        cmd
    }
}

/// A thread inside another namespace (`Netns::enter`); back home on drop.
pub struct Entered {
    home: File,
}

impl Drop for Entered {
    fn drop(&mut self) {
        if let Err(e) = setns(&self.home, CloneFlags::CLONE_NEWNET) {
            eprintln!("warning: returning to the original netns: {e}");
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Err(e) = ip(&["netns", "del", &self.name]) {
            eprintln!("warning: removing netns {}: {e:#}", self.name);
        }
        let _ = fs::remove_dir_all(PathBuf::from(ETC_NETNS_DIR).join(&self.name));
    }
}

/// Makes `cmd` start inside the namespace `file` refers to (keep `file`
/// open until the command has been spawned).
pub fn enter_on_spawn(cmd: &mut std::process::Command, file: &File) {
    use std::os::{fd::AsRawFd as _, unix::process::CommandExt as _};
    let fd = file.as_raw_fd();
    // SAFETY: setns(2) is async-signal-safe and touches no memory.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Removes namespaces and lab mounts left by lab processes that died without
/// cleaning up (SIGKILL, OOM); those of live processes are left alone.
pub fn reap_stale() {
    let Ok(entries) = fs::read_dir(NETNS_DIR) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if owner_is_dead(&name) {
            let _ = ip(&["netns", "del", &name]);
        }
    }
    if let Ok(entries) = fs::read_dir(ETC_NETNS_DIR) {
        for entry in entries.flatten() {
            if owner_is_dead(&entry.file_name().to_string_lossy()) {
                let _ = fs::remove_dir_all(entry.path());
            }
        }
    }
    crate::lab::reap_stale_dirs();
    crate::cgroup::reap_stale();
}

/// `sl<pid>x…` names whose pid no longer runs.
pub(crate) fn owner_is_dead(name: &str) -> bool {
    let Some(rest) = name.strip_prefix(PREFIX) else {
        return false;
    };
    let Some((pid, _)) = rest.split_once('x') else {
        return false;
    };
    let Ok(pid) = pid.parse::<u32>() else {
        return false;
    };
    !PathBuf::from(format!("/proc/{pid}")).exists()
}
