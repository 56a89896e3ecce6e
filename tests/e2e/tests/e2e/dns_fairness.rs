//! End-to-end: one pod's flood of external names against a slow upstream
//! leaves other pods answered; the DNS caches stay within their bytes; a
//! source that is neither the node nor one of its pods gets REFUSED.
#![allow(clippy::unwrap_used, reason = "tests: a failure fails the test")]

use std::{
    fmt::Write as _,
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering::Relaxed},
    },
    time::{Duration, Instant},
};

use sluice_lab::{AgentOptions, Lab, LabDns, SlowDns, require_privileges};

use crate::{
    common::{SERVICE_CIDR, http_get},
    dns::{CLIENT, DNS_IP, cluster_manifests, query, sample},
};

const FLOODER: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 3);
const SLOW: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 54);
const OUTSIDER: Ipv4Addr = Ipv4Addr::new(192, 168, 200, 2);
/// What the slow upstream answers every A question with.
const EXTERNAL: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
/// How long the slow upstream takes to answer.
const UPSTREAM_DELAY: Duration = Duration::from_millis(300);
/// The memory limit of the agent's `DaemonSet` (`manifests/04-daemonset.yaml`).
const MEMORY_LIMIT: u64 = 1 << 30;
/// `--dns-cache-bytes` in this lab: half for the forward cache, half for
/// the memos.
const CACHE_BYTES: u64 = 1 << 20;

/// The rcode and the first A record of an answer to `id`.
fn parse(answer: &[u8], id: u16) -> Option<(u8, Option<Ipv4Addr>)> {
    if answer.get(..2)? != id.to_be_bytes() {
        return None;
    }
    let rcode = answer.get(3)? & 0x0f;
    let ancount = u16::from_be_bytes([*answer.get(6)?, *answer.get(7)?]);
    if ancount == 0 {
        return Some((rcode, None));
    }
    // The question (uncompressed), then an answer whose name is a pointer.
    let mut at = 12;
    while *answer.get(at)? != 0 {
        at += 1 + usize::from(*answer.get(at)?);
    }
    at += 5;
    let rr = answer.get(at..at + 16)?;
    let ip = rr.get(12..16)?;
    Some((rcode, Some(Ipv4Addr::new(ip[0], ip[1], ip[2], ip[3]))))
}

/// Asks `name` from a socket of the current namespace; the rcode, address
/// and time taken, or `None` when no answer came within `wait`.
fn ask(
    socket: &UdpSocket,
    id: u16,
    name: &str,
    wait: Duration,
) -> Option<(u8, Option<Ipv4Addr>, Duration)> {
    let started = Instant::now();
    socket.send(&query(id, name, 1)).ok()?;
    let mut buf = [0u8; 1500];
    while started.elapsed() < wait {
        socket
            .set_read_timeout(Some(
                wait.saturating_sub(started.elapsed())
                    .max(Duration::from_millis(1)),
            ))
            .ok()?;
        let Ok(n) = socket.recv(&mut buf) else {
            return None;
        };
        if let Some((rcode, ip)) = buf.get(..n).and_then(|b| parse(b, id)) {
            return Some((rcode, ip, started.elapsed()));
        }
    }
    None
}

fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

fn fairness_lab() -> (Lab, SlowDns) {
    let mut lab = Lab::new().unwrap();
    lab.add_pod("client", CLIENT).unwrap();
    lab.add_pod("flooder", FLOODER).unwrap();
    lab.add_pod("slow", SLOW).unwrap();
    lab.add_outsider("outsider", OUTSIDER).unwrap();
    let slow = SlowDns::start(&lab.pod("slow").ns, SLOW, UPSTREAM_DELAY, EXTERNAL).unwrap();
    lab.write_manifest("cluster.yaml", &cluster_manifests())
        .unwrap();
    let opts = AgentOptions {
        service_cidr: Some(SERVICE_CIDR.into()),
        dns: Some(LabDns {
            ip: IpAddr::V4(DNS_IP),
            upstreams: vec![SocketAddr::from((SLOW, 53))],
        }),
        extra_args: vec!["--dns-cache-bytes".into(), CACHE_BYTES.to_string()],
        ..AgentOptions::default()
    };
    lab.start_agent(&opts).unwrap();
    (lab, slow)
}

