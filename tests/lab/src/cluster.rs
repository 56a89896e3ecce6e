//! Two nodes and a client outside the cluster on one segment, for
//! north-south tests: NodePorts, external and load balancer addresses.
//!
//! ```text
//!   client ns: eth0 192.168.77.100/24, fd00:77::100/64; routes to the
//!              external addresses via node a
//!   wire ns:   bridge br0 joining the client and both nodes
//!   node a:    ext0 192.168.77.1/24, fd00:77::1/64; pods 10.244.1.0/24
//!              and fd00:244:1::/64, routes to node b's via 192.168.77.2
//!              and fd00:77::2
//!   node b:    ext0 192.168.77.2/24, fd00:77::2/64; pods 10.244.2.0/24
//!              and fd00:244:2::/64, routes to node a's as a's to b's
//! ```
//!
//! Each node is a `Lab` of its own (namespace, pods, agent, pins). Frames
//! on the segment carry finished checksums, as on a real wire; the segment
//! side of each node's veth runs `return XDP_PASS`, without which native
//! XDP on the node cannot send into it. Every route ends inside the lab.

use std::{
    net::{Ipv4Addr, Ipv6Addr},
    os::fd::OwnedFd,
};

use anyhow::{Context as _, Result};

use crate::{Lab, Netns, Pod, ethtool, netns::unique_stem, xdp_pass};

pub const SEGMENT_PREFIX: u8 = 24;
pub const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 100);
pub const CLIENT_IP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x77, 0, 0, 0, 0, 0, 0x100);
/// The interface of each node on the segment.
pub const EXT_IF: &str = "ext0";

pub struct Cluster {
    // Field order is drop order: nodes (agents first), client, wire.
    nodes: Vec<(Lab, Ipv4Addr)>,
    client: Pod,
    /// `return XDP_PASS` on the segment side of each node's veth.
    wire_xdp: Vec<OwnedFd>,
    wire: Netns,
}

impl Cluster {
    /// The segment, the client, and two nodes with no pods yet.
    pub fn new() -> Result<Self> {
        let stem = unique_stem();
        let wire = Netns::create(&format!("{stem}-wire"))?;
        wire.ip(&["link", "add", "br0", "type", "bridge"])?;
        wire.ip(&["link", "set", "br0", "up"])?;
        let client_ns = Netns::create(&format!("{stem}-client"))?;
        plug(&wire, &client_ns, "pclient", "eth0", CLIENT_IP)?;
        add_ip6(&client_ns, "eth0", CLIENT_IP6, 64)?;
        let client = Pod {
            name: "client".into(),
            ip: CLIENT_IP,
            host_if: "pclient".into(),
            ns: client_ns,
        };
        let mut cluster = Self {
            nodes: Vec::new(),
            client,
            wire_xdp: Vec::new(),
            wire,
        };
        for (i, peer) in [(1u8, 2u8), (2, 1)] {
            let lab = Lab::new()?;
            let ip = Ipv4Addr::new(192, 168, 77, i);
            let port = format!("pnode{i}");
            plug(&cluster.wire, lab.node(), &port, EXT_IF, ip)?;
            add_ip6(lab.node(), EXT_IF, segment_ip6(i), 64)?;
            cluster
                .wire_xdp
                .push(xdp_pass::attach(&cluster.wire, &port)?);
            lab.node().ip(&[
                "route",
                "add",
                &format!("10.244.{peer}.0/24"),
                "via",
                &format!("192.168.77.{peer}"),
                "dev",
                EXT_IF,
            ])?;
            lab.node().ip(&[
                "-6",
                "route",
                "add",
                &format!("{}/64", pod_net6(peer)),
                "via",
                &segment_ip6(peer).to_string(),
                "dev",
                EXT_IF,
            ])?;
            cluster.nodes.push((lab, ip));
        }
        Ok(cluster)
    }

    /// Node `i` (0 or 1): its lab, whose pods are 10.244.`i+1`.0/24.
    pub fn node(&mut self, i: usize) -> &mut Lab {
        &mut self.nodes[i].0
    }

