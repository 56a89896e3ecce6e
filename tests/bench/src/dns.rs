//! `cargo xtask bench dns`: dnsperf against Sluice's DNS and the servers
//! people use today, in one run, with one query mix.
//!
//! Every server listens in the lab's node namespace on an address of its
//! own (on `lo`), so that queries from the client pod take the same path:
//! - Sluice: the agent (release) with `--dns-ip`, the cluster from manifests;
//! - NSD: the same cluster zone as a static zone file (response-rate
//!   limiting off), the fastest kind of authoritative server;
//! - Unbound and dnsmasq as NodeLocal-style caches: the cluster zone from
//!   NSD, other names from the upstream.
//!
//! An upstream dnsmasq (in a pod) serves the external name.
//!
//! For each server: the most queries per second dnsperf gets through (and
//! the server's CPU time over that run, hence QPS per core), then a run at
//! half that rate with every response's latency, for p50/p99.

use std::{
    fmt::Write as _,
    fs,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use sluice_lab::{AgentOptions, Lab, LabDns, process::Process};

use crate::stats::{ms, percentile};

const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 2);
const UPSTREAM: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 53);
const SLUICE: Ipv4Addr = Ipv4Addr::new(169, 254, 20, 10);
const NSD: Ipv4Addr = Ipv4Addr::new(169, 254, 20, 11);
const UNBOUND: Ipv4Addr = Ipv4Addr::new(169, 254, 20, 12);
const DNSMASQ: Ipv4Addr = Ipv4Addr::new(169, 254, 20, 13);
const EXTERNAL: &str = "www.example.test";
/// The cluster's ClusterIPs start here.
const FIRST_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 1, 0);

#[derive(clap::Args)]
pub struct Args {
    /// Services in the cluster zone.
    #[arg(long, default_value_t = 1000)]
    services: u32,
    /// Seconds per dnsperf run.
    #[arg(long, default_value_t = 10)]
    seconds: u32,
    /// dnsperf clients (sockets) and threads.
    #[arg(long, default_value_t = 8)]
    clients: u32,
    /// Where to write the table (Markdown).
    #[arg(long, default_value = "target/bench/dns.md")]
    out: PathBuf,
}

struct Row {
    server: &'static str,
    cluster_qps: f64,
    cluster_cpu: f64,
    qps: f64,
    lost: f64,
    p50: Option<Duration>,
    p99: Option<Duration>,
    rcodes: String,
}

