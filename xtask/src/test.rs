//! `cargo xtask test`: every test, in three tiers.
//!
//! 1. host unit tests (abi, agent, lab, xtask);
//! 2. lints (clippy on the host crates and on the eBPF crate for its target);
//! 3. privileged tests, one at a time: packet tests through
//!    BPF_PROG_TEST_RUN and end-to-end tests in network namespaces, against
//!    the `sluice` binary built here; the ClusterIP tests again with
//!    `--tc-attach netlink`; and the packet tests and an end-to-end subset
//!    in a Linux 6.1 guest (`vm.rs`);
//! 4. the DNS fuzz targets (cargo-fuzz), each for a bounded time;
//! 5. smoke runs of `cargo xtask run` (the README's first command) and of
//!    `cargo xtask bench --debug dataplane --quick` and `… north-south
//!    --quick` (debug builds: their tables, no assertions).
//!
//! Each step's wall time is printed at the end, failed or not (CI's
//! budget is 45 minutes).
//!
//! Under `CI=true` a privileged test that cannot run fails instead of
//! skipping (see `sluice_lab::require_privileges`).

use std::{
    process::Command,
    sync::Mutex,
    time::{Duration, Instant},
};

use anyhow::{Result, bail};

use crate::{prereqs, run};

#[derive(clap::Args)]
pub struct Args {
    /// Only run tests whose name contains this filter (all tiers).
    filter: Option<String>,
    /// Skip clippy.
    #[arg(long)]
    no_lint: bool,
    /// Seconds of fuzzing per DNS fuzz target (0: none).
    #[arg(long, default_value_t = 60)]
    fuzz_seconds: u32,
}

pub fn test(args: &Args) -> Result<()> {
    let result = every_tier(args);
    // On failure too: how far it got, and how long each step took.
    print_step_times();
    result
}

fn every_tier(args: &Args) -> Result<()> {
    step("setup (`cargo xtask setup`) and builds");
    prereqs::ensure()?;
    if !nix::unistd::geteuid().is_root() && std::env::var("CI").is_ok_and(|v| v == "true") {
        bail!("CI=true: the privileged tests must run, and they need root");
    }
    sluice_lab::reap_stale();
    let bin = run::build_agent(false)?;
    let apiserver = run::build_bin("sluice-apiserver", "sluice-apiserver")?;
    let filter: Vec<&str> = args.filter.iter().map(String::as_str).collect();

    step("unit tests");
    cargo(
        &[
            "test",
            "--workspace",
            "--exclude",
            "sluice-ebpf",
            "--exclude",
            "sluice-e2e",
        ],
        &filter,
        &[],
    )?;

    if !args.no_lint {
        lints()?;
    }

    step("privileged tests: packet (BPF_PROG_TEST_RUN) and end-to-end (network namespaces)");
    let bin_env = bin.display().to_string();
    let apiserver_env = apiserver.display().to_string();
    let mut e2e_args = vec!["--test-threads=1"];
    e2e_args.extend(&filter);
    cargo(
        &["test", "-p", "sluice-e2e"],
        &e2e_args,
        &[
            ("SLUICE_BIN", bin_env.as_str()),
            ("SLUICE_APISERVER_BIN", apiserver_env.as_str()),
        ],
    )?;

    if args.filter.is_none() {
        netlink_run(&bin_env, &apiserver_env)?;
        daemonset_capabilities_run(&bin_env, &apiserver_env)?;
        step(
            "the packet tests and an end-to-end subset in a Linux 6.1 guest (`cargo xtask vm-test 6.1`)",
        );
        crate::vm::vm_test(&crate::vm::Args {
            version: "6.1".into(),
        })?;
    }

    if args.filter.is_none() && args.fuzz_seconds > 0 {
        // Each target: any bytes as a query (no panic, well-formed
        // answers), and the UDP fast path against the library path.
        for target in ["dns_query", "dns_memo"] {
            step(&format!(
                "fuzzing {target} for {} s (agent/dns/fuzz)",
                args.fuzz_seconds
            ));
            fuzz(target, args.fuzz_seconds)?;
        }
    }

    if args.filter.is_none() {
        smoke_runs()?;
    }
    println!("\nall tests passed");
    Ok(())
}

/// rustfmt, clippy on the host crates and on the eBPF crate for its target,
/// and the generated protobuf tables.
fn lints() -> Result<()> {
    step("lints");
    // rustfmt.toml uses unstable options (import grouping): nightly rustfmt.
    prereqs::run(
        Command::new("cargo")
            .current_dir(run::workspace_root())
            .args(["+nightly", "fmt", "--all", "--", "--check"]),
    )?;
    cargo(
        &[
            "clippy",
            "--workspace",
            "--exclude",
            "sluice-ebpf",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ],
        &[],
        &[],
    )?;
    // The generated protobuf tables are what their generator writes.
    crate::gen_proto::gen_proto(&crate::gen_proto::Args::checking())?;
    let mut ebpf = Command::new("cargo");
    // aya-build passes the same cfg: it selects the helper bindings.
    ebpf.env(
        "RUSTFLAGS",
        format!("--cfg bpf_target_arch=\"{}\"", std::env::consts::ARCH),
    );
    ebpf.current_dir(run::workspace_root().join("ebpf/programs"))
        .args([
            "+nightly",
            "clippy",
            "--release",
            "--target",
            "bpfel-unknown-none",
            "-Z",
            "build-std=core",
            "--",
            "-D",
            "warnings",
        ]);
    prereqs::run(&mut ebpf)?;
    Ok(())
}

