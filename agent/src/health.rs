//! The health port (`--health-listen`, like kube-proxy's 10256): `/livez`
//! while the agent runs; `/healthz` and `/readyz` as the control loop
//! stands (`sync`); `/metrics`.

pub mod sync;

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{Arc, Mutex, OnceLock},
};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{
    Request, Response, StatusCode, body::Incoming, server::conn::http1, service::service_fn,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{
    net::TcpListener,
    sync::{OwnedSemaphorePermit, Semaphore},
    time::Duration,
};

use crate::{certs::CertStatus, dns::metrics::Metrics};

#[derive(Clone, Default)]
pub struct Health {
    sync: Arc<Mutex<sync::SyncState>>,
    dns: Arc<OnceLock<Arc<Metrics>>>,
    certs: Arc<OnceLock<CertStatus>>,
    pin_dir: Arc<OnceLock<std::path::PathBuf>>,
    conntrack: Arc<OnceLock<crate::dataplane::conntrack::Latest>>,
    /// Series per Service frontend (`--metrics-per-service`).
    per_service: bool,
}

impl Health {
    /// `per_service`: `/metrics` has series per Service frontend.
    pub fn new(per_service: bool) -> Self {
        Self {
            per_service,
            ..Self::default()
        }
    }

    /// Changes the control loop's state.
    pub fn update_sync<T>(&self, f: impl FnOnce(&mut sync::SyncState) -> T) -> T {
        let mut state = self
            .sync
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&mut state)
    }

    /// Ready with nothing to program (certificates only).
    pub fn set_ready(&self) {
        self.update_sync(|s| s.synced(sync::Capacity::default()));
    }

    /// `/metrics` shows these (once DNS runs).
    pub fn set_dns_metrics(&self, metrics: Arc<Metrics>) {
        let _ = self.dns.set(metrics);
    }

    /// `/healthz` fails while a certificate is unusable; `/metrics` shows
    /// their expiry.
    pub fn set_certs(&self, certs: CertStatus) {
        let _ = self.certs.set(certs);
    }

    /// `/metrics` shows the dataplane's counters from these pins.
    pub fn set_pin_dir(&self, pin_dir: std::path::PathBuf) {
        let _ = self.pin_dir.set(pin_dir);
    }

    /// `/metrics` shows conntrack from the collector's latest census
    /// rather than reading the maps on each scrape.
    pub fn set_conntrack(&self, latest: crate::dataplane::conntrack::Latest) {
        let _ = self.conntrack.set(latest);
    }

    /// The certificate state, when certificates are managed.
    pub fn certs(&self) -> Option<&CertStatus> {
        self.certs.get()
    }

    /// The dataplane's state from the pins, when there is a dataplane.
    pub fn snapshot(&self) -> Option<crate::status::Snapshot> {
        let pin_dir = self.pin_dir.get()?;
        let conntrack = self.conntrack.get().map(|latest| {
            latest
                .lock()
                .ok()
                .and_then(|c| c.clone())
                .unwrap_or_default()
        });
        crate::status::collect(pin_dir, conntrack)
            .map_err(|e| tracing::debug!("reading the pinned maps: {e}"))
            .ok()
    }

    /// Prometheus text: dataplane, DNS and certificates; per Service only
    /// with `--metrics-per-service`.
    pub fn metrics(&self) -> String {
        self.metrics_with(self.per_service)
    }

    /// `metrics` without the series that name Services (for the read-only
    /// port, which authenticates no one).
    pub fn public_metrics(&self) -> String {
        self.metrics_with(false)
    }

    /// Node-level series read from fixed-size arrays and from what the
    /// agent keeps (no map is walked); with `services`, also the series
    /// per Service frontend, which walk the Service maps.
    fn metrics_with(&self, services: bool) -> String {
        let mut text = String::new();
        if let Some(pin_dir) = self.pin_dir.get() {
            if services && let Some(snap) = self.snapshot() {
                text.push_str(&crate::status::service_metrics(&snap));
            }
            let counters = crate::status::Counters::from_pins(pin_dir)
                .map_err(|e| tracing::debug!("reading the dataplane's counters: {e}"))
                .unwrap_or_default();
            let conntrack = self
                .conntrack
                .get()
                .and_then(|latest| latest.lock().ok().and_then(|c| c.clone()))
                .unwrap_or_default();
            let (refused, sync) = self.update_sync(|s| (s.refused(), s.render()));
            text.push_str(&crate::status::node_metrics(&counters, refused, &conntrack));
            text.push_str(&sync);
        }
        if let Some(dns) = self.dns.get() {
            text.push_str(&dns.render());
        }
        if let Some(certs) = self.certs.get() {
            text.push_str(&certs.render());
        }
        text
    }

    /// The answer to `path` (`/healthz`, `/livez`, `/readyz`, `/metrics`).
    pub fn answer(&self, path: &str) -> Response<Full<Bytes>> {
        if path == "/metrics" {
            return text(StatusCode::OK, self.metrics());
        }
        if matches!(path, "/healthz" | "/livez")
            && let Some(Err(reason)) = self.certs.get().map(CertStatus::health)
        {
            return text(StatusCode::INTERNAL_SERVER_ERROR, reason);
        }
        let (status, body) = match path {
            "/livez" => return text(StatusCode::OK, "ok"),
            "/healthz" => self.update_sync(|s| s.healthz()),
            "/readyz" => self.update_sync(|s| s.readyz()),
            _ => return text(StatusCode::NOT_FOUND, "not found"),
        };
        json(status, body)
    }

    /// Serves until the task is dropped.
    pub async fn serve(self, listener: TcpListener) {
        serve_plain(listener, move |path| self.answer(path)).await;
    }
}

