//! UDP probes with a time to live, as traceroute sends them: what came
//! back to a connected socket, an answer or an ICMP error with the
//! address of the hop that sent it (`IP_RECVERR`, read from the socket's
//! error queue).

use std::{
    net::{Ipv4Addr, SocketAddr, UdpSocket},
    os::fd::AsRawFd as _,
    time::Duration,
};

use anyhow::{Context as _, Result, bail};

use crate::Netns;

/// What a probe got back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A datagram.
    Answer,
    /// An ICMP error: its type and code, and the hop that sent it.
    Icmp { kind: u8, code: u8, from: Ipv4Addr },
    /// Nothing within the wait.
    Silence,
}

impl Outcome {
    /// ICMP time exceeded in transit, from `hop`.
    pub const fn time_exceeded(hop: Ipv4Addr) -> Self {
        Self::Icmp {
            kind: 11,
            code: 0,
            from: hop,
        }
    }

    /// ICMP port unreachable (ECONNREFUSED), from `from`.
    pub const fn port_unreachable(from: Ipv4Addr) -> Self {
        Self::Icmp {
            kind: 3,
            code: 3,
            from,
        }
    }
}

/// Sends one datagram with time to live `ttl` from a socket in `ns`
/// connected to `to`, and waits up to `wait` for what comes back.
pub fn udp(ns: &Netns, to: SocketAddr, ttl: u32, wait: Duration) -> Result<Outcome> {
    ns.run(move || probe(to, ttl, wait))?
}

fn probe(to: SocketAddr, ttl: u32, wait: Duration) -> Result<Outcome> {
    let sock = UdpSocket::bind(("0.0.0.0", 0))?;
    sock.connect(to)?;
    sock.set_ttl(ttl)?;
    let on: libc::c_int = 1;
    // SAFETY: a valid socket and an int option of the right size.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_IP,
            libc::IP_RECVERR,
            (&raw const on).cast(),
            libc::socklen_t::try_from(size_of::<libc::c_int>()).unwrap_or(4),
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).context("IP_RECVERR");
    }
    sock.send(b"probe")?;
    let mut pfd = libc::pollfd {
        fd: sock.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = libc::c_int::try_from(wait.as_millis()).unwrap_or(libc::c_int::MAX);
    // SAFETY: one valid pollfd.
    let n = unsafe { libc::poll(&raw mut pfd, 1, ms) };
    if n < 0 {
        return Err(std::io::Error::last_os_error()).context("poll");
    }
    if n == 0 {
        return Ok(Outcome::Silence);
    }
    if pfd.revents & libc::POLLERR != 0 {
        return error_queue(&sock);
    }
    let mut buf = [0u8; 64];
    sock.recv(&mut buf)?;
    Ok(Outcome::Answer)
}

/// The ICMP error at the head of the socket's error queue.
fn error_queue(sock: &UdpSocket) -> Result<Outcome> {
    let mut data = [0u8; 64];
    let mut control = [0u64; 32];
    let mut iov = libc::iovec {
        iov_base: data.as_mut_ptr().cast(),
        iov_len: data.len(),
    };
    // SAFETY: all-zero is a valid msghdr; the buffers outlive the call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &raw mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = size_of_val(&control);
    // SAFETY: a valid socket and message.
    let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &raw mut msg, libc::MSG_ERRQUEUE) };
    if n < 0 {
        return Err(std::io::Error::last_os_error()).context("recvmsg(MSG_ERRQUEUE)");
    }
    // SAFETY: the kernel filled `msg`'s control buffer; the macros walk it
    // within `msg_controllen`.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&raw const msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_IP && (*cmsg).cmsg_type == libc::IP_RECVERR {
                // Read unaligned: the control buffer promises no alignment.
                #[expect(clippy::cast_ptr_alignment, reason = "read with read_unaligned")]
                let ee = libc::CMSG_DATA(cmsg).cast::<libc::sock_extended_err>();
                let err = ee.read_unaligned();
                if err.ee_origin != libc::SO_EE_ORIGIN_ICMP {
                    bail!("an error that is not ICMP: {err:?}");
                }
                #[expect(clippy::cast_ptr_alignment, reason = "read with read_unaligned")]
                let from = libc::SO_EE_OFFENDER(ee).cast::<libc::sockaddr_in>();
                let from = from.read_unaligned();
                return Ok(Outcome::Icmp {
                    kind: err.ee_type,
                    code: err.ee_code,
                    from: Ipv4Addr::from(u32::from_be(from.sin_addr.s_addr)),
                });
            }
            cmsg = libc::CMSG_NXTHDR(&raw const msg, cmsg);
        }
    }
    bail!("the error queue held no ICMP error")
}
