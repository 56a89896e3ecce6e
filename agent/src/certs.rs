//! Kubelet credentials: TLS bootstrapping (a bootstrap token, a CSR, the
//! approved certificate and a kubeconfig) and rotation, with the kubelet's
//! files, names and timings.

pub mod kubeconfig;
mod manager;
pub mod request;
pub mod serving;
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
    /// The secure port (HTTPS with the serving certificate).
    pub secure_listen: std::net::SocketAddr,
    /// CA bundle of the client certificates the secure port accepts;
    /// default: the cluster CA of the (bootstrap) kubeconfig.
    pub client_ca_file: Option<PathBuf>,
    /// Requests without credentials are `system:anonymous` (then
    /// authorized), not refused with 401.
    pub anonymous_auth: bool,
    /// The secure port's TLS versions and suites.
    pub tls: crate::servers::kubelet::TlsPolicy,
}

/// The kubelet's port.
pub const DEFAULT_SECURE_LISTEN: std::net::SocketAddr = std::net::SocketAddr::V4(
    std::net::SocketAddrV4::new(std::net::Ipv4Addr::UNSPECIFIED, 10250),
);

impl CertConfig {
    /// The client CA bundle (PEM) and where it came from.
    pub fn client_ca(&self) -> Option<(Vec<u8>, PathBuf)> {
        if let Some(path) = &self.client_ca_file {
            return std::fs::read(path).ok().map(|pem| (pem, path.clone()));
        }
        [
            self.bootstrap_kubeconfig.as_ref(),
            Some(&self.kubelet_kubeconfig),
        ]
        .into_iter()
        .flatten()
        .find_map(|path| {
            let pem = kubeconfig::cluster_of(path).ok()?.ca_pem()?;
            Some((pem, path.clone()))
        })
    }
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

    /// `Err(reason)` when a certificate is unusable: no valid client
    /// certificate and an error (bootstrap failing or denied, expired
    /// without a way back), or a serving certificate that expired and could
    /// not be renewed. A certificate still being obtained for the first
    /// time is not an error.
    pub fn health(&self) -> Result<(), String> {
        let map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let now = SystemTime::now();
        for (kind, state) in map.iter() {
            let valid = state.leaf.as_ref().is_some_and(|l| !l.expired(now));
            let Some(error) = (!valid).then_some(state.error.as_ref()).flatten() else {
                continue;
            };
            // The serving certificate fails health only once one expired
            // unrenewed: waiting for the first one (approval may be
            // manual) is not an error, as with the kubelet.
            if *kind == Kind::Client.label() || state.leaf.is_some() {
                return Err(format!("{kind} certificate: {error}"));
            }
        }
        Ok(())
    }

    /// Each certificate's state, for `/status`.
    pub fn json(&self) -> serde_json::Value {
        let map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let unix = |t: SystemTime| {
            t.duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs()
        };
        map.iter()
            .map(|(kind, state)| {
                let value = serde_json::json!({
                    "serial": state.leaf.as_ref().map(|l| l.serial.clone()),
                    "subject": state.leaf.as_ref().map(|l| l.subject_cn.clone()),
                    "sans": state.leaf.as_ref().map(|l| l.sans.clone()),
                    "notBefore": state.leaf.as_ref().map(|l| unix(l.not_before)),
                    "notAfter": state.leaf.as_ref().map(|l| unix(l.not_after)),
                    "rotations": state.rotations,
                    "error": state.error,
                });
                ((*kind).to_owned(), value)
            })
            .collect::<serde_json::Map<_, _>>()
            .into()
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

/// Starts certificate management: the client certificate, and the serving
/// certificate published to `slot`. Both run until the handles drop.
pub fn spawn(
    cfg: CertConfig,
    status: &CertStatus,
    slot: &serving::ServingSlot,
) -> [tokio::task::JoinHandle<()>; 2] {
    let cfg = Arc::new(cfg);
    tracing::info!(
        node = cfg.node_name,
        cert_dir = %cfg.cert_dir.display(),
        kubeconfig = %cfg.kubelet_kubeconfig.display(),
        "managing the kubelet client and serving certificates"
    );
    [
        tokio::spawn(manager::run_client(Arc::clone(&cfg), status.clone())),
        tokio::spawn(serving::run(cfg, status.clone(), slot.clone())),
    ]
}

#[cfg(test)]
mod tests;
