//! Load-time configuration of the programs (an `aya_ebpf::Global`).

use core::net::{Ipv4Addr, Ipv6Addr};

use crate::{addr::In6, conntrack::Lifetimes, pod};

/// The XDP metadata word by which `xdp_ingress` hands a packet it
/// translated but could not send (its next hop unresolved) to `tc_external`
/// behind it on the same interface, which sends it on: nothing else with a
/// node's source address may leave that way.
pub const XDP_HANDOFF: u32 = 0x534c_4345;

/// `DataplaneConfig::flags`: a service CIDR is set; unallocated addresses in
/// it, and ClusterIPs on ports no Service has, are rejected (kube-proxy's
/// nftables mode).
pub const CFG_SERVICE_CIDR: u32 = 1;
/// The source a pod's packets get when a Service sends them back to the
/// pod itself (hairpin): link-local, never any pod's or node's, so the
/// pod's answers leave it and come back through TC, as with Cilium's
/// `IPV4_LOOPBACK` (kube-proxy masquerades to the node's address).
pub const HAIRPIN_ADDR: [u8; 4] = [169, 254, 42, 1];
/// The IPv6 hairpin source: `100::a9fe:2a01`, in the discard-only prefix
/// (RFC 6666), so never any pod's or node's, reached through the pod's
/// default route (a link-local address would be asked for on its link),
/// and dropped by any router should it ever leave the node.
pub const HAIRPIN_ADDR6: [u8; 16] = [1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xa9, 0xfe, 0x2a, 0x01];
/// `DataplaneConfig::flags`: `local_ip_be` is the node-local DNS address,
/// served by the agent itself: never NATed nor rejected, even when a
/// Service has it as ClusterIP (as NodeLocal DNSCache binds kube-dns's).
pub const CFG_LOCAL_IP: u32 = 2;
/// `DataplaneConfig::flags`: `local_ip2_be` is a second such address (the
/// kube-dns ClusterIP beside the link-local one, as NodeLocal DNSCache).
pub const CFG_LOCAL_IP2: u32 = 4;
/// `DataplaneConfig::flags`: `local_ip6_be` is an IPv6 such address (an
/// IPv6 kube-dns ClusterIP).
pub const CFG_LOCAL_IP6: u32 = 8;
/// `DataplaneConfig::flags`: an IPv6 service CIDR is set
/// (`service_net6_be`, `service_mask6_be`), as `CFG_SERVICE_CIDR` for IPv4.
pub const CFG_SERVICE_CIDR6: u32 = 16;

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DataplaneConfig {
    pub service_net_be: [u8; 4],
    pub service_mask_be: [u8; 4],
    pub flags: u32,
    pub local_ip_be: [u8; 4],
    /// The NodePort range (`--nodeport-range`), inclusive, host order; SNAT
    /// ports are chosen outside it. `0..=0`: none.
    pub nodeport_min: u16,
    pub nodeport_max: u16,
    /// Conntrack lifetimes by state (`--conntrack-lifetime-*`).
    pub lifetimes: Lifetimes,
    /// The ports north-south flows are SNATed to (`--snat-port-range`),
    /// inclusive, host order: outside the node's ephemeral range and the
    /// NodePort range, so that no reply to one of the node's own sockets
    /// is taken for a SNATed flow's.
    pub snat_min: u16,
    pub snat_max: u16,
    pub local_ip2_be: [u8; 4],
    pub local_ip6_be: [u8; 16],
    /// The IPv6 service CIDR, as four words: its network and its mask.
    pub service_net6_be: In6,
    pub service_mask6_be: In6,
}
const _: () = assert!(size_of::<DataplaneConfig>() == 100);

/// The default SNAT ports: above Linux's default ephemeral range
/// (32768-60999).
pub const DEFAULT_SNAT_PORTS: (u16, u16) = (61_000, 65_535);

impl Default for DataplaneConfig {
    fn default() -> Self {
        Self::DEFAULT
    }
}

impl DataplaneConfig {
    /// No service CIDR, no local address, no NodePort range, the default
    /// conntrack lifetimes.
    pub const DEFAULT: Self = Self {
        service_net_be: [0; 4],
        service_mask_be: [0; 4],
        flags: 0,
        local_ip_be: [0; 4],
        nodeport_min: 0,
        nodeport_max: 0,
        lifetimes: Lifetimes::DEFAULT,
        snat_min: DEFAULT_SNAT_PORTS.0,
        snat_max: DEFAULT_SNAT_PORTS.1,
        local_ip2_be: [0; 4],
        local_ip6_be: [0; 16],
        service_net6_be: In6([0; 4]),
        service_mask6_be: In6([0; 4]),
    };

