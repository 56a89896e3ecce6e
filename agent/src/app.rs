//! `sluice run`: wiring. Loads the dataplane, feeds it from the Service
//! source (a manifest directory or an API server), attaches it to matching
//! interfaces as they come, reports health, and stops on SIGTERM/SIGINT
//! leaving the pinned dataplane serving.

use std::time::Duration;

use anyhow::Context as _;
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::mpsc,
    time::{Instant, sleep_until},
};

use crate::{
    certs::{self, CertStatus, serving::ServingSlot},
    config::{RunConfig, ServicesConfig, Source},
    dataplane::Dataplane,
    dns::Dns,
    external::{self, NodeInterfaces, NodePortAddresses},
    interfaces::InterfaceMatcher,
    links::{LinkEvent, LinkWatcher},
    model::NodeInfo,
    plan::{Planner, capacity::Resource},
    servers::{
        self,
        health_port::{
            Health,
            sync::{Capacity, SyncState},
        },
        kubelet, lb_checks,
    },
    source::{AbortOnDrop, Events, apiserver, manifests},
};

/// Editors and `kubectl cp` write a file in several steps; changes this
/// close together are applied once.
const DEBOUNCE: Duration = Duration::from_millis(10);

pub async fn run(cfg: RunConfig) -> anyhow::Result<()> {
    let RunConfig {
        node_name,
        health_listen,
        metrics_per_service,
        services,
        certs,
        read_only_listen,
    } = cfg;
    let health = Health::new(metrics_per_service);
    // Certificates only: the health port first, so that it answers as soon
    // as anything happens.
    let _health = match &services {
        None => Some(serve_health(&health, health_listen).await?),
        Some(_) => None,
    };
    let _certs = match certs {
        Some(c) => Some(start_certs(c, &health).await?),
        None => None,
    };
    let _read_only = match read_only_listen {
        Some(addr) => Some(start_read_only(addr, &health).await?),
        None => None,
    };
    let Some(services) = services else {
        return certificates_only(&health).await;
    };
    run_services(services, node_name, health, health_listen).await
}

/// The Service source, the dataplane and DNS, until SIGTERM or SIGINT.
async fn run_services(
    services: ServicesConfig,
    node_name: Option<String>,
    health: Health,
    health_listen: std::net::SocketAddr,
) -> anyhow::Result<()> {
    let ServicesConfig {
        source,
        interfaces,
        external_interfaces,
        nodeport_range,
        nodeport_addresses,
        snat_ports,
        dataplane: options,
        dns,
    } = services;
    let maglev_size = options.maglev_size;
    health.set_pin_dir(options.pin_dir.clone());
    let mut dp = Dataplane::load(&options).context("loading the dataplane")?;
    let replaced = dp.replaced().iter().map(|r| (r.map, r.entries)).collect();
    health.update_sync(|s| s.set_replaced(replaced));
    health.set_conntrack(dp.conntrack_census());
    let _health = serve_health(&health, health_listen).await?;
    let dns = match &dns {
        Some(cfg) => {
            let dns = Dns::start(cfg, &interfaces).await.context("starting DNS")?;
            health.set_dns_metrics(dns.metrics());
            Some(dns)
        }
        None => None,
    };

    let (events_tx, mut events) = mpsc::unbounded_channel();
    let described = describe(&source);
    let mut planner = Planner::new(node_name.clone());
    planner.set_limits(dp.limits(), maglev_size);
    let local_node = node_name.clone();
    let mut health_checks = lb_checks::HealthChecks::default();
    let source_task = spawn_source(source, node_name, events_tx).await?;

    let (mut links, mut ext) = watch_links(
        &mut dp,
        &interfaces,
        (external_interfaces, nodeport_addresses),
        &health,
    )
    .await?;
    external::reserve_local_ports(nodeport_range, snat_ports);
    // The new programs are in every link now.
    dp.finish_upgrade();

    let mut node = None;
    let mut retry = Retry::default();
    let mut announced = false;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    loop {
        tokio::select! {
            batch = events.recv() => {
                let Some(batch) = batch else {
                    anyhow::bail!("the Service source stopped");
                };
                planner.apply(batch);
                // Everything else already waiting goes into the same sync.
                while let Ok(more) = events.try_recv() {
                    planner.apply(more);
                }
                health.update_sync(SyncState::queued);
                follow_node(&planner, &mut node, &health);
                let applied = sync(&mut planner, &mut dp, &mut retry, &health);
                // After the plan: it says which Services it left out.
                let changed = planner.take_changed();
                health_checks
                    .update(planner.store(), planner.admission(), &changed, local_node.as_deref())
                    .await;
                if let Some(dns) = &dns {
                    dns.follow(&planner, &changed);
                }
                if let Some(applied) = applied {
                    applied.log();
                    if !announced {
                        announced = true;
                        ready(&described, &dp);
                    }
                }
            }
            // A failed write: try again (the plan now covers everything).
            () = sleep_until(retry.at), if retry.pending => {
                if let Some(applied) = sync(&mut planner, &mut dp, &mut retry, &health) {
                    applied.log();
                    if !announced {
                        announced = true;
                        ready(&described, &dp);
                    }
                }
            }
            event = links.next() => {
                let Some(event) = event else {
                    anyhow::bail!("the rtnetlink socket closed");
                };
                on_link_event(&mut dp, &interfaces, &mut ext, event);
            },
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
        }
    }
    // Drain: the source stops first (dropped with this scope), then the
    // health port; the programs and maps stay pinned.
    drop(source_task);
    tracing::info!(pin_dir = %dp.pin_dir().display(), "stopping; the dataplane stays in place");
    Ok(())
}

