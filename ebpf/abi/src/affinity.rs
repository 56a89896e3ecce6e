//! `ClientIP` session affinity (`spec.sessionAffinity: ClientIP`).
//!
//! A client's new flows to a frontend with `SVC_FLAG_AFFINITY` go to the
//! backend its last flow went to, while that was less than the frontend's
//! timeout ago and the backend is still live (kube-proxy's `recent` match,
//! refreshed by each new flow). The TC path keys clients by IPv4 address;
//! socket LB by network-namespace cookie (as Cilium), with the top bit set
//! so that the two never collide.

use crate::pod;

/// `AffinityKey::client` of a socket LB client: its netns cookie, tagged.
pub const CLIENT_NETNS: u64 = 1 << 63;

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AffinityKey {
    pub service_id: u32,
    pub _pad: u32,
    /// An IPv4 address (`u32::from_be_bytes`), or `CLIENT_NETNS | cookie`.
    pub client: u64,
}
const _: () = assert!(size_of::<AffinityKey>() == 16);

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AffinityValue {
    pub backend_id: u32,
    pub addr_be: [u8; 4],
    pub port_be: [u8; 2],
    pub _pad: [u8; 6],
    /// `bpf_ktime_get_ns` of the client's last new flow.
    pub last_seen_ns: u64,
}
const _: () = assert!(size_of::<AffinityValue>() == 24);

pod!(AffinityKey, AffinityValue);
