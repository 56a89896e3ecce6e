//! The node's ports, as the kubelet has them. The secure port
//! (`--secure-listen`, 10250) serves HTTPS with the current serving
//! certificate: a rotated certificate is used for new handshakes at once,
//! and open connections keep theirs. Each request is authenticated (a
//! client certificate of the cluster CA, or a bearer token) and authorized
//! by the API server as the kubelet's are (`auth`). It serves `/healthz`,
//! `/metrics` (dataplane, DNS and certificate expiry) and `/status`
//! (Services, backends and certificates, as JSON). `--tls-min-version` and
//! `--tls-cipher-suites` narrow its TLS, as the kubelet's flags do.
//!
//! The read-only port (`--read-only-listen`, off by default) serves
//! `/healthz` and `/metrics` over plain HTTP, and nothing that names a
//! Service, an endpoint or a secret.

pub mod auth;

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Response, StatusCode, header};
use rustls::{
    RootCertStore, ServerConfig,
    pki_types::{CertificateDer, pem::PemObject as _},
    server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier},
    sign::CertifiedKey,
};
use thiserror::Error;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use self::auth::{Decision, Guard, User};
use crate::{
    certs::serving::ServingSlot,
    servers::{
        HEADER_TIMEOUT, accept_bounded, health_port::Health, serve_plain, serve_requests, text,
    },
};

#[derive(Debug, Error)]
pub enum SecureError {
    #[error("the client CA `{}`", path.display())]
    ClientCa {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the client CA `{}` holds no usable certificate", path.display())]
    NoClientCa { path: PathBuf },
    #[error("TLS configuration: {0}")]
    Tls(String),
    #[error("binding {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Hands rustls whatever serving certificate is current, per handshake.
#[derive(Debug)]
struct Current(ServingSlot);

impl ResolvesServerCert for Current {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        // None: "no serving certificate available" (a TLS alert).
        self.0.get()
    }
}

/// The CA bundle whose certificates clients must present.
pub fn client_roots(pem: &[u8], path: &Path) -> Result<RootCertStore, SecureError> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pem).flatten() {
        let _ = roots.add(cert);
    }
    if roots.is_empty() {
        return Err(SecureError::NoClientCa {
            path: path.to_owned(),
        });
    }
    Ok(roots)
}

/// The TLS the secure port offers: `--tls-min-version` and
/// `--tls-cipher-suites`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsPolicy {
    /// TLS 1.3 only (`VersionTLS13`); else 1.2 and 1.3.
    pub tls13_only: bool,
    /// The TLS 1.2 suites offered, by IANA name; empty: rustls's defaults.
    /// As with Go's `crypto/tls`, which the kubelet uses, the TLS 1.3
    /// suites are always offered; naming them is allowed.
    pub cipher_suites: Vec<String>,
}

/// The suites the TLS library can offer, with their IANA names (rustls
/// writes TLS 1.3's as `TLS13_…`, IANA and Go as `TLS_…`).
fn offered_suites() -> Vec<(String, rustls::SupportedCipherSuite)> {
    rustls::crypto::ring::default_provider()
        .cipher_suites
        .into_iter()
        .map(|s| {
            let name = format!("{:?}", s.suite()).replacen("TLS13_", "TLS_", 1);
            (name, s)
        })
        .collect()
}

impl TlsPolicy {
    /// From the flags' values: `VersionTLS12` or `VersionTLS13`, and IANA
    /// suite names.
    pub fn new(min_version: Option<&str>, cipher_suites: Vec<String>) -> Result<Self, String> {
        let tls13_only = match min_version {
            None | Some("VersionTLS12") => false,
            Some("VersionTLS13") => true,
            Some(v @ ("VersionTLS10" | "VersionTLS11")) => {
                return Err(format!(
                    "{v} is not offered: the secure port speaks TLS 1.2 and 1.3 only"
                ));
            }
            Some(v) => {
                return Err(format!(
                    "unknown TLS version `{v}`: VersionTLS12 or VersionTLS13"
                ));
            }
        };
        let offered = offered_suites();
        for name in &cipher_suites {
            if !offered.iter().any(|(n, _)| n == name) {
                let names: Vec<&str> = offered.iter().map(|(n, _)| n.as_str()).collect();
                return Err(format!(
                    "cipher suite `{name}` is not offered; these are: {}",
                    names.join(", ")
                ));
            }
        }
        Ok(Self {
            tls13_only,
            cipher_suites,
        })
    }

