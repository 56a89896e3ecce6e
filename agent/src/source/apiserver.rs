//! The apiserver source: Services and EndpointSlices (and this node's Node)
//! from a Kubernetes API server, through kube-rs watchers.
//!
//! A relist (after a 410 or a reconnect) is gathered whole and then swapped
//! in, so that a Service present before and after never leaves the model,
//! and objects deleted while the agent was away drop out. While the API
//! server is unreachable the last model stays, and the watchers back off
//! exponentially with jitter; an outage is logged once, not per retry.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::Arc,
};

use futures::{FutureExt as _, StreamExt as _, stream::BoxStream};
use k8s_openapi::api::{
    core::v1::{Node, Service},
    discovery::v1::EndpointSlice,
};
use kube::{
    Api, Client,
    runtime::{WatchStreamExt as _, watcher},
};
use thiserror::Error;
use tokio::sync::watch;

use crate::model::{Model, NodeInfo, ObjectKey, ServiceInfo, SliceInfo, translate};

/// Where a Pod finds its ServiceAccount credentials.
pub const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

#[derive(Debug, Error)]
pub enum ApiSourceError {
    #[error("cannot read kubeconfig `{}`", path.display())]
    Kubeconfig {
        path: PathBuf,
        #[source]
        source: kube::config::KubeconfigError,
    },
    #[error("in-cluster configuration: {0}")]
    InCluster(String),
    #[error("cannot build the API client")]
    Client(#[source] kube::Error),
}

/// A client from a kubeconfig file.
pub async fn client_from_kubeconfig(path: &Path) -> Result<Client, ApiSourceError> {
    let err = |source| ApiSourceError::Kubeconfig {
        path: path.to_path_buf(),
        source,
    };
    let kubeconfig = kube::config::Kubeconfig::read_from(path).map_err(err)?;
    let config = kube::Config::from_custom_kubeconfig(
        kubeconfig,
        &kube::config::KubeConfigOptions::default(),
    )
    .await
    .map_err(err)?;
    Client::try_from(config).map_err(ApiSourceError::Client)
}

/// A client from in-cluster configuration: `KUBERNETES_SERVICE_HOST` and
/// `_PORT`, and the ServiceAccount's token, CA and namespace in `dir`. The
/// token file is re-read as kubelet rotates it.
pub fn client_in_cluster(dir: &Path) -> Result<Client, ApiSourceError> {
    let env = |k: &str| {
        std::env::var(k).map_err(|_| ApiSourceError::InCluster(format!("{k} is not set")))
    };
    let (host, port) = (
        env("KUBERNETES_SERVICE_HOST")?,
        env("KUBERNETES_SERVICE_PORT")?,
    );
    let host = if host.contains(':') {
        format!("[{host}]")
    } else {
        host
    };
    let url = format!("https://{host}:{port}")
        .parse()
        .map_err(|e| ApiSourceError::InCluster(format!("bad API server address: {e}")))?;
    let mut config = kube::Config::new(url);
    for file in ["token", "ca.crt"] {
        if !dir.join(file).is_file() {
            return Err(ApiSourceError::InCluster(format!(
                "`{}` is missing",
                dir.join(file).display()
            )));
        }
    }
    config.root_cert_file = Some(dir.join("ca.crt"));
    config.auth_info.token_file = Some(dir.join("token").display().to_string());
    if let Ok(ns) = std::fs::read_to_string(dir.join("namespace")) {
        ns.trim().clone_into(&mut config.default_namespace);
    }
    Client::try_from(config).map_err(ApiSourceError::Client)
}

#[expect(
    clippy::large_enum_variant,
    reason = "each event is moved once, from its stream to `apply`; boxing would allocate per event"
)]
enum Change {
    Service(watcher::Event<Service>),
    Slice(watcher::Event<EndpointSlice>),
    Node(watcher::Event<Node>),
}

/// Objects of one kind, with a relist gathered aside until it is complete.
struct Collection<T> {
    items: BTreeMap<ObjectKey, T>,
    relist: Option<BTreeMap<ObjectKey, T>>,
    synced: bool,
}

