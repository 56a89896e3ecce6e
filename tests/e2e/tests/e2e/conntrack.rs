//! Conntrack under pressure, end to end: floods of new flows from a pod
//! and from outside beside idle connections that must survive them, the
//! lifetimes of closed, idle and established flows, and an upgrade over
//! the previous layout's pins.
#![allow(clippy::unwrap_used, reason = "tests: a failure fails the test")]

use std::{
    collections::BTreeSet,
    net::{Ipv4Addr, SocketAddr, TcpStream},
    thread,
    time::{Duration, Instant},
};

use aya::maps::{HashMap, Map, MapData};
use sluice_abi::{
    conntrack::{
        CT_CLOSED, CT_DIR_ORIGINAL, CT_ESTABLISHED, CT_F_FIN_ORIGINAL, CT_F_RST, CT_F_SNAT,
        CT_TIER_ESTABLISHED, CtEntry, CtKey, CtTable,
        legacy::{CtValueV2, V2_F_SNAT, V2_TCP_FIN, V2_TCP_RST},
    },
    maps as names, proto,
};
use sluice_agent::dataplane::conntrack::{Census, Conntrack, MapCensus};
use sluice_lab::{
    AgentOptions, Cluster, EXT_IF, Lab,
    frame::{self, Hop, TCP_SYN},
    lab::request_line,
    mac_of,
    manifest::{self, Endpoint, Port},
    require_privileges,
};

use crate::common::*;

/// `web` with a NodePort (type NodePort, port 80 → 8080) on `backends`.
fn web_node_port(backends: &[usize]) -> String {
    let eps: Vec<String> = backends
        .iter()
        .map(|i| {
            format!(
                "{{addresses: [\"{}\"], conditions: {{ready: true}}}}",
                backend_ip(*i)
            )
        })
        .collect();
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: web, namespace: default}}\nspec:\n  type: NodePort\n  clusterIP: {VIP}\n  ports:\n  - {{name: http, port: 80, nodePort: {NODE_PORT}}}\n---\n\
         apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: web-1\n  namespace: default\n  labels: {{kubernetes.io/service-name: web}}\n\
         addressType: IPv4\nports: [{{name: http, port: 8080}}]\nendpoints: [{}]\n",
        eps.join(", ")
    )
}

const NODE_PORT: u16 = 30080;
/// The UDP Services the flood goes to: 10.96.1.1-6, port 53.
const UDP_SERVICES: u8 = 6;

fn udp_vip(k: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 96, 1, 1 + k)
}

/// The entries of the flow from `client`'s port `port` (either direction).
fn flow_entries(pin_dir: &std::path::Path, client: Ipv4Addr, port: u16) -> Vec<(u32, CtEntry)> {
    Conntrack::open_pinned(pin_dir)
        .unwrap()
        .entries()
        .into_iter()
        .filter(|(_, _, k, _)| {
            let (addr, p) = if k.dir == CT_DIR_ORIGINAL {
                (k.saddr_be, k.sport_be)
            } else {
                (k.daddr_be, k.dport_be)
            };
            addr == client.octets() && p == port.to_be_bytes()
        })
        .map(|(_, tier, _, e)| (tier, e))
        .collect()
}

fn census_of<'a>(c: &'a Census, table: &str, map: &str) -> &'a MapCensus {
    c.maps
        .iter()
        .find(|m| m.table == table && m.map == map)
        .unwrap_or_else(|| panic!("no {table}/{map} in {c:?}"))
}

/// Polls `cond` every 100 ms for up to `limit`; the time it took.
fn within(limit: Duration, mut cond: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if cond() {
            return Some(start.elapsed());
        }
        thread::sleep(Duration::from_millis(100));
    }
    None
}

/// The conntrack size of the flood test: small, so that it fills quickly.
const FLOOD_SIZE: u32 = 16_384;

