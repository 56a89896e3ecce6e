//! Prerequisites: what `setup` installs and `doctor` reports.
//!
//! The eBPF object is compiled by the `nightly` toolchain (with `rust-src`, for
//! `-Z build-std=core`) and linked by bpf-linker, which loads the system
//! libLLVM. The LLVM major of the two must match, or linking fails with
//! "Invalid record" (aya-rs/bpf-linker#387), so everything LLVM-related is
//! derived from what `rustc +nightly -vV` reports.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, bail};

const NIGHTLY: &str = "nightly";
/// Nightly components: the core sources for `-Z build-std=core`, and the
/// linters that run on the eBPF crate (rustfmt's import grouping is unstable).
const NIGHTLY_COMPONENTS: &[&str] = &["rust-src", "rustfmt", "clippy"];
const BPF_LINKER_VERSION: &str = "0.13.0";
/// Runs the DNS parser's fuzz target (agent/dns/fuzz) in `cargo xtask test`.
const CARGO_FUZZ_VERSION: &str = "0.13.2";

/// Debian packages the build and the tests use, besides LLVM.
const TOOL_PACKAGES: &[&str] = &[
    "iproute2",
    "iptables",
    "nftables",
    "ipvsadm",
    "dnsperf",
    "bind9-dnsutils",
    "knot",
    "nsd",
    "unbound",
    "dnsmasq",
    "wrk",
    "iperf3",
    // `cargo xtask vm-test`: the guest's emulator and its busybox.
    "qemu-system-x86",
    "busybox-static",
    "libzstd-dev",
    "zlib1g-dev",
];

/// One missing prerequisite: what it is and why it matters.
struct Missing {
    what: String,
    why: String,
}

/// What the machine has, as far as the prerequisites go.
struct Survey {
    llvm_major: Option<u32>,
    missing: Vec<Missing>,
    missing_packages: Vec<String>,
    missing_components: Vec<&'static str>,
    bpf_linker_ok: bool,
    cargo_fuzz_ok: bool,
    guest_kernel_ok: bool,
}

fn survey() -> Survey {
    let mut missing = Vec::new();
    let llvm_major = match nightly_llvm_major() {
        Ok(major) => Some(major),
        Err(err) => {
            missing.push(Missing {
                what: "nightly toolchain".into(),
                why: format!("the eBPF crate is built with `rustup run nightly` ({err:#})"),
            });
            None
        }
    };
    let missing_components = if llvm_major.is_some() {
        missing_nightly_components()
    } else {
        Vec::new()
    };
    for c in &missing_components {
        missing.push(Missing {
            what: format!("{c} for nightly"),
            why: if *c == "rust-src" {
                "`-Z build-std=core` needs the core sources for bpfel-unknown-none".into()
            } else {
                "the lints of `cargo xtask test` run it on nightly".into()
            },
        });
    }
    let mut packages: Vec<String> = TOOL_PACKAGES.iter().map(ToString::to_string).collect();
    if let Some(major) = llvm_major {
        packages.push(format!("llvm-{major}-dev"));
        packages.push(format!("libpolly-{major}-dev"));
    }
    let missing_packages: Vec<String> =
        packages.into_iter().filter(|p| !deb_installed(p)).collect();
    for p in &missing_packages {
        missing.push(Missing {
            what: format!("Debian package {p}"),
            why: if p.starts_with("llvm-") || p.starts_with("libpolly-") {
                "bpf-linker links against the system libLLVM of the same major as nightly rustc"
                    .into()
            } else {
                "used by the build, the lab or the tests".into()
            },
        });
    }
    let bpf_linker_ok = match (llvm_major, bpf_linker_state()) {
        (_, Err(err)) => {
            missing.push(Missing {
                what: "bpf-linker".into(),
                why: format!("{err:#}"),
            });
            false
        }
        (Some(want), Ok(have)) if have.llvm_major != Some(want) => {
            missing.push(Missing {
                what: "bpf-linker built against the right LLVM".into(),
                why: format!(
                    "nightly rustc emits LLVM {want} bitcode but bpf-linker links {}; \
                     linking would fail with `Invalid record`",
                    have.llvm_major
                        .map_or_else(|| "an unknown libLLVM".into(), |m| format!("libLLVM {m}"))
                ),
            });
            false
        }
        (_, Ok(have)) if !have.version.contains(BPF_LINKER_VERSION) => {
            missing.push(Missing {
                what: format!("bpf-linker {BPF_LINKER_VERSION}"),
                why: format!(
                    "found `{}`; aya 0.14 is tested with {BPF_LINKER_VERSION}",
                    have.version
                ),
            });
            false
        }
        (_, Ok(_)) => true,
    };
    let cargo_fuzz_ok = output(Command::new("cargo").args(["fuzz", "--version"]))
        .is_ok_and(|v| v.contains(CARGO_FUZZ_VERSION));
    if !cargo_fuzz_ok {
        missing.push(Missing {
            what: format!("cargo-fuzz {CARGO_FUZZ_VERSION}"),
            why: "`cargo xtask test` fuzzes the DNS message handling for a bounded time".into(),
        });
    }
    let guest_kernel_ok = guest_kernel(&mut missing);
    Survey {
        llvm_major,
        missing,
        missing_packages,
        missing_components,
        bpf_linker_ok,
        cargo_fuzz_ok,
        guest_kernel_ok,
    }
}

