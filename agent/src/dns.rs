//! Node-local cluster DNS: the agent answers `<svc>.<ns>.svc.<zone>` and
//! friends from the same model as the dataplane, on an address local to the
//! node (no NAT, no conntrack), and forwards other names upstream.
//!
//! The servers run on a runtime of their own, so that a long dataplane sync
//! on the agent's runtime never delays an answer.

pub mod access;
pub mod address;
pub mod publish;

use std::{
    collections::BTreeSet,
    net::{IpAddr, SocketAddr},
    path::Path,
    sync::Arc,
};

use hickory_proto::rr::Name;
pub use sluice_dns::{forward, metrics, respond, server, zone};
use thiserror::Error;

use crate::model::{ObjectKey, store::Store};

/// The DNS part of `sluice run`'s configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DnsConfig {
    /// The addresses served: the node-local one, and optionally kube-dns's
    /// ClusterIP (NodeLocal DNSCache's setup). The first names the server.
    pub ips: Vec<IpAddr>,
    pub cluster_domain: String,
    pub ttl: u32,
    pub upstreams: Vec<SocketAddr>,
    /// Sources answered; `None`: the node and its pods (`access`).
    pub allow: Option<sluice_dns::clients::AccessList>,
    pub forwards_per_client: u32,
    pub tcp_per_client: u32,
    /// The forward cache's and the memos' bytes, half each.
    pub cache_bytes: usize,
    /// `(zone, upstreams)`: names in the zone go there (`--forward-zone`).
    pub forward_zones: Vec<(String, Vec<SocketAddr>)>,
    pub protocol: forward::Protocol,
    /// What pod names answer.
    pub pods: zone::Pods,
    /// Endpoints without a hostname are named by their pods.
    pub endpoint_pod_names: bool,
}

/// Default of `--dns-cache-bytes`.
pub const DEFAULT_CACHE_BYTES: usize = 32 << 20;

pub const DEFAULT_CLUSTER_DOMAIN: &str = "cluster.local";
/// CoreDNS's default record TTL.
pub const DEFAULT_TTL: u32 = 5;

