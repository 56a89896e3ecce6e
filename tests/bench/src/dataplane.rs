//! `cargo xtask bench dataplane`: Sluice's TC dataplane against the kernel
//! mechanisms kube-proxy programs (iptables, nftables and IPVS modes, with
//! kube-proxy's rule structures) and against no Service at all, side by
//! side in one run, on the same lab topology. Every mode gets a fresh node
//! namespace (netfilter NAT turns conntrack on for good), modes alternate
//! over rounds, and medians are reported.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    fs,
    io::Write as _,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::PathBuf,
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use sluice_lab::{AgentOptions, Lab, Netns};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader},
    net::{TcpStream, UdpSocket},
};

use crate::stats::{machine, percentile};

mod ipv6;
mod pressure;

const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 2);
const BACKENDS: usize = 10;
const TCP_PORT: u16 = 8080;
const UDP_PORT: u16 = 5353;
const SERVICE_CIDR: &str = "10.96.0.0/12";
const CLUSTER_CIDR: &str = "10.244.0.0/16";
/// The Service whose single endpoint changes (its own, after the others).
const PROBE_VIP: Ipv4Addr = Ipv4Addr::new(10, 100, 0, 1);

#[derive(clap::Args)]
pub struct Args {
    /// A short run (CI's smoke run): 100 and 1,000 Services, one round,
    /// short measurements.
    #[arg(long)]
    quick: bool,
    /// Services installed, comma-separated (default 100,1000,10000,30000).
    #[arg(long, value_delimiter = ',')]
    scales: Option<Vec<u32>>,
    /// Modes to run, comma-separated (default all): sluice, iptables,
    /// nftables, ipvs, floor; and over IPv6, at the largest scale only:
    /// sluice6, ip6tables, floor6.
    #[arg(long, value_delimiter = ',', value_parser = parse_mode)]
    modes: Option<Vec<Mode>>,
    /// Rounds over all modes (default 2; medians are reported).
    #[arg(long)]
    rounds: Option<u32>,
    /// Seconds per throughput measurement (default 2).
    #[arg(long)]
    seconds: Option<f64>,
    /// Another build of the agent, measured beside this one as "Sluice
    /// (TC), baseline" in the same rounds: the commit before a change to
    /// the packet path, to see what the change costs.
    #[arg(long)]
    baseline_bin: Option<PathBuf>,
    /// Seconds a mode may take to program all Services; one that takes
    /// longer is reported as such and not measured at that scale or above.
    #[arg(long, default_value_t = 30)]
    program_limit: u64,
    /// Where to write the table (Markdown); the plot goes next to it.
    #[arg(long, default_value = "target/bench/dataplane.md")]
    out: PathBuf,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Mode {
    Sluice,
    /// Sluice's TC dataplane from `--baseline-bin`.
    Baseline,
    /// Sluice with the client inside socket LB's cgroup.
    SocketLb,
    Iptables,
    Nftables,
    Ipvs,
    NoService,
    /// Sluice (TC), through an IPv6 ClusterIP.
    Sluice6,
    /// kube-proxy's iptables mode, its IPv6 rules (ip6tables).
    Ip6tables,
    /// The backends' IPv6 addresses, no Service.
    NoService6,
}

impl Mode {
    const ALL: [Self; 10] = [
        Self::Sluice,
        Self::Baseline,
        Self::SocketLb,
        Self::Iptables,
        Self::Nftables,
        Self::Ipvs,
        Self::NoService,
        Self::Sluice6,
        Self::Ip6tables,
        Self::NoService6,
    ];

    /// Whether the mode is measured over IPv6 (at the run's largest scale).
    const fn ipv6(self) -> bool {
        matches!(self, Self::Sluice6 | Self::Ip6tables | Self::NoService6)
    }

    /// The floor a mode is compared with: its family's.
    const fn floor(self) -> Self {
        if self.ipv6() {
            Self::NoService6
        } else {
            Self::NoService
        }
    }

    const fn name(self) -> &'static str {
        match self {
            Self::Sluice => "sluice",
            Self::Baseline => "baseline",
            Self::SocketLb => "socket",
            Self::Iptables => "iptables",
            Self::Nftables => "nftables",
            Self::Ipvs => "ipvs",
            Self::NoService => "floor",
            Self::Sluice6 => "sluice6",
            Self::Ip6tables => "ip6tables",
            Self::NoService6 => "floor6",
        }
    }

    const fn label(self) -> &'static str {
        match self {
            Self::Sluice => "Sluice (TC)",
            Self::Baseline => "Sluice (TC), baseline",
            Self::SocketLb => "Sluice (socket LB)",
            Self::Iptables => "kube-proxy iptables",
            Self::Nftables => "kube-proxy nftables",
            Self::Ipvs => "kube-proxy IPVS",
            Self::NoService => "no Service (pod IP)",
            Self::Sluice6 => "Sluice (TC), IPv6",
            Self::Ip6tables => "kube-proxy ip6tables",
            Self::NoService6 => "no Service (pod IPv6)",
        }
    }

    const fn color(self) -> &'static str {
        match self {
            Self::Sluice => "#1b9e77",
            Self::Baseline => "#a6761d",
            Self::SocketLb => "#66a61e",
            Self::Iptables => "#d95f02",
            Self::Nftables => "#7570b3",
            Self::Ipvs => "#e7298a",
            Self::NoService => "#666666",
            Self::Sluice6 => "#0b5e47",
            Self::Ip6tables => "#8d3f01",
            Self::NoService6 => "#aaaaaa",
        }
    }
}

fn parse_mode(s: &str) -> Result<Mode, String> {
    crate::stats::parse_named(&Mode::ALL, Mode::name, s)
}

/// One measurement of one mode at one scale.
#[derive(Clone, Debug, Default)]
struct Sample {
    conn_per_s: f64,
    p50: Duration,
    p99: Duration,
    udp_per_s: f64,
    program: Duration,
    change: Option<Duration>,
    errors: u64,
}

/// The modes measured in `round`, in the order of that round (reversed
/// every other round).
fn round_modes(args: &Args, ipvs: bool, round: u32) -> Vec<Mode> {
    let mut modes: Vec<Mode> = Mode::ALL
        .into_iter()
        .filter(|m| *m != Mode::Ipvs || ipvs)
        .filter(|m| *m != Mode::Baseline || BASELINE.get().is_some())
        .filter(|m| args.modes.as_ref().is_none_or(|only| only.contains(m)))
        .collect();
    if round % 2 == 1 {
        modes.reverse();
    }
    modes
}

/// `--baseline-bin`, for `Mode::Baseline`.
static BASELINE: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

