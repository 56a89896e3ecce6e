//! The node's own addresses and its external (node-facing) interfaces,
//! followed from rtnetlink: NodePorts answer on the node addresses
//! `--nodeport-addresses` allows (by default every one), and
//! the XDP program serves the external interfaces (`--external-interfaces`,
//! by default those holding a node address, but loopback and the
//! pod-facing `--interfaces`). A flow to a backend on another node leaving
//! through one is SNATed to its first address of the flow's family.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt, fs, io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use crate::interfaces::InterfaceMatcher;

/// Interfaces and their addresses of both families, as rtnetlink reported
/// them.
#[derive(Debug, Default)]
pub struct NodeInterfaces {
    names: BTreeMap<u32, String>,
    /// Per interface, in the order they came (the primary address first).
    addrs: BTreeMap<u32, Vec<IpAddr>>,
}

impl NodeInterfaces {
    pub fn link(&mut self, index: u32, name: &str) {
        name.clone_into(self.names.entry(index).or_default());
    }

    pub fn link_gone(&mut self, index: u32) {
        self.names.remove(&index);
        self.addrs.remove(&index);
    }

    pub fn add(&mut self, index: u32, addr: IpAddr) {
        let list = self.addrs.entry(index).or_default();
        if !list.contains(&addr) {
            list.push(addr);
        }
    }

    pub fn remove(&mut self, index: u32, addr: IpAddr) {
        if let Some(list) = self.addrs.get_mut(&index) {
            list.retain(|a| *a != addr);
        }
    }

    /// Every address of the node but loopback's (127/8, `::1`).
    pub fn node_addrs(&self) -> BTreeSet<IpAddr> {
        self.addrs
            .values()
            .flatten()
            .copied()
            .filter(|a| !a.is_loopback())
            .collect()
    }

    /// The external interfaces: ifindex → (name, SNAT addresses). By
    /// default, those with an IPv4 or a global IPv6 address of their own.
    /// An interface's SNAT address of a family is its own first one, else
    /// the node's first; without one, its flows of that family to other
    /// nodes are dropped (`no_snat_address`). An interface without either
    /// family's (a node without addresses) is left out.
    pub fn external(
        &self,
        explicit: Option<&InterfaceMatcher>,
        pod_facing: &InterfaceMatcher,
    ) -> BTreeMap<u32, (String, Snat)> {
        let v4 = |a: &IpAddr| match a {
            IpAddr::V4(v4) if !v4.is_loopback() => Some(*v4),
            _ => None,
        };
        // Not link-local (fe80::/10): a SNATed flow's replies must be
        // routable back from another node.
        let v6 = |a: &IpAddr| match a {
            IpAddr::V6(v6)
                if !v6.is_loopback()
                    && !v6.is_unicast_link_local()
                    && !v6.is_multicast()
                    && !v6.is_unspecified() =>
            {
                Some(*v6)
            }
            _ => None,
        };
        let fallback = self.node_addrs().iter().find_map(v4);
        let fallback6 = self.node_addrs().iter().find_map(v6);
        self.names
            .iter()
            .filter_map(|(index, name)| {
                let own = self.addrs.get(index).and_then(|l| l.iter().find_map(v4));
                let own6 = self.addrs.get(index).and_then(|l| l.iter().find_map(v6));
                let chosen = match explicit {
                    Some(m) => m.matches(name),
                    None => {
                        name != "lo"
                            && !pod_facing.matches(name)
                            && (own.is_some() || own6.is_some())
                    }
                };
                let snat = Snat {
                    v4: own.or(fallback),
                    v6: own6.or(fallback6),
                };
                let any = snat.v4.is_some() || snat.v6.is_some();
                (chosen && any).then(|| (*index, (name.clone(), snat)))
            })
            .collect()
    }
}

/// The addresses flows leaving an external interface for backends on
/// other nodes are SNATed to, one per family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Snat {
    pub v4: Option<Ipv4Addr>,
    pub v6: Option<Ipv6Addr>,
}

