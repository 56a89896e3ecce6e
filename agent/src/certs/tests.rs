//! Requests and deadlines, without an API server.

use std::time::Duration;

use super::{request::*, *};

fn leaf(lifetime: Duration) -> Leaf {
    let not_before = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
    Leaf {
        not_before,
        not_after: not_before + lifetime,
        serial: "01".into(),
        subject_cn: "system:node:n".into(),
        sans: vec![],
    }
}

#[test]
fn the_rotation_deadline_falls_in_70_to_90_percent_of_the_lifetime() {
    let l = leaf(Duration::from_secs(1000));
    let (mut low, mut high) = (Duration::MAX, Duration::ZERO);
    for _ in 0..2000 {
        let at = rotation_deadline(&l).duration_since(l.not_before).unwrap();
        assert!(
            at >= Duration::from_secs(700) && at < Duration::from_secs(900),
            "{at:?}"
        );
        low = low.min(at);
        high = high.max(at);
    }
    // Spread over the interval, not a constant.
    assert!(
        low < Duration::from_secs(720) && high > Duration::from_secs(880),
        "{low:?} {high:?}"
    );
}

#[test]
fn csr_names_are_digests_of_key_node_and_kind() {
    let (k1, k2) = (new_key().unwrap(), new_key().unwrap());
    let a = digested_name(&k1, "n1", Kind::Client);
    assert!(a.starts_with("node-csr-") && a.len() > 40, "{a}");
    assert_eq!(a, digested_name(&k1, "n1", Kind::Client), "deterministic");
    assert_ne!(a, digested_name(&k2, "n1", Kind::Client));
    assert_ne!(a, digested_name(&k1, "n2", Kind::Client));
    assert_ne!(a, digested_name(&k1, "n1", Kind::Serving));
}

#[test]
fn the_request_names_the_node_and_its_addresses() {
    let key = new_key().unwrap();
    let pem = csr_pem("n1", &["10.0.0.5".into(), "n1.lab".into()], &key).unwrap();
    let parsed = rcgen::CertificateSigningRequestParams::from_pem(&pem).unwrap();
    let dn = format!("{:?}", parsed.params.distinguished_name);
    assert!(
        dn.contains("system:node:n1") && dn.contains("system:nodes"),
        "{dn}"
    );
    let sans = format!("{:?}", parsed.params.subject_alt_names);
    assert!(
        sans.contains("10.0.0.5") && sans.contains("n1.lab"),
        "{sans}"
    );
}

#[test]
fn health_is_bad_only_without_a_valid_certificate_and_with_an_error() {
    let status = CertStatus::default();
    assert!(status.health().is_ok());
    status.set_pending(Kind::Client);
    assert!(status.health().is_ok(), "still being obtained");
    status.set_error(Kind::Client, "bootstrap: CSR x was denied".into());
    assert!(status.health().unwrap_err().contains("denied"));
    let mut valid = leaf(Duration::from_secs(3600));
    valid.not_before = SystemTime::now();
    valid.not_after = valid.not_before + Duration::from_secs(3600);
    status.set_current(Kind::Client, &valid, true);
    assert!(status.health().is_ok());
    status.set_rotation_error(Kind::Client, "API server down".into());
    assert!(
        status.health().is_ok(),
        "the current certificate is still good"
    );
    let metrics = status.render();
    assert!(
        metrics.contains("sluice_certificate_rotations_total{kind=\"client\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("sluice_certificate_expiration_timestamp_seconds{kind=\"client\"}"));
}

#[test]
fn serving_names_come_from_the_nodes_addresses_sorted_and_deduplicated() {
    let node: k8s_openapi::api::core::v1::Node = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "n1"},
        "status": {"addresses": [
            {"type": "InternalIP", "address": "10.0.0.5"},
            {"type": "Hostname", "address": "n1"},
            {"type": "ExternalIP", "address": "192.0.2.9"},
            {"type": "InternalDNS", "address": "n1.internal"},
            {"type": "InternalIP", "address": "10.0.0.5"},
            {"type": "Unknown", "address": "nope"},
        ]}
    }))
    .unwrap();
    assert_eq!(
        serving::node_sans(&node),
        ["10.0.0.5", "192.0.2.9", "n1", "n1.internal"]
    );
}

#[test]
fn a_missing_serving_certificate_is_not_unhealthy_until_one_expires() {
    let status = CertStatus::default();
    status.set_rotation_error(Kind::Serving, "waiting for approval".into());
    assert!(status.health().is_ok(), "the first one is still coming");
    let mut expired = leaf(Duration::from_secs(60));
    expired.not_before = SystemTime::now() - Duration::from_secs(120);
    expired.not_after = expired.not_before + Duration::from_secs(60);
    status.set_current(Kind::Serving, &expired, false);
    status.set_rotation_error(Kind::Serving, "API server down".into());
    assert!(status.health().unwrap_err().contains("serving certificate"));
}
