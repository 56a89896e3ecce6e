//! Conntrack entries, states and the table split.

use super::*;

const S: u64 = NS_PER_S;

fn entry(state: u8, flags: u8) -> CtEntry {
    CtEntry {
        nat_addr_be: [10, 244, 1, 10],
        nat_port_be: 8080u16.to_be_bytes(),
        state,
        flags,
        service_id: 1,
        backend_id: 2,
        last_seen_ns: 0,
        created_ns: 0,
        snat_addr_be: [0; 4],
        snat_port_be: [0; 2],
        _pad: [0; 2],
    }
}

fn step(e: &mut CtEntry, dir: u8, tcp_flags: u8) {
    (e.state, e.flags) = e.advance(true, dir, tcp_flags, 0);
}

#[test]
fn a_tcp_handshake_establishes_only_when_the_client_acknowledges_the_answer() {
    let mut e = entry(CT_NEW, 0);
    step(&mut e, CT_DIR_ORIGINAL, TCP_SYN);
    assert_eq!(e.state, CT_NEW, "a SYN");
    step(&mut e, CT_DIR_ORIGINAL, TCP_ACK);
    assert_eq!(e.state, CT_NEW, "an ACK with no answer yet (forged)");
    step(&mut e, CT_DIR_REPLY, TCP_SYN | TCP_ACK);
    assert_eq!((e.state, e.flags & CT_F_REPLIED), (CT_NEW, CT_F_REPLIED));
    step(&mut e, CT_DIR_ORIGINAL, TCP_SYN);
    assert_eq!(e.state, CT_NEW, "a retransmitted SYN");
    step(&mut e, CT_DIR_ORIGINAL, TCP_ACK);
    assert_eq!(e.state, CT_ESTABLISHED);
}

#[test]
fn fins_from_either_side_close_and_a_rst_closes_at_once() {
    for first in [CT_DIR_ORIGINAL, CT_DIR_REPLY] {
        let mut e = entry(CT_ESTABLISHED, CT_F_REPLIED);
        step(&mut e, first, TCP_FIN | TCP_ACK);
        assert_eq!(e.state, CT_CLOSING, "a FIN from {first}");
        step(&mut e, first, TCP_ACK);
        assert_eq!(e.state, CT_CLOSING, "stays closing");
        step(&mut e, 1 - first, TCP_FIN | TCP_ACK);
        assert_eq!(e.state, CT_CLOSED, "FINs from both sides");
    }
    for dir in [CT_DIR_ORIGINAL, CT_DIR_REPLY] {
        let mut e = entry(CT_ESTABLISHED, CT_F_REPLIED);
        step(&mut e, dir, TCP_RST);
        assert_eq!(e.state, CT_CLOSED);
        step(&mut e, CT_DIR_ORIGINAL, TCP_ACK);
        assert_eq!(e.state, CT_CLOSED, "nothing reopens a closed flow");
    }
}

#[test]
fn other_protocols_establish_as_a_replied_stream_after_two_seconds() {
    let mut e = entry(CT_NEW, 0);
    e.created_ns = 10 * S;
    let (state, flags) = e.advance(false, CT_DIR_REPLY, 0, 10 * S + 1);
    assert_eq!((state, flags), (CT_NEW, CT_F_REPLIED), "a reply");
    e.flags = flags;
    let (state, _) = e.advance(false, CT_DIR_ORIGINAL, 0, 11 * S);
    assert_eq!(state, CT_NEW, "one second in: a lookup, not a stream");
    let (state, _) = e.advance(false, CT_DIR_ORIGINAL, 0, 12 * S);
    assert_eq!(state, CT_ESTABLISHED);
    let unreplied = entry(CT_NEW, 0);
    let (state, _) = unreplied.advance(false, CT_DIR_ORIGINAL, 0, 100 * S);
    assert_eq!(state, CT_NEW, "never without a reply");
}

