//! The DNS settings: the address, zone, upstreams and forward zones, the
//! forwarding protocol, who is answered and each client's share, and the
//! caches' bytes.

use std::path::Path;

use super::{ConfigError, RESOLV_CONF};
use crate::{
    dns::DnsConfig,
    settings::{ListValue, Settings},
};

pub(super) fn dns_config(c: &mut Settings) -> Result<Option<DnsConfig>, ConfigError> {
    let (domain, ttl, upstream) = (
        c.cluster_domain.take(),
        c.dns_ttl,
        c.upstream.take().map(ListValue::items),
    );
    let allow = c.dns_allow_cidrs.take().map(ListValue::items);
    let zones = c.forward_zone.take();
    let (prefer_udp, force_tcp) = (c.dns_prefer_udp, c.dns_force_tcp);
    let (forwards, tcp, cache_bytes) = (
        c.dns_max_forwards_per_client,
        c.dns_max_tcp_per_client,
        c.dns_cache_bytes,
    );
    let Some(ip) = c.dns_ip else {
        if domain.is_some()
            || ttl.is_some()
            || upstream.is_some()
            || allow.is_some()
            || forwards.is_some()
            || tcp.is_some()
            || cache_bytes.is_some()
            || zones.is_some()
            || prefer_udp.is_some()
            || force_tcp.is_some()
        {
            return Err(ConfigError::DnsWithoutIp);
        }
        return Ok(None);
    };
    let allow = allow
        .map(|items| sluice_dns::clients::AccessList::parse(&items))
        .transpose()
        .map_err(ConfigError::DnsAllow)?;
    let per_client = |v: Option<u32>, default: u32, what: &'static str| match v {
        Some(0) => Err(ConfigError::DnsShare(what)),
        Some(n) => Ok(n),
        None => Ok(default),
    };
    let forwards_per_client = per_client(
        forwards,
        sluice_dns::clients::DEFAULT_FORWARDS_PER_CLIENT,
        "dns-max-forwards-per-client",
    )?;
    let tcp_per_client = per_client(
        tcp,
        sluice_dns::clients::DEFAULT_TCP_PER_CLIENT,
        "dns-max-tcp-per-client",
    )?;
    let forward_zones = zones
        .unwrap_or_default()
        .iter()
        .map(|z| parse_forward_zone(z))
        .collect::<Result<Vec<_>, _>>()?;
    let protocol = match (prefer_udp.unwrap_or(false), force_tcp.unwrap_or(false)) {
        (true, true) => return Err(ConfigError::DnsProtocols),
        (true, false) => sluice_dns::forward::Protocol::PreferUdp,
        (false, true) => sluice_dns::forward::Protocol::ForceTcp,
        (false, false) => sluice_dns::forward::Protocol::SameAsClient,
    };
    let cache_bytes = match cache_bytes {
        None => crate::dns::DEFAULT_CACHE_BYTES,
        Some(n) if n >= 1 << 20 => usize::try_from(n).unwrap_or(usize::MAX),
        Some(n) => return Err(ConfigError::DnsCacheBytes(n)),
    };
    let ttl = ttl.unwrap_or(crate::dns::DEFAULT_TTL);
    if ttl > 3600 {
        return Err(ConfigError::DnsTtl);
    }
    let upstreams = match upstream {
        Some(list) => list
            .iter()
            .map(|u| crate::dns::parse_upstream(u).ok_or_else(|| ConfigError::Upstream(u.clone())))
            .collect::<Result<Vec<_>, _>>()?,
        None => {
            crate::dns::upstreams_from_resolv_conf(Path::new(RESOLV_CONF)).map_err(|source| {
                ConfigError::ResolvConf {
                    path: RESOLV_CONF.into(),
                    source,
                }
            })?
        }
    };
    Ok(Some(DnsConfig {
        ip,
        cluster_domain: domain.unwrap_or_else(|| crate::dns::DEFAULT_CLUSTER_DOMAIN.to_owned()),
        ttl,
        upstreams,
        allow,
        forwards_per_client,
        tcp_per_client,
        cache_bytes,
        forward_zones,
        protocol,
    }))
}

/// `ZONE=IP[:PORT][,IP[:PORT]…]`.
fn parse_forward_zone(s: &str) -> Result<(String, Vec<std::net::SocketAddr>), ConfigError> {
    let bad = || ConfigError::ForwardZone(s.to_owned());
    let (zone, list) = s.split_once('=').ok_or_else(bad)?;
    let zone = zone.trim().trim_end_matches('.');
    if zone.is_empty() || hickory_proto::rr::Name::from_ascii(zone).is_err() {
        return Err(bad());
    }
    let upstreams = list
        .split(',')
        .map(|u| crate::dns::parse_upstream(u.trim()).ok_or_else(bad))
        .collect::<Result<Vec<_>, _>>()?;
    if upstreams.is_empty() {
        return Err(bad());
    }
    Ok((format!("{zone}."), upstreams))
}
