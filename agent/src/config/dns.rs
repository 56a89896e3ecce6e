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
    let pods = c.dns_pods.take();
    let pod_names = c.dns_endpoint_pod_names;
    let (forwards, tcp, cache_bytes) = (
        c.dns_max_forwards_per_client,
        c.dns_max_tcp_per_client,
        c.dns_cache_bytes,
    );
    let Some(ips) = c.dns_ip.take() else {
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
            || pods.is_some()
            || pod_names.is_some()
        {
            return Err(ConfigError::DnsWithoutIp);
        }
        return Ok(None);
    };
    let ips = ips
        .items()
        .iter()
        .map(|ip| ip.parse::<std::net::IpAddr>())
        .collect::<Result<Vec<_>, _>>()
        .ok()
        .filter(|ips| {
            let v6 = ips.iter().filter(|ip| ip.is_ipv6()).count();
            (1..=3).contains(&ips.len()) && v6 <= 1 && ips.len() - v6 <= 2
        })
        .ok_or(ConfigError::DnsIp)?;
    let allow = allow
        .map(|items| sluice_dns::clients::AccessList::parse(&items))
        .transpose()
        .map_err(ConfigError::DnsAllow)?;
    let (forwards_per_client, tcp_per_client, cache_bytes) = shares(forwards, tcp, cache_bytes)?;
    let forward_zones = zones
        .unwrap_or_default()
        .iter()
        .map(|z| parse_forward_zone(z))
        .collect::<Result<Vec<_>, _>>()?;
    let (protocol, pods) = protocol_and_pods(prefer_udp, force_tcp, pods.as_deref())?;
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
        ips,
        cluster_domain: domain.unwrap_or_else(|| crate::dns::DEFAULT_CLUSTER_DOMAIN.to_owned()),
        ttl,
        upstreams,
        allow,
        forwards_per_client,
        tcp_per_client,
        cache_bytes,
        forward_zones,
        protocol,
        pods,
        endpoint_pod_names: pod_names.unwrap_or(false),
    }))
}

/// Each client's shares and the caches' bytes.
fn shares(
    forwards: Option<u32>,
    tcp: Option<u32>,
    cache_bytes: Option<u64>,
) -> Result<(u32, u32, usize), ConfigError> {
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
    let cache_bytes = match cache_bytes {
        None => crate::dns::DEFAULT_CACHE_BYTES,
        Some(n) if n >= 1 << 20 => usize::try_from(n).unwrap_or(usize::MAX),
        Some(n) => return Err(ConfigError::DnsCacheBytes(n)),
    };
    Ok((forwards_per_client, tcp_per_client, cache_bytes))
}

/// How queries are forwarded, and what pod names answer.
fn protocol_and_pods(
    prefer_udp: Option<bool>,
    force_tcp: Option<bool>,
    pods: Option<&str>,
) -> Result<(sluice_dns::forward::Protocol, sluice_dns::zone::Pods), ConfigError> {
    let protocol = match (prefer_udp.unwrap_or(false), force_tcp.unwrap_or(false)) {
        (true, true) => return Err(ConfigError::DnsProtocols),
        (true, false) => sluice_dns::forward::Protocol::PreferUdp,
        (false, true) => sluice_dns::forward::Protocol::ForceTcp,
        (false, false) => sluice_dns::forward::Protocol::SameAsClient,
    };
    let pods = match pods {
        None | Some("insecure") => sluice_dns::zone::Pods::Insecure,
        Some("disabled") => sluice_dns::zone::Pods::Disabled,
        Some(other) => return Err(ConfigError::DnsPods(other.to_owned())),
    };
    Ok((protocol, pods))
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
