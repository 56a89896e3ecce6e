//! A two-instruction XDP program (`return XDP_PASS`) for the segment side
//! of the lab's veths: native XDP on a veth sends `XDP_TX` and redirected
//! frames into its peer only when the peer runs an XDP program too.

use std::os::fd::{FromRawFd as _, OwnedFd};

use anyhow::{Result, bail};

use crate::Netns;

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_PROG_TYPE_XDP: u32 = 6;
const BPF_XDP: u32 = 37;
const XDP_FLAGS_DRV_MODE: u32 = 4;

/// `r0 = XDP_PASS (2); exit`.
const PROGRAM: [u64; 2] = [0x0000_0002_0000_00b7, 0x0000_0000_0000_0095];

fn bpf(cmd: libc::c_long, attr: &mut [u64; 16]) -> Result<OwnedFd> {
    // SAFETY: bpf(2) with a zero-padded attribute block of 128 bytes that
    // outlives the call; on success the result is a new descriptor we own.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), 128u32) };
    if fd < 0 {
        bail!("bpf({cmd}): {}", std::io::Error::last_os_error());
    }
    let fd = i32::try_from(fd)?;
    // SAFETY: the kernel just returned this descriptor to us.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Attaches `return XDP_PASS` natively to `iface` in `ns`; detached when
/// the returned link is dropped.
pub fn attach(ns: &Netns, iface: &str) -> Result<OwnedFd> {
    let iface = std::ffi::CString::new(iface)?;
    ns.run(move || -> Result<OwnedFd> {
        // SAFETY: if_nametoindex(3) reads a NUL-terminated string.
        let index = unsafe { libc::if_nametoindex(iface.as_ptr()) };
        if index == 0 {
            bail!("no interface {iface:?}");
        }
        let license = c"GPL";
        let mut attr = [0u64; 16];
        attr[0] = u64::from(BPF_PROG_TYPE_XDP) | (2 << 32);
        attr[1] = PROGRAM.as_ptr() as u64;
        attr[2] = license.as_ptr() as u64;
        let prog = bpf(BPF_PROG_LOAD, &mut attr)?;
        let mut attr = [0u64; 16];
        let prog_fd = u32::try_from(std::os::fd::AsRawFd::as_raw_fd(&prog))?;
        attr[0] = u64::from(prog_fd) | (u64::from(index) << 32);
        attr[1] = u64::from(BPF_XDP) | (u64::from(XDP_FLAGS_DRV_MODE) << 32);
        // The link holds the program.
        bpf(BPF_LINK_CREATE, &mut attr)
    })?
}
