//! Closing connected UDP sockets whose backend left their Service.
//!
//! Socket LB points a connected UDP socket at a backend once, at
//! `connect()`; the kernel never asks again. When that backend leaves the
//! Service, the socket would go on sending to it (the stale-UDP bug class of
//! kube-proxy and Cilium). Sluice closes such sockets: `SOCK_DESTROY` over
//! `NETLINK_SOCK_DIAG` (`CONFIG_INET_DIAG_DESTROY`), in every network
//! namespace of the processes in socket LB's cgroup. The application's next
//! send or receive fails with `ECONNABORTED`, and a new socket gets a live
//! backend, as with Cilium's socket termination.
//!
//! A socket is closed only if socket LB translated it (its cookie and peer
//! are in the reverse map) and its peer is no longer a backend of the
//! frontend it asked for: IPv4 and IPv6 sockets (an IPv4-mapped peer is
//! IPv4).

use std::{
    collections::{BTreeMap, BTreeSet},
    fs, io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd},
        unix::fs::MetadataExt as _,
    },
    path::Path,
};

use aya::maps::{HashMap, Map, MapData};
use sluice_abi::{
    maps as names, proto,
    sock::{SockRevKey, SockRevKey6, SockRevValue, SockRevValue6},
};

use crate::frontend::FrontendKey;

/// The live backends of every UDP frontend.
pub type LiveBackends = BTreeMap<FrontendKey, BTreeSet<(IpAddr, u16)>>;

/// Bounds on the walk: cgroups visited, sockets read per namespace.
const MAX_CGROUPS: usize = 100_000;
const MAX_SOCKETS: usize = 1_000_000;

/// A connected socket as the scan sees it: its cookie and its peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Peer {
    cookie: u64,
    addr: IpAddr,
    port: u16,
}

/// Closes the stale sockets; returns how many were closed.
pub fn close(pin_dir: &Path, cgroup: &Path, live: &LiveBackends) -> io::Result<usize> {
    let open = |name: &str| MapData::from_pin(pin_dir.join(name)).map_err(io::Error::other);
    let rev: HashMap<MapData, SockRevKey, SockRevValue> =
        HashMap::try_from(Map::LruHashMap(open(names::SOCK_REV)?)).map_err(io::Error::other)?;
    let rev6: HashMap<MapData, SockRevKey6, SockRevValue6> =
        HashMap::try_from(Map::LruHashMap(open(names::SOCK_REV6)?)).map_err(io::Error::other)?;
    // The frontend socket LB pointed the socket at its peer for.
    let frontend = |p: &Peer| -> Option<FrontendKey> {
        let (addr, port): (IpAddr, [u8; 2]) = match p.addr {
            IpAddr::V4(a) => {
                let key = SockRevKey {
                    cookie: p.cookie,
                    addr_be: a.octets(),
                    port_be: p.port.to_be_bytes(),
                    _pad: [0; 2],
                };
                let front = rev.get(&key, 0).ok()?;
                (Ipv4Addr::from(front.addr_be).into(), front.port_be)
            }
            IpAddr::V6(a) => {
                let key = SockRevKey6 {
                    cookie: p.cookie,
                    addr_be: a.octets(),
                    port_be: p.port.to_be_bytes(),
                    _pad: [0; 6],
                };
                let front = rev6.get(&key, 0).ok()?;
                (Ipv6Addr::from(front.addr_be).into(), front.port_be)
            }
        };
        Some(FrontendKey::new(addr, u16::from_be_bytes(port), proto::UDP))
    };
    let stale = |p: &Peer| -> bool {
        let Some(frontend) = frontend(p) else {
            return false;
        };
        // A NodePort was asked for at one of the node's addresses.
        let node_port = if frontend.is_ipv6() {
            FrontendKey::node_port6(frontend.port, proto::UDP)
        } else {
            FrontendKey::node_port(frontend.port, proto::UDP)
        };
        !live
            .get(&frontend)
            .or_else(|| live.get(&node_port))
            .is_some_and(|b| b.contains(&(p.addr, p.port)))
    };
    let mut closed = 0;
    for netns in namespaces(cgroup) {
        closed += std::thread::scope(|s| {
            s.spawn(|| {
                in_netns(&netns, || {
                    Ok(close_in_this_netns(Family::V4, &stale)?
                        + close_in_this_netns(Family::V6, &stale)?)
                })
            })
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("the socket scan panicked")))
        })?;
    }
    Ok(closed)
}

