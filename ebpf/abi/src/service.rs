//! Service frontends, backend slots and backends.

use core::net::Ipv4Addr;

use crate::pod;

/// A frontend: what a client sends to (ClusterIP, port, protocol).
///
/// A key with `port_be == [0, 0]` and `proto == 0` is the ClusterIP marker:
/// it says the address is an allocated ClusterIP, so that traffic to one of
/// its ports that no Service has can be rejected.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceKey {
    pub addr_be: [u8; 4],
    pub port_be: [u8; 2],
    pub proto: u8,
    pub _pad: u8,
}
const _: () = assert!(size_of::<ServiceKey>() == 8);

impl ServiceKey {
    pub const fn new(addr: Ipv4Addr, port: u16, proto: u8) -> Self {
        Self {
            addr_be: addr.octets(),
            port_be: port.to_be_bytes(),
            proto,
            _pad: 0,
        }
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

pod!(
    ServiceKey,
    ServiceValue,
    SlotKey,
    Backend,
    ServiceName,
    SourceRangeKey
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
