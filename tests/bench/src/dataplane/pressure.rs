//! The conntrack-pressure row of `bench dataplane`: Sluice's conntrack and
//! netfilter's (kube-proxy's iptables mode) with the same maximum, filled
//! by a pod's burst of new UDP flows while idle TCP connections wait.
//!
//! netfilter's `nf_conntrack_max` can only be set in the root network
//! namespace, which the benchmarks leave alone; Sluice gets the same number
//! (`--conntrack-size`) instead. It counts entries, two per flow, where
//! netfilter counts connections: at the same number Sluice holds half the
//! flows.
//!
//! Each mode: 100 idle connections through a ClusterIP; then new UDP flows
//! from one pod to sixteen UDP Services, from an `AF_PACKET` generator,
//! until four times the maximum have been sent; then, for the window, more
//! new flows as fast as the generator goes, counting what reaches the
//! backends (the rate of new flows the node sustains with its table full);
//! last, one request on each idle connection (lost: an error, or another
//! backend answering).

use std::{
    fmt::Write as _,
    net::{IpAddr, SocketAddr, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow};
use sluice_lab::{
    AgentOptions, Lab, Pod,
    frame::{self, Hop, RawSocket},
    lab::request_line,
    manifest::{self, Endpoint, Port},
};

use super::{
    BACKENDS, CLIENT, Mode, SvcPort, TCP_PORT, UDP_PORT, backend_ip, backend_name,
    iptables_rules_of, restore, topology, vip,
};

/// UDP Services the new flows go to (64,512 source ports each).
const UDP_SERVICES: u32 = 16;
const IDLE: usize = 100;
const T: Duration = Duration::from_secs(2);

/// One mode's pressure measurement.
struct Pressure {
    pub mode: Mode,
    /// The maximum: netfilter's connections, Sluice's entries.
    pub maximum: u64,
    /// New flows sent and delivered to a backend per second, table full.
    pub sent_per_s: f64,
    pub delivered_per_s: f64,
    /// Idle connections that broke.
    pub lost: usize,
    /// Sluice: the last garbage collection with the table full (entries
    /// read, seconds).
    pub gc: Option<(u64, f64)>,
}

/// The measured Services: `web` (TCP 80) and the UDP ones, all on every
/// backend.
fn ports() -> Vec<SvcPort> {
    let eps: Vec<IpAddr> = (0..BACKENDS).map(|i| backend_ip(i).into()).collect();
    let mut out = vec![SvcPort {
        id: 0,
        tag: 0,
        name: "web-tcp-http".into(),
        vip: vip(0).into(),
        proto: "tcp",
        port: 80,
        target: TCP_PORT,
        endpoints: eps.clone(),
    }];
    for k in 1..=UDP_SERVICES {
        out.push(SvcPort {
            id: k,
            tag: 1,
            name: format!("udp{k}-udp-dns"),
            vip: vip(k).into(),
            proto: "udp",
            port: 53,
            target: UDP_PORT,
            endpoints: eps.clone(),
        });
    }
    out
}

/// The same Services as manifests.
fn write_manifests(lab: &Lab) -> Result<()> {
    let eps: Vec<Endpoint> = (0..BACKENDS)
        .map(|i| Endpoint::ready(backend_ip(i)))
        .collect();
    for sp in ports() {
        let (port, target) = if sp.proto == "tcp" {
            (Port::tcp("p", sp.port), Port::tcp("p", sp.target))
        } else {
            (Port::udp("p", sp.port), Port::udp("p", sp.target))
        };
        let name = format!("svc{}", sp.id);
        let IpAddr::V4(vip) = sp.vip else {
            continue;
        };
        lab.write_manifest(
            &format!("{name}.yaml"),
            &manifest::service_with_endpoints(&name, vip, &[port], &[target], &eps),
        )?;
    }
    Ok(())
}

/// netfilter's maximum as this namespace sees it (set in the root one).
fn nf_conntrack_max(lab: &Lab) -> Result<u64> {
    lab.node()
        .run(|| std::fs::read_to_string("/proc/sys/net/netfilter/nf_conntrack_max"))??
        .trim()
        .parse()
        .context("nf_conntrack_max")
}

/// The section of the table: Sluice's TC path and netfilter's side by side
/// (those of `modes` that are among them), and a collector pass over a
/// full table; empty when neither mode runs.
pub fn section(modes: Option<&[Mode]>, window: Duration, quick: bool) -> Result<String> {
    let mut rows = Vec::new();
    for mode in [Mode::Sluice, Mode::Iptables] {
        if modes.is_some_and(|only| !only.contains(&mode)) {
            continue;
        }
        let p = measure(mode, window.max(Duration::from_secs(1)), quick)
            .with_context(|| format!("{} under conntrack pressure", mode.label()))?;
        println!(
            "conntrack pressure · {:<22} maximum {}  {:>9.0} new flows/s sent  {:>9.0} delivered  {} of 100 idle connections lost",
            mode.label(),
            p.maximum,
            p.sent_per_s,
            p.delivered_per_s,
            p.lost
        );
        rows.push(p);
    }
    if rows.is_empty() {
        return Ok(String::new());
    }
    let full = rows
        .iter()
        .find(|p| p.mode == Mode::Sluice)
        .map(|p| gc_cost(u32::try_from(p.maximum).unwrap_or(u32::MAX)))
        .transpose()?;
    if let Some((n, read, removed)) = full {
        println!(
            "conntrack collection over a full table of {n} entries: {:.1} ms reading, {:.1} ms removing all",
            read * 1e3,
            removed * 1e3
        );
    }
    Ok(render(&rows, full))
}

fn measure(mode: Mode, window: Duration, quick: bool) -> Result<Pressure> {
    let mut topo = topology()?;
    let lab = &mut topo.lab;
    // iptables first: loading the rules makes netfilter track this namespace.
    let rules = iptables_rules_of(ports(), super::CLUSTER_CIDR);
    if mode == Mode::Iptables {
        restore(lab, "iptables-restore", &[], &rules)?;
    }
    let maximum = nf_conntrack_max(lab)?;
    if mode == Mode::Sluice {
        write_manifests(lab)?;
        lab.start_agent(&AgentOptions {
            extra_args: [
                "--conntrack-size",
                &maximum.to_string(),
                "--conntrack-gc-interval",
                "1",
            ]
            .map(String::from)
            .to_vec(),
            ..AgentOptions::default()
        })?;
    }
    let client = lab.pod("client");
    let web = SocketAddr::from((vip(0), 80));
    let mut idle: Vec<(TcpStream, String)> = (0..IDLE)
        .map(|_| -> Result<(TcpStream, String)> {
            let mut s = client.tcp_connect(web, T)?;
            let who = request_line(&mut s, T)?;
            Ok((s, who))
        })
        .collect::<Result<_>>()?;
    let hop = Hop::pod_to_node(client, lab.node())?;
    // Fill: four times the maximum in new flows (one times in a quick run).
    let fill = maximum * if quick { 1 } else { 4 };
    let filled = Blast::start(client, hop, Some(fill))?.join()?;
    let backends: Vec<&Pod> = (0..BACKENDS).map(|i| lab.pod(&backend_name(i))).collect();
    let rx0 = rx(&backends)?;
    let blast = Blast::start_at(client, hop, filled, None)?;
    let t0 = Instant::now();
    std::thread::sleep(window);
    let sent = blast.stop()?;
    let took = t0.elapsed().as_secs_f64();
    let delivered = rx(&backends)?.saturating_sub(rx0);
    let mut lost = 0;
    for (s, who) in &mut idle {
        if request_line(s, T).map_or(true, |a| a != *who) {
            lost += 1;
        }
    }
    let gc = if mode == Mode::Sluice {
        last_gc(lab)?
    } else {
        None
    };
    #[expect(clippy::cast_precision_loss, reason = "rates")]
    Ok(Pressure {
        mode,
        maximum,
        sent_per_s: (sent - filled) as f64 / took,
        delivered_per_s: delivered as f64 / took,
        lost,
        gc,
    })
}

/// Frames received by the backends.
fn rx(backends: &[&Pod]) -> Result<u64> {
    backends
        .iter()
        .map(|p| crate::north_south::rx_packets(p))
        .sum()
}

/// The agent's last garbage collection, from its `/metrics`.
fn last_gc(lab: &Lab) -> Result<Option<(u64, f64)>> {
    let text = lab.node().run(|| -> Result<String> {
        use std::io::{Read as _, Write as _};
        let mut s = TcpStream::connect_timeout(&SocketAddr::from(([127, 0, 0, 1], 10256)), T)?;
        s.set_read_timeout(Some(T))?;
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")?;
        let mut out = String::new();
        s.take(16 << 20).read_to_string(&mut out)?;
        Ok(out)
    })??;
    let value = |name: &str| -> Option<f64> {
        text.lines()
            .find(|l| l.starts_with(name))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    };
    #[expect(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        reason = "a count"
    )]
    Ok(value("sluice_conntrack_gc_visited_entries")
        .zip(value("sluice_conntrack_gc_duration_seconds"))
        .map(|(v, s)| (v as u64, s)))
}

