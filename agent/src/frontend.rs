//! Frontends and backends of either IP family, as the agent plans them.
//!
//! The kernel keeps each family in maps of its own (`SLUICE_SVC` and
//! `SLUICE_SVC6`, …, as Cilium keeps `lb4_*` and `lb6_*`), so that IPv4
//! lookups keep their 8-byte keys. Everything above the map writer (the
//! model, the frontend index, reconcile and its simulation) works on
//! these family-blind types; `FrontendKey::map_key` and
//! `BackendRef::map_value` give the kernel's form. Frontend and backend
//! ids are one space over both families, so the maps keyed by id (names,
//! counters, affinity timeouts, Maglev tables) are shared.

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use sluice_abi::service::{Backend, Backend6, SCOPE_ALL, SCOPE_LOCAL, ServiceKey, ServiceKey6};

/// A frontend: what a client sends to (ClusterIP, external address or
/// NodePort, port, protocol) and which of its two scopes. Ordered by
/// address first (IPv4 before IPv6), as the maps' dumps are.
///
/// Port 0 with protocol 0 is the ClusterIP marker; the unspecified address
/// of a family (`0.0.0.0`, `::`) stands for that family's NodePorts, the
/// port on every node address, as `ServiceKey` has it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FrontendKey {
    pub addr: IpAddr,
    pub port: u16,
    pub proto: u8,
    /// `SCOPE_ALL` or `SCOPE_LOCAL`.
    pub scope: u8,
}

/// A frontend key in the kernel's form: the map it goes to follows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapKey {
    V4(ServiceKey),
    V6(ServiceKey6),
}

impl FrontendKey {
    pub fn new(addr: impl Into<IpAddr>, port: u16, proto: u8) -> Self {
        Self {
            addr: addr.into(),
            port,
            proto,
            scope: SCOPE_ALL,
        }
    }

    /// The IPv4 NodePort frontend of `port`: every IPv4 node address.
    pub fn node_port(port: u16, proto: u8) -> Self {
        Self::new(Ipv4Addr::UNSPECIFIED, port, proto)
    }

    /// The IPv6 NodePort frontend of `port`: every IPv6 node address.
    pub fn node_port6(port: u16, proto: u8) -> Self {
        Self::new(Ipv6Addr::UNSPECIFIED, port, proto)
    }

    /// The marker key of a ClusterIP.
    pub fn marker(addr: IpAddr) -> Self {
        Self::new(addr, 0, 0)
    }

    /// The same frontend in the local-endpoints scope.
    #[must_use]
    pub const fn local_scope(mut self) -> Self {
        self.scope = SCOPE_LOCAL;
        self
    }

    pub const fn is_node_port(&self) -> bool {
        self.addr.is_unspecified()
    }

    pub const fn is_marker(&self) -> bool {
        self.port == 0 && self.proto == 0
    }

    pub const fn is_ipv6(&self) -> bool {
        self.addr.is_ipv6()
    }

    /// The lowest and highest keys at `addr`, for ranges over one address.
    pub fn bounds(addr: IpAddr) -> (Self, Self) {
        let lo = Self {
            addr,
            port: 0,
            proto: 0,
            scope: 0,
        };
        let hi = Self {
            port: u16::MAX,
            proto: u8::MAX,
            scope: u8::MAX,
            ..lo
        };
        (lo, hi)
    }

    /// The key in its family's frontend map.
    pub const fn map_key(&self) -> MapKey {
        match self.addr {
            IpAddr::V4(a) => MapKey::V4(ServiceKey {
                addr_be: a.octets(),
                port_be: self.port.to_be_bytes(),
                proto: self.proto,
                scope: self.scope,
            }),
            IpAddr::V6(a) => MapKey::V6(ServiceKey6 {
                addr_be: a.octets(),
                port_be: self.port.to_be_bytes(),
                proto: self.proto,
                scope: self.scope,
            }),
        }
    }
}

