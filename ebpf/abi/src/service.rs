//! Service frontends, backend slots and backends.

use core::net::{Ipv4Addr, Ipv6Addr};

use crate::pod;

/// A frontend: what a client sends to (ClusterIP, external address or
/// NodePort, port, protocol) and which of its two scopes.
///
/// A key with `port_be == [0, 0]` and `proto == 0` is the ClusterIP marker:
/// it says the address is an allocated ClusterIP, so that traffic to one of
/// its ports that no Service has can be rejected. A key at `NODE_PORT_ADDR`
/// is a NodePort: the port on every address of the node.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceKey {
    pub addr_be: [u8; 4],
    pub port_be: [u8; 2],
    pub proto: u8,
    /// `SCOPE_ALL` or `SCOPE_LOCAL`.
    pub scope: u8,
}
const _: () = assert!(size_of::<ServiceKey>() == 8);

/// `ServiceKey::scope`: the entry every path uses: ClusterIPs, traffic from
/// inside the cluster to any frontend, and external traffic under
/// `externalTrafficPolicy: Cluster`.
pub const SCOPE_ALL: u8 = 0;
/// `ServiceKey::scope`: this node's endpoints only, for external traffic
/// (XDP) under `externalTrafficPolicy: Local` (Cilium's two scopes).
pub const SCOPE_LOCAL: u8 = 1;

/// The address of NodePort frontend keys.
pub const NODE_PORT_ADDR: Ipv4Addr = Ipv4Addr::UNSPECIFIED;

impl ServiceKey {
    pub const fn new(addr: Ipv4Addr, port: u16, proto: u8) -> Self {
        Self {
            addr_be: addr.octets(),
            port_be: port.to_be_bytes(),
            proto,
            scope: SCOPE_ALL,
        }
    }

    /// The NodePort frontend of `port`: every node address.
    pub const fn node_port(port: u16, proto: u8) -> Self {
        Self::new(NODE_PORT_ADDR, port, proto)
    }

    /// The same frontend in the local-endpoints scope.
    #[must_use]
    pub const fn local_scope(mut self) -> Self {
        self.scope = SCOPE_LOCAL;
        self
    }

    pub const fn is_node_port(&self) -> bool {
        u32::from_ne_bytes(self.addr_be) == 0
    }

    /// The marker key of a ClusterIP.
    pub const fn marker(addr: Ipv4Addr) -> Self {
        Self::new(addr, 0, 0)
    }

    pub const fn addr(&self) -> Ipv4Addr {
        Ipv4Addr::from_octets(self.addr_be)
    }

    pub const fn port(&self) -> u16 {
        u16::from_be_bytes(self.port_be)
    }

    pub const fn is_marker(&self) -> bool {
        self.port_be[0] == 0 && self.port_be[1] == 0 && self.proto == 0
    }
}

/// An IPv6 frontend (`SLUICE_SVC6`): `ServiceKey`'s fields with a 16-byte
/// address. The marker and NodePort conventions are the same, NodePorts at
/// `::`.
#[repr(C, align(4))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceKey6 {
    pub addr_be: [u8; 16],
    pub port_be: [u8; 2],
    pub proto: u8,
    pub scope: u8,
}
const _: () = assert!(size_of::<ServiceKey6>() == 20);

impl ServiceKey6 {
    pub const fn new(addr: Ipv6Addr, port: u16, proto: u8) -> Self {
        Self {
            addr_be: addr.octets(),
            port_be: port.to_be_bytes(),
            proto,
            scope: SCOPE_ALL,
        }
    }

    pub const fn addr(&self) -> Ipv6Addr {
        Ipv6Addr::from_octets(self.addr_be)
    }

    pub const fn port(&self) -> u16 {
        u16::from_be_bytes(self.port_be)
    }

    pub const fn is_marker(&self) -> bool {
        self.port_be[0] == 0 && self.port_be[1] == 0 && self.proto == 0
    }
}

/// What a frontend maps to.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServiceValue {
    /// Frontend id (≥ 1): key of its slots and counters.
    pub id: u32,
    /// Number of backend slots, `0..count`. Zero means no usable endpoint:
    /// the dataplane rejects, as kube-proxy does.
    pub count: u16,
    pub flags: u16,
}
const _: () = assert!(size_of::<ServiceValue>() == 8);