    pub fn node_ref(&self, i: usize) -> &Lab {
        &self.nodes[i].0
    }

    /// Node `i`'s address on the segment.
    pub fn node_ip(&self, i: usize) -> Ipv4Addr {
        self.nodes[i].1
    }

    /// Node `i`'s IPv6 address on the segment.
    pub fn node_ip6(&self, i: usize) -> Ipv6Addr {
        #[expect(clippy::cast_possible_truncation, reason = "two nodes")]
        segment_ip6(i as u8 + 1)
    }

    /// The client outside the cluster.
    pub fn client(&self) -> &Pod {
        &self.client
    }

    /// Routes `addr` (an external or load balancer address) from the
    /// client through node `i`.
    pub fn route_via(&self, addr: Ipv4Addr, i: usize) -> Result<()> {
        self.client.ns.ip(&[
            "route",
            "replace",
            &format!("{addr}/32"),
            "via",
            &self.node_ip(i).to_string(),
        ])?;
        Ok(())
    }

    /// Routes IPv6 `addr` from the client through node `i`.
    pub fn route_via6(&self, addr: Ipv6Addr, i: usize) -> Result<()> {
        self.client.ns.ip(&[
            "-6",
            "route",
            "replace",
            &format!("{addr}/128"),
            "via",
            &self.node_ip6(i).to_string(),
        ])?;
        Ok(())
    }

    /// Offloads as on hosts with NICs that segment and coalesce: every
    /// offload (checksums, TSO, GSO, GRO) on both ends of every pod's veth,
    /// so that pods send and receive 64 KiB super-packets; and on the
    /// segment's interfaces (the client's, each node's) GSO and GRO, while
    /// their frames keep finished checksums, as a NIC computes them before
    /// the wire (a veth would pass partial ones along, and no wire carries
    /// those).
    pub fn offloads_on(&self) -> Result<()> {
        ethtool::segment_offloads_on(&self.client.ns, "eth0")?;
        for (lab, _) in &self.nodes {
            ethtool::segment_offloads_on(lab.node(), EXT_IF)?;
            for pod in lab.pods() {
                ethtool::offloads_on(lab.node(), &pod.host_if)?;
                ethtool::offloads_on(&pod.ns, "eth0")?;
            }
        }
        Ok(())
    }

    /// The segment carries MTU frames, as a wire between NICs does: the
    /// client and the nodes segment before sending onto it (their TSO and
    /// GSO off on the segment), and each node's `ext0` still coalesces
    /// what it receives (GRO, as a NIC's driver does). With `offloads_on`
    /// alone the client hands the segment 64 KiB GSO packets, which no
    /// wire carries, except into a node whose `ext0` runs XDP (a veth
    /// whose peer runs XDP cannot take them), so XDP would meet MTU frames
    /// where the other paths meet 64 KiB packets.
    pub fn wire_carries_mtu_frames(&self) -> Result<()> {
        ethtool::segmentation_off(&self.client.ns, "eth0")?;
        for (lab, _) in &self.nodes {
            ethtool::segmentation_off(lab.node(), EXT_IF)?;
        }
        Ok(())
    }

