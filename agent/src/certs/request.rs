//! CertificateSigningRequests as the kubelet makes them: the key, the
//! PKCS#10 request, the CSR object (a deterministic `node-csr-<digest>`
//! name when bootstrapping, so that a restarted agent finds its own again;
//! `csr-<random>` when rotating), and the wait, by watch, for the signed
//! certificate.

use std::time::Duration;

use base64::Engine as _;
use k8s_openapi::api::certificates::v1::{
    CertificateSigningRequest, CertificateSigningRequestSpec,
};
use kube::{
    Api, Client,
    api::{ObjectMeta, PostParams},
    runtime::wait::await_condition,
};
use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, SanType};
use sha2::{Digest as _, Sha512_256};
use thiserror::Error;

/// What a certificate is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// The kubelet's client certificate (to the API server).
    Client,
    /// The kubelet's serving certificate (its secure port).
    Serving,
}

impl Kind {
    pub const fn signer(self) -> &'static str {
        match self {
            Self::Client => "kubernetes.io/kube-apiserver-client-kubelet",
            Self::Serving => "kubernetes.io/kubelet-serving",
        }
    }

    /// client-go's usages for an ECDSA key.
    pub const fn usages(self) -> [&'static str; 2] {
        match self {
            Self::Client => ["digital signature", "client auth"],
            Self::Serving => ["digital signature", "server auth"],
        }
    }

    /// The file-store prefix under the cert directory.
    pub const fn prefix(self) -> &'static str {
        match self {
            Self::Client => "kubelet-client",
            Self::Serving => "kubelet-server",
        }
    }

    pub const fn label(self) -> &'static str {
        match self {
            Self::Client => "client",
            Self::Serving => "serving",
        }
    }
}

#[derive(Debug, Error)]
pub enum RequestError {
    #[error("building the certificate request: {0}")]
    Build(String),
    #[error("the API server refused the CSR: {0}")]
    Api(#[source] kube::Error),
    #[error("CSR {name} exists but is not ours (another key or signer): delete it to retry")]
    Incompatible { name: String },
    #[error("CSR {name} was denied: {message}")]
    Denied { name: String, message: String },
    #[error("CSR {name} failed: {message}")]
    Failed { name: String, message: String },
    #[error("CSR {name} was deleted while waiting for it")]
    Deleted { name: String },
    #[error("CSR {name} was not approved and signed within {} s", .timeout.as_secs())]
    Timeout { name: String, timeout: Duration },
    #[error("watching CSR {name}: {source}")]
    Watch {
        name: String,
        #[source]
        source: kube::runtime::wait::Error,
    },
}

impl RequestError {
    /// Denied or Failed: asking again the same way cannot succeed.
    pub const fn is_terminal(&self) -> bool {
        matches!(
            self,
            Self::Denied { .. } | Self::Failed { .. } | Self::Incompatible { .. }
        )
    }
}

/// A new ECDSA P-256 key.
pub fn new_key() -> Result<KeyPair, RequestError> {
    KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(|e| RequestError::Build(e.to_string()))
}

/// The PKCS#10 request (PEM): CN `system:node:<node>`, O `system:nodes`,
/// and `sans` (IP addresses and DNS names) for a serving certificate.
pub fn csr_pem(node: &str, sans: &[String], key: &KeyPair) -> Result<String, RequestError> {
    let build = |e: rcgen::Error| RequestError::Build(e.to_string());
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "system:nodes");
    dn.push(DnType::CommonName, format!("system:node:{node}"));
    params.distinguished_name = dn;
    params.subject_alt_names = sans
        .iter()
        .map(|s| match s.parse::<std::net::IpAddr>() {
            Ok(ip) => Ok(SanType::IpAddress(ip)),
            Err(_) => s.clone().try_into().map(SanType::DnsName).map_err(build),
        })
        .collect::<Result<_, _>>()?;
    params
        .serialize_request(key)
        .map_err(build)?
        .pem()
        .map_err(build)
}

/// kubelet's `digestedName`: the same key, subject and usages always give
/// the same CSR name, so that a restarted bootstrap finds its CSR again.
pub fn digested_name(key: &KeyPair, node: &str, kind: Kind) -> String {
    let mut hash = Sha512_256::new();
    let mut field = |name: &str, value: &[u8]| {
        hash.update(name.as_bytes());
        hash.update(u64::try_from(value.len()).unwrap_or(0).to_be_bytes());
        hash.update(value);
    };
    field("PublicKey", rcgen::PublicKeyData::der_bytes(key));
    field("CommonName", format!("system:node:{node}").as_bytes());
    field("Organization", b"system:nodes");
    for usage in kind.usages() {
        field("Usage", usage.as_bytes());
    }
    let digest = hash.finalize();
    format!(
        "node-csr-{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest)
    )
}