/// Node a of a two-node lab with a client, three backends, `web` with a
/// NodePort and six UDP Services, and its agent running with
/// `FLOOD_SIZE` entries of conntrack.
fn flood_cluster() -> Cluster {
    let mut c = Cluster::new().unwrap();
    let lab = c.node(0);
    lab.add_pod("client", CLIENT).unwrap();
    for i in 0..3 {
        lab.add_pod(&backend_name(i), backend_ip(i)).unwrap();
        lab.serve(&backend_name(i), &[8080], &[5353]).unwrap();
    }
    lab.write_manifest("web.yaml", &web_node_port(&[0, 1, 2]))
        .unwrap();
    let eps: Vec<Endpoint> = (0..3).map(|i| Endpoint::ready(backend_ip(i))).collect();
    for k in 0..UDP_SERVICES {
        lab.write_manifest(
            &format!("udp{k}.yaml"),
            &manifest::service_with_endpoints(
                &format!("udp{k}"),
                udp_vip(k),
                &[Port::udp("dns", 53)],
                &[Port::udp("dns", 5353)],
                &eps,
            ),
        )
        .unwrap();
    }
    lab.start_agent(&AgentOptions {
        extra_args: [
            "--node-name",
            "node-a",
            "--conntrack-size",
            &FLOOD_SIZE.to_string(),
        ]
        .map(String::from)
        .to_vec(),
        ..AgentOptions::default()
    })
    .unwrap();
    lab.agent()
        .wait_for("external interface attached", 0, APPLY)
        .unwrap();
    c
}

/// A pod's burst: 4x the whole table in new UDP flows to six Services.
fn udp_burst(c: &Cluster) -> Vec<Vec<u8>> {
    let lab = c.node_ref(0);
    let hop = Hop::pod_to_node(lab.pod("client"), lab.node()).unwrap();
    let per_service = 4 * FLOOD_SIZE / u32::from(UDP_SERVICES) + 1;
    (0..UDP_SERVICES)
        .flat_map(|k| {
            (0..per_service).map(move |i| {
                let sport = 1024 + u16::try_from(i).unwrap();
                frame::udp(hop, (CLIENT, sport), (udp_vip(k), 53), 8, true)
            })
        })
        .collect()
}

/// From outside: 2x the table in SYNs to node a's NodePort, every source
/// forged (100.64.0.0/10, nowhere in the lab: the answers go nowhere).
fn syn_flood(c: &Cluster) -> Vec<Vec<u8>> {
    let outside = Hop {
        src_mac: c.client().mac("eth0").unwrap(),
        dst_mac: mac_of(c.node_ref(0).node(), EXT_IF).unwrap(),
    };
    let node = c.node_ip(0);
    (0..2 * FLOOD_SIZE)
        .map(|i| {
            let [_, a, b, d] = i.to_be_bytes();
            let src = Ipv4Addr::new(100, 64 + (a & 0x3f), b, d);
            let sport = 1024 + u16::try_from(i % 60_000).unwrap();
            frame::tcp(outside, (src, sport), (node, NODE_PORT), TCP_SYN, i)
        })
        .collect()
}

