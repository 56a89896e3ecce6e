//! A lab of network namespaces for Sluice's end-to-end tests, benchmarks and
//! `cargo xtask run`: a node namespace with routed veths to pod namespaces
//! (/32 pod addresses and a route per pod, as Calico and Cilium wire pods),
//! responders in the pods, and the agent running in the node namespace.
//!
//! Everything lives in namespaces the lab creates; nothing is added to the
//! root network namespace. Names carry the process id, and every namespace,
//! mount and process is removed on drop, also when a test panics.
#![allow(
    clippy::expect_used,
    reason = "test harness: a failed expectation fails the test"
)]

mod agent;
mod apiserver;
mod bpffs;
pub mod bulk;
mod cgroup;
pub mod cluster;
pub mod ethtool;
pub mod frame;
pub mod lab;
pub mod manifest;
mod netns;
pub mod probe;
pub mod process;
mod responder;
mod slow_dns;
mod xdp_pass;

use std::process::Command;

pub use agent::{Agent, AgentOptions, AgentSource, LabDns, default_bin};
use anyhow::{Context as _, Result, bail};
pub use apiserver::{ApiServer, apiserver_bin};
pub use bpffs::Bpffs;
pub use cgroup::{Cgroup, cgroup2_root};
pub use cluster::{Cluster, EXT_IF, FarClient};
pub use lab::{GATEWAY, GATEWAY6, Lab, Pod, mac_of};
pub use netns::{Entered, Netns, enter_on_spawn, reap_stale, unique_stem};
pub use responder::Responder;
pub use slow_dns::SlowDns;

/// Whether this process may load BPF programs and create namespaces.
pub fn privileged() -> bool {
    nix::unistd::geteuid().is_root()
}

/// For privileged tests: `true` to go on. Without privileges the test is
/// skipped with a message, except under `CI=true`, where a skip is a failure.
pub fn require_privileges(test: &str) -> bool {
    if privileged() {
        return true;
    }
    assert!(
        std::env::var("CI").map_or(true, |v| v != "true"),
        "{test}: privileged test cannot run without root, and CI=true forbids skipping it"
    );
    eprintln!("skipping {test}: needs root (CAP_BPF, CAP_NET_ADMIN, CAP_SYS_ADMIN)");
    false
}

/// Runs a command; fails with its stderr when it exits non-zero.
pub(crate) fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("spawning {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?}: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `ip ARGS…`
pub(crate) fn ip(args: &[&str]) -> Result<String> {
    run(Command::new("ip").args(args))
}
