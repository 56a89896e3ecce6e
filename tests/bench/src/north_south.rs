//! `cargo xtask bench north-south`: packets per second of NodePort
//! forwarding to a backend on another node, through Sluice's XDP program
//! (native and generic), the same logic in TC (`--xdp-mode tc`), and kube-proxy's iptables DNAT
//! and masquerade, against plain routing to the pod (the floor, through
//! node a both ways; `floor-xdp` is the same with Sluice's native XDP on
//! node a passing it, veth's XDP receive path without a Service); and the
//! bulk TCP throughput of the same paths (iperf3, one stream and four,
//! with GSO and GRO on). The IPv6 modes measure the same over IPv6: the
//! Service is dual-stack, its NodePorts on node a's IPv6 address, against
//! ip6tables rules in kube-proxy's structure and the IPv6 floor. Every mode gets a fresh `Cluster` (a client, two
//! nodes and a segment of veths and a bridge); modes alternate over
//! rounds and medians are reported.
//!
//! The generator is fixed: an `AF_PACKET` socket in the client namespace
//! sending the same 64-byte UDP frames (`--flows` source ports) with
//! `sendmmsg` and `PACKET_QDISC_BYPASS`, as fast as one core allows. What
//! counts is what reaches the backend pod's interface. veth is not a NIC:
//! every hop is a function call on the generator's CPU, there are no
//! queues or interrupts, and XDP on veth works on frames the sender built
//! as skbs; the numbers compare the modes with each other, not with
//! hardware.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, UdpSocket},
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, bail};
use sluice_lab::{
    AgentOptions, Cluster, EXT_IF, Pod,
    cluster::CLIENT_IP6,
    frame::{self, Hop, RawSocket},
    mac_of,
};

use crate::stats::machine;

const NODE_PORT: u16 = 30080;
const TARGET_PORT: u16 = 8080;
/// The bulk TCP NodePort and its target, iperf3's port.
const BULK_NODE_PORT: u16 = 30081;
const IPERF_PORT: u16 = 5201;
/// The backend, a pod on node b, and its IPv6 address.
const BACKEND: Ipv4Addr = Ipv4Addr::new(10, 244, 2, 10);
const BACKEND6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x244, 2, 0, 0, 0, 0, 0x10);
/// UDP payload bytes: 14 + 20 + 8 + 18 = a 60-byte frame (64 on a wire).
const PAYLOAD: usize = 18;
/// Frames per `sendmmsg`.
const BATCH: usize = 64;
const SETTLE: Duration = Duration::from_millis(500);

#[derive(clap::Args)]
pub struct Args {
    /// A short run (CI's smoke run): one round, short measurements.
    #[arg(long)]
    quick: bool,
    /// Modes to run, comma-separated (default all): xdp, xdp-generic, tc,
    /// iptables, floor, floor-xdp, and over IPv6 xdp6, tc6, ip6tables, floor6.
    #[arg(long, value_delimiter = ',', value_parser = parse_mode)]
    modes: Option<Vec<Mode>>,
    /// Rounds over all modes (default 3; medians are reported).
    #[arg(long)]
    rounds: Option<u32>,
    /// Seconds per measurement (default 3).
    #[arg(long)]
    seconds: Option<f64>,
    /// Distinct flows (client source ports) the generator cycles through.
    #[arg(long, default_value_t = 64)]
    flows: u16,
    /// Where to write the table (Markdown).
    #[arg(long, default_value = "target/bench/north-south.md")]
    out: PathBuf,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Mode {
    Xdp,
    XdpGeneric,
    Tc,
    Iptables,
    Floor,
    FloorXdp,
    Xdp6,
    Tc6,
    Ip6tables,
    Floor6,
}

impl Mode {
    const ALL: [Self; 10] = [
        Self::Xdp,
        Self::XdpGeneric,
        Self::Tc,
        Self::Iptables,
        Self::Floor,
        Self::FloorXdp,
        Self::Xdp6,
        Self::Tc6,
        Self::Ip6tables,
        Self::Floor6,
    ];

