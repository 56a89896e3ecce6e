//! `cargo xtask run`: Sluice on its embedded default, a local lab.
//!
//! A dual-stack node namespace with a client pod and three backend pods
//! (each with an IPv4 and an IPv6 address), the local API server on the
//! node with a service range per family and the example Services
//! (manifests/examples/) applied by kubectl, the agent on the node watching
//! it, and a client that keeps sending requests through the ClusterIP and
//! prints which backend answered. `--source manifests` feeds the agent from a watched manifest
//! directory instead. Ctrl-C tears the lab down.

use std::{
    collections::BTreeMap,
    fs,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
    path::{Path, PathBuf},
    process::Command,
    sync::atomic::{AtomicBool, Ordering},
    thread,
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};
use sluice_lab::{AgentOptions, AgentSource, Lab, LabDns};

use crate::prereqs;

/// Addresses in manifests/examples/web.yaml.
const WEB_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const EMPTY_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 20);
const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 2);
const BACKENDS: [(&str, Ipv4Addr); 3] = [
    ("web-0", Ipv4Addr::new(10, 244, 1, 10)),
    ("web-1", Ipv4Addr::new(10, 244, 1, 11)),
    ("web-2", Ipv4Addr::new(10, 244, 1, 12)),
];
/// `web`'s IPv6 ClusterIP, and the pods' IPv6 addresses (the backends' in
/// `BACKENDS`' order).
const WEB_VIP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x96, 0, 0, 0, 0, 0, 0xa);
const CLIENT6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x244, 1, 0, 0, 0, 0, 0x2);
const BACKENDS6: [Ipv6Addr; 3] = [
    Ipv6Addr::new(0xfd00, 0x244, 1, 0, 0, 0, 0, 0x10),
    Ipv6Addr::new(0xfd00, 0x244, 1, 0, 0, 0, 0, 0x11),
    Ipv6Addr::new(0xfd00, 0x244, 1, 0, 0, 0, 0, 0x12),
];
const SERVICE_CIDR: &str = "10.96.0.0/12";
/// The local API server's service ranges, one per family.
const SERVICE_RANGES: &str = "10.96.0.0/12,fd00:96::/112";
const TIMEOUT: Duration = Duration::from_secs(2);
/// Node-local DNS, where NodeLocal DNSCache listens.
const DNS_IP: Ipv4Addr = Ipv4Addr::new(169, 254, 20, 10);

#[derive(clap::Args)]
pub struct Args {
    /// Stop after this many requests, and fail unless every backend answered
    /// (a non-interactive check of the demo).
    #[arg(long)]
    pub requests: Option<u32>,
    /// Build and run the agent in release mode.
    #[arg(long)]
    pub release: bool,
    /// Where the agent takes its Services from.
    #[arg(long, value_enum, default_value_t = DemoSource::Apiserver)]
    pub source: DemoSource,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DemoSource {
    /// The local API server (sluice-apiserver) on the node, changed with kubectl.
    Apiserver,
    /// A watched directory of manifests.
    Manifests,
}

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

/// Builds `sluice` (and with it the eBPF object); returns the binary's path.
pub fn build_agent(release: bool) -> Result<PathBuf> {
    build(
        &["-p", "sluice-agent", "--bin", "sluice"],
        "sluice",
        release,
    )
}

/// Builds a binary of the workspace in debug mode; returns its path.
pub fn build_bin(package: &str, bin: &str) -> Result<PathBuf> {
    build(&["-p", package, "--bin", bin], bin, false)
}

/// Builds a binary of the workspace in release mode; returns its path.
pub fn build_release_bin(package: &str, bin: &str) -> Result<PathBuf> {
    build(&["-p", package, "--bin", bin], bin, true)
}

/// Cargo's target directory.
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| workspace_root().join("target"), PathBuf::from)
}

