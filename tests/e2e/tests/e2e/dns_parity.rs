//! End-to-end: DNS behaviour that CoreDNS and NodeLocal DNSCache users
//! count on: per-zone forwarding, pod records (`pods insecure`), an
//! upstream marked down and skipped, then probed back, and CoreDNS's
//! metric names.
#![allow(clippy::unwrap_used, reason = "tests: a failure fails the test")]

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    time::{Duration, Instant},
};

use sluice_lab::{
    AgentOptions, Lab, LabDns,
    manifest::{self, Endpoint, Port},
    require_privileges,
};

use crate::{
    common::{SERVICE_CIDR, http_get},
    dns::{CLIENT, DNS_IP, RESOLV_CONF, cluster_manifests, sample},
};

const UPSTREAM: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 53);
const CORP: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 54);
/// The first default upstream: nothing there until the test starts it.
const LATE: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 55);
/// The very first default upstream: it answers too late to be of use
/// (past the agent's 2 s per attempt).
const BLACKHOLE: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 57);
const HEALTH: SocketAddr = SocketAddr::V4(std::net::SocketAddrV4::new(Ipv4Addr::LOCALHOST, 10256));

/// `dig +short` from the client pod, with short timeouts.
fn dig(lab: &Lab, args: &[&str]) -> String {
    let out = lab
        .pod("client")
        .ns
        .command("dig")
        .args(["+time=3", "+tries=1", "+short"])
        .args(args)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn metrics(lab: &Lab) -> String {
    http_get(lab, HEALTH, "/metrics").unwrap().1
}

/// CoreDNS's names, for dashboards made for CoreDNS and NodeLocal.
fn assert_coredns_series(page: &str) {
    let server = format!(r#"server="dns://{DNS_IP}:53",zone=".",view="""#);
    for series in [
        format!(r#"coredns_dns_requests_total{{{server},proto="udp",family="1",type="A"}}"#),
        format!(r#"coredns_dns_requests_total{{{server},proto="tcp",family="1",type="A"}}"#),
        format!(r#"coredns_dns_responses_total{{{server},rcode="NOERROR",plugin=""}}"#),
        format!(r#"coredns_dns_request_duration_seconds_count{{{server},type="A"}}"#),
        format!(r#"coredns_cache_misses_total{{server="dns://{DNS_IP}:53",view="",zones="."}}"#),
    ] {
        assert!(sample(page, &series) >= Some(1), "{series} in {page}");
    }
    assert!(
        page.contains(&format!(
            r#"coredns_forward_healthcheck_failures_total{{to="{LATE}:53"}}"#
        )),
        "{page}"
    );
}

/// A client; upstreams: `upstream` (example.test), `corp` (corp.test, a
/// forward zone), `late` (no server yet) and `blackhole` (too slow); the
/// agent with the default upstreams `blackhole`, `late`, `upstream`.
fn parity_lab() -> (Lab, sluice_lab::SlowDns) {
    let mut lab = Lab::new().unwrap();
    lab.add_pod("client", CLIENT).unwrap();
    lab.pod("client").ns.set_resolv_conf(RESOLV_CONF).unwrap();
    lab.add_dnsmasq(
        "upstream",
        UPSTREAM,
        &[
            "--local=/example.test/",
            "--host-record=www.example.test,192.0.2.10",
        ],
    )
    .unwrap();
    lab.add_dnsmasq(
        "corp",
        CORP,
        &[
            "--local=/corp.test/",
            "--host-record=www.corp.test,192.0.2.20",
        ],
    )
    .unwrap();
    // A pod with no server yet: queries to it are refused by its kernel.
    lab.add_pod("late", LATE).unwrap();
    lab.add_pod("blackhole", BLACKHOLE).unwrap();
    let blackhole = sluice_lab::SlowDns::start(
        &lab.pod("blackhole").ns,
        BLACKHOLE,
        Duration::from_secs(10),
        Ipv4Addr::new(192, 0, 2, 66),
    )
    .unwrap();
    lab.write_manifest("cluster.yaml", &cluster_manifests())
        .unwrap();
    let opts = AgentOptions {
        service_cidr: Some(SERVICE_CIDR.into()),
        dns: Some(LabDns {
            ip: IpAddr::V4(DNS_IP),
            upstreams: vec![
                SocketAddr::from((BLACKHOLE, 53)),
                SocketAddr::from((LATE, 53)),
                SocketAddr::from((UPSTREAM, 53)),
            ],
        }),
        extra_args: vec!["--forward-zone".into(), format!("corp.test={CORP}")],
        ..AgentOptions::default()
    };
    lab.start_agent(&opts).unwrap();
    (lab, blackhole)
}

#[test]
fn forward_zones_pod_records_upstream_health_and_coredns_metrics() {
    if !require_privileges("forward_zones_pod_records_upstream_health_and_coredns_metrics") {
        return;
    }
    let (mut lab, _blackhole) = parity_lab();

    // The zone's upstream, and the default ones for the rest.
    assert_eq!(dig(&lab, &["www.corp.test"]), "192.0.2.20");
    assert_eq!(dig(&lab, &["+tcp", "www.corp.test"]), "192.0.2.20");
    // `blackhole` times out (2 s) and `late` is refused, twice each;
    // `upstream` answers.
    assert_eq!(dig(&lab, &["www.example.test"]), "192.0.2.10");
    assert_eq!(dig(&lab, &["+tcp", "www.example.test"]), "192.0.2.10");
    let page = metrics(&lab);
    let late_up = format!(r#"sluice_dns_upstream_up{{upstream="{LATE}:53"}}"#);
    let blackhole_up = format!(r#"sluice_dns_upstream_up{{upstream="{BLACKHOLE}:53"}}"#);
    assert_eq!(sample(&page, &late_up), Some(0), "{page}");
    assert_eq!(sample(&page, &blackhole_up), Some(0), "{page}");
    let failures = sample(&page, "sluice_dns_upstream_failures_total").unwrap();
    assert_eq!(failures, 4, "{page}");
    // Down: skipped, so a query no longer waits out the dead upstream's
    // timeout: each is answered within dig's 1 s.
    for i in 0..5 {
        assert_eq!(
            dig(&lab, &["+time=1", &format!("n{i}.example.test")]),
            "",
            "NXDOMAIN from the upstream, within 1 s"
        );
    }
    assert_eq!(
        sample(&metrics(&lab), "sluice_dns_upstream_failures_total"),
        Some(failures),
        "the down upstream was skipped"
    );

    // Pod records, as `pods insecure`.
    assert_eq!(
        dig(&lab, &["10-244-1-2.default.pod.cluster.local"]),
        "10.244.1.2"
    );

    // Probed while down: the checks fail until its server starts.
    let deadline = Instant::now() + Duration::from_secs(5);
    while sample(&metrics(&lab), "sluice_dns_health_check_failures_total") < Some(1) {
        assert!(
            Instant::now() < deadline,
            "no health check of the down upstream"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Back: its server starts, and a health check finds it within seconds.
    lab.start_dnsmasq("late", &["--address=/only-late.example.test/192.0.2.99"])
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let page = metrics(&lab);
        if sample(&page, &late_up) == Some(1) {
            break;
        }
        assert!(Instant::now() < deadline, "not probed back: {page}");
        std::thread::sleep(Duration::from_millis(200));
    }
    // The first upstream again: a name only it knows.
    assert_eq!(dig(&lab, &["only-late.example.test"]), "192.0.2.99");
    assert_eq!(
        dig(&lab, &["+tcp", "www.example.test"]),
        "192.0.2.10",
        "cached"
    );
    assert_coredns_series(&metrics(&lab));
}

const KUBE_DNS: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 53);
const COREDNS_POD: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 56);

/// `dig +short @server name` in `ns`, inside the lab's cgroup (where
/// socket LB applies), with short timeouts.
fn dig_at(lab: &Lab, ns: &sluice_lab::Netns, server: impl Into<IpAddr>, args: &[&str]) -> String {
    let server = server.into();
    let mut cmd = std::process::Command::new("dig");
    cmd.args(["+time=3", "+tries=1", "+short", &format!("@{server}")])
        .args(args);
    let file = ns.open().unwrap();
    sluice_lab::enter_on_spawn(&mut cmd, &file);
    lab.cgroup().enter_on_spawn(&mut cmd).unwrap();
    let out = cmd.output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// kube-dns's IPv6 ClusterIP and its endpoint's IPv6 address.
const KUBE_DNS6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x96, 0, 0, 0, 0, 0, 0x53);
const COREDNS6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x244, 1, 0, 0, 0, 0, 0x56);

/// kube-dns dual-stack, its ClusterIPs of both families given to
/// `--dns-ip` beside the node-local address.
#[test]
fn the_kube_dns_cluster_ip_is_answered_by_the_agent_with_no_nat_from_pods_and_the_node() {
    if !require_privileges(
        "the_kube_dns_cluster_ip_is_answered_by_the_agent_with_no_nat_from_pods_and_the_node",
    ) {
        return;
    }
    let mut lab = Lab::new().unwrap();
    lab.add_pod("client", CLIENT).unwrap();
    lab.add_ipv6("client", Ipv6Addr::new(0xfd00, 0x244, 1, 0, 0, 0, 0, 2))
        .unwrap();
    // kube-dns's endpoint, on both families: it answers every cluster name
    // with 192.0.2.66, so that an answer says who gave it.
    lab.add_pod("coredns", COREDNS_POD).unwrap();
    lab.add_ipv6("coredns", COREDNS6).unwrap();
    lab.start_dnsmasq(
        "coredns",
        &[
            "--address=/cluster.local/192.0.2.66",
            &format!("--listen-address={COREDNS6}"),
        ],
    )
    .unwrap();
    let ports = [Port::udp("dns", 53), Port::tcp("dns-tcp", 53)];
    let kube_dns = format!(
        "{}---\n{}---\n{}",
        manifest::dual_stack_service("kube-dns", KUBE_DNS, KUBE_DNS6, &ports),
        manifest::endpoint_slice(
            "kube-dns-v4",
            "kube-dns",
            &ports,
            &[Endpoint::ready(COREDNS_POD)]
        ),
        manifest::endpoint_slice(
            "kube-dns-v6",
            "kube-dns",
            &ports,
            &[Endpoint::ready(COREDNS6)]
        ),
    );
    lab.write_manifest(
        "cluster.yaml",
        &format!("{}---\n{kube_dns}", cluster_manifests()),
    )
    .unwrap();
    let opts = AgentOptions {
        service_cidr: Some(SERVICE_CIDR.into()),
        extra_args: vec![
            "--dns-ip".into(),
            format!("{DNS_IP},{KUBE_DNS},{KUBE_DNS6}"),
            "--upstream".into(),
            COREDNS_POD.to_string(),
        ],
        ..AgentOptions::default()
    };
    lab.start_agent(&opts).unwrap();
    let web = "web.default.svc.cluster.local";
    // The endpoint itself answers otherwise, on both families: the agent's
    // answer is the agent's.
    for endpoint in [IpAddr::from(COREDNS_POD), COREDNS6.into()] {
        assert_eq!(
            dig_at(&lab, &lab.pod("client").ns, endpoint, &[web]),
            "192.0.2.66"
        );
    }
    // TC and socket LB leave kube-dns's ClusterIPs to the agent, from the
    // pod and from the node.
    for ns in [&lab.pod("client").ns, lab.node()] {
        for server in [KUBE_DNS.into(), DNS_IP.into(), IpAddr::from(KUBE_DNS6)] {
            assert_eq!(dig_at(&lab, ns, server, &[web]), "10.96.0.10", "@{server}");
            assert_eq!(
                dig_at(&lab, ns, server, &["+tcp", web]),
                "10.96.0.10",
                "+tcp @{server}"
            );
        }
    }
}
