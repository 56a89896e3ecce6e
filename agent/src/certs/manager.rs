//! The client certificate's life, as the kubelet's bootstrap and
//! certificate manager run it: bootstrap when there is no valid
//! certificate, then renew at a random point in [70 %, 90 %) of each
//! certificate's lifetime with the current credentials, backing off 2 s
//! doubling to 32 s on failure, never dropping the current certificate
//! before a new one is stored.

use std::{
    path::Path,
    sync::Arc,
    time::{Duration, SystemTime},
};

use rand::Rng as _;
use thiserror::Error;

use super::{
    CertConfig, CertStatus,
    kubeconfig::{self, KubeconfigError},
    request::{self, Kind, Naming, RequestError},
    store::{FileStore, Leaf, StoreError, parse_leaf, write_private},
};
use crate::source::apiserver::{self, ApiSourceError};

/// How long a bootstrap CSR may wait for approval (the kubelet's 3600 s).
const BOOTSTRAP_WAIT: Duration = Duration::from_secs(3600);
/// How long a rotation CSR may wait (client-go's 15 min).
const ROTATION_WAIT: Duration = Duration::from_secs(15 * 60);
const BACKOFF_FIRST: Duration = Duration::from_secs(2);
const BACKOFF_MAX: Duration = Duration::from_secs(32);