async fn start_read_only(
    addr: std::net::SocketAddr,
    health: &Health,
) -> anyhow::Result<AbortOnDrop> {
    let listener = kubelet::bind(addr).await?;
    tracing::info!(%addr, "serving the read-only port (/healthz, /metrics)");
    Ok(AbortOnDrop(tokio::spawn(kubelet::serve_read_only(
        listener,
        health.clone(),
    ))))
}

/// Certificate management, and the secure port serving what it gets.
async fn start_certs(cfg: certs::CertConfig, health: &Health) -> anyhow::Result<[AbortOnDrop; 3]> {
    let status = CertStatus::default();
    health.set_certs(status.clone());
    let slot = ServingSlot::default();
    let (ca, from) = cfg.client_ca().context(
        "the secure port needs the cluster CA for client certificates: give `--client-ca-file`",
    )?;
    let roots = kubelet::client_roots(&ca, &from)?;
    let tls = kubelet::tls_config(roots, slot.clone(), &cfg.tls)?;
    let listener = kubelet::bind(cfg.secure_listen).await?;
    tracing::info!(addr = %cfg.secure_listen, anonymous_auth = cfg.anonymous_auth, "serving the secure port (/healthz, /metrics, /status), each request authorized by the API server");
    // Reviews are asked with the node's own credentials, as the kubelet's.
    let reviewer = kubelet::auth::ApiReviewer::new(
        cfg.kubelet_kubeconfig.clone(),
        certs::store::FileStore::new(&cfg.cert_dir, certs::request::Kind::Client.prefix())
            .current_path(),
    );
    let guard = kubelet::auth::Guard::new(
        &cfg.node_name,
        cfg.anonymous_auth,
        std::sync::Arc::new(reviewer),
    );
    let server = AbortOnDrop(tokio::spawn(kubelet::serve_secure(
        listener,
        std::sync::Arc::new(tls),
        health.clone(),
        std::sync::Arc::new(guard),
    )));
    let [client, serving] = certs::spawn(cfg, &status, &slot).map(AbortOnDrop);
    Ok([server, client, serving])
}

/// Only certificate flags: the health port, until SIGTERM or SIGINT.
async fn certificates_only(health: &Health) -> anyhow::Result<()> {
    tracing::info!("no Service source and no interfaces: managing the kubelet certificates only");
    health.set_ready();
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = sigterm.recv() => {}
        _ = sigint.recv() => {}
    }
    Ok(())
}

