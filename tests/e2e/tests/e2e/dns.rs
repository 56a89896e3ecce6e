//! End-to-end: node-local cluster DNS. The agent answers on 169.254.20.10
//! in the node namespace; pods resolve through it with the resolv.conf
//! every pod gets, using glibc (`getent`) and dig; an upstream dnsmasq in a
//! pod of its own serves the names outside the cluster.
#![allow(clippy::unwrap_used, reason = "tests: a failure fails the test")]

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    time::{Duration, Instant},
};

use sluice_lab::{
    AgentOptions, Lab, LabDns,
    manifest::{self, Endpoint, Port},
    require_privileges,
};

use crate::common::{APPLY, SERVICE_CIDR, backend_ip, backend_name, http_get};

pub(crate) const DNS_IP: Ipv4Addr = Ipv4Addr::new(169, 254, 20, 10);
const UPSTREAM: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 53);
pub(crate) const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 2);
/// Bound of one DNS exchange in a test.
const T: Duration = Duration::from_secs(2);
pub(crate) const RESOLV_CONF: &str = "search default.svc.cluster.local svc.cluster.local cluster.local\nnameserver 169.254.20.10\noptions ndots:5\n";

/// Services in two namespaces; a headless one with hostnames; an
/// ExternalName; named ports for SRV.
pub(crate) fn cluster_manifests() -> String {
    let web = manifest::service_with_endpoints(
        "web",
        Ipv4Addr::new(10, 96, 0, 10),
        &[Port::tcp("http", 80), Port::udp("dns", 53)],
        &[Port::tcp("http", 8080), Port::udp("dns", 5353)],
        &[Endpoint::ready(backend_ip(0))],
    );
    let other = manifest::service(
        "web",
        Ipv4Addr::new(10, 96, 0, 11),
        &[Port::tcp("http", 80)],
    )
    .replace("namespace: default", "namespace: other");
    format!(
        "{web}---\n{other}---\n\
apiVersion: v1\nkind: Service\nmetadata: {{name: db, namespace: default}}\nspec:\n  clusterIP: None\n  ports: [{{name: pg, port: 5432}}]\n---\n\
apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: db-1\n  namespace: default\n  labels: {{kubernetes.io/service-name: db}}\naddressType: IPv4\nports: [{{name: pg, port: 5432}}]\n\
endpoints:\n- addresses: [10.244.1.20]\n  hostname: db-0\n- addresses: [10.244.1.21]\n  hostname: db-1\n- addresses: [10.244.1.22]\n  conditions: {{ready: false}}\n---\n\
apiVersion: v1\nkind: Service\nmetadata: {{name: empty, namespace: default}}\nspec: {{clusterIP: None}}\n---\n\
apiVersion: v1\nkind: Service\nmetadata: {{name: ext, namespace: default}}\nspec: {{type: ExternalName, externalName: www.example.test}}\n"
    )
}

/// The lab: a client, two backends, an upstream dnsmasq serving
/// `example.test`, the cluster above, and the agent serving DNS.
fn dns_lab() -> Lab {
    let mut lab = Lab::new().unwrap();
    lab.add_pod("client", CLIENT).unwrap();
    for i in 0..2 {
        lab.add_pod(&backend_name(i), backend_ip(i)).unwrap();
    }
    lab.add_dnsmasq(
        "upstream",
        UPSTREAM,
        &[
            "--local=/example.test/",
            "--host-record=www.example.test,192.0.2.10",
            "--local-ttl=1",
        ],
    )
    .unwrap();
    lab.write_manifest("cluster.yaml", &cluster_manifests())
        .unwrap();
    lab.pod("client").ns.set_resolv_conf(RESOLV_CONF).unwrap();
    let opts = AgentOptions {
        service_cidr: Some(SERVICE_CIDR.into()),
        dns: Some(LabDns {
            ip: IpAddr::V4(DNS_IP),
            upstreams: vec![SocketAddr::from((UPSTREAM, 53))],
        }),
        ..AgentOptions::default()
    };
    lab.start_agent(&opts).unwrap();
    lab
}

