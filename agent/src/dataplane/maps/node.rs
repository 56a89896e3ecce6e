//! The node's own addresses and its external interfaces' SNAT addresses.

use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use sluice_abi::{
    maps as names,
    service::{ExtIf, NODE_ADDR, NODE_ADDR_NODEPORTS, NodeAddr, NodeAddr6},
};

use super::{Maps, map_err, removed, sync_map};
use crate::dataplane::Error;

impl Maps {
    /// Makes the node's addresses exactly `addrs` (each family in its
    /// map), those `node_ports` says serving NodePorts.
    pub fn set_node_addrs(
        &mut self,
        addrs: &BTreeSet<IpAddr>,
        node_ports: impl Fn(IpAddr) -> bool,
    ) -> Result<(), Error> {
        let value = |addr: IpAddr| {
            if node_ports(addr) {
                NODE_ADDR | NODE_ADDR_NODEPORTS
            } else {
                NODE_ADDR
            }
        };
        let v4 = addrs.iter().filter_map(|a| match a {
            IpAddr::V4(v4) => Some((
                NodeAddr {
                    addr_be: v4.octets(),
                },
                value(*a),
            )),
            IpAddr::V6(_) => None,
        });
        let v6 = addrs.iter().filter_map(|a| match a {
            IpAddr::V6(v6) => Some((
                NodeAddr6 {
                    addr_be: v6.octets(),
                },
                value(*a),
            )),
            IpAddr::V4(_) => None,
        });
        sync_map(&mut self.node_addrs, &v4.collect(), names::NODE_ADDRS)?;
        sync_map(&mut self.node_addrs6, &v6.collect(), names::NODE_ADDRS6)
    }

    /// Marks `ifindex` external, with `addr` to SNAT to (or unmarks it: `None`).
    pub fn set_ext_if(&mut self, ifindex: u32, addr: Option<Ipv4Addr>) -> Result<(), Error> {
        match addr {
            Some(addr) => self
                .ext_ifs
                .insert(
                    ifindex,
                    ExtIf {
                        addr_be: addr.octets(),
                        _pad: [0; 4],
                    },
                    0,
                )
                .map_err(map_err(names::EXT_IFS)),
            None => removed(self.ext_ifs.remove(&ifindex), names::EXT_IFS),
        }
    }

    /// The IPv6 address IPv6 flows leaving external interface `ifindex` are
    /// SNATed to (`None`: it has none; its IPv6 flows to backends on other
    /// nodes are dropped, `no_snat_address`).
    pub fn set_ext_if6(&mut self, ifindex: u32, addr: Option<Ipv6Addr>) -> Result<(), Error> {
        match addr {
            Some(addr) => self
                .ext_ifs6
                .insert(
                    ifindex,
                    NodeAddr6 {
                        addr_be: addr.octets(),
                    },
                    0,
                )
                .map_err(map_err(names::EXT_IFS6)),
            None => removed(self.ext_ifs6.remove(&ifindex), names::EXT_IFS6),
        }
    }
}