#[test]
fn floods_of_new_flows_from_a_pod_and_from_outside_never_break_idle_established_connections() {
    if !require_privileges(
        "floods_of_new_flows_from_a_pod_and_from_outside_never_break_idle_established_connections",
    ) {
        return;
    }
    let c = flood_cluster();
    // Idle connections through the ClusterIP, on the TC path (this test's
    // threads are not in the lab's cgroup: no socket LB).
    let client = c.node_ref(0).pod("client");
    let opened = Instant::now();
    let mut idle: Vec<(TcpStream, String)> = (0..20)
        .map(|_| {
            let mut s = client.tcp_connect(http(), T).unwrap();
            let who = who(&request_line(&mut s, T).unwrap());
            (s, who)
        })
        .collect();
    let spread: BTreeSet<&str> = idle.iter().map(|(_, w)| w.as_str()).collect();
    assert!(
        spread.len() > 1,
        "the idle connections use several backends"
    );

    let (udp, syns) = (udp_burst(&c), syn_flood(&c));
    assert!(udp.len() >= 4 * FLOOD_SIZE as usize);
    let udp_flood = client
        .ns
        .spawn(move || frame::RawSocket::open("eth0")?.send_all(&udp))
        .unwrap();
    let syn_flood = c
        .client()
        .ns
        .spawn(move || frame::RawSocket::open("eth0")?.send_all(&syns))
        .unwrap();
    // New connections while the floods run.
    let mut during = 0;
    while !(udp_flood.is_finished() && syn_flood.is_finished()) || during < 10 {
        let answer = client.tcp_request(http(), T).unwrap();
        assert!(!who(&answer).is_empty());
        during += 1;
        assert!(during < 10_000, "the floods never ended");
    }
    udp_flood.join().unwrap().unwrap().unwrap();
    syn_flood.join().unwrap().unwrap().unwrap();

    // Idle for 30 s in all.
    thread::sleep(Duration::from_secs(30).saturating_sub(opened.elapsed()));
    for (i, (s, backend)) in idle.iter_mut().enumerate() {
        let answer =
            request_line(s, T).unwrap_or_else(|e| panic!("idle connection {i} broke: {e:#}"));
        assert_eq!(
            &who(&answer),
            backend,
            "idle connection {i} kept its backend"
        );
    }
    for _ in 0..10 {
        client.tcp_request(http(), T).unwrap();
    }

    // The pressure shows, with its reason: evictions of new flows only.
    let lab = c.node_ref(0);
    let census = Conntrack::open_pinned(&lab.pin_dir()).unwrap().census();
    let ew_udp = census_of(&census, "east_west_other", "new");
    assert!(ew_udp.evicted > u64::from(FLOOD_SIZE), "{ew_udp:?}");
    let ns_tcp = census_of(&census, "north_south_tcp", "new");
    assert!(ns_tcp.evicted > u64::from(FLOOD_SIZE), "{ns_tcp:?}");
    for m in &census.maps {
        if m.map == "established" {
            assert_eq!(m.evicted, 0, "{m:?}");
        }
    }
    let ew_tcp = census_of(&census, "east_west_tcp", "established");
    assert!(
        ew_tcp.by_state[usize::from(CT_ESTABLISHED)] >= 40,
        "{ew_tcp:?}"
    );
    // /metrics says the same, from the collector's last pass.
    let metrics = http_get(lab, SocketAddr::from(([127, 0, 0, 1], 10256)), "/metrics")
        .unwrap()
        .1;
    // IPv4's series (`labels` without the family).
    let series = |name: &str, labels: &str| -> f64 {
        let name = format!("{name}{{{labels},family=\"ipv4\"}}");
        metrics
            .lines()
            .find(|l| l.starts_with(&name))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no `{name}` in {metrics}"))
    };
    let new = |table: &str| format!("table=\"{table}\",map=\"new\"");
    assert!(series("sluice_conntrack_evicted_total", &new("north_south_tcp")) > 0.0);
    // Full, for an LRU map: each CPU keeps some free entries aside.
    let fill = series("sluice_conntrack_fill_ratio", &new("east_west_other"));
    assert!(fill > 0.5, "fill {fill}\n{metrics}");
    let established = "table=\"east_west_tcp\",map=\"established\",state=\"established\"";
    assert!(series("sluice_conntrack_entries", established) >= 40.0);
    let status = lab.status(&sluice_lab::default_bin()).unwrap();
    assert!(
        status
            .lines()
            .any(|l| l.starts_with("north_south_tcp") && l.contains(" new ")),
        "{status}"
    );
}

/// A lab of one client and two backends whose agent runs with short
/// lifetimes (closing 2 s, UDP 2 s, replied UDP 3 s) and collects every second.
fn short_lived_lab() -> Lab {
    let mut lab = web_lab(2);
    lab.start_agent(&AgentOptions {
        extra_args: [
            "--conntrack-lifetime-closing",
            "2",
            "--conntrack-lifetime-udp",
            "2",
            "--conntrack-lifetime-udp-replied",
            "3",
            "--conntrack-gc-interval",
            "1",
        ]
        .map(String::from)
        .to_vec(),
        ..AgentOptions::default()
    })
    .unwrap();
    lab
}