/// New UDP flows from the client, each a tuple not sent for a while:
/// flow `f` goes to UDP Service `1 + f % 16` from port `1024 + (f / 16) %
/// 64512` (about a million tuples, then the first ones again).
struct Blast {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    thread: std::thread::JoinHandle<Result<Result<()>>>,
}

const TUPLES: u64 = UDP_SERVICES as u64 * 64_512;

impl Blast {
    fn start(client: &Pod, hop: Hop, count: Option<u64>) -> Result<Self> {
        Self::start_at(client, hop, 0, count)
    }

    /// From flow `from`, `count` flows or until stopped.
    fn start_at(client: &Pod, hop: Hop, from: u64, count: Option<u64>) -> Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(from));
        let (stop2, sent2) = (stop.clone(), sent.clone());
        let end = count.map(|n| from + n);
        let thread = client.ns.spawn(move || -> Result<()> {
            let socket = RawSocket::open("eth0")?;
            let mut f = from;
            while !stop2.load(Ordering::Relaxed) && end.is_none_or(|e| f < e) {
                let batch: Vec<Vec<u8>> = (f..f + 64).map(|i| flow(hop, i)).collect();
                let refs: Vec<&[u8]> = batch.iter().map(Vec::as_slice).collect();
                let n = socket.send_batch(&refs)?;
                f += n as u64;
                sent2.store(f, Ordering::Relaxed);
            }
            Ok(())
        })?;
        Ok(Self { stop, sent, thread })
    }

    /// Waits for the end; the flow count reached.
    fn join(self) -> Result<u64> {
        self.thread
            .join()
            .map_err(|_| anyhow!("the generator panicked"))???;
        Ok(self.sent.load(Ordering::Relaxed))
    }

    fn stop(self) -> Result<u64> {
        self.stop.store(true, Ordering::Relaxed);
        self.join()
    }
}

