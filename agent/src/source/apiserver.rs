//! The apiserver source: Services and EndpointSlices (and this node's Node)
//! from a Kubernetes API server, through kube-rs watchers.
//!
//! Watch events go to the store as they are: a relist (after a 410 or a
//! reconnect) is a list there, swapped in whole when complete (see
//! `model::store`). While the API server is unreachable nothing is sent, so
//! the dataplane keeps its state, and the watchers back off exponentially
//! with jitter; an outage is logged once, not per retry.

use std::path::{Path, PathBuf};

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

use super::Events;
use crate::model::{
    ObjectKey,
    store::{Event, SourceEvent},
    translate,
};

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

/// Runs the watchers and sends their events, a batch at a time: whatever
/// is waiting when the first event of a batch arrives.
pub async fn run(client: Client, node_name: Option<String>, events: Events) {
    let services = watcher(
        Api::<Service>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .map(|e| e.map(service_event));
    let slices = watcher(
        Api::<EndpointSlice>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .map(|e| e.map(slice_event));
    let mut streams: Vec<BoxStream<'static, Result<SourceEvent, watcher::Error>>> =
        vec![services.boxed(), slices.boxed()];
    if let Some(node) = &node_name {
        let config = watcher::Config::default().fields(&format!("metadata.name={node}"));
        streams.push(
            watcher(Api::<Node>::all(client), config)
                .default_backoff()
                .map(|e| e.map(node_event))
                .boxed(),
        );
    }
    let mut changes = futures::stream::select_all(streams);
    let mut failing = false;
    loop {
        let Some(first) = changes.next().await else {
            return;
        };
        let mut batch = Vec::new();
        let mut next = Some(first);
        while let Some(item) = next {
            match item {
                Ok(event) => {
                    if failing {
                        tracing::info!("the API server is reachable again");
                        failing = false;
                    }
                    batch.push(event);
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
            next = changes.next().now_or_never().flatten();
        }
        if !batch.is_empty() && events.send(batch).is_err() {
            // The agent is stopping.
            return;
        }
    }
}

/// A watcher event as a store event, with `translate` for the objects and
/// `key` for those that do not translate.
fn convert<K, T>(
    event: watcher::Event<K>,
    translate: impl Fn(&K) -> Option<T>,
    key: impl Fn(&K) -> ObjectKey,
) -> Event<T> {
    match event {
        watcher::Event::Init => Event::List,
        watcher::Event::InitApply(obj) => Event::Listed(key(&obj), translate(&obj)),
        watcher::Event::InitDone => Event::ListDone,
        watcher::Event::Apply(obj) => Event::Applied(key(&obj), translate(&obj)),
        watcher::Event::Delete(obj) => Event::Deleted(key(&obj)),
    }
}

fn service_event(e: watcher::Event<Service>) -> SourceEvent {
    SourceEvent::Service(convert(
        e,
        |s| valid(translate::service(s)),
        |s| meta_key(&s.metadata),
    ))
}

fn slice_event(e: watcher::Event<EndpointSlice>) -> SourceEvent {
    SourceEvent::Slice(convert(
        e,
        |s| valid(translate::endpoint_slice(s)),
        |s| meta_key(&s.metadata),
    ))
}

fn node_event(e: watcher::Event<Node>) -> SourceEvent {
    SourceEvent::Node(convert(
        e,
        |n| Some(translate::node(n)),
        |n| meta_key(&n.metadata),
    ))
}

fn meta_key(meta: &kube::api::ObjectMeta) -> ObjectKey {
    ObjectKey {
        namespace: meta.namespace.clone().unwrap_or_default(),
        name: meta.name.clone().unwrap_or_default(),
    }
}

/// A translated object, or a warning: an invalid object keeps its last
/// good state.
fn valid<T, E: std::fmt::Display>(r: Result<T, E>) -> Option<T> {
    r.map_err(|err| tracing::warn!("{err}; keeping its last good state"))
        .ok()
}
