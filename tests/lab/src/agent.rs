//! The agent binary, run in the lab's node namespace, its log captured.

use std::{
    env,
    path::PathBuf,
    process::{Command, ExitStatus},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use nix::sys::signal::Signal;

use crate::{Netns, process::Process};

/// The log line that says the first sync is programmed and interfaces attached.
pub const READY: &str = "sluice is ready";
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// Where the agent takes its Services from.
#[derive(Clone, Debug, Default)]
pub enum AgentSource {
    /// The lab's manifest directory.
    #[default]
    Manifests,
    Kubeconfig(PathBuf),
    /// In-cluster configuration: credentials in `dir`, the API server at
    /// `KUBERNETES_SERVICE_HOST`/`_PORT`.
    InCluster {
        dir: PathBuf,
        host: String,
        port: u16,
    },
}

#[derive(Clone, Debug)]
pub struct AgentOptions {
    /// The `sluice` binary: `$SLUICE_BIN`, or target/debug/sluice.
    pub bin: PathBuf,
    pub source: AgentSource,
    pub interfaces: String,
    pub service_cidr: Option<String>,
    /// Cluster DNS: `--dns-ip` and `--upstream` (never the machine's own
    /// resolvers: only lab addresses, or none).
    pub dns: Option<LabDns>,
    pub extra_args: Vec<String>,
    /// More environment for the agent (e.g. `SLUICE_PROBE_MISSING`).
    pub env: Vec<(String, String)>,
    /// Print the agent's log lines as they come (also with `SLUICE_LAB_ECHO`).
    pub echo: bool,
    /// Run it with these capabilities only (as a Pod's
    /// `securityContext.capabilities.add` names them, e.g. `NET_ADMIN`):
    /// the bounding set cut to them and `no_new_privs`, as a container
    /// that is not privileged. `None`: as root, with every capability,
    /// unless `SLUICE_LAB_CAPS=daemonset` asks for the `DaemonSet`'s.
    pub capabilities: Option<Vec<String>>,
}

impl Default for AgentOptions {
    fn default() -> Self {
        Self {
            bin: default_bin(),
            source: AgentSource::Manifests,
            interfaces: "veth*".into(),
            service_cidr: None,
            dns: None,
            extra_args: Vec::new(),
            env: Vec::new(),
            echo: env::var_os("SLUICE_LAB_ECHO").is_some(),
            capabilities: None,
        }
    }
}

pub fn default_bin() -> PathBuf {
    crate::process::workspace_bin("SLUICE_BIN", "sluice")
}

/// The agent's DNS settings in the lab.
#[derive(Clone, Debug)]
pub struct LabDns {
    pub ip: std::net::IpAddr,
    /// Lab servers only; empty: names outside the cluster get SERVFAIL.
    pub upstreams: Vec<std::net::SocketAddr>,
}

/// Where a lab agent keeps things.
pub struct Dirs {
    pub manifests: PathBuf,
    pub pin_dir: PathBuf,
    /// Socket LB's cgroup (`--cgroup-path`): the lab's own.
    pub cgroup: PathBuf,
}

/// A running agent; killed on drop if still running.
pub struct Agent {
    process: Process,
}

impl Agent {
    /// Starts `sluice run` in `node` and waits until it is ready.
    pub fn start(node: &Netns, dirs: &Dirs, opts: &AgentOptions) -> Result<Self> {
        let mut agent = Self::spawn(node, dirs, opts)?;
        agent
            .wait_for(READY, 0, START_TIMEOUT)
            .context("the agent did not become ready")?;
        Ok(agent)
    }

    /// Starts `sluice run` in `node` without waiting for it to be ready.
    pub fn spawn(node: &Netns, dirs: &Dirs, opts: &AgentOptions) -> Result<Self> {
        if !opts.bin.is_file() {
            bail!(
                "agent binary `{}` not found: build it (`cargo build -p sluice-agent`) or set SLUICE_BIN",
                opts.bin.display()
            );
        }
        let netns = node.open()?;
        let capabilities = match &opts.capabilities {
            Some(caps) => Some(caps.clone()),
            None if env::var("SLUICE_LAB_CAPS").is_ok_and(|v| v == "daemonset") => {
                Some(daemonset_capabilities()?)
            }
            None => None,
        };
        let mut cmd = match capabilities {
            // util-linux's setpriv: root keeps only its bounding set across
            // execve(2), so the agent holds exactly these.
            Some(caps) => {
                let mut cmd = Command::new("setpriv");
                let keep: Vec<String> = caps
                    .iter()
                    .map(|c| format!("+{}", c.to_lowercase()))
                    .collect();
                cmd.arg(format!("--bounding-set=-all,{}", keep.join(",")))
                    .args(["--no-new-privs", "--"])
                    .arg(&opts.bin);
                cmd
            }
            None => Command::new(&opts.bin),
        };
        cmd.arg("run");
        match &opts.source {
            AgentSource::Manifests => {
                cmd.arg("--manifests").arg(&dirs.manifests);
            }
            AgentSource::Kubeconfig(path) => {
                cmd.arg("--kubeconfig").arg(path);
            }
            AgentSource::InCluster { dir, host, port } => {
                cmd.arg("--service-account-dir")
                    .arg(dir)
                    .env("KUBERNETES_SERVICE_HOST", host)
                    .env("KUBERNETES_SERVICE_PORT", port.to_string());
            }
        }
        cmd.arg("--interfaces")
            .arg(&opts.interfaces)
            .arg("--pin-dir")
            .arg(&dirs.pin_dir)
            .arg("--cgroup-path")
            .arg(&dirs.cgroup)
            .args(
                opts.service_cidr
                    .iter()
                    .flat_map(|c| ["--service-cidr", c.as_str()]),
            )
            .args(opts.dns.iter().flat_map(|d| {
                let upstreams: Vec<String> = d.upstreams.iter().map(ToString::to_string).collect();
                [
                    "--dns-ip".to_owned(),
                    d.ip.to_string(),
                    "--upstream".to_owned(),
                    upstreams.join(","),
                ]
            }))
            .args(&opts.extra_args)
            .envs(opts.env.iter().map(|(k, v)| (k, v)))
            .env_remove("RUST_LOG");
        // SLUICE_LAB_TC_ATTACH runs a whole suite on one TC attach path
        // (`cargo xtask test` runs the ClusterIP tests with `netlink`),
        // unless the test chose one itself.
        if let Ok(path) = env::var("SLUICE_LAB_TC_ATTACH")
            && !opts.extra_args.iter().any(|a| a == "--tc-attach")
        {
            cmd.args(["--tc-attach", &path]);
        }
        // SLUICE_LOG sets the agent's RUST_LOG; otherwise its flags decide.
        if let Ok(filter) = env::var("SLUICE_LOG") {
            cmd.env("RUST_LOG", filter);
        }
        crate::netns::enter_on_spawn(&mut cmd, &netns);
        let process = Process::spawn("agent", cmd, opts.echo)?;
        drop(netns);
        Ok(Self { process })
    }

    pub fn log_len(&self) -> usize {
        self.process.log_len()
    }

    pub fn log(&self) -> String {
        self.process.log()
    }

    /// Waits until a log line at index ≥ `from` contains `needle`.
    pub fn wait_for(&mut self, needle: &str, from: usize, timeout: Duration) -> Result<String> {
        self.process.wait_for(needle, from, timeout)
    }

    pub fn pid(&self) -> Option<u32> {
        self.process.pid()
    }

    /// SIGTERM, then wait (SIGKILL after a bound).
    pub fn stop(mut self) -> Result<ExitStatus> {
        self.process.signal_and_wait(Signal::SIGTERM)
    }

    /// SIGKILL, as a crash or `kill -9` would.
    pub fn kill(mut self) -> Result<ExitStatus> {
        self.process.signal_and_wait(Signal::SIGKILL)
    }
}

/// The capabilities `manifests/04-daemonset.yaml` gives the agent's
/// container (`securityContext.capabilities.add`).
pub fn daemonset_capabilities() -> Result<Vec<String>> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../manifests/04-daemonset.yaml"
    );
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
    let doc: serde_yaml::Value =
        serde_yaml::from_str(&text).with_context(|| format!("parsing {path}"))?;
    let containers = doc["spec"]["template"]["spec"]["containers"]
        .as_sequence()
        .context("the DaemonSet has no containers")?;
    let sluice = containers
        .iter()
        .find(|c| c["name"] == "sluice")
        .context("no `sluice` container")?;
    let add = sluice["securityContext"]["capabilities"]["add"]
        .as_sequence()
        .context("the `sluice` container adds no capabilities")?;
    add.iter()
        .map(|c| {
            c.as_str()
                .map(str::to_owned)
                .context("a capability that is not a string")
        })
        .collect()
}