    const fn ipv6(self) -> bool {
        matches!(
            self,
            Self::Xdp6 | Self::Tc6 | Self::Ip6tables | Self::Floor6
        )
    }

    /// The floor through the same receive path: native XDP on veth takes
    /// frames apart from GSO (veth strips GSO from the peer of an
    /// interface with an XDP program, frags-aware or not) and converts each
    /// to an XDP buffer, whatever the program does with it.
    const fn receive_floor(self) -> Self {
        match self {
            Self::Xdp | Self::FloorXdp => Self::FloorXdp,
            _ => self.baselines().0,
        }
    }

    /// The modes this one is compared with: its family's floor and
    /// kube-proxy.
    const fn baselines(self) -> (Self, Self) {
        if self.ipv6() {
            (Self::Floor6, Self::Ip6tables)
        } else {
            (Self::Floor, Self::Iptables)
        }
    }

    const fn name(self) -> &'static str {
        match self {
            Self::Xdp => "xdp",
            Self::XdpGeneric => "xdp-generic",
            Self::Tc => "tc",
            Self::Iptables => "iptables",
            Self::Floor => "floor",
            Self::FloorXdp => "floor-xdp",
            Self::Xdp6 => "xdp6",
            Self::Tc6 => "tc6",
            Self::Ip6tables => "ip6tables",
            Self::Floor6 => "floor6",
        }
    }

    const fn label(self) -> &'static str {
        match self {
            Self::Xdp => "Sluice XDP, native (DNAT+SNAT, XDP_TX)",
            Self::XdpGeneric => "Sluice XDP, generic (--xdp-mode generic)",
            Self::Tc => "Sluice TC (--xdp-mode tc)",
            Self::Iptables => "kube-proxy iptables (DNAT + MASQUERADE)",
            Self::Floor => "no Service (routed to the pod IP)",
            Self::FloorXdp => "no Service, Sluice's native XDP on ext0 passing it",
            Self::Xdp6 => "IPv6: Sluice XDP, native",
            Self::Tc6 => "IPv6: Sluice TC (--xdp-mode tc)",
            Self::Ip6tables => "IPv6: kube-proxy ip6tables (DNAT + MASQUERADE)",
            Self::Floor6 => "IPv6: no Service (routed to the pod IP)",
        }
    }
}

fn parse_mode(s: &str) -> Result<Mode, String> {
    crate::stats::parse_named(&Mode::ALL, Mode::name, s)
}

/// One measurement: frames per second sent and delivered to the backend;
/// bulk TCP in bits per second, over one stream and over four.
#[derive(Clone, Copy, Debug)]
struct Sample {
    sent: f64,
    delivered: f64,
    /// Bulk TCP, bits per second: 1 and 4 streams with GSO packets on the
    /// segment, then 1 and 4 with MTU frames on it.
    bulk: [f64; 4],
}

pub fn run(args: &Args) -> Result<()> {
    let rounds = args.rounds.unwrap_or(if args.quick { 1 } else { 3 });
    let seconds = args.seconds.unwrap_or(if args.quick { 0.5 } else { 3.0 });
    let window = Duration::from_secs_f64(seconds);
    if args.flows == 0 {
        bail!("--flows must be at least 1");
    }
    let started = Instant::now();
    let mut samples: BTreeMap<Mode, Vec<Sample>> = BTreeMap::new();
    for round in 0..rounds {
        let mut modes: Vec<Mode> = Mode::ALL
            .into_iter()
            .filter(|m| args.modes.as_ref().is_none_or(|only| only.contains(m)))
            .collect();
        if round % 2 == 1 {
            modes.reverse();
        }
        for mode in modes {
            let s = measure(mode, args.flows, window, args.quick)
                .with_context(|| format!("measuring {}", mode.label()))?;
            println!(
                "round {} · {:<42} sent {:>6.3} Mpps  delivered {:>6.3} Mpps  bulk TCP {:>5.2} / {:>5.2} Gbit/s",
                round + 1,
                mode.label(),
                s.sent / 1e6,
                s.delivered / 1e6,
                s.bulk[0] / 1e9,
                s.bulk[1] / 1e9,
            );
            samples.entry(mode).or_default().push(s);
        }
    }
    let table = render(&samples, rounds, seconds, args.flows, started.elapsed());
    crate::stats::publish(&table, &args.out)
}