#[test]
fn closed_and_idle_flows_expire_after_their_lifetimes_and_established_ones_stay() {
    if !require_privileges(
        "closed_and_idle_flows_expire_after_their_lifetimes_and_established_ones_stay",
    ) {
        return;
    }
    let lab = short_lived_lab();
    let pins = lab.pin_dir();
    let client = lab.pod("client");

    // An established connection, left idle through what follows.
    let mut kept = client.tcp_connect(http(), T).unwrap();
    let kept_backend = who(&request_line(&mut kept, T).unwrap());
    let kept_port = kept.local_addr().unwrap().port();
    let kept_since = Instant::now();

    // A connection that closes.
    let mut closing = client.tcp_connect(http(), T).unwrap();
    request_line(&mut closing, T).unwrap();
    let port = closing.local_addr().unwrap().port();
    closing.shutdown(std::net::Shutdown::Both).unwrap();
    drop(closing);
    within(T, || {
        let e = flow_entries(&pins, CLIENT, port);
        e.len() == 2 && e.iter().all(|(_, e)| e.state == CT_CLOSED)
    })
    .unwrap_or_else(|| {
        panic!(
            "FINs from both sides close the flow: {:?}",
            flow_entries(&pins, CLIENT, port)
        )
    });
    let closed_at = Instant::now();
    let gone = within(Duration::from_secs(10), || {
        flow_entries(&pins, CLIENT, port).is_empty()
    })
    .expect("a closed flow's entries go after the closing lifetime");
    assert!(
        closed_at.elapsed() >= Duration::from_secs(2),
        "not before the closing lifetime: gone after {gone:?}"
    );

    // A UDP exchange, then nothing.
    let sock = client.udp_socket().unwrap();
    let udp_port = sock.local_addr().unwrap().port();
    sock.set_read_timeout(Some(T)).unwrap();
    sock.send_to(b"hello\n", dns()).unwrap();
    let mut buf = [0u8; 256];
    sock.recv_from(&mut buf).unwrap();
    let sent_at = Instant::now();
    assert_eq!(flow_entries(&pins, CLIENT, udp_port).len(), 2);
    within(Duration::from_secs(10), || {
        flow_entries(&pins, CLIENT, udp_port).is_empty()
    })
    .expect("an idle UDP flow's entries go after its lifetime");
    assert!(
        sent_at.elapsed() >= Duration::from_secs(3),
        "the replied lifetime is 3 s"
    );

    // Many closing lifetimes later, the idle established connection works,
    // with its backend and its entries.
    thread::sleep(Duration::from_secs(10).saturating_sub(kept_since.elapsed()));
    let answer = request_line(&mut kept, T).unwrap();
    assert_eq!(who(&answer), kept_backend);
    let entries = flow_entries(&pins, CLIENT, kept_port);
    assert_eq!(entries.len(), 2, "{entries:?}");
    assert!(
        entries
            .iter()
            .all(|(tier, e)| *tier == CT_TIER_ESTABLISHED && e.state == CT_ESTABLISHED),
        "{entries:?}"
    );
    let census = Conntrack::open_pinned(&pins).unwrap().census();
    assert!(
        census.maps.iter().map(|m| m.expired).sum::<u64>() >= 4,
        "{census:?}"
    );
}

/// Creates and pins an empty map of the previous layout's conntrack:
/// LRU, `CtKey` → `CtValueV2`.
fn pin_v2_map(path: &std::path::Path, max_entries: u32) {
    #[repr(C)]
    struct PinAttr {
        pathname: u64,
        bpf_fd: u32,
        file_flags: u32,
    }
    const BPF_OBJ_PIN: libc::c_long = 6;
    const BPF_MAP_TYPE_LRU_HASH: u32 = 9;
    let map = sluice_agent::dataplane::create_map(
        BPF_MAP_TYPE_LRU_HASH,
        u32::try_from(size_of::<CtKey>()).unwrap(),
        u32::try_from(size_of::<CtValueV2>()).unwrap(),
        max_entries,
        "SLUICE_CT_V2",
    )
    .unwrap();
    let fd = std::os::fd::AsRawFd::as_raw_fd(&map);
    let path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    let mut pin = PinAttr {
        pathname: path.as_ptr() as u64,
        bpf_fd: u32::try_from(fd).unwrap(),
        file_flags: 0,
    };
    // SAFETY: bpf(2) with `BPF_OBJ_PIN`'s attribute laid out as
    // linux/bpf.h's; `path` and `map` outlive the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_PIN,
            &raw mut pin,
            size_of::<PinAttr>(),
        )
    };
    assert_eq!(r, 0, "BPF_OBJ_PIN: {}", std::io::Error::last_os_error());
    // The pin keeps the map once `map` is closed.
}

