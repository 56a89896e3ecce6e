//! DNS counters, in Prometheus text format on the health port's /metrics:
//! queries by type and response code, a latency histogram, cache hits,
//! upstream failures, and what was dropped or truncated.

use std::{
    fmt::Write as _,
    sync::atomic::{AtomicU64, Ordering::Relaxed},
    time::Duration,
};

use hickory_proto::{op::ResponseCode, rr::RecordType};

mod coredns;

const TYPES: [(&str, RecordType); 9] = [
    ("A", RecordType::A),
    ("AAAA", RecordType::AAAA),
    ("SRV", RecordType::SRV),
    ("PTR", RecordType::PTR),
    ("CNAME", RecordType::CNAME),
    ("TXT", RecordType::TXT),
    ("SOA", RecordType::SOA),
    ("NS", RecordType::NS),
    ("ANY", RecordType::ANY),
];
const OTHER_TYPE: usize = TYPES.len();

const RCODES: [(&str, ResponseCode); 6] = [
    ("NOERROR", ResponseCode::NoError),
    ("FORMERR", ResponseCode::FormErr),
    ("SERVFAIL", ResponseCode::ServFail),
    ("NXDOMAIN", ResponseCode::NXDomain),
    ("NOTIMP", ResponseCode::NotImp),
    ("REFUSED", ResponseCode::Refused),
];
const OTHER_RCODE: usize = RCODES.len();

/// Upper bounds of the latency buckets, in seconds.
const BUCKETS: [f64; 14] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0,
];

/// Why a message got no answer.
#[derive(Clone, Copy, Debug)]
pub enum Dropped {
    /// Shorter than a header.
    Short,
    /// A response, not a query.
    Response,
}

/// Why a client was refused (REFUSED over UDP, a closed TCP connection).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    /// Its source is outside the access list.
    Access,
    /// It had its share of forwarded queries in flight.
    ClientForwards,
    /// It had its share of TCP connections open.
    ClientConnections,
}

impl Refused {
    const ALL: [(Self, &'static str); 3] = [
        (Self::Access, "access"),
        (Self::ClientForwards, "client_forwards"),
        (Self::ClientConnections, "client_connections"),
    ];
}

#[derive(Default)]
pub struct Metrics {
    queries: [[AtomicU64; OTHER_RCODE + 1]; OTHER_TYPE + 1],
    /// Of those, over TCP (the rest over UDP).
    tcp_queries: [AtomicU64; OTHER_TYPE + 1],
    latency: [[AtomicU64; BUCKETS.len() + 1]; OTHER_TYPE + 1],
    latency_sum_us: [AtomicU64; OTHER_TYPE + 1],
    pub cache_hits: AtomicU64,
    /// Of the hits, negative answers (NXDOMAIN, NODATA).
    pub cache_denials: AtomicU64,
    /// Forward cache entries: positive, negative.
    pub cache_entries: [AtomicU64; 2],
    pub cache_misses: AtomicU64,
    pub cache_stale: AtomicU64,
    pub upstream_failures: AtomicU64,
    pub truncated: AtomicU64,
    dropped_short: AtomicU64,
    dropped_response: AtomicU64,
    pub tcp_refused: AtomicU64,
    refused: [AtomicU64; 3],
    /// Bytes held by the forward cache and by the UDP memos.
    pub cache_bytes: AtomicU64,
    pub memo_bytes: AtomicU64,
    /// TCP connections closed for a client that did not read its answer.
    pub tcp_write_timeouts: AtomicU64,
    /// Health checks of down upstreams that got no answer.
    pub health_check_failures: AtomicU64,
    /// `dns://<address>:53`, CoreDNS's `server` label.
    server: std::sync::OnceLock<String>,
    /// The forwarder's upstreams, for their health.
    upstreams: std::sync::OnceLock<Vec<std::sync::Arc<crate::forward::Upstream>>>,
}

impl Metrics {
    /// Names the server (`dns://10.96.0.10:53`) in CoreDNS's series.
    pub fn set_server(&self, addr: std::net::SocketAddr) {
        let _ = self.server.set(format!("dns://{addr}"));
    }