/// A fresh cluster set up for `mode`, then one measurement.
fn measure(mode: Mode, flows: u16, window: Duration, quick: bool) -> Result<Sample> {
    let mut c = Cluster::new()?;
    c.node(1).add_pod("backend", BACKEND)?;
    c.node(1).add_ipv6("backend", BACKEND6)?;
    let (node, backend, client): (IpAddr, IpAddr, IpAddr) = if mode.ipv6() {
        (c.node_ip6(0).into(), BACKEND6.into(), CLIENT_IP6.into())
    } else {
        (c.node_ip(0).into(), BACKEND.into(), c.client().ip.into())
    };
    // Bound but never read: frames are counted at the interface and
    // dropped at the full socket, with no ICMP port-unreachable.
    let sink = c
        .node_ref(1)
        .pod("backend")
        .ns
        .run(move || UdpSocket::bind((backend, TARGET_PORT)))??;
    let (dst, dport, bulk_port) = match mode {
        Mode::Xdp | Mode::XdpGeneric | Mode::Tc | Mode::Xdp6 | Mode::Tc6 | Mode::FloorXdp => {
            let lab = c.node(0);
            lab.write_manifest("web.yaml", &service_manifest())?;
            let mut extra_args = vec!["--node-name".to_owned(), "node-a".to_owned()];
            match mode {
                Mode::Tc | Mode::Tc6 => {
                    extra_args.extend(["--xdp-mode".to_owned(), "tc".to_owned()]);
                }
                Mode::XdpGeneric => {
                    extra_args.extend(["--xdp-mode".to_owned(), "generic".to_owned()]);
                }
                _ => extra_args.extend(["--xdp-mode".to_owned(), "native".to_owned()]),
            }
            let agent = lab.start_agent(&AgentOptions {
                extra_args,
                ..AgentOptions::default()
            })?;
            agent.wait_for("external interface attached", 0, Duration::from_secs(10))?;
            if mode == Mode::FloorXdp {
                // To the pod's address: XDP passes it, the stack routes it.
                floor_routes(&c, backend, client)?;
                (backend, TARGET_PORT, IPERF_PORT)
            } else {
                (node, NODE_PORT, BULK_NODE_PORT)
            }
        }
        Mode::Iptables | Mode::Ip6tables => {
            restore_iptables(&c, node, backend)?;
            (node, NODE_PORT, BULK_NODE_PORT)
        }
        Mode::Floor | Mode::Floor6 => {
            floor_routes(&c, backend, client)?;
            (backend, TARGET_PORT, IPERF_PORT)
        }
    };
    let hop = Hop {
        src_mac: mac_of(&c.client().ns, "eth0")?,
        dst_mac: mac_of(c.node_ref(0).node(), EXT_IF)?,
    };
    let frames = frames(hop, client, dst, dport, flows);
    let generator = Generator::start(c.client(), frames)?;
    // Neighbours resolve and every flow is set up before the window: the
    // backend's interface sees frames (an IPv6 neighbour whose first
    // solicitation went unanswered is asked again only a second later).
    generator.wait_sent(u64::from(flows) * 4, Duration::from_secs(5))?;
    let backend = c.node_ref(1).pod("backend");
    wait_delivering(backend, Duration::from_secs(5))?;
    thread::sleep(SETTLE);
    let (rx0, tx0, t0) = (rx_packets(backend)?, generator.sent(), Instant::now());
    thread::sleep(window);
    let (rx1, tx1, t1) = (rx_packets(backend)?, generator.sent(), Instant::now());
    generator.stop()?;
    drop(sink);
    let secs = (t1 - t0).as_secs_f64();
    #[expect(clippy::cast_precision_loss, reason = "packet counts")]
    let mut sample = Sample {
        sent: (tx1 - tx0) as f64 / secs,
        delivered: rx1.saturating_sub(rx0) as f64 / secs,
        bulk: [0.0; 4],
    };
    if sample.delivered == 0.0 {
        bail!(
            "nothing reached the backend ({} sent): the path is broken",
            tx1 - tx0
        );
    }
    // Bulk TCP, with the offloads of hosts whose NICs segment and coalesce.
    c.offloads_on()?;
    let server = Iperf3Server::start(c.node_ref(1).pod("backend"))?;
    let bulk_secs = if quick { 1 } else { 5 };
    for (i, streams) in [1u32, 4].into_iter().enumerate() {
        sample.bulk[i] = iperf3(&c.client().ns, (dst, bulk_port), streams, bulk_secs)?;
    }
    // Again, with the segment carrying what a wire between NICs carries.
    c.wire_carries_mtu_frames()?;
    for (i, streams) in [1u32, 4].into_iter().enumerate() {
        sample.bulk[2 + i] = iperf3(&c.client().ns, (dst, bulk_port), streams, bulk_secs)?;
    }
    drop(server);
    Ok(sample)
}

