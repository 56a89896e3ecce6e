//! Offload settings of a lab interface (the `SIOCETHTOOL` ioctl, as
//! `ethtool -K` does; the tool itself is not installed everywhere).

use anyhow::{Result, bail};

use crate::Netns;

const SIOCETHTOOL: libc::c_ulong = 0x8946;
/// Transmit checksum offload.
const ETHTOOL_STXCSUM: u32 = 0x17;
/// Scatter-gather, TCP segmentation, generic segmentation and generic
/// receive offload (linux/ethtool.h).
const ETHTOOL_SSG: u32 = 0x19;
const ETHTOOL_STSO: u32 = 0x1f;
const ETHTOOL_SGSO: u32 = 0x24;
const ETHTOOL_SGRO: u32 = 0x2c;

#[repr(C)]
struct EthtoolValue {
    cmd: u32,
    data: u32,
}

#[repr(C)]
struct IfReq {
    name: [libc::c_char; libc::IFNAMSIZ],
    data: *mut EthtoolValue,
    _pad: [u8; 16],
}

fn set(ns: &Netns, iface: &str, cmd: u32, on: bool) -> Result<()> {
    let iface = iface.to_owned();
    ns.run(move || -> Result<()> {
        let mut value = EthtoolValue {
            cmd,
            data: u32::from(on),
        };
        let mut req = IfReq {
            name: [0; libc::IFNAMSIZ],
            data: &raw mut value,
            _pad: [0; 16],
        };
        for (dst, src) in req
            .name
            .iter_mut()
            .zip(iface.bytes().take(libc::IFNAMSIZ - 1))
        {
            *dst = libc::c_char::try_from(src)?;
        }
        // SAFETY: socket(2), ioctl(2) on our own descriptor with a filled-in
        // ifreq whose data pointer outlives the call, close(2).
        unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0);
            if fd < 0 {
                bail!("socket: {}", std::io::Error::last_os_error());
            }
            let rc = libc::ioctl(fd, SIOCETHTOOL, &raw mut req);
            let err = std::io::Error::last_os_error();
            libc::close(fd);
            if rc != 0 {
                bail!("SIOCETHTOOL {cmd:#x} on {iface}: {err}");
            }
        }
        Ok(())
    })?
}

/// Checksums computed in software before a frame leaves `iface`, as a
/// real NIC puts finished checksums on the wire (a veth passes partial
/// ones along, which XDP on the far side cannot tell).
pub fn tx_checksum_off(ns: &Netns, iface: &str) -> Result<()> {
    set(ns, iface, ETHTOOL_STXCSUM, false)
}

/// Every offload a veth can have on: checksums, scatter-gather, TSO, GSO
/// and GRO, so that 64 KiB packets travel as one (as on a host with a NIC
/// that segments and coalesces). A veth whose peer runs XDP cannot
/// segment (the kernel takes TSO and GSO off its features): those stay
/// off there.
pub fn offloads_on(ns: &Netns, iface: &str) -> Result<()> {
    for cmd in [
        ETHTOOL_STXCSUM,
        ETHTOOL_SSG,
        ETHTOOL_STSO,
        ETHTOOL_SGSO,
        ETHTOOL_SGRO,
    ] {
        match set(ns, iface, cmd, true) {
            Ok(()) => {}
            Err(e)
                if matches!(cmd, ETHTOOL_STSO | ETHTOOL_SGSO)
                    && e.to_string().contains("Operation not supported") => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// No segmentation offload on `iface` (TSO and GSO off): the stack cuts
/// its large packets into MTU frames before they leave, as frames on a
/// real wire are whatever the sending host's NIC segmented.
pub fn segmentation_off(ns: &Netns, iface: &str) -> Result<()> {
    for cmd in [ETHTOOL_STSO, ETHTOOL_SGSO] {
        match set(ns, iface, cmd, false) {
            Ok(()) => {}
            Err(e) if e.to_string().contains("Operation not supported") => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// A segment-facing interface's offloads: scatter-gather, GSO (segments
/// made in software, with finished checksums) and GRO; transmit checksum
/// offload stays off, so TSO does too.
pub fn segment_offloads_on(ns: &Netns, iface: &str) -> Result<()> {
    for cmd in [ETHTOOL_SSG, ETHTOOL_SGSO, ETHTOOL_SGRO] {
        match set(ns, iface, cmd, true) {
            Ok(()) => {}
            Err(e) if cmd == ETHTOOL_SGSO && e.to_string().contains("Operation not supported") => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