/// Whether the guest's kernel is there; if not, says so in `missing`.
fn guest_kernel(missing: &mut Vec<Missing>) -> bool {
    let ok = crate::vm::has_kernel(crate::vm::GUEST_SERIES);
    if !ok {
        missing.push(Missing {
            what: format!(
                "Debian's {} cloud kernel (target/vm/)",
                crate::vm::GUEST_SERIES
            ),
            why: "`cargo xtask test` boots it in qemu (`cargo xtask vm-test`)".into(),
        });
    }
    ok
}

/// `cargo xtask doctor`: report, change nothing. Fails when something is missing.
pub fn doctor() -> Result<()> {
    let s = survey();
    if let Some(major) = s.llvm_major {
        println!("nightly rustc: LLVM {major}");
    }
    for (label, ok, why) in environment_checks() {
        println!(
            "{} {label}{}",
            if ok { "ok     " } else { "warn   " },
            why.map(|w| format!(": {w}")).unwrap_or_default()
        );
    }
    if s.missing.is_empty() {
        println!("ok      all build prerequisites are present");
        return Ok(());
    }
    for m in &s.missing {
        println!("missing {}: {}", m.what, m.why);
    }
    bail!(
        "{} prerequisite(s) missing; `cargo xtask setup` installs them",
        s.missing.len()
    )
}

/// Things `setup` cannot install but the privileged tests need.
fn environment_checks() -> Vec<(&'static str, bool, Option<String>)> {
    let root = nix::unistd::geteuid().is_root();
    let btf = Path::new("/sys/kernel/btf/vmlinux").exists();
    let bpffs = fs::read_to_string("/proc/filesystems").is_ok_and(|f| f.contains("\tbpf\n"));
    vec![
        (
            "running as root",
            root,
            (!root).then(|| "BPF load and network namespaces need root".into()),
        ),
        (
            "kernel BTF",
            btf,
            (!btf).then(|| "/sys/kernel/btf/vmlinux is missing".into()),
        ),
        (
            "bpffs support",
            bpffs,
            (!bpffs).then(|| "the kernel does not list `bpf` in /proc/filesystems".into()),
        ),
    ]
}

/// `cargo xtask setup`: install what is missing; a no-op when nothing is.
pub fn setup() -> Result<()> {
    let s = survey();
    if s.missing.is_empty() {
        println!("setup: everything is already installed");
        return Ok(());
    }
    let Some(major) = s.llvm_major else {
        bail!(
            "no usable `nightly` toolchain: install it with rustup (the machine image ships one); \
             a freshly downloaded nightly may use a newer LLVM than Debian offers"
        );
    };
    if !s.missing_components.is_empty() {
        run(Command::new("rustup")
            .args(["component", "add", "--toolchain", NIGHTLY])
            .args(&s.missing_components))?;
    }
    if !s.missing_packages.is_empty() {
        apt_install(&s.missing_packages)?;
    }
    if !s.bpf_linker_ok {
        install_bpf_linker(major)?;
    }
    if !s.guest_kernel_ok {
        crate::vm::fetch_kernel(crate::vm::GUEST_SERIES)?;
    }
    if !s.cargo_fuzz_ok {
        run(Command::new("cargo").args([
            "install",
            "--force",
            "--locked",
            &format!("cargo-fuzz@{CARGO_FUZZ_VERSION}"),
        ]))?;
    }
    let after = survey();
    if !after.missing.is_empty() {
        for m in &after.missing {
            eprintln!("still missing {}: {}", m.what, m.why);
        }
        bail!("setup did not complete");
    }
    println!("setup: done");
    Ok(())
}

