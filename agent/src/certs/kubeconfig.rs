//! The kubeconfigs of certificate management: the bootstrap kubeconfig
//! (read; a token user), and the kubelet kubeconfig that the agent writes
//! once it has a client certificate, as the kubelet writes it:
//! `default-cluster`, `default-auth` (the `kubelet-client-current.pem`
//! symlink as certificate and key) and `default-context`.

use std::path::{Path, PathBuf};

use kube::config::Kubeconfig;
use thiserror::Error;

use super::store::{StoreError, write_private};

#[derive(Debug, Error)]
pub enum KubeconfigError {
    // kube's error names the file and the YAML problem, never a token.
    #[error("kubeconfig {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: kube::config::KubeconfigError,
    },
    #[error("kubeconfig {}: no cluster for its current context", path.display())]
    NoCluster { path: PathBuf },
    #[error("writing the kubelet kubeconfig")]
    Write(#[source] StoreError),
}

/// Where the API server is and how to trust it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterInfo {
    pub server: String,
    pub ca_data: Option<String>,
    pub ca_file: Option<String>,
    pub insecure: bool,
}

/// The cluster of `path`'s current context (or its only cluster).
pub fn cluster_of(path: &Path) -> Result<ClusterInfo, KubeconfigError> {
    let config = Kubeconfig::read_from(path).map_err(|source| KubeconfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    let wanted = config.current_context.as_ref().and_then(|current| {
        config
            .contexts
            .iter()
            .find(|c| &c.name == current)
            .and_then(|c| c.context.as_ref())
            .map(|c| c.cluster.clone())
    });
    let named = match wanted {
        Some(name) => config.clusters.iter().find(|c| c.name == name),
        None if config.clusters.len() == 1 => config.clusters.first(),
        None => None,
    };
    let cluster = named
        .and_then(|c| c.cluster.as_ref())
        .filter(|c| c.server.is_some())
        .ok_or_else(|| KubeconfigError::NoCluster {
            path: path.to_owned(),
        })?;
    // A relative CA path is relative to the kubeconfig, as kubectl reads it.
    let ca_file = cluster.certificate_authority.as_ref().map(|ca| {
        let p = Path::new(ca);
        if p.is_absolute() {
            ca.clone()
        } else {
            path.parent()
                .unwrap_or_else(|| Path::new("."))
                .join(p)
                .display()
                .to_string()
        }
    });
    Ok(ClusterInfo {
        server: cluster.server.clone().unwrap_or_default(),
        ca_data: cluster.certificate_authority_data.clone(),
        ca_file,
        insecure: cluster.insecure_skip_tls_verify.unwrap_or(false),
    })
}

impl ClusterInfo {
    /// The CA bundle (PEM) the kubeconfig trusts, if it names one.
    pub fn ca_pem(&self) -> Option<Vec<u8>> {
        use base64::Engine as _;
        if let Some(data) = &self.ca_data {
            return base64::engine::general_purpose::STANDARD
                .decode(data.trim())
                .ok();
        }
        std::fs::read(self.ca_file.as_ref()?).ok()
    }
}

/// Writes the kubelet kubeconfig (0600, atomically): `cluster`, and the
/// client certificate and key at `cert` (the `-current.pem` symlink).
pub fn write_kubelet_kubeconfig(
    path: &Path,
    cluster: &ClusterInfo,
    cert: &Path,
) -> Result<(), KubeconfigError> {
    let mut named_cluster = serde_json::json!({ "server": cluster.server });
    if let Some(data) = &cluster.ca_data {
        named_cluster["certificate-authority-data"] = data.clone().into();
    }
    if let Some(file) = &cluster.ca_file {
        named_cluster["certificate-authority"] = file.clone().into();
    }
    if cluster.insecure {
        named_cluster["insecure-skip-tls-verify"] = true.into();
    }
    let cert = cert.display().to_string();
    let doc = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{ "name": "default-cluster", "cluster": named_cluster }],
        "users": [{ "name": "default-auth", "user": {
            "client-certificate": cert,
            "client-key": cert,
        }}],
        "contexts": [{ "name": "default-context", "context": {
            "cluster": "default-cluster",
            "user": "default-auth",
            "namespace": "default",
        }}],
        "current-context": "default-context",
        "preferences": {},
    });
    let text = serde_yaml::to_string(&doc).unwrap_or_default();
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|source| {
            KubeconfigError::Write(StoreError::Io {
                path: dir.to_owned(),
                source,
            })
        })?;
    }
    write_private(path, &text).map_err(KubeconfigError::Write)
}
