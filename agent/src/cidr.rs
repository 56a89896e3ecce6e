//! CIDRs, as flags, config keys and Service fields write them: IPv4
//! (`parse`, `contains`) or either family (`parse_ip`, `contains_ip`).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// `ADDR/LEN` as its network address (host bits cleared, as the API server
/// accepts `10.0.0.1/8` too) and prefix length.
pub fn parse(cidr: &str) -> Option<(Ipv4Addr, u8)> {
    let (addr, len) = cidr.trim().split_once('/')?;
    let addr: Ipv4Addr = addr.parse().ok()?;
    let len: u8 = len.parse().ok().filter(|l| *l <= 32)?;
    Some((Ipv4Addr::from(u32::from(addr) & mask(len)), len))
}

/// Whether `addr` lies in `net/len`.
pub fn contains((net, len): (Ipv4Addr, u8), addr: Ipv4Addr) -> bool {
    u32::from(net) & mask(len) == u32::from(addr) & mask(len)
}

fn mask(len: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0)
}

/// `ADDR/LEN` of either family, as `parse` does IPv4.
pub fn parse_ip(cidr: &str) -> Option<(IpAddr, u8)> {
    let (addr, len) = cidr.trim().split_once('/')?;
    match addr.parse().ok()? {
        IpAddr::V4(_) => parse(cidr).map(|(net, len)| (IpAddr::V4(net), len)),
        IpAddr::V6(a) => {
            let len: u8 = len.parse().ok().filter(|l| *l <= 128)?;
            let net = Ipv6Addr::from(u128::from(a) & mask6(len));
            Some((IpAddr::V6(net), len))
        }
    }
}

/// Whether `addr` lies in `net/len`; never across families.
pub fn contains_ip((net, len): (IpAddr, u8), addr: IpAddr) -> bool {
    match (net, addr) {
        (IpAddr::V4(net), IpAddr::V4(a)) => contains((net, len), a),
        (IpAddr::V6(net), IpAddr::V6(a)) => {
            u128::from(net) & mask6(len) == u128::from(a) & mask6(len)
        }
        _ => false,
    }
}

fn mask6(len: u8) -> u128 {
    u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs_parse_to_their_network_and_contain_their_addresses() {
        let net = parse("10.0.0.1/8").unwrap();
        assert_eq!(net, (Ipv4Addr::new(10, 0, 0, 0), 8));
        assert!(contains(net, Ipv4Addr::new(10, 200, 1, 1)));
        assert!(!contains(net, Ipv4Addr::new(11, 0, 0, 1)));
        assert!(contains(
            parse("0.0.0.0/0").unwrap(),
            Ipv4Addr::new(1, 2, 3, 4)
        ));
        assert!(parse("10.0.0.0/33").is_none() && parse("10.0.0.0").is_none());
    }

    #[test]
    fn ipv6_cidrs_parse_and_never_contain_the_other_family() {
        let net = parse_ip("fd00:10::1/32").unwrap();
        assert_eq!(net, ("fd00:10::".parse().unwrap(), 32));
        assert!(contains_ip(net, "fd00:10:ffff::9".parse().unwrap()));
        assert!(!contains_ip(net, "fd00:11::1".parse().unwrap()));
        assert!(!contains_ip(net, "10.0.0.1".parse().unwrap()));
        let v4 = parse_ip("10.0.0.1/8").unwrap();
        assert_eq!(v4, (IpAddr::V4(Ipv4Addr::new(10, 0, 0, 0)), 8));
        assert!(!contains_ip(v4, "::ffff:10.0.0.1".parse().unwrap()));
        assert!(contains_ip(
            parse_ip("::/0").unwrap(),
            "fd00::1".parse().unwrap()
        ));
        assert!(parse_ip("fd00::/129").is_none());
    }
}