pub fn run(args: &Args) -> Result<()> {
    let mut lab = Lab::new()?;
    lab.add_pod("client", CLIENT)?;
    lab.add_dnsmasq(
        "upstream",
        UPSTREAM,
        &[
            "--local=/example.test/",
            &format!("--host-record={EXTERNAL},192.0.2.10"),
            "--local-ttl=30",
        ],
    )?;
    for ip in [NSD, UNBOUND, DNSMASQ] {
        lab.node()
            .ip(&["addr", "add", &format!("{ip}/32"), "dev", "lo"])?;
    }
    let work = lab.dir().join("dns-bench");
    fs::create_dir_all(&work)?;
    let queries = Queries {
        mix: work.join("queries.txt"),
        cluster: work.join("cluster-queries.txt"),
    };
    fs::write(&queries.mix, query_mix(args.services, true))?;
    fs::write(&queries.cluster, query_mix(args.services, false))?;

    lab.write_manifest("cluster.yaml", &manifests(args.services))?;
    let opts = AgentOptions {
        service_cidr: Some("10.96.0.0/12".into()),
        dns: Some(LabDns {
            ip: SLUICE.into(),
            upstreams: vec![(UPSTREAM, 53).into()],
        }),
        ..AgentOptions::default()
    };
    let agent_pid = lab.start_agent(&opts)?.pid().context("agent pid")?;
    let mut nsd = start_nsd(&lab, &work, args.services)?;
    let mut unbound = start_unbound(&lab, &work)?;
    let mut dnsmasq = start_dnsmasq(&lab)?;

    let mut rows = Vec::new();
    let servers: [(&'static str, Ipv4Addr, u32); 4] = [
        ("Sluice", SLUICE, agent_pid),
        ("NSD 4.6 (static zone)", NSD, nsd.pid().context("nsd pid")?),
        (
            "Unbound 1.17 (cache)",
            UNBOUND,
            unbound.pid().context("unbound pid")?,
        ),
        (
            "dnsmasq 2.90 (cache)",
            DNSMASQ,
            dnsmasq.pid().context("dnsmasq pid")?,
        ),
    ];
    for (server, ip, pid) in servers {
        rows.push(measure(&lab, server, ip, pid, &queries, args)?);
    }
    nsd.signal_and_wait(nix::sys::signal::Signal::SIGTERM)?;
    unbound.signal_and_wait(nix::sys::signal::Signal::SIGTERM)?;
    dnsmasq.signal_and_wait(nix::sys::signal::Signal::SIGTERM)?;

    crate::stats::publish(&render(&rows, args), &args.out)
}

/// The query files: the whole mix, and its cluster names alone.
struct Queries {
    mix: PathBuf,
    cluster: PathBuf,
}

/// Maximum rate on cluster names alone (with the server's CPU use over
/// it), the same on the whole mix, then half that with every latency
/// recorded.
fn measure(
    lab: &Lab,
    server: &'static str,
    ip: Ipv4Addr,
    pid: u32,
    queries: &Queries,
    args: &Args,
) -> Result<Row> {
    // Warm caches, and check the server answers at all.
    let warm = dnsperf(
        lab,
        ip,
        &queries.mix,
        &["-n", "1", "-c", "1", "-q", "10"],
        false,
    )?;
    if warm.completed == 0 {
        bail!("{server} answered no query");
    }
    let (seconds, clients) = (args.seconds.to_string(), args.clients.to_string());
    let flat_out = ["-l", &seconds, "-c", &clients, "-T", "2", "-q", "500"];
    let cpu_before = cpu_seconds(pid);
    let t = Instant::now();
    let cluster = dnsperf(lab, ip, &queries.cluster, &flat_out, false)?;
    let cluster_cpu = (cpu_seconds(pid) - cpu_before) / t.elapsed().as_secs_f64();
    let max = dnsperf(lab, ip, &queries.mix, &flat_out, false)?;
    let half = format!("{:.0}", (max.qps / 2.0).max(1.0));
    let paced = dnsperf(
        lab,
        ip,
        &queries.mix,
        &["-l", &seconds, "-c", &clients, "-Q", &half],
        true,
    )?;
    let mut latencies = paced.latencies;
    latencies.sort();
    println!(
        "{server}: cluster names {:.0} QPS at {cluster_cpu:.2} CPUs; whole mix {:.0} QPS",
        cluster.qps, max.qps
    );
    Ok(Row {
        server,
        cluster_qps: cluster.qps,
        cluster_cpu,
        qps: max.qps,
        lost: max.lost_percent,
        p50: percentile(&latencies, 0.50),
        p99: percentile(&latencies, 0.99),
        rcodes: max.rcodes,
    })
}

fn vip(i: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(FIRST_VIP) + i)
}

/// `svc-<i>` in `default`: 80/TCP named `http`, one endpoint.
fn manifests(services: u32) -> String {
    let mut out = String::new();
    for i in 0..services {
        let _ = write!(
            out,
            "apiVersion: v1\nkind: Service\nmetadata: {{name: svc-{i}, namespace: default}}\nspec:\n  clusterIP: {}\n  ports: [{{name: http, port: 80}}]\n---\n\
             apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: svc-{i}-1\n  namespace: default\n  labels: {{kubernetes.io/service-name: svc-{i}}}\n\
             addressType: IPv4\nports: [{{name: http, port: 8080}}]\nendpoints: [{{addresses: [\"{}\"]}}]\n---\n",
            vip(i),
            Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 244, 16, 0)) + i)
        );
    }
    out
}

/// The same cluster as a zone file for NSD.
fn zone_file(services: u32) -> String {
    let mut out = String::from(
        "$ORIGIN cluster.local.\n$TTL 5\n@ IN SOA ns.dns.cluster.local. hostmaster.cluster.local. 1 7200 1800 86400 5\n@ IN NS ns.dns\nns.dns IN A 169.254.20.11\n\
         dns-version IN TXT \"1.1.0\"\n",
    );
    for i in 0..services {
        let _ = writeln!(out, "svc-{i}.default.svc IN A {}", vip(i));
        let _ = writeln!(
            out,
            "_http._tcp.svc-{i}.default.svc IN SRV 0 100 80 svc-{i}.default.svc"
        );
    }
    out
}

