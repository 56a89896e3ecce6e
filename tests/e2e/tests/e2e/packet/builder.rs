//! Builds test packets and checks packets the program wrote. Checksums are
//! computed here from scratch (RFC 1071), independently of the program and of
//! `sluice_abi::csum`.
#![allow(clippy::unwrap_used, reason = "test helpers: a failure fails the test")]

use std::net::Ipv4Addr;

pub const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
pub const HOST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
pub const TCP: u8 = 6;
pub const UDP: u8 = 17;
pub const ICMP: u8 = 1;
pub const SYN: u8 = 0x02;
pub const ACK: u8 = 0x10;
pub const FIN: u8 = 0x01;

/// A packet to build. `Default` is a TCP SYN.
#[derive(Clone, Debug)]
pub struct Spec {
    pub src: (Ipv4Addr, u16),
    pub dst: (Ipv4Addr, u16),
    pub proto: u8,
    pub tcp_flags: u8,
    pub payload: Vec<u8>,
    /// IPv4 options (a multiple of 4 bytes).
    pub ip_options: Vec<u8>,
    /// Send UDP with a zero ("no") checksum.
    pub udp_no_checksum: bool,
    /// The IPv4 flags+fragment-offset field.
    pub frag: u16,
    /// Cut the frame to this many bytes after building it.
    pub truncate: Option<usize>,
    /// Override the IHL nibble (for malformed headers).
    pub ihl: Option<u8>,
    /// The IPv4 time to live.
    pub ttl: u8,
}

impl Default for Spec {
    fn default() -> Self {
        Self {
            src: (Ipv4Addr::new(10, 244, 1, 2), 40000),
            dst: (Ipv4Addr::new(10, 96, 0, 10), 80),
            proto: TCP,
            tcp_flags: SYN,
            payload: Vec::new(),
            ip_options: Vec::new(),
            udp_no_checksum: false,
            frag: 0,
            truncate: None,
            ihl: None,
            ttl: 64,
        }
    }
}

pub fn sum(data: &[u8]) -> u32 {
    let mut s: u32 = 0;
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        s += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        s += u32::from(*last) << 8;
    }
    s
}

pub fn fold(mut s: u32) -> u16 {
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    u16::try_from(s).unwrap()
}

fn pseudo(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, len: usize) -> u32 {
    sum(&src.octets()) + sum(&dst.octets()) + u32::from(proto) + u32::try_from(len).unwrap()
}

/// An Ethernet + IPv4 + TCP/UDP frame with correct checksums.
pub fn build(spec: &Spec) -> Vec<u8> {
    let mut l4 = Vec::new();
    l4.extend_from_slice(&spec.src.1.to_be_bytes());
    l4.extend_from_slice(&spec.dst.1.to_be_bytes());
    if spec.proto == TCP {
        l4.extend_from_slice(&1000u32.to_be_bytes()); // seq
        l4.extend_from_slice(&0u32.to_be_bytes()); // ack
        l4.push(5 << 4);
        l4.push(spec.tcp_flags);
        l4.extend_from_slice(&64240u16.to_be_bytes());
        l4.extend_from_slice(&[0, 0, 0, 0]); // checksum, urgent
    } else {
        let len = u16::try_from(8 + spec.payload.len()).unwrap();
        l4.extend_from_slice(&len.to_be_bytes());
        l4.extend_from_slice(&[0, 0]);
    }
    l4.extend_from_slice(&spec.payload);
    let check_at = if spec.proto == TCP { 16 } else { 6 };
    let mut check = !fold(pseudo(spec.src.0, spec.dst.0, spec.proto, l4.len()) + sum(&l4));
    if spec.proto == UDP && check == 0 {
        check = 0xffff;
    }
    if !(spec.proto == UDP && spec.udp_no_checksum) {
        l4[check_at..check_at + 2].copy_from_slice(&check.to_be_bytes());
    }

    let ihl = 5 + u8::try_from(spec.ip_options.len() / 4).unwrap();
    let header = IpHeader {
        ihl: spec.ihl.unwrap_or(ihl),
        frag: spec.frag,
        ttl: spec.ttl,
        proto: spec.proto,
        src: spec.src.0,
        dst: spec.dst.0,
    };
    let mut frame = frame(&header, &spec.ip_options, &l4);
    if let Some(n) = spec.truncate {
        frame.truncate(n);
    }
    frame
}