#[test]
fn lifetimes_follow_the_state() {
    let l = Lifetimes::DEFAULT;
    let life = |state, flags, tcp| entry(state, flags).lifetime_ns(tcp, &l) / S;
    assert_eq!(life(CT_NEW, 0, true), 60);
    assert_eq!(life(CT_ESTABLISHED, CT_F_REPLIED, true), 6 * 3600);
    assert_eq!(life(CT_CLOSING, CT_F_REPLIED, true), 10);
    assert_eq!(life(CT_CLOSED, CT_F_RST, true), 10);
    assert_eq!(life(CT_NEW, 0, false), 30);
    assert_eq!(life(CT_NEW, CT_F_REPLIED, false), 120);
    let e = entry(CT_CLOSING, 0);
    assert!(
        !e.expired_since(5 * S, true, 15 * S, &l),
        "exactly the lifetime"
    );
    assert!(e.expired_since(5 * S, true, 15 * S + 1, &l));
    assert!(!e.expired_since(20 * S, true, 15 * S, &l), "a clock behind");
}

#[test]
fn only_a_bare_syn_starts_a_tcp_flow() {
    assert!(tcp_may_start(TCP_SYN));
    assert!(tcp_may_start(TCP_SYN | 0x40), "ECN bits are fine");
    for flags in [
        TCP_ACK,
        TCP_RST,
        TCP_FIN,
        TCP_FIN | TCP_ACK,
        TCP_SYN | TCP_ACK,
        TCP_SYN | TCP_RST,
        0,
    ] {
        assert!(!tcp_may_start(flags), "{flags:#x}");
    }
}

#[test]
fn partners_are_each_others_keys_with_and_without_snat() {
    let original = CtKey {
        saddr_be: [192, 168, 77, 100],
        daddr_be: [192, 168, 77, 1],
        sport_be: 40000u16.to_be_bytes(),
        dport_be: 30080u16.to_be_bytes(),
        proto: 6,
        dir: CT_DIR_ORIGINAL,
        _pad: [0; 2],
    };
    let mut e = entry(CT_NEW, 0);
    let reply = partner(&original, &e);
    assert_eq!(
        (reply.saddr_be, reply.daddr_be, reply.dport_be, reply.dir),
        (
            [10, 244, 1, 10],
            original.saddr_be,
            original.sport_be,
            CT_DIR_REPLY
        )
    );
    let mut reply_entry = e;
    reply_entry.nat_addr_be = original.daddr_be;
    reply_entry.nat_port_be = original.dport_be;
    assert_eq!(partner(&reply, &reply_entry), original);

    e.flags = CT_F_SNAT;
    e.snat_addr_be = [192, 168, 77, 1];
    e.snat_port_be = 33000u16.to_be_bytes();
    let reply = partner(&original, &e);
    assert_eq!(
        (reply.daddr_be, reply.dport_be),
        (e.snat_addr_be, e.snat_port_be)
    );
    reply_entry.flags = CT_F_SNAT;
    reply_entry.snat_addr_be = original.saddr_be;
    reply_entry.snat_port_be = original.sport_be;
    assert_eq!(partner(&reply, &reply_entry), original);
}

#[test]
fn sizes_split_by_partition_protocol_and_state() {
    let s = split_sizes(262_144);
    let sum: u32 = s.iter().sum();
    assert!(sum <= 262_144 && sum > 262_144 - 16, "{sum}");
    let ew_tcp = CtTable::of(Partition::EastWest, true);
    let ns_other = CtTable::of(Partition::NorthSouth, false);
    assert_eq!(s[ew_tcp.map(CT_TIER_ESTABLISHED) as usize], 65_536);
    assert_eq!(s[ew_tcp.map(CT_TIER_NEW) as usize], 21_845);
    assert_eq!(s[ns_other.map(CT_TIER_ESTABLISHED) as usize], 32_768);
    assert_eq!(s[ns_other.map(CT_TIER_NEW) as usize], 10_922);
    assert!(split_sizes(1024).iter().all(|n| *n >= CT_MIN_MAP));
    assert_eq!(ew_tcp.label(), "east_west_tcp");
    assert!(ew_tcp.is_tcp() && !ns_other.is_tcp());
    assert_eq!(ns_other.partition(), Partition::NorthSouth);
}
