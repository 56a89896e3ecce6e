//! Offload settings of a lab interface (the `SIOCETHTOOL` ioctl, as
//! `ethtool -K` does; the tool itself is not installed everywhere).

use anyhow::{Result, bail};

use crate::Netns;

const SIOCETHTOOL: libc::c_ulong = 0x8946;
/// Transmit checksum offload.
const ETHTOOL_STXCSUM: u32 = 0x17;

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