struct IpHeader {
    ihl: u8,
    frag: u16,
    ttl: u8,
    proto: u8,
    src: Ipv4Addr,
    dst: Ipv4Addr,
}

/// Ethernet + IPv4 (with a correct header checksum) around `l4`.
fn frame(h: &IpHeader, options: &[u8], l4: &[u8]) -> Vec<u8> {
    let mut ip = vec![(4 << 4) | h.ihl, 0];
    let tot = u16::try_from(20 + options.len() + l4.len()).unwrap();
    ip.extend_from_slice(&tot.to_be_bytes());
    ip.extend_from_slice(&0x1234u16.to_be_bytes());
    ip.extend_from_slice(&h.frag.to_be_bytes());
    ip.extend_from_slice(&[h.ttl, h.proto, 0, 0]);
    ip.extend_from_slice(&h.src.octets());
    ip.extend_from_slice(&h.dst.octets());
    ip.extend_from_slice(options);
    let ipc = !fold(sum(&ip));
    ip[10..12].copy_from_slice(&ipc.to_be_bytes());
    let mut frame = ethernet(0x0800);
    frame.extend(ip);
    frame.extend_from_slice(l4);
    frame
}

fn ethernet(ether_type: u16) -> Vec<u8> {
    let mut frame = Vec::new();
    frame.extend_from_slice(&HOST_MAC);
    frame.extend_from_slice(&CLIENT_MAC);
    frame.extend_from_slice(&ether_type.to_be_bytes());
    frame
}

/// A frame of another ether type (ARP, IPv6) with some payload.
pub fn other_ethertype(ether_type: u16, payload_len: usize) -> Vec<u8> {
    let mut frame = ethernet(ether_type);
    frame.extend((0..payload_len).map(|i| u8::try_from(i % 251).unwrap()));
    frame
}

/// An ICMP echo request (so not TCP/UDP) to `dst`.
pub fn icmp_echo(src: Ipv4Addr, dst: Ipv4Addr) -> Vec<u8> {
    let mut icmp = vec![8, 0, 0, 0, 0, 1, 0, 1, b'p', b'i', b'n', b'g'];
    let c = !fold(sum(&icmp));
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    frame(
        &IpHeader {
            ihl: 5,
            frag: 0,
            ttl: 64,
            proto: ICMP,
            src,
            dst,
        },
        &[],
        &icmp,
    )
}

/// What a written frame says, with its checksums verified.
#[derive(Debug)]
pub struct Seen {
    pub src: (Ipv4Addr, u16),
    pub dst: (Ipv4Addr, u16),
    pub proto: u8,
    pub eth_dst: [u8; 6],
    pub eth_src: [u8; 6],
    /// The L4 checksum field as written.
    pub l4_check: u16,
}

/// Parses an Ethernet + IPv4 + TCP/UDP frame and asserts that the IPv4 and
/// L4 checksums are right (a zero UDP checksum means none).
pub fn parse_checked(frame: &[u8]) -> Seen {
    assert!(frame.len() >= 34, "frame too short: {frame:?}");
    assert_eq!(&frame[12..14], &[0x08, 0x00], "not IPv4");
    let ip = &frame[14..];
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    assert_eq!(
        fold(sum(&ip[..ihl])),
        0xffff,
        "IPv4 header checksum is wrong"
    );
    let tot = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    let proto = ip[9];
    let src = Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
    let dst = Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
    let l4 = &ip[ihl..tot];
    let check_at = if proto == TCP { 16 } else { 6 };
    let l4_check = u16::from_be_bytes([l4[check_at], l4[check_at + 1]]);
    if !(proto == UDP && l4_check == 0) {
        assert_eq!(
            fold(pseudo(src, dst, proto, l4.len()) + sum(l4)),
            0xffff,
            "L4 checksum is wrong"
        );
    }
    let port = |o: usize| u16::from_be_bytes([l4[o], l4[o + 1]]);
    Seen {
        src: (src, port(0)),
        dst: (dst, port(2)),
        proto,
        eth_dst: frame[0..6].try_into().unwrap(),
        eth_src: frame[6..12].try_into().unwrap(),
        l4_check,
    }
}

