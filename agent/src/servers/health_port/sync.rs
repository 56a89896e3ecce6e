//! What the control loop has programmed, as the health port tells it.
//!
//! `/healthz` has kube-proxy's semantics and JSON (`lastUpdated`,
//! `currentTime`, `nodeEligible`): 503 when a change has waited longer
//! than `DEADLINE` to reach the maps, when a Service does not fit in them,
//! or when this node is leaving (deleted, or tainted by the cluster
//! autoscaler, KEP-3836). `/readyz` follows the state: 503 before the
//! first sync, after a failed write, and while Services are left out; it
//! never latches. `/livez` is liveness alone.

use std::{
    fmt::Write as _,
    time::{Duration, Instant, SystemTime},
};

use hyper::StatusCode;

use crate::plan::capacity::{Admission, Resource};

/// How long a change may wait for the maps before `/healthz` fails:
/// kube-proxy's default, twice its 30 s sync period.
pub const DEADLINE: Duration = Duration::from_secs(60);

/// The health of the control loop.
#[derive(Debug)]
pub struct SyncState {
    /// When the maps last held the whole model (kube-proxy's `lastUpdated`).
    last_updated: Option<SystemTime>,
    /// Since when a change has waited for the maps.
    pending_since: Option<Instant>,
    /// Why the last write failed, until one succeeds.
    error: Option<String>,
    /// Why this node takes no new traffic.
    leaving: Option<String>,
    /// The maps' fill and the Services left out, as last planned.
    pub capacity: Capacity,
    /// Seconds each successful sync took.
    sync_seconds: Histogram,
    /// Seconds from an EndpointSlice change (its trigger time) to the maps.
    programming_seconds: Histogram,
    /// Failed writes, by the map that refused them.
    errors: std::collections::BTreeMap<&'static str, u64>,
    /// Map writes and deletes the syncs made.
    map_ops: u64,
    /// Frontends with refused claims.
    refused: usize,
    /// Pinned maps replaced at start, and the entries each held.
    replaced: Vec<(&'static str, u64)>,
    /// Interfaces that should have a program and could not get one:
    /// ifindex → (name, error).
    attach_failed: std::collections::BTreeMap<u32, (String, String)>,
    /// When the agent started: changes triggered before are not its
    /// latency (kube-proxy's rule).
    started: SystemTime,
}

impl Default for SyncState {
    fn default() -> Self {
        Self {
            last_updated: None,
            // As kube-proxy: waiting for the first sync counts from the start.
            pending_since: Some(Instant::now()),
            error: None,
            leaving: None,
            capacity: Capacity::default(),
            sync_seconds: Histogram::new(&SYNC_BUCKETS),
            programming_seconds: Histogram::new(&PROGRAMMING_BUCKETS),
            errors: std::collections::BTreeMap::new(),
            map_ops: 0,
            refused: 0,
            replaced: Vec::new(),
            attach_failed: std::collections::BTreeMap::new(),
            started: SystemTime::now(),
        }
    }
}

/// The maps with a limit, and the Services that did not fit.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Capacity {
    pub maps: Vec<MapFill>,
    #[serde(rename = "leftOut")]
    pub left_out: Vec<LeftOut>,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct MapFill {
    pub map: &'static str,
    /// Entries the programmed Services take.
    pub entries: u64,
    pub capacity: u64,
}

/// A Service that is not programmed, and the map it did not fit in.
#[derive(Clone, Debug, serde::Serialize)]
pub struct LeftOut {
    pub service: String,
    pub map: &'static str,
}

impl Capacity {
    /// As the planner's admission stands.
    pub fn of(admission: &Admission) -> Self {
        let (used, limits) = (admission.used(), admission.limits());
        Self {
            maps: Resource::ALL
                .into_iter()
                .map(|r| MapFill {
                    map: r.map(),
                    entries: used.get(r),
                    capacity: limits.get(r),
                })
                .collect(),
            left_out: admission
                .left_out()
                .into_iter()
                .map(|(key, r)| LeftOut {
                    service: key.to_string(),
                    map: r.map(),
                })
                .collect(),
        }
    }

    /// The maps that left a Service out.
    fn full(&self) -> Vec<&'static str> {
        let mut full: Vec<&'static str> = self.left_out.iter().map(|l| l.map).collect();
        full.sort_unstable();
        full.dedup();
        full
    }
}

impl SyncState {
    /// A change came that the maps do not hold yet.
    pub fn queued(&mut self) {
        self.pending_since.get_or_insert_with(Instant::now);
    }

