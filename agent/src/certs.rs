//! Kubelet credentials: TLS bootstrapping (a bootstrap token, a CSR, the
//! approved certificate and a kubeconfig) and rotation, with the kubelet's
//! files, names and timings.

mod kubeconfig;
mod manager;
pub mod request;
pub mod store;

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    path::PathBuf,
    sync::{Arc, Mutex, PoisonError},
    time::SystemTime,
};

pub use manager::{CertError, rotation_deadline};
use request::Kind;
use store::Leaf;

/// Default of `--kubelet-kubeconfig` (the kubelet's `--kubeconfig`).
pub const DEFAULT_KUBELET_KUBECONFIG: &str = "/var/lib/kubelet/kubeconfig";
/// Default of `--cert-dir`.
pub const DEFAULT_CERT_DIR: &str = "/var/lib/kubelet/pki";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertConfig {
    /// A token user's kubeconfig, for the first certificate.
    pub bootstrap_kubeconfig: Option<PathBuf>,
    /// The kubeconfig the agent writes (and rotates with).
    pub kubelet_kubeconfig: PathBuf,
    pub cert_dir: PathBuf,
    pub node_name: String,
}

/// What each certificate is at, for `/healthz` and `/metrics`.
#[derive(Clone, Default)]
pub struct CertStatus(Arc<Mutex<BTreeMap<&'static str, State>>>);

#[derive(Clone, Debug, Default)]
struct State {
    leaf: Option<Leaf>,
    rotations: u64,
    /// Why there is no usable certificate (or why the last renewal failed).
    error: Option<String>,
}

impl CertStatus {
    fn with(&self, kind: Kind, f: impl FnOnce(&mut State)) {
        let mut map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        f(map.entry(kind.label()).or_default());
    }

    fn set_current(&self, kind: Kind, leaf: &Leaf, rotated: bool) {
        self.with(kind, |s| {
            s.leaf = Some(leaf.clone());
            s.error = None;
            s.rotations += u64::from(rotated);
        });
    }

    fn set_pending(&self, kind: Kind) {
        self.with(kind, |s| s.leaf = None);
    }

    fn set_error(&self, kind: Kind, error: String) {
        self.with(kind, |s| {
            s.leaf = None;
            s.error = Some(error);
        });
    }

    /// A failed renewal: the current certificate stays in use.
    fn set_rotation_error(&self, kind: Kind, error: String) {
        self.with(kind, |s| s.error = Some(error));
    }

    /// `Err(reason)` when a certificate is unusable: no valid certificate
    /// and an error (bootstrap failing or denied, expired without a way
    /// back). A certificate still being obtained for the first time is not
    /// an error.
    pub fn health(&self) -> Result<(), String> {
        let map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let now = SystemTime::now();
        for (kind, state) in map.iter() {
            let valid = state.leaf.as_ref().is_some_and(|l| !l.expired(now));
            if let (false, Some(error)) = (valid, &state.error) {
                return Err(format!("{kind} certificate: {error}"));
            }
        }
        Ok(())
    }

    /// Prometheus text: expiry and rotations per certificate.
    pub fn render(&self) -> String {
        let map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let mut out = String::new();
        if map.is_empty() {
            return out;
        }
        out.push_str("# HELP sluice_certificate_expiration_timestamp_seconds When the certificate in use expires (Unix time).\n");
        out.push_str("# TYPE sluice_certificate_expiration_timestamp_seconds gauge\n");
        for (kind, state) in map.iter() {
            if let Some(leaf) = &state.leaf {
                let at = leaf
                    .not_after
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_secs();
                let _ = writeln!(
                    out,
                    "sluice_certificate_expiration_timestamp_seconds{{kind=\"{kind}\"}} {at}"
                );
            }
        }
        out.push_str(
            "# HELP sluice_certificate_rotations_total Certificates renewed since start.\n",
        );
        out.push_str("# TYPE sluice_certificate_rotations_total counter\n");
        for (kind, state) in map.iter() {
            let _ = writeln!(
                out,
                "sluice_certificate_rotations_total{{kind=\"{kind}\"}} {}",
                state.rotations
            );
        }
        out
    }
}

/// Starts certificate management; it runs until dropped.
pub fn spawn(cfg: CertConfig, status: CertStatus) -> tokio::task::JoinHandle<()> {
    let cfg = Arc::new(cfg);
    tracing::info!(
        node = cfg.node_name,
        cert_dir = %cfg.cert_dir.display(),
        kubeconfig = %cfg.kubelet_kubeconfig.display(),
        "managing the kubelet client certificate"
    );
    tokio::spawn(manager::run_client(cfg, status))
}

#[cfg(test)]
mod tests;