/// The floor's routes: the client reaches `backend` through node a, and
/// node b sends the replies to `client` back through node a, as the
/// NodePort's SNAT makes them go. Node a forwards the client's packets out
/// of the interface they came in on, so it would send the client an ICMP
/// redirect to node b, the client would then go to node b straight, and
/// the floor would skip node a (measured: `cache <redirected>`, bulk TCP
/// at twice every other path's). So node a sends none and the client heeds
/// none.
fn floor_routes(c: &Cluster, backend: IpAddr, client: IpAddr) -> Result<()> {
    let (node_a, node_b) = (c.node_ref(0).node(), c.node_ref(1).node());
    for key in ["all", "default", EXT_IF] {
        node_a.sysctl(&format!("net.ipv4.conf.{key}.send_redirects"), "0")?;
    }
    for family in ["ipv4", "ipv6"] {
        for key in ["all", "eth0"] {
            c.client()
                .ns
                .sysctl(&format!("net.{family}.conf.{key}.accept_redirects"), "0")?;
        }
    }
    match (backend, client) {
        (IpAddr::V4(b), IpAddr::V4(cl)) => {
            c.route_via(b, 0)?;
            let via = c.node_ip(0).to_string();
            node_b.ip(&["route", "replace", &format!("{cl}/32"), "via", &via])?;
        }
        (IpAddr::V6(b), IpAddr::V6(cl)) => {
            c.route_via6(b, 0)?;
            let via = c.node_ip6(0).to_string();
            node_b.ip(&["-6", "route", "replace", &format!("{cl}/128"), "via", &via])?;
        }
        _ => bail!("the backend and the client are of different families"),
    }
    Ok(())
}