impl From<ServiceKey> for FrontendKey {
    fn from(k: ServiceKey) -> Self {
        Self {
            addr: IpAddr::V4(k.addr()),
            port: k.port(),
            proto: k.proto,
            scope: k.scope,
        }
    }
}

impl From<ServiceKey6> for FrontendKey {
    fn from(k: ServiceKey6) -> Self {
        Self {
            addr: IpAddr::V6(k.addr()),
            port: k.port(),
            proto: k.proto,
            scope: k.scope,
        }
    }
}

/// A backend: an endpoint address and port, with the id that conntrack
/// entries, counters and Maglev tables refer to. Ids are unique per
/// (frontend, endpoint) over both families.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BackendRef {
    pub id: u32,
    pub addr: IpAddr,
    pub port: u16,
}

/// A backend in the kernel's form.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapBackend {
    V4(Backend),
    V6(Backend6),
}

impl BackendRef {
    pub fn new(id: u32, addr: impl Into<IpAddr>, port: u16) -> Self {
        Self {
            id,
            addr: addr.into(),
            port,
        }
    }

    /// The backend in its family's maps.
    pub const fn map_value(&self) -> MapBackend {
        match self.addr {
            IpAddr::V4(a) => MapBackend::V4(Backend::new(self.id, a, self.port)),
            IpAddr::V6(a) => MapBackend::V6(Backend6::new(self.id, a, self.port)),
        }
    }

    /// Its identity for Maglev: address and port, not the id.
    pub const fn maglev_key(&self) -> u64 {
        match self.addr {
            IpAddr::V4(a) => sluice_abi::maglev::backend_key(a.octets(), self.port.to_be_bytes()),
            IpAddr::V6(a) => sluice_abi::maglev::backend_key6(a.octets(), self.port.to_be_bytes()),
        }
    }
}

impl From<Backend> for BackendRef {
    fn from(b: Backend) -> Self {
        Self::new(b.id, b.addr(), b.port())
    }
}

impl From<Backend6> for BackendRef {
    fn from(b: Backend6) -> Self {
        Self::new(b.id, b.addr(), b.port())
    }
}

/// `address:port` with IPv6 addresses bracketed.
pub struct HostPort(pub IpAddr, pub u16);

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            IpAddr::V4(a) => write!(f, "{a}:{}", self.1),
            IpAddr::V6(a) => write!(f, "[{a}]:{}", self.1),
        }
    }
}

#[cfg(test)]
mod tests {
    use sluice_abi::proto;

    use super::*;

    #[test]
    fn keys_go_to_their_family_and_back() {
        let v4 = FrontendKey::new(Ipv4Addr::new(10, 96, 0, 10), 53, proto::UDP);
        let MapKey::V4(k) = v4.map_key() else {
            panic!("an IPv4 key")
        };
        assert_eq!(
            k,
            ServiceKey::new(Ipv4Addr::new(10, 96, 0, 10), 53, proto::UDP)
        );
        assert_eq!(FrontendKey::from(k), v4);
        let v6 = FrontendKey::new("fd00:96::a".parse::<Ipv6Addr>().unwrap(), 53, proto::UDP)
            .local_scope();
        let MapKey::V6(k6) = v6.map_key() else {
            panic!("an IPv6 key")
        };
        assert_eq!(k6.scope, SCOPE_LOCAL);
        assert_eq!(FrontendKey::from(k6), v6);
        assert!(FrontendKey::node_port6(30080, proto::TCP).is_node_port());
        assert!(FrontendKey::node_port(30080, proto::TCP) < v6, "IPv4 first");
        let b = BackendRef::new(7, "fd00:244::a".parse::<Ipv6Addr>().unwrap(), 8080);
        let MapBackend::V6(b6) = b.map_value() else {
            panic!("an IPv6 backend")
        };
        assert_eq!(BackendRef::from(b6), b);
        assert_eq!(HostPort(b.addr, b.port).to_string(), "[fd00:244::a]:8080");
    }
}