/// (mode, services, measured Service last in rule order)
type Key = (Mode, u32, bool);

pub fn run(args: &Args) -> Result<()> {
    if let Some(bin) = &args.baseline_bin {
        anyhow::ensure!(
            bin.is_file(),
            "--baseline-bin `{}` is not a file",
            bin.display()
        );
        let _ = BASELINE.set(bin.clone());
    }
    let scales = args.scales.clone().unwrap_or_else(|| {
        if args.quick {
            vec![100, 1000]
        } else {
            vec![100, 1000, 10_000, 30_000]
        }
    });
    let rounds = args.rounds.unwrap_or(if args.quick { 1 } else { 2 });
    let seconds = args.seconds.unwrap_or(if args.quick { 0.5 } else { 2.0 });
    let window = Duration::from_secs_f64(seconds);
    let ipvs = ipvs_available();
    let started = Instant::now();
    let mut samples: BTreeMap<Key, Vec<Sample>> = BTreeMap::new();
    // A mode whose programming ran over the limit, and at which scale.
    let mut too_slow: BTreeMap<Mode, u32> = BTreeMap::new();
    let limit = Duration::from_secs(args.program_limit);
    for round in 0..rounds {
        let modes = round_modes(args, ipvs, round);
        for &services in &scales {
            let mut cases = vec![false];
            if services == 10_000 {
                cases.push(true);
            }
            for last in cases {
                for &mode in &modes {
                    if !measured_at(mode, services, last, &scales) {
                        continue;
                    }
                    if too_slow.get(&mode).is_some_and(|at| services >= *at) {
                        continue;
                    }
                    let t = Instant::now();
                    let Some(sample) = measure(mode, services, last, window, limit)
                        .with_context(|| format!("{} at {services} Services", mode.label()))?
                    else {
                        println!(
                            "round {} · {services:>6} Services · {:<22} programming took over {} s: not measured here or above",
                            round + 1,
                            mode.label(),
                            limit.as_secs()
                        );
                        too_slow.insert(mode, services);
                        continue;
                    };
                    println!(
                        "round {} · {:>6} Services{} · {:<22} {:>8.0} conn/s  p50 {:>7.1} µs  p99 {:>7.1} µs  {:>8.0} UDP/s  program {:>8.1} ms  change {}  ({:.1} s)",
                        round + 1,
                        services,
                        if last { " (last)" } else { "" },
                        mode.label(),
                        sample.conn_per_s,
                        micros(sample.p50),
                        micros(sample.p99),
                        sample.udp_per_s,
                        sample.program.as_secs_f64() * 1e3,
                        sample.change.map_or_else(
                            || "-".into(),
                            |c| format!("{:.1} ms", c.as_secs_f64() * 1e3)
                        ),
                        t.elapsed().as_secs_f64()
                    );
                    samples
                        .entry((mode, services, last))
                        .or_default()
                        .push(sample);
                }
            }
        }
    }
    let medians: BTreeMap<Key, Sample> = samples.iter().map(|(k, v)| (*k, median(v))).collect();
    let pressure = pressure::section(args.modes.as_deref(), window, args.quick)?;
    let svg_path = args.out.with_extension("svg");
    let mut table = render(
        &medians,
        &RunInfo {
            scales: &scales,
            rounds,
            seconds,
            ipvs,
            took: started.elapsed(),
            svg: &svg_path,
            too_slow: &too_slow,
            limit,
        },
    );
    table.push_str(&pressure);
    if let Some(dir) = svg_path.parent() {
        fs::create_dir_all(dir)?;
    }
    fs::write(&svg_path, plot(&medians, &scales))
        .with_context(|| format!("writing {}", svg_path.display()))?;
    crate::stats::publish(&table, &args.out)
}

/// Whether `mode` is measured at `services` (`last`: the measured Service
/// last in rule order): the floors never last, IPv6 only at the largest
/// scale, first in order.
fn measured_at(mode: Mode, services: u32, last: bool, scales: &[u32]) -> bool {
    let largest = Some(&services) == scales.iter().max();
    !(last && (mode == Mode::NoService || mode.ipv6())) && (!mode.ipv6() || largest)
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// The median of each field on its own.
fn median(v: &[Sample]) -> Sample {
    // The middle value, or the mean of the two middle ones.
    let mid = |mut xs: Vec<f64>| -> f64 {
        xs.sort_by(f64::total_cmp);
        let n = xs.len();
        let upper = xs.get(n / 2).copied().unwrap_or(0.0);
        if n.is_multiple_of(2) && n > 0 {
            let lower = xs.get(n / 2 - 1).copied().unwrap_or(upper);
            f64::midpoint(lower, upper)
        } else {
            upper
        }
    };
    let secs = |f: fn(&Sample) -> Duration| {
        Duration::from_secs_f64(mid(v.iter().map(|s| f(s).as_secs_f64()).collect()))
    };
    let changes: Vec<f64> = v
        .iter()
        .filter_map(|s| s.change.map(|c| c.as_secs_f64()))
        .collect();
    Sample {
        conn_per_s: mid(v.iter().map(|s| s.conn_per_s).collect()),
        p50: secs(|s| s.p50),
        p99: secs(|s| s.p99),
        udp_per_s: mid(v.iter().map(|s| s.udp_per_s).collect()),
        program: secs(|s| s.program),
        change: (!changes.is_empty()).then(|| Duration::from_secs_f64(mid(changes))),
        errors: v.iter().map(|s| s.errors).sum(),
    }
}

/// kube-proxy's IPVS mode needs the kernel's IPVS; this kernel may lack it.
fn ipvs_available() -> bool {
    let _ = Command::new("modprobe")
        .args(["-q", "ip_vs"])
        .stderr(Stdio::null())
        .status();
    std::path::Path::new("/proc/net/ip_vs").exists()
}

fn backend_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 244, 1, 10 + u8::try_from(i).unwrap_or(0))
}

fn backend_name(i: usize) -> String {
    format!("b{i}")
}

/// Service `i`'s ClusterIP (10.96.0.10 onwards).
fn vip(i: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 0, 10)) + i)
}

/// The 10 endpoints of Service `i`: the real backends for the measured
/// one, addresses of pods elsewhere for the rest.
fn endpoints(i: u32, measured: u32) -> Vec<Ipv4Addr> {
    if i == measured {
        return (0..BACKENDS).map(backend_ip).collect();
    }
    (0..BACKENDS)
        .map(|e| {
            let n =
                u32::from(Ipv4Addr::new(10, 245, 0, 0)) + i * 16 + u32::try_from(e).unwrap_or(0);
            Ipv4Addr::from(n)
        })
        .collect()
}

