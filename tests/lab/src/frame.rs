//! Raw frames for tests and benchmarks: Ethernet + IPv4 + UDP or TCP, or
//! IPv6 + UDP, with correct checksums (RFC 1071, computed here), and an `AF_PACKET` socket
//! that sends many of them at once (`sendmmsg`, past the qdisc), as a
//! packet generator does. Sources may be anything: floods of new flows and
//! forged sources are what some tests need to send.

use std::{
    net::{Ipv4Addr, Ipv6Addr},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
};

use anyhow::{Result, bail};

use crate::{Netns, Pod};

/// Where a frame goes on the link, and between which endpoints.
#[derive(Clone, Copy, Debug)]
pub struct Hop {
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
}

impl Hop {
    /// From a pod's eth0 to the node (the host side of its veth): how
    /// every frame a pod sends to a Service leaves it.
    pub fn pod_to_node(pod: &Pod, node: &Netns) -> Result<Self> {
        Ok(Self {
            src_mac: pod.mac("eth0")?,
            dst_mac: crate::mac_of(node, &pod.host_if)?,
        })
    }
}

const TTL: u8 = 64;
const UDP: u8 = 17;
const TCP: u8 = 6;
pub const TCP_SYN: u8 = 0x02;

fn sum(data: &[u8]) -> u32 {
    let mut s = 0u32;
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        s += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        s += u32::from(*last) << 8;
    }
    s
}

fn finish(mut s: u32) -> u16 {
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    !u16::try_from(s).unwrap_or(0)
}

/// Ethernet and IPv4 around `l4` (whose checksum field, at `check_at`,
/// is filled in here; `None`: left 0, a UDP datagram without one).
fn wrap(
    hop: Hop,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    proto: u8,
    mut l4: Vec<u8>,
    check_at: Option<usize>,
) -> Vec<u8> {
    let len = u16::try_from(l4.len()).unwrap_or(u16::MAX);
    let pseudo = sum(&src.octets()) + sum(&dst.octets()) + u32::from(proto) + u32::from(len);
    let check = finish(pseudo + sum(&l4));
    // UDP sends a computed 0 as 0xffff (RFC 768).
    let check = if proto == UDP && check == 0 {
        0xffff
    } else {
        check
    };
    if let Some(field) = check_at.and_then(|at| l4.get_mut(at..at.checked_add(2)?)) {
        field.copy_from_slice(&check.to_be_bytes());
    }
    let mut ip = [0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&(20 + len).to_be_bytes());
    ip[8] = TTL;
    ip[9] = proto;
    ip[12..16].copy_from_slice(&src.octets());
    ip[16..20].copy_from_slice(&dst.octets());
    let check = finish(sum(&ip));
    ip[10..12].copy_from_slice(&check.to_be_bytes());
    let mut f = Vec::with_capacity(34 + l4.len());
    f.extend_from_slice(&hop.dst_mac);
    f.extend_from_slice(&hop.src_mac);
    f.extend_from_slice(&0x0800u16.to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(&l4);
    f
}

/// A UDP datagram with `payload` bytes (0xab), its checksum computed
/// (`checksum`), or none (zero, allowed in IPv4).
pub fn udp(
    hop: Hop,
    src: (Ipv4Addr, u16),
    dst: (Ipv4Addr, u16),
    payload: usize,
    checksum: bool,
) -> Vec<u8> {
    let l4 = udp_datagram(src.1, dst.1, payload);
    if checksum {
        wrap(hop, src.0, dst.0, UDP, l4, Some(6))
    } else {
        wrap(hop, src.0, dst.0, UDP, l4, None)
    }
}

/// An IPv6 UDP datagram with `payload` bytes (0xab), its checksum computed
/// over IPv6's pseudo-header (RFC 8200 §8.1).
pub fn udp6(hop: Hop, src: (Ipv6Addr, u16), dst: (Ipv6Addr, u16), payload: usize) -> Vec<u8> {
    let mut l4 = udp_datagram(src.1, dst.1, payload);
    let len = u16::try_from(l4.len()).unwrap_or(u16::MAX);
    let pseudo = sum(&src.0.octets()) + sum(&dst.0.octets()) + u32::from(len) + u32::from(UDP);
    let check = match finish(pseudo + sum(&l4)) {
        0 => 0xffff,
        c => c,
    };
    l4[6..8].copy_from_slice(&check.to_be_bytes());
    let mut f = Vec::with_capacity(54 + l4.len());
    f.extend_from_slice(&hop.dst_mac);
    f.extend_from_slice(&hop.src_mac);
    f.extend_from_slice(&0x86ddu16.to_be_bytes());
    f.extend_from_slice(&[0x60, 0, 0, 0]);
    f.extend_from_slice(&len.to_be_bytes());
    f.push(UDP);
    f.push(TTL);
    f.extend_from_slice(&src.0.octets());
    f.extend_from_slice(&dst.0.octets());
    f.extend_from_slice(&l4);
    f
}

/// A UDP header (checksum zero) and `payload` bytes of 0xab.
fn udp_datagram(sport: u16, dport: u16, payload: usize) -> Vec<u8> {
    let len = u16::try_from(8 + payload).unwrap_or(u16::MAX);
    let mut l4 = Vec::with_capacity(usize::from(len));
    l4.extend_from_slice(&sport.to_be_bytes());
    l4.extend_from_slice(&dport.to_be_bytes());
    l4.extend_from_slice(&len.to_be_bytes());
    l4.extend_from_slice(&[0, 0]);
    l4.extend(std::iter::repeat_n(0xab, payload));
    l4
}

/// A TCP segment without payload: `flags` (e.g. `TCP_SYN`), sequence
/// number `seq`, a 64 KiB window.
pub fn tcp(hop: Hop, src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16), flags: u8, seq: u32) -> Vec<u8> {
    let mut l4 = vec![0u8; 20];
    l4[0..2].copy_from_slice(&src.1.to_be_bytes());
    l4[2..4].copy_from_slice(&dst.1.to_be_bytes());
    l4[4..8].copy_from_slice(&seq.to_be_bytes());
    l4[12] = 5 << 4;
    l4[13] = flags;
    l4[14..16].copy_from_slice(&0xffffu16.to_be_bytes());
    wrap(hop, src.0, dst.0, TCP, l4, Some(16))
}