fn build(args: &[&str], bin: &str, release: bool) -> Result<PathBuf> {
    let mut cmd = Command::new("cargo");
    cmd.current_dir(workspace_root()).arg("build").args(args);
    if release {
        cmd.arg("--release");
    }
    prereqs::run(&mut cmd)?;
    Ok(target_dir()
        .join(if release { "release" } else { "debug" })
        .join(bin))
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

pub fn run(args: &Args) -> Result<()> {
    prereqs::ensure()?;
    if !nix::unistd::geteuid().is_root() {
        bail!("`cargo xtask run` needs root: it creates network namespaces and loads BPF programs");
    }
    let bin = build_agent(args.release)?;
    if args.source == DemoSource::Apiserver {
        build_bin("sluice-apiserver", "sluice-apiserver")?;
    }
    sluice_lab::reap_stale();
    let handler = SigAction::new(
        SigHandler::Handler(on_signal),
        SaFlags::empty(),
        SigSet::empty(),
    );
    // SAFETY: the handler only stores to an atomic.
    unsafe {
        sigaction(Signal::SIGINT, &handler)?;
        sigaction(Signal::SIGTERM, &handler)?;
    }
    let interactive = args.requests.is_none();
    let lab = start_lab(&bin, args.source, interactive)?;
    let client = lab.pod("client");
    let refused = client.tcp_request(SocketAddr::from((EMPTY_VIP, 80)), TIMEOUT);
    println!(
        "default/empty ({EMPTY_VIP}:80, no endpoints): {}",
        outcome(refused.as_ref().map(|a| a.trim().to_owned()))
    );
    let udp = client.udp_request(SocketAddr::from((WEB_VIP, 53)), TIMEOUT);
    println!(
        "default/web UDP ({WEB_VIP}:53): {}",
        outcome(
            udp.as_ref()
                .map(|(a, from)| format!("{} from {from}", a.trim()))
        )
    );
    let dns = resolve_web(&lab);
    println!(
        "DNS: getent ahostsv4 and ahostsv6 web in the client (search path, agent at {DNS_IP}): {}",
        outcome(dns.as_ref().map(|(v4, v6)| format!("{v4} {v6}")))
    );
    let counts = request_loop(&lab, args.requests, interactive);
    let n6 = args.requests.unwrap_or(10);
    let counts6 = ipv6_requests(&lab, n6, true);
    let counts6_tc = ipv6_requests(&lab, n6, false);
    println!("\n{}", lab.status(&bin)?);
    drop(lab);
    println!("lab torn down");

    if args.requests.is_some() {
        if counts.len() != BACKENDS.len() {
            bail!("not every backend answered: {counts:?}");
        }
        if counts6.len() != BACKENDS.len() {
            bail!("not every backend answered on the IPv6 ClusterIP (socket LB): {counts6:?}");
        }
        if counts6_tc.len() != BACKENDS.len() {
            bail!("not every backend answered on the IPv6 ClusterIP (TC): {counts6_tc:?}");
        }
        if refused.is_ok() {
            bail!("a Service without endpoints answered");
        }
        udp.context("UDP through the ClusterIP")?;
        let (v4, v6) = dns.context("cluster DNS")?;
        if v4 != WEB_VIP.to_string() || v6 != WEB_VIP6.to_string() {
            bail!("`web` did not resolve to its two ClusterIPs: {v4} {v6}");
        }
    }
    Ok(())
}

/// `getent ahostsv4 web` and `getent ahostsv6 web` in the client pod:
/// glibc's resolver, the pod's resolv.conf, the agent's DNS (A and AAAA).
fn resolve_web(lab: &Lab) -> Result<(String, String)> {
    let first = |database: &str| -> Result<String> {
        let out = lab
            .pod("client")
            .ns
            .command("getent")
            .args([database, "web"])
            .output()
            .context("running getent")?;
        let text = String::from_utf8_lossy(&out.stdout);
        text.split_whitespace()
            .next()
            .map(str::to_owned)
            .with_context(|| format!("`web` did not resolve ({database})"))
    };
    Ok((first("ahostsv4")?, first("ahostsv6")?))
}

/// At least `n` requests through the IPv6 ClusterIP from the client pod,
/// and more (up to three times as many) until every backend answered, by a
/// process in the lab's cgroup (`socket_lb`: socket LB connects it to a
/// backend) or outside it (TC translates its packets): which backend
/// answered, how often.
fn ipv6_requests(lab: &Lab, n: u32, socket_lb: bool) -> BTreeMap<String, u32> {
    let mut counts: BTreeMap<String, u32> = BTreeMap::new();
    let path = if socket_lb { "socket LB" } else { "TC" };
    for sent in 1..=3 * n {
        if sent > n && counts.len() == BACKENDS.len() {
            break;
        }
        let mut cmd = lab.pod("client").ns.command("timeout");
        cmd.args([
            "5",
            "bash",
            "-c",
            &format!("exec 3<>/dev/tcp/{WEB_VIP6}/80 && echo hi >&3 && head -1 <&3"),
        ]);
        let entered = if socket_lb {
            lab.cgroup().enter_on_spawn(&mut cmd)
        } else {
            Ok(())
        };
        let answer = entered
            .and_then(|()| Ok(cmd.output()?))
            .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_owned());
        let to = format!("[{WEB_VIP6}]:80 ({path})");
        match answer {
            Ok(a) if !a.is_empty() => {
                let backend = a.split_whitespace().next().unwrap_or("?").to_owned();
                *counts.entry(backend.clone()).or_default() += 1;
                println!("request {sent:>4} to {to} answered by {backend}");
            }
            Ok(_) => println!("request {sent:>4} to {to} got no answer"),
            Err(e) => println!("request {sent:>4} to {to} failed: {e:#}"),
        }
    }
    counts
}

fn outcome(r: Result<String, &anyhow::Error>) -> String {
    r.unwrap_or_else(|e| format!("{e:#}"))
}

