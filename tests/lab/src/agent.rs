//! The agent binary, run in the lab's node namespace, its log captured.

use std::{
    env,
    io::{BufRead, BufReader},
    os::{fd::AsRawFd as _, unix::process::CommandExt as _},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Arc, Condvar, Mutex},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};

use crate::Netns;

/// The log line that says the first sync is programmed and interfaces attached.
pub const READY: &str = "sluice is ready";
const START_TIMEOUT: Duration = Duration::from_secs(30);
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone, Debug)]
pub struct AgentOptions {
    /// The `sluice` binary: `$SLUICE_BIN`, or target/debug/sluice.
    pub bin: PathBuf,
    pub interfaces: String,
    pub service_cidr: Option<String>,
    pub extra_args: Vec<String>,
    /// Print the agent's log lines as they come (also with `SLUICE_LAB_ECHO`).
    pub echo: bool,
}

impl Default for AgentOptions {
    fn default() -> Self {
        Self {
            bin: default_bin(),
            interfaces: "veth*".into(),
            service_cidr: None,
            extra_args: Vec::new(),
            echo: env::var_os("SLUICE_LAB_ECHO").is_some(),
        }
    }
}

pub fn default_bin() -> PathBuf {
    if let Some(bin) = env::var_os("SLUICE_BIN") {
        return bin.into();
    }
    let target = env::var_os("CARGO_TARGET_DIR").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target"),
        PathBuf::from,
    );
    target.join("debug/sluice")
}

#[derive(Default)]
struct Log {
    lines: Mutex<Vec<String>>,
    grew: Condvar,
}

/// A running agent; killed on drop if still running.
pub struct Agent {
    child: Option<Child>,
    log: Arc<Log>,
    readers: Vec<thread::JoinHandle<()>>,
}

impl Agent {
    /// Starts `sluice run` in `node` and waits until it is ready.
    pub fn start(
        node: &Netns,
        manifests: &Path,
        pin_dir: &Path,
        opts: &AgentOptions,
    ) -> Result<Self> {
        if !opts.bin.is_file() {
            bail!(
                "agent binary `{}` not found: build it (`cargo build -p sluice-agent`) or set SLUICE_BIN",
                opts.bin.display()
            );
        }
        let netns = node.open()?;
        let mut cmd = Command::new(&opts.bin);
        cmd.arg("run")
            .arg("--manifests")
            .arg(manifests)
            .arg("--interfaces")
            .arg(&opts.interfaces)
            .arg("--pin-dir")
            .arg(pin_dir)
            .args(
                opts.service_cidr
                    .iter()
                    .flat_map(|c| ["--service-cidr", c.as_str()]),
            )
            .args(&opts.extra_args)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let fd = netns.as_raw_fd();
        // SAFETY: setns(2) is async-signal-safe; the fd stays open until the
        // child has exec'd (netns is dropped after spawn returns).
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        // SLUICE_LOG sets the agent's RUST_LOG; otherwise its flags decide.
        if let Ok(filter) = env::var("SLUICE_LOG") {
            cmd.env("RUST_LOG", filter);
        }
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting {}", opts.bin.display()))?;
        drop(netns);
        let log = Arc::new(Log::default());
        let mut readers = Vec::new();
        if let Some(out) = child.stdout.take() {
            readers.push(pump(BufReader::new(out), log.clone(), opts.echo));
        }
        if let Some(err) = child.stderr.take() {
            readers.push(pump(BufReader::new(err), log.clone(), opts.echo));
        }
        let mut agent = Self {
            child: Some(child),
            log,
            readers,
        };
        agent
            .wait_for(READY, 0, START_TIMEOUT)
            .context("the agent did not become ready")?;
        Ok(agent)
    }

    /// Number of log lines so far (a mark for `wait_for`).
    pub fn log_len(&self) -> usize {
        self.log.lines.lock().map_or(0, |l| l.len())
    }

    /// The whole log.
    pub fn log(&self) -> String {
        self.log
            .lines
            .lock()
            .map(|l| l.join("\n"))
            .unwrap_or_default()
    }

    /// Waits until a log line at index ≥ `from` contains `needle`.
    pub fn wait_for(&mut self, needle: &str, from: usize, timeout: Duration) -> Result<String> {
        let deadline = Instant::now() + timeout;
        let mut lines = self
            .log
            .lines
            .lock()
            .map_err(|_| anyhow::anyhow!("log lock poisoned"))?;
        loop {
            if let Some(line) = lines.iter().skip(from).find(|l| l.contains(needle)) {
                return Ok(line.clone());
            }
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                bail!(
                    "the agent exited ({status}) before logging `{needle}`:\n{}",
                    lines.join("\n")
                );
            }
            let now = Instant::now();
            if now >= deadline {
                bail!(
                    "no log line `{needle}` within {timeout:?}:\n{}",
                    lines.join("\n")
                );
            }
            let wait = (deadline - now).min(Duration::from_millis(200));
            lines = self
                .log
                .grew
                .wait_timeout(lines, wait)
                .map_err(|_| anyhow::anyhow!("log lock poisoned"))?
                .0;
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGTERM, then wait (SIGKILL after a bound).
    pub fn stop(mut self) -> Result<ExitStatus> {
        self.signal_and_wait(Signal::SIGTERM)
    }

    /// SIGKILL, as a crash or `kill -9` would.
    pub fn kill(mut self) -> Result<ExitStatus> {
        self.signal_and_wait(Signal::SIGKILL)
    }

    fn signal_and_wait(&mut self, signal: Signal) -> Result<ExitStatus> {
        let mut child = self.child.take().context("the agent is not running")?;
        let pid = Pid::from_raw(i32::try_from(child.id())?);
        kill(pid, signal).context("signalling the agent")?;
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            if let Some(status) = child.try_wait()? {
                self.join_readers();
                return Ok(status);
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let status = child.wait()?;
                bail!(
                    "the agent did not exit within {STOP_TIMEOUT:?} of {signal}; killed ({status})"
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    fn join_readers(&mut self) {
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
    }
}

fn pump(
    reader: impl BufRead + Send + 'static,
    log: Arc<Log>,
    echo: bool,
) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        for line in reader.lines() {
            let Ok(line) = line else { return };
            if echo {
                eprintln!("agent: {line}");
            }
            if let Ok(mut lines) = log.lines.lock() {
                lines.push(line);
            }
            log.grew.notify_all();
        }
    })
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if thread::panicking() {
            eprintln!("---- agent log ----\n{}\n-------------------", self.log());
        }
        self.join_readers();
    }
}
