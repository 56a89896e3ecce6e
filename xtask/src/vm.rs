//! `cargo xtask vm-test 6.1`: the packet tests and an end-to-end subset
//! in a guest running Debian's 6.1 cloud kernel
//! (`linux-image-6.1.*-cloud-amd64`) under qemu, with software emulation
//! (TCG): KVM stops with an internal error on these machines.
//!
//! The guest boots from an initramfs made here, with no disk and no shared
//! filesystem (Debian's cloud kernel has no 9p, and virtiofsd is not
//! packaged): busybox, the kernel's modules the tests load, iproute2, and
//! stripped copies of the test binaries and of the agent, with the shared
//! libraries they link. Its init mounts what the tests need, runs each
//! suite as CI does (`CI=true`: a skip is a failure), prints `VMTEST`
//! lines on the serial console, and powers off. This side reads the
//! console, echoes it, and fails unless every suite passed in time.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    fs,
    io::{BufRead as _, BufReader, Write as _},
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};

use crate::prereqs::{output, run};

#[derive(clap::Args)]
pub struct Args {
    /// The kernel series to boot (Debian's cloud kernel): `6.1`.
    pub version: String,
}

/// The kernel series `cargo xtask test` boots.
pub const GUEST_SERIES: &str = "6.1";

/// Where the kernel of a series is unpacked.
fn kernel_dir(series: &str) -> PathBuf {
    PathBuf::from("target/vm").join(format!("linux-{series}"))
}

/// Whether the kernel of `series` is downloaded and unpacked.
pub fn has_kernel(series: &str) -> bool {
    find_kernel(&kernel_dir(series)).is_ok_and(|k| k.is_some())
}

/// Downloads and unpacks the kernel of `series` (`cargo xtask setup`).
pub fn fetch_kernel(series: &str) -> Result<()> {
    ensure_kernel(Path::new("target/vm"), series).map(drop)
}

/// The guest's whole run, boot to power-off, at most.
const LIMIT: Duration = Duration::from_secs(10 * 60);

/// Modules of sluice-e2e's test binary (`e2e`) that run in the guest, one
/// run each, with their filters (each runs the module's tests whose names
/// contain one of them; none: all of the module).
const SUITES: &[(&str, &[&str])] = &[
    ("packet", &[]),
    (
        "clusterip",
        &[
            "tcp_through_a_cluster_ip_reaches_each_of_three_backends",
            "udp_request_response_through_a_cluster_ip",
            "a_service_without_endpoints_refuses_a_connect_in_under_a_second",
        ],
    ),
    (
        "nodeport",
        &[
            "a_node_port_on_either_node_reaches_backends_on_both_nodes",
            "with_xdp_mode_tc_a_node_port_on_either_node_reaches_backends_on_both_nodes",
        ],
    ),
    (
        "socketlb",
        &["from_the_node_tcp_and_udp_reach_every_backend_and_show_the_cluster_ip"],
    ),
    (
        "lifecycle",
        &[
            "with_netlink_filters_a_killed_agent_leaves_the_dataplane_serving_and_a_restart_takes_it_over",
            "a_missing_kernel_feature_is_named_with_what_was_turned_off",
        ],
    ),
];

/// Kernel modules the tests load (in this order: dependencies first).
const MODULES: &[&str] = &[
    "drivers/net/veth.ko",
    "net/sched/sch_ingress.ko",
    "net/sched/cls_bpf.ko",
    "net/llc/llc.ko",
    "net/802/stp.ko",
    "net/bridge/bridge.ko",
];

/// Host programs the guest needs, besides busybox's applets.
const HOST_TOOLS: &[&str] = &["/usr/sbin/ip", "/usr/sbin/tc"];

/// Busybox applets linked into the guest's /bin.
const APPLETS: &[&str] = &[
    "sh", "mount", "umount", "insmod", "poweroff", "uname", "mkdir", "ln", "cat", "echo",
    "timeout", "sleep", "ls", "rm", "grep", "sysctl", "env",
];