fn flow(hop: Hop, f: u64) -> Vec<u8> {
    let f = f % TUPLES;
    let k = u32::try_from(f % u64::from(UDP_SERVICES)).unwrap_or(0);
    let sport = 1024 + u16::try_from(f / u64::from(UDP_SERVICES)).unwrap_or(0);
    frame::udp(hop, (CLIENT, sport), (vip(1 + k), 53), 8, false)
}

/// The rows, as Markdown, and a collector pass over a full table
/// (`gc_cost`: entries, seconds reading, seconds removing everything).
fn render(rows: &[Pressure], full: Option<(u64, f64, f64)>) -> String {
    let mut out = String::from(
        "\n### Conntrack under pressure\n\n\
         A pod's burst of new UDP flows (four times the maximum, then as many more as one generator core sends) beside 100 idle TCP connections through a ClusterIP. \
         netfilter's maximum is the root namespace's `nf_conntrack_max`, which counts connections; Sluice gets the same number as `--conntrack-size`, which counts entries (two per flow).\n\n\
         | Mode | Maximum | New flows sent/s | New flows delivered/s, table full | Idle connections lost | Garbage collection, table full |\n\
         |---|---:|---:|---:|---:|---|\n",
    );
    for r in rows {
        let gc = r.gc.map_or_else(
            || "–".to_owned(),
            |(n, s)| format!("{:.1} ms for {n} entries", s * 1e3),
        );
        let _ = writeln!(
            out,
            "| {} | {} | {:.0} | {:.0} | {} of {IDLE} | {gc} |",
            r.mode.label(),
            r.maximum,
            r.sent_per_s,
            r.delivered_per_s,
            r.lost
        );
    }
    if let Some((n, read, removed)) = full {
        let _ = writeln!(
            out,
            "\nA garbage collection pass over a full table of {n} entries (all eight maps, filled directly): {:.1} ms when nothing has expired, {:.1} ms when everything has and is removed.",
            read * 1e3,
            removed * 1e3
        );
    }
    out
}