/// How the CSR is named.
pub enum Naming {
    /// `node-csr-<digest>`; an existing CSR of that name with our key is
    /// ours (a restarted bootstrap).
    Digested(String),
    /// `csr-<random>`, chosen by the API server.
    Generated,
}

/// Creates the CSR (or finds ours again) and waits, by watch, until it is
/// approved and signed, denied or failed, or `timeout` passes. Returns the
/// certificate chain (PEM).
pub async fn request(
    client: Client,
    csr_pem: &str,
    kind: Kind,
    naming: Naming,
    timeout: Duration,
) -> Result<String, RequestError> {
    let api: Api<CertificateSigningRequest> = Api::all(client);
    let spec = CertificateSigningRequestSpec {
        request: k8s_openapi::ByteString(csr_pem.as_bytes().to_vec()),
        signer_name: kind.signer().to_owned(),
        usages: Some(kind.usages().iter().map(|u| (*u).to_owned()).collect()),
        ..CertificateSigningRequestSpec::default()
    };
    let metadata = match &naming {
        Naming::Digested(name) => ObjectMeta {
            name: Some(name.clone()),
            ..ObjectMeta::default()
        },
        Naming::Generated => ObjectMeta {
            generate_name: Some("csr-".into()),
            ..ObjectMeta::default()
        },
    };
    let csr = CertificateSigningRequest {
        metadata,
        spec: spec.clone(),
        status: None,
    };
    let created = match api.create(&PostParams::default(), &csr).await {
        Ok(created) => created,
        Err(kube::Error::Api(status)) if status.is_already_exists() => {
            let Naming::Digested(name) = &naming else {
                return Err(RequestError::Api(kube::Error::Api(status)));
            };
            let existing = api.get(name).await.map_err(RequestError::Api)?;
            if existing.spec.request != spec.request
                || existing.spec.signer_name != spec.signer_name
            {
                return Err(RequestError::Incompatible { name: name.clone() });
            }
            tracing::info!(csr = name, "found this node's CSR from before a restart");
            existing
        }
        Err(e) => return Err(RequestError::Api(e)),
    };
    let name = created.metadata.name.clone().unwrap_or_default();
    let uid = created.metadata.uid.clone();
    tracing::info!(
        csr = name,
        signer = kind.signer(),
        "CSR created; waiting for approval and signing"
    );
    let done = |obj: Option<&CertificateSigningRequest>| match obj {
        None => true,
        Some(csr) => outcome(csr).is_some() || csr.metadata.uid != uid,
    };
    let waited = tokio::time::timeout(timeout, await_condition(api, &name, done)).await;
    let csr = match waited {
        Err(_) => {
            return Err(RequestError::Timeout { name, timeout });
        }
        Ok(Err(source)) => return Err(RequestError::Watch { name, source }),
        Ok(Ok(csr)) => csr,
    };
    match csr {
        Some(csr) if csr.metadata.uid == uid => match outcome(&csr) {
            Some(Ok(cert)) => Ok(cert),
            Some(Err((true, message))) => Err(RequestError::Denied { name, message }),
            Some(Err((false, message))) => Err(RequestError::Failed { name, message }),
            None => Err(RequestError::Deleted { name }),
        },
        _ => Err(RequestError::Deleted { name }),
    }
}

/// `Some(Ok(certificate))` once approved and signed; `Some(Err((denied,
/// message)))` once denied or failed; `None` while pending.
fn outcome(csr: &CertificateSigningRequest) -> Option<Result<String, (bool, String)>> {
    let status = csr.status.as_ref()?;
    let conditions = status.conditions.as_deref().unwrap_or_default();
    let has = |t: &str| {
        conditions
            .iter()
            .find(|c| c.type_ == t && c.status == "True")
            .map(|c| {
                format!(
                    "{} {}",
                    c.reason.as_deref().unwrap_or_default(),
                    c.message.as_deref().unwrap_or_default()
                )
                .trim()
                .to_owned()
            })
    };
    if let Some(message) = has("Denied") {
        return Some(Err((true, message)));
    }
    if let Some(message) = has("Failed") {
        return Some(Err((false, message)));
    }
    let cert = status.certificate.as_ref()?;
    if has("Approved").is_none() || cert.0.is_empty() {
        return None;
    }
    Some(Ok(String::from_utf8_lossy(&cert.0).into_owned()))
}