pub fn vm_test(args: &Args) -> Result<()> {
    ensure!(
        args.version == "6.1",
        "only Debian's 6.1 cloud kernel is set up for (asked: {})",
        args.version
    );
    let started = Instant::now();
    let dir = PathBuf::from("target/vm");
    let kernel = ensure_kernel(&dir, &args.version)?;
    let binaries = build_binaries()?;
    let guest = dir.join("guest");
    assemble(&guest, &kernel, &binaries)?;
    let initramfs = dir.join("initramfs.cpio");
    cpio::write(&guest, &initramfs)?;
    println!(
        "vm-test: booting {} with {} ({} MB) under TCG",
        kernel.vmlinuz.display(),
        initramfs.display(),
        fs::metadata(&initramfs)?.len() >> 20
    );
    let results = boot(&kernel.vmlinuz, &initramfs)?;
    let mut failed = Vec::new();
    for (suite, _) in SUITES {
        match results.get(*suite) {
            Some(0) => {}
            Some(code) => failed.push(format!("{suite} (exit {code})")),
            None => failed.push(format!("{suite} (no result)")),
        }
    }
    println!("vm-test: took {:.0} s", started.elapsed().as_secs_f64());
    if !failed.is_empty() {
        bail!("in the {} guest: {}", args.version, failed.join(", "));
    }
    Ok(())
}

/// A kernel to boot: its image and its modules.
struct Kernel {
    vmlinuz: PathBuf,
    modules: PathBuf,
}

/// Debian's newest `linux-image-<series>.*-cloud-amd64`, downloaded
/// (`apt-get download`) and unpacked under `dir` once.
fn ensure_kernel(dir: &Path, series: &str) -> Result<Kernel> {
    let unpacked = dir.join(format!("linux-{series}"));
    if let Some(kernel) = find_kernel(&unpacked)? {
        return Ok(kernel);
    }
    let names = output(Command::new("apt-cache").args([
        "search",
        "--names-only",
        &format!("^linux-image-{series}\\.[0-9]+-[0-9]+-cloud-amd64$"),
    ]))?;
    let package = names
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .max_by_key(|p| abi_number(p))
        .with_context(|| format!("no linux-image-{series}.*-cloud-amd64 in apt's lists"))?
        .to_owned();
    let debs = dir.join("debs");
    fs::create_dir_all(&debs)?;
    println!("vm-test: downloading {package}");
    run(Command::new("apt-get")
        .current_dir(&debs)
        .args(["download", "-q", &package]))?;
    let deb = fs::read_dir(&debs)?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&package))
                && p.extension().is_some_and(|e| e.eq_ignore_ascii_case("deb"))
        })
        .context("apt-get download left no .deb")?;
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&unpacked))?;
    find_kernel(&unpacked)?.context("the package holds no vmlinuz")
}

/// The ABI number in a kernel package's name (`linux-image-6.1.0-50-…`).
fn abi_number(package: &str) -> u32 {
    package
        .split('-')
        .nth(3)
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

fn find_kernel(unpacked: &Path) -> Result<Option<Kernel>> {
    let Ok(entries) = fs::read_dir(unpacked.join("boot")) else {
        return Ok(None);
    };
    let Some(vmlinuz) = entries.flatten().map(|e| e.path()).find(|p| {
        p.file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("vmlinuz-"))
    }) else {
        return Ok(None);
    };
    let release = vmlinuz
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("vmlinuz-"))
        .context("a vmlinuz name")?;
    let modules = unpacked.join("lib/modules").join(release).join("kernel");
    Ok(Some(Kernel { vmlinuz, modules }))
}

/// The agent and the test binaries (debug, as `cargo xtask test` builds
/// them), by name.
fn build_binaries() -> Result<BTreeMap<String, PathBuf>> {
    run(Command::new("cargo").args(["build", "-p", "sluice-agent", "--bin", "sluice"]))?;
    let json = output(Command::new("cargo").args([
        "test",
        "-p",
        "sluice-e2e",
        "--no-run",
        "--message-format=json",
    ]))?;
    let mut found = BTreeMap::new();
    found.insert("sluice".to_owned(), PathBuf::from("target/debug/sluice"));
    for line in json.lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let (Some(name), Some(exe)) = (
            msg.pointer("/target/name")
                .and_then(serde_json::Value::as_str),
            msg.get("executable").and_then(serde_json::Value::as_str),
        ) else {
            continue;
        };
        // A binary target is built twice, as itself and as its own unit
        // tests' harness: the probe is the former.
        let harness = msg
            .pointer("/profile/test")
            .and_then(serde_json::Value::as_bool);
        let is_bin = msg
            .pointer("/target/kind")
            .and_then(serde_json::Value::as_array)
            .is_some_and(|k| k.iter().any(|k| k == "bin"));
        if is_bin && harness == Some(true) {
            continue;
        }
        found.insert(name.to_owned(), PathBuf::from(exe));
    }
    for name in ["e2e", "sluice", "sluice-probe"] {
        ensure!(found.contains_key(name), "no `{name}` binary was built");
    }
    Ok(found)
}