/// Frames per `sendmmsg`.
const BATCH: usize = 64;

/// An `AF_PACKET` socket bound to one interface, sending frames as they
/// are, straight to the driver (`PACKET_QDISC_BYPASS`, as pktgen).
pub struct RawSocket {
    fd: OwnedFd,
}

impl RawSocket {
    /// On `iface` of the calling thread's network namespace.
    pub fn open(iface: &str) -> Result<Self> {
        let ifindex = nix::net::if_::if_nametoindex(iface)?;
        // SAFETY: socket(2), setsockopt(2) and bind(2) on a descriptor
        // owned here, with a zeroed and filled-in sockaddr_ll.
        unsafe {
            let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0);
            if fd < 0 {
                bail!("AF_PACKET socket: {}", std::io::Error::last_os_error());
            }
            let fd = OwnedFd::from_raw_fd(fd);
            let one: libc::c_int = 1;
            if libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_PACKET,
                libc::PACKET_QDISC_BYPASS,
                std::ptr::from_ref(&one).cast(),
                u32::try_from(size_of::<libc::c_int>())?,
            ) != 0
            {
                bail!("PACKET_QDISC_BYPASS: {}", std::io::Error::last_os_error());
            }
            let mut addr: libc::sockaddr_ll = std::mem::zeroed();
            addr.sll_family = u16::try_from(libc::AF_PACKET)?;
            addr.sll_ifindex = i32::try_from(ifindex)?;
            if libc::bind(
                fd.as_raw_fd(),
                std::ptr::from_ref(&addr).cast(),
                u32::try_from(size_of::<libc::sockaddr_ll>())?,
            ) != 0
            {
                bail!("binding to {iface}: {}", std::io::Error::last_os_error());
            }
            Ok(Self { fd })
        }
    }

    /// Sends up to 64 frames in one call; returns how many went out
    /// (0 when the device queue is full for a moment).
    pub fn send_batch(&self, frames: &[&[u8]]) -> Result<usize> {
        let mut iov: Vec<libc::iovec> = frames
            .iter()
            .take(BATCH)
            .map(|f| libc::iovec {
                iov_base: f.as_ptr().cast_mut().cast(),
                iov_len: f.len(),
            })
            .collect();
        // SAFETY: zeroed C structs whose pointers (into `frames` and `iov`)
        // outlive the call.
        let mut msgs: Vec<libc::mmsghdr> = iov
            .iter_mut()
            .map(|v| {
                let mut m: libc::mmsghdr = unsafe { std::mem::zeroed() };
                m.msg_hdr.msg_iov = std::ptr::from_mut(v);
                m.msg_hdr.msg_iovlen = 1;
                m
            })
            .collect();
        let count = u32::try_from(msgs.len())?;
        // SAFETY: as above; the socket is ours.
        let n = unsafe { libc::sendmmsg(self.fd.as_raw_fd(), msgs.as_mut_ptr(), count, 0) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            return match e.raw_os_error() {
                Some(libc::ENOBUFS | libc::EAGAIN | libc::EINTR) => Ok(0),
                _ => bail!("sendmmsg: {e}"),
            };
        }
        Ok(usize::try_from(n)?)
    }

    /// Sends every frame once, in order.
    pub fn send_all(&self, frames: &[Vec<u8>]) -> Result<()> {
        let mut at = 0;
        // Bounded: a full queue gives 0 for a moment, not for long.
        let mut idle = 0u32;
        while at < frames.len() {
            let batch: Vec<&[u8]> = frames[at..].iter().take(BATCH).map(Vec::as_slice).collect();
            let n = self.send_batch(&batch)?;
            if n == 0 {
                idle += 1;
                if idle > 100_000 {
                    bail!(
                        "the device took no frame for a long time ({at} of {} sent)",
                        frames.len()
                    );
                }
                std::thread::yield_now();
            }
            at += n;
        }
        Ok(())
    }
}

impl Pod {
    /// Sends `frames` out of this pod's eth0, each once, as fast as the
    /// link takes them.
    pub fn send_frames(&self, frames: Vec<Vec<u8>>) -> Result<()> {
        self.ns
            .run(move || RawSocket::open("eth0")?.send_all(&frames))?
    }
}
