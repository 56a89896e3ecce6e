//! Two Services claiming one frontend, through the local API server (which
//! stamps `creationTimestamp`): a ClusterIP belongs to its Service, and of
//! equal claims the oldest wins, whatever the order of creation and across
//! an agent restart; refused claims are logged with both names, shown in
//! `sluice status` and counted in `/metrics`.
#![allow(clippy::unwrap_used, reason = "tests: a failure fails the test")]

use std::{
    collections::BTreeSet,
    fs,
    net::{Ipv4Addr, SocketAddr},
    time::{Duration, Instant},
};

use sluice_lab::{AgentOptions, AgentSource, Lab, default_bin, require_privileges};

use crate::common::*;

const APPLIED: &str = "Services applied";
const CATCH_UP: Duration = Duration::from_secs(20);
const EXTERNAL: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 50);
const OTHER_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 11);

/// A Service `name` (80/TCP → 8080) with a ClusterIP (or none: `None`
/// lets the API server pick one), `externalIPs`, and a slice on `backend`.
fn service(
    name: &str,
    cluster_ip: Option<Ipv4Addr>,
    external: &[Ipv4Addr],
    backend: usize,
) -> String {
    let ip = cluster_ip.map_or_else(String::new, |ip| format!("  clusterIP: {ip}\n"));
    let ext: Vec<String> = external.iter().map(ToString::to_string).collect();
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: default}}\nspec:\n{ip}  externalIPs: [{}]\n  ports: [{{name: http, port: 80}}]\n---\n\
         apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}-1\n  namespace: default\n  labels: {{kubernetes.io/service-name: {name}}}\n\
         addressType: IPv4\nports: [{{name: http, port: 8080}}]\nendpoints: [{{addresses: [\"{}\"], conditions: {{ready: true}}}}]\n",
        ext.join(", "),
        backend_ip(backend)
    )
}

fn apply_yaml(lab: &mut Lab, yaml: &str) {
    let path = lab.dir().join("apply.yaml");
    fs::write(&path, yaml).unwrap();
    lab.apiserver()
        .kubectl(&["apply", "-f", path.to_str().unwrap()])
        .unwrap();
}

/// The backends answering on `to` over a few new connections.
fn answering(lab: &Lab, to: SocketAddr) -> BTreeSet<String> {
    (0..6)
        .map(|_| {
            lab.pod("client")
                .tcp_request(to, T)
                .map_or_else(|_| "-".to_owned(), |a| who(&a))
        })
        .collect()
}

/// Waits, after each model the agent applies, until `to` is answered by
/// `backend` alone.
fn until_answered(lab: &mut Lab, to: SocketAddr, backend: usize) {
    let want = BTreeSet::from([backend_name(backend)]);
    let deadline = Instant::now() + CATCH_UP;
    loop {
        let mark = lab.agent().log_len();
        let seen = answering(lab, to);
        if seen == want {
            return;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero() && lab.agent().wait_for(APPLIED, mark, left).is_ok(),
            "{to}: answered by {seen:?}, not {want:?}; agent log:\n{}",
            lab.agent().log()
        );
    }
}

fn agent_options(lab: &mut Lab) -> AgentOptions {
    AgentOptions {
        source: AgentSource::Kubeconfig(lab.apiserver().admin_kubeconfig()),
        service_cidr: Some(SERVICE_CIDR.into()),
        ..AgentOptions::default()
    }
}

#[test]
fn claims_on_one_frontend_follow_the_api_servers_rules_in_any_order_and_across_a_restart() {
    if !require_privileges(
        "claims_on_one_frontend_follow_the_api_servers_rules_in_any_order_and_across_a_restart",
    ) {
        return;
    }
    let mut lab = web_lab(3);
    lab.remove_manifest("web.yaml").unwrap();
    lab.start_apiserver(&[]).unwrap();
    let opts = agent_options(&mut lab);
    lab.start_agent(&opts).unwrap();
    let vip = SocketAddr::from((VIP, 80));
    let other_vip = SocketAddr::from((OTHER_VIP, 80));
    let external = SocketAddr::from((EXTERNAL, 80));

    // A ClusterIP's Service first, then a Service whose externalIPs take
    // that ClusterIP (its name sorts last, which once won): refused.
    apply_yaml(&mut lab, &service("dns", Some(VIP), &[], 0));
    until_answered(&mut lab, vip, 0);
    apply_yaml(&mut lab, &service("zz-evil", None, &[VIP], 1));
    // The other order: an external claim on an address that later becomes
    // a Service's ClusterIP gives it up.
    apply_yaml(&mut lab, &service("zz-early", None, &[OTHER_VIP], 1));
    until_answered(&mut lab, other_vip, 1);
    apply_yaml(&mut lab, &service("owner", Some(OTHER_VIP), &[], 2));
    until_answered(&mut lab, other_vip, 2);
    // Two equal claims: the older wins, though its name sorts first.
    apply_yaml(&mut lab, &service("aa-first", None, &[EXTERNAL], 0));
    until_answered(&mut lab, external, 0);
    // Creation times have whole seconds: the next is a second younger.
    std::thread::sleep(Duration::from_millis(1100));
    apply_yaml(&mut lab, &service("zz-second", None, &[EXTERNAL], 1));
    lab.agent()
        .wait_for("default/zz-second", 0, CATCH_UP)
        .unwrap();

    let check = |lab: &mut Lab| {
        assert_eq!(answering(lab, vip), BTreeSet::from([backend_name(0)]));
        assert_eq!(answering(lab, other_vip), BTreeSet::from([backend_name(2)]));
        assert_eq!(answering(lab, external), BTreeSet::from([backend_name(0)]));
    };
    check(&mut lab);
    let status = lab.status(&default_bin()).unwrap();
    for (frontend, owner, refused) in [
        ("10.96.0.10:80/TCP", "default/dns", "default/zz-evil"),
        ("10.96.0.11:80/TCP", "default/owner", "default/zz-early"),
        ("192.0.2.50:80/TCP", "default/aa-first", "default/zz-second"),
    ] {
        let row = status
            .lines()
            .find(|l| l.starts_with(frontend))
            .unwrap_or_else(|| panic!("no refused claim on {frontend} in\n{status}"));
        assert!(row.contains(owner) && row.contains(refused), "{row}");
        let log = lab.agent().log();
        assert!(
            log.lines().any(|l| l.contains("is refused")
                && l.contains(frontend)
                && l.contains(owner)
                && l.contains(refused)),
            "the log names both for {frontend}:\n{log}"
        );
    }
    let metrics = http_get(&lab, SocketAddr::from(([127, 0, 0, 1], 10256)), "/metrics")
        .unwrap()
        .1;
    assert!(
        metrics.contains("\nsluice_frontends_refused 3\n"),
        "{metrics}"
    );

    // The same after a restart (the claims come back in another order).
    lab.take_agent().unwrap().stop().unwrap();
    lab.start_agent(&opts).unwrap();
    check(&mut lab);

    // The holders go: the refused claims take over.
    lab.apiserver()
        .kubectl(&["delete", "service", "aa-first", "dns"])
        .unwrap();
    until_answered(&mut lab, external, 1);
    until_answered(&mut lab, vip, 1);
    let status = lab.status(&default_bin()).unwrap();
    let refused: Vec<&str> = [
        "10.96.0.10:80/TCP",
        "10.96.0.11:80/TCP",
        "192.0.2.50:80/TCP",
    ]
    .into_iter()
    .filter(|f| status.lines().any(|l| l.starts_with(f)))
    .collect();
    assert_eq!(
        refused,
        ["10.96.0.11:80/TCP"],
        "only the claim on a held ClusterIP is still refused:\n{status}"
    );
}
