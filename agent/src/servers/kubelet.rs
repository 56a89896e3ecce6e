//! The node's ports, as the kubelet has them. The secure port
//! (`--secure-listen`, 10250) serves HTTPS with the current serving
//! certificate: a rotated certificate is used for new handshakes at once,
//! and open connections keep theirs. A client must present a certificate
//! of the cluster CA; without one it gets 401. It serves `/healthz`,
//! `/metrics` (dataplane, DNS and certificate expiry) and `/status`
//! (Services, backends and certificates, as JSON).
//!
//! The read-only port (`--read-only-listen`, off by default) serves
//! `/healthz` and `/metrics` over plain HTTP, and nothing that names a
//! Service, an endpoint or a secret.

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

use crate::{
    certs::serving::ServingSlot,
    servers::{
        HEADER_TIMEOUT, accept_bounded, health_port::Health, serve_connection, serve_plain, text,
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

/// The TLS configuration of the secure port.
pub fn tls_config(roots: RootCertStore, slot: ServingSlot) -> Result<ServerConfig, SecureError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&provider))
            // Accept the handshake without a certificate: the request then
            // gets 401, as the kubelet answers it.
            .allow_unauthenticated()
            .build()
            .map_err(|e| SecureError::Tls(e.to_string()))?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
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

/// Serves HTTPS until dropped.
pub async fn serve_secure(listener: TcpListener, tls: Arc<ServerConfig>, health: Health) {
    let acceptor = TlsAcceptor::from(tls);
    accept_bounded(listener, move |tcp, peer, permit| {
        let (acceptor, health) = (acceptor.clone(), health.clone());
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
            let authenticated = stream
                .get_ref()
                .1
                .peer_certificates()
                .is_some_and(|c| !c.is_empty());
            serve_connection(stream, move |path: &str| {
                if authenticated {
                    secure_answer(&health, path)
                } else {
                    text(StatusCode::UNAUTHORIZED, "Unauthorized")
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