/// Cluster A (50%), SRV (20%), NXDOMAIN from search-list expansion (20%:
/// an external name with the pod's first search suffix) and, with
/// `external`, the external name itself (10%).
fn query_mix(services: u32, external: bool) -> String {
    let mut out = String::new();
    let mut seed: u64 = 0x00d5_5eed;
    for n in 0..10_000u32 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let i = u32::try_from(seed % u64::from(services.max(1))).unwrap_or(0);
        let _ = match n % 10 {
            0..=4 => writeln!(out, "svc-{i}.default.svc.cluster.local A"),
            5 | 6 => writeln!(out, "_http._tcp.svc-{i}.default.svc.cluster.local SRV"),
            7 | 8 => writeln!(out, "{EXTERNAL}.default.svc.cluster.local A"),
            _ if external => writeln!(out, "{EXTERNAL} A"),
            _ => writeln!(out, "svc-{i}.default.svc.cluster.local AAAA"),
        };
    }
    out
}

/// A server process in the node namespace, ready when `ready` shows.
fn start_in_node(lab: &Lab, label: &'static str, mut cmd: Command, ready: &str) -> Result<Process> {
    let file = lab.node().open()?;
    sluice_lab::enter_on_spawn(&mut cmd, &file);
    let echo = std::env::var_os("SLUICE_LAB_ECHO").is_some();
    let mut process = Process::spawn(label, cmd, echo)?;
    drop(file);
    process
        .wait_for(ready, 0, Duration::from_secs(20))
        .with_context(|| format!("{label} did not start"))?;
    Ok(process)
}

fn start_nsd(lab: &Lab, work: &Path, services: u32) -> Result<Process> {
    let dir = work.join("nsd");
    fs::create_dir_all(&dir)?;
    fs::write(dir.join("cluster.local.zone"), zone_file(services))?;
    let conf = dir.join("nsd.conf");
    fs::write(
        &conf,
        format!(
            "server:\n  ip-address: {NSD}\n  port: 53\n  username: \"\"\n  chroot: \"\"\n  zonesdir: \"{d}\"\n  database: \"\"\n  pidfile: \"\"\n\
             xfrdfile: \"{d}/xfrd.state\"\n  zonelistfile: \"{d}/zone.list\"\n  server-count: 2\n  reuseport: yes\n  verbosity: 1\n  rrl-ratelimit: 0\n  rrl-whitelist-ratelimit: 0\n\
             remote-control:\n  control-enable: no\nzone:\n  name: cluster.local\n  zonefile: cluster.local.zone\n",
            d = dir.display()
        ),
    )?;
    let mut cmd = Command::new("nsd");
    cmd.arg("-d").arg("-c").arg(&conf);
    start_in_node(lab, "nsd", cmd, "nsd started")
}

fn start_unbound(lab: &Lab, work: &Path) -> Result<Process> {
    let dir = work.join("unbound");
    fs::create_dir_all(&dir)?;
    let conf = dir.join("unbound.conf");
    fs::write(
        &conf,
        format!(
            "server:\n  interface: {UNBOUND}\n  port: 53\n  access-control: 0.0.0.0/0 allow\n  num-threads: 2\n  so-reuseport: yes\n  chroot: \"\"\n  username: \"\"\n\
             directory: \"{d}\"\n  pidfile: \"\"\n  use-syslog: no\n  logfile: \"\"\n  verbosity: 1\n  module-config: \"iterator\"\n  do-ip6: no\n\
             do-not-query-localhost: no\n  qname-minimisation: no\n  ratelimit: 0\n  local-zone: \"test.\" nodefault\n\
             domain-insecure: \"cluster.local\"\n  domain-insecure: \"example.test\"\n\
             stub-zone:\n  name: \"cluster.local.\"\n  stub-addr: {NSD}\n\
             forward-zone:\n  name: \"example.test.\"\n  forward-addr: {UPSTREAM}\n",
            d = dir.display()
        ),
    )?;
    let mut cmd = Command::new("unbound");
    cmd.arg("-d").arg("-c").arg(&conf);
    start_in_node(lab, "unbound", cmd, "start of service")
}

fn start_dnsmasq(lab: &Lab) -> Result<Process> {
    let mut cmd = sluice_lab::lab::dnsmasq_command(DNSMASQ);
    cmd.arg("--cache-size=10000")
        .arg(format!("--server=/cluster.local/{NSD}"))
        .arg(format!("--server={UPSTREAM}"));
    start_in_node(lab, "dnsmasq", cmd, "started, version")
}

struct Perf {
    completed: u64,
    qps: f64,
    lost_percent: f64,
    rcodes: String,
    latencies: Vec<Duration>,
}

