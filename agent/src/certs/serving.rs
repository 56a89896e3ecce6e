//! The serving certificate (signer `kubernetes.io/kubelet-serving`), as the
//! kubelet's server certificate manager keeps it: its names are the node's
//! addresses and hostname (the Node object's `status.addresses` when there
//! is one, otherwise the host's own addresses and hostname), deduplicated
//! and sorted; a change of names asks for a new certificate at once; and it
//! rotates by the client certificate's rules, asked for with the client
//! certificate. Each certificate in use is published to the secure port.

use std::{
    collections::BTreeSet,
    net::IpAddr,
    sync::{Arc, RwLock},
    time::{Duration, SystemTime},
};

use futures::{StreamExt as _, TryStreamExt as _};
use k8s_openapi::api::core::v1::Node;
use kube::{
    Api,
    runtime::{WatchStreamExt as _, watcher},
};
use rtnetlink::packet_route::address::{AddressAttribute, AddressScope};
use rustls::sign::CertifiedKey;

use super::{
    CertConfig, CertStatus,
    manager::{Backoff, rotate, rotation_deadline},
    request::Kind,
    store::{FileStore, Pair},
};
use crate::source::apiserver;

/// How often the names are looked at again while waiting to rotate.
const TEMPLATE_CHECK: Duration = Duration::from_secs(2);

/// The serving certificate in use, for the TLS server.
#[derive(Clone, Default)]
pub struct ServingSlot(Arc<RwLock<Option<Arc<CertifiedKey>>>>);

impl ServingSlot {
    pub fn get(&self) -> Option<Arc<CertifiedKey>> {
        self.0
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    fn set(&self, key: Arc<CertifiedKey>) {
        *self
            .0
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(key);
    }
}

impl std::fmt::Debug for ServingSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ServingSlot")
    }
}

/// rustls's form of a PEM pair.
pub fn certified_key(pair: &Pair) -> Result<CertifiedKey, String> {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _};
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(pair.cert_pem.as_bytes())
            .collect::<Result<_, _>>()
            .map_err(|e| format!("certificate: {e}"))?;
    let key =
        PrivateKeyDer::from_pem_slice(pair.key_pem.as_bytes()).map_err(|e| format!("key: {e}"))?;
    let signing =
        rustls::crypto::ring::sign::any_supported_type(&key).map_err(|e| format!("key: {e}"))?;
    Ok(CertifiedKey::new(chain, signing))
}

/// client-go's serving template from a Node: `Hostname` (an IP SAN if it
/// parses as one), `InternalIP`/`ExternalIP` (IP SANs), `InternalDNS`/
/// `ExternalDNS` (DNS SANs). Sorted, without duplicates.
pub fn node_sans(node: &Node) -> Vec<String> {
    let mut out = BTreeSet::new();
    for address in node
        .status
        .as_ref()
        .and_then(|s| s.addresses.as_ref())
        .into_iter()
        .flatten()
    {
        match address.type_.as_str() {
            "Hostname" | "InternalIP" | "ExternalIP" | "InternalDNS" | "ExternalDNS" => {
                out.insert(address.address.clone());
            }
            _ => {}
        }
    }
    out.into_iter().collect()
}

/// The host's global addresses (rtnetlink) and hostname, sorted.
pub async fn host_sans() -> Vec<String> {
    let mut out = BTreeSet::new();
    if let Ok(name) = nix::unistd::gethostname()
        && let Some(name) = name.to_str()
        && !name.is_empty()
    {
        out.insert(name.to_owned());
    }
    if let Ok((conn, handle, _)) = rtnetlink::new_connection() {
        let conn = tokio::spawn(conn);
        let mut addresses = handle.address().get().execute();
        while let Ok(Some(msg)) = addresses.try_next().await {
            if msg.header.scope != AddressScope::Universe {
                continue;
            }
            for attr in &msg.attributes {
                if let AddressAttribute::Address(ip) = attr
                    && usable(*ip)
                {
                    out.insert(ip.to_string());
                }
            }
        }
        conn.abort();
    }
    out.into_iter().collect()
}

fn usable(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => !(v4.is_loopback() || v4.is_link_local() || v4.is_unspecified()),
        IpAddr::V6(v6) => !(v6.is_loopback() || v6.is_unspecified() || v6.is_unicast_link_local()),
    }
}

/// What the API server says of this node's names.
#[derive(Clone, Debug, PartialEq, Eq)]
enum NodeNames {
    /// Not listed yet.
    Unknown,
    /// No Node object, or no access to it: the host's names stand.
    Absent,
    Names(Vec<String>),
}

/// An error before any list: the host's names stand until it answers.
fn unreachable(names: &tokio::sync::watch::Sender<NodeNames>) {
    names.send_if_modified(|n| {
        let first = *n == NodeNames::Unknown;
        if first {
            *n = NodeNames::Absent;
        }
        first
    });
}