    /// A client behind two routers, whose link between them has MTU
    /// `mtu` while every other link has 1500 (see `FarClient`); each node
    /// routes the client's networks through the router on the segment.
    pub fn add_far_client(&self, mtu: u32) -> Result<FarClient> {
        let stem = unique_stem();
        let client_ns = Netns::create(&format!("{stem}-far"))?;
        let r1 = Netns::create(&format!("{stem}-r1"))?;
        let r2 = Netns::create(&format!("{stem}-r2"))?;
        veth(
            (&r1, "c0", "192.168.79.1/24"),
            (&client_ns, "eth0", "192.168.79.100/24"),
        )?;
        veth(
            (&r1, "t0", "192.168.78.1/30"),
            (&r2, "t0", "192.168.78.2/30"),
        )?;
        plug(&self.wire, &r2, "pfar", "s0", FAR_ROUTER_IP)?;
        // IPv6 beside IPv4, link by link.
        add_ip6(&r1, "c0", Ipv6Addr::new(0xfd00, 0x79, 0, 0, 0, 0, 0, 1), 64)?;
        add_ip6(&client_ns, "eth0", FAR_CLIENT_IP6, 64)?;
        add_ip6(&r1, "t0", Ipv6Addr::new(0xfd00, 0x78, 0, 0, 0, 0, 0, 1), 64)?;
        add_ip6(&r2, "t0", Ipv6Addr::new(0xfd00, 0x78, 0, 0, 0, 0, 0, 2), 64)?;
        add_ip6(&r2, "s0", FAR_ROUTER_IP6, 64)?;
        for ns in [&r1, &r2] {
            ns.ip(&["link", "set", "t0", "mtu", &mtu.to_string()])?;
            ns.sysctl("net.ipv4.ip_forward", "1")?;
            ns.sysctl("net.ipv6.conf.all.forwarding", "1")?;
        }
        client_ns.ip(&["route", "add", "default", "via", "192.168.79.1"])?;
        r1.ip(&["route", "add", "default", "via", "192.168.78.2"])?;
        r2.ip(&["route", "add", "192.168.79.0/24", "via", "192.168.78.1"])?;
        client_ns.ip(&["-6", "route", "add", "default", "via", "fd00:79::1"])?;
        r1.ip(&["-6", "route", "add", "default", "via", "fd00:78::2"])?;
        r2.ip(&["-6", "route", "add", "fd00:79::/64", "via", "fd00:78::1"])?;
        for (lab, _) in &self.nodes {
            for net in ["192.168.79.0/24", "192.168.78.0/30"] {
                lab.node()
                    .ip(&["route", "add", net, "via", &FAR_ROUTER_IP.to_string()])?;
            }
            for net in ["fd00:79::/64", "fd00:78::/64"] {
                lab.node().ip(&[
                    "-6",
                    "route",
                    "add",
                    net,
                    "via",
                    &FAR_ROUTER_IP6.to_string(),
                ])?;
            }
        }
        for (ns, iface) in [
            (&client_ns, "eth0"),
            (&r1, "c0"),
            (&r1, "t0"),
            (&r2, "t0"),
            (&r2, "s0"),
        ] {
            ethtool::segment_offloads_on(ns, iface)?;
        }
        Ok(FarClient {
            client: Pod {
                name: "far".into(),
                ip: FAR_CLIENT_IP,
                host_if: "c0".into(),
                ns: client_ns,
            },
            _r1: r1,
            r2,
        })
    }

    /// Another client on the segment at `ip` (e.g. outside some range).
    pub fn add_client(&self, name: &str, ip: Ipv4Addr) -> Result<Pod> {
        let ns = Netns::create(&format!("{}-{name}", unique_stem()))?;
        let host_if = format!("p{name}");
        plug(&self.wire, &ns, &host_if, "eth0", ip)?;
        Ok(Pod {
            name: name.into(),
            ip,
            host_if,
            ns,
        })
    }
}

/// The client behind two routers (`Cluster::add_far_client`):
///
/// ```text
///   far client ns: eth0 192.168.79.100/24 (MTU 1500), default via r1
///   r1 ns:         c0 192.168.79.1/24 (1500); t0 192.168.78.1/30 (the
///                  small MTU); default via r2
///   r2 ns:         t0 192.168.78.2/30 (the small MTU); s0 192.168.77.254/24
///                  on the segment (1500); routes to external addresses via
///                  a node (`route_via`)
/// ```
///
/// The nodes' packets to the client are too big for the link between the
/// routers: r2 answers them with ICMP fragmentation-needed, as a router on
/// the path to a client behind a tunnel does; the client's own packets
/// get the same from r1.
pub struct FarClient {
    pub client: Pod,
    _r1: Netns,
    r2: Netns,
}