async fn serve_health(health: &Health, addr: std::net::SocketAddr) -> anyhow::Result<AbortOnDrop> {
    let listener = servers::bind(addr)
        .await
        .with_context(|| format!("binding the health port {addr}"))?;
    tracing::info!(%addr, "serving /healthz, /readyz and /metrics");
    Ok(AbortOnDrop(tokio::spawn(health.clone().serve(listener))))
}

async fn spawn_source(
    source: Source,
    node_name: Option<String>,
    events: Events,
) -> anyhow::Result<AbortOnDrop> {
    Ok(match source {
        Source::Manifests(dir) => {
            manifests::spawn(&dir, events, DEBOUNCE).context("reading the manifests")?
        }
        Source::Kubeconfig(path) => {
            let client = apiserver::client_from_kubeconfig(&path).await?;
            AbortOnDrop(tokio::spawn(apiserver::run(client, node_name, events)))
        }
        Source::InCluster(dir) => {
            let client = apiserver::client_in_cluster(&dir)?;
            AbortOnDrop(tokio::spawn(apiserver::run(client, node_name, events)))
        }
    })
}

fn describe(source: &Source) -> String {
    match source {
        Source::Manifests(dir) => format!("manifests {}", dir.display()),
        Source::Kubeconfig(path) => format!("kubeconfig {}", path.display()),
        Source::InCluster(dir) => format!("in-cluster ({})", dir.display()),
    }
}

/// Logs this node's Node object when it changed, and tells health whether
/// the node is leaving.
fn follow_node(planner: &Planner, node: &mut Option<NodeInfo>, health: &Health) {
    if planner.node() == node.as_ref() {
        return;
    }
    *node = planner.node().cloned();
    log_node(node.as_ref());
    let leaving = node.as_ref().and_then(|n| n.leaving.clone());
    health.update_sync(|s| s.set_leaving(leaving));
}

fn log_node(node: Option<&NodeInfo>) {
    match node {
        Some(n) => {
            let addresses: Vec<String> = n
                .addresses
                .iter()
                .map(|(kind, addr)| format!("{kind}={addr}"))
                .collect();
            tracing::info!(node = n.name, addresses = addresses.join(","), "this node");
        }
        None => tracing::info!("this node's Node object is absent"),
    }
}

fn ready(source: &str, dp: &Dataplane) {
    tracing::info!(
        source,
        pin_dir = %dp.pin_dir().display(),
        interfaces = ?dp.attached().collect::<Vec<_>>(),
        external_interfaces = ?dp.xdp_attached().collect::<Vec<_>>(),
        "sluice is ready"
    );
}

/// An interface or address came, changed or went.
fn on_link_event(
    dp: &mut Dataplane,
    pods: &InterfaceMatcher,
    ext: &mut Externals,
    event: LinkEvent,
) {
    match event {
        LinkEvent::Present { index, name } => {
            ext.ifs.link(index, &name);
            on_link(dp, pods, index, &name, &ext.health);
        }
        LinkEvent::Gone { index, name } => {
            ext.ifs.link_gone(index);
            ext.health
                .update_sync(|s| s.attach_result(index, &name, Ok(())));
            if dp.is_attached(index) {
                tracing::info!(iface = name, "interface removed");
                dp.detach(index);
            }
        }
        LinkEvent::AddressAdded { index, addr } => ext.ifs.add(index, addr),
        LinkEvent::AddressRemoved { index, addr } => ext.ifs.remove(index, addr),
    }
    ext.follow(dp, pods, false);
}

