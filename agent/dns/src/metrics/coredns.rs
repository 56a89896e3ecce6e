//! The same counters under CoreDNS's names and labels, so that dashboards
//! and alerts made for CoreDNS and NodeLocal DNSCache work unchanged:
//! `coredns_dns_requests_total`, `coredns_dns_responses_total`,
//! `coredns_dns_request_duration_seconds`, `coredns_cache_hits_total`,
//! `coredns_cache_misses_total`, `coredns_cache_entries` and
//! `coredns_forward_healthcheck_failures_total`. The `server` label is
//! `dns://<address>:53`, `zone` is `.`, `view` is empty, and `family` is
//! the server address's (a socket bound to one address hears one family).

use std::{fmt::Write as _, sync::atomic::Ordering::Relaxed};

use super::{BUCKETS, Metrics, RCODES, TYPES};

fn type_name(t: usize) -> &'static str {
    TYPES.get(t).map_or("other", |(n, _)| n)
}

pub(super) fn render(m: &Metrics, out: &mut String) {
    let server = m.server.get().map_or("dns://:53", String::as_str);
    let family = if server.contains('[') { "2" } else { "1" };
    let base = format!("server=\"{server}\",zone=\".\",view=\"\"");

    out.push_str("# HELP coredns_dns_requests_total Counter of DNS requests made per zone, protocol and family.\n# TYPE coredns_dns_requests_total counter\n");
    for (t, row) in m.queries.iter().enumerate() {
        let all: u64 = row.iter().map(|c| c.load(Relaxed)).sum();
        let tcp = m.tcp_queries.get(t).map_or(0, |c| c.load(Relaxed));
        for (proto, n) in [("udp", all.saturating_sub(tcp)), ("tcp", tcp)] {
            if n > 0 {
                let _ = writeln!(
                    out,
                    "coredns_dns_requests_total{{{base},proto=\"{proto}\",family=\"{family}\",type=\"{}\"}} {n}",
                    type_name(t)
                );
            }
        }
    }

    out.push_str("# HELP coredns_dns_responses_total Counter of response status codes.\n# TYPE coredns_dns_responses_total counter\n");
    for (r, (name, _)) in RCODES.iter().enumerate() {
        let n: u64 = m
            .queries
            .iter()
            .filter_map(|row| row.get(r))
            .map(|c| c.load(Relaxed))
            .sum();
        if n > 0 {
            let _ = writeln!(
                out,
                "coredns_dns_responses_total{{{base},rcode=\"{name}\",plugin=\"\"}} {n}"
            );
        }
    }

    out.push_str("# HELP coredns_dns_request_duration_seconds Histogram of the time (in seconds) each request took per zone.\n# TYPE coredns_dns_request_duration_seconds histogram\n");
    for (t, row) in m.latency.iter().enumerate() {
        let count: u64 = row.iter().map(|c| c.load(Relaxed)).sum();
        if count == 0 {
            continue;
        }
        let ty = type_name(t);
        let mut cumulative = 0;
        for (i, c) in row.iter().enumerate() {
            cumulative += c.load(Relaxed);
            let le = BUCKETS
                .get(i)
                .map_or_else(|| "+Inf".to_owned(), f64::to_string);
            let _ = writeln!(
                out,
                "coredns_dns_request_duration_seconds_bucket{{{base},type=\"{ty}\",le=\"{le}\"}} {cumulative}"
            );
        }
        #[expect(clippy::cast_precision_loss, reason = "a sum in seconds for display")]
        let sum = m.latency_sum_us.get(t).map_or(0, |c| c.load(Relaxed)) as f64 / 1e6;
        let _ = writeln!(
            out,
            "coredns_dns_request_duration_seconds_sum{{{base},type=\"{ty}\"}} {sum}\ncoredns_dns_request_duration_seconds_count{{{base},type=\"{ty}\"}} {count}"
        );
    }

    let cache = format!("server=\"{server}\",view=\"\",zones=\".\"");
    let hits = m.cache_hits.load(Relaxed);
    let denials = m.cache_denials.load(Relaxed);
    let _ = writeln!(
        out,
        "# HELP coredns_cache_hits_total The count of cache hits.\n# TYPE coredns_cache_hits_total counter\n\
         coredns_cache_hits_total{{{cache},type=\"success\"}} {}\ncoredns_cache_hits_total{{{cache},type=\"denial\"}} {denials}",
        hits.saturating_sub(denials)
    );
    let _ = writeln!(
        out,
        "# HELP coredns_cache_misses_total The count of cache misses.\n# TYPE coredns_cache_misses_total counter\n\
         coredns_cache_misses_total{{{cache}}} {}",
        m.cache_misses.load(Relaxed)
    );
    let [success, denial] = &m.cache_entries;
    let _ = writeln!(
        out,
        "# HELP coredns_cache_entries The number of elements in the cache.\n# TYPE coredns_cache_entries gauge\n\
         coredns_cache_entries{{{cache},type=\"success\"}} {}\ncoredns_cache_entries{{{cache},type=\"denial\"}} {}",
        success.load(Relaxed),
        denial.load(Relaxed)
    );
    out.push_str("# HELP coredns_forward_healthcheck_failures_total Counter of the number of failed healthchecks.\n# TYPE coredns_forward_healthcheck_failures_total counter\n");
    for up in m.upstreams.get().into_iter().flatten() {
        let _ = writeln!(
            out,
            "coredns_forward_healthcheck_failures_total{{to=\"{}\"}} {}",
            up.addr,
            up.health_check_failures.load(Relaxed)
        );
    }
}
