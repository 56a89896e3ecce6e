//! Any bytes as a DNS query, over UDP and TCP, against a small cluster
//! zone: no panic, no stall, and every answer is a well-formed response
//! to the query's id.
#![no_main]

use std::{
    net::Ipv4Addr,
    sync::{Arc, OnceLock},
};

use hickory_proto::{op::Message, rr::Name};
use libfuzzer_sys::fuzz_target;
use sluice_dns::{
    forward::Forwarder,
    metrics::Metrics,
    respond::{Resolver, Step, Transport},
    zone::{ClusterZone, DnsEndpoint, DnsKind, DnsPort, DnsService, Proto},
};

fn resolver() -> &'static Resolver {
    static RESOLVER: OnceLock<Resolver> = OnceLock::new();
    RESOLVER.get_or_init(|| {
        let Ok(domain) = Name::from_ascii("cluster.local") else {
            unreachable!("a valid name")
        };
        let zone = ClusterZone::new(&domain, 5);
        let http = DnsPort {
            name: "http".into(),
            protocol: Proto::Tcp,
            port: 80,
        };
        zone.set(
            "default",
            "web",
            Some(DnsService {
                kind: DnsKind::ClusterIp(vec![Ipv4Addr::new(10, 96, 0, 10).into()]),
                ports: vec![http.clone()],
                endpoints: vec![],
            }),
        );
        zone.set(
            "default",
            "db",
            Some(DnsService {
                kind: DnsKind::Headless,
                ports: vec![http.clone()],
                endpoints: (0..40u8)
                    .map(|i| DnsEndpoint {
                        name: format!("db-{i}"),
                        ips: vec![Ipv4Addr::new(10, 0, 0, i).into()],
                        ports: vec![http.clone()],
                    })
                    .collect(),
            }),
        );
        if let Ok(target) = Name::from_ascii("web.default.svc.cluster.local.") {
            zone.set(
                "default",
                "alias",
                Some(DnsService {
                    kind: DnsKind::ExternalName(target),
                    ports: vec![],
                    endpoints: vec![],
                }),
            );
        }
        zone.set_synced();
        Resolver {
            zone: Arc::new(zone),
            // No upstream: names outside the zone need the network, which
            // the fuzzer does not reach.
            forwarder: Forwarder::new(Vec::new()),
            metrics: Arc::new(Metrics::default()),
        }
    })
}

fuzz_target!(|data: &[u8]| {
    for transport in [Transport::Udp, Transport::Tcp] {
        if let Step::Done(Some(answer)) = resolver().try_answer(data, transport) {
            assert!(answer.len() >= 12, "an answer has a header");
            assert_eq!(answer.get(..2), data.get(..2), "the query's id");
            if transport == Transport::Udp {
                assert!(answer.len() <= 1232, "a UDP answer fits the EDNS buffer");
            }
            let parsed = Message::from_vec(&answer);
            assert!(parsed.is_ok(), "a well-formed response: {parsed:?}");
        }
    }
});
