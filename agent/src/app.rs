//! `sluice run`: wiring. Loads the dataplane, feeds it from the manifest
//! directory, attaches it to matching interfaces as they come, and stops on
//! SIGTERM/SIGINT leaving the pinned dataplane serving.

use std::{path::Path, time::Duration};

use anyhow::Context as _;
use notify::{EventKind, RecursiveMode, Watcher as _};
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::mpsc,
};

use crate::{
    config::RunConfig,
    dataplane::{self, Dataplane},
    interfaces::InterfaceMatcher,
    links::{LinkEvent, LinkWatcher},
    source::manifests::ManifestDir,
};

/// Editors and `kubectl cp` write a file in several steps; changes this
/// close together are applied once.
const DEBOUNCE: Duration = Duration::from_millis(10);

pub async fn run(cfg: RunConfig) -> anyhow::Result<()> {
    let RunConfig {
        manifests,
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

    // Watch before the first scan, so that no change falls in between.
    let (tx, mut changes) = mpsc::unbounded_channel();
    let watcher = watch_dir(&manifests, tx)
        .with_context(|| format!("watching manifest directory `{}`", manifests.display()))?;
    let mut dir = ManifestDir::new(&manifests);
    let first = dir.rescan().context("reading the manifests")?;
    for problem in &first.problems {
        tracing::warn!("{problem}");
    }
    sync(&dir, &mut dp);

    let mut links = LinkWatcher::start()?;
    let present = links.list().await?;
    dp.prune_links(&present.iter().map(|(index, _)| *index).collect());
    for (index, name) in present {
        on_link(&mut dp, &interfaces, index, &name);
    }
    tracing::info!(
        manifests = %manifests.display(),
        pin_dir = %dp.pin_dir().display(),
        interfaces = ?dp.attached().collect::<Vec<_>>(),
        "sluice is ready"
    );

    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    loop {
        tokio::select! {
            Some(()) = changes.recv() => {
                tokio::time::sleep(DEBOUNCE).await;
                while changes.try_recv().is_ok() {}
                match dir.rescan() {
                    Ok(scan) => {
                        for problem in &scan.problems {
                            tracing::warn!("{problem}");
                        }
                        if scan.changed {
                            sync(&dir, &mut dp);
                        }
                    }
                    Err(e) => tracing::warn!("{:#}", anyhow::Error::from(e)),
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
    // Drain: stop watching first; the programs and maps stay pinned.
    drop(watcher);
    tracing::info!(pin_dir = %dp.pin_dir().display(), "stopping; the dataplane stays in place");
    Ok(())
}

fn sync(dir: &ManifestDir, dp: &mut Dataplane) {
    let desired = dir.model().desired();
    match dp.sync(&desired) {
        Ok(ops) => tracing::info!(
            frontends = desired.frontends.len(),
            map_ops = ops,
            "manifests applied"
        ),
        Err(e) => tracing::error!("applying the manifests: {:#}", anyhow::Error::from(e)),
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

fn watch_dir(
    dir: &Path,
    tx: mpsc::UnboundedSender<()>,
) -> notify::Result<notify::RecommendedWatcher> {
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        // Our own reads show up as access events: ignore them.
        let relevant = event.map_or(true, |e| !matches!(e.kind, EventKind::Access(_)));
        if relevant {
            // The receiver is gone only when the agent is stopping.
            let _ = tx.send(());
        }
    })?;
    watcher.watch(dir, RecursiveMode::NonRecursive)?;
    Ok(watcher)
}
