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

use futures::TryStreamExt as _;
use k8s_openapi::api::core::v1::Node;
use kube::Api;
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

/// The names the serving certificate should have now.
async fn template(cfg: &CertConfig) -> Vec<String> {
    if let Ok(client) = apiserver::client_from_kubeconfig(&cfg.kubelet_kubeconfig).await {
        match Api::<Node>::all(client).get_opt(&cfg.node_name).await {
            Ok(Some(node)) => return node_sans(&node),
            Ok(None) => {}
            Err(e) => tracing::debug!("reading this node's Node object: {e}"),
        }
    }
    host_sans().await
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
    loop {
        // Asked for with the client certificate: none yet, nothing to do.
        if !cfg.kubelet_kubeconfig.exists() {
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        }
        let mut names = template(&cfg).await;
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
                let now_names = template(&cfg).await;
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