/// Waits until frames reach `pod`'s interface, or fails after `timeout`.
fn wait_delivering(pod: &Pod, timeout: Duration) -> Result<()> {
    let (start, deadline) = (rx_packets(pod)?, Instant::now() + timeout);
    while rx_packets(pod)? < start + 1_000 {
        if Instant::now() > deadline {
            bail!("nothing reached the backend in {timeout:?}: the path is broken");
        }
        thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// `iperf3 -s` in a pod; killed on drop.
struct Iperf3Server(std::process::Child);

impl Iperf3Server {
    /// Starts the server and waits (5 s at most) until it listens.
    fn start(pod: &Pod) -> Result<Self> {
        let mut child = pod
            .ns
            .command("iperf3")
            .args(["-s", "-p", &IPERF_PORT.to_string(), "--forceflush"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .context("starting iperf3 -s (Debian's iperf3)")?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| anyhow!("iperf3 has no stdout"))?;
        let server = Self(child);
        let (tx, rx) = std::sync::mpsc::channel();
        thread::spawn(move || {
            for line in
                std::io::BufRead::lines(std::io::BufReader::new(stdout)).map_while(Result::ok)
            {
                if line.contains("Server listening") {
                    let _ = tx.send(());
                }
            }
        });
        rx.recv_timeout(Duration::from_secs(5))
            .context("iperf3 -s did not start listening")?;
        Ok(server)
    }
}

impl Drop for Iperf3Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `iperf3 -c` from `ns` to `to` with `streams` parallel streams for
/// `secs` seconds: the bits per second the server received.
fn iperf3(ns: &sluice_lab::Netns, to: (IpAddr, u16), streams: u32, secs: u32) -> Result<f64> {
    let out = ns
        .command("timeout")
        .args([
            &(secs + 30).to_string(),
            "iperf3",
            "-c",
            &to.0.to_string(),
            "-p",
            &to.1.to_string(),
            "-t",
            &secs.to_string(),
            "-P",
            &streams.to_string(),
            "-J",
        ])
        .output()
        .context("running iperf3 -c")?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("iperf3's JSON: {}", String::from_utf8_lossy(&out.stderr)))?;
    if let Some(e) = v.get("error").and_then(serde_json::Value::as_str) {
        bail!("iperf3 to {}:{}: {e}", to.0, to.1);
    }
    v.pointer("/end/sum_received/bits_per_second")
        .and_then(serde_json::Value::as_f64)
        .ok_or_else(|| anyhow!("no received rate in iperf3's JSON"))
}

/// `web`: a dual-stack NodePort Service whose one endpoint is the pod on
/// node b, a slice per family.
fn service_manifest() -> String {
    let slice = |family: &str, addr: IpAddr| {
        format!(
            "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: web-{family}\n  namespace: default\n  labels: {{kubernetes.io/service-name: web}}\n\
             addressType: {family}\nports: [{{name: udp, protocol: UDP, port: {TARGET_PORT}}}, {{name: bulk, protocol: TCP, port: {IPERF_PORT}}}]\n\
             endpoints: [{{addresses: [\"{addr}\"], nodeName: node-b, conditions: {{ready: true}}}}]\n"
        )
    };
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: web, namespace: default}}\nspec:\n  type: NodePort\n  ipFamilyPolicy: RequireDualStack\n  ipFamilies: [IPv4, IPv6]\n  clusterIP: 10.96.0.10\n  clusterIPs: [10.96.0.10, \"fd00:96::a\"]\n  ports:\n  - {{name: udp, protocol: UDP, port: 53, nodePort: {NODE_PORT}}}\n  - {{name: bulk, protocol: TCP, port: {IPERF_PORT}, nodePort: {BULK_NODE_PORT}}}\n{}{}",
        slice("IPv4", BACKEND.into()),
        slice("IPv6", BACKEND6.into()),
    )
}

