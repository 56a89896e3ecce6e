use std::time::Duration;

use super::*;
use crate::respond::Transport;

#[test]
fn the_counters_are_also_under_coredns_names_and_labels() {
    let m = Metrics::default();
    m.set_server("169.254.20.10:53".parse().unwrap());
    m.answered(
        Some(RecordType::A),
        ResponseCode::NoError,
        Transport::Udp,
        Duration::from_micros(300),
    );
    m.answered(
        Some(RecordType::A),
        ResponseCode::NXDomain,
        Transport::Tcp,
        Duration::from_millis(3),
    );
    m.cache_hits.fetch_add(3, Relaxed);
    m.cache_denials.fetch_add(1, Relaxed);
    let page = m.render();
    let base = r#"server="dns://169.254.20.10:53",zone=".",view="""#;
    for line in [
        format!(r#"coredns_dns_requests_total{{{base},proto="udp",family="1",type="A"}} 1"#),
        format!(r#"coredns_dns_requests_total{{{base},proto="tcp",family="1",type="A"}} 1"#),
        format!(r#"coredns_dns_responses_total{{{base},rcode="NOERROR",plugin=""}} 1"#),
        format!(r#"coredns_dns_responses_total{{{base},rcode="NXDOMAIN",plugin=""}} 1"#),
        format!(r#"coredns_dns_request_duration_seconds_bucket{{{base},type="A",le="0.0005"}} 1"#),
        format!(r#"coredns_dns_request_duration_seconds_bucket{{{base},type="A",le="+Inf"}} 2"#),
        format!(r#"coredns_dns_request_duration_seconds_count{{{base},type="A"}} 2"#),
        r#"coredns_cache_hits_total{server="dns://169.254.20.10:53",view="",zones=".",type="success"} 2"#.to_owned(),
        r#"coredns_cache_hits_total{server="dns://169.254.20.10:53",view="",zones=".",type="denial"} 1"#.to_owned(),
        "sluice_dns_request_duration_seconds_count 2".to_owned(),
    ] {
        assert!(page.lines().any(|l| l == line), "missing `{line}` in:\n{page}");
    }
}