/// One `/proc/<pid>/ns/net` per network namespace used by the processes
/// of `cgroup` and its descendants.
fn namespaces(cgroup: &Path) -> Vec<std::path::PathBuf> {
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    let mut dirs = vec![cgroup.to_path_buf()];
    let mut visited = 0;
    while let Some(dir) = dirs.pop() {
        visited += 1;
        if visited > MAX_CGROUPS {
            tracing::warn!("stale UDP: over {MAX_CGROUPS} cgroups; the rest is not scanned");
            break;
        }
        if let Ok(procs) = fs::read_to_string(dir.join("cgroup.procs")) {
            for pid in procs.lines() {
                let ns = Path::new("/proc").join(pid).join("ns/net");
                if let Ok(meta) = fs::metadata(&ns)
                    && seen.insert((meta.dev(), meta.ino()))
                {
                    out.push(ns);
                }
            }
        }
        if let Ok(entries) = fs::read_dir(&dir) {
            dirs.extend(
                entries
                    .flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.path()),
            );
        }
    }
    out
}

/// Runs `f` on this thread after moving it into the network namespace.
fn in_netns<T>(ns: &Path, f: impl FnOnce() -> io::Result<T>) -> io::Result<T> {
    let file = fs::File::open(ns)?;
    // SAFETY: setns(2) on a descriptor we own; only this thread moves.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error());
    }
    f()
}

// linux/netlink.h, linux/sock_diag.h, linux/inet_diag.h
const NETLINK_SOCK_DIAG: i32 = 4;
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const SOCK_DESTROY: u16 = 21;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_ACK: u16 = 4;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
/// `1 << TCP_ESTABLISHED`: a connected UDP socket.
const CONNECTED: u32 = 1 << 1;

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct NlMsgHdr {
    len: u32,
    kind: u16,
    flags: u16,
    seq: u32,
    pid: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct SockId {
    sport: [u8; 2],
    dport: [u8; 2],
    src: [[u8; 4]; 4],
    dst: [[u8; 4]; 4],
    interface: u32,
    cookie: [u32; 2],
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct Request {
    hdr: NlMsgHdr,
    family: u8,
    protocol: u8,
    ext: u8,
    pad: u8,
    states: u32,
    id: SockId,
}

/// `struct inet_diag_msg`, as far as it is read.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct DiagMsg {
    family: u8,
    state: u8,
    timer: u8,
    retrans: u8,
    id: SockId,
}

/// Which sockets a scan reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Family {
    /// IPv4 sockets.
    V4,
    /// IPv6 sockets: their IPv4-mapped peers (`::ffff:a.b.c.d`) are
    /// translated as IPv4 by socket LB, and are IPv4 here.
    V6,
}

impl Family {
    fn af(self) -> u8 {
        let af = match self {
            Self::V4 => libc::AF_INET,
            Self::V6 => libc::AF_INET6,
        };
        u8::try_from(af).unwrap_or(0)
    }

    /// The peer address of a socket of this family.
    fn peer(self, dst: &[[u8; 4]; 4]) -> IpAddr {
        match self {
            Self::V4 => Ipv4Addr::from(dst[0]).into(),
            Self::V6 => {
                let [a, b, c, d] = *dst;
                let octets: [u8; 16] = [a, b, c, d].concat().try_into().unwrap_or([0; 16]);
                Ipv6Addr::from(octets).to_canonical()
            }
        }
    }
}