/// The far client's address, and its second router's on the segment, of
/// each family (the IPv6 links are `fd00:79::/64`, `fd00:78::/64` and the
/// segment's).
pub const FAR_CLIENT_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 79, 100);
pub const FAR_ROUTER_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 254);
pub const FAR_CLIENT_IP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x79, 0, 0, 0, 0, 0, 0x100);
pub const FAR_ROUTER_IP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x77, 0, 0, 0, 0, 0, 0xfe);

impl FarClient {
    /// Routes `addr` (an external or load balancer address) from the
    /// routers through `node` (a node's address on the segment).
    pub fn route_via(&self, addr: Ipv4Addr, node: Ipv4Addr) -> Result<()> {
        self.r2.ip(&[
            "route",
            "replace",
            &format!("{addr}/32"),
            "via",
            &node.to_string(),
        ])?;
        Ok(())
    }

    /// Routes IPv6 `addr` from the routers through `node`.
    pub fn route_via6(&self, addr: Ipv6Addr, node: Ipv6Addr) -> Result<()> {
        self.r2.ip(&[
            "-6",
            "route",
            "replace",
            &format!("{addr}/128"),
            "via",
            &node.to_string(),
        ])?;
        Ok(())
    }
}

/// Node `n`'s (1 or 2) IPv6 address on the segment.
const fn segment_ip6(n: u8) -> Ipv6Addr {
    Ipv6Addr::new(0xfd00, 0x77, 0, 0, 0, 0, 0, n as u16)
}

/// The IPv6 network of node `n`'s (1 or 2) pods: `fd00:244:<n>::/64`.
pub const fn pod_net6(n: u8) -> Ipv6Addr {
    Ipv6Addr::new(0xfd00, 0x244, n as u16, 0, 0, 0, 0, 0)
}

/// Adds IPv6 `ip/prefix` to `iface` in `ns`, without duplicate address
/// detection (the address works at once).
fn add_ip6(ns: &Netns, iface: &str, ip: Ipv6Addr, prefix: u8) -> Result<()> {
    ns.ip(&[
        "-6",
        "addr",
        "add",
        &format!("{ip}/{prefix}"),
        "dev",
        iface,
        "nodad",
    ])?;
    Ok(())
}

/// A veth between `a` and `b`, each end with its name and address.
fn veth(
    (a, a_if, a_ip): (&Netns, &str, &str),
    (b, b_if, b_ip): (&Netns, &str, &str),
) -> Result<()> {
    a.ip(&[
        "link",
        "add",
        a_if,
        "type",
        "veth",
        "peer",
        "name",
        b_if,
        "netns",
        b.name(),
    ])
    .with_context(|| format!("a veth from {} to {}", a.name(), b.name()))?;
    for (ns, iface, ip) in [(a, a_if, a_ip), (b, b_if, b_ip)] {
        ns.ip(&["addr", "add", ip, "dev", iface])?;
        ns.ip(&["link", "set", iface, "up"])?;
    }
    Ok(())
}

/// A veth from the bridge to `iface` in `ns`, with `ip` on it.
fn plug(wire: &Netns, ns: &Netns, port: &str, iface: &str, ip: Ipv4Addr) -> Result<()> {
    wire.ip(&[
        "link",
        "add",
        port,
        "type",
        "veth",
        "peer",
        "name",
        iface,
        "netns",
        ns.name(),
    ])
    .with_context(|| format!("plugging {iface} of {} into the segment", ns.name()))?;
    wire.ip(&["link", "set", port, "master", "br0"])?;
    wire.ip(&["link", "set", port, "up"])?;
    ns.ip(&[
        "addr",
        "add",
        &format!("{ip}/{SEGMENT_PREFIX}"),
        "dev",
        iface,
    ])?;
    ns.ip(&["link", "set", iface, "up"])?;
    ethtool::tx_checksum_off(ns, iface)?;
    Ok(())
}