    fn provider(&self) -> rustls::crypto::CryptoProvider {
        let mut provider = rustls::crypto::ring::default_provider();
        if !self.cipher_suites.is_empty() {
            provider.cipher_suites = offered_suites()
                .into_iter()
                .filter(|(name, s)| s.tls13().is_some() || self.cipher_suites.contains(name))
                .map(|(_, s)| s)
                .collect();
        }
        provider
    }

    fn versions(&self) -> &'static [&'static rustls::SupportedProtocolVersion] {
        static TLS13_ONLY: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13];
        if self.tls13_only {
            TLS13_ONLY
        } else {
            rustls::DEFAULT_VERSIONS
        }
    }
}

/// The TLS configuration of the secure port.
pub fn tls_config(
    roots: RootCertStore,
    slot: ServingSlot,
    policy: &TlsPolicy,
) -> Result<ServerConfig, SecureError> {
    let provider = Arc::new(policy.provider());
    let verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&provider))
            // Accept the handshake without a certificate: the request is
            // then authenticated by its bearer token, or anonymous.
            .allow_unauthenticated()
            .build()
            .map_err(|e| SecureError::Tls(e.to_string()))?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(policy.versions())
        .map_err(|e| SecureError::Tls(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(Arc::new(Current(slot)));
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    // No session resumption: a resumed session skips the certificate, so
    // every new connection gets a full handshake and the current one.
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok(config)
}

pub async fn bind(addr: SocketAddr) -> Result<TcpListener, SecureError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| SecureError::Bind { addr, source })
}

/// The secure port's answer to an authenticated request.
fn secure_answer(health: &Health, path: &str) -> Response<Full<Bytes>> {
    match path {
        // The kubelet's `/healthz`: "ok" while the agent (and its
        // certificates) are healthy.
        "/healthz" => health.answer("/livez"),
        "/metrics" => health.answer(path),
        "/status" => {
            let body = serde_json::json!({
                "dataplane": health.snapshot(),
                "certificates": health.certs().map(crate::certs::CertStatus::json),
            });
            let mut resp = text(StatusCode::OK, body.to_string());
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("application/json"),
            );
            resp
        }
        _ => text(StatusCode::NOT_FOUND, "not found"),
    }
}

/// Serves HTTPS until dropped, each request decided by `guard`.
pub async fn serve_secure(
    listener: TcpListener,
    tls: Arc<ServerConfig>,
    health: Health,
    guard: Arc<Guard>,
) {
    let acceptor = TlsAcceptor::from(tls);
    accept_bounded(listener, move |tcp, peer, permit| {
        let (acceptor, health, guard) = (acceptor.clone(), health.clone(), Arc::clone(&guard));
        async move {
            let handshake = tokio::time::timeout(HEADER_TIMEOUT, acceptor.accept(tcp)).await;
            let stream = match handshake {
                Ok(Ok(stream)) => stream,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, "secure port handshake: {e}");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "secure port handshake: timed out");
                    return;
                }
            };
            // A certificate that chains to the cluster CA (rustls checked
            // it), or none at all.
            let certificate = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .and_then(|c| User::of_certificate(c));
            serve_requests(stream, move |parts: hyper::http::request::Parts| {
                let (health, guard, certificate) =
                    (health.clone(), Arc::clone(&guard), certificate.clone());
                async move {
                    let path = parts.uri.path();
                    let authorization = parts
                        .headers
                        .get(header::AUTHORIZATION)
                        .and_then(|v| v.to_str().ok());
                    let decision = guard
                        .decide(&parts.method, path, certificate, authorization)
                        .await;
                    match decision.refusal(guard.node()) {
                        None => secure_answer(&health, path),
                        Some((status, body)) => {
                            if let Decision::Failed(e) = &decision {
                                tracing::warn!(%peer, path, "secure port: {e}");
                            } else {
                                tracing::debug!(%peer, path, %status, "secure port: {body}");
                            }
                            text(status, body)
                        }
                    }
                }
            })
            .await;
            drop(permit);
        }
    })
    .await;
}

/// Serves the read-only port (plain HTTP) until dropped.
pub async fn serve_read_only(listener: TcpListener, health: Health) {
    serve_plain(listener, move |path: &str| match path {
        "/healthz" => health.answer("/livez"),
        "/metrics" => text(StatusCode::OK, health.public_metrics()),
        _ => text(StatusCode::NOT_FOUND, "not found"),
    })
    .await;
}