/// Runs a program in the client pod; its stdout.
fn run(lab: &Lab, program: &str, args: &[&str]) -> String {
    let out = lab
        .pod("client")
        .ns
        .command(program)
        .args(args)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `getent hosts NAME`: the address glibc's resolver finds (empty if none).
fn getent(lab: &Lab, name: &str) -> String {
    run(lab, "getent", &["hosts", name])
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned()
}

/// dig with short timeouts; the whole output.
fn dig(lab: &Lab, args: &[&str]) -> String {
    let mut all = vec!["+time=2", "+tries=1"];
    all.extend_from_slice(args);
    run(lab, "dig", &all)
}

/// The answer section of `dig +short`.
fn short(lab: &Lab, args: &[&str]) -> Vec<String> {
    let mut all = vec!["+short"];
    all.extend_from_slice(args);
    let mut lines: Vec<String> = dig(lab, &all).lines().map(str::to_owned).collect();
    lines.sort();
    lines
}

fn status_of(out: &str) -> &str {
    out.split("status: ")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .unwrap_or("")
}

#[test]
fn glibc_resolves_service_names_through_the_search_path() {
    if !require_privileges("glibc_resolves_service_names_through_the_search_path") {
        return;
    }
    let lab = dns_lab();
    assert_eq!(
        getent(&lab, "web"),
        "10.96.0.10",
        "same namespace, via the search path"
    );
    assert_eq!(getent(&lab, "web.other"), "10.96.0.11");
    assert_eq!(getent(&lab, "web.other.svc"), "10.96.0.11");
    assert_eq!(getent(&lab, "web.other.svc.cluster.local."), "10.96.0.11");
    assert_eq!(
        getent(&lab, "WEB.Other.SVC.cluster.local"),
        "10.96.0.11",
        "case-insensitive"
    );
    assert_eq!(
        getent(&lab, "nosuch"),
        "",
        "an unknown name resolves to nothing"
    );
}

#[test]
fn dig_gets_srv_ptr_cname_headless_and_negative_answers() {
    if !require_privileges("dig_gets_srv_ptr_cname_headless_and_negative_answers") {
        return;
    }
    let lab = dns_lab();
    // SRV of a named ClusterIP port: the Service's port and name.
    assert_eq!(
        short(&lab, &["SRV", "_http._tcp.web.default.svc.cluster.local"]),
        ["0 100 80 web.default.svc.cluster.local."]
    );
    assert_eq!(
        short(&lab, &["SRV", "_dns._udp.web.default.svc.cluster.local"]),
        ["0 100 53 web.default.svc.cluster.local."]
    );
    // Headless: the ready endpoints; per-endpoint names; SRV per endpoint.
    assert_eq!(
        short(&lab, &["db.default.svc.cluster.local"]),
        ["10.244.1.20", "10.244.1.21"]
    );
    assert_eq!(
        short(&lab, &["db-1.db.default.svc.cluster.local"]),
        ["10.244.1.21"]
    );
    assert_eq!(
        short(&lab, &["SRV", "_pg._tcp.db.default.svc.cluster.local"]),
        [
            "0 50 5432 db-0.db.default.svc.cluster.local.",
            "0 50 5432 db-1.db.default.svc.cluster.local."
        ]
    );
    // PTR for a ClusterIP and for a headless endpoint.
    assert_eq!(
        short(&lab, &["-x", "10.96.0.11"]),
        ["web.other.svc.cluster.local."]
    );
    assert_eq!(
        short(&lab, &["-x", "10.244.1.20"]),
        ["db-0.db.default.svc.cluster.local."]
    );
    // ExternalName: a CNAME, chased through the upstream.
    assert_eq!(
        short(&lab, &["ext.default.svc.cluster.local"]),
        ["192.0.2.10", "www.example.test."]
    );
    // dns-version.
    assert_eq!(
        short(&lab, &["TXT", "dns-version.cluster.local"]),
        ["\"1.1.0\""]
    );

    // Negative answers: NXDOMAIN for unknown names and a headless Service
    // without ready endpoints; NODATA (with the SOA) for a missing type.
    for name in [
        "nosuch.default.svc.cluster.local",
        "empty.default.svc.cluster.local",
        "google.com.default.svc.cluster.local",
        "db-9.db.default.svc.cluster.local",
    ] {
        let out = dig(&lab, &[name]);
        assert_eq!(status_of(&out), "NXDOMAIN", "{name}: {out}");
        assert!(
            out.contains("IN\tSOA\tns.dns.cluster.local. hostmaster.cluster.local."),
            "{out}"
        );
    }
    let nodata = dig(&lab, &["AAAA", "web.default.svc.cluster.local"]);
    assert_eq!(status_of(&nodata), "NOERROR", "{nodata}");
    assert!(
        nodata.contains("ANSWER: 0") && nodata.contains("SOA"),
        "{nodata}"
    );
    // The SOA's minimum is the TTL (5 s).
    assert!(nodata.contains("86400 5"), "{nodata}");
    let ns_exists = dig(&lab, &["A", "other.svc.cluster.local"]);
    assert_eq!(status_of(&ns_exists), "NOERROR", "{ns_exists}");
    assert_eq!(
        status_of(&dig(&lab, &["A", "nowhere.svc.cluster.local"])),
        "NXDOMAIN"
    );
    // Case: the answer echoes the question's.
    let mixed = dig(&lab, &["Web.Default.Svc.Cluster.Local"]);
    assert!(
        mixed.contains("Web.Default.Svc.Cluster.Local. 5 IN\tA\t10.96.0.10"),
        "{mixed}"
    );
}

/// A dual-stack Service (one ClusterIP per family), an IPv6-only one, and
/// a headless one whose endpoints are in an IPv6 slice and an IPv4 one.
const DUAL_MANIFESTS: &str = "\
apiVersion: v1
kind: Service
metadata: {name: dual, namespace: default}
spec:
  ipFamilyPolicy: RequireDualStack
  ipFamilies: [IPv4, IPv6]
  clusterIP: 10.96.0.12
  clusterIPs: [10.96.0.12, \"fd00:96::12\"]
  ports: [{name: http, port: 80}]
---
apiVersion: v1
kind: Service
metadata: {name: six, namespace: default}
spec:
  ipFamilies: [IPv6]
  clusterIP: \"fd00:96::13\"
  clusterIPs: [\"fd00:96::13\"]
  ports: [{name: http, port: 80}]
---
apiVersion: v1
kind: Service
metadata: {name: db6, namespace: default}
spec:
  clusterIP: None
  ipFamilyPolicy: RequireDualStack
  ports: [{name: pg, port: 5432}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: db6-v6
  namespace: default
  labels: {kubernetes.io/service-name: db6}
addressType: IPv6
ports: [{name: pg, port: 5432}]
endpoints:
- addresses: [\"fd00:244:1::20\"]
  hostname: db-0
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: db6-v4
  namespace: default
  labels: {kubernetes.io/service-name: db6}
addressType: IPv4
ports: [{name: pg, port: 5432}]
endpoints:
- addresses: [10.244.1.30]
  hostname: db-0
";

/// CoreDNS's answers for IPv6: AAAA records of IPv6 ClusterIPs, a
/// dual-stack Service's name answering each family by its ClusterIP of
/// that family, an IPv6-only Service's A query NODATA, a headless
/// Service's endpoints of both families under one name, and PTR records
/// in `ip6.arpa`.
#[test]
fn ipv6_and_dual_stack_services_get_aaaa_answers_and_ip6_arpa_ptr_records() {
    if !require_privileges("ipv6_and_dual_stack_services_get_aaaa_answers_and_ip6_arpa_ptr_records")
    {
        return;
    }
    let mut lab = dns_lab();
    let mark = lab.agent().log_len();
    lab.write_manifest("dual.yaml", DUAL_MANIFESTS).unwrap();
    lab.agent()
        .wait_for("Services applied", mark, APPLY)
        .unwrap();
    let dual = "dual.default.svc.cluster.local";
    assert_eq!(short(&lab, &["A", dual]), ["10.96.0.12"]);
    assert_eq!(short(&lab, &["AAAA", dual]), ["fd00:96::12"]);
    let six = "six.default.svc.cluster.local";
    assert_eq!(short(&lab, &["AAAA", six]), ["fd00:96::13"]);
    let nodata = dig(&lab, &["A", six]);
    assert_eq!(status_of(&nodata), "NOERROR", "{nodata}");
    assert!(nodata.contains("ANSWER: 0"), "{nodata}");
    for name in [
        "db6.default.svc.cluster.local",
        "db-0.db6.default.svc.cluster.local",
    ] {
        assert_eq!(short(&lab, &["AAAA", name]), ["fd00:244:1::20"], "{name}");
        assert_eq!(short(&lab, &["A", name]), ["10.244.1.30"], "{name}");
    }
    // PTR in ip6.arpa, for a ClusterIP and for a headless endpoint, and
    // in in-addr.arpa for the dual-stack Service's IPv4 ClusterIP.
    assert_eq!(short(&lab, &["-x", "fd00:96::12"]), [format!("{dual}.")]);
    assert_eq!(short(&lab, &["-x", "10.96.0.12"]), [format!("{dual}.")]);
    assert_eq!(short(&lab, &["-x", "fd00:96::13"]), [format!("{six}.")]);
    assert_eq!(
        short(&lab, &["-x", "fd00:244:1::20"]),
        ["db-0.db6.default.svc.cluster.local."]
    );
    // glibc's resolver, asked for IPv6 addresses, gets them.
    assert_eq!(
        run(&lab, "getent", &["ahostsv6", six])
            .split_whitespace()
            .next(),
        Some("fd00:96::13")
    );
}

#[test]
fn a_new_service_resolves_as_soon_as_its_manifest_lands() {
    if !require_privileges("a_new_service_resolves_as_soon_as_its_manifest_lands") {
        return;
    }
    let mut lab = dns_lab();
    let name = "late.default.svc.cluster.local";
    assert_eq!(status_of(&dig(&lab, &[name])), "NXDOMAIN");
    let mark = lab.agent().log_len();
    lab.write_manifest(
        "late.yaml",
        &manifest::service(
            "late",
            Ipv4Addr::new(10, 96, 0, 77),
            &[Port::tcp("http", 80)],
        ),
    )
    .unwrap();
    lab.agent()
        .wait_for("Services applied", mark, APPLY)
        .unwrap();
    // No stale negative answer: the very next query has it.
    assert_eq!(short(&lab, &[name]), ["10.96.0.77"]);
    lab.remove_manifest("late.yaml").unwrap();
    let mark = lab.agent().log_len();
    lab.agent()
        .wait_for("Services applied", mark, APPLY)
        .unwrap();
    assert_eq!(status_of(&dig(&lab, &[name])), "NXDOMAIN");
}

#[test]
fn external_names_go_upstream_and_stay_answered_from_the_cache_when_it_stops() {
    if !require_privileges(
        "external_names_go_upstream_and_stay_answered_from_the_cache_when_it_stops",
    ) {
        return;
    }
    let mut lab = dns_lab();
    assert_eq!(getent(&lab, "www.example.test"), "192.0.2.10");
    assert_eq!(status_of(&dig(&lab, &["nosuch.example.test"])), "NXDOMAIN");
    lab.stop_server("upstream").unwrap();
    // Fresh from the cache (the upstream's TTL is 1 s, the cache keeps it).
    assert_eq!(short(&lab, &["www.example.test"]), ["192.0.2.10"]);
    // Past its TTL, with no upstream: served stale (RFC 8767), TTL 30.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = dig(&lab, &["+noall", "+answer", "www.example.test"]);
        if out.contains("\t30\tIN\tA\t192.0.2.10") {
            break;
        }
        assert!(out.contains("192.0.2.10"), "still answered: {out}");
        assert!(Instant::now() < deadline, "never served stale: {out}");
    }
}

#[test]
fn a_large_headless_answer_is_truncated_over_udp_and_whole_over_tcp() {
    if !require_privileges("a_large_headless_answer_is_truncated_over_udp_and_whole_over_tcp") {
        return;
    }
    let mut lab = dns_lab();
    let endpoints: Vec<Endpoint> = (0..100u8)
        .map(|i| Endpoint::ready(Ipv4Addr::new(10, 244, 2, i + 1)))
        .collect();
    let mark = lab.agent().log_len();
    lab.write_manifest(
        "big.yaml",
        &format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: big, namespace: default}}\nspec: {{clusterIP: None}}\n---\n{}",
            manifest::endpoint_slice("big-1", "big", &[], &endpoints)
        ),
    )
    .unwrap();
    lab.agent()
        .wait_for("Services applied", mark, APPLY)
        .unwrap();
    let name = "big.default.svc.cluster.local";
    let udp = dig(&lab, &["+notcp", "+ignore", name]);
    assert!(
        udp.contains(" tc ") || udp.contains(" tc;"),
        "UDP answer truncated: {udp}"
    );
    let tcp = dig(&lab, &["+tcp", "+short", name]);
    assert_eq!(tcp.lines().count(), 100, "{tcp}");
    // Without +ignore, dig retries over TCP by itself and gets it all.
    assert_eq!(short(&lab, &[name]).len(), 100);

    // Three queries written at once on one TCP connection (pipelined):
    // three answers, in order, the large one whole.
    let answers = lab
        .pod("client")
        .ns
        .run(move || {
            use std::io::{Read as _, Write as _};
            let mut conn =
                std::net::TcpStream::connect_timeout(&SocketAddr::from((DNS_IP, 53)), T).unwrap();
            conn.set_read_timeout(Some(T)).unwrap();
            let mut batch = Vec::new();
            for (id, qname) in [
                (1u16, name),
                (2, "web.default.svc.cluster.local"),
                (3, name),
            ] {
                let q = query(id, qname, 1);
                batch.extend_from_slice(&u16::try_from(q.len()).unwrap().to_be_bytes());
                batch.extend_from_slice(&q);
            }
            conn.write_all(&batch).unwrap();
            (0..3)
                .map(|_| {
                    let mut len = [0u8; 2];
                    conn.read_exact(&mut len).unwrap();
                    let mut msg = vec![0u8; usize::from(u16::from_be_bytes(len))];
                    conn.read_exact(&mut msg).unwrap();
                    // (id, answer count)
                    (
                        u16::from_be_bytes([msg[0], msg[1]]),
                        u16::from_be_bytes([msg[6], msg[7]]),
                    )
                })
                .collect::<Vec<_>>()
        })
        .unwrap();
    assert_eq!(answers, [(1, 100), (2, 1), (3, 100)]);
}

#[test]
fn a_thousand_parallel_a_and_aaaa_lookups_all_come_back() {
    if !require_privileges("a_thousand_parallel_a_and_aaaa_lookups_all_come_back") {
        return;
    }
    let lab = dns_lab();
    let lost = lab
        .pod("client")
        .ns
        .run(|| parallel_lookups(1000, Duration::from_secs(1)))
        .unwrap();
    assert!(
        lost.is_empty(),
        "{} of 2000 queries left unanswered for 1 s (glibc would wait 5 s), e.g. {:?}",
        lost.len(),
        lost.iter().take(5).collect::<Vec<_>>()
    );
}

/// As glibc does: A and AAAA at once from one socket, for `n` names; the
/// queries not answered within `wait` (none should be).
fn parallel_lookups(n: u16, wait: Duration) -> Vec<String> {
    use std::net::UdpSocket;
    let names = ["web", "web.other", "db", "nosuch", "ext"];
    let mut sockets = Vec::new();
    for i in 0..n {
        let s = UdpSocket::bind("0.0.0.0:0").unwrap();
        s.connect((DNS_IP, 53)).unwrap();
        s.set_nonblocking(true).unwrap();
        let name = format!(
            "{}.default.svc.cluster.local",
            names[usize::from(i) % names.len()]
        );
        for (qtype, id) in [(1u16, i * 2), (28u16, i * 2 + 1)] {
            s.send(&query(id, &name, qtype)).unwrap();
        }
        sockets.push((s, name, [false, false]));
    }
    let deadline = Instant::now() + wait;
    let mut buf = [0u8; 1500];
    while Instant::now() < deadline && sockets.iter().any(|(_, _, got)| !got.iter().all(|g| *g)) {
        let mut progressed = false;
        for (s, _, got) in &mut sockets {
            while let Ok(len) = s.recv(&mut buf) {
                if len >= 2 {
                    let id = u16::from_be_bytes([buf[0], buf[1]]);
                    got[usize::from(id % 2)] = true;
                    progressed = true;
                }
            }
        }
        if !progressed {
            std::thread::yield_now();
        }
    }
    sockets
        .iter()
        .flat_map(|(_, name, got)| {
            got.iter()
                .zip(["A", "AAAA"])
                .filter(|(g, _)| !**g)
                .map(move |(_, t)| format!("{t} {name}"))
        })
        .collect()
}

/// A minimal query message: id, RD, one question.
pub(crate) fn query(id: u16, name: &str, qtype: u16) -> Vec<u8> {
    let mut m = Vec::new();
    m.extend_from_slice(&id.to_be_bytes());
    m.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.split('.') {
        m.push(u8::try_from(label.len()).unwrap());
        m.extend_from_slice(label.as_bytes());
    }
    m.push(0);
    m.extend_from_slice(&qtype.to_be_bytes());
    m.extend_from_slice(&1u16.to_be_bytes());
    m
}

/// The value of one sample line (a counter) of a Prometheus text page.
pub(crate) fn sample(page: &str, series: &str) -> Option<u64> {
    page.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[test]
fn metrics_count_queries_by_type_and_rcode_the_cache_upstream_failures_and_drops() {
    if !require_privileges(
        "metrics_count_queries_by_type_and_rcode_the_cache_upstream_failures_and_drops",
    ) {
        return;
    }
    let mut lab = dns_lab();
    assert_eq!(
        status_of(&dig(&lab, &["web.default.svc.cluster.local"])),
        "NOERROR"
    );
    assert_eq!(
        status_of(&dig(
            &lab,
            &["_http._tcp.web.default.svc.cluster.local", "SRV"]
        )),
        "NOERROR"
    );
    assert_eq!(
        status_of(&dig(&lab, &["nosuch.default.svc.cluster.local"])),
        "NXDOMAIN"
    );
    // A miss, then a hit.
    for _ in 0..2 {
        assert_eq!(short(&lab, &["www.example.test"]), ["192.0.2.10"]);
    }
    // Nothing cached and no upstream: a failure, SERVFAIL.
    lab.stop_server("upstream").unwrap();
    assert_eq!(status_of(&dig(&lab, &["other.example.test"])), "SERVFAIL");
    // Three bytes: not even a header.
    lab.pod("client")
        .ns
        .run(|| {
            let s = std::net::UdpSocket::bind((CLIENT, 0)).unwrap();
            s.send_to(&[1, 2, 3], (DNS_IP, 53)).unwrap();
        })
        .unwrap();

    let health = SocketAddr::from((Ipv4Addr::LOCALHOST, 10256));
    let deadline = Instant::now() + Duration::from_secs(5);
    let page = loop {
        // The datagram may still be on its way: wait for its count.
        let (code, page) = http_get(&lab, health, "/metrics").unwrap();
        assert_eq!(code, 200);
        if sample(&page, r#"sluice_dns_dropped_total{reason="short"}"#) == Some(1) {
            break page;
        }
        assert!(
            Instant::now() < deadline,
            "the short message was not counted: {page}"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let queries = |qtype: &str, rcode: &str| {
        sample(
            &page,
            &format!(r#"sluice_dns_queries_total{{type="{qtype}",rcode="{rcode}"}}"#),
        )
        .unwrap_or(0)
    };
    assert_eq!(queries("A", "NOERROR"), 3, "{page}");
    assert_eq!(queries("SRV", "NOERROR"), 1, "{page}");
    assert_eq!(queries("A", "NXDOMAIN"), 1, "{page}");
    assert_eq!(queries("A", "SERVFAIL"), 1, "{page}");
    assert_eq!(
        sample(&page, "sluice_dns_request_duration_seconds_count"),
        Some(6)
    );
    assert_eq!(
        sample(
            &page,
            r#"sluice_dns_request_duration_seconds_bucket{le="+Inf"}"#
        ),
        Some(6)
    );
    assert_eq!(
        sample(&page, "sluice_dns_cache_hits_total"),
        Some(1),
        "{page}"
    );
    assert!(
        sample(&page, "sluice_dns_cache_misses_total") >= Some(2),
        "{page}"
    );
    assert!(
        sample(&page, "sluice_dns_upstream_failures_total") >= Some(1),
        "{page}"
    );
}

/// The metric names (`sluice_…`, `kubeproxy_…`) a `PromQL` expression reads.
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = expr;
    while let Some(at) = ["sluice_", "kubeproxy_"]
        .iter()
        .filter_map(|p| rest.find(p))
        .min()
    {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.push(tail[..end].to_owned());
        rest = &tail[end..];
    }
    names
}

#[test]
fn every_series_the_grafana_dashboard_charts_is_in_metrics() {
    if !require_privileges("every_series_the_grafana_dashboard_charts_is_in_metrics") {
        return;
    }
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../../manifests/grafana/sluice-dashboard.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let lab = dns_lab();
    let health = SocketAddr::from((Ipv4Addr::LOCALHOST, 10256));
    let (_, metrics) = http_get(&lab, health, "/metrics").unwrap();
    let mut checked = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            for name in metric_names(expr) {
                let family = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| name.strip_suffix(s))
                    .unwrap_or(&name);
                assert!(
                    metrics.lines().any(
                        |l| l.starts_with(&name) || l.starts_with(&format!("# TYPE {family} "))
                    ),
                    "`{name}` (panel {}) is not in /metrics:\n{metrics}",
                    panel["title"]
                );
                checked += 1;
            }
        }
    }
    assert!(checked >= 12, "{checked} series checked");
}