/// `ServiceValue::flags`: the entry is a ClusterIP marker, not a frontend.
pub const SVC_FLAG_MARKER: u16 = 1;
/// `ServiceValue::flags`: `ClientIP` session affinity; the timeout is in the
/// affinity configuration map under the frontend's id.
pub const SVC_FLAG_AFFINITY: u16 = 2;
/// `ServiceValue::flags`: only clients in the frontend's source ranges
/// (`loadBalancerSourceRanges`) may open flows; the others are dropped.
pub const SVC_FLAG_SOURCE_RANGES: u16 = 4;
/// `ServiceValue::flags`: reachable from outside the cluster (a NodePort,
/// an external IP or a load balancer address): the XDP program serves it.
/// XDP leaves ClusterIPs alone, as Cilium does by default.
pub const SVC_FLAG_EXTERNAL: u16 = 8;
/// `ServiceValue::flags`: `externalTrafficPolicy: Local`: external traffic
/// uses the `SCOPE_LOCAL` entry of the same key.
pub const SVC_FLAG_EXT_LOCAL: u16 = 16;
/// `ServiceValue::flags`: XDP picks backends through the frontend's Maglev
/// table (`MaglevKey`), so that every node picks the same one for a flow.
pub const SVC_FLAG_MAGLEV: u16 = 32;

/// The data of a source range key (LPM): the frontend id, then the client
/// address. A range `net/len` of frontend `id` has prefix length `32 + len`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SourceRangeKey {
    pub service_id_be: [u8; 4],
    pub addr_be: [u8; 4],
}
const _: () = assert!(size_of::<SourceRangeKey>() == 8);

impl SourceRangeKey {
    pub const fn new(service_id: u32, addr: Ipv4Addr) -> Self {
        Self {
            service_id_be: service_id.to_be_bytes(),
            addr_be: addr.octets(),
        }
    }

    /// The LPM prefix length of a range of `len` bits.
    pub const fn prefix_len(len: u8) -> u32 {
        32 + len as u32
    }
}

/// The data of an IPv6 source range key (LPM): the frontend id, then the
/// client address; a range `net/len` has prefix length `32 + len`.
#[repr(C, align(4))]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SourceRangeKey6 {
    pub service_id_be: [u8; 4],
    pub addr_be: [u8; 16],
}
const _: () = assert!(size_of::<SourceRangeKey6>() == 20);

impl SourceRangeKey6 {
    pub const fn new(service_id: u32, addr: Ipv6Addr) -> Self {
        Self {
            service_id_be: service_id.to_be_bytes(),
            addr_be: addr.octets(),
        }
    }
}

/// One backend slot of a frontend.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SlotKey {
    pub service_id: u32,
    pub slot: u32,
}
const _: () = assert!(size_of::<SlotKey>() == 8);

/// A backend: an endpoint address and port, with the id that conntrack
/// entries and counters refer to. Ids are unique per (frontend, endpoint).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Backend {
    pub id: u32,
    pub addr_be: [u8; 4],
    pub port_be: [u8; 2],
    pub _pad: [u8; 2],
}
const _: () = assert!(size_of::<Backend>() == 12);

impl Backend {
    pub const fn new(id: u32, addr: Ipv4Addr, port: u16) -> Self {
        Self {
            id,
            addr_be: addr.octets(),
            port_be: port.to_be_bytes(),
            _pad: [0; 2],
        }
    }

    pub const fn addr(&self) -> Ipv4Addr {
        Ipv4Addr::from_octets(self.addr_be)
    }

    pub const fn port(&self) -> u16 {
        u16::from_be_bytes(self.port_be)
    }
}

/// An IPv6 backend (`SLUICE_SLOT6`, `SLUICE_BACKEND6`): `Backend`'s fields
/// with a 16-byte address; its id is from the same space as IPv4's.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Backend6 {
    pub id: u32,
    pub addr_be: [u8; 16],
    pub port_be: [u8; 2],
    pub _pad: [u8; 2],
}
const _: () = assert!(size_of::<Backend6>() == 24);

impl Backend6 {
    pub const fn new(id: u32, addr: Ipv6Addr, port: u16) -> Self {
        Self {
            id,
            addr_be: addr.octets(),
            port_be: port.to_be_bytes(),
            _pad: [0; 2],
        }
    }

    pub const fn addr(&self) -> Ipv6Addr {
        Ipv6Addr::from_octets(self.addr_be)
    }

    pub const fn port(&self) -> u16 {
        u16::from_be_bytes(self.port_be)
    }
}

/// Display name of a frontend (`namespace/name:port-name`), NUL-padded UTF-8.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServiceName {
    pub bytes: [u8; 64],
}
const _: () = assert!(size_of::<ServiceName>() == 64);

impl ServiceName {
    /// Truncates at 64 bytes, on a character boundary.
    pub fn new(name: &str) -> Self {
        let mut bytes = [0u8; 64];
        let mut end = name.len().min(64);
        while !name.is_char_boundary(end) {
            end -= 1;
        }
        let (head, _) = bytes.split_at_mut(end);
        head.copy_from_slice(name.as_bytes().split_at(end).0);
        Self { bytes }
    }

    pub fn as_str(&self) -> &str {
        let len = self
            .bytes
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(self.bytes.len());
        core::str::from_utf8(self.bytes.split_at(len).0).unwrap_or("?")
    }
}