    /// The maps hold the model (less what `capacity` left out), after a
    /// sync of `took`.
    pub fn synced_in(&mut self, capacity: Capacity, took: Duration, map_ops: usize) {
        self.sync_seconds.observe(took.as_secs_f64());
        self.map_ops += u64::try_from(map_ops).unwrap_or(u64::MAX);
        self.synced(capacity);
    }

    /// The maps now hold EndpointSlice changes made at `triggers`.
    pub fn programmed_changes(&mut self, triggers: &[SystemTime]) {
        let now = SystemTime::now();
        for t in triggers.iter().filter(|t| **t >= self.started) {
            let waited = now.duration_since(*t).unwrap_or_default();
            self.programming_seconds.observe(waited.as_secs_f64());
        }
    }

    /// The maps hold the model (less what `capacity` left out).
    pub fn synced(&mut self, capacity: Capacity) {
        self.last_updated = Some(SystemTime::now());
        self.pending_since = None;
        self.error = None;
        self.capacity = capacity;
    }

    /// A write to `map` failed; the change stays pending.
    pub fn failed(&mut self, map: &'static str, error: String) {
        self.error = Some(error);
        *self.errors.entry(map).or_default() += 1;
    }

    /// Whether interface `index` (`name`) has the program it should have.
    pub fn attach_result(&mut self, index: u32, name: &str, result: Result<(), String>) {
        match result {
            Ok(()) => {
                self.attach_failed.remove(&index);
            }
            Err(e) => {
                self.attach_failed.insert(index, (name.to_owned(), e));
            }
        }
    }