    /// The upstreams whose health `/metrics` shows.
    pub fn set_upstreams(&self, upstreams: Vec<std::sync::Arc<crate::forward::Upstream>>) {
        let _ = self.upstreams.set(upstreams);
    }

    /// One answered query.
    pub fn answered(
        &self,
        qtype: Option<RecordType>,
        rcode: ResponseCode,
        transport: crate::respond::Transport,
        took: Duration,
    ) {
        let t = qtype
            .and_then(|q| TYPES.iter().position(|(_, t)| *t == q))
            .unwrap_or(OTHER_TYPE);
        let r = RCODES
            .iter()
            .position(|(_, c)| *c == rcode)
            .unwrap_or(OTHER_RCODE);
        if let Some(c) = self.queries.get(t).and_then(|row| row.get(r)) {
            c.fetch_add(1, Relaxed);
        }
        if transport == crate::respond::Transport::Tcp
            && let Some(c) = self.tcp_queries.get(t)
        {
            c.fetch_add(1, Relaxed);
        }
        let secs = took.as_secs_f64();
        let b = BUCKETS
            .iter()
            .position(|le| secs <= *le)
            .unwrap_or(BUCKETS.len());
        if let Some(c) = self.latency.get(t).and_then(|row| row.get(b)) {
            c.fetch_add(1, Relaxed);
        }
        if let Some(c) = self.latency_sum_us.get(t) {
            c.fetch_add(u64::try_from(took.as_micros()).unwrap_or(u64::MAX), Relaxed);
        }
    }

    pub fn refused(&self, why: Refused) {
        if let Some(c) = Refused::ALL
            .iter()
            .position(|(r, _)| *r == why)
            .and_then(|i| self.refused.get(i))
        {
            c.fetch_add(1, Relaxed);
        }
    }

    pub fn refused_count(&self, why: Refused) -> u64 {
        Refused::ALL
            .iter()
            .position(|(r, _)| *r == why)
            .and_then(|i| self.refused.get(i))
            .map_or(0, |c| c.load(Relaxed))
    }

    /// The refusals, the caches' bytes and the TCP write timeouts.
    fn render_bounds(&self, out: &mut String) {
        out.push_str("# HELP sluice_dns_refused_total Clients refused (REFUSED, or a TCP connection closed), by reason: outside the access list, or past their share of forwarded queries or of TCP connections.\n");
        out.push_str("# TYPE sluice_dns_refused_total counter\n");
        for (why, name) in Refused::ALL {
            let _ = writeln!(
                out,
                "sluice_dns_refused_total{{reason=\"{name}\"}} {}",
                self.refused_count(why)
            );
        }
        for (name, help, value) in [
            (
                "sluice_dns_cache_bytes",
                "Bytes held by the forward cache.",
                &self.cache_bytes,
            ),
            (
                "sluice_dns_memo_bytes",
                "Bytes held by the UDP workers' remembered cluster answers.",
                &self.memo_bytes,
            ),
        ] {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {}",
                value.load(Relaxed)
            );
        }
        let _ = writeln!(
            out,
            "# HELP sluice_dns_tcp_write_timeouts_total TCP connections closed because the client did not take its answer in time.\n# TYPE sluice_dns_tcp_write_timeouts_total counter\nsluice_dns_tcp_write_timeouts_total {}",
            self.tcp_write_timeouts.load(Relaxed)
        );
    }

    pub fn dropped(&self, why: Dropped) {
        match why {
            Dropped::Short => &self.dropped_short,
            Dropped::Response => &self.dropped_response,
        }
        .fetch_add(1, Relaxed);
    }