#[derive(Debug, Error)]
pub enum CertError {
    #[error(transparent)]
    Request(#[from] RequestError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Kubeconfig(#[from] KubeconfigError),
    #[error("a client for the API server")]
    Client(#[from] ApiSourceError),
    #[error("the signed certificate is unusable: {0}")]
    Issued(String),
    #[error("no kubelet kubeconfig to rotate with, and no bootstrap kubeconfig to write one from")]
    NoKubeconfig,
}

impl CertError {
    const fn is_terminal(&self) -> bool {
        matches!(self, Self::Request(e) if e.is_terminal())
    }
}

/// 2 s, doubling to 32 s.
pub(super) struct Backoff(Duration);

impl Backoff {
    pub(super) const fn new() -> Self {
        Self(BACKOFF_FIRST)
    }

    pub(super) fn next(&mut self) -> Duration {
        let pause = self.0;
        self.0 = (self.0 * 2).min(BACKOFF_MAX);
        pause
    }
}

/// client-go's deadline: `NotBefore + U[0.7, 0.9) × lifetime`.
pub fn rotation_deadline(leaf: &Leaf) -> SystemTime {
    let lifetime = leaf
        .not_after
        .duration_since(leaf.not_before)
        .unwrap_or_default();
    let share = rand::rng().random_range(0.7..0.9);
    leaf.not_before + lifetime.mul_f64(share)
}

/// Runs until a terminal error (a denied or failed bootstrap CSR), which
/// it leaves in `status`.
pub async fn run_client(cfg: Arc<CertConfig>, status: CertStatus) {
    let kind = Kind::Client;
    let store = FileStore::new(&cfg.cert_dir, kind.prefix());
    let mut backoff = Backoff::new();
    loop {
        let Some(pair) = store.usable(SystemTime::now()) else {
            status.set_pending(kind);
            let Some(bootstrap_kubeconfig) = &cfg.bootstrap_kubeconfig else {
                status.set_error(
                    kind,
                    "no valid client certificate (missing, unreadable or expired) and no bootstrap kubeconfig to get one"
                        .into(),
                );
                tokio::time::sleep(BACKOFF_MAX).await;
                continue;
            };
            match bootstrap(&cfg, bootstrap_kubeconfig, &store).await {
                Ok(leaf) => {
                    backoff = Backoff::new();
                    status.set_current(kind, &leaf, false);
                }
                Err(e) if e.is_terminal() => {
                    tracing::error!("bootstrap failed for good: {e}");
                    status.set_error(kind, format!("bootstrap: {e}"));
                    return;
                }
                Err(e) => {
                    let pause = backoff.next();
                    tracing::warn!(retry_in_s = pause.as_secs(), "bootstrap: {e}");
                    status.set_error(kind, format!("bootstrap: {e}"));
                    tokio::time::sleep(pause).await;
                }
            }
            continue;
        };
        status.set_current(kind, &pair.leaf, false);
        if !cfg.kubelet_kubeconfig.exists()
            && let Err(e) = write_kubeconfig(&cfg, &store)
        {
            tracing::error!("{e}");
        }
        let deadline = rotation_deadline(&pair.leaf);
        tracing::info!(
            serial = pair.leaf.serial,
            expires_in_s = secs_until(pair.leaf.not_after),
            rotate_in_s = secs_until(deadline),
            "client certificate in use"
        );
        tokio::time::sleep(until(deadline)).await;
        // Renew; on failure back off, keeping the current certificate
        // until it expires (the outer loop then bootstraps, if it can).
        loop {
            match rotate(&cfg, kind, &[], &store).await {
                Ok(leaf) => {
                    backoff = Backoff::new();
                    status.set_current(kind, &leaf, true);
                    tracing::info!(serial = leaf.serial, "client certificate rotated");
                    break;
                }
                Err(e) => {
                    let pause = backoff.next();
                    tracing::warn!(
                        retry_in_s = pause.as_secs(),
                        "rotating the client certificate: {e}"
                    );
                    status.set_rotation_error(kind, e.to_string());
                    if SystemTime::now() + pause >= pair.leaf.not_after {
                        tokio::time::sleep(until(pair.leaf.not_after)).await;
                        break;
                    }
                    tokio::time::sleep(pause).await;
                }
            }
        }
    }
}

fn until(t: SystemTime) -> Duration {
    t.duration_since(SystemTime::now()).unwrap_or_default()
}

fn secs_until(t: SystemTime) -> u64 {
    until(t).as_secs()
}

/// The bootstrap: a key (kept in `kubelet-client.key.tmp` until done, so
/// that a restart asks with the same key and finds its CSR), a CSR with the
/// bootstrap credentials, the certificate stored, the kubeconfig written.
async fn bootstrap(
    cfg: &CertConfig,
    bootstrap_kubeconfig: &Path,
    store: &FileStore,
) -> Result<Leaf, CertError> {
    let cluster = kubeconfig::cluster_of(bootstrap_kubeconfig)?;
    let tmp_key = cfg.cert_dir.join("kubelet-client.key.tmp");
    let key = load_or_create_key(&tmp_key)?;
    let csr = request::csr_pem(&cfg.node_name, &[], &key)?;
    let name = request::digested_name(&key, &cfg.node_name, Kind::Client);
    tracing::info!(
        bootstrap_kubeconfig = %bootstrap_kubeconfig.display(),
        "no valid client certificate: bootstrapping"
    );
    let client = apiserver::client_from_kubeconfig(bootstrap_kubeconfig).await?;
    let cert = request::request(
        client,
        &csr,
        Kind::Client,
        Naming::Digested(name),
        BOOTSTRAP_WAIT,
    )
    .await?;
    let leaf = parse_leaf(&cert).map_err(CertError::Issued)?;
    store.update(&cert, &key.serialize_pem())?;
    let _ = std::fs::remove_file(&tmp_key);
    kubeconfig::write_kubelet_kubeconfig(&cfg.kubelet_kubeconfig, &cluster, &store.current_path())?;
    tracing::info!(
        serial = leaf.serial,
        kubeconfig = %cfg.kubelet_kubeconfig.display(),
        "bootstrapped: client certificate issued, kubelet kubeconfig written"
    );
    Ok(leaf)
}

/// A new key and CSR, asked with the current client certificate (the
/// kubelet kubeconfig); stored once signed.
pub(super) async fn rotate(
    cfg: &CertConfig,
    kind: Kind,
    sans: &[String],
    store: &FileStore,
) -> Result<Leaf, CertError> {
    if !cfg.kubelet_kubeconfig.exists() {
        return Err(CertError::NoKubeconfig);
    }
    let client = apiserver::client_from_kubeconfig(&cfg.kubelet_kubeconfig).await?;
    let key = request::new_key()?;
    let csr = request::csr_pem(&cfg.node_name, sans, &key)?;
    let cert = request::request(client, &csr, kind, Naming::Generated, ROTATION_WAIT).await?;
    let leaf = parse_leaf(&cert).map_err(CertError::Issued)?;
    store.update(&cert, &key.serialize_pem())?;
    Ok(leaf)
}

fn write_kubeconfig(cfg: &CertConfig, store: &FileStore) -> Result<(), CertError> {
    let Some(bootstrap) = &cfg.bootstrap_kubeconfig else {
        return Err(CertError::NoKubeconfig);
    };
    let cluster = kubeconfig::cluster_of(bootstrap)?;
    kubeconfig::write_kubelet_kubeconfig(&cfg.kubelet_kubeconfig, &cluster, &store.current_path())?;
    Ok(())
}

/// The key in `path`, or a new one written there (0600). A corrupt file is
/// replaced.
fn load_or_create_key(path: &Path) -> Result<rcgen::KeyPair, CertError> {
    if let Ok(text) = std::fs::read_to_string(path) {
        match rcgen::KeyPair::from_pem(&text) {
            Ok(key) => return Ok(key),
            Err(e) => tracing::warn!(path = %path.display(), "unreadable key ({e}); a new one"),
        }
    }
    let key = request::new_key()?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|source| StoreError::Io {
            path: dir.to_owned(),
            source,
        })?;
    }
    write_private(path, &key.serialize_pem())?;
    Ok(key)
}