impl<T> Default for Collection<T> {
    fn default() -> Self {
        Self {
            items: BTreeMap::new(),
            relist: None,
            synced: false,
        }
    }
}

impl<T: Clone> Collection<T> {
    /// Applies one watcher event; `true` when it completed a relist (a list
    /// after the first, as after a 410 Gone).
    fn apply<K>(
        &mut self,
        event: watcher::Event<K>,
        translate: impl Fn(&K) -> Option<(ObjectKey, T)>,
        key: impl Fn(&K) -> ObjectKey,
    ) -> bool {
        match event {
            watcher::Event::Init => self.relist = Some(BTreeMap::new()),
            watcher::Event::InitApply(obj) => {
                let Some(relist) = self.relist.as_mut() else {
                    return false;
                };
                match translate(&obj) {
                    Some((k, v)) => {
                        relist.insert(k, v);
                    }
                    // Invalid now: its last good state survives the relist.
                    None => {
                        let k = key(&obj);
                        if let Some(old) = self.items.get(&k) {
                            relist.insert(k, old.clone());
                        }
                    }
                }
            }
            watcher::Event::InitDone => {
                if let Some(relist) = self.relist.take() {
                    self.items = relist;
                }
                let relisted = self.synced;
                self.synced = true;
                return relisted;
            }
            watcher::Event::Apply(obj) => {
                if let Some((k, v)) = translate(&obj) {
                    self.items.insert(k, v);
                }
            }
            watcher::Event::Delete(obj) => {
                self.items.remove(&key(&obj));
            }
        }
        false
    }
}

/// What the watchers have seen so far.
#[derive(Default)]
struct State {
    services: Collection<ServiceInfo>,
    slices: Collection<SliceInfo>,
    /// At most one: the watch selects this node by name.
    node: Collection<NodeInfo>,
}

impl State {
    /// The model, once Services and EndpointSlices have both been listed.
    fn model(&self) -> Option<Model> {
        (self.services.synced && self.slices.synced).then(|| Model {
            services: self.services.items.clone(),
            slices: self.slices.items.clone(),
            node: self.node.items.values().next().cloned(),
        })
    }
}

fn meta_key(meta: &kube::api::ObjectMeta) -> ObjectKey {
    ObjectKey {
        namespace: meta.namespace.clone().unwrap_or_default(),
        name: meta.name.clone().unwrap_or_default(),
    }
}

