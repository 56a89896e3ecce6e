//! `cargo xtask bench …`: measurements, not tests. Builds the agent, the
//! local API server and `sluice-bench` in release mode, runs one benchmark
//! and leaves its table in target/bench/.

use std::process::Command;

use anyhow::{Result, bail};

use crate::{prereqs, run};

#[derive(clap::Args)]
pub struct Args {
    /// The benchmark: `sync` (the control loop against the local API
    /// server), `dns` (dnsperf against Sluice, NSD, Unbound, dnsmasq) or
    /// `dataplane` (against kube-proxy's iptables, nftables and IPVS modes).
    pub bench: String,
    /// Passed to the benchmark (e.g. `--scales 1000,10000 --updates 100`).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub rest: Vec<String>,
}

pub fn bench(args: &Args) -> Result<()> {
    prereqs::ensure()?;
    if !nix::unistd::geteuid().is_root() {
        bail!(
            "`cargo xtask bench` needs root: it creates network namespaces and loads BPF programs"
        );
    }
    if !["sync", "dns", "dataplane"].contains(&args.bench.as_str()) {
        bail!(
            "unknown benchmark `{}`; there are `sync`, `dns` and `dataplane`",
            args.bench
        );
    }
    let agent = run::build_agent(true)?;
    let apiserver = run::build_release_bin("sluice-apiserver", "sluice-apiserver")?;
    let bench = run::build_release_bin("sluice-bench", "sluice-bench")?;
    let out = run::target_dir()
        .join("bench")
        .join(format!("{}.md", args.bench));
    prereqs::run(
        Command::new(bench)
            .current_dir(run::workspace_root())
            .arg(&args.bench)
            .arg("--out")
            .arg(out)
            .args(&args.rest)
            .env("SLUICE_BIN", agent)
            .env("SLUICE_APISERVER_BIN", apiserver),
    )
}