impl fmt::Display for Snat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.v4, self.v6) {
            (Some(v4), Some(v6)) => write!(f, "{v4}, {v6}"),
            (Some(v4), None) => write!(f, "{v4}"),
            (None, Some(v6)) => write!(f, "{v6}"),
            (None, None) => write!(f, "none"),
        }
    }
}

/// Where the node's reserved local ports are (per network namespace).
const RESERVED_PORTS: &str = "/proc/sys/net/ipv4/ip_local_reserved_ports";

/// Keeps the node's own sockets from picking ephemeral ports in a range
/// the dataplane uses (the NodePorts, as Cilium does; the SNAT ports), so
/// that no reply to them looks like such traffic: adds the range to
/// `ip_local_reserved_ports`, keeping what is there. `what` names it.
pub fn reserve_ports(what: &str, (min, max): (u16, u16)) -> io::Result<()> {
    let current = fs::read_to_string(RESERVED_PORTS)?;
    let Some(new) = with_range(current.trim(), min, max) else {
        return Ok(());
    };
    fs::write(RESERVED_PORTS, new)?;
    tracing::info!(range = %format!("{min}-{max}"), "reserved the {what} ports among local ports");
    Ok(())
}

/// The reserved-ports list with `min-max` added; `None` when it is in
/// already.
fn with_range(current: &str, min: u16, max: u16) -> Option<String> {
    let range = format!("{min}-{max}");
    let present = current
        .split(',')
        .map(str::trim)
        .any(|r| r == range || (min == max && r == min.to_string()));
    if present {
        return None;
    }
    Some(if current.is_empty() {
        range
    } else {
        format!("{current},{range}")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node() -> NodeInterfaces {
        let mut n = NodeInterfaces::default();
        for (i, name) in [(1, "lo"), (2, "eth0"), (3, "veth0"), (4, "eth1")] {
            n.link(i, name);
        }
        n.add(1, Ipv4Addr::new(10, 244, 0, 1).into());
        n.add(1, Ipv4Addr::LOCALHOST.into());
        n.add(1, Ipv6Addr::LOCALHOST.into());
        n.add(2, "fd00:1::10".parse().unwrap());
        n.add(2, Ipv4Addr::new(192, 168, 1, 10).into());
        n.add(2, Ipv4Addr::new(192, 168, 1, 11).into());
        n.add(3, Ipv4Addr::new(169, 254, 1, 1).into());
        n
    }

    #[test]
    fn by_default_interfaces_with_addresses_but_loopback_and_pods_are_external() {
        let n = node();
        let pods = InterfaceMatcher::new(&["veth*".into()]).unwrap();
        let ext = n.external(None, &pods);
        let snat = Snat {
            v4: Some(Ipv4Addr::new(192, 168, 1, 10)),
            v6: Some("fd00:1::10".parse().unwrap()),
        };
        assert_eq!(
            ext,
            BTreeMap::from([(2, ("eth0".to_owned(), snat))]),
            "the primary address of each family is the SNAT address"
        );
        assert_eq!(n.node_addrs().len(), 5, "{:?}", n.node_addrs());
        assert!(!n.node_addrs().contains(&Ipv4Addr::LOCALHOST.into()));
        assert!(n.node_addrs().contains(&"fd00:1::10".parse().unwrap()));
    }

    #[test]
    fn on_an_ipv6_only_node_interfaces_with_a_global_ipv6_address_are_external() {
        let mut n = NodeInterfaces::default();
        for (i, name) in [(1, "lo"), (2, "eth0"), (3, "veth0"), (4, "eth1")] {
            n.link(i, name);
        }
        n.add(1, Ipv6Addr::LOCALHOST.into());
        n.add(2, "fe80::1".parse().unwrap());
        n.add(2, "2001:db8::1".parse().unwrap());
        n.add(3, "fe80::2".parse().unwrap());
        n.add(4, "fe80::4".parse().unwrap());
        let pods = InterfaceMatcher::new(&["veth*".into()]).unwrap();
        let v6only = Snat {
            v4: None,
            v6: Some("2001:db8::1".parse().unwrap()),
        };
        assert_eq!(
            n.external(None, &pods),
            BTreeMap::from([(2, ("eth0".to_owned(), v6only))]),
            "a global IPv6 address makes an interface external; link-local does not"
        );
        let named = InterfaceMatcher::new(&["eth*".into()]).unwrap();
        assert_eq!(
            n.external(Some(&named), &pods)[&4].1,
            v6only,
            "named, without a global address of its own: the node's"
        );
        assert_eq!(v6only.to_string(), "2001:db8::1");
        n.remove(2, "2001:db8::1".parse().unwrap());
        assert!(
            n.external(Some(&named), &pods).is_empty(),
            "without a SNAT address of either family, no interface is external"
        );
    }

    #[test]
    fn named_interfaces_are_external_and_follow_address_changes() {
        let mut n = node();
        let pods = InterfaceMatcher::new(&["veth*".into()]).unwrap();
        let named = InterfaceMatcher::new(&["eth*".into()]).unwrap();
        let ext = n.external(Some(&named), &pods);
        assert_eq!(ext.len(), 2);
        assert_eq!(
            ext[&4].1,
            Snat {
                v4: Some(Ipv4Addr::new(10, 244, 0, 1)),
                v6: Some("fd00:1::10".parse().unwrap()),
            },
            "no address: the first node address of each family"
        );
        n.add(4, Ipv4Addr::new(172, 16, 0, 5).into());
        n.add(4, "fe80::5".parse().unwrap());
        n.add(4, "2001:db8::5".parse().unwrap());
        assert_eq!(
            n.external(Some(&named), &pods)[&4].1,
            Snat {
                v4: Some(Ipv4Addr::new(172, 16, 0, 5)),
                v6: Some("2001:db8::5".parse().unwrap()),
            },
            "its own, but not link-local"
        );
        n.remove(2, Ipv4Addr::new(192, 168, 1, 10).into());
        assert_eq!(
            n.external(None, &pods)[&2].1.v4,
            Some(Ipv4Addr::new(192, 168, 1, 11))
        );
        n.link_gone(2);
        assert!(!n.external(None, &pods).contains_key(&2));
        assert!(
            !n.node_addrs()
                .contains(&Ipv4Addr::new(192, 168, 1, 11).into())
        );
    }

    #[test]
    fn the_node_port_range_is_added_to_reserved_ports_once() {
        assert_eq!(with_range("", 30000, 32767).as_deref(), Some("30000-32767"));
        assert_eq!(
            with_range("8080", 30000, 32767).as_deref(),
            Some("8080,30000-32767")
        );
        assert_eq!(with_range("8080,30000-32767", 30000, 32767), None);
    }
}

/// The node's own sockets never take an ephemeral port that a NodePort or
/// a SNATed flow uses: no reply to them looks like one of those.
pub fn reserve_local_ports(nodeport_range: (u16, u16), snat_ports: (u16, u16)) {
    for (what, range) in [("NodePort", nodeport_range), ("SNAT", snat_ports)] {
        if let Err(e) = reserve_ports(what, range) {
            tracing::warn!("cannot reserve the {what} ports among local ports: {e}");
        }
    }
}

/// Which node addresses serve NodePorts (`--nodeport-addresses`,
/// kube-proxy's `nodePortAddresses`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum NodePortAddresses {
    /// Every node address.
    #[default]
    All,
    /// Those in these CIDRs, and the node's primary address if `primary`.
    Only {
        cidrs: Vec<(IpAddr, u8)>,
        primary: bool,
    },
}

impl NodePortAddresses {
    /// From CIDRs and the word `primary`.
    pub fn parse<S: AsRef<str>>(items: &[S]) -> Result<Self, String> {
        let mut cidrs = Vec::new();
        let mut primary = false;
        for item in items {
            let item = item.as_ref().trim();
            if item == "primary" {
                primary = true;
                continue;
            }
            let cidr = crate::cidr::parse_ip(item)
                .ok_or_else(|| format!("`{item}` is neither a CIDR nor `primary`"))?;
            cidrs.push(cidr);
        }
        if cidrs.is_empty() && !primary {
            return Err("give CIDRs, `primary`, or both".into());
        }
        Ok(Self::Only { cidrs, primary })
    }

    /// Whether `addr` serves NodePorts, given the node's primary address.
    pub fn serves(&self, addr: IpAddr, node_primary: Option<Ipv4Addr>) -> bool {
        match self {
            Self::All => true,
            Self::Only { cidrs, primary } => {
                (*primary && node_primary.map(IpAddr::V4) == Some(addr))
                    || cidrs.iter().any(|&net| crate::cidr::contains_ip(net, addr))
            }
        }
    }
}

/// The node's primary IPv4 address: the preferred source of its default
/// route, else the first address of that route's interface.
pub async fn primary_ipv4() -> Option<Ipv4Addr> {
    use futures::TryStreamExt as _;
    use rtnetlink::packet_route::{
        address::AddressAttribute,
        route::{RouteAddress, RouteAttribute},
    };
    let (conn, handle, _) = rtnetlink::new_connection().ok()?;
    let conn = tokio::spawn(conn);
    let mut routes = handle
        .route()
        .get(rtnetlink::RouteMessageBuilder::<Ipv4Addr>::new().build())
        .execute();
    let mut found = None;
    while let Ok(Some(route)) = routes.try_next().await {
        if route.header.destination_prefix_length != 0 || route.header.table != 254 {
            continue;
        }
        let mut oif = None;
        for attr in &route.attributes {
            match attr {
                RouteAttribute::PrefSource(RouteAddress::Inet(a)) => {
                    found = Some(Err(*a));
                }
                RouteAttribute::Oif(i) => oif = Some(*i),
                _ => {}
            }
        }
        if found.is_none() {
            found = oif.map(Ok);
        }
        break;
    }
    let primary = match found? {
        Err(addr) => Some(addr),
        Ok(oif) => {
            let mut addrs = handle.address().get().set_link_index_filter(oif).execute();
            let mut first = None;
            while let Ok(Some(msg)) = addrs.try_next().await {
                first = msg.attributes.iter().find_map(|a| match a {
                    AddressAttribute::Address(IpAddr::V4(v4)) => Some(*v4),
                    _ => None,
                });
                if first.is_some() {
                    break;
                }
            }
            first
        }
    };
    conn.abort();
    primary
}

#[cfg(test)]
mod node_port_tests {
    #![allow(clippy::unwrap_used, reason = "tests: a failure fails the test")]

    use super::*;

    #[test]
    fn nodeport_addresses_are_cidrs_and_the_primary_address() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let v4 = |s: &str| s.parse::<Ipv4Addr>().unwrap();
        assert!(NodePortAddresses::All.serves(ip("192.0.2.1"), None));
        let only = NodePortAddresses::parse(&["10.0.0.0/8", "primary", "fd00:1::/64"]).unwrap();
        assert!(only.serves(ip("10.1.2.3"), None));
        assert!(only.serves(ip("fd00:1::10"), None));
        assert!(!only.serves(ip("fd00:2::10"), None));
        assert!(!only.serves(ip("192.168.1.5"), None));
        assert!(only.serves(ip("192.168.1.5"), Some(v4("192.168.1.5"))));
        let cidr_only = NodePortAddresses::parse(&["192.168.1.5/32"]).unwrap();
        assert!(!cidr_only.serves(ip("192.168.1.6"), Some(v4("192.168.1.6"))));
        assert!(NodePortAddresses::parse(&["10.0.0.0/33"]).is_err());
        assert!(NodePortAddresses::parse(&["eth0"]).is_err());
        assert!(NodePortAddresses::parse::<&str>(&[]).is_err());
    }
}