    /// Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        out.push_str("# HELP sluice_dns_queries_total DNS queries answered, by query type and response code.\n");
        out.push_str("# TYPE sluice_dns_queries_total counter\n");
        for (t, row) in self.queries.iter().enumerate() {
            let ty = TYPES.get(t).map_or("other", |(n, _)| n);
            for (r, c) in row.iter().enumerate() {
                let n = c.load(Relaxed);
                if n > 0 {
                    let rc = RCODES.get(r).map_or("other", |(n, _)| n);
                    let _ = writeln!(
                        out,
                        "sluice_dns_queries_total{{type=\"{ty}\",rcode=\"{rc}\"}} {n}"
                    );
                }
            }
        }
        self.render_latency(&mut out);
        for (name, help, value) in [
            (
                "sluice_dns_cache_hits_total",
                "Forwarded names answered from the cache.",
                &self.cache_hits,
            ),
            (
                "sluice_dns_cache_misses_total",
                "Forwarded names not in the cache.",
                &self.cache_misses,
            ),
            (
                "sluice_dns_cache_stale_total",
                "Expired cache entries served because every upstream failed.",
                &self.cache_stale,
            ),
            (
                "sluice_dns_upstream_failures_total",
                "Upstream queries that failed or timed out.",
                &self.upstream_failures,
            ),
            (
                "sluice_dns_truncated_total",
                "UDP answers truncated (TC) for not fitting.",
                &self.truncated,
            ),
            (
                "sluice_dns_tcp_refused_total",
                "TCP connections refused at the connection limit.",
                &self.tcp_refused,
            ),
        ] {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                value.load(Relaxed)
            );
        }
        self.render_bounds(&mut out);
        out.push_str(
            "# HELP sluice_dns_dropped_total Messages dropped without an answer, by reason.\n",
        );
        out.push_str("# TYPE sluice_dns_dropped_total counter\n");
        let _ = writeln!(
            out,
            "sluice_dns_dropped_total{{reason=\"short\"}} {}",
            self.dropped_short.load(Relaxed)
        );
        let _ = writeln!(
            out,
            "sluice_dns_dropped_total{{reason=\"response\"}} {}",
            self.dropped_response.load(Relaxed)
        );
        self.render_upstreams(&mut out);
        coredns::render(self, &mut out);
        out
    }

    /// The latency histogram over every query type.
    fn render_latency(&self, out: &mut String) {
        out.push_str("# HELP sluice_dns_request_duration_seconds Time from a query's arrival to its answer.\n");
        out.push_str("# TYPE sluice_dns_request_duration_seconds histogram\n");
        let mut cumulative = 0;
        for i in 0..=BUCKETS.len() {
            cumulative += self
                .latency
                .iter()
                .filter_map(|row| row.get(i))
                .map(|c| c.load(Relaxed))
                .sum::<u64>();
            match BUCKETS.get(i) {
                Some(le) => {
                    let _ = writeln!(
                        out,
                        "sluice_dns_request_duration_seconds_bucket{{le=\"{le}\"}} {cumulative}"
                    );
                }
                None => {
                    let _ = writeln!(
                        out,
                        "sluice_dns_request_duration_seconds_bucket{{le=\"+Inf\"}} {cumulative}"
                    );
                }
            }
        }
        let sum_us: u64 = self.latency_sum_us.iter().map(|c| c.load(Relaxed)).sum();
        #[expect(clippy::cast_precision_loss, reason = "a sum in seconds for display")]
        let sum = sum_us as f64 / 1e6;
        let _ = writeln!(out, "sluice_dns_request_duration_seconds_sum {sum}");
        let _ = writeln!(
            out,
            "sluice_dns_request_duration_seconds_count {cumulative}"
        );
    }

    /// Each upstream's health.
    fn render_upstreams(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "# HELP sluice_dns_health_check_failures_total Health checks of down upstreams that got no answer.\n# TYPE sluice_dns_health_check_failures_total counter\nsluice_dns_health_check_failures_total {}",
            self.health_check_failures.load(Relaxed)
        );
        out.push_str("# HELP sluice_dns_upstream_up Whether an upstream is up (1) or down after failures in a row (0).\n# TYPE sluice_dns_upstream_up gauge\n");
        for up in self.upstreams.get().into_iter().flatten() {
            let _ = writeln!(
                out,
                "sluice_dns_upstream_up{{upstream=\"{}\"}} {}",
                up.addr,
                u8::from(up.is_up())
            );
        }
    }
}

#[cfg(test)]
mod tests;