/// An entry of this layout as the previous layout held it.
fn downgrade(e: &CtEntry) -> CtValueV2 {
    let mut tcp_flags = 0;
    if e.flags & CT_F_FIN_ORIGINAL != 0 {
        tcp_flags |= V2_TCP_FIN;
    }
    if e.flags & CT_F_RST != 0 {
        tcp_flags |= V2_TCP_RST;
    }
    CtValueV2 {
        nat_addr_be: e.nat_addr_be,
        nat_port_be: e.nat_port_be,
        tcp_flags,
        flags: if e.flags & CT_F_SNAT != 0 {
            V2_F_SNAT
        } else {
            0
        },
        service_id: e.service_id,
        backend_id: e.backend_id,
        last_seen_ns: e.last_seen_ns,
        snat_addr_be: e.snat_addr_be,
        snat_port_be: e.snat_port_be,
        _pad: [0; 2],
    }
}

#[test]
fn an_agent_started_over_the_previous_conntrack_layout_keeps_live_connections() {
    if !require_privileges(
        "an_agent_started_over_the_previous_conntrack_layout_keeps_live_connections",
    ) {
        return;
    }
    let mut lab = web_lab(3);
    lab.start_agent(&AgentOptions::default()).unwrap();
    let client = lab.pod("client");
    let mut conns: Vec<(TcpStream, String)> = (0..6)
        .map(|_| {
            let mut s = client.tcp_connect(http(), T).unwrap();
            let who = who(&request_line(&mut s, T).unwrap());
            (s, who)
        })
        .collect();
    lab.take_agent().unwrap().stop().unwrap();

    // The pins as the previous release left them: one LRU conntrack map
    // (`SLUICE_CT_V2`) holding these flows, and none of this layout's. The
    // programs attached now keep their own maps until they are replaced.
    let pins = lab.pin_dir();
    let flows: Vec<(CtKey, CtEntry)> = Conntrack::open_pinned(&pins)
        .unwrap()
        .entries()
        .into_iter()
        .map(|(_, _, k, e)| (k, e))
        .collect();
    assert_eq!(flows.len(), 12, "two entries for each connection");
    let v2 = pins.join(names::CONNTRACK_V2);
    pin_v2_map(&v2, 262_144);
    let mut old: HashMap<MapData, CtKey, CtValueV2> =
        HashMap::try_from(Map::LruHashMap(MapData::from_pin(&v2).unwrap())).unwrap();
    for (k, e) in &flows {
        old.insert(k, downgrade(e), 0).unwrap();
    }
    drop(old);
    for name in names::CONNTRACK.iter().chain([&names::CONNTRACK_STATS]) {
        std::fs::remove_file(pins.join(name)).unwrap();
    }

    lab.start_agent(&AgentOptions::default()).unwrap();
    let log = lab.agent().log();
    assert!(
        log.contains("converted tracked flows from the previous conntrack layout"),
        "{log}"
    );
    assert!(!v2.exists(), "the old map's pin is removed");
    let client = lab.pod("client");
    for (i, (s, backend)) in conns.iter_mut().enumerate() {
        let answer = request_line(s, T).unwrap_or_else(|e| panic!("connection {i} broke: {e:#}"));
        assert_eq!(&who(&answer), backend, "connection {i} kept its backend");
    }
    let tables: BTreeSet<(CtTable, u32)> = Conntrack::open_pinned(&pins)
        .unwrap()
        .entries()
        .into_iter()
        .filter(|(_, _, k, _)| k.proto == proto::TCP)
        .map(|(t, tier, _, _)| (t, tier))
        .collect();
    assert!(
        tables
            .iter()
            .all(|(t, tier)| t.label() == "east_west_tcp" && *tier == CT_TIER_ESTABLISHED),
        "ClusterIP flows are east-west and established: {tables:?}"
    );
    // New connections work too.
    client.tcp_request(http(), T).unwrap();
}
