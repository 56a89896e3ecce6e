//! A child process whose output is captured line by line, with bounded
//! waits for a log line and for its exit; killed on drop.

use std::{
    env,
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Arc, Condvar, Mutex},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, bail};
use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};

const STOP_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Default)]
struct Log {
    lines: Mutex<Vec<String>>,
    grew: Condvar,
}

pub struct Process {
    name: &'static str,
    child: Option<Child>,
    log: Arc<Log>,
    readers: Vec<thread::JoinHandle<()>>,
}

/// A binary of this workspace: `$<env>`, or `target/debug/<name>`.
pub fn workspace_bin(env_var: &str, name: &str) -> PathBuf {
    if let Some(bin) = env::var_os(env_var) {
        return bin.into();
    }
    let target = env::var_os("CARGO_TARGET_DIR").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target"),
        PathBuf::from,
    );
    target.join("debug").join(name)
}

impl Process {
    /// Spawns `cmd` with stdout and stderr captured (and echoed if `echo`).
    pub fn spawn(name: &'static str, mut cmd: Command, echo: bool) -> Result<Self> {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting {name}: {cmd:?}"))?;
        let log = Arc::new(Log::default());
        let mut readers = Vec::new();
        if let Some(out) = child.stdout.take() {
            readers.push(pump(BufReader::new(out), log.clone(), echo.then_some(name)));
        }
        if let Some(err) = child.stderr.take() {
            readers.push(pump(BufReader::new(err), log.clone(), echo.then_some(name)));
        }
        Ok(Self {
            name,
            child: Some(child),
            log,
            readers,
        })
    }

    /// Number of log lines so far (a mark for `wait_for`).
    pub fn log_len(&self) -> usize {
        self.log.lines.lock().map_or(0, |l| l.len())
    }

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
            .map_err(|_| anyhow!("log lock poisoned"))?;
        loop {
            if let Some(line) = lines.iter().skip(from).find(|l| l.contains(needle)) {
                return Ok(line.clone());
            }
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                bail!(
                    "{} exited ({status}) before logging `{needle}`:\n{}",
                    self.name,
                    lines.join("\n")
                );
            }
            let now = Instant::now();
            if now >= deadline {
                bail!(
                    "{}: no log line `{needle}` within {timeout:?}:\n{}",
                    self.name,
                    lines.join("\n")
                );
            }
            let wait = (deadline - now).min(Duration::from_millis(200));
            lines = self
                .log
                .grew
                .wait_timeout(lines, wait)
                .map_err(|_| anyhow!("log lock poisoned"))?
                .0;
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Sends `signal` and waits for the exit (SIGKILL after a bound).
    /// SIGTERM, then waits for the exit.
    pub fn stop(&mut self) -> Result<ExitStatus> {
        self.signal_and_wait(Signal::SIGTERM)
    }

    pub fn signal_and_wait(&mut self, signal: Signal) -> Result<ExitStatus> {
        let mut child = self
            .child
            .take()
            .with_context(|| format!("{} is not running", self.name))?;
        let pid = Pid::from_raw(i32::try_from(child.id())?);
        kill(pid, signal).with_context(|| format!("signalling {}", self.name))?;
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
                    "{} did not exit within {STOP_TIMEOUT:?} of {signal}; killed ({status})",
                    self.name
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
    echo: Option<&'static str>,
) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        for line in reader.lines() {
            let Ok(line) = line else { return };
            if let Some(name) = echo {
                eprintln!("{name}: {line}");
            }
            if let Ok(mut lines) = log.lines.lock() {
                lines.push(line);
            }
            log.grew.notify_all();
        }
    })
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if thread::panicking() {
            eprintln!(
                "---- {} log ----\n{}\n-------------------",
                self.name,
                self.log()
            );
        }
        self.join_readers();
    }
}