    pub const fn with_service_cidr(net: Ipv4Addr, prefix_len: u8) -> Self {
        let mask = if prefix_len == 0 {
            0
        } else {
            u32::MAX << (32 - prefix_len as u32)
        };
        let net = net.to_bits() & mask;
        Self {
            service_net_be: net.to_be_bytes(),
            service_mask_be: mask.to_be_bytes(),
            flags: CFG_SERVICE_CIDR,
            ..Self::DEFAULT
        }
    }

    /// The same, with the IPv6 service CIDR `net/prefix_len` (kube-proxy's
    /// one range per family).
    #[must_use]
    pub const fn with_service_cidr6(mut self, net: Ipv6Addr, prefix_len: u8) -> Self {
        let mask = if prefix_len == 0 {
            0
        } else {
            u128::MAX << (128 - prefix_len as u32)
        };
        let net = net.to_bits() & mask;
        self.service_net6_be = In6::from_octets(net.to_be_bytes());
        self.service_mask6_be = In6::from_octets(mask.to_be_bytes());
        self.flags |= CFG_SERVICE_CIDR6;
        self
    }

    /// Whether `addr` lies in the configured IPv6 service CIDR.
    #[inline(always)]
    pub const fn in_service_cidr6(&self, addr: In6) -> bool {
        if self.flags & CFG_SERVICE_CIDR6 == 0 {
            return false;
        }
        let [a0, a1, a2, a3] = addr.0;
        let [m0, m1, m2, m3] = self.service_mask6_be.0;
        let [n0, n1, n2, n3] = self.service_net6_be.0;
        a0 & m0 == n0 && a1 & m1 == n1 && a2 & m2 == n2 && a3 & m3 == n3
    }

    /// The same, with the NodePort range `min..=max`.
    #[must_use]
    pub const fn with_nodeport_range(mut self, min: u16, max: u16) -> Self {
        self.nodeport_min = min;
        self.nodeport_max = max;
        self
    }

    /// The same, with these conntrack lifetimes.
    #[must_use]
    pub const fn with_lifetimes(mut self, lifetimes: Lifetimes) -> Self {
        self.lifetimes = lifetimes;
        self
    }

    /// The same, with SNAT ports `min..=max`.
    #[must_use]
    pub const fn with_snat_ports(mut self, min: u16, max: u16) -> Self {
        self.snat_min = min;
        self.snat_max = max;
        self
    }

    /// SNAT port number `n` (any `u16`, e.g. random): one of the range's.
    #[inline(always)]
    pub const fn snat_port(&self, n: u16) -> u16 {
        let span = (self.snat_max as u32).saturating_sub(self.snat_min as u32) + 1;
        // Within u16: min + (n mod span) ≤ max.
        #[expect(clippy::cast_possible_truncation, reason = "at most snat_max")]
        let port = (self.snat_min as u32 + n as u32 % span) as u16;
        port
    }

    /// Whether `port` (host order) is in the NodePort range.
    #[inline(always)]
    pub const fn in_nodeport_range(&self, port: u16) -> bool {
        port >= self.nodeport_min && port <= self.nodeport_max && self.nodeport_max != 0
    }

    /// The same, with `ip` passed untouched to the node's own stack (the
    /// first call sets the first local address, the next the second; more
    /// are not kept).
    #[must_use]
    pub const fn with_local_ip(mut self, ip: Ipv4Addr) -> Self {
        if self.flags & CFG_LOCAL_IP == 0 {
            self.local_ip_be = ip.octets();
            self.flags |= CFG_LOCAL_IP;
        } else {
            self.local_ip2_be = ip.octets();
            self.flags |= CFG_LOCAL_IP2;
        }
        self
    }

    /// The same, with IPv6 `ip` passed untouched (one is kept).
    #[must_use]
    pub const fn with_local_ip6(mut self, ip: Ipv6Addr) -> Self {
        self.local_ip6_be = ip.octets();
        self.flags |= CFG_LOCAL_IP6;
        self
    }

    /// Whether IPv6 `addr_be` is the node-local address that passes
    /// untouched.
    #[inline(always)]
    pub const fn is_local_ip6(&self, addr_be: [u8; 16]) -> bool {
        self.flags & CFG_LOCAL_IP6 != 0
            && u128::from_ne_bytes(addr_be) == u128::from_ne_bytes(self.local_ip6_be)
    }

