//! `sluice-apiserver` as a process on a loopback port, with kubectl pointed
//! at it.

use std::{
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Command, ExitStatus, Output},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use nix::sys::signal::Signal;

use crate::process::{Process, workspace_bin};

const READY: &str = "sluice-apiserver is serving";
const START_TIMEOUT: Duration = Duration::from_secs(30);

pub fn apiserver_bin() -> PathBuf {
    workspace_bin("SLUICE_APISERVER_BIN", "sluice-apiserver")
}

/// A running API server; stopped on drop.
pub struct ApiServer {
    process: Option<Process>,
    /// The network namespace it (and its kubectl) runs in, held open; the
    /// root one if none.
    netns: Option<std::fs::File>,
    data_dir: PathBuf,
    port: u16,
    args: Vec<String>,
}

/// A free loopback port (the kernel's choice; released for the server).
fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl ApiServer {
    /// Starts a server with its state in `data_dir` and extra flags.
    pub fn start(data_dir: &Path, args: &[&str]) -> Result<Self> {
        Self::start_in(None, data_dir, args)
    }

    /// Starts a server in a lab namespace (so that an agent there reaches
    /// it on loopback); kubectl then runs there too.
    pub fn start_in(netns: Option<&crate::Netns>, data_dir: &Path, args: &[&str]) -> Result<Self> {
        let port = match netns {
            // A fresh namespace has every port free.
            Some(_) => 6443,
            None => free_port()?,
        };
        let mut server = Self {
            process: None,
            netns: netns.map(crate::Netns::open).transpose()?,
            data_dir: data_dir.to_path_buf(),
            port,
            args: args.iter().map(|a| (*a).to_owned()).collect(),
        };
        server.launch()?;
        Ok(server)
    }

    fn launch(&mut self) -> Result<()> {
        let bin = apiserver_bin();
        if !bin.is_file() {
            bail!(
                "`{}` not found: build it (`cargo build -p sluice-apiserver`) or set SLUICE_APISERVER_BIN",
                bin.display()
            );
        }
        let mut cmd = Command::new(&bin);
        cmd.arg("--data-dir")
            .arg(&self.data_dir)
            .args([
                "--bind-address",
                "127.0.0.1",
                "--secure-port",
                &self.port.to_string(),
            ])
            .args(&self.args);
        let echo = std::env::var_os("SLUICE_LAB_ECHO").is_some();
        if let Some(file) = &self.netns {
            crate::netns::enter_on_spawn(&mut cmd, file);
        }
        let mut process = Process::spawn("apiserver", cmd, echo)?;
        process
            .wait_for(READY, 0, START_TIMEOUT)
            .context("the API server did not start")?;
        self.process = Some(process);
        Ok(())
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    pub fn ca(&self) -> PathBuf {
        self.data_dir.join("ca.crt")
    }

    pub fn admin_kubeconfig(&self) -> PathBuf {
        self.data_dir.join("admin.kubeconfig")
    }

    pub fn log(&self) -> String {
        self.process.as_ref().map(Process::log).unwrap_or_default()
    }

    /// kubectl as the admin; fails with its stderr on a non-zero exit.
    pub fn kubectl(&self, args: &[&str]) -> Result<String> {
        self.kubectl_as(&self.admin_kubeconfig(), args)
    }

    /// kubectl with another kubeconfig.
    pub fn kubectl_as(&self, kubeconfig: &Path, args: &[&str]) -> Result<String> {
        let out = self
            .kubectl_cmd(kubeconfig, args)
            .output()
            .context("running kubectl")?;
        if !out.status.success() {
            bail!(
                "kubectl {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// A long-running kubectl (`get -w`), its output captured.
    pub fn kubectl_spawn(&self, args: &[&str]) -> Result<Process> {
        Process::spawn(
            "kubectl",
            self.kubectl_cmd(&self.admin_kubeconfig(), args),
            false,
        )
    }

    /// kubectl's raw output, for commands expected to fail.
    pub fn kubectl_output(&self, kubeconfig: &Path, args: &[&str]) -> Result<Output> {
        Ok(self.kubectl_cmd(kubeconfig, args).output()?)
    }

    /// SIGTERM and wait.
    pub fn stop(&mut self) -> Result<ExitStatus> {
        self.process
            .take()
            .context("the API server is not running")?
            .signal_and_wait(Signal::SIGTERM)
    }

    /// SIGKILL and wait.
    pub fn kill(&mut self) -> Result<ExitStatus> {
        self.process
            .take()
            .context("the API server is not running")?
            .signal_and_wait(Signal::SIGKILL)
    }

    /// Starts again on the same port and data directory.
    pub fn restart(&mut self) -> Result<()> {
        if self.process.is_some() {
            self.stop()?;
        }
        self.launch()
    }

    /// Starts again on the same port and data directory, with these flags
    /// instead of the first ones.
    pub fn restart_with(&mut self, args: &[&str]) -> Result<()> {
        self.args = args.iter().map(|a| (*a).to_owned()).collect();
        self.restart()
    }

    /// kubectl keeps its discovery cache per data directory, so that
    /// servers reusing a port never see each other's resources.
    fn kubectl_cmd(&self, kubeconfig: &Path, args: &[&str]) -> Command {
        let mut cmd = Command::new("kubectl");
        cmd.arg("--kubeconfig")
            .arg(kubeconfig)
            .arg("--cache-dir")
            .arg(self.data_dir.join("kubectl-cache"))
            .args(args);
        if let Some(file) = &self.netns {
            crate::netns::enter_on_spawn(&mut cmd, file);
        }
        cmd
    }
}
