//! Who is answered, and how much of the server one client may take:
//!
//! - **The access list.** Only sources inside it are answered; everyone
//!   else gets REFUSED over UDP and a closed connection over TCP, so the
//!   node-local address never becomes an open resolver, even if it is
//!   reachable from outside. The agent keeps it to the node itself and its
//!   pods (or `--dns-allow-cidrs`).
//! - **Fair shares.** Each client (source address) may have at most
//!   `forwards` queries waiting on an upstream and `tcp` TCP connections
//!   open. Past its share a query gets REFUSED at once and a connection is
//!   closed at once; other clients keep theirs. Each refusal is counted
//!   by reason.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{Arc, Mutex, PoisonError, RwLock},
};

use crate::metrics::{Metrics, Refused};

/// Default of a client's forwarded queries in flight: a tenth of the
/// server's (`forward::MAX_IN_FLIGHT`).
pub const DEFAULT_FORWARDS_PER_CLIENT: u32 = 100;
/// Default of a client's TCP connections.
pub const DEFAULT_TCP_PER_CLIENT: u32 = 32;

/// Address ranges, as `ADDR/LEN`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AccessList {
    nets: Vec<(IpAddr, u8)>,
}

impl AccessList {
    /// Everyone (for tests and tools).
    pub fn everyone() -> Self {
        Self {
            nets: vec![
                (IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), 0),
                (IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED), 0),
            ],
        }
    }

    /// From `ADDR/LEN` or `ADDR` (a host) strings.
    pub fn parse<S: AsRef<str>>(items: &[S]) -> Result<Self, String> {
        let mut nets = Vec::new();
        for item in items {
            let item = item.as_ref().trim();
            let (addr, len) = match item.split_once('/') {
                Some((a, l)) => (a, Some(l)),
                None => (item, None),
            };
            let addr: IpAddr = addr
                .parse()
                .map_err(|_| format!("`{item}` is not an address or CIDR"))?;
            let max = if addr.is_ipv4() { 32 } else { 128 };
            let len = match len {
                Some(l) => l
                    .parse::<u8>()
                    .ok()
                    .filter(|l| *l <= max)
                    .ok_or_else(|| format!("`{item}`: a prefix length of 0 to {max}"))?,
                None => max,
            };
            nets.push((addr, len));
        }
        Ok(Self { nets })
    }

    pub fn push(&mut self, addr: IpAddr, len: u8) {
        self.nets.push((addr, len));
    }

    pub fn len(&self) -> usize {
        self.nets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nets.is_empty()
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        // An IPv4-mapped IPv6 source is its IPv4 address.
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 @ IpAddr::V4(_) => v4,
        };
        self.nets.iter().any(|&(net, len)| match (net, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        })
    }
}

/// Each client's share in use.
#[derive(Default)]
struct Shares {
    forwards: HashMap<IpAddr, u32>,
    tcp: HashMap<IpAddr, u32>,
}

/// The access list and the per-client shares.
pub struct Clients {
    access: RwLock<Arc<AccessList>>,
    forwards: u32,
    tcp: u32,
    shares: Mutex<Shares>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Forward,
    Tcp,
}

/// A share held; given back on drop.
pub struct Share {
    clients: Arc<Clients>,
    ip: IpAddr,
    kind: Kind,
}

impl Drop for Share {
    fn drop(&mut self) {
        let mut shares = self
            .clients
            .shares
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let map = match self.kind {
            Kind::Forward => &mut shares.forwards,
            Kind::Tcp => &mut shares.tcp,
        };
        if let Some(n) = map.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                map.remove(&self.ip);
            }
        }
    }
}

impl Clients {
    pub fn new(access: AccessList, forwards: u32, tcp: u32) -> Self {
        Self {
            access: RwLock::new(Arc::new(access)),
            forwards,
            tcp,
            shares: Mutex::new(Shares::default()),
        }
    }

    /// Everyone, with the default shares.
    pub fn open() -> Self {
        Self::new(
            AccessList::everyone(),
            DEFAULT_FORWARDS_PER_CLIENT,
            DEFAULT_TCP_PER_CLIENT,
        )
    }

    /// Replaces the access list (the agent's view of its pods changed).
    pub fn set_access(&self, access: AccessList) {
        *self.access.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(access);
    }

    pub fn access(&self) -> Arc<AccessList> {
        Arc::clone(&self.access.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Whether `ip` is answered at all; a refusal is counted.
    pub fn allowed(&self, ip: IpAddr, metrics: &Metrics) -> bool {
        let allowed = self
            .access
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(ip);
        if !allowed {
            metrics.refused(Refused::Access);
        }
        allowed
    }

    /// One of `ip`'s forwarded queries, if within its share.
    pub fn forward(self: &Arc<Self>, ip: IpAddr, metrics: &Metrics) -> Option<Share> {
        self.take(ip, Kind::Forward, metrics)
    }

    /// One of `ip`'s TCP connections, if within its share.
    pub fn connection(self: &Arc<Self>, ip: IpAddr, metrics: &Metrics) -> Option<Share> {
        self.take(ip, Kind::Tcp, metrics)
    }

    fn take(self: &Arc<Self>, ip: IpAddr, kind: Kind, metrics: &Metrics) -> Option<Share> {
        let mut shares = self.shares.lock().unwrap_or_else(PoisonError::into_inner);
        let (map, limit, reason) = match kind {
            Kind::Forward => (&mut shares.forwards, self.forwards, Refused::ClientForwards),
            Kind::Tcp => (&mut shares.tcp, self.tcp, Refused::ClientConnections),
        };
        let held = map.entry(ip).or_default();
        if *held >= limit {
            drop(shares);
            metrics.refused(reason);
            return None;
        }
        *held += 1;
        Some(Share {
            clients: Arc::clone(self),
            ip,
            kind,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests: a failure fails the test")]

    use super::*;

    #[test]
    fn the_access_list_matches_prefixes_of_either_family_and_mapped_addresses() {
        let list = AccessList::parse(&["10.244.1.0/24", "127.0.0.1", "fd00::/8"]).unwrap();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(list.contains(ip("10.244.1.7")));
        assert!(!list.contains(ip("10.244.2.7")));
        assert!(list.contains(ip("127.0.0.1")));
        assert!(!list.contains(ip("127.0.0.2")));
        assert!(list.contains(ip("fd12::1")));
        assert!(list.contains(ip("::ffff:10.244.1.9")));
        assert!(!list.contains(ip("2001:db8::1")));
        assert!(AccessList::everyone().contains(ip("8.8.8.8")));
        assert!(AccessList::parse(&["10.0.0.0/33"]).is_err());
        assert!(AccessList::parse(&["pods"]).is_err());
    }

    #[test]
    fn a_client_past_its_share_is_refused_and_others_are_not() {
        let clients = Arc::new(Clients::new(AccessList::everyone(), 2, 1));
        let metrics = Metrics::default();
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let first = clients.forward(a, &metrics).unwrap();
        let _second = clients.forward(a, &metrics).unwrap();
        assert!(clients.forward(a, &metrics).is_none());
        assert!(clients.forward(b, &metrics).is_some());
        drop(first);
        assert!(clients.forward(a, &metrics).is_some(), "a share given back");
        let _conn = clients.connection(a, &metrics).unwrap();
        assert!(clients.connection(a, &metrics).is_none());
        assert!(clients.connection(b, &metrics).is_some());
        assert_eq!(metrics.refused_count(Refused::ClientForwards), 1);
        assert_eq!(metrics.refused_count(Refused::ClientConnections), 1);
    }
}
