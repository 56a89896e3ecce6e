//! IPv4 CIDRs, as flags, config keys and Service fields write them.

use std::net::Ipv4Addr;

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
}
