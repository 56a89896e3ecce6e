//! Connection tracking entries.
//!
//! Each NATed flow has two entries: the original direction, keyed by what the
//! client sent (client → frontend), whose value is the backend; and the reply
//! direction, keyed by what the backend sends back (backend → client), whose
//! value is the frontend to restore as the source.
//!
//! A flow from outside to a backend on another node is also SNATed (XDP,
//! `externalTrafficPolicy: Cluster`): its original entry carries the node
//! address and port the source becomes, its reply entry is keyed by what
//! the backend sends back to that address and port, and carries the client
//! to restore as the destination (`CT_F_SNAT`).

use crate::pod;

/// `CtKey::dir`: the client's direction.
pub const CT_DIR_ORIGINAL: u8 = 0;
/// `CtKey::dir`: the backend's replies.
pub const CT_DIR_REPLY: u8 = 1;

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CtKey {
    pub saddr_be: [u8; 4],
    pub daddr_be: [u8; 4],
    pub sport_be: [u8; 2],
    pub dport_be: [u8; 2],
    pub proto: u8,
    pub dir: u8,
    pub _pad: [u8; 2],
}
const _: () = assert!(size_of::<CtKey>() == 16);

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CtValue {
    /// Original direction: the backend to DNAT to. Reply direction: the
    /// ClusterIP and port to restore as the source.
    pub nat_addr_be: [u8; 4],
    pub nat_port_be: [u8; 2],
    /// TCP flags seen in this direction (`CT_TCP_*`), for reuse detection.
    pub tcp_flags: u8,
    /// `CT_F_*`.
    pub flags: u8,
    pub service_id: u32,
    pub backend_id: u32,
    /// `bpf_ktime_get_ns` of the last packet, refreshed at most once a second.
    pub last_seen_ns: u64,
    /// With `CT_F_SNAT`: original direction: the node address and port the
    /// source becomes; reply direction: the client address and port the
    /// destination goes back to.
    pub snat_addr_be: [u8; 4],
    pub snat_port_be: [u8; 2],
    pub _pad: [u8; 2],
}
const _: () = assert!(size_of::<CtValue>() == 32);

/// `CtValue::flags`: the flow is SNATed (see the module comment).
pub const CT_F_SNAT: u8 = 1;

/// `CtValue::tcp_flags`: a FIN was seen.
pub const CT_TCP_FIN: u8 = 1;
/// `CtValue::tcp_flags`: a RST was seen.
pub const CT_TCP_RST: u8 = 2;

/// A UDP flow idle for this long picks a backend again (kube-proxy's
/// conntrack default for unreplied/replied UDP is 30 s / 120 s; Cilium's
/// non-TCP lifetime is 60 s).
pub const CT_UDP_TIMEOUT_NS: u64 = 60 * 1_000_000_000;
/// How often the last-seen time of an entry is refreshed.
pub const CT_REFRESH_NS: u64 = 1_000_000_000;

pod!(CtKey, CtValue);
