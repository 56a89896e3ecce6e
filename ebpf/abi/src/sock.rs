//! Socket-level load balancing: the reverse translation of a socket.
//!
//! `connect` and `sendmsg` point a socket at a backend instead of the
//! Service frontend it asked for, and record here, per socket and backend,
//! the frontend to show the application again: `recvmsg` rewrites the
//! source of what the socket receives from the backend, `getpeername` its
//! peer. IPv6 sockets' IPv4-mapped addresses are kept as IPv4. Keyed by socket cookie, as Cilium's `cilium_lb4_reverse_sk`.

use crate::pod;

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SockRevKey {
    /// `bpf_get_socket_cookie`: unique per socket for the kernel's uptime.
    pub cookie: u64,
    /// The backend the socket was pointed at.
    pub addr_be: [u8; 4],
    pub port_be: [u8; 2],
    pub _pad: [u8; 2],
}
const _: () = assert!(size_of::<SockRevKey>() == 16);

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SockRevValue {
    /// The frontend the application asked for.
    pub addr_be: [u8; 4],
    pub port_be: [u8; 2],
    pub _pad: [u8; 2],
    pub service_id: u32,
}
const _: () = assert!(size_of::<SockRevValue>() == 12);

/// `SockRevKey` of an IPv6 socket pointed at an IPv6 backend.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SockRevKey6 {
    pub cookie: u64,
    pub addr_be: [u8; 16],
    pub port_be: [u8; 2],
    pub _pad: [u8; 6],
}
const _: () = assert!(size_of::<SockRevKey6>() == 32);

/// `SockRevValue` of an IPv6 frontend.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SockRevValue6 {
    pub addr_be: [u8; 16],
    pub port_be: [u8; 2],
    pub _pad: [u8; 2],
    pub service_id: u32,
}
const _: () = assert!(size_of::<SockRevValue6>() == 24);

pod!(SockRevKey, SockRevValue, SockRevKey6, SockRevValue6);