/// A collector pass over a full table: every one of the eight maps filled
/// with flows (entry pairs) for `--conntrack-size size`, in a bpffs of its
/// own. Returns the entries and the seconds of a pass that removes nothing
/// (the cost of reading) and of one that removes everything.
fn gc_cost(size: u32) -> Result<(u64, f64, f64)> {
    use aya::{
        EbpfLoader,
        maps::{HashMap, Map, MapData},
    };
    use sluice_abi::{
        conntrack::{
            CT_DIR_ORIGINAL, CT_ESTABLISHED, CtEntry, CtKey, Lifetimes, partner, split_sizes,
        },
        maps as names,
    };
    use sluice_agent::dataplane::conntrack::{Conntrack, monotonic_ns};

    let fs = sluice_lab::Bpffs::new()?;
    let mut loader = EbpfLoader::new();
    loader.default_map_pin_directory(fs.path());
    let sizes = split_sizes(size);
    for (name, n) in names::CONNTRACK.iter().zip(sizes) {
        loader.map_max_entries(name, n);
    }
    let _ebpf = loader.load(sluice_agent::EBPF_OBJ)?;
    let now = monotonic_ns();
    for (name, n) in names::CONNTRACK.iter().zip(sizes) {
        let data = MapData::from_pin(fs.path().join(name))?;
        let mut map: HashMap<MapData, CtKey, CtEntry> =
            HashMap::try_from(Map::from_map_data(data)?)?;
        for i in 0..n / 2 {
            let [_, a, b, c] = i.to_be_bytes();
            let key = CtKey {
                saddr_be: [10, a, b, c],
                daddr_be: [10, 96, 0, 10],
                sport_be: 40000u16.to_be_bytes(),
                dport_be: 80u16.to_be_bytes(),
                proto: 6,
                dir: CT_DIR_ORIGINAL,
                _pad: [0; 2],
            };
            let entry = CtEntry {
                nat_addr_be: [10, 244, 1, 10],
                nat_port_be: 8080u16.to_be_bytes(),
                state: CT_ESTABLISHED,
                flags: 0,
                service_id: 1,
                backend_id: 1,
                last_seen_ns: now,
                created_ns: now,
                snat_addr_be: [0; 4],
                snat_port_be: [0; 2],
                _pad: [0; 2],
            };
            map.insert(key, entry, 0)?;
            map.insert(
                partner(&key, &entry),
                CtEntry {
                    nat_addr_be: key.daddr_be,
                    nat_port_be: key.dport_be,
                    ..entry
                },
                0,
            )?;
        }
    }
    let mut ct = Conntrack::open_pinned(&fs.path())?;
    let l = Lifetimes::DEFAULT;
    let idle = ct.collect_garbage(&l, now);
    let week = 7 * 24 * 3600 * 1_000_000_000;
    let all = ct.collect_garbage(&l, now + week);
    let seconds =
        |c: &sluice_agent::dataplane::conntrack::Census| c.pass.as_ref().map_or(0.0, |p| p.seconds);
    let visited = idle.pass.as_ref().map_or(0, |p| p.visited);
    Ok((visited, seconds(&idle), seconds(&all)))
}