/// A claim on a frontend that another Service holds (see the agent's
/// `model::frontends`), for `sluice status`: the kernel never reads it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RefusedClaim {
    /// The Service that holds the frontend (`namespace/name`).
    pub owner: ServiceName,
    /// The strongest refused claim.
    pub claimant: ServiceName,
    /// How many claims were refused.
    pub claimants: u32,
    pub _pad: u32,
}
const _: () = assert!(size_of::<RefusedClaim>() == 136);

/// One of the node's own addresses (NodePorts answer on each).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeAddr {
    pub addr_be: [u8; 4],
}
const _: () = assert!(size_of::<NodeAddr>() == 4);

/// One of the node's own IPv6 addresses (`SLUICE_NODE_IP6`), with
/// `NodeAddr`'s values.
#[repr(C, align(4))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeAddr6 {
    pub addr_be: [u8; 16],
}
const _: () = assert!(size_of::<NodeAddr6>() == 16);

/// A node address's value: one of the node's addresses.
pub const NODE_ADDR: u32 = 1;
/// A node address's value: it serves NodePorts (`--nodeport-addresses`,
/// kube-proxy's `nodePortAddresses`).
pub const NODE_ADDR_NODEPORTS: u32 = 2;

/// An external (node-facing) interface the XDP program is attached to,
/// keyed by ifindex: a backend routed out of one is on another node.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExtIf {
    /// The IPv4 address flows to remote backends are SNATed to; `0.0.0.0`:
    /// none (an IPv6-only node), and such flows are dropped.
    pub addr_be: [u8; 4],
    pub _pad: [u8; 4],
}
const _: () = assert!(size_of::<ExtIf>() == 8);

impl ExtIf {
    /// The IPv4 SNAT address, if the interface (or the node) has one.
    #[inline(always)]
    pub const fn snat(&self) -> Option<[u8; 4]> {
        if u32::from_ne_bytes(self.addr_be) == 0 {
            None
        } else {
            Some(self.addr_be)
        }
    }
}

/// One chunk of a frontend's Maglev table.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MaglevKey {
    pub service_id: u32,
    pub chunk: u32,
}
const _: () = assert!(size_of::<MaglevKey>() == 8);

/// `MAGLEV_CHUNK` entries of a Maglev table: backend ids (`Backend::id`).
/// Entry `i` of a table lives in chunk `i / MAGLEV_CHUNK` at `i %
/// MAGLEV_CHUNK`; every chunk repeats the table's size, so that a reader
/// finds it in chunk 0.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MaglevChunk {
    /// The table's size (a prime).
    pub size: u32,
    pub ids: [u32; MAGLEV_CHUNK as usize],
}
const _: () = assert!(size_of::<MaglevChunk>() == 4096);

/// Backend ids per Maglev chunk: a chunk is one 4 KiB map value.
pub const MAGLEV_CHUNK: u32 = 1023;

/// Chunks of a table of `size` entries.
pub const fn maglev_chunks(size: u32) -> u32 {
    size.div_ceil(MAGLEV_CHUNK)
}

pod!(
    ServiceKey,
    ServiceKey6,
    ServiceValue,
    SlotKey,
    Backend,
    Backend6,
    ServiceName,
    SourceRangeKey,
    SourceRangeKey6,
    NodeAddr,
    NodeAddr6,
    ExtIf,
    MaglevKey,
    MaglevChunk,
    RefusedClaim,
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_hold_network_byte_order() {
        let k = ServiceKey::new(Ipv4Addr::new(10, 96, 0, 10), 53, crate::proto::UDP);
        assert_eq!(k.addr_be, [10, 96, 0, 10]);
        assert_eq!(k.port_be, [0, 53]);
        assert_eq!(k.port(), 53);
        assert!(!k.is_marker());
        assert!(ServiceKey::marker(Ipv4Addr::new(10, 96, 0, 10)).is_marker());
        let np = ServiceKey::node_port(30080, crate::proto::TCP);
        assert!(np.is_node_port() && !np.is_marker());
        assert_eq!(np.local_scope().scope, SCOPE_LOCAL);
        assert!(!k.is_node_port());
    }

    #[test]
    fn maglev_tables_split_into_whole_chunks() {
        assert_eq!(maglev_chunks(16_381), 17);
        assert_eq!(maglev_chunks(MAGLEV_CHUNK), 1);
        assert_eq!(maglev_chunks(MAGLEV_CHUNK + 1), 2);
        assert_eq!(maglev_chunks(131_071), 129);
    }

    #[test]
    fn service_names_truncate_on_char_boundaries() {
        let long = "é".repeat(40);
        let n = ServiceName::new(&long);
        assert_eq!(n.as_str().len(), 64);
        assert_eq!(
            ServiceName::new("default/web:http").as_str(),
            "default/web:http"
        );
    }
}
