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
    dataplane::{self, Dataplane},
    dns::Dns,
    health::{self, Health},
    interfaces::InterfaceMatcher,
    links::{LinkEvent, LinkWatcher},
    model::NodeInfo,
    plan::Planner,
    secure,
    source::{AbortOnDrop, Events, apiserver, manifests},
};

/// Editors and `kubectl cp` write a file in several steps; changes this
/// close together are applied once.
const DEBOUNCE: Duration = Duration::from_millis(10);

pub async fn run(cfg: RunConfig) -> anyhow::Result<()> {
    let RunConfig {
        node_name,
        health_listen,
        services,
        certs,
        read_only_listen,
    } = cfg;
    let health = Health::default();
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
        pin_dir,
        conntrack_size,
        socket_lb,
        dataplane: config,
        dns,
    } = services;
    health.set_pin_dir(pin_dir.clone());
    let mut dp = Dataplane::load(&dataplane::Options {
        pin_dir,
        conntrack_size,
        config,
        socket_lb,
    })
    .context("loading the dataplane")?;
    let _health = serve_health(&health, health_listen).await?;
    let dns = match &dns {
        Some(cfg) => {
            let dns = Dns::start(cfg).await.context("starting DNS")?;
            health.set_dns_metrics(dns.metrics());
            Some(dns)
        }
        None => None,
    };

    let (events_tx, mut events) = mpsc::unbounded_channel();
    let described = describe(&source);
    let mut planner = Planner::new(node_name.clone());
    let local_node = node_name.clone();
    let mut health_checks = crate::healthcheck::HealthChecks::default();
    let source_task = spawn_source(source, node_name, events_tx).await?;

    let mut links = LinkWatcher::start()?;
    let present = links.list().await?;
    dp.prune_links(&present.iter().map(|(index, _)| *index).collect());
    for (index, name) in present {
        on_link(&mut dp, &interfaces, index, &name);
    }

    let mut node = None;
    let mut retry = Retry::default();
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
                let changed = planner.take_changed();
                health_checks
                    .update(planner.store(), &changed, local_node.as_deref())
                    .await;
                if let Some(dns) = &dns {
                    dns.update(planner.store(), &changed);
                    if planner.synced() {
                        dns.set_synced();
                    }
                }
                if planner.node() != node.as_ref() {
                    node = planner.node().cloned();
                    log_node(node.as_ref());
                }
                if sync(&mut planner, &mut dp, &mut retry) && !health.is_ready() {
                    ready(&health, &described, &dp);
                }
            }
            // A failed write: try again (the plan now covers everything).
            () = sleep_until(retry.at), if retry.pending => {
                if sync(&mut planner, &mut dp, &mut retry) && !health.is_ready() {
                    ready(&health, &described, &dp);
                }
            }
            event = links.next() => match event {
                Some(LinkEvent::Present { index, name }) => on_link(&mut dp, &interfaces, index, &name),
                Some(LinkEvent::Gone { index, name }) => {
                    if dp.is_attached(index) {
                        tracing::info!(iface = name, "interface removed");
                        dp.detach(index);
                    }
                }
                None => anyhow::bail!("the rtnetlink socket closed"),
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
    let listener = secure::bind(addr).await?;
    tracing::info!(%addr, "serving the read-only port (/healthz, /metrics)");
    Ok(AbortOnDrop(tokio::spawn(secure::serve_read_only(
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
    let roots = secure::client_roots(&ca, &from)?;
    let tls = secure::tls_config(roots, slot.clone())?;
    let listener = secure::bind(cfg.secure_listen).await?;
    tracing::info!(addr = %cfg.secure_listen, "serving the secure port (/healthz, /metrics, /status)");
    let server = AbortOnDrop(tokio::spawn(secure::serve_secure(
        listener,
        std::sync::Arc::new(tls),
        health.clone(),
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
    let listener = health::bind(addr)
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

fn ready(health: &Health, source: &str, dp: &Dataplane) {
    health.set_ready();
    tracing::info!(
        source,
        pin_dir = %dp.pin_dir().display(),
        interfaces = ?dp.attached().collect::<Vec<_>>(),
        "sluice is ready"
    );
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

/// Programs what changed once the sources have listed everything; `true`
/// when the maps now hold the whole model.
fn sync(planner: &mut Planner, dp: &mut Dataplane, retry: &mut Retry) -> bool {
    let started = std::time::Instant::now();
    let Some(changes) = planner.plan(|| dp.scope()) else {
        return false;
    };
    let result = dp.sync_changes(&changes);
    planner.done(result.is_ok());
    match result {
        Ok(ops) => {
            *retry = Retry::default();
            tracing::info!(
                frontends = planner.frontends(),
                map_ops = ops,
                took_ms = started.elapsed().as_millis(),
                "Services applied"
            );
            true
        }
        Err(e) => {
            tracing::error!(
                retry_in_s = retry.pause.as_secs(),
                "applying the Services: {:#}",
                anyhow::Error::from(e)
            );
            retry.pending = true;
            retry.at = Instant::now() + retry.pause;
            retry.pause = (retry.pause * 2).min(RETRY_MAX);
            false
        }
    }
}

/// An interface exists (new, renamed or changed): attach when its name
/// matches, detach when it no longer does.
fn on_link(dp: &mut Dataplane, interfaces: &InterfaceMatcher, index: u32, name: &str) {
    let attached = dp.is_attached(index);
    if !interfaces.matches(name) {
        if attached {
            tracing::info!(iface = name, "renamed out of the interface list; detaching");
            dp.detach(index);
        }
        return;
    }
    match dp.attach(index, name) {
        Ok(()) if !attached => tracing::info!(iface = name, "attached"),
        Ok(()) => {}
        Err(e) => tracing::error!("{:#}", anyhow::Error::from(e)),
    }
}
