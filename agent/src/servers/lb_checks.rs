//! `healthCheckNodePort`s: for each Service with `externalTrafficPolicy:
//! Local`, an HTTP port on the node that external load balancers probe, as
//! kube-proxy serves it: 200 while this node has a ready endpoint of the
//! Service, 503 otherwise, with the count in a JSON body. A Service the
//! maps cannot hold (`plan::capacity`) answers 503 with
//! `serviceProxyHealthy: false`, so that load balancers drain the node.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{Ipv4Addr, SocketAddr},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
};

use hyper::StatusCode;

use crate::{
    model::{ObjectKey, store::Store},
    plan::capacity::Admission,
    servers::{serve_plain, text},
};

/// One Service's open health check port.
struct Listening {
    port: u16,
    local: Arc<AtomicUsize>,
    /// Whether the maps hold the Service.
    programmed: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Listening {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The health check ports of the Services that ask for one.
#[derive(Default)]
pub struct HealthChecks {
    ports: BTreeMap<ObjectKey, Listening>,
}

impl HealthChecks {
    /// Follows the Services in `changed`: opens, moves, updates or closes
    /// their ports. `node` is this node's name (no name: no local endpoint).
    pub async fn update(
        &mut self,
        store: &Store,
        admission: &Admission,
        changed: &BTreeSet<ObjectKey>,
        node: Option<&str>,
    ) {
        for key in changed {
            let want = store.service(key).and_then(|s| s.health_check_node_port);
            let Some(port) = want else {
                if self.ports.remove(key).is_some() {
                    tracing::info!(service = %key, "health check port closed");
                }
                continue;
            };
            let local = local_endpoints(store, key, node);
            let programmed = admission.admitted(key);
            if let Some(open) = self.ports.get(key).filter(|p| p.port == port) {
                open.local.store(local, Ordering::Relaxed);
                open.programmed.store(programmed, Ordering::Relaxed);
                continue;
            }
            self.ports.remove(key);
            let addr = SocketAddr::from((Ipv4Addr::UNSPECIFIED, port));
            let listener = match tokio::net::TcpListener::bind(addr).await {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!(service = %key, port, "cannot open the health check port: {e}");
                    continue;
                }
            };
            let count = Arc::new(AtomicUsize::new(local));
            let healthy = Arc::new(AtomicBool::new(programmed));
            let answer = {
                let (count, healthy) = (count.clone(), healthy.clone());
                let (namespace, name) = (key.namespace.clone(), key.name.clone());
                move |_: &str| {
                    let local = count.load(Ordering::Relaxed);
                    let programmed = healthy.load(Ordering::Relaxed);
                    let body = serde_json::json!({
                        "service": {"namespace": namespace, "name": name},
                        "localEndpoints": local,
                        "serviceProxyHealthy": programmed,
                    })
                    .to_string();
                    let status = if local > 0 && programmed {
                        StatusCode::OK
                    } else {
                        StatusCode::SERVICE_UNAVAILABLE
                    };
                    text(status, body)
                }
            };
            tracing::info!(service = %key, port, local, "health check port open");
            self.ports.insert(
                key.clone(),
                Listening {
                    port,
                    local: count,
                    programmed: healthy,
                    task: tokio::spawn(serve_plain(listener, answer)),
                },
            );
        }
    }
}

/// Ready endpoints of Service `key` on node `node` (each address once).
fn local_endpoints(store: &Store, key: &ObjectKey, node: Option<&str>) -> usize {
    let Some(node) = node else { return 0 };
    store
        .slices_of(key)
        .iter()
        .flat_map(|s| &s.endpoints)
        .filter(|ep| ep.ready && ep.node_name.as_deref() == Some(node))
        .filter_map(|ep| ep.addresses.first())
        .collect::<BTreeSet<_>>()
        .len()
}