/// The lab of one measurement: a client, ten backends with responders.
struct Topology {
    lab: Lab,
    _responders: Vec<ResponderThread>,
}

fn topology() -> Result<Topology> {
    let mut lab = Lab::new()?;
    lab.add_pod("client", CLIENT)?;
    let mut responders = Vec::new();
    for i in 0..BACKENDS {
        let name = backend_name(i);
        lab.add_pod(&name, backend_ip(i))?;
        responders.push(ResponderThread::start(&lab.pod(&name).ns, &name)?);
    }
    Ok(Topology {
        lab,
        _responders: responders,
    })
}

fn measure(
    mode: Mode,
    services: u32,
    last: bool,
    window: Duration,
    limit: Duration,
) -> Result<Option<Sample>> {
    let mut topo = topology()?;
    if mode.ipv6() {
        ipv6::add_addresses(&mut topo)?;
    }
    let measured = if last { services.saturating_sub(1) } else { 0 };
    let program = match mode {
        Mode::Sluice | Mode::SocketLb | Mode::Baseline | Mode::Sluice6 => {
            Some(program_sluice(&mut topo.lab, services, measured, mode)?)
        }
        Mode::Ip6tables => restore_within(
            &topo.lab,
            "ip6tables-restore",
            &[],
            &ipv6::ip6tables_rules(services, measured),
            limit,
        )?,
        Mode::Iptables => restore_within(
            &topo.lab,
            "iptables-restore",
            &[],
            &iptables_rules(services, measured),
            limit,
        )?,
        Mode::Nftables => restore_within(
            &topo.lab,
            "nft",
            &["-f", "-"],
            &nft_rules(services, measured),
            limit,
        )?,
        Mode::Ipvs => Some(program_ipvs(&topo.lab, services, measured)?),
        Mode::NoService | Mode::NoService6 => Some(Duration::ZERO),
    };
    let Some(program) = program else {
        return Ok(None);
    };
    // The floor spreads its traffic over the same ten backends as the
    // Service does (the client picks them in turn): the same work for the
    // responders, without a Service in the path.
    let (tcp, udp): (Targets, Targets) = match mode {
        Mode::NoService => (
            (0..BACKENDS)
                .map(|i| SocketAddr::from((backend_ip(i), TCP_PORT)))
                .collect(),
            (0..BACKENDS)
                .map(|i| SocketAddr::from((backend_ip(i), UDP_PORT)))
                .collect(),
        ),
        Mode::NoService6 => (
            (0..BACKENDS)
                .map(|i| SocketAddr::from((ipv6::backend_ip6(i), TCP_PORT)))
                .collect(),
            (0..BACKENDS)
                .map(|i| SocketAddr::from((ipv6::backend_ip6(i), UDP_PORT)))
                .collect(),
        ),
        Mode::Sluice6 | Mode::Ip6tables => (
            [SocketAddr::from((ipv6::vip6(measured), 80))].into(),
            [SocketAddr::from((ipv6::vip6(measured), 53))].into(),
        ),
        _ => (
            [SocketAddr::from((vip(measured), 80))].into(),
            [SocketAddr::from((vip(measured), 53))].into(),
        ),
    };
    let traffic = if mode == Mode::SocketLb {
        // Socket LB acts on processes in its cgroup: the same load, from a
        // process started there.
        load_in_cgroup(&topo.lab, &tcp, &udp, window)?
    } else {
        topo.lab
            .pod("client")
            .ns
            .run(move || load(tcp, udp, window))??
    };
    // The endpoint change is measured through the IPv4 probe Service.
    let change = match mode {
        Mode::NoService | Mode::NoService6 | Mode::Sluice6 | Mode::Ip6tables => None,
        _ => Some(change(&topo.lab, mode)?),
    };
    Ok(Some(Sample {
        program,
        change,
        ..traffic
    }))
}

/// Time from an empty dataplane to all Services programmed: the agent's
/// start to ready (loading its programs and reading the objects included).
/// The objects are one JSON `List`, as `kubectl get -o json` writes them and
/// as the API server speaks; the same objects as multi-document YAML take
/// longer to parse (see agent/docs/performance.md).
fn program_sluice(lab: &mut Lab, services: u32, measured: u32, mode: Mode) -> Result<Duration> {
    let (objects, cidrs) = if mode == Mode::Sluice6 {
        (ipv6::manifests6(services, measured), ipv6::SERVICE_CIDRS)
    } else {
        (manifests(services, measured), SERVICE_CIDR)
    };
    lab.write_manifest("services.json", &objects.to_string())?;
    lab.write_manifest("probe.yaml", &probe_manifest(0))?;
    let mut opts = AgentOptions {
        service_cidr: Some(cidrs.into()),
        ..AgentOptions::default()
    };
    if mode == Mode::Baseline
        && let Some(bin) = BASELINE.get()
    {
        opts.bin.clone_from(bin);
    }
    let t = Instant::now();
    lab.start_agent(&opts)?;
    Ok(t.elapsed())
}

/// `services` Services of 10 endpoints, as a `List`.
fn manifests(services: u32, measured: u32) -> serde_json::Value {
    manifests_of(
        services,
        measured,
        |i| vip(i).into(),
        |i| {
            endpoints(i, measured)
                .into_iter()
                .map(IpAddr::from)
                .collect()
        },
    )
}

/// `services` Services, Service `i` at `vip(i)` (its family's, single
/// stack) with `endpoints(i)`, as a `List`.
fn manifests_of(
    services: u32,
    measured: u32,
    vip: impl Fn(u32) -> IpAddr,
    endpoints: impl Fn(u32) -> Vec<IpAddr>,
) -> serde_json::Value {
    let port = |name: &str, port: u16, protocol: &str| serde_json::json!({"name": name, "port": port, "protocol": protocol});
    let mut items = Vec::with_capacity(usize::try_from(services).unwrap_or(0) * 2);
    for i in 0..services {
        let mut ports = vec![port("http", 80, "TCP")];
        let mut slice_ports = vec![port("http", TCP_PORT, "TCP")];
        if i == measured {
            ports.push(port("dns", 53, "UDP"));
            slice_ports.push(port("dns", UDP_PORT, "UDP"));
        }
        let name = format!("svc-{i}");
        let ip = vip(i);
        let family = if ip.is_ipv6() { "IPv6" } else { "IPv4" };
        items.push(serde_json::json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {
                "ipFamilies": [family],
                "ipFamilyPolicy": "SingleStack",
                "clusterIP": ip.to_string(),
                "clusterIPs": [ip.to_string()],
                "ports": ports,
            },
        }));
        let eps: Vec<serde_json::Value> = endpoints(i)
            .iter()
            .map(|ip| serde_json::json!({"addresses": [ip.to_string()]}))
            .collect();
        items.push(serde_json::json!({
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "name": format!("{name}-1"),
                "namespace": "default",
                "labels": {"kubernetes.io/service-name": name},
            },
            "addressType": family,
            "ports": slice_ports,
            "endpoints": eps,
        }));
    }
    serde_json::json!({"apiVersion": "v1", "kind": "List", "items": items})
}

