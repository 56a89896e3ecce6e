//! The cluster zone: what Services publish, and the answers (spec schema
//! 1.1.0 and CoreDNS's negative-answer table).

use std::net::IpAddr;

use hickory_proto::rr::{Name, RData, RecordType};

use super::*;

fn name(s: &str) -> Name {
    Name::from_ascii(s).unwrap()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn http() -> DnsPort {
    DnsPort {
        name: "http".into(),
        protocol: Proto::Tcp,
        port: 80,
    }
}

fn unnamed() -> DnsPort {
    DnsPort {
        name: String::new(),
        protocol: Proto::Tcp,
        port: 81,
    }
}

fn endpoint(name: &str, addr: &str) -> DnsEndpoint {
    DnsEndpoint {
        name: name.into(),
        ips: vec![ip(addr)],
        ports: vec![DnsPort {
            port: 8080,
            ..http()
        }],
    }
}

/// A zone with `web` (ClusterIP), `db` (headless: two ready endpoints, one
/// named by hostname, one by address), `ext` (ExternalName) in `default`.
fn zone() -> ClusterZone {
    let zone = ClusterZone::new(&name("cluster.local"), 5);
    zone.set(
        "default",
        "web",
        Some(DnsService {
            kind: DnsKind::ClusterIp(vec![ip("10.96.0.10")]),
            ports: vec![http(), unnamed()],
            endpoints: vec![],
        }),
    );
    zone.set(
        "default",
        "db",
        Some(DnsService {
            kind: DnsKind::Headless,
            ports: vec![http(), unnamed()],
            endpoints: vec![
                endpoint("db-0", "10.0.0.1"),
                endpoint("10-0-0-2", "10.0.0.2"),
            ],
        }),
    );
    zone.set(
        "Default",
        "EXT",
        Some(DnsService {
            kind: DnsKind::ExternalName(name("www.example.org.")),
            ports: vec![],
            endpoints: vec![],
        }),
    );
    zone.set_synced();
    zone
}

fn addrs(lookup: &Lookup) -> Vec<String> {
    let Lookup::Answer { answers, .. } = lookup else {
        return Vec::new();
    };
    let mut out: Vec<String> = answers
        .iter()
        .map(|r| match &r.data {
            RData::A(a) => a.0.to_string(),
            RData::AAAA(a) => a.0.to_string(),
            RData::SRV(s) => format!("{} {} {}", s.weight, s.port, s.target),
            RData::PTR(p) => p.0.to_string(),
            other => format!("{other:?}"),
        })
        .collect();
    out.sort();
    out
}

#[test]
fn cluster_ip_services_answer_a_and_nodata_for_other_types() {
    let z = zone();
    let q = name("Web.Default.svc.cluster.local.");
    let a = z.lookup(&q, RecordType::A);
    assert_eq!(addrs(&a), ["10.96.0.10"]);
    let Lookup::Answer { answers, .. } = &a else {
        unreachable!()
    };
    assert!(
        answers[0].name.eq_case(&q),
        "the answer echoes the question's case"
    );
    assert_eq!(answers[0].ttl, 5);
    assert_eq!(z.lookup(&q, RecordType::AAAA), Lookup::NoData);
    assert_eq!(z.lookup(&q, RecordType::TXT), Lookup::NoData);
}

#[test]
fn headless_services_answer_their_ready_endpoints_by_set_and_by_name() {
    let z = zone();
    assert_eq!(
        addrs(&z.lookup(&name("db.default.svc.cluster.local."), RecordType::A)),
        ["10.0.0.1", "10.0.0.2"]
    );
    assert_eq!(
        addrs(&z.lookup(&name("db-0.db.default.svc.cluster.local."), RecordType::A)),
        ["10.0.0.1"]
    );
    assert_eq!(
        addrs(&z.lookup(
            &name("10-0-0-2.db.default.svc.cluster.local."),
            RecordType::A
        )),
        ["10.0.0.2"]
    );
    assert_eq!(
        z.lookup(&name("db-2.db.default.svc.cluster.local."), RecordType::A),
        Lookup::NxDomain,
        "no such endpoint"
    );
    // No ready endpoint at all: the name does not exist.
    let empty = DnsService {
        kind: DnsKind::Headless,
        ports: vec![],
        endpoints: vec![],
    };
    z.set("default", "empty", Some(empty));
    assert_eq!(
        z.lookup(&name("empty.default.svc.cluster.local."), RecordType::A),
        Lookup::NxDomain
    );
}

#[test]
fn srv_records_exist_for_named_ports_only() {
    let z = zone();
    let web = z.lookup(
        &name("_http._tcp.web.default.svc.cluster.local."),
        RecordType::SRV,
    );
    assert_eq!(addrs(&web), ["100 80 web.default.svc.cluster.local."]);
    let Lookup::Answer { additionals, .. } = &web else {
        unreachable!()
    };
    assert_eq!(additionals.len(), 1, "the target's address rides along");
    let db = z.lookup(
        &name("_http._tcp.db.default.svc.cluster.local."),
        RecordType::SRV,
    );
    assert_eq!(
        addrs(&db),
        [
            "50 8080 10-0-0-2.db.default.svc.cluster.local.",
            "50 8080 db-0.db.default.svc.cluster.local."
        ]
    );
    assert_eq!(
        z.lookup(
            &name("_nope._tcp.web.default.svc.cluster.local."),
            RecordType::SRV
        ),
        Lookup::NxDomain
    );
    assert_eq!(
        z.lookup(
            &name("_http._udp.web.default.svc.cluster.local."),
            RecordType::SRV
        ),
        Lookup::NxDomain
    );
    assert_eq!(
        z.lookup(
            &name("_http._tcp.web.default.svc.cluster.local."),
            RecordType::A
        ),
        Lookup::NoData
    );
    assert_eq!(
        z.lookup(
            &name("_tcp.web.default.svc.cluster.local."),
            RecordType::SRV
        ),
        Lookup::NoData
    );
}

#[test]
fn ptr_records_point_at_services_and_headless_endpoints_and_follow_changes() {
    let z = zone();
    let ptr = |ip: &str| z.lookup(&name(&format!("{ip}.in-addr.arpa.")), RecordType::PTR);
    assert_eq!(
        addrs(&ptr("10.0.96.10")),
        ["web.default.svc.cluster.local."]
    );
    assert_eq!(
        addrs(&ptr("1.0.0.10")),
        ["db-0.db.default.svc.cluster.local."]
    );
    assert_eq!(
        ptr("9.9.9.9"),
        Lookup::NotOurs,
        "not a cluster address: forwarded"
    );
    let moved = DnsService {
        kind: DnsKind::ClusterIp(vec![ip("10.96.0.20")]),
        ports: vec![],
        endpoints: vec![],
    };
    z.set("default", "web", Some(moved));
    assert_eq!(
        ptr("10.0.96.10"),
        Lookup::NotOurs,
        "the old ClusterIP is forgotten"
    );
    assert_eq!(
        addrs(&ptr("20.0.96.10")),
        ["web.default.svc.cluster.local."]
    );
    z.set("default", "web", None);
    assert_eq!(ptr("20.0.96.10"), Lookup::NotOurs);
}

#[test]
fn negative_answers_follow_coredns() {
    let z = zone();
    let q = |n: &str| z.lookup(&name(n), RecordType::A);
    assert_eq!(q("nosuch.default.svc.cluster.local."), Lookup::NxDomain);
    assert_eq!(
        q("google.com.default.svc.cluster.local."),
        Lookup::NxDomain,
        "search-list expansion"
    );
    assert_eq!(
        q("default.svc.cluster.local."),
        Lookup::NoData,
        "a namespace with Services"
    );
    assert_eq!(q("nowhere.svc.cluster.local."), Lookup::NxDomain);
    assert_eq!(q("svc.cluster.local."), Lookup::NoData);
    assert_eq!(q("cluster.local."), Lookup::NoData);
    assert_eq!(q("a.b.c.d.e.f.cluster.local."), Lookup::NxDomain);
    assert_eq!(q("example.org."), Lookup::NotOurs);
    let soa = z.soa();
    let RData::SOA(s) = &soa.data else {
        unreachable!()
    };
    assert_eq!(s.minimum, 5, "the SOA minimum is the TTL");
    assert_eq!(
        z.lookup(&name("cluster.local."), RecordType::SOA),
        Lookup::Answer {
            answers: vec![soa],
            additionals: vec![]
        }
    );
}

#[test]
fn external_names_are_aliases_and_the_version_is_published() {
    let z = zone();
    let Lookup::Alias { cname, target } =
        z.lookup(&name("ext.default.svc.cluster.local."), RecordType::A)
    else {
        panic!("an alias")
    };
    assert_eq!(target, name("www.example.org."));
    assert!(matches!(cname.data, RData::CNAME(_)));
    assert_eq!(
        z.lookup(&name("x.ext.default.svc.cluster.local."), RecordType::A),
        Lookup::NxDomain
    );
    let Lookup::Answer { answers, .. } =
        z.lookup(&name("dns-version.cluster.local."), RecordType::TXT)
    else {
        panic!("a TXT record")
    };
    assert_eq!(answers[0].data.to_string(), "1.1.0");
}

#[test]
fn nothing_is_answered_before_the_model_is_listed() {
    let z = ClusterZone::new(&name("cluster.local"), 5);
    assert_eq!(
        z.lookup(&name("web.default.svc.cluster.local."), RecordType::A),
        Lookup::NotReady
    );
    assert_eq!(
        z.lookup(&name("example.org."), RecordType::A),
        Lookup::NotOurs
    );
}

#[test]
fn pod_names_answer_the_address_they_spell_unless_pods_are_disabled() {
    let z = zone();
    let q = |s: &str, t| z.lookup(&name(s), t);
    assert_eq!(
        addrs(&q("10-244-1-5.default.pod.cluster.local.", RecordType::A)),
        ["10.244.1.5"]
    );
    // Unchecked, as `pods insecure`: any namespace, any address.
    assert_eq!(
        addrs(&q("192-0-2-7.nosuch.pod.cluster.local.", RecordType::A)),
        ["192.0.2.7"]
    );
    assert_eq!(
        addrs(&q("fd00--1.default.pod.cluster.local.", RecordType::AAAA)),
        ["fd00::1"]
    );
    assert!(matches!(
        q("10-244-1-5.default.pod.cluster.local.", RecordType::AAAA),
        Lookup::NoData
    ));
    for bad in [
        "10-244-1.default.pod.cluster.local.",
        "web.default.pod.cluster.local.",
        "10-244-1-500.default.pod.cluster.local.",
    ] {
        assert!(matches!(q(bad, RecordType::A), Lookup::NxDomain), "{bad}");
    }
    let disabled = ClusterZone::new(&name("cluster.local"), 5).with_pods(Pods::Disabled);
    disabled.set_synced();
    assert!(matches!(
        disabled.lookup(
            &name("10-244-1-5.default.pod.cluster.local."),
            RecordType::A
        ),
        Lookup::NxDomain
    ));
}