    /// The pinned maps this start replaced (`dataplane::layout`), and the
    /// entries each held.
    pub fn set_replaced(&mut self, replaced: Vec<(&'static str, u64)>) {
        self.replaced = replaced;
    }

    /// How many frontends have refused claims.
    pub const fn set_refused(&mut self, n: usize) {
        self.refused = n;
    }

    pub const fn refused(&self) -> usize {
        self.refused
    }

    /// Whether this node is leaving, and why.
    pub fn set_leaving(&mut self, why: Option<String>) {
        self.leaving = why;
    }

    /// Whether the first sync has been programmed.
    pub const fn programmed(&self) -> bool {
        self.last_updated.is_some()
    }

    /// What keeps `/healthz` from 200, if anything.
    fn unhealthy(&self, now: Instant) -> Option<String> {
        if let Some(since) = self.pending_since
            && now.duration_since(since) > DEADLINE
        {
            let why = self.error.as_deref().unwrap_or("not programmed yet");
            return Some(format!(
                "a change has waited {} s for the maps: {why}",
                now.duration_since(since).as_secs()
            ));
        }
        self.unfit()
    }

    fn unfit(&self) -> Option<String> {
        let full = self.capacity.full();
        (!full.is_empty()).then(|| {
            format!(
                "{} Services do not fit in {}",
                self.capacity.left_out.len(),
                full.join(", ")
            )
        })
    }

    /// `/healthz`: kube-proxy's answer, with the reason and the capacity
    /// when it fails.
    pub fn healthz(&self) -> (StatusCode, String) {
        let reason = self.unhealthy(Instant::now());
        let eligible = self.leaving.is_none();
        let mut body = serde_json::json!({
            "lastUpdated": go_time(self.last_updated),
            "currentTime": go_time(Some(SystemTime::now())),
            "nodeEligible": eligible,
        });
        let status = match (&reason, &self.leaving) {
            (None, None) => StatusCode::OK,
            _ => StatusCode::SERVICE_UNAVAILABLE,
        };
        if let Some(why) = reason.or_else(|| self.leaving.clone()) {
            body["reason"] = why.into();
            self.add_capacity(&mut body);
        }
        (status, body.to_string())
    }

    /// `/readyz`: 200 while the maps hold every Service.
    pub fn readyz(&self) -> (StatusCode, String) {
        let why = if self.programmed() {
            self.error
                .as_ref()
                .map(|e| format!("the last write failed: {e}"))
                .or_else(|| {
                    self.attach_failed
                        .values()
                        .next()
                        .map(|(iface, e)| format!("cannot attach to {iface}: {e}"))
                })
                .or_else(|| self.unfit())
        } else {
            Some("the first sync has not been programmed yet".to_owned())
        };
        let Some(why) = why else {
            return (StatusCode::OK, r#"{"ready":true}"#.to_owned());
        };
        let mut body = serde_json::json!({"ready": false, "reason": why});
        self.add_capacity(&mut body);
        (StatusCode::SERVICE_UNAVAILABLE, body.to_string())
    }

    fn add_capacity(&self, body: &mut serde_json::Value) {
        if !self.capacity.left_out.is_empty() {
            body["fullMaps"] = self.capacity.full().into();
            body["capacity"] = serde_json::to_value(&self.capacity).unwrap_or_default();
        }
    }
}

impl SyncState {
    /// Prometheus text: kube-proxy's sync metrics under its names, the
    /// maps' fill, and the Services left out.
    pub fn render(&self) -> String {
        let mut out = String::new();
        self.sync_seconds.render(
            &mut out,
            "kubeproxy_sync_proxy_rules_duration_seconds",
            "How long a sync of the Services into the maps took.",
        );
        self.programming_seconds.render(
            &mut out,
            "kubeproxy_network_programming_duration_seconds",
            "From an EndpointSlice change (endpoints.kubernetes.io/last-change-trigger-time) to the maps.",
        );
        let last = self
            .last_updated
            .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
            .map_or(0.0, |d| d.as_secs_f64());
        single(
            &mut out,
            "kubeproxy_sync_proxy_rules_last_timestamp_seconds",
            "gauge",
            "When the maps last held every change (Unix seconds).",
            format!("{last}"),
        );
        single(
            &mut out,
            "sluice_map_operations_total",
            "counter",
            "Map writes and deletes the syncs made.",
            self.map_ops.to_string(),
        );
        let _ = writeln!(
            out,
            "# HELP sluice_sync_errors_total Syncs whose map writes failed, by the map that refused them.\n# TYPE sluice_sync_errors_total counter"
        );
        for (map, n) in &self.errors {
            let _ = writeln!(out, "sluice_sync_errors_total{{map=\"{map}\"}} {n}");
        }
        single(
            &mut out,
            "sluice_services_left_out",
            "gauge",
            "Services not programmed because the maps cannot hold them.",
            self.capacity.left_out.len().to_string(),
        );
        for (name, help, value) in [
            (
                "sluice_pinned_map_replaced_total",
                "Pinned maps this agent replaced at start (another layout version or shape), losing what they held.",
                (|_: u64| 1) as fn(u64) -> u64,
            ),
            (
                "sluice_pinned_map_entries_lost_total",
                "Entries the pinned maps replaced at start held.",
                |n| n,
            ),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for (map, entries) in &self.replaced {
                let _ = writeln!(out, "{name}{{map=\"{map}\"}} {}", value(*entries));
            }
        }
        for (name, help, value) in [
            (
                "sluice_map_entries",
                "Entries the programmed Services take, by map.",
                (|m: &MapFill| m.entries) as fn(&MapFill) -> u64,
            ),
            (
                "sluice_map_capacity",
                "Entries a map holds for Services (--max-frontends, --max-backends).",
                |m: &MapFill| m.capacity,
            ),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
            for m in &self.capacity.maps {
                let _ = writeln!(out, "{name}{{map=\"{}\"}} {}", m.map, value(m));
            }
        }
        out
    }
}

/// A family of one sample.
fn single(out: &mut String, name: &str, kind: &str, help: &str, value: impl std::fmt::Display) {
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
    );
}

/// kube-proxy's buckets for its sync duration: 1 ms doubling to 16 s.
const SYNC_BUCKETS: [f64; 15] = [
    0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512, 1.024, 2.048, 4.096,
    8.192, 16.384,
];

/// kube-proxy's buckets for network programming: 0.25 s to 5 min.
const PROGRAMMING_BUCKETS: [f64; 22] = [
    0.25, 0.5, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 15.0, 20.0, 30.0, 45.0, 60.0, 75.0, 90.0,
    105.0, 120.0, 180.0, 240.0, 300.0,
];

/// A Prometheus histogram.
#[derive(Debug)]
struct Histogram {
    bounds: &'static [f64],
    /// Observations at or under each bound (not cumulative).
    counts: Vec<u64>,
    count: u64,
    sum: f64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            counts: vec![0; bounds.len()],
            count: 0,
            sum: 0.0,
        }
    }

    fn observe(&mut self, v: f64) {
        if let Some(i) = self.bounds.iter().position(|b| v <= *b) {
            self.counts[i] += 1;
        }
        self.count += 1;
        self.sum += v;
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (bound, n) in self.bounds.iter().zip(&self.counts) {
            cumulative += n;
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", self.count);
        let _ = writeln!(out, "{name}_sum {}\n{name}_count {}", self.sum, self.count);
    }
}