/// Subscribes to rtnetlink, attaches to the interfaces there are (TC on
/// the pod-facing ones, XDP on the external ones) and writes the node's
/// addresses; reserves the NodePort range among local ports.
async fn watch_links(
    dp: &mut Dataplane,
    interfaces: &InterfaceMatcher,
    (external_interfaces, node_ports): (Option<InterfaceMatcher>, NodePortAddresses),
    health: &Health,
) -> anyhow::Result<(LinkWatcher, Externals)> {
    let links = LinkWatcher::start()?;
    let present = links.list().await?;
    dp.prune_links(&present.iter().map(|(index, _)| *index).collect());
    // `primary` among the NodePort addresses: read once, at start.
    let primary = match &node_ports {
        NodePortAddresses::Only { primary: true, .. } => {
            let primary = external::primary_ipv4().await;
            tracing::info!(?primary, "the node's primary address (NodePorts)");
            primary
        }
        _ => None,
    };
    let mut ext = Externals {
        ifs: NodeInterfaces::default(),
        explicit: external_interfaces,
        node_ports,
        primary,
        addrs: None,
        snat: std::collections::BTreeMap::new(),
        health: health.clone(),
    };
    for (index, name) in &present {
        ext.ifs.link(*index, name);
    }
    for (index, addr) in links.addresses().await? {
        ext.ifs.add(index, addr);
    }
    for (index, name) in present {
        on_link(dp, interfaces, index, &name, health);
    }
    ext.follow(dp, interfaces, true);
    Ok((links, ext))
}

/// The node's addresses and external interfaces, kept in the dataplane.
struct Externals {
    ifs: NodeInterfaces,
    /// `--external-interfaces`; `None`: the default.
    explicit: Option<InterfaceMatcher>,
    /// `--nodeport-addresses`, and the node's primary address.
    node_ports: NodePortAddresses,
    primary: Option<std::net::Ipv4Addr>,
    /// The node addresses last written.
    addrs: Option<std::collections::BTreeSet<std::net::IpAddr>>,
    /// The SNAT address of each interface with XDP.
    snat: std::collections::BTreeMap<u32, external::Snat>,
    /// Told of interfaces the programs could not be attached to.
    health: Health,
}

impl Externals {
    /// Writes changed node addresses, attaches XDP to new external
    /// interfaces (or a new SNAT address), detaches it from those no longer
    /// external. `first`: also drop XDP pins left by an earlier run.
    fn follow(&mut self, dp: &mut Dataplane, pods: &InterfaceMatcher, first: bool) {
        let addrs = self.ifs.node_addrs();
        if self.addrs.as_ref() != Some(&addrs) {
            let serves = |a| self.node_ports.serves(a, self.primary);
            match dp.set_node_addrs(&addrs, serves) {
                Ok(()) => {
                    let node_ports: Vec<_> = addrs.iter().filter(|a| serves(**a)).collect();
                    tracing::info!(addresses = ?addrs, ?node_ports, "node addresses (NodePorts)");
                    self.addrs = Some(addrs);
                }
                Err(e) => tracing::error!("{}", e.chain()),
            }
        }
        let want = self.ifs.external(self.explicit.as_ref(), pods);
        let mut gone: std::collections::BTreeSet<u32> = self.snat.keys().copied().collect();
        if first {
            gone.extend(dp.xdp_pinned());
        }
        for (index, (name, snat)) in &want {
            gone.remove(index);
            if self.snat.get(index) == Some(snat) {
                continue;
            }
            let result = dp.attach_xdp(*index, name, *snat).map_err(|e| e.chain());
            match &result {
                Ok(()) => {
                    tracing::info!(iface = name, snat = %snat, "external interface attached (north-south)");
                    self.snat.insert(*index, *snat);
                }
                Err(e) => tracing::error!("{e}"),
            }
            record_attach(&self.health, *index, name, result);
        }
        for index in gone {
            if self.snat.remove(&index).is_some() || first {
                tracing::info!(ifindex = index, "no longer an external interface: detached");
                dp.detach_xdp(index);
            }
        }
    }
}

/// When to try a failed sync again: after 1 s, doubling to 30 s.
struct Retry {
    pending: bool,
    at: Instant,
    pause: Duration,
}

impl Default for Retry {
    fn default() -> Self {
        Self {
            pending: false,
            at: Instant::now(),
            pause: RETRY_FIRST,
        }
    }
}

const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(30);

