//! Hairpin: a pod that reaches a Service whose backend is the pod itself,
//! on the TC path. Its packets get the hairpin source (169.254.42.1) and go
//! straight back into it; its answers come back out and are translated to
//! come from the Service. TCP and UDP, with the pod as the only backend
//! and as one of three.
#![allow(clippy::unwrap_used, reason = "tests: a failure fails the test")]

use std::net::{Ipv4Addr, SocketAddr};

use sluice_lab::{AgentOptions, Lab, manifest, require_privileges};

use crate::common::*;

const HAIRPIN: Ipv4Addr = Ipv4Addr::new(169, 254, 42, 1);
const SELF_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 40);

/// `web_lab(3)`, plus `self`, whose one backend is b0; the agent running.
fn hairpin_lab() -> Lab {
    let mut lab = web_lab(3);
    lab.write_manifest(
        "self.yaml",
        &manifest::service_with_endpoints(
            "self",
            SELF_VIP,
            &[
                manifest::Port::tcp("http", 80),
                manifest::Port::udp("dns", 53),
            ],
            &[
                manifest::Port::tcp("http", 8080),
                manifest::Port::udp("dns", 5353),
            ],
            &[manifest::Endpoint::ready(backend_ip(0))],
        ),
    )
    .unwrap();
    lab.start_agent(&AgentOptions::default()).unwrap();
    lab
}

/// `n` TCP requests and `n` UDP requests from b0 to `vip`; returns how
/// often b0 answered itself. Every request must be answered, from the
/// Service's address; b0 sees itself as the hairpin address, the others
/// see b0.
fn from_b0(lab: &Lab, vip: Ipv4Addr, n: usize) -> usize {
    let b0 = lab.pod(&backend_name(0));
    let mut itself = 0;
    for i in 0..n {
        let answer = b0
            .tcp_request(SocketAddr::from((vip, 80)), T)
            .unwrap_or_else(|e| panic!("TCP request {i} to {vip}: {e:#}"));
        let (udp, from) = b0
            .udp_request(SocketAddr::from((vip, 53)), T)
            .unwrap_or_else(|e| panic!("UDP request {i} to {vip}: {e:#}"));
        assert_eq!(from, SocketAddr::from((vip, 53)), "the answer's source");
        for answer in [answer, udp] {
            if who(&answer) == backend_name(0) {
                itself += 1;
                assert_eq!(peer(&answer).ip(), HAIRPIN, "{answer}");
            } else {
                assert_eq!(peer(&answer).ip(), backend_ip(0), "{answer}");
            }
        }
    }
    itself
}

#[test]
fn a_pod_reaches_itself_through_a_service_whose_only_backend_it_is() {
    if !require_privileges("a_pod_reaches_itself_through_a_service_whose_only_backend_it_is") {
        return;
    }
    let lab = hairpin_lab();
    assert_eq!(from_b0(&lab, SELF_VIP, 20), 40, "20 of 20, TCP and UDP");
    assert!(event_count(&lab, "hairpin") >= 80, "both ways");
}

#[test]
fn a_pod_reaches_a_service_it_is_one_of_three_backends_of_every_time() {
    if !require_privileges("a_pod_reaches_a_service_it_is_one_of_three_backends_of_every_time") {
        return;
    }
    let lab = hairpin_lab();
    // 60 of 60 each way; about a third pick b0 itself.
    let itself = from_b0(&lab, VIP, 60);
    assert!(itself > 0, "no connection picked b0 itself");
}
