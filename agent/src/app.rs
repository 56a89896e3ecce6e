//! `sluice run`: wiring. Loads the dataplane, feeds it from the Service
//! source (a manifest directory or an API server), attaches it to matching
//! interfaces as they come, reports health, and stops on SIGTERM/SIGINT
//! leaving the pinned dataplane serving.

use std::{sync::Arc, time::Duration};

use anyhow::Context as _;
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::watch,
};

use crate::{
    config::{RunConfig, Source},
    dataplane::{self, Dataplane},
    health::{self, Health},
    interfaces::InterfaceMatcher,
    links::{LinkEvent, LinkWatcher},
    model::{Model, NodeInfo},
    source::{AbortOnDrop, apiserver, manifests},
};

/// Editors and `kubectl cp` write a file in several steps; changes this
/// close together are applied once.
const DEBOUNCE: Duration = Duration::from_millis(10);

pub async fn run(cfg: RunConfig) -> anyhow::Result<()> {
    let RunConfig {
        source,
        node_name,
        health_listen,
        interfaces,
        pin_dir,
        conntrack_size,
        dataplane: config,
    } = cfg;
    let mut dp = Dataplane::load(&dataplane::Options {
        pin_dir,
        conntrack_size,
        config,
    })
    .context("loading the dataplane")?;
    let health = Health::default();
    let listener = health::bind(health_listen)
        .await
        .with_context(|| format!("binding the health port {health_listen}"))?;
    tracing::info!(addr = %health_listen, "serving /healthz and /readyz");
    let _health = AbortOnDrop(tokio::spawn(health.clone().serve(listener)));

    let (models_tx, mut models) = watch::channel::<Option<Arc<Model>>>(None);
    let described = describe(&source);
    let source_task = match source {
        Source::Manifests(dir) => {
            manifests::spawn(&dir, models_tx, DEBOUNCE).context("reading the manifests")?
        }
        Source::Kubeconfig(path) => {
            let client = apiserver::client_from_kubeconfig(&path).await?;
            AbortOnDrop(tokio::spawn(apiserver::run(client, node_name, models_tx)))
        }
        Source::InCluster(dir) => {
            let client = apiserver::client_in_cluster(&dir)?;
            AbortOnDrop(tokio::spawn(apiserver::run(client, node_name, models_tx)))
        }
    };

    let mut links = LinkWatcher::start()?;
    let present = links.list().await?;
    dp.prune_links(&present.iter().map(|(index, _)| *index).collect());
    for (index, name) in present {
        on_link(&mut dp, &interfaces, index, &name);
    }

    let mut node = None;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    loop {
        tokio::select! {
            changed = models.changed() => {
                if changed.is_err() {
                    anyhow::bail!("the Service source stopped");
                }
                let model = models.borrow_and_update().clone();
                if let Some(model) = model {
                    if model.node != node {
                        node.clone_from(&model.node);
                        log_node(node.as_ref());
                    }
                    sync(&model, &mut dp);
                    if !health.is_ready() {
                        health.set_ready();
                        tracing::info!(
                            source = described,
                            pin_dir = %dp.pin_dir().display(),
                            interfaces = ?dp.attached().collect::<Vec<_>>(),
                            "sluice is ready"
                        );
                    }
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

fn sync(model: &Model, dp: &mut Dataplane) {
    let desired = model.desired();
    match dp.sync(&desired) {
        Ok(ops) => tracing::info!(
            frontends = desired.frontends.len(),
            map_ops = ops,
            "Services applied"
        ),
        Err(e) => tracing::error!("applying the Services: {:#}", anyhow::Error::from(e)),
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