/// kube-proxy's iptables mode for that Service on node a (ip6tables for
/// IPv6): the NodePort chain, the masquerade mark for external traffic,
/// the endpoint's DNAT, and the masquerade on the way out.
fn restore_iptables(c: &Cluster, node: IpAddr, backend: IpAddr) -> Result<()> {
    let (restore, host, to) = match backend {
        IpAddr::V4(b) => ("iptables-restore", format!("{node}/32"), b.to_string()),
        IpAddr::V6(b) => ("ip6tables-restore", format!("{node}/128"), format!("[{b}]")),
    };
    let rules = format!(
        "*nat\n\
         :KUBE-SERVICES - [0:0]\n:KUBE-NODEPORTS - [0:0]\n:KUBE-POSTROUTING - [0:0]\n:KUBE-MARK-MASQ - [0:0]\n\
         :KUBE-EXT-WEB - [0:0]\n:KUBE-SVC-WEB - [0:0]\n:KUBE-SEP-WEB0 - [0:0]\n\
         :KUBE-EXT-BULK - [0:0]\n:KUBE-SVC-BULK - [0:0]\n:KUBE-SEP-BULK0 - [0:0]\n\
         -A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
         -A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING\n\
         -A KUBE-SERVICES -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS\n\
         -A KUBE-NODEPORTS -d {host} -p udp -m udp --dport {NODE_PORT} -j KUBE-EXT-WEB\n\
         -A KUBE-NODEPORTS -d {host} -p tcp -m tcp --dport {BULK_NODE_PORT} -j KUBE-EXT-BULK\n\
         -A KUBE-EXT-BULK -j KUBE-MARK-MASQ\n\
         -A KUBE-EXT-BULK -j KUBE-SVC-BULK\n\
         -A KUBE-SVC-BULK -j KUBE-SEP-BULK0\n\
         -A KUBE-SEP-BULK0 -p tcp -m tcp -j DNAT --to-destination {to}:{IPERF_PORT}\n\
         -A KUBE-EXT-WEB -j KUBE-MARK-MASQ\n\
         -A KUBE-EXT-WEB -j KUBE-SVC-WEB\n\
         -A KUBE-SVC-WEB -j KUBE-SEP-WEB0\n\
         -A KUBE-SEP-WEB0 -p udp -m udp -j DNAT --to-destination {to}:{TARGET_PORT}\n\
         -A KUBE-MARK-MASQ -j MARK --or-mark 0x4000\n\
         -A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN\n\
         -A KUBE-POSTROUTING -j MARK --xor-mark 0x4000\n\
         -A KUBE-POSTROUTING -j MASQUERADE --random-fully\n\
         COMMIT\n"
    );
    let mut child = c
        .node_ref(0)
        .node()
        .command(restore)
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("running {restore}"))?;
    std::io::Write::write_all(
        child
            .stdin
            .as_mut()
            .ok_or_else(|| anyhow!("{restore} has no stdin"))?,
        rules.as_bytes(),
    )?;
    drop(child.stdin.take());
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!("{restore}: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// Frames received on the pod's eth0 (`ip -s`).
pub(crate) fn rx_packets(pod: &Pod) -> Result<u64> {
    let out = pod.ns.ip(&["-j", "-s", "link", "show", "dev", "eth0"])?;
    let v: serde_json::Value = serde_json::from_str(&out).context("ip -j -s link")?;
    v.pointer("/0/stats64/rx/packets")
        .and_then(serde_json::Value::as_u64)
        .ok_or_else(|| anyhow!("no rx packet count in {out}"))
}

/// The generator's frames: Ethernet to node a; IPv4 with its checksum and
/// UDP without one (allowed in IPv4), or IPv6 and UDP with its checksum
/// (required); one per source port.
fn frames(hop: Hop, src: IpAddr, dst: IpAddr, dport: u16, flows: u16) -> Vec<Vec<u8>> {
    (0..flows)
        .map(|i| match (src, dst) {
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                frame::udp6(hop, (s, 20_000 + i), (d, dport), PAYLOAD)
            }
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                frame::udp(hop, (s, 20_000 + i), (d, dport), PAYLOAD, false)
            }
            _ => Vec::new(),
        })
        .collect()
}

/// The packet generator: a thread in the client namespace that sends the
/// frames round-robin until stopped.
struct Generator {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    thread: Option<thread::JoinHandle<Result<Result<()>>>>,
}