/// Runs the watchers and publishes a whole model after each batch of
/// changes, once both Services and EndpointSlices have been listed.
pub async fn run(
    client: Client,
    node_name: Option<String>,
    models: watch::Sender<Option<Arc<Model>>>,
) {
    let services = watcher(
        Api::<Service>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .map(|e| e.map(Change::Service));
    let slices = watcher(
        Api::<EndpointSlice>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .map(|e| e.map(Change::Slice));
    let mut streams: Vec<BoxStream<'static, Result<Change, watcher::Error>>> =
        vec![services.boxed(), slices.boxed()];
    if let Some(node) = &node_name {
        let config = watcher::Config::default().fields(&format!("metadata.name={node}"));
        streams.push(
            watcher(Api::<Node>::all(client), config)
                .default_backoff()
                .map(|e| e.map(Change::Node))
                .boxed(),
        );
    }
    let mut changes = futures::stream::select_all(streams);

    let mut state = State::default();
    let mut failing = false;
    loop {
        let Some(first) = changes.next().await else {
            return;
        };
        // Take everything already waiting, then publish once.
        let mut batch = vec![first];
        while let Some(Some(more)) = changes.next().now_or_never() {
            batch.push(more);
        }
        for change in batch {
            match change {
                Ok(change) => {
                    if failing {
                        tracing::info!("the API server is reachable again");
                        failing = false;
                    }
                    apply(change, &mut state);
                }
                Err(e) => {
                    if failing {
                        tracing::debug!("API server: {e}");
                    } else {
                        tracing::warn!(
                            "API server: {e}; the dataplane keeps its current state; retrying with backoff"
                        );
                        failing = true;
                    }
                }
            }
        }
        if let Some(model) = state.model()
            && models.borrow().as_deref() != Some(&model)
        {
            models.send_replace(Some(Arc::new(model)));
        }
    }
}

fn apply(change: Change, state: &mut State) {
    match change {
        Change::Service(e) => {
            if state.services.apply(
                e,
                |s| valid(translate::service(s).map(|i| (i.key.clone(), i))),
                |s| meta_key(&s.metadata),
            ) {
                tracing::info!(services = state.services.items.len(), "relisted Services");
            }
        }
        Change::Slice(e) => {
            let translated =
                |s: &EndpointSlice| valid(translate::endpoint_slice(s).map(|i| (i.key.clone(), i)));
            if state.slices.apply(e, translated, |s| meta_key(&s.metadata)) {
                tracing::info!(
                    endpoint_slices = state.slices.items.len(),
                    "relisted EndpointSlices"
                );
            }
        }
        Change::Node(e) => {
            state.node.apply(
                e,
                |n: &Node| Some((meta_key(&n.metadata), translate::node(n))),
                |n: &Node| meta_key(&n.metadata),
            );
        }
    }
}

/// A translated object, or a warning: an invalid object keeps its last
/// good state.
fn valid<T, E: std::fmt::Display>(r: Result<T, E>) -> Option<T> {
    r.map_err(|err| tracing::warn!("{err}; keeping its last good state"))
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str) -> ObjectKey {
        ObjectKey {
            namespace: "default".into(),
            name: name.into(),
        }
    }

    /// Objects are (name, value); a negative value is "invalid".
    fn apply(c: &mut Collection<i32>, e: watcher::Event<(&str, i32)>) -> bool {
        c.apply(e, |(n, v)| (*v >= 0).then(|| (key(n), *v)), |(n, _)| key(n))
    }

    #[test]
    fn a_relist_is_swapped_in_whole_and_drops_what_was_deleted_meanwhile() {
        let mut c = Collection::default();
        assert!(!apply(&mut c, watcher::Event::Init));
        apply(&mut c, watcher::Event::InitApply(("a", 1)));
        apply(&mut c, watcher::Event::InitApply(("b", 2)));
        assert!(
            !c.synced && c.items.is_empty(),
            "nothing is published before the first list completes"
        );
        assert!(
            !apply(&mut c, watcher::Event::InitDone),
            "the first list is not a relist"
        );
        assert_eq!(c.items.len(), 2);

        // A relist: until it completes, every object stays as it was.
        apply(&mut c, watcher::Event::Init);
        assert_eq!(c.items.len(), 2);
        apply(&mut c, watcher::Event::InitApply(("a", 10)));
        assert_eq!(c.items.get(&key("a")), Some(&1));
        assert_eq!(
            c.items.get(&key("b")),
            Some(&2),
            "b keeps its entry while the relist is under way"
        );
        assert!(apply(&mut c, watcher::Event::InitDone));
        // b was deleted while the watch was down.
        assert_eq!(c.items, BTreeMap::from([(key("a"), 10)]));
    }

    #[test]
    fn an_invalid_object_keeps_its_last_good_state_across_updates_and_relists() {
        let mut c = Collection::default();
        apply(&mut c, watcher::Event::Init);
        apply(&mut c, watcher::Event::InitApply(("a", 1)));
        apply(&mut c, watcher::Event::InitDone);
        apply(&mut c, watcher::Event::Apply(("a", -1)));
        assert_eq!(c.items.get(&key("a")), Some(&1));
        apply(&mut c, watcher::Event::Init);
        apply(&mut c, watcher::Event::InitApply(("a", -1)));
        apply(&mut c, watcher::Event::InitApply(("c", -1)));
        apply(&mut c, watcher::Event::InitDone);
        assert_eq!(
            c.items,
            BTreeMap::from([(key("a"), 1)]),
            "a new invalid object is not added"
        );
        apply(&mut c, watcher::Event::Delete(("a", -1)));
        assert!(c.items.is_empty());
    }
}
