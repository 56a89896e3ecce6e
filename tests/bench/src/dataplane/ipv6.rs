//! The IPv6 row of `bench dataplane` (issue 20): connections per second
//! through an IPv6 ClusterIP among the run's largest number of Services,
//! for Sluice (TC), ip6tables rules in kube-proxy's iptables structure, and
//! the IPv6 floor (the backends' IPv6 addresses, no Service). The pods get
//! IPv6 addresses beside their IPv4 ones; everything else is the IPv4
//! rows' (the same responders, load, and rule builder).

use std::net::{IpAddr, Ipv6Addr};

use super::{BACKENDS, Topology, backend_name, iptables_rules_of, manifests_of, service_ports_of};

pub const CLIENT6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x244, 1, 0, 0, 0, 0, 2);
/// `--service-cidr` of the IPv6 runs: both families' ranges.
pub const SERVICE_CIDRS: &str = "10.96.0.0/12,fd00:96::/108";
/// The pods' IPv6 network, for kube-proxy's masquerade rule.
const CLUSTER_CIDR6: &str = "fd00:244::/32";

pub fn backend_ip6(i: usize) -> Ipv6Addr {
    Ipv6Addr::new(
        0xfd00,
        0x244,
        1,
        0,
        0,
        0,
        0,
        0x10 + u16::try_from(i).unwrap_or(0),
    )
}

/// Service `i`'s IPv6 ClusterIP (`fd00:96::a` onwards).
pub fn vip6(i: u32) -> Ipv6Addr {
    Ipv6Addr::from(u128::from(Ipv6Addr::new(0xfd00, 0x96, 0, 0, 0, 0, 0, 0xa)) + u128::from(i))
}

/// The 10 IPv6 endpoints of Service `i`: the real backends for the
/// measured one, addresses of pods elsewhere for the rest.
fn endpoints6(i: u32, measured: u32) -> Vec<IpAddr> {
    (0..BACKENDS)
        .map(|e| {
            if i == measured {
                return IpAddr::V6(backend_ip6(e));
            }
            let n = u128::from(Ipv6Addr::new(0xfd00, 0x245, 0, 0, 0, 0, 0, 0))
                + u128::from(i) * 16
                + u128::try_from(e).unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(n))
        })
        .collect()
}

/// Gives the client and the backends their IPv6 addresses.
pub fn add_addresses(topo: &mut Topology) -> anyhow::Result<()> {
    topo.lab.add_ipv6("client", CLIENT6)?;
    for i in 0..BACKENDS {
        topo.lab.add_ipv6(&backend_name(i), backend_ip6(i))?;
    }
    Ok(())
}

/// `services` IPv6 Services of 10 endpoints, as a `List`.
pub fn manifests6(services: u32, measured: u32) -> serde_json::Value {
    manifests_of(
        services,
        measured,
        |i| vip6(i).into(),
        |i| endpoints6(i, measured),
    )
}

/// kube-proxy's ip6tables rules (its iptables mode, IPv6 half) for the
/// IPv6 Services.
pub fn ip6tables_rules(services: u32, measured: u32) -> String {
    let ports = service_ports_of(
        services,
        measured,
        |i| vip6(i).into(),
        |i| endpoints6(i, measured),
    );
    iptables_rules_of(ports, CLUSTER_CIDR6)
}