/// The guest's root: busybox, modules, tools and binaries with their
/// libraries, and `init`.
fn assemble(guest: &Path, kernel: &Kernel, binaries: &BTreeMap<String, PathBuf>) -> Result<()> {
    if guest.exists() {
        fs::remove_dir_all(guest)?;
    }
    for d in [
        "bin", "sbin", "lib64", "proc", "sys", "dev", "tmp", "run", "etc", "mods", "tests",
    ] {
        fs::create_dir_all(guest.join(d))?;
    }
    fs::create_dir_all(guest.join("var"))?;
    std::os::unix::fs::symlink("/run", guest.join("var/run"))?;
    fs::copy("/bin/busybox", guest.join("bin/busybox")).context("busybox (busybox-static)")?;
    for applet in APPLETS {
        std::os::unix::fs::symlink("busybox", guest.join("bin").join(applet))?;
    }
    for (i, module) in MODULES.iter().enumerate() {
        fs::copy(
            kernel.modules.join(module),
            guest.join(format!("mods/{i:02}.ko")),
        )
        .with_context(|| format!("module {module}"))?;
    }
    let mut linked = Vec::new();
    for tool in HOST_TOOLS {
        let name = Path::new(tool).file_name().context("a tool name")?;
        fs::copy(tool, guest.join("sbin").join(name)).with_context(|| (*tool).to_owned())?;
        linked.push(PathBuf::from(tool));
    }
    for (name, path) in binaries {
        let to = if name == "sluice" || name == "sluice-probe" {
            guest.join("bin").join(name)
        } else {
            guest.join("tests").join(name)
        };
        run(Command::new("strip").arg("-o").arg(&to).arg(path))?;
        linked.push(path.clone());
    }
    for lib in shared_libraries(&linked)? {
        let to = guest.join(lib.strip_prefix("/").unwrap_or(&lib));
        if let Some(dir) = to.parent() {
            fs::create_dir_all(dir)?;
        }
        fs::copy(&lib, &to).with_context(|| format!("{}", lib.display()))?;
    }
    let init = guest.join("init");
    fs::write(&init, init_script())?;
    fs::set_permissions(&init, fs::Permissions::from_mode(0o755))?;
    Ok(())
}

/// Every shared library `binaries` link (`ldd`), the loader included.
fn shared_libraries(binaries: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut libs = std::collections::BTreeSet::new();
    for binary in binaries {
        let out = output(Command::new("ldd").arg(binary))?;
        for line in out.lines() {
            let path = match line.split_once("=>") {
                Some((_, right)) => right.split_whitespace().next(),
                None => line
                    .split_whitespace()
                    .next()
                    .filter(|p| p.starts_with('/')),
            };
            if let Some(p) = path.filter(|p| p.starts_with('/')) {
                libs.insert(PathBuf::from(p));
            }
        }
    }
    Ok(libs.into_iter().collect())
}

/// The guest's init: mounts, modules, then each suite.
fn init_script() -> String {
    let mut s = String::from(
        "#!/bin/sh\n\
         export PATH=/bin:/sbin\n\
         mount -t proc proc /proc\n\
         mount -t sysfs sys /sys\n\
         mount -t devtmpfs dev /dev\n\
         mount -t tmpfs tmp /tmp\n\
         mount -t tmpfs run /run\n\
         mount -t bpf bpf /sys/fs/bpf\n\
         mkdir -p /sys/fs/cgroup && mount -t cgroup2 cgroup2 /sys/fs/cgroup\n\
         for m in /mods/*.ko; do insmod $m || echo \"VMTEST insmod $m failed\"; done\n\
         ip link set lo up\n\
         echo \"VMTEST uname $(uname -r)\"\n\
         cd /tmp\n",
    );
    for (suite, filters) in SUITES {
        let filters: Vec<String> = if filters.is_empty() {
            vec![format!("{suite}::")]
        } else {
            filters.iter().map(|f| format!("{suite}::{f}")).collect()
        };
        let _ = write!(
            s,
            "echo \"VMTEST start {suite}\"\n\
             CI=true SLUICE_BIN=/bin/sluice SLUICE_PROBE_BIN=/bin/sluice-probe \
             /tests/e2e --test-threads=1 {}\n\
             echo \"VMTEST {suite} exit $?\"\n",
            filters.join(" ")
        );
    }
    s.push_str("poweroff -f\n");
    s
}

