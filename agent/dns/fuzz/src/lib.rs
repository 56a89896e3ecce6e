//! What the fuzz targets share: a small cluster zone behind a resolver.

use std::{
    net::Ipv4Addr,
    sync::{Arc, OnceLock},
};

use hickory_proto::rr::Name;
use sluice_dns::{
    forward::Forwarder,
    metrics::Metrics,
    respond::Resolver,
    zone::{ClusterZone, DnsEndpoint, DnsKind, DnsPort, DnsService, Proto},
};

/// `web` (ClusterIP, named port), `db` (headless, 40 endpoints), an
/// ExternalName and more, in `cluster.local`; no upstream.
pub fn resolver() -> &'static Resolver {
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
            clients: Arc::new(sluice_dns::clients::Clients::open()),
        }
    })
}