/// A time as Go prints a `time.Time` (kube-proxy's `%q` of one):
/// `2026-12-06 02:43:16.123456789 +0000 UTC`; the zero time when `None`.
fn go_time(t: Option<SystemTime>) -> String {
    let Some(t) = t else {
        return "0001-01-01 00:00:00 +0000 UTC".to_owned();
    };
    let t = time::OffsetDateTime::from(t);
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}.{:09} +0000 UTC",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.nanosecond()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn left_out() -> Capacity {
        Capacity {
            maps: vec![MapFill {
                map: "SLUICE_BACKEND",
                entries: 100,
                capacity: 100,
            }],
            left_out: vec![LeftOut {
                service: "default/young".into(),
                map: "SLUICE_BACKEND",
            }],
        }
    }

    #[test]
    fn healthz_has_kube_proxys_fields_and_fails_while_services_are_left_out() {
        let mut s = SyncState::default();
        let (code, body) = s.healthz();
        assert_eq!(
            code,
            StatusCode::OK,
            "waiting for the first sync is no failure yet"
        );
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["lastUpdated"], "0001-01-01 00:00:00 +0000 UTC");
        assert_eq!(v["nodeEligible"], true);
        assert!(v["currentTime"].as_str().unwrap().ends_with(" +0000 UTC"));
        assert_eq!(s.readyz().0, StatusCode::SERVICE_UNAVAILABLE);

        s.synced(left_out());
        let (code, body) = s.healthz();
        assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert!(
            body.contains("default/young") && body.contains("SLUICE_BACKEND"),
            "{body}"
        );
        let (code, body) = s.readyz();
        assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains("default/young"), "{body}");

        s.synced(Capacity::default());
        assert_eq!(s.healthz().0, StatusCode::OK);
        assert_eq!(s.readyz().0, StatusCode::OK, "readiness follows the state");
    }

    #[test]
    fn a_change_pending_past_the_deadline_fails_healthz_and_a_failed_write_readyz() {
        let mut s = SyncState::default();
        s.synced(Capacity::default());
        s.queued();
        s.failed("SLUICE_SVC", "batch write to map `SLUICE_SVC`".into());
        assert_eq!(s.readyz().0, StatusCode::SERVICE_UNAVAILABLE);
        let now = Instant::now();
        assert!(s.unhealthy(now).is_none(), "within the deadline");
        let later = now + DEADLINE + Duration::from_secs(1);
        let why = s.unhealthy(later).unwrap();
        assert!(why.contains("SLUICE_SVC"), "{why}");
        s.synced(Capacity::default());
        assert!(s.unhealthy(later).is_none());
    }

    #[test]
    fn metrics_carry_kube_proxys_names_and_the_maps_fill() {
        let mut s = SyncState::default();
        s.synced_in(left_out(), Duration::from_millis(3), 7);
        s.failed("SLUICE_BACKEND", "batch write".into());
        s.started -= Duration::from_secs(10);
        s.programmed_changes(&[
            SystemTime::now() - Duration::from_millis(1500),
            s.started - Duration::from_secs(1),
        ]);
        let text = s.render();
        for line in [
            "kubeproxy_sync_proxy_rules_duration_seconds_bucket{le=\"0.002\"} 0",
            "kubeproxy_sync_proxy_rules_duration_seconds_bucket{le=\"0.004\"} 1",
            "kubeproxy_sync_proxy_rules_duration_seconds_count 1",
            "kubeproxy_network_programming_duration_seconds_bucket{le=\"1\"} 0",
            "kubeproxy_network_programming_duration_seconds_bucket{le=\"2\"} 1",
            "sluice_map_entries{map=\"SLUICE_BACKEND\"} 100",
            "sluice_map_capacity{map=\"SLUICE_BACKEND\"} 100",
            "sluice_services_left_out 1",
            "sluice_map_operations_total 7",
            "sluice_sync_errors_total{map=\"SLUICE_BACKEND\"} 1",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
        }
        assert!(text.contains("kubeproxy_sync_proxy_rules_last_timestamp_seconds 1"));
    }

    #[test]
    fn readiness_fails_while_an_interface_lacks_its_program() {
        let mut s = SyncState::default();
        s.synced(Capacity::default());
        s.attach_result(7, "eth1", Err("failed to attach".into()));
        let (code, body) = s.readyz();
        assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains("eth1"), "{body}");
        s.attach_result(7, "eth1", Ok(()));
        assert_eq!(s.readyz().0, StatusCode::OK);
    }

    #[test]
    fn a_leaving_node_is_not_eligible() {
        let mut s = SyncState::default();
        s.synced(Capacity::default());
        s.set_leaving(Some("the Node is being deleted".into()));
        let (code, body) = s.healthz();
        assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains(r#""nodeEligible":false"#), "{body}");
        assert_eq!(s.readyz().0, StatusCode::OK, "it still serves");
    }
}