/// dnsperf in the client pod; `verbose` collects each response's latency.
fn dnsperf(
    lab: &Lab,
    server: Ipv4Addr,
    queries: &Path,
    extra: &[&str],
    verbose: bool,
) -> Result<Perf> {
    let mut cmd = lab.pod("client").ns.command("dnsperf");
    cmd.arg("-s")
        .arg(server.to_string())
        .arg("-d")
        .arg(queries)
        .args(extra)
        .args(["-t", "2"]);
    if verbose {
        cmd.arg("-v");
    }
    let out = cmd.output().context("running dnsperf")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!("dnsperf: {}{}", text, String::from_utf8_lossy(&out.stderr));
    }
    let field = |label: &str| -> Option<&str> {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(label))
            .and_then(|rest| rest.split_whitespace().next())
    };
    let completed = field("Queries completed:")
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    let lost_percent = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Queries lost:"))
        .and_then(|rest| rest.split('(').nth(1))
        .and_then(|p| p.trim_end_matches([')', '%']).parse().ok())
        .unwrap_or(0.0);
    let qps = field("Queries per second:")
        .and_then(|n| n.parse().ok())
        .unwrap_or(0.0);
    let rcodes = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Response codes:"))
        .unwrap_or_default()
        .trim()
        .to_owned();
    // Verbose lines: `> NOERROR name type 0.000123`.
    let latencies = text
        .lines()
        .filter(|l| l.starts_with('>'))
        .filter_map(|l| l.split_whitespace().last()?.parse::<f64>().ok())
        .map(Duration::from_secs_f64)
        .collect();
    Ok(Perf {
        completed,
        qps,
        lost_percent,
        rcodes,
        latencies,
    })
}

/// User plus system CPU time of a process, its threads and its children
/// (NSD forks its servers), in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100);
    #[expect(clippy::cast_precision_loss, reason = "ticks per second")]
    let hz = hz as f64;
    let mut tree = vec![pid];
    let mut total = 0.0;
    while let Some(p) = tree.pop() {
        let Some(fields) = stat_fields(p) else {
            continue;
        };
        let ticks = |i: usize| -> f64 {
            fields
                .get(i)
                .and_then(|f| f.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        // utime and stime are fields 14 and 15 of `proc_pid_stat(5)`.
        total += (ticks(14) + ticks(15)) / hz;
        tree.extend(children(p));
    }
    total
}

/// The fields of /proc/<pid>/stat, numbered from 1 as in `proc_pid_stat(5)`
/// (the command name, which may hold spaces, is field 2).
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (head, rest) = stat.rsplit_once(')')?;
    let mut fields = vec![
        String::new(),
        head.split_whitespace().next()?.to_owned(),
        String::new(),
    ];
    fields.extend(rest.split_whitespace().map(str::to_owned));
    Some(fields)
}

fn children(pid: u32) -> Vec<u32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|child| {
            stat_fields(*child).and_then(|f| f.get(4)?.parse::<u32>().ok()) == Some(pid)
        })
        .collect()
}

fn render(rows: &[Row], args: &Args) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# cargo xtask bench dns\n\ndnsperf 2.10 from a pod namespace; every server on a node-namespace address. {} Services; cluster names: \
         the mix without its external name, which becomes a cluster AAAA (NODATA). Whole mix: 50% cluster A, 20% SRV, 20% NXDOMAIN by search-list expansion, 10% an external name (served by an upstream dnsmasq; \
         NSD, authoritative only, refuses it). {} s per run, {} clients. {} shared by dnsperf and the server.\n",
        args.services,
        args.seconds,
        args.clients,
        crate::stats::machine()
    );
    out.push_str("| server | cluster names: max QPS | server CPUs used | QPS per CPU | whole mix: max QPS | lost | p50 at 50% load | p99 at 50% load | response codes (whole mix) |\n");
    out.push_str("|---|---:|---:|---:|---:|---:|---:|---:|---|\n");
    for r in rows {
        let per_cpu = if r.cluster_cpu > 0.0 {
            r.cluster_qps / r.cluster_cpu
        } else {
            0.0
        };
        let _ = writeln!(
            out,
            "| {} | {:.0} | {:.2} | {per_cpu:.0} | {:.0} | {:.2}% | {} | {} | {} |",
            r.server,
            r.cluster_qps,
            r.cluster_cpu,
            r.qps,
            r.lost,
            ms(r.p50, 3),
            ms(r.p99, 3),
            r.rcodes
        );
    }
    out.push_str("\nTargets (issue 5): at least NSD's QPS per CPU on cluster names; p99 under 1 ms at 50% of maximum load.\n");
    out
}