/// The README's first command with each source, and the dataplane and
/// north-south benchmarks' quick runs.
fn smoke_runs() -> Result<()> {
    for source in [run::DemoSource::Apiserver, run::DemoSource::Manifests] {
        step(&format!(
            "smoke run of `cargo xtask run --source {}`",
            clap::ValueEnum::to_possible_value(&source)
                .map_or_else(String::new, |v| v.get_name().to_owned())
        ));
        run::run(&run::Args {
            requests: Some(30),
            release: false,
            source,
        })?;
    }
    // The benchmark harness must keep working; its numbers are not
    // checked here (benchmarks are not tests).
    for bench in ["dataplane", "north-south"] {
        step(&format!(
            "smoke run of `cargo xtask bench --debug {bench} --quick` (numbers not asserted)"
        ));
        crate::bench::bench(&crate::bench::Args {
            bench: bench.into(),
            // Not a release build: its numbers are not read here.
            debug: true,
            rest: vec!["--quick".into()],
        })?;
    }
    Ok(())
}

/// Runs a cargo-fuzz target with its seeds and a scratch corpus; a crash
/// fails (libFuzzer exits non-zero and leaves the input in artifacts/).
fn fuzz(target: &str, seconds: u32) -> Result<()> {
    let dir = run::workspace_root().join("agent/dns");
    let corpus = run::target_dir().join("fuzz-corpus").join(target);
    std::fs::create_dir_all(&corpus)?;
    prereqs::run(
        Command::new("cargo")
            .current_dir(&dir)
            .args(["+nightly", "fuzz", "run", target])
            .arg(&corpus)
            .arg(dir.join("fuzz/seeds").join(target))
            .arg("--")
            .arg(format!("-max_total_time={seconds}"))
            .arg("-rss_limit_mb=2048")
            .arg("-print_final_stats=1"),
    )
}

/// The steps begun so far, with when each began (for CI's time budget:
/// `print_step_times`).
static STEPS: Mutex<Vec<(String, Instant)>> = Mutex::new(Vec::new());

fn step(name: &str) {
    let now = Instant::now();
    if let Ok(mut steps) = STEPS.lock() {
        if let Some((_, began)) = steps.last() {
            println!("(took {} s)", now.duration_since(*began).as_secs());
        }
        steps.push((name.to_owned(), now));
    }
    println!("\n==> {name}");
}

/// Each step's wall time, and the whole run's.
fn print_step_times() {
    let Ok(steps) = STEPS.lock() else { return };
    let Some((_, first)) = steps.first() else {
        return;
    };
    let end = Instant::now();
    println!("\ntime per step:");
    for (i, (name, began)) in steps.iter().enumerate() {
        let until = steps.get(i + 1).map_or(end, |(_, next)| *next);
        println!("{:>6} s  {name}", until.duration_since(*began).as_secs());
    }
    let total: Duration = end.duration_since(*first);
    println!("{:>6} s  in all", total.as_secs());
}

fn cargo(args: &[&str], test_args: &[&str], env: &[(&str, &str)]) -> Result<()> {
    let mut cmd = Command::new("cargo");
    cmd.args(args);
    if !test_args.is_empty() && args.first() == Some(&"test") {
        if !args.contains(&"--") {
            cmd.arg("--");
        }
        cmd.args(test_args);
    }
    cmd.envs(env.iter().copied());
    prereqs::run(&mut cmd)
}

/// The ClusterIP, NodePort, socket LB and DNS tests again with the agent
/// holding only the capabilities `manifests/04-daemonset.yaml` grants, as a
/// container that is not privileged.
fn daemonset_capabilities_run(bin: &str, apiserver: &str) -> Result<()> {
    step(
        "ClusterIP, NodePort, socket LB and DNS end-to-end tests with the DaemonSet's capabilities only",
    );
    cargo(
        &["test", "-p", "sluice-e2e", "--test", "e2e"],
        &[
            "--test-threads=1",
            "clusterip::",
            "nodeport::",
            "socketlb::",
            "dns::",
        ],
        &[
            ("SLUICE_BIN", bin),
            ("SLUICE_APISERVER_BIN", apiserver),
            ("SLUICE_LAB_CAPS", "daemonset"),
        ],
    )
}

/// Both TC attach paths in every run: the ClusterIP tests again on netlink
/// filters (the suite before used TCX, this kernel's own).
fn netlink_run(bin: &str, apiserver: &str) -> Result<()> {
    step("ClusterIP end-to-end tests with `--tc-attach netlink`");
    cargo(
        &["test", "-p", "sluice-e2e", "--test", "e2e"],
        &["--test-threads=1", "clusterip::"],
        &[
            ("SLUICE_BIN", bin),
            ("SLUICE_APISERVER_BIN", apiserver),
            ("SLUICE_LAB_TC_ATTACH", "netlink"),
        ],
    )
}
