//! The health port (`--health-listen`, like kube-proxy's 10256): `/livez`
//! while the agent runs; `/healthz` and `/readyz` as the control loop
//! stands (`sync`); `/metrics`.

pub mod sync;

use std::sync::{Arc, Mutex, OnceLock};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Response, StatusCode};
use tokio::net::TcpListener;

use super::{json, serve_plain, text};
use crate::{certs::CertStatus, dns::metrics::Metrics, status::PerService};

#[derive(Clone, Default)]
pub struct Health {
    sync: Arc<Mutex<sync::SyncState>>,
    dns: Arc<OnceLock<Arc<Metrics>>>,
    certs: Arc<OnceLock<CertStatus>>,
    pin_dir: Arc<OnceLock<std::path::PathBuf>>,
    conntrack: Arc<OnceLock<crate::dataplane::conntrack::Latest>>,
    /// Series per Service frontend (`--metrics-per-service`).
    per_service: PerService,
    /// Those series as the last walk of the Service maps left them
    /// (`refresh_service_series`); `/metrics` never walks a map itself.
    service_series: Arc<Mutex<String>>,
}

/// How often the series per Service frontend are walked from the maps.
pub const SERVICE_SERIES_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

impl Health {
    /// `per_service`: which frontends have series of their own in
    /// `/metrics`.
    pub fn new(per_service: PerService) -> Self {
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
        self.metrics_with(self.per_service != PerService::Off)
    }

    /// `metrics` without the series that name Services (for the read-only
    /// port, which authenticates no one).
    pub fn public_metrics(&self) -> String {
        self.metrics_with(false)
    }

    /// Walks the Service maps for the series per frontend, which `/metrics`
    /// then serves until the next walk. Blocking: run it away from the
    /// runtime's workers.
    pub fn refresh_service_series(&self) {
        let Some(snap) = self.snapshot() else {
            return;
        };
        let top = match self.per_service {
            PerService::Top(n) => Some(n),
            PerService::All | PerService::Off => None,
        };
        let series = crate::status::service_metrics(&snap, top);
        *self
            .service_series
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = series;
    }

    /// Node-level series read from fixed-size arrays and from what the
    /// agent keeps (no map is walked); with `services`, also the series
    /// per Service frontend from the last walk (`refresh_service_series`).
    fn metrics_with(&self, services: bool) -> String {
        let mut text = String::new();
        if let Some(pin_dir) = self.pin_dir.get() {
            if services {
                text.push_str(
                    &self
                        .service_series
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner),
                );
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

    /// Serves until the task is dropped; with `--metrics-per-service`,
    /// also walks the Service maps every `SERVICE_SERIES_EVERY` for them.
    pub async fn serve(self, listener: TcpListener) {
        let walker = self.clone();
        let walk = async move {
            if walker.per_service == PerService::Off {
                return std::future::pending().await;
            }
            let mut every = tokio::time::interval(SERVICE_SERIES_EVERY);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                every.tick().await;
                let walker = walker.clone();
                if let Err(e) =
                    tokio::task::spawn_blocking(move || walker.refresh_service_series()).await
                {
                    tracing::debug!("walking the Service maps for /metrics: {e}");
                }
            }
        };
        tokio::join!(serve_plain(listener, move |path| self.answer(path)), walk);
    }
}
