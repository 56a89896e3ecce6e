//! The collector, the census and the conversion of the previous layout.

use sluice_abi::{
    conntrack::{
        CT_CLOSED, CT_CLOSING, CT_DIR_ORIGINAL, CT_DIR_REPLY, CT_ESTABLISHED, CT_F_SNAT,
        legacy::{CtValueV2, V2_F_SNAT, V2_TCP_FIN, V2_TCP_RST},
        original_of_reply, reply_of_original,
    },
    proto,
};

use super::{
    convert::{convert_flow, upgrade},
    *,
};

#[test]
fn the_default_size_follows_memory_with_a_floor_and_a_cap() {
    assert_eq!(size_for_memory(0), names::DEFAULT_CONNTRACK_SIZE);
    assert_eq!(size_for_memory(8 << 30), names::DEFAULT_CONNTRACK_SIZE);
    // 64 GiB: 0.25 % is 160 MiB, 1.3 Mi entries of 122 bytes.
    assert_eq!(size_for_memory(64 << 30), 1_408_000);
    assert_eq!(size_for_memory(1 << 40), MAX_DEFAULT_SIZE);
    let meminfo = "MemTotal:       24576000 kB\nMemFree:  1 kB\n";
    assert_eq!(mem_total_bytes(meminfo), Some(24_576_000 * 1024));
}

fn v2(flags: u8, tcp_flags: u8) -> (CtKey, CtValueV2) {
    let k = CtKey {
        saddr_be: [10, 244, 1, 2],
        daddr_be: [10, 96, 0, 10],
        sport_be: 40000u16.to_be_bytes(),
        dport_be: 80u16.to_be_bytes(),
        proto: proto::TCP,
        dir: CT_DIR_ORIGINAL,
        _pad: [0; 2],
    };
    let v = CtValueV2 {
        nat_addr_be: [10, 244, 1, 10],
        nat_port_be: 8080u16.to_be_bytes(),
        tcp_flags,
        flags,
        service_id: 7,
        backend_id: 9,
        last_seen_ns: 123,
        snat_addr_be: [192, 168, 77, 1],
        snat_port_be: 33000u16.to_be_bytes(),
        _pad: [0; 2],
    };
    (k, v)
}

#[test]
fn old_flows_convert_to_established_pairs_that_find_each_other() {
    for snat in [0, V2_F_SNAT] {
        let (k, v) = v2(snat, 0);
        let (original, reply) = convert_flow(&k, &v, None);
        assert_eq!(original.state, CT_ESTABLISHED);
        assert_eq!(
            (original.nat_addr_be, original.backend_id),
            (v.nat_addr_be, 9)
        );
        assert_eq!(original.flags & CT_F_SNAT != 0, snat != 0);
        let reply_key = reply_of_original(&k, &original);
        assert_eq!(reply_key.dir, CT_DIR_REPLY);
        assert_eq!(original_of_reply(&reply_key, &reply), k, "snat {snat}");
        assert_eq!(
            (reply.nat_addr_be, reply.nat_port_be),
            (k.daddr_be, k.dport_be)
        );
    }
    let (k, v) = v2(0, V2_TCP_FIN);
    assert_eq!(upgrade(&k, &v).state, CT_CLOSING);
    let (k, v) = v2(0, V2_TCP_RST);
    assert_eq!(upgrade(&k, &v).state, CT_CLOSED);
}