/// The ICMP error in a written frame: (type, code, outer source, outer
/// destination, the quoted original datagram), with both checksums checked.
pub fn parse_icmp_error(frame: &[u8]) -> (u8, u8, Ipv4Addr, Ipv4Addr, Vec<u8>) {
    let ip = &frame[14..];
    assert_eq!(ip[0], 0x45);
    assert_eq!(ip[9], ICMP, "not ICMP");
    assert_eq!(
        fold(sum(&ip[..20])),
        0xffff,
        "IPv4 header checksum is wrong"
    );
    let tot = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    assert_eq!(
        tot + 14,
        frame.len(),
        "IPv4 total length and frame length disagree"
    );
    let icmp = &ip[20..tot];
    assert_eq!(fold(sum(icmp)), 0xffff, "ICMP checksum is wrong");
    (
        icmp[0],
        icmp[1],
        Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]),
        Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]),
        icmp[8..].to_vec(),
    )
}

/// An ICMP error (`kind`, `code`, and `rest`, the header's last four
/// bytes) from `src` to `dst`, quoting `quoted` (a frame built or written
/// here: its IPv4 packet, less the Ethernet header, as Linux quotes a
/// small packet whole), with every checksum right.
pub fn icmp_error(
    (src, dst): (Ipv4Addr, Ipv4Addr),
    (kind, code, rest): (u8, u8, [u8; 4]),
    quoted: &[u8],
) -> Vec<u8> {
    let mut icmp = vec![kind, code, 0, 0];
    icmp.extend_from_slice(&rest);
    icmp.extend_from_slice(&quoted[14..]);
    let c = !fold(sum(&icmp));
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    frame(
        &IpHeader {
            ihl: 5,
            frag: 0,
            ttl: 64,
            proto: ICMP,
            src,
            dst,
        },
        &[],
        &icmp,
    )
}

/// The packet an ICMP error quotes (from `parse_icmp_error`), whole, with
/// its IPv4 and L4 checksums checked as `parse_checked` does.
pub fn parse_quoted(quoted: &[u8]) -> Seen {
    let mut frame = ethernet(0x0800);
    frame.extend_from_slice(quoted);
    parse_checked(&frame)
}

/// Splits a frame built here (IPv4 without options) into fragments of at
/// most `chunk` bytes of payload each (a multiple of 8), all with IP ID
/// `id` and right header checksums.
pub fn fragments(frame: &[u8], chunk: usize, id: u16) -> Vec<Vec<u8>> {
    assert_eq!(chunk % 8, 0);
    let header = &frame[14..34];
    let payload = &frame[34..];
    let mut out = Vec::new();
    for (i, part) in payload.chunks(chunk).enumerate() {
        let offset = i * chunk;
        let more = offset + part.len() < payload.len();
        let mut ip = header.to_vec();
        let tot = u16::try_from(20 + part.len()).unwrap();
        ip[2..4].copy_from_slice(&tot.to_be_bytes());
        ip[4..6].copy_from_slice(&id.to_be_bytes());
        let bits = u16::try_from(offset / 8).unwrap() | if more { 0x2000 } else { 0 };
        ip[6..8].copy_from_slice(&bits.to_be_bytes());
        ip[10..12].copy_from_slice(&[0, 0]);
        let c = !fold(sum(&ip));
        ip[10..12].copy_from_slice(&c.to_be_bytes());
        let mut f = frame[..14].to_vec();
        f.extend(ip);
        f.extend_from_slice(part);
        out.push(f);
    }
    out
}

/// The datagram of fragments the program wrote, in order: each one's IPv4
/// header checksum is checked, and that all have the same addresses; the
/// result is one unfragmented frame for `parse_checked`, whose L4
/// checksum then covers the whole datagram.
pub fn reassemble(frames: &[Vec<u8>]) -> Vec<u8> {
    let first = &frames[0];
    let mut payload = Vec::new();
    for f in frames {
        let ip = &f[14..34];
        assert_eq!(fold(sum(ip)), 0xffff, "a fragment's IPv4 header checksum");
        assert_eq!(ip[12..20], first[26..34], "a fragment's addresses");
        let offset = usize::from(u16::from_be_bytes([ip[6], ip[7]]) & 0x1fff) * 8;
        assert_eq!(offset, payload.len(), "fragments in order");
        payload.extend_from_slice(&f[34..]);
    }
    let mut ip = first[14..34].to_vec();
    let tot = u16::try_from(20 + payload.len()).unwrap();
    ip[2..4].copy_from_slice(&tot.to_be_bytes());
    ip[6..8].copy_from_slice(&[0, 0]);
    ip[10..12].copy_from_slice(&[0, 0]);
    let c = !fold(sum(&ip));
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    let mut frame = first[..14].to_vec();
    frame.extend(ip);
    frame.extend(payload);
    frame
}