/// Programs what changed once the sources have listed everything; `Some`
/// when the maps now hold the model (less the Services left out, which
/// `health` reports). A failure is logged here; a success by the caller
/// (`Applied::log`), once everything that follows the plan is updated.
fn sync(
    planner: &mut Planner,
    dp: &mut Dataplane,
    retry: &mut Retry,
    health: &Health,
) -> Option<Applied> {
    let started = std::time::Instant::now();
    let left_out_before = planner.admission().left_out();
    let changes = planner.plan(|| dp.scope())?;
    let result = dp.sync_changes(&changes);
    planner.done(result.is_ok());
    let left_out = planner.admission().left_out();
    let left_out = (left_out != left_out_before).then_some(left_out);
    match result {
        Ok(ops) => {
            *retry = Retry::default();
            let capacity = Capacity::of(planner.admission());
            let triggers = planner.take_triggers();
            let refused = dp.refused_count();
            health.update_sync(|s| {
                s.set_refused(refused);
                s.synced_in(capacity, started.elapsed(), ops);
                s.programmed_changes(&triggers);
            });
            Some(Applied {
                ops,
                took: started.elapsed(),
                frontends: planner.frontends(),
                left_out,
            })
        }
        Err(e) => {
            if let Some(left_out) = left_out {
                log_left_out(&left_out);
            }
            let (map, e) = (e.map(), e.chain());
            tracing::error!(
                retry_in_s = retry.pause.as_secs(),
                "applying the Services: {e}"
            );
            health.update_sync(|s| s.failed(map, e));
            retry.pending = true;
            retry.at = Instant::now() + retry.pause;
            retry.pause = (retry.pause * 2).min(RETRY_MAX);
            None
        }
    }
}

/// A sync written to the maps.
struct Applied {
    ops: usize,
    took: Duration,
    frontends: usize,
    /// The Services left out, when that changed.
    left_out: Option<Vec<(crate::model::ObjectKey, Resource)>>,
}

impl Applied {
    fn log(&self) {
        if let Some(left_out) = &self.left_out {
            log_left_out(left_out);
        }
        tracing::info!(
            frontends = self.frontends,
            map_ops = self.ops,
            took_ms = self.took.as_millis(),
            "Services applied"
        );
    }
}

/// Names the Services the maps cannot hold (or says that all fit again).
fn log_left_out(left_out: &[(crate::model::ObjectKey, Resource)]) {
    if left_out.is_empty() {
        tracing::info!("every Service fits in the maps again");
        return;
    }
    let mut maps: Vec<&str> = left_out.iter().map(|(_, r)| r.map()).collect();
    maps.sort_unstable();
    maps.dedup();
    let names: Vec<String> = left_out.iter().map(|(k, _)| k.to_string()).collect();
    tracing::error!(
        count = left_out.len(),
        full = maps.join(","),
        services = names.join(","),
        "Services left out: they do not fit in the maps (the oldest are kept; raise --max-frontends or --max-backends)"
    );
}

/// An interface exists (new, renamed or changed): attach when its name
/// matches, detach when it no longer does.
fn on_link(
    dp: &mut Dataplane,
    interfaces: &InterfaceMatcher,
    index: u32,
    name: &str,
    health: &Health,
) {
    let attached = dp.is_attached(index);
    if !interfaces.matches(name) {
        if attached {
            tracing::info!(iface = name, "renamed out of the interface list; detaching");
            dp.detach(index);
        }
        health.update_sync(|s| s.attach_result(index, name, Ok(())));
        return;
    }
    let result = dp.attach(index, name).map_err(|e| e.chain());
    match &result {
        Ok(()) if !attached => tracing::info!(iface = name, "attached"),
        Ok(()) => {}
        Err(e) => tracing::error!("{e}"),
    }
    record_attach(health, index, name, result);
}

/// Tells health whether interface `index` has its program: readiness fails
/// while one that should does not.
fn record_attach(health: &Health, index: u32, name: &str, result: Result<(), String>) {
    health.update_sync(|s| s.attach_result(index, name, result));
}
