//! `cargo xtask bench …`: measurements, not tests. Builds the agent,
//! `sluice-bench` (and, for `sync`, the local API server) in release mode
//! (`--debug`: in debug mode, for smoke runs), runs one benchmark and
//! leaves its table in target/bench/.

use std::process::Command;

use anyhow::{Result, bail};

use crate::{prereqs, run};

#[derive(clap::Args)]
pub struct Args {
    /// The benchmark: `sync` (the control loop against the local API
    /// server), `dns` (dnsperf against Sluice, NSD, Unbound, dnsmasq),
    /// `dataplane` (against kube-proxy's iptables, nftables and IPVS modes)
    /// or `north-south` (NodePort packets per second: XDP, TC, iptables).
    pub bench: String,
    /// Build the agent and the benchmark in debug mode, for `cargo xtask
    /// test`'s smoke runs: they exercise the harness and nobody reads
    /// their numbers, and a release build takes minutes on a clean clone.
    #[arg(long)]
    pub debug: bool,
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
    if !["sync", "dns", "dataplane", "north-south"].contains(&args.bench.as_str()) {
        bail!(
            "unknown benchmark `{}`; there are `sync`, `dns`, `dataplane` and `north-south`",
            args.bench
        );
    }
    let agent = run::build_agent(!args.debug)?;
    // Only the control-loop benchmark runs the local API server (a release
    // build of it takes minutes).
    let apiserver = if args.bench == "sync" {
        Some(build(args, "sluice-apiserver")?)
    } else {
        None
    };
    let bench = build(args, "sluice-bench")?;
    if args.debug {
        println!("debug build: the numbers are not a release build's");
    }
    let out = run::target_dir()
        .join("bench")
        .join(format!("{}.md", args.bench));
    let mut cmd = Command::new(bench);
    cmd.current_dir(run::workspace_root())
        .arg(&args.bench)
        .arg("--out")
        .arg(out)
        .args(&args.rest)
        .env("SLUICE_BIN", agent);
    if let Some(apiserver) = apiserver {
        cmd.env("SLUICE_APISERVER_BIN", apiserver);
    }
    prereqs::run(&mut cmd)
}

/// Builds the binary named as its package, in release mode unless
/// `--debug`.
fn build(args: &Args, package: &str) -> Result<std::path::PathBuf> {
    if args.debug {
        run::build_bin(package, package)
    } else {
        run::build_release_bin(package, package)
    }
}