fn close_in_this_netns(
    family: Family,
    stale: &(impl Fn(&Peer) -> bool + Sync),
) -> io::Result<usize> {
    let sock = netlink()?;
    let mut dump = Request {
        family: family.af(),
        protocol: proto::UDP,
        states: CONNECTED,
        ..Request::default()
    };
    dump.hdr.kind = SOCK_DIAG_BY_FAMILY;
    dump.hdr.flags = NLM_F_REQUEST | NLM_F_DUMP;
    dump.hdr.seq = 1;
    send(&sock, &dump)?;
    let mut victims = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut read = 0;
    'recv: loop {
        let n = recv(&sock, &mut buf)?;
        let mut at = 0;
        while let Some(hdr) = read_struct::<NlMsgHdr>(&buf[..n], at) {
            let len = usize::try_from(hdr.len).unwrap_or(0);
            if len < size_of::<NlMsgHdr>() {
                break;
            }
            match hdr.kind {
                NLMSG_DONE => break 'recv,
                NLMSG_ERROR => return Err(netlink_error(&buf[..n], at)),
                SOCK_DIAG_BY_FAMILY => {
                    if let Some(msg) = read_struct::<DiagMsg>(&buf[..n], at + size_of::<NlMsgHdr>())
                    {
                        let peer = Peer {
                            cookie: u64::from(msg.id.cookie[0])
                                | (u64::from(msg.id.cookie[1]) << 32),
                            addr: family.peer(&msg.id.dst),
                            port: u16::from_be_bytes(msg.id.dport),
                        };
                        if stale(&peer) {
                            victims.push(msg.id);
                        }
                    }
                    read += 1;
                    if read > MAX_SOCKETS {
                        break 'recv;
                    }
                }
                _ => {}
            }
            at += len.next_multiple_of(4);
        }
    }
    let mut closed = 0;
    for (seq, id) in (2..).zip(victims) {
        let mut destroy = Request {
            family: family.af(),
            protocol: proto::UDP,
            states: u32::MAX,
            id,
            ..Request::default()
        };
        destroy.hdr.kind = SOCK_DESTROY;
        destroy.hdr.flags = NLM_F_REQUEST | NLM_F_ACK;
        destroy.hdr.seq = seq;
        send(&sock, &destroy)?;
        let n = recv(&sock, &mut buf)?;
        match read_struct::<NlMsgHdr>(&buf[..n], 0) {
            Some(h) if h.kind == NLMSG_ERROR => {
                let e = netlink_error(&buf[..n], 0);
                if e.raw_os_error() == Some(0) {
                    closed += 1;
                } else if e.raw_os_error() != Some(libc::ENOENT) {
                    // Gone meanwhile is fine; anything else is reported.
                    tracing::warn!("stale UDP: SOCK_DESTROY failed: {e}");
                }
            }
            _ => tracing::warn!("stale UDP: no answer to SOCK_DESTROY"),
        }
    }
    Ok(closed)
}

fn netlink() -> io::Result<OwnedFd> {
    // SAFETY: socket(2); the descriptor is owned right away.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            NETLINK_SOCK_DIAG,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor that nothing else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    let timeout = libc::timeval {
        tv_sec: 1,
        tv_usec: 0,
    };
    // SAFETY: setsockopt(2) with a timeval of the right size.
    let r = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&raw const timeout).cast(),
            libc::socklen_t::try_from(size_of::<libc::timeval>()).unwrap_or(16),
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(sock)
}

fn send(sock: &OwnedFd, req: &Request) -> io::Result<()> {
    let mut req = *req;
    req.hdr.len = u32::try_from(size_of::<Request>()).unwrap_or(u32::MAX);
    // SAFETY: sending a plain #[repr(C)] value of its own size; the
    // kernel is the peer (a zeroed sockaddr_nl).
    let n = unsafe {
        let mut addr: libc::sockaddr_nl = std::mem::zeroed();
        addr.nl_family = u16::try_from(libc::AF_NETLINK).unwrap_or(16);
        libc::sendto(
            sock.as_raw_fd(),
            (&raw const req).cast(),
            size_of::<Request>(),
            0,
            (&raw const addr).cast(),
            libc::socklen_t::try_from(size_of::<libc::sockaddr_nl>()).unwrap_or(12),
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn recv(sock: &OwnedFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: recv(2) into a buffer we own, of its length.
    let n = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
    usize::try_from(n).map_err(|_| io::Error::last_os_error())
}

/// A `T` read (unaligned) at `at`, if the buffer holds one there.
fn read_struct<T: Copy + Default>(buf: &[u8], at: usize) -> Option<T> {
    let bytes = buf.get(at..at.checked_add(size_of::<T>())?)?;
    // SAFETY: `bytes` has exactly size_of::<T>() bytes; T is plain data
    // (integers and arrays of them) for which every bit pattern is valid.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
}

/// The errno of an `NLMSG_ERROR` message (0 is an acknowledgement).
fn netlink_error(buf: &[u8], at: usize) -> io::Error {
    let code = read_struct::<i32>(buf, at + size_of::<NlMsgHdr>()).unwrap_or(-libc::EIO);
    io::Error::from_raw_os_error(-code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_sockets_ipv4_mapped_peers_are_ipv4() {
        let v4 = [[10, 244, 1, 10], [0; 4], [0; 4], [0; 4]];
        assert_eq!(Family::V4.peer(&v4), Ipv4Addr::new(10, 244, 1, 10));
        let mapped = [[0; 4], [0; 4], [0, 0, 0xff, 0xff], [10, 244, 1, 10]];
        assert_eq!(Family::V6.peer(&mapped), Ipv4Addr::new(10, 244, 1, 10));
        let native = [[0xfd, 0, 0x02, 0x44], [0; 4], [0; 4], [0, 0, 0, 0x10]];
        assert_eq!(
            Family::V6.peer(&native),
            "fd00:244::10".parse::<IpAddr>().unwrap()
        );
    }
}