/// The probe Service, its one endpoint on backend `backend`.
fn probe_manifest(backend: usize) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: probe, namespace: default}}\nspec:\n  clusterIP: {PROBE_VIP}\n  ports: [{{name: http, port: 80}}]\n---\n\
         apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: probe-1\n  namespace: default\n  labels: {{kubernetes.io/service-name: probe}}\n\
         addressType: IPv4\nports: [{{name: http, port: {TCP_PORT}}}]\nendpoints: [{{addresses: [\"{}\"]}}]\n",
        backend_ip(backend)
    )
}

/// Feeds `rules` to `program` in the node namespace; how long it took.
fn restore(lab: &Lab, program: &str, args: &[&str], rules: &str) -> Result<Duration> {
    restore_within(lab, program, args, rules, Duration::from_secs(600))?
        .with_context(|| format!("{program} took over 10 minutes"))
}

/// `restore`, killed after `limit` (`None` then).
fn restore_within(
    lab: &Lab,
    program: &str,
    args: &[&str],
    rules: &str,
    limit: Duration,
) -> Result<Option<Duration>> {
    let t = Instant::now();
    let mut child = lab
        .node()
        .command(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {program}"))?;
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap_or(0));
    let mut stdin = child.stdin.take().context("stdin")?;
    let rules = rules.to_owned();
    // A slow reader must not block the clock: the writing has a thread.
    let writer = std::thread::spawn(move || stdin.write_all(rules.as_bytes()));
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let waiter = std::thread::spawn(move || {
        let out = child.wait_with_output();
        let _ = done_tx.send(());
        out
    });
    if done_rx.recv_timeout(limit).is_err() {
        // `ip netns exec` execs the program: the same process.
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
        let _ = waiter.join();
        let _ = writer.join();
        return Ok(None);
    }
    let out = waiter
        .join()
        .map_err(|_| anyhow::anyhow!("{program}: waiter panicked"))??;
    let _ = writer.join();
    if !out.status.success() {
        bail!("{program}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(Some(t.elapsed()))
}

/// One Service port as the rule builders see it.
struct SvcPort {
    /// Service index (the probe's is `PROBE_ID`).
    id: u32,
    /// 0 for the TCP port, 1 for the UDP one.
    tag: usize,
    name: String,
    vip: IpAddr,
    proto: &'static str,
    port: u16,
    target: u16,
    endpoints: Vec<IpAddr>,
}

const PROBE_ID: u32 = u32::MAX >> 4;

/// Every Service port: each Service's TCP 80, the measured one's UDP 53,
/// and the probe's TCP 80 (on backend 0).
fn service_ports(services: u32, measured: u32) -> Vec<SvcPort> {
    let v4 = |i| {
        endpoints(i, measured)
            .into_iter()
            .map(IpAddr::from)
            .collect()
    };
    let mut out = service_ports_of(services, measured, |i| vip(i).into(), v4);
    out.push(SvcPort {
        id: PROBE_ID,
        tag: 0,
        name: "probe-tcp-http".into(),
        vip: PROBE_VIP.into(),
        proto: "tcp",
        port: 80,
        target: TCP_PORT,
        endpoints: vec![backend_ip(0).into()],
    });
    out
}

/// Each Service's TCP 80 and the measured one's UDP 53, Service `i` at
/// `vip(i)` with `endpoints(i)`.
fn service_ports_of(
    services: u32,
    measured: u32,
    vip: impl Fn(u32) -> IpAddr,
    endpoints: impl Fn(u32) -> Vec<IpAddr>,
) -> Vec<SvcPort> {
    let mut out = Vec::new();
    for i in 0..services {
        let eps = endpoints(i);
        let ports: &[(usize, &str, &str, u16, u16)] = if i == measured {
            &[
                (1, "udp", "dns", 53, UDP_PORT),
                (0, "tcp", "http", 80, TCP_PORT),
            ]
        } else {
            &[(0, "tcp", "http", 80, TCP_PORT)]
        };
        for &(tag, proto, what, port, target) in ports {
            out.push(SvcPort {
                id: i,
                tag,
                name: format!("svc{i}-{proto}-{what}"),
                vip: vip(i),
                proto,
                port,
                target,
                endpoints: eps.clone(),
            });
        }
    }
    out
}

/// kube-proxy's chain names: `KUBE-SVC-`/`KUBE-SEP-` and 16 characters.
fn chain(kind: &str, i: u32, e: usize) -> String {
    format!("KUBE-{kind}-{i:010X}{e:06X}")
}

/// The iptables-mode rules (nat table) for the Services and the probe.
fn iptables_rules(services: u32, measured: u32) -> String {
    iptables_rules_of(service_ports(services, measured), CLUSTER_CIDR)
}

/// The iptables-mode rules (nat table) of `ports`: KUBE-SERVICES →
/// KUBE-SVC-* (`statistic --mode random`) → KUBE-SEP-* (DNAT), with the
/// masquerade marks, as kube-proxy writes them (for ip6tables too: the
/// addresses of `ports` are of one family, the pods' `cluster_cidr`'s).
fn iptables_rules_of(ports: Vec<SvcPort>, cluster_cidr: &str) -> String {
    let mut chains = String::new();
    let mut rules = String::new();
    for sp in ports {
        let SvcPort {
            id,
            tag,
            name,
            vip,
            proto,
            port,
            target,
            endpoints: eps,
        } = sp;
        let svc = chain("SVC", id, 0xff_0000 + tag);
        let host = if vip.is_ipv6() { 128 } else { 32 };
        let _ = writeln!(chains, ":{svc} - [0:0]");
        let _ = writeln!(
            rules,
            "-A KUBE-SERVICES -m comment --comment \"{name} cluster IP\" -m {proto} -p {proto} -d {vip}/{host} --dport {port} -j {svc}"
        );
        let _ = writeln!(
            rules,
            "-A {svc} -m comment --comment \"{name} cluster IP\" -m {proto} -p {proto} -d {vip}/{host} --dport {port} ! -s {cluster_cidr} -j KUBE-MARK-MASQ"
        );
        let n = eps.len();
        for (e, ep) in eps.iter().enumerate() {
            let sep = chain("SEP", id, tag * 16 + e);
            let to = SocketAddr::new(*ep, target);
            let _ = writeln!(chains, ":{sep} - [0:0]");
            let probability = if e + 1 < n {
                #[expect(clippy::cast_precision_loss, reason = "small counts")]
                let p = 1.0 / (n - e) as f64;
                format!(" -m statistic --mode random --probability {p:.10}")
            } else {
                String::new()
            };
            let _ = writeln!(
                rules,
                "-A {svc} -m comment --comment \"{name} -> {to}\"{probability} -j {sep}"
            );
            let _ = writeln!(
                rules,
                "-A {sep} -m comment --comment \"{name}\" -s {ep}/{host} -j KUBE-MARK-MASQ"
            );
            let _ = writeln!(
                rules,
                "-A {sep} -m comment --comment \"{name}\" -m {proto} -p {proto} -j DNAT --to-destination {to}"
            );
        }
    }
    format!(
        "*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n\
         :KUBE-SERVICES - [0:0]\n:KUBE-MARK-MASQ - [0:0]\n:KUBE-POSTROUTING - [0:0]\n{chains}\
         -A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
         -A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
         -A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING\n\
         -A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000\n\
         -A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN\n\
         -A KUBE-POSTROUTING -j MARK --set-xmark 0x4000/0x0\n\
         -A KUBE-POSTROUTING -j MASQUERADE --random-fully\n{rules}COMMIT\n"
    )
}

/// The nftables-mode ruleset: the `service-ips` verdict map, a chain per
/// Service with `numgen random` over its endpoint chains, as kube-proxy's
/// nftables mode writes them.
fn nft_rules(services: u32, measured: u32) -> String {
    let mut elements = Vec::new();
    let mut chains = String::new();
    for sp in service_ports(services, measured) {
        let (name, vip, proto, port, target, eps) = (
            &sp.name,
            sp.vip,
            sp.proto,
            sp.port,
            sp.target,
            &sp.endpoints,
        );
        let svc = format!("service-{name}");
        elements.push(format!("{vip} . {proto} . {port} : goto {svc}"));
        let arms: Vec<String> = (0..eps.len())
            .map(|e| format!("{e} : goto endpoint-{name}-{e}"))
            .collect();
        let _ = writeln!(
            chains,
            "chain {svc} {{\n ip daddr {vip} {proto} dport {port} ip saddr != {CLUSTER_CIDR} jump mark-for-masquerade\n numgen random mod {} vmap {{ {} }}\n}}",
            eps.len(),
            arms.join(", ")
        );
        for (e, ep) in eps.iter().enumerate() {
            let _ = writeln!(
                chains,
                "chain endpoint-{name}-{e} {{\n ip saddr {ep} jump mark-for-masquerade\n meta l4proto {proto} dnat to {ep}:{target}\n}}"
            );
        }
    }
    format!(
        "table ip kube-proxy {{\n\
         map service-ips {{\n type ipv4_addr . inet_proto . inet_service : verdict\n elements = {{ {} }}\n}}\n\
         chain mark-for-masquerade {{\n mark set mark or 0x4000\n}}\n\
         chain masquerading {{\n type nat hook postrouting priority srcnat; policy accept;\n mark and 0x4000 == 0 return\n mark set mark xor 0x4000\n masquerade fully-random\n}}\n\
         chain services {{\n ip daddr . meta l4proto . th dport vmap @service-ips\n}}\n\
         chain nat-prerouting {{\n type nat hook prerouting priority dstnat; policy accept;\n jump services\n}}\n\
         chain nat-output {{\n type nat hook output priority -100; policy accept;\n jump services\n}}\n\
         {chains}}}\n",
        elements.join(",\n ")
    )
}

/// IPVS as kube-proxy sets it up: a virtual service per ClusterIP:port,
/// round robin over the endpoints (masquerading forwarding).
fn program_ipvs(lab: &Lab, services: u32, measured: u32) -> Result<Duration> {
    let mut rules = String::new();
    for sp in service_ports(services, measured) {
        let flag = if sp.proto == "udp" { "-u" } else { "-t" };
        let _ = writeln!(rules, "-A {flag} {}:{} -s rr", sp.vip, sp.port);
        for ep in &sp.endpoints {
            let _ = writeln!(
                rules,
                "-a {flag} {}:{} -r {ep}:{} -m",
                sp.vip, sp.port, sp.target
            );
        }
    }
    // kube-proxy binds the ClusterIPs to its dummy kube-ipvs0; here, lo.
    lab.node()
        .ip(&["addr", "add", &format!("{PROBE_VIP}/32"), "dev", "lo"])?;
    restore(lab, "ipvsadm", &["-R"], &rules)
}

/// Points the probe Service at another backend, then opens connections to
/// it until that backend answers: the time the change takes to show.
fn change(lab: &Lab, mode: Mode) -> Result<Duration> {
    if mode == mode.floor() || mode.ipv6() {
        return Ok(Duration::ZERO);
    }
    let target = SocketAddr::from((PROBE_VIP, 80));
    let first = lab.pod("client").ns.run(move || probe_once(target))?;
    if first.as_deref() != Some("b0") {
        bail!("the probe Service answers {first:?} before the change");
    }
    // A prober in the client pod opens connection after connection and
    // notes when the new backend first answers.
    let file = lab.pod("client").ns.open()?;
    let deadline = Instant::now() + Duration::from_secs(10);
    let prober = std::thread::spawn(move || -> Option<Instant> {
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).ok()?;
        while Instant::now() < deadline {
            if probe_once(target).as_deref() == Some("b1") {
                return Some(Instant::now());
            }
        }
        None
    });
    let t = Instant::now();
    match mode {
        Mode::Sluice | Mode::SocketLb | Mode::Baseline => {
            lab.write_manifest("probe.yaml", &probe_manifest(1))?;
        }
        Mode::Iptables => {
            // A minimal sync (KEP-3453): only the changed chains.
            let svc = chain("SVC", PROBE_ID, 0xff_0000);
            let sep = chain("SEP", PROBE_ID, 1);
            let ep = backend_ip(1);
            let rules = format!(
                "*nat\n:{svc} - [0:0]\n:{sep} - [0:0]\n\
                 -A {svc} -m tcp -p tcp -d {PROBE_VIP}/32 --dport 80 ! -s {CLUSTER_CIDR} -j KUBE-MARK-MASQ\n-A {svc} -j {sep}\n\
                 -A {sep} -s {ep}/32 -j KUBE-MARK-MASQ\n-A {sep} -m tcp -p tcp -j DNAT --to-destination {ep}:{TCP_PORT}\nCOMMIT\n"
            );
            restore(lab, "iptables-restore", &["--noflush"], &rules)?;
        }
        Mode::Nftables => {
            let ep = backend_ip(1);
            let rules = format!(
                "add chain ip kube-proxy endpoint-probe-tcp-http-new\n\
                 add rule ip kube-proxy endpoint-probe-tcp-http-new meta l4proto tcp dnat to {ep}:{TCP_PORT}\n\
                 flush chain ip kube-proxy service-probe-tcp-http\n\
                 add rule ip kube-proxy service-probe-tcp-http numgen random mod 1 vmap {{ 0 : goto endpoint-probe-tcp-http-new }}\n"
            );
            restore(lab, "nft", &["-f", "-"], &rules)?;
        }
        Mode::Ipvs => {
            let rules = format!(
                "-a -t {PROBE_VIP}:80 -r {}:{TCP_PORT} -m\n-d -t {PROBE_VIP}:80 -r {}:{TCP_PORT}\n",
                backend_ip(1),
                backend_ip(0)
            );
            restore(lab, "ipvsadm", &["-R"], &rules)?;
        }
        Mode::NoService | Mode::Sluice6 | Mode::Ip6tables | Mode::NoService6 => {}
    }
    let seen = prober
        .join()
        .ok()
        .flatten()
        .context("the endpoint change did not take effect within 10 s")?;
    Ok(seen.saturating_duration_since(t))
}

/// One short TCP exchange; the backend's name.
fn probe_once(target: SocketAddr) -> Option<String> {
    use std::io::{BufRead as _, Write as _};
    let mut s = std::net::TcpStream::connect_timeout(&target, Duration::from_millis(500)).ok()?;
    s.set_read_timeout(Some(Duration::from_millis(500))).ok()?;
    s.write_all(b"x\n").ok()?;
    let mut line = String::new();
    std::io::BufReader::new(s).read_line(&mut line).ok()?;
    line.split_whitespace().next().map(str::to_owned)
}

/// `load` in a `sluice-bench load` process in the client pod and the lab's
/// cgroup.
fn load_in_cgroup(lab: &Lab, tcp: &Targets, udp: &Targets, window: Duration) -> Result<Sample> {
    let exe = std::env::current_exe()?;
    let mut cmd = Command::new("timeout");
    cmd.arg("60")
        .arg(exe)
        .arg("load")
        .arg(tcp[0].to_string())
        .arg(udp[0].to_string())
        .arg(window.as_secs_f64().to_string());
    let ns = lab.pod("client").ns.open()?;
    sluice_lab::enter_on_spawn(&mut cmd, &ns);
    lab.cgroup().enter_on_spawn(&mut cmd)?;
    let out = cmd.output()?;
    drop(ns);
    let text = String::from_utf8_lossy(&out.stdout);
    let fields: Vec<f64> = text
        .split_whitespace()
        .map(str::parse)
        .collect::<Result<_, _>>()
        .with_context(|| format!("the load process said {text:?}"))?;
    let [conn_per_s, p50, p99, udp_per_s, errors] = fields[..] else {
        bail!("the load process said {text:?}");
    };
    #[expect(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        reason = "a count"
    )]
    let errors = errors as u64;
    Ok(Sample {
        conn_per_s,
        p50: Duration::from_secs_f64(p50),
        p99: Duration::from_secs_f64(p99),
        udp_per_s,
        errors,
        ..Sample::default()
    })
}

/// `sluice-bench load TCP UDP SECONDS`: the load of one measurement, from
/// this process; prints `conn/s p50 p99 udp/s errors` (seconds).
pub fn load_command(tcp: SocketAddr, udp: SocketAddr, seconds: f64) -> Result<()> {
    let s = load([tcp].into(), [udp].into(), Duration::from_secs_f64(seconds))?;
    println!(
        "{} {} {} {} {}",
        s.conn_per_s,
        s.p50.as_secs_f64(),
        s.p99.as_secs_f64(),
        s.udp_per_s,
        s.errors
    );
    Ok(())
}

/// Where the load goes: one Service address, or the backends' own
/// addresses taken in turn.
type Targets = Arc<[SocketAddr]>;

/// The `n`th target, in turn.
fn nth(targets: &[SocketAddr], n: usize) -> SocketAddr {
    targets[n % targets.len()]
}

/// TCP connections per second, latency over persistent connections and
/// UDP exchanges per second, each for `window`.
fn load(tcp: Targets, udp: Targets, window: Duration) -> Result<Sample> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let errors = Arc::new(AtomicU64::new(0));
        let conn_per_s = connections(&tcp, window, &errors).await;
        let mut latencies = latencies(&tcp, window, &errors).await;
        latencies.sort();
        let udp_per_s = datagrams(&udp, window, &errors).await;
        Ok(Sample {
            conn_per_s,
            p50: percentile(&latencies, 0.50).unwrap_or_default(),
            p99: percentile(&latencies, 0.99).unwrap_or_default(),
            udp_per_s,
            errors: errors.load(Ordering::Relaxed),
            ..Sample::default()
        })
    })
}