#[derive(Debug, Error)]
pub enum DnsError {
    #[error("`cluster-domain`: `{0}` is not a domain name")]
    Domain(String),
    #[error(transparent)]
    Address(#[from] address::AddressError),
    #[error("cannot start the DNS runtime")]
    Runtime(#[source] std::io::Error),
    #[error("cannot listen on {addr}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// The running DNS service.
pub struct Dns {
    zone: Arc<zone::ClusterZone>,
    /// Endpoints named by their pods (`--dns-endpoint-pod-names`).
    pod_names: bool,
    metrics: Arc<metrics::Metrics>,
    // Field order is drop order: the listeners, then their runtime.
    servers: Vec<server::Servers>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Dns {
    /// Makes the addresses local, binds UDP and TCP port 53 on each and
    /// serves the sources `cfg.allow` lists, or else the node and the pods
    /// behind `pods`.
    pub async fn start(
        cfg: &DnsConfig,
        pods: &crate::interfaces::InterfaceMatcher,
    ) -> Result<Self, DnsError> {
        let domain = Name::from_ascii(&cfg.cluster_domain)
            .map_err(|_| DnsError::Domain(cfg.cluster_domain.clone()))?;
        let mut placed = Vec::new();
        for ip in &cfg.ips {
            placed.push(address::ensure(*ip).await?);
        }
        let zone = Arc::new(zone::ClusterZone::new(&domain, cfg.ttl).with_pods(cfg.pods));
        let metrics = Arc::new(metrics::Metrics::default());
        let upstreams: Vec<SocketAddr> = cfg
            .upstreams
            .iter()
            .copied()
            .filter(|u| !cfg.ips.contains(&u.ip()))
            .collect();
        if upstreams.len() < cfg.upstreams.len() {
            tracing::warn!("the DNS address itself is not an upstream (that would loop); skipped");
        }
        let clients = Arc::new(sluice_dns::clients::Clients::new(
            cfg.allow.clone().unwrap_or_default(),
            cfg.forwards_per_client,
            cfg.tcp_per_client,
        ));
        let resolver = Arc::new(respond::Resolver {
            zone: Arc::clone(&zone),
            forwarder: forward::Forwarder::with(forward::ForwardConfig {
                upstreams: upstreams.clone(),
                zones: cfg
                    .forward_zones
                    .iter()
                    .filter_map(|(zone, ups)| Some((Name::from_ascii(zone).ok()?, ups.clone())))
                    .collect(),
                protocol: cfg.protocol,
                cache_bytes: cfg.cache_bytes / 2,
            }),
            metrics: Arc::clone(&metrics),
            clients: Arc::clone(&clients),
        });
        let workers = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .thread_name("sluice-dns")
            .enable_all()
            .build()
            .map_err(DnsError::Runtime)?;
        let addrs: Vec<SocketAddr> = cfg.ips.iter().map(|ip| SocketAddr::new(*ip, 53)).collect();
        if let Some(first) = addrs.first() {
            metrics.set_server(*first);
        }
        metrics.set_upstreams(resolver.forwarder.upstreams());
        runtime.spawn(resolver.forwarder.health_checks(Arc::clone(&metrics)));
        if cfg.allow.is_none() {
            // The first list before the first query; then followed.
            clients.set_access(access::node_and_pods(pods).await);
            runtime.spawn(access::follow(pods.clone(), Arc::clone(&clients)));
        }
        let mut servers = Vec::new();
        for addr in &addrs {
            // The memos' bytes are shared by every address's workers.
            let memo_bytes = cfg.cache_bytes / 2 / addrs.len().max(1);
            servers.push(
                server::serve(
                    *addr,
                    workers,
                    Arc::clone(&resolver),
                    runtime.handle(),
                    memo_bytes,
                )
                .map_err(|source| DnsError::Listen {
                    addr: *addr,
                    source,
                })?,
            );
        }
        tracing::info!(
            ?addrs,
            domain = %zone.domain(),
            ttl = cfg.ttl,
            upstreams = ?upstreams,
            forward_zones = ?cfg.forward_zones,
            protocol = ?cfg.protocol,
            on = ?placed,
            allowed = cfg.allow.as_ref().map_or_else(|| "the node and its pods".to_owned(), |a| format!("{a:?}")),
            forwards_per_client = cfg.forwards_per_client,
            tcp_per_client = cfg.tcp_per_client,
            cache_bytes = cfg.cache_bytes,
            "serving DNS"
        );
        Ok(Self {
            zone,
            pod_names: cfg.endpoint_pod_names,
            metrics,
            servers,
            runtime: Some(runtime),
        })
    }

    /// Publishes the current state of the Services in `changed`.
    pub fn update(&self, store: &Store, changed: &BTreeSet<ObjectKey>) {
        for key in changed {
            let published = store
                .service(key)
                .map(|svc| publish::dns_service(svc, &store.slices_of(key), self.pod_names));
            self.zone.set(&key.namespace, &key.name, published);
        }
    }

    /// Publishes the Services in `changed` from `planner`'s store; once
    /// the sources have listed everything, cluster names are answered.
    pub fn follow(&self, planner: &crate::plan::Planner, changed: &BTreeSet<ObjectKey>) {
        self.update(planner.store(), changed);
        if planner.synced() {
            self.set_synced();
        }
    }

    /// The model is complete: cluster names are answered from now on.
    pub fn set_synced(&self) {
        self.zone.set_synced();
    }

    pub fn metrics(&self) -> Arc<metrics::Metrics> {
        Arc::clone(&self.metrics)
    }
}

impl Drop for Dns {
    fn drop(&mut self) {
        self.servers.clear();
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// The nameservers of a resolv.conf, as upstreams (port 53).
pub fn upstreams_from_resolv_conf(path: &Path) -> std::io::Result<Vec<SocketAddr>> {
    let text = std::fs::read_to_string(path)?;
    Ok(text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|rest| rest.split_whitespace().next())
        // A zone index (fe80::1%eth0) is not kept.
        .filter_map(|ip| ip.split('%').next()?.parse::<IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, 53))
        .collect())
}

/// `IP` or `IP:port` (`[v6]:port`); port 53 by default.
pub fn parse_upstream(s: &str) -> Option<SocketAddr> {
    s.parse::<SocketAddr>()
        .ok()
        .or_else(|| s.parse::<IpAddr>().ok().map(|ip| SocketAddr::new(ip, 53)))
}