/// Boots the guest and reads its console until it powers off, or `LIMIT`:
/// each suite's exit code.
fn boot(vmlinuz: &Path, initramfs: &Path) -> Result<BTreeMap<String, i32>> {
    let mut qemu = Command::new("qemu-system-x86_64")
        .args([
            "-accel",
            "tcg",
            "-m",
            "2048",
            "-smp",
            "2",
            "-nographic",
            "-no-reboot",
        ])
        .arg("-kernel")
        .arg(vmlinuz)
        .arg("-initrd")
        .arg(initramfs)
        .args(["-append", "console=ttyS0 panic=-1 quiet"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting qemu-system-x86_64 (Debian's qemu-system-x86)")?;
    let stdout = qemu.stdout.take().context("qemu's console")?;
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let deadline = Instant::now() + LIMIT;
    let mut results = BTreeMap::new();
    let mut out = std::io::stdout().lock();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                let _ = writeln!(out, "guest | {line}");
                if let Some(rest) = line.split("VMTEST ").nth(1)
                    && let Some((suite, code)) = rest.split_once(" exit ")
                    && let Ok(code) = code.trim().parse()
                {
                    results.insert(suite.trim().to_owned(), code);
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let _ = qemu.kill();
                let _ = qemu.wait();
                bail!("the guest did not finish in {LIMIT:?}");
            }
        }
    }
    let status = qemu.wait()?;
    ensure!(status.success(), "qemu: {status}");
    Ok(results)
}

/// A `newc` cpio archive (the initramfs format) of a directory tree.
mod cpio {
    use std::{fs, os::unix::fs::MetadataExt as _, path::Path};

    use anyhow::{Context as _, Result};

    pub fn write(root: &Path, to: &Path) -> Result<()> {
        let mut out = Vec::new();
        let mut ino = 1;
        add(root, root, &mut out, &mut ino)?;
        entry(&mut out, "TRAILER!!!", 0, &[], 0);
        fs::write(to, out).with_context(|| format!("{}", to.display()))
    }

    fn add(root: &Path, dir: &Path, out: &mut Vec<u8>, ino: &mut u32) -> Result<()> {
        let mut entries: Vec<_> = fs::read_dir(dir)?.flatten().map(|e| e.path()).collect();
        entries.sort();
        for path in entries {
            let name = path
                .strip_prefix(root)?
                .to_str()
                .context("a UTF-8 path")?
                .to_owned();
            let meta = fs::symlink_metadata(&path)?;
            *ino += 1;
            if meta.file_type().is_symlink() {
                let target = fs::read_link(&path)?;
                let target = target.to_str().context("a UTF-8 link")?;
                entry(out, &name, 0o120_777, target.as_bytes(), *ino);
            } else if meta.is_dir() {
                entry(out, &name, 0o040_000 | (meta.mode() & 0o7777), &[], *ino);
                add(root, &path, out, ino)?;
            } else {
                let data = fs::read(&path)?;
                entry(out, &name, 0o100_000 | (meta.mode() & 0o7777), &data, *ino);
            }
        }
        Ok(())
    }

    fn pad(out: &mut Vec<u8>) {
        while !out.len().is_multiple_of(4) {
            out.push(0);
        }
    }

    fn entry(out: &mut Vec<u8>, name: &str, mode: u32, data: &[u8], ino: u32) {
        let fields = [
            ino,
            mode,
            0,
            0,
            if mode & 0o040_000 != 0 { 2 } else { 1 },
            0,
            u32::try_from(data.len()).unwrap_or(u32::MAX),
            0,
            0,
            0,
            0,
            u32::try_from(name.len() + 1).unwrap_or(u32::MAX),
            0,
        ];
        out.extend_from_slice(b"070701");
        for f in fields {
            out.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        out.extend_from_slice(name.as_bytes());
        out.push(0);
        pad(out);
        out.extend_from_slice(data);
        pad(out);
    }
}