/// Watches this node's Node object with the kubelet credentials, as the
/// kubelet's informer does (one watch, not a request per check), and
/// starts again with new credentials when the client certificate rotates.
async fn watch_node(cfg: Arc<CertConfig>, names: tokio::sync::watch::Sender<NodeNames>) {
    let client_cert = FileStore::new(&cfg.cert_dir, Kind::Client.prefix()).current_path();
    let credentials = || std::fs::read_link(&client_cert).ok();
    loop {
        let using = credentials();
        let client = match apiserver::client_from_kubeconfig(&cfg.kubelet_kubeconfig).await {
            Ok(client) => client,
            Err(e) => {
                tracing::debug!("watching this node's Node object: {e}");
                unreachable(&names);
                tokio::time::sleep(TEMPLATE_CHECK).await;
                continue;
            }
        };
        let config = watcher::Config::default().fields(&format!("metadata.name={}", cfg.node_name));
        let mut events = watcher(Api::<Node>::all(client), config)
            .default_backoff()
            .boxed();
        let mut listing: Option<Vec<String>> = None;
        loop {
            tokio::select! {
                event = events.next() => match event {
                    Some(Ok(watcher::Event::Init)) => listing = None,
                    Some(Ok(watcher::Event::InitApply(node))) => listing = Some(node_sans(&node)),
                    Some(Ok(watcher::Event::InitDone)) => {
                        let _ = names.send(listing.take().map_or(NodeNames::Absent, NodeNames::Names));
                    }
                    Some(Ok(watcher::Event::Apply(node))) => {
                        let _ = names.send(NodeNames::Names(node_sans(&node)));
                    }
                    Some(Ok(watcher::Event::Delete(_))) => {
                        let _ = names.send(NodeNames::Absent);
                    }
                    Some(Err(e)) => {
                        tracing::debug!("watching this node's Node object: {e}");
                        unreachable(&names);
                    }
                    None => break,
                },
                () = tokio::time::sleep(TEMPLATE_CHECK) => {
                    if credentials() != using {
                        break;
                    }
                }
            }
        }
    }
}

/// The names the serving certificate should have now: the Node's, or the
/// host's. `None` while the Node object has not been listed yet.
async fn template(node: &tokio::sync::watch::Receiver<NodeNames>) -> Option<Vec<String>> {
    let known = node.borrow().clone();
    match known {
        NodeNames::Unknown => None,
        NodeNames::Absent => Some(host_sans().await),
        NodeNames::Names(names) => Some(names),
    }
}

/// Whether `leaf` carries every name of `template` (extra names are fine).
fn covers(sans: &[String], template: &[String]) -> bool {
    template.iter().all(|t| sans.contains(t))
}

/// Runs for the agent's life.
pub async fn run(cfg: Arc<CertConfig>, status: CertStatus, slot: ServingSlot) {
    let kind = Kind::Serving;
    let store = FileStore::new(&cfg.cert_dir, kind.prefix());
    let mut backoff = Backoff::new();
    let mut waiting_logged = false;
    // Asked for with the client certificate: none yet, nothing to do.
    while !cfg.kubelet_kubeconfig.exists() {
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let (tx, mut node) = tokio::sync::watch::channel(NodeNames::Unknown);
    let _watch = crate::source::AbortOnDrop(tokio::spawn(watch_node(Arc::clone(&cfg), tx)));
    loop {
        let Some(mut names) = template(&node).await else {
            // Until the first list (or an error) says.
            let _ = node.changed().await;
            continue;
        };
        if !names.iter().any(|n| n.parse::<IpAddr>().is_ok()) {
            if !waiting_logged {
                tracing::info!(
                    ?names,
                    "no IP address for the serving certificate yet; waiting"
                );
                waiting_logged = true;
            }
            tokio::time::sleep(TEMPLATE_CHECK).await;
            continue;
        }
        waiting_logged = false;
        let now = SystemTime::now();
        if let Some(pair) = store.usable(now)
            && covers(&pair.leaf.sans, &names)
        {
            publish(&slot, &status, &pair, false);
            let deadline = rotation_deadline(&pair.leaf);
            tracing::info!(
                serial = pair.leaf.serial,
                sans = ?pair.leaf.sans,
                rotate_in_s = deadline.duration_since(now).unwrap_or_default().as_secs(),
                "serving certificate in use"
            );
            // Until the deadline, unless the names change first.
            while SystemTime::now() < deadline {
                let left = deadline
                    .duration_since(SystemTime::now())
                    .unwrap_or_default();
                tokio::time::sleep(left.min(TEMPLATE_CHECK)).await;
                let now_names = template(&node).await.unwrap_or_default();
                if !covers(&pair.leaf.sans, &now_names) {
                    tracing::info!(
                        names = ?now_names,
                        "the node's names changed: a new serving certificate"
                    );
                    names = now_names;
                    break;
                }
            }
        }
        match rotate(&cfg, kind, &names, &store).await {
            Ok(_) => {
                backoff = Backoff::new();
                if let Ok(Some(pair)) = store.current() {
                    publish(&slot, &status, &pair, true);
                    tracing::info!(serial = pair.leaf.serial, sans = ?pair.leaf.sans, "serving certificate issued");
                }
            }
            Err(e) => {
                let pause = backoff.next();
                tracing::warn!(
                    retry_in_s = pause.as_secs(),
                    "obtaining a serving certificate: {e}"
                );
                status.set_rotation_error(kind, e.to_string());
                tokio::time::sleep(pause).await;
            }
        }
    }
}

fn publish(slot: &ServingSlot, status: &CertStatus, pair: &Pair, rotated: bool) {
    match certified_key(pair) {
        Ok(key) => {
            slot.set(Arc::new(key));
            status.set_current(Kind::Serving, &pair.leaf, rotated);
        }
        Err(e) => tracing::error!("the serving certificate cannot be served: {e}"),
    }
}
