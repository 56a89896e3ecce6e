//! The previous layout's conntrack entries (`SLUICE_CT_V2`, one map for
//! every flow) written into this layout's established maps on upgrade.

use std::{collections::HashMap as StdHashMap, io, os::fd::AsFd as _, path::Path};

use aya::maps::MapData;
use sluice_abi::{
    conntrack::{
        CT_CLOSED, CT_CLOSING, CT_DIR_ORIGINAL, CT_ESTABLISHED, CT_F_FIN_ORIGINAL, CT_F_REPLIED,
        CT_F_RST, CT_F_SNAT, CT_TIER_ESTABLISHED, CtEntry, CtKey, CtTable, Partition,
        legacy::{CtValueV2, V2_F_SNAT, V2_TCP_FIN, V2_TCP_RST},
        reply_of_original,
    },
    maps as names, proto,
};

use super::{Conntrack, batch};

/// Converts the flows of the previous layout's conntrack map
/// (`SLUICE_CT_V2`), if it is pinned, into this layout's established
/// maps, so that an upgrade keeps every tracked connection. Entries that
/// exist already are left alone, so this can run again after the new
/// programs took over, to catch flows created meanwhile. Returns the
/// number of flows written.
///
/// The old map did not say where a flow came from: a SNATed flow is
/// north-south, a flow to a ClusterIP east-west, and any other (a NodePort
/// or an external address, which pods and outside clients both reach) is
/// written to both tables. It did not track replies or the backend's FIN
/// either: a TCP flow is established unless the client sent FIN or RST.
pub fn convert_v2(
    pin_dir: &Path,
    ct: &mut Conntrack,
    is_cluster_ip: impl Fn([u8; 4]) -> bool,
) -> io::Result<usize> {
    let path = pin_dir.join(names::CONNTRACK_V2);
    let Ok(data) = MapData::from_pin(&path) else {
        return Ok(0);
    };
    let info = data.info().map_err(io::Error::other)?;
    if info.key_size() as usize != size_of::<CtKey>()
        || info.value_size() as usize != size_of::<CtValueV2>()
    {
        tracing::warn!(
            map = names::CONNTRACK_V2,
            "the previous conntrack map has an unknown layout; its flows are not kept"
        );
        return Ok(0);
    }
    let fd = data.fd().as_fd().try_clone_to_owned()?;
    let mut old: StdHashMap<CtKey, CtValueV2> = StdHashMap::new();
    batch::for_each::<CtKey, CtValueV2>(&fd, |k, v| {
        old.insert(*k, *v);
    })?;
    let mut flows = 0;
    for (k, v) in &old {
        if k.dir != CT_DIR_ORIGINAL {
            continue;
        }
        let (original, reply) = convert_flow(k, v, old.get(&reply_of_original(k, &upgrade(k, v))));
        let tcp = k.proto == proto::TCP;
        let parts: &[Partition] = if v.flags & V2_F_SNAT != 0 {
            &[Partition::NorthSouth]
        } else if is_cluster_ip(k.daddr_be) {
            &[Partition::EastWest]
        } else {
            &[Partition::EastWest, Partition::NorthSouth]
        };
        let reply_key = reply_of_original(k, &original);
        for part in parts {
            let index = CtTable::of(*part, tcp).map(CT_TIER_ESTABLISHED);
            let Some(m) = ct.v4.maps.iter_mut().find(|m| m.index == index) else {
                continue;
            };
            // BPF_NOEXIST: what the new programs wrote stays.
            let wrote = m.map.insert(k, original, 1).is_ok();
            let _ = m.map.insert(reply_key, reply, 1);
            flows += usize::from(wrote);
        }
    }
    Ok(flows)
}

/// An original-direction entry of the old layout, in this one.
pub(super) fn upgrade(k: &CtKey, v: &CtValueV2) -> CtEntry {
    let tcp = k.proto == proto::TCP;
    let (state, flags) = if !tcp {
        (CT_ESTABLISHED, CT_F_REPLIED)
    } else if v.tcp_flags & V2_TCP_RST != 0 {
        (CT_CLOSED, CT_F_REPLIED | CT_F_RST)
    } else if v.tcp_flags & V2_TCP_FIN != 0 {
        (CT_CLOSING, CT_F_REPLIED | CT_F_FIN_ORIGINAL)
    } else {
        (CT_ESTABLISHED, CT_F_REPLIED)
    };
    CtEntry {
        nat_addr_be: v.nat_addr_be,
        nat_port_be: v.nat_port_be,
        state,
        flags: flags
            | if v.flags & V2_F_SNAT != 0 {
                CT_F_SNAT
            } else {
                0
            },
        service_id: v.service_id,
        backend_id: v.backend_id,
        last_seen_ns: v.last_seen_ns,
        created_ns: v.last_seen_ns,
        snat_addr_be: v.snat_addr_be,
        snat_port_be: v.snat_port_be,
        _pad: [0; 2],
    }
}

/// A flow of the old layout (its original entry, and its reply entry if
/// it was still there) as this layout's two entries.
pub(super) fn convert_flow(
    k: &CtKey,
    v: &CtValueV2,
    old_reply: Option<&CtValueV2>,
) -> (CtEntry, CtEntry) {
    let original = upgrade(k, v);
    let reply = CtEntry {
        nat_addr_be: k.daddr_be,
        nat_port_be: k.dport_be,
        snat_addr_be: if v.flags & V2_F_SNAT != 0 {
            k.saddr_be
        } else {
            [0; 4]
        },
        snat_port_be: if v.flags & V2_F_SNAT != 0 {
            k.sport_be
        } else {
            [0; 2]
        },
        // The reply entry of the old layout held the same frontend; its
        // own times were never refreshed.
        service_id: old_reply.map_or(v.service_id, |r| r.service_id),
        ..original
    };
    (original, reply)
}