/// What the other pod saw during the flood.
#[derive(Default, Debug)]
struct Seen {
    cluster: Vec<Duration>,
    cluster_wrong: Vec<String>,
    external_ok: usize,
    external_wrong: Vec<String>,
}

/// The other pod's lookups while `flooding`, on two threads: a cluster
/// name every 5 ms (answered within 1 s, with the ClusterIP), and a new
/// external name every 50 ms (answered within 2 s, with the upstream's
/// address).
fn other_pod(flooding: &AtomicBool) -> Seen {
    let cluster = UdpSocket::bind((CLIENT, 0)).unwrap();
    cluster.connect((DNS_IP, 53)).unwrap();
    let external = UdpSocket::bind((CLIENT, 0)).unwrap();
    external.connect((DNS_IP, 53)).unwrap();
    // Bounded by the flood, itself bounded by dnsperf's -l.
    let deadline = Instant::now() + Duration::from_secs(60);
    let going = || flooding.load(Relaxed) && Instant::now() < deadline;
    std::thread::scope(|scope| {
        let names = scope.spawn(|| {
            let (mut ok, mut wrong) = (0, Vec::new());
            for id in 0..u16::MAX {
                if !going() {
                    break;
                }
                let name = format!("v{id}.victim.test");
                match ask(&external, id, &name, Duration::from_secs(2)) {
                    Some((0, Some(ip), _)) if ip == EXTERNAL => ok += 1,
                    other => wrong.push(format!("{name}: {other:?}")),
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            (ok, wrong)
        });
        let mut seen = Seen::default();
        for id in 0..u16::MAX {
            if !going() {
                break;
            }
            match ask(
                &cluster,
                id,
                "web.default.svc.cluster.local",
                Duration::from_secs(1),
            ) {
                Some((0, Some(ip), took)) if ip == Ipv4Addr::new(10, 96, 0, 10) => {
                    seen.cluster.push(took);
                }
                other => seen.cluster_wrong.push(format!("{other:?}")),
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        (seen.external_ok, seen.external_wrong) = names.join().unwrap();
        seen
    })
}

/// Queries sent, queries per second and REFUSED answers in a dnsperf
/// report.
fn dnsperf_numbers(report: &str) -> (f64, f64, u64) {
    let number = |label: &str| -> f64 {
        report
            .lines()
            .find_map(|l| l.trim().strip_prefix(label))
            .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
            .unwrap_or(0.0)
    };
    let refused = report
        .lines()
        .find_map(|l| l.trim().strip_prefix("Response codes:"))
        .and_then(|codes| {
            let at = codes.find("REFUSED ")?;
            codes
                .get(at + 8..)?
                .split_whitespace()
                .next()?
                .parse::<u64>()
                .ok()
        })
        .unwrap_or(0);
    (
        number("Queries sent:"),
        number("Queries per second:"),
        refused,
    )
}

#[test]
fn a_pods_flood_of_external_names_leaves_other_pods_answered_within_bounded_memory() {
    if !require_privileges(
        "a_pods_flood_of_external_names_leaves_other_pods_answered_within_bounded_memory",
    ) {
        return;
    }
    let (mut lab, slow) = fairness_lab();
    let pid = lab.agent().pid().unwrap();
    // Distinct external names: every one a cache miss, for the upstream.
    let names = lab.dir().join("flood.txt");
    let mut list = String::new();
    for i in 0..300_000 {
        let _ = writeln!(list, "n{i}.flood.test A");
    }
    std::fs::write(&names, list).unwrap();
    let mut dnsperf = lab
        .pod("flooder")
        .ns
        .command("dnsperf")
        .args(["-s", &DNS_IP.to_string(), "-d"])
        .arg(&names)
        .args(["-l", "6", "-Q", "60000", "-q", "2000", "-c", "8", "-t", "2"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let flooding = Arc::new(AtomicBool::new(true));
    let victim = {
        let flooding = Arc::clone(&flooding);
        lab.pod("client")
            .ns
            .spawn(move || {
                // Let the flood build up first.
                std::thread::sleep(Duration::from_millis(500));
                other_pod(&flooding)
            })
            .unwrap()
    };
    let mut most_rss = 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        most_rss = most_rss.max(rss(pid));
        if let Some(status) = dnsperf.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "dnsperf ran past its -l");
        std::thread::sleep(Duration::from_millis(100));
    };
    flooding.store(false, Relaxed);
    let seen = victim.join().unwrap().unwrap();
    let out = dnsperf.wait_with_output().unwrap();
    let report = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(status.success(), "dnsperf: {report}");
    let (sent, qps, refused) = dnsperf_numbers(&report);
    let mut latencies = seen.cluster.clone();
    latencies.sort();
    let p99 = latencies
        .get(latencies.len().saturating_mul(99) / 100)
        .copied()
        .unwrap_or_default();
    eprintln!(
        "flood: {sent} queries sent, {qps} per second, {refused} REFUSED; the other pod: {} cluster answers (p99 {p99:?}), {} external answers; agent RSS at most {} MiB",
        seen.cluster.len(),
        seen.external_ok,
        most_rss >> 20
    );

    // The flood was refused past its share, and counted so.
    let health = SocketAddr::from((Ipv4Addr::LOCALHOST, 10256));
    let (_, page) = http_get(&lab, health, "/metrics").unwrap();
    let counted = sample(
        &page,
        r#"sluice_dns_refused_total{reason="client_forwards"}"#,
    )
    .unwrap();
    assert!(
        refused > 1000 && counted >= refused,
        "dnsperf saw {refused} REFUSED, the agent counted {counted}: {report}"
    );
    assert!(slow.answered() > 0, "the upstream served the flood's share");

    // The other pod: every cluster name answered, every external name too.
    assert!(
        seen.cluster_wrong.is_empty() && seen.cluster.len() > 100,
        "{} cluster answers, wrong or lost: {:?}",
        seen.cluster.len(),
        seen.cluster_wrong.iter().take(5).collect::<Vec<_>>()
    );
    assert!(
        seen.external_wrong.is_empty() && seen.external_ok > 10,
        "{} external answers, wrong or lost: {:?}",
        seen.external_ok,
        seen.external_wrong.iter().take(5).collect::<Vec<_>>()
    );

    // Memory: the caches within their bytes, the agent within its limit.
    let gauge = |name: &str| sample(&page, name).unwrap();
    assert!(gauge("sluice_dns_cache_bytes") <= CACHE_BYTES / 2, "{page}");
    assert!(gauge("sluice_dns_memo_bytes") <= CACHE_BYTES / 2, "{page}");
    assert!(most_rss < MEMORY_LIMIT, "RSS {most_rss}");

    tcp_connections_past_a_share_are_closed_and_others_served(&lab);
}

/// The flooder's TCP connections past its share are closed at once; the
/// other pod's still work.
fn tcp_connections_past_a_share_are_closed_and_others_served(lab: &Lab) {
    let flooder_tcp = lab
        .pod("flooder")
        .ns
        .run(|| {
            let held: Vec<TcpStream> = (0..32)
                .filter_map(|_| TcpStream::connect((DNS_IP, 53)).ok())
                .collect();
            let mut extra = TcpStream::connect((DNS_IP, 53)).unwrap();
            extra
                .set_read_timeout(Some(Duration::from_secs(5)))
                .unwrap();
            let mut buf = [0u8; 1];
            let closed = matches!(std::io::Read::read(&mut extra, &mut buf), Ok(0) | Err(_));
            (held.len(), closed)
        })
        .unwrap();
    assert_eq!(flooder_tcp, (32, true), "32 held, the 33rd closed");
    let tcp_answer = lab
        .pod("client")
        .ns
        .run(|| {
            use std::io::{Read as _, Write as _};
            let mut s = TcpStream::connect((DNS_IP, 53)).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            let q = query(7, "web.default.svc.cluster.local", 1);
            let mut framed = u16::try_from(q.len()).unwrap().to_be_bytes().to_vec();
            framed.extend_from_slice(&q);
            s.write_all(&framed).unwrap();
            let mut len = [0u8; 2];
            s.read_exact(&mut len).unwrap();
            let mut answer = vec![0u8; usize::from(u16::from_be_bytes(len))];
            s.read_exact(&mut answer).unwrap();
            parse(&answer, 7)
        })
        .unwrap();
    assert_eq!(tcp_answer, Some((0, Some(Ipv4Addr::new(10, 96, 0, 10)))));
}

/// The rcode and address of `web`'s A record, asked in `ns` from `from`.
fn ask_in(ns: &sluice_lab::Netns, from: Ipv4Addr) -> Option<(u8, Option<Ipv4Addr>)> {
    ns.run(move || {
        let s = UdpSocket::bind((from, 0)).unwrap();
        s.connect((DNS_IP, 53)).unwrap();
        ask(
            &s,
            9,
            "web.default.svc.cluster.local",
            Duration::from_secs(2),
        )
        .map(|(rcode, ip, _)| (rcode, ip))
    })
    .unwrap()
}

#[test]
fn a_source_that_is_neither_the_node_nor_its_pods_gets_refused() {
    if !require_privileges("a_source_that_is_neither_the_node_nor_its_pods_gets_refused") {
        return;
    }
    let (mut lab, _slow) = fairness_lab();
    // The outsider is one hop away, as a host beside an exposed node is.
    lab.pod("outsider")
        .ns
        .ip(&["route", "add", &format!("{DNS_IP}/32"), "via", "10.244.0.1"])
        .unwrap();
    let cluster_ip = Some(Ipv4Addr::new(10, 96, 0, 10));
    let ask_from = |lab: &Lab, pod: &str, from: Ipv4Addr| ask_in(&lab.pod(pod).ns, from);
    // REFUSED is rcode 5, with no answer.
    assert_eq!(ask_from(&lab, "outsider", OUTSIDER), Some((5, None)));
    assert_eq!(ask_from(&lab, "client", CLIENT), Some((0, cluster_ip)));
    // The node itself.
    let node = ask_in(lab.node(), Ipv4Addr::UNSPECIFIED);
    assert_eq!(node, Some((0, cluster_ip)));
    // Over TCP, the outsider's connection is closed unanswered.
    let tcp = lab
        .pod("outsider")
        .ns
        .run(|| {
            let mut s = TcpStream::connect((DNS_IP, 53)).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            let mut buf = [0u8; 1];
            std::io::Read::read(&mut s, &mut buf).map_err(|e| e.kind())
        })
        .unwrap();
    assert!(
        matches!(tcp, Ok(0) | Err(std::io::ErrorKind::ConnectionReset)),
        "{tcp:?}"
    );
    let health = SocketAddr::from((Ipv4Addr::LOCALHOST, 10256));
    let (_, page) = http_get(&lab, health, "/metrics").unwrap();
    assert_eq!(
        sample(&page, r#"sluice_dns_refused_total{reason="access"}"#),
        Some(2),
        "{page}"
    );
    // A pod added later is answered once the list follows it (5 s).
    lab.add_pod("late", Ipv4Addr::new(10, 244, 1, 9)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut last = None;
    while Instant::now() < deadline {
        last = ask_from(&lab, "late", Ipv4Addr::new(10, 244, 1, 9));
        if last == Some((0, cluster_ip)) {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_eq!(last, Some((0, cluster_ip)), "the late pod");
}