const CONCURRENCY: usize = 16;
const IO_TIMEOUT: Duration = Duration::from_secs(1);

/// Connect, one request, its response, close: as many as `CONCURRENCY`
/// tasks complete in `window`, per second.
async fn connections(targets: &Targets, window: Duration, errors: &Arc<AtomicU64>) -> f64 {
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for task in 0..CONCURRENCY {
        let (stop, done, errors) = (stop.clone(), done.clone(), errors.clone());
        let targets = targets.clone();
        tasks.push(tokio::spawn(async move {
            let mut n = task;
            while !stop.load(Ordering::Relaxed) {
                let target = nth(&targets, n);
                n += CONCURRENCY;
                let ok = tokio::time::timeout(IO_TIMEOUT, async {
                    let mut s = TcpStream::connect(target).await?;
                    // Close with a reset: no TIME_WAIT to run out of ports.
                    nix::sys::socket::setsockopt(
                        &s,
                        nix::sys::socket::sockopt::Linger,
                        &libc::linger {
                            l_onoff: 1,
                            l_linger: 0,
                        },
                    )?;
                    s.write_all(b"x\n").await?;
                    let mut line = String::new();
                    BufReader::new(&mut s).read_line(&mut line).await?;
                    std::io::Result::Ok(!line.is_empty())
                })
                .await;
                if matches!(ok, Ok(Ok(true))) {
                    done.fetch_add(1, Ordering::Relaxed);
                } else {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    finish(tasks, &stop, &done, window).await
}

/// Lets `tasks` run for `window`, stops them, and gives what they did
/// (`done`) per second.
async fn finish(
    tasks: Vec<tokio::task::JoinHandle<()>>,
    stop: &AtomicBool,
    done: &AtomicU64,
    window: Duration,
) -> f64 {
    let t = Instant::now();
    tokio::time::sleep(window).await;
    let n = done.load(Ordering::Relaxed);
    let elapsed = t.elapsed();
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        let _ = task.await;
    }
    #[expect(clippy::cast_precision_loss, reason = "a rate")]
    let rate = n as f64 / elapsed.as_secs_f64();
    rate
}

/// Request/response latencies over `CONCURRENCY / 4` persistent
/// connections.
async fn latencies(targets: &Targets, window: Duration, errors: &Arc<AtomicU64>) -> Vec<Duration> {
    let deadline = Instant::now() + window;
    let mut tasks = Vec::new();
    for task in 0..CONCURRENCY / 4 {
        let errors = errors.clone();
        let target = nth(targets, task);
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            let Ok(Ok(s)) = tokio::time::timeout(IO_TIMEOUT, TcpStream::connect(target)).await
            else {
                errors.fetch_add(1, Ordering::Relaxed);
                return out;
            };
            let _ = s.set_nodelay(true);
            let mut s = BufReader::new(s);
            let mut line = String::new();
            while Instant::now() < deadline {
                let t = Instant::now();
                line.clear();
                let ok = tokio::time::timeout(IO_TIMEOUT, async {
                    s.get_mut().write_all(b"x\n").await?;
                    s.read_line(&mut line).await
                })
                .await;
                if matches!(ok, Ok(Ok(n)) if n > 0) {
                    out.push(t.elapsed());
                } else {
                    errors.fetch_add(1, Ordering::Relaxed);
                    break;
                }
            }
            out
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        if let Ok(v) = task.await {
            all.extend(v);
        }
    }
    all
}

/// UDP request/response exchanges per second, `CONCURRENCY` sockets.
async fn datagrams(targets: &Targets, window: Duration, errors: &Arc<AtomicU64>) -> f64 {
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for task in 0..CONCURRENCY {
        let (stop, done, errors) = (stop.clone(), done.clone(), errors.clone());
        let target = nth(targets, task);
        tasks.push(tokio::spawn(async move {
            let any = sluice_lab::lab::unspecified(target);
            let Ok(s) = UdpSocket::bind(any).await else {
                return;
            };
            if s.connect(target).await.is_err() {
                return;
            }
            let mut buf = [0u8; 512];
            while !stop.load(Ordering::Relaxed) {
                let ok = async {
                    s.send(b"x\n").await?;
                    tokio::time::timeout(Duration::from_millis(200), s.recv(&mut buf))
                        .await
                        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))?
                }
                .await;
                if ok.is_ok() {
                    done.fetch_add(1, Ordering::Relaxed);
                } else {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    finish(tasks, &stop, &done, window).await
}

/// An event-driven responder in a backend pod (TCP and UDP, answering
/// each line or datagram with the pod's name), on a thread of its own.
struct ResponderThread {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ResponderThread {
    fn start(ns: &Netns, name: &str) -> Result<Self> {
        let file = ns.open()?;
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (stop2, reply) = (stop.clone(), format!("{name}\n"));
        let thread = std::thread::spawn(move || {
            if nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).is_err() {
                return;
            }
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(serve(stop2, reply, ready_tx));
        });
        ready_rx
            .recv_timeout(Duration::from_secs(5))
            .context("the responder did not start")?;
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }
}

async fn serve(stop: Arc<AtomicBool>, reply: String, ready: std::sync::mpsc::Sender<()>) {
    let (Ok(tcp), Ok(udp)) = (
        // "::" takes IPv4 too (as IPv4-mapped addresses).
        tokio::net::TcpListener::bind(("::", TCP_PORT)).await,
        UdpSocket::bind(("::", UDP_PORT)).await,
    ) else {
        return;
    };
    let _ = ready.send(());
    let reply: Arc<str> = reply.into();
    let udp_reply = reply.clone();
    let udp_task = tokio::spawn(async move {
        let mut buf = [0u8; 512];
        while let Ok((_, peer)) = udp.recv_from(&mut buf).await {
            let _ = udp.send_to(udp_reply.as_bytes(), peer).await;
        }
    });
    while !stop.load(Ordering::Relaxed) {
        let Ok(Ok((conn, _))) =
            tokio::time::timeout(Duration::from_millis(100), tcp.accept()).await
        else {
            continue;
        };
        let reply = reply.clone();
        tokio::spawn(async move {
            let _ = conn.set_nodelay(true);
            let mut conn = BufReader::new(conn);
            let mut line = String::new();
            loop {
                line.clear();
                match conn.read_line(&mut line).await {
                    Ok(n) if n > 0 => {
                        if conn.get_mut().write_all(reply.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                    _ => return,
                }
            }
        });
    }
    udp_task.abort();
}

impl Drop for ResponderThread {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// How the run went, for the table's header and notes.
struct RunInfo<'a> {
    scales: &'a [u32],
    rounds: u32,
    seconds: f64,
    ipvs: bool,
    took: Duration,
    svg: &'a std::path::Path,
    too_slow: &'a BTreeMap<Mode, u32>,
    limit: Duration,
}

fn render(medians: &BTreeMap<Key, Sample>, info: &RunInfo<'_>) -> String {
    let RunInfo {
        scales,
        rounds,
        seconds,
        ipvs,
        took,
        svg,
        too_slow,
        limit,
    } = *info;
    let cpu = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines().find_map(|l| {
                l.strip_prefix("model name")?
                    .split(':')
                    .nth(1)
                    .map(|s| s.trim().to_owned())
            })
        })
        .unwrap_or_default();
    let command = std::env::args().skip(1).collect::<Vec<_>>().join(" ");
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# cargo xtask bench dataplane\n\n`sluice-bench {command}`: {} rounds, medians; {seconds} s per throughput measurement, {CONCURRENCY} concurrent clients, \
         one client pod and {BACKENDS} backend pods (tokio responders) as network namespaces, each mode in a fresh node namespace. \
         {}; {cpu}. Took {:.0} s.\n",
        rounds,
        machine(),
        took.as_secs_f64()
    );
    if !ipvs {
        out.push_str("kube-proxy IPVS: **unavailable** (this kernel has no IPVS: no `ip_vs` module, no /proc/net/ip_vs).\n\n");
    }
    out.push_str("| Services | mode | TCP conn/s | vs floor | latency p50 | latency p99 | UDP req/s | program all | endpoint change | errors |\n");
    out.push_str("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for &services in scales {
        // The "measured last" case exists at 10,000 only.
        let cases: &[bool] = if services == 10_000 {
            &[false, true]
        } else {
            &[false]
        };
        for &last in cases {
            for mode in Mode::ALL {
                let Some(s) = medians.get(&(mode, services, last)) else {
                    if too_slow.get(&mode).is_some_and(|at| services >= *at) {
                        let _ = writeln!(
                            out,
                            "| {services}{} | {} | - | - | - | - | - | > {} s (stopped) | - | - |",
                            if last { " (measured last)" } else { "" },
                            mode.label(),
                            limit.as_secs()
                        );
                    }
                    continue;
                };
                let floor = medians.get(&(mode.floor(), services, false));
                let floor = floor.map_or(0.0, |s| s.conn_per_s);
                let vs = if floor > 0.0 {
                    format!("{:.0}%", 100.0 * s.conn_per_s / floor)
                } else {
                    "-".into()
                };
                let _ = writeln!(
                    out,
                    "| {services}{} | {} | {:.0} | {vs} | {:.0} µs | {:.0} µs | {:.0} | {} | {} | {} |",
                    if last { " (measured last)" } else { "" },
                    mode.label(),
                    s.conn_per_s,
                    micros(s.p50),
                    micros(s.p99),
                    s.udp_per_s,
                    if mode == mode.floor() {
                        "-".into()
                    } else {
                        format!("{:.0} ms", s.program.as_secs_f64() * 1e3)
                    },
                    s.change.map_or_else(
                        || "-".into(),
                        |c| format!("{:.1} ms", c.as_secs_f64() * 1e3)
                    ),
                    s.errors
                );
            }
        }
    }
    let _ = writeln!(
        out,
        "\nPlot: `{}`. Targets (issue 7): Sluice's connection rate within 10% of itself from 100 to 30,000 Services; at 10,000, ≥ 2× iptables and within 15% of the floor; \
         programming 10,000 Services < 1 s; an endpoint change < 10 ms. Socket LB (issue 9): within 5% of the floor at 10,000. \
         Socket LB's client is a process in the lab's cgroup; its endpoint change is measured through TC (the same maps). \
         The IPv6 rows (issue 20: Sluice ahead of ip6tables, near the IPv6 floor) run at the largest scale only, through an IPv6 ClusterIP \
         among that many IPv6 Services, against the backends' IPv6 addresses; their \"vs floor\" is against the IPv6 floor.",
        svg.display()
    );
    out
}

/// A plot panel: its title and the value it shows.
type Panel = (&'static str, fn(&Sample) -> f64);

/// Two panels, connections per second and p99 latency against the number
/// of Services (log scale), one line per mode.
fn plot(medians: &BTreeMap<Key, Sample>, scales: &[u32]) -> String {
    let (w, h, pad) = (900.0_f64, 360.0_f64, 60.0_f64);
    let panel_w = (w - 3.0 * pad) / 2.0;
    let xs: Vec<f64> = scales.iter().map(|s| f64::from(*s).log10()).collect();
    let (xmin, xmax) = (
        xs.iter().copied().fold(f64::INFINITY, f64::min),
        xs.iter().copied().fold(f64::NEG_INFINITY, f64::max),
    );
    let xspan = (xmax - xmin).max(1e-9);
    let mut out = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{}\" font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n",
        h + 40.0
    );
    let panels: [Panel; 2] = [
        ("TCP connections/s", |s| s.conn_per_s),
        ("request latency p99 (µs)", |s| micros(s.p99)),
    ];
    for (p, (title, value)) in panels.iter().enumerate() {
        #[expect(clippy::cast_precision_loss, reason = "a panel index")]
        let x0 = pad + p as f64 * (panel_w + pad);
        let ymax = medians
            .iter()
            .filter(|(k, _)| !k.2)
            .map(|(_, s)| value(s))
            .fold(0.0_f64, f64::max)
            .max(1.0)
            * 1.1;
        let px = |x: f64| x0 + (x - xmin) / xspan * panel_w;
        let py = |y: f64| pad + h - 2.0 * pad - y / ymax * (h - 2.0 * pad) + 0.0;
        let _ = writeln!(
            out,
            "<text x=\"{}\" y=\"20\" text-anchor=\"middle\" font-weight=\"bold\">{title} vs Services</text>",
            x0 + panel_w / 2.0
        );
        let _ = writeln!(
            out,
            "<line x1=\"{x0}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"black\"/><line x1=\"{x0}\" y1=\"{pad}\" x2=\"{x0}\" y2=\"{}\" stroke=\"black\"/>",
            py(0.0),
            x0 + panel_w,
            py(0.0),
            py(0.0)
        );
        for (i, s) in scales.iter().enumerate() {
            let x = px(xs.get(i).copied().unwrap_or(0.0));
            let _ = writeln!(
                out,
                "<text x=\"{x}\" y=\"{}\" text-anchor=\"middle\">{s}</text>",
                py(0.0) + 16.0
            );
        }
        for frac in [0.5, 1.0] {
            let v = ymax / 1.1 * frac;
            let _ = writeln!(
                out,
                "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{v:.0}</text>",
                x0 - 4.0,
                py(v)
            );
        }
        for mode in Mode::ALL {
            let points: Vec<String> = scales
                .iter()
                .enumerate()
                .filter_map(|(i, s)| {
                    let sample = medians.get(&(mode, *s, false))?;
                    Some(format!("{:.1},{:.1}", px(*xs.get(i)?), py(value(sample))))
                })
                .collect();
            if points.is_empty() {
                continue;
            }
            let _ = writeln!(
                out,
                "<polyline fill=\"none\" stroke=\"{}\" stroke-width=\"2\" points=\"{}\"/>",
                mode.color(),
                points.join(" ")
            );
        }
    }
    for (i, mode) in Mode::ALL.iter().enumerate() {
        #[expect(clippy::cast_precision_loss, reason = "a legend index")]
        let x = pad + i as f64 * 160.0;
        let _ = writeln!(
            out,
            "<rect x=\"{x}\" y=\"{}\" width=\"12\" height=\"12\" fill=\"{}\"/><text x=\"{}\" y=\"{}\">{}</text>",
            h + 10.0,
            mode.color(),
            x + 16.0,
            h + 21.0,
            mode.label()
        );
    }
    out.push_str("</svg>\n");
    out
}