impl Generator {
    fn start(client: &Pod, frames: Vec<Vec<u8>>) -> Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let (s, n) = (Arc::clone(&stop), Arc::clone(&sent));
        let thread = client.ns.spawn(move || send_loop(&frames, &s, &n))?;
        Ok(Self {
            stop,
            sent,
            thread: Some(thread),
        })
    }

    fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// Waits until `n` frames are out (the generator is up), or fails.
    fn wait_sent(&self, n: u64, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        while self.sent() < n {
            if Instant::now() > deadline
                || self
                    .thread
                    .as_ref()
                    .is_none_or(thread::JoinHandle::is_finished)
            {
                bail!("the generator sent {} frames in {timeout:?}", self.sent());
            }
            thread::sleep(Duration::from_millis(10));
        }
        Ok(())
    }

    fn stop(mut self) -> Result<()> {
        self.stop.store(true, Ordering::Relaxed);
        match self.thread.take().map(thread::JoinHandle::join) {
            Some(Ok(r)) => r?,
            Some(Err(_)) => Err(anyhow!("the generator panicked")),
            None => Ok(()),
        }
    }
}

impl Drop for Generator {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Sends `frames` out of eth0 round-robin, a batch at a time, until
/// `stop`, counting into `sent`.
fn send_loop(frames: &[Vec<u8>], stop: &AtomicBool, sent: &AtomicU64) -> Result<()> {
    let socket = RawSocket::open("eth0")?;
    let batch: Vec<&[u8]> = frames
        .iter()
        .cycle()
        .take(BATCH)
        .map(Vec::as_slice)
        .collect();
    while !stop.load(Ordering::Relaxed) {
        let n = socket.send_batch(&batch)?;
        sent.fetch_add(u64::try_from(n)?, Ordering::Relaxed);
    }
    Ok(())
}

/// Bulk TCP through the NodePort: iperf3's received rate, one stream and
/// four, against the floor and iptables.
/// The bulk tables: MTU frames on the segment (as between NICs), then
/// 64 KiB GSO packets on it (veth's own behaviour).
fn bulk_table(t: &mut String, samples: &BTreeMap<Mode, Vec<Sample>>) {
    for (first, title) in [
        (
            2,
            "MTU frames on the segment, as between NICs (the client and nodes segment before sending; GRO at each node)",
        ),
        (
            0,
            "64 KiB GSO packets on the segment (veth's own), except into a node whose ext0 runs XDP",
        ),
    ] {
        bulk_rows(t, samples, first, title);
    }
}

fn bulk_rows(t: &mut String, samples: &BTreeMap<Mode, Vec<Sample>>, first: usize, title: &str) {
    let rate = |mode: &Mode, i: usize| {
        samples
            .get(mode)
            .map(|v| median(&v.iter().map(|s| s.bulk[first + i]).collect::<Vec<_>>()))
    };
    let _ = writeln!(
        t,
        "\n## Bulk TCP through the NodePort (iperf3, GSO/GRO on at the hosts): {title}\n\n\
         | path | 1 stream (Gbit/s) | 4 streams (Gbit/s) | 4 streams vs floor | 4 streams vs the floor through the same receive path | 4 streams vs iptables |\n|---|---:|---:|---:|---:|---:|"
    );
    for mode in samples.keys() {
        // Each round measures every mode back to back, so a ratio is taken
        // within a round and the rounds' median reported: the machine's
        // drift between rounds (up to 3× on a shared host) cancels out.
        let ratio = |base: Mode| {
            let (Some(v), Some(b)) = (samples.get(mode), samples.get(&base)) else {
                return "-".to_owned();
            };
            let ratios: Vec<f64> = v
                .iter()
                .zip(b)
                .filter(|(_, b)| b.bulk[first + 1] > 0.0)
                .map(|(s, b)| s.bulk[first + 1] / b.bulk[first + 1])
                .collect();
            if ratios.is_empty() {
                "-".to_owned()
            } else {
                format!("{:.2}×", median(&ratios))
            }
        };
        let _ = writeln!(
            t,
            "| {} | {:.2} | {:.2} | {} | {} | {} |",
            mode.label(),
            rate(mode, 0).unwrap_or(0.0) / 1e9,
            rate(mode, 1).unwrap_or(0.0) / 1e9,
            ratio(mode.baselines().0),
            ratio(mode.receive_floor()),
            ratio(mode.baselines().1),
        );
    }
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

fn render(
    samples: &BTreeMap<Mode, Vec<Sample>>,
    rounds: u32,
    seconds: f64,
    flows: u16,
    took: Duration,
) -> String {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "# North-south: NodePort forwarding to a backend on another node\n\n\
         {} · {rounds} round(s) of {seconds} s per mode · {flows} UDP flows of 64-byte frames from one `AF_PACKET` generator core · took {:.0} s\n",
        machine(),
        took.as_secs_f64()
    );
    let delivered_of = |mode: Mode| {
        samples
            .get(&mode)
            .map(|v| median(&v.iter().map(|s| s.delivered).collect::<Vec<_>>()))
    };
    let _ = writeln!(
        t,
        "| path | delivered (Mpps, median) | sent (Mpps) | delivered / sent | µs per packet | over the floor (µs) | vs iptables |\n|---|---:|---:|---:|---:|---:|---:|"
    );
    for (mode, v) in samples {
        let (floor, iptables) = mode.baselines();
        let (floor, iptables) = (delivered_of(floor), delivered_of(iptables));
        let delivered = median(&v.iter().map(|s| s.delivered).collect::<Vec<_>>());
        let sent = median(&v.iter().map(|s| s.sent).collect::<Vec<_>>());
        let ratio = |base: Option<f64>| {
            base.filter(|b| *b > 0.0)
                .map_or_else(|| "-".into(), |b| format!("{:.2}×", delivered / b))
        };
        // The whole path runs on the generator's CPU: the time per packet
        // is its cost, and the difference to the floor what the Service
        // costs on node a.
        let micros = |pps: f64| 1e6 / pps;
        let over = floor.filter(|f| *f > 0.0 && delivered > 0.0).map_or_else(
            || "-".into(),
            |f| format!("{:+.2}", micros(delivered) - micros(f)),
        );
        let _ = writeln!(
            t,
            "| {} | {:.3} | {:.3} | {:.0}% | {:.2} | {over} | {} |",
            mode.label(),
            delivered / 1e6,
            sent / 1e6,
            if sent > 0.0 {
                100.0 * delivered / sent
            } else {
                0.0
            },
            if delivered > 0.0 {
                micros(delivered)
            } else {
                0.0
            },
            ratio(iptables),
        );
    }
    bulk_table(&mut t, samples);
    let _ = writeln!(
        t,
        "\nTopology: client ns → bridge → node a (ext0) → bridge → node b (ext0) → backend pod, all veth. \
         Sluice XDP DNATs and SNATs on node a's ext0 and sends the frame back out (XDP_TX), in veth's native XDP \
         or in generic (skb) XDP; TC does the same at the ingress hook with `bpf_redirect`; iptables DNATs in PREROUTING and masquerades in POSTROUTING \
         after the stack's forwarding; the floor sends to the pod's address, routed by node a with no NAT, \
         and sends it again with Sluice's native XDP on node a's ext0 passing it to the stack, the receive \
         path native XDP's Service traffic takes on veth. \
         The IPv6 rows do the same over IPv6 (the Service is dual-stack; ip6tables in kube-proxy's structure), \
         each compared with its own family's floor and kube-proxy. \
         Every hop but native XDP's receive runs in the generator's `sendmmsg`, so the time per delivered \
         packet is the cost of the whole path and its excess over the floor is the Service's cost on node a; \
         native XDP on veth receives in NAPI, apart from the sender, so it can send more than the path \
         delivers.\n\n\
         Caveat: veth is not a NIC. There is no driver ring, DMA or interrupt; every hop runs on the sending \
         CPU, and native XDP on veth receives frames that were built as skbs by the sender: veth converts \
         each to an XDP buffer (a copy when the skb lacks XDP's headroom, as `AF_PACKET`'s do) and, after \
         XDP_TX, back into an skb at the peer, work a NIC's driver does not do. The numbers rank \
         the paths against each other on this machine; they are not what a physical NIC would reach."
    );
    t
}