/// The lab of the demo, with the agent started on the example Services.
fn start_lab(bin: &Path, source: DemoSource, interactive: bool) -> Result<Lab> {
    let mut lab = Lab::new()?;
    lab.add_pod("client", CLIENT)?;
    lab.add_ipv6("client", CLIENT6)?;
    for ((name, ip), ip6) in BACKENDS.into_iter().zip(BACKENDS6) {
        lab.add_pod(name, ip)?;
        lab.add_ipv6(name, ip6)?;
        lab.serve(name, &[8080], &[5353])?;
    }
    let examples = workspace_root().join("manifests/examples");
    let agent_source = match source {
        DemoSource::Manifests => {
            for entry in fs::read_dir(&examples)
                .with_context(|| format!("reading {}", examples.display()))?
            {
                let path = entry?.path();
                if let Some(name) = path.file_name().and_then(|n| n.to_str()) {
                    lab.write_manifest(name, &fs::read_to_string(&path)?)?;
                }
            }
            AgentSource::Manifests
        }
        DemoSource::Apiserver => {
            let server = lab.start_apiserver(&["--service-cluster-ip-range", SERVICE_RANGES])?;
            print!(
                "{}",
                server.kubectl(&["apply", "-f", &examples.display().to_string()])?
            );
            AgentSource::Kubeconfig(server.admin_kubeconfig())
        }
    };
    let opts = AgentOptions {
        bin: bin.to_path_buf(),
        source: agent_source,
        service_cidr: Some(SERVICE_CIDR.into()),
        // No upstream: names outside the cluster get SERVFAIL, and no query
        // leaves the lab.
        dns: Some(LabDns {
            ip: DNS_IP.into(),
            upstreams: Vec::new(),
        }),
        echo: interactive,
        ..AgentOptions::default()
    };
    lab.pod("client").ns.set_resolv_conf(&format!(
        "search default.svc.cluster.local svc.cluster.local cluster.local\nnameserver {DNS_IP}\noptions ndots:5\n"
    ))?;
    lab.start_agent(&opts)?;
    let kubeconfig = (source == DemoSource::Apiserver).then(|| lab.apiserver().admin_kubeconfig());
    let client = lab.pod("client");
    println!(
        "\nSluice is running in namespace {}; pods are namespaces too:",
        lab.node().name()
    );
    println!(
        "  client {CLIENT} {CLIENT6}  (ip netns exec {} …)",
        client.ns.name()
    );
    for ((name, ip), ip6) in BACKENDS.into_iter().zip(BACKENDS6) {
        println!("  {name} {ip} {ip6}");
    }
    match source {
        DemoSource::Manifests => println!(
            "Manifests (edit them, the agent applies changes at once): {}",
            lab.manifests_dir().display()
        ),
        DemoSource::Apiserver => {
            let kubeconfig = kubeconfig.unwrap_or_default();
            println!(
                "API server: https://127.0.0.1:6443 in the node namespace. Change Services with\n  \
                 ip netns exec {} kubectl --kubeconfig {} get svc,endpointslices",
                lab.node().name(),
                kubeconfig.display()
            );
        }
    }
    println!(
        "Status:  {} status --pin-dir {}",
        bin.display(),
        lab.pin_dir().display()
    );
    println!(
        "Try:     ip netns exec {} bash -c 'exec 3<>/dev/tcp/web/80; echo hi >&3; head -1 <&3'",
        client.ns.name()
    );
    println!(
        "         ip netns exec {} dig web.default.svc.cluster.local   (DNS at {DNS_IP})",
        client.ns.name()
    );
    println!(
        "IPv6 (TC):\n         \
         ip netns exec {} bash -c 'exec 3<>/dev/tcp/{WEB_VIP6}/80; echo hi >&3; head -1 <&3'\n\
         IPv6 (socket LB, for processes in the lab's cgroup):\n         \
         ip netns exec {} bash -c 'echo $$ > {}/cgroup.procs; exec 3<>/dev/tcp/{WEB_VIP6}/80; echo hi >&3; head -1 <&3'\n",
        client.ns.name(),
        client.ns.name(),
        lab.cgroup().path().display()
    );
    Ok(lab)
}

/// Requests through the ClusterIP until Ctrl-C (or `limit`); the tally.
fn request_loop(lab: &Lab, limit: Option<u32>, interactive: bool) -> BTreeMap<String, u32> {
    let client = lab.pod("client");
    let mut counts: BTreeMap<String, u32> = BTreeMap::new();
    let mut sent = 0u32;
    while !STOP.load(Ordering::SeqCst) && limit.is_none_or(|n| sent < n) {
        sent += 1;
        match client.tcp_request(SocketAddr::from((WEB_VIP, 80)), TIMEOUT) {
            Ok(answer) => {
                let backend = answer.split_whitespace().next().unwrap_or("?").to_owned();
                *counts.entry(backend.clone()).or_default() += 1;
                let tally: Vec<String> = counts.iter().map(|(b, n)| format!("{b}={n}")).collect();
                println!(
                    "request {sent:>4} to {WEB_VIP}:80 answered by {backend:<6} [{}]",
                    tally.join(" ")
                );
            }
            Err(e) => println!("request {sent:>4} to {WEB_VIP}:80 failed: {e:#}"),
        }
        if interactive {
            // Pacing for a person watching, not a wait for a condition.
            thread::sleep(Duration::from_millis(500));
        }
    }
    counts
}