/// Run `setup` only when something is missing (used by `run`, `test`, `build`).
pub fn ensure() -> Result<()> {
    if survey().missing.is_empty() {
        Ok(())
    } else {
        setup()
    }
}

fn apt_install(packages: &[String]) -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!(
            "installing Debian packages needs root: apt-get install -y {}",
            packages.join(" ")
        );
    }
    // Daemons such as unbound and nsd must not be started by their postinst:
    // the benchmarks start their own instances inside lab namespaces.
    let policy = Path::new("/usr/sbin/policy-rc.d");
    let own_policy = !policy.exists();
    if own_policy {
        fs::write(policy, "#!/bin/sh\nexit 101\n").context("writing /usr/sbin/policy-rc.d")?;
        set_mode(policy, 0o755)?;
    }
    let result = run(Command::new("apt-get").args(["update", "-q"])).and_then(|()| {
        run(Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(packages))
    });
    if own_policy {
        fs::remove_file(policy).context("removing /usr/sbin/policy-rc.d")?;
    }
    result
}

fn install_bpf_linker(llvm_major: u32) -> Result<()> {
    let llvm_bin = format!("/usr/lib/llvm-{llvm_major}/bin");
    let path = format!("{llvm_bin}:{}", std::env::var("PATH").unwrap_or_default());
    run(Command::new("cargo")
        .env("PATH", path)
        .env("LLVM_PREFIX", format!("/usr/lib/llvm-{llvm_major}"))
        .args([
            "install",
            "--force",
            "--locked",
            &format!("bpf-linker@{BPF_LINKER_VERSION}"),
        ])
        .args([
            "--no-default-features",
            "--features",
            &format!("llvm-{llvm_major}"),
        ]))
}

fn nightly_llvm_major() -> Result<u32> {
    let out = output(Command::new("rustup").args(["run", NIGHTLY, "rustc", "-vV"]))?;
    let version = out
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .context("`rustc +nightly -vV` printed no LLVM version")?;
    parse_major(version)
}

fn parse_major(version: &str) -> Result<u32> {
    version
        .split('.')
        .next()
        .and_then(|m| m.trim().parse().ok())
        .with_context(|| format!("cannot parse LLVM version `{version}`"))
}

fn missing_nightly_components() -> Vec<&'static str> {
    let installed = output(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        NIGHTLY,
        "--installed",
    ]))
    .unwrap_or_default();
    NIGHTLY_COMPONENTS
        .iter()
        .copied()
        .filter(|c| !installed.lines().any(|l| l.trim().starts_with(c)))
        .collect()
}

fn deb_installed(package: &str) -> bool {
    output(Command::new("dpkg-query").args(["-W", "-f=${Status}", package]))
        .is_ok_and(|s| s.contains("install ok installed"))
}

struct BpfLinker {
    version: String,
    llvm_major: Option<u32>,
}

fn bpf_linker_state() -> Result<BpfLinker> {
    let path =
        bpf_linker_path().context("bpf-linker is not installed (it links the eBPF object)")?;
    let version = output(Command::new(&path).arg("--version"))
        .with_context(|| format!("`{} --version` failed", path.display()))?
        .trim()
        .to_owned();
    // bpf-linker ≥ 0.11 links libLLVM dynamically; its soname carries the major.
    let ldd = output(Command::new("ldd").arg(&path)).unwrap_or_default();
    let llvm_major = ldd.lines().find_map(|l| {
        let name = l.split_whitespace().next()?;
        let rest = name
            .strip_prefix("libLLVM.so.")
            .or_else(|| name.strip_prefix("libLLVM-"))?;
        parse_major(rest.trim_end_matches(".so")).ok()
    });
    Ok(BpfLinker {
        version,
        llvm_major,
    })
}

fn bpf_linker_path() -> Option<PathBuf> {
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")));
    let from_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join("bpf-linker"));
    from_path
        .chain(cargo_home.map(|h| h.join("bin/bpf-linker")))
        .find(|p| p.is_file())
}

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {mode:o} {}", path.display()))
}

/// Run a command with inherited stdio; fail on a non-zero exit.
pub fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("spawning {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

/// Run a command and return its stdout; fail on a non-zero exit.
pub fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .with_context(|| format!("spawning {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::parse_major;

    #[test]
    fn llvm_major_is_read_from_rustc_and_sonames() {
        assert_eq!(parse_major("22.1.4").unwrap(), 22);
        assert_eq!(parse_major("23").unwrap(), 23);
        assert!(parse_major("x.y").is_err());
    }
}