/// A response of `status` with `body` as text.
pub fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(body.into()));
    *resp.status_mut() = status;
    resp
}

/// A response of `status` with `body` as JSON.
pub fn json(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut resp = text(status, body);
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    resp
}

/// The answer to a request's path.
pub trait Answer: Fn(&str) -> Response<Full<Bytes>> + Clone + Send + Sync + 'static {}
impl<F: Fn(&str) -> Response<Full<Bytes>> + Clone + Send + Sync + 'static> Answer for F {}

/// How long a client may take to send a request's headers, the first or
/// the next on a kept-alive connection (an idle connection is closed
/// then), and a TLS handshake.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections served at once per listener; more wait in the accept queue.
pub const MAX_CONNECTIONS: usize = 256;
/// The pause after a failed accept (out of file descriptors, say), so the
/// loop backs off instead of spinning.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);

/// HTTP/1 on one connection (plain or TLS), each request answered by
/// `answer` from its path, until the client closes, or sends no complete
/// headers within `HEADER_TIMEOUT`.
pub async fn serve_connection<IO>(io: IO, answer: impl Answer)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |req: Request<Incoming>| {
        let resp = answer(req.uri().path());
        async move { Ok::<_, Infallible>(resp) }
    });
    let _ = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .serve_connection(TokioIo::new(io), service)
        .await;
}

/// Accepts connections on `listener` until the task is dropped, at most
/// `MAX_CONNECTIONS` served at once, each by `serve` (given the permit to
/// drop when done).
pub async fn accept_bounded<F, Fut>(listener: TcpListener, serve: F)
where
    F: Fn(tokio::net::TcpStream, SocketAddr, OwnedSemaphorePermit) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        match listener.accept().await {
            Ok((tcp, peer)) => {
                tokio::spawn(serve(tcp, peer, permit));
            }
            Err(e) => {
                tracing::debug!("accept: {e}");
                tokio::time::sleep(ACCEPT_PAUSE).await;
            }
        }
    }
}

/// Plain HTTP on `listener`, until the task is dropped.
pub async fn serve_plain(listener: TcpListener, answer: impl Answer) {
    accept_bounded(listener, move |tcp, _, permit| {
        let answer = answer.clone();
        async move {
            serve_connection(tcp, answer).await;
            drop(permit);
        }
    })
    .await;
}

pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}
