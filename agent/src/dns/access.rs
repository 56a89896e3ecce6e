//! Who the DNS server answers by default: the node itself (loopback and
//! the node's addresses) and its pods (the destinations of the routes
//! through the pod-facing interfaces, `--interfaces`, as the CNI adds
//! them per pod or per pod CIDR), read from the kernel and read again
//! every few seconds as pods come and go.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    sync::Arc,
    time::Duration,
};

use futures::TryStreamExt as _;
use rtnetlink::{
    RouteMessageBuilder,
    packet_route::{
        address::AddressAttribute,
        link::LinkAttribute,
        route::{RouteAddress, RouteAttribute, RouteMessage},
    },
};
use sluice_dns::clients::{AccessList, Clients};

use crate::interfaces::InterfaceMatcher;

/// How often the list is read again.
const REFRESH: Duration = Duration::from_secs(5);

/// The node and its pods, as the kernel has them now.
pub async fn node_and_pods(pods: &InterfaceMatcher) -> AccessList {
    let mut list = AccessList::default();
    list.push(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 0)), 8);
    list.push(IpAddr::V6(Ipv6Addr::LOCALHOST), 128);
    let Ok((conn, handle, _)) = rtnetlink::new_connection() else {
        return list;
    };
    let conn = tokio::spawn(conn);
    let mut names: HashMap<u32, String> = HashMap::new();
    let mut links = handle.link().get().execute();
    while let Ok(Some(link)) = links.try_next().await {
        for attr in link.attributes {
            if let LinkAttribute::IfName(name) = attr {
                names.insert(link.header.index, name);
            }
        }
    }
    let mut addresses = handle.address().get().execute();
    while let Ok(Some(msg)) = addresses.try_next().await {
        for attr in &msg.attributes {
            if let AddressAttribute::Address(ip) = attr {
                list.push(*ip, if ip.is_ipv4() { 32 } else { 128 });
            }
        }
    }
    let through_pods = |route: &RouteMessage| -> Option<(IpAddr, u8)> {
        let len = route.header.destination_prefix_length;
        // A default route through a pod interface would let everyone in.
        if len == 0 {
            return None;
        }
        let mut dest = None;
        let mut oif = None;
        for attr in &route.attributes {
            match attr {
                RouteAttribute::Destination(RouteAddress::Inet(a)) => dest = Some(IpAddr::V4(*a)),
                RouteAttribute::Destination(RouteAddress::Inet6(a)) => dest = Some(IpAddr::V6(*a)),
                RouteAttribute::Oif(i) => oif = Some(*i),
                _ => {}
            }
        }
        let name = names.get(&oif?)?;
        pods.matches(name).then_some((dest?, len))
    };
    let v4 = handle
        .route()
        .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
        .execute();
    let v6 = handle
        .route()
        .get(RouteMessageBuilder::<Ipv6Addr>::new().build())
        .execute();
    for mut routes in [v4, v6] {
        while let Ok(Some(route)) = routes.try_next().await {
            if let Some((dest, len)) = through_pods(&route) {
                list.push(dest, len);
            }
        }
    }
    conn.abort();
    list
}

/// Keeps `clients`' access list to the node and its pods, for the DNS
/// server's life.
pub async fn follow(pods: InterfaceMatcher, clients: Arc<Clients>) {
    let mut last = clients.access();
    loop {
        tokio::time::sleep(REFRESH).await;
        let now = node_and_pods(&pods).await;
        if *last != now {
            tracing::debug!(entries = now.len(), "DNS access list");
            clients.set_access(now);
            last = clients.access();
        }
    }
}