    /// Whether `addr_be` is a node-local address that passes untouched.
    #[inline(always)]
    pub const fn is_local_ip(&self, addr_be: [u8; 4]) -> bool {
        let addr = u32::from_ne_bytes(addr_be);
        (self.flags & CFG_LOCAL_IP != 0 && addr == u32::from_ne_bytes(self.local_ip_be))
            || (self.flags & CFG_LOCAL_IP2 != 0 && addr == u32::from_ne_bytes(self.local_ip2_be))
    }

    /// Whether `addr_be` lies in the configured service CIDR.
    #[inline(always)]
    pub const fn in_service_cidr(&self, addr_be: [u8; 4]) -> bool {
        if self.flags & CFG_SERVICE_CIDR == 0 {
            return false;
        }
        let a = u32::from_ne_bytes(addr_be);
        let m = u32::from_ne_bytes(self.service_mask_be);
        a & m == u32::from_ne_bytes(self.service_net_be)
    }
}

pod!(DataplaneConfig);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_cidr_membership() {
        let c = DataplaneConfig::with_service_cidr(Ipv4Addr::new(10, 96, 0, 0), 12);
        assert!(c.in_service_cidr([10, 96, 0, 1]));
        assert!(c.in_service_cidr([10, 111, 255, 255]));
        assert!(!c.in_service_cidr([10, 112, 0, 0]));
        assert!(!DataplaneConfig::default().in_service_cidr([10, 96, 0, 1]));
        let v6 = c.with_service_cidr6("fd00:96::".parse().unwrap(), 108);
        let at = |s: &str| In6::from_octets(s.parse::<Ipv6Addr>().unwrap().octets());
        assert!(v6.in_service_cidr6(at("fd00:96::a")));
        assert!(v6.in_service_cidr6(at("fd00:96::f:ffff")));
        assert!(!v6.in_service_cidr6(at("fd00:96::10:0")));
        assert!(!c.in_service_cidr6(at("fd00:96::a")), "none set");
        assert!(v6.in_service_cidr([10, 96, 0, 1]), "IPv4's kept");
        let all = DataplaneConfig::with_service_cidr(Ipv4Addr::new(1, 2, 3, 4), 0);
        assert!(all.in_service_cidr([8, 8, 8, 8]));
    }

    #[test]
    fn the_local_ip_is_recognised_only_when_set() {
        let c = DataplaneConfig::default();
        assert!(!c.is_local_ip([0, 0, 0, 0]), "unset: not even 0.0.0.0");
        let c = c.with_local_ip(Ipv4Addr::new(169, 254, 20, 10));
        assert!(c.is_local_ip([169, 254, 20, 10]));
        assert!(!c.is_local_ip([169, 254, 20, 11]));
        let c = c.with_local_ip(Ipv4Addr::new(10, 96, 0, 10));
        assert!(c.is_local_ip([169, 254, 20, 10]) && c.is_local_ip([10, 96, 0, 10]));
        assert!(!c.is_local_ip([10, 96, 0, 11]));
        let six = Ipv6Addr::new(0xfd00, 0x96, 0, 0, 0, 0, 0, 0x53);
        assert!(!c.is_local_ip6(six.octets()) && !c.is_local_ip6([0; 16]));
        let c = c.with_local_ip6(six);
        assert!(c.is_local_ip6(six.octets()));
        assert!(!c.is_local_ip6(Ipv6Addr::UNSPECIFIED.octets()));
        assert!(
            !c.in_service_cidr([169, 254, 20, 10]),
            "no service CIDR set"
        );
    }

    #[test]
    fn snat_ports_stay_in_their_range() {
        let c = DataplaneConfig::default();
        assert_eq!(
            (c.snat_port(0), c.snat_port(u16::MAX)),
            (61_000, 61_000 + 65_535 % 4536)
        );
        for n in [1, 4535, 4536, 9999, u16::MAX] {
            assert!((61_000..=65_535).contains(&c.snat_port(n)), "{n}");
        }
        let one = c.with_snat_ports(40_000, 40_000);
        assert_eq!((one.snat_port(0), one.snat_port(77)), (40_000, 40_000));
    }

    #[test]
    fn the_nodeport_range_is_inclusive_and_empty_when_unset() {
        let c = DataplaneConfig::default();
        assert!(!c.in_nodeport_range(0) && !c.in_nodeport_range(30000));
        let c = c.with_nodeport_range(30000, 32767);
        assert!(c.in_nodeport_range(30000) && c.in_nodeport_range(32767));
        assert!(!c.in_nodeport_range(29999) && !c.in_nodeport_range(32768));
    }
}
