//! Zones for the unit tests.

use std::{net::Ipv4Addr, sync::Arc};

use hickory_proto::rr::Name;

use crate::{
    forward::Forwarder,
    metrics::Metrics,
    respond::Resolver,
    zone::{ClusterZone, DnsEndpoint, DnsKind, DnsService},
};

pub fn name(s: &str) -> Name {
    Name::from_ascii(s).unwrap()
}

/// A ClusterIP Service at `ip` without ports.
pub fn cluster_ip(ip: Ipv4Addr) -> DnsService {
    DnsService {
        kind: DnsKind::ClusterIp(vec![ip.into()]),
        ports: vec![],
        endpoints: vec![],
    }
}

/// A headless Service with `n` ready endpoints `e<i>` at 10.0.0.<i>.
pub fn headless(n: u8) -> DnsService {
    DnsService {
        kind: DnsKind::Headless,
        ports: vec![],
        endpoints: (0..n)
            .map(|i| DnsEndpoint {
                name: format!("e{i}"),
                ips: vec![Ipv4Addr::new(10, 0, 0, i).into()],
                ports: vec![],
            })
            .collect(),
    }
}

/// `cluster.local` with `web` at 10.96.0.10 and `big` (headless, `big`
/// endpoints) in `default`, synced; no upstream.
pub fn resolver(big: u8) -> Resolver {
    let zone = ClusterZone::new(&name("cluster.local"), 5);
    zone.set(
        "default",
        "web",
        Some(cluster_ip(Ipv4Addr::new(10, 96, 0, 10))),
    );
    zone.set("default", "big", Some(headless(big)));
    zone.set_synced();
    Resolver {
        zone: Arc::new(zone),
        forwarder: Forwarder::new(Vec::new()),
        metrics: Arc::new(Metrics::default()),
        clients: Arc::new(crate::clients::Clients::open()),
    }
}
