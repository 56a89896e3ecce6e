//! End-to-end: the local API server with a service range per family, as
//! kube-apiserver: ClusterIPs by `ipFamilyPolicy` and `ipFamilies`, and an
//! EndpointSlice per family from the pods' `podIPs`; and the agent
//! watching it serves both ClusterIPs of a dual-stack Service to a pod
//! (through socket LB; `ipv6_tc` covers TC on the pods' interfaces, and
//! `ipv6_edge` a dual-stack NodePort in every north-south mode).
#![allow(clippy::unwrap_used, reason = "tests: a failure fails the test")]

use std::{collections::BTreeSet, net::SocketAddr};

use sluice_lab::require_privileges;

use crate::{
    apiserver::{apply, eventually, jsonpath, server, set_pod_status},
    common::{backend_ip, backend_name, start_agent_on_apiserver, who},
    socketlb::{backend_ip6, line, probe, web_lab6},
};

const OBJECTS: &str = "\
apiVersion: v1
kind: Service
metadata: {name: dual}
spec:
  ipFamilyPolicy: PreferDualStack
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: six}
spec:
  ipFamilies: [IPv6]
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: four}
spec:
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Pod
metadata: {name: web-1, labels: {app: web}}
spec: {nodeName: node-a, containers: [{name: c, image: nginx}]}
";

#[test]
fn a_dual_stack_range_gives_each_service_its_families_and_a_slice_per_family() {
    let (dir, s) = server(&[
        "--service-cluster-ip-range",
        "10.96.0.0/12,fd00:10:96::/112",
    ]);
    apply(&s, dir.path(), None, "objects.yaml", OBJECTS);
    let get = |svc: &str, path: &str| jsonpath(&s, &["get", "service", svc], path);
    let dual_ips = get("dual", "{.spec.clusterIPs}");
    assert_eq!(get("dual", "{.spec.ipFamilies}"), r#"["IPv4","IPv6"]"#);
    assert!(
        dual_ips.contains("10.") && dual_ips.contains("fd00:10:96::"),
        "{dual_ips}"
    );
    assert_eq!(get("six", "{.spec.ipFamilies}"), r#"["IPv6"]"#);
    assert!(get("six", "{.spec.clusterIP}").starts_with("fd00:10:96::"));
    assert_eq!(get("four", "{.spec.ipFamilies}"), r#"["IPv4"]"#);
    assert_eq!(get("four", "{.spec.ipFamilyPolicy}"), "SingleStack");
    // RequireDualStack is refused on a single-stack range elsewhere; here a
    // second address of the same family is.
    let bad = s
        .kubectl(&[
            "create",
            "service",
            "clusterip",
            "bad",
            "--tcp=80:80",
            "--dry-run=client",
            "-o",
            "json",
        ])
        .unwrap()
        .replace(
            r#""spec": {"#,
            r#""spec": {"ipFamilyPolicy": "RequireDualStack", "clusterIPs": ["10.96.0.50", "10.96.0.51"],"#,
        );
    let path = dir.path().join("bad.json");
    std::fs::write(&path, bad).unwrap();
    let err = s
        .kubectl(&["create", "-f", path.to_str().unwrap()])
        .unwrap_err()
        .to_string();
    assert!(err.contains("Duplicate value"), "{err}");

    // A single-stack Service made dual-stack gets its second address, and
    // gives it back when made single-stack again.
    let policy = |p: &str| {
        s.kubectl(&[
            "patch",
            "service",
            "four",
            "--type=merge",
            "-p",
            &format!(r#"{{"spec":{{"ipFamilyPolicy":"{p}"}}}}"#),
        ])
        .unwrap();
    };
    let first = get("four", "{.spec.clusterIP}");
    policy("PreferDualStack");
    assert_eq!(get("four", "{.spec.ipFamilies}"), r#"["IPv4","IPv6"]"#);
    assert_eq!(get("four", "{.spec.clusterIP}"), first, "the primary stays");
    policy("SingleStack");
    assert_eq!(get("four", "{.spec.ipFamilies}"), r#"["IPv4"]"#);
    assert_eq!(get("four", "{.spec.clusterIPs}"), format!(r#"["{first}"]"#));

    set_pod_status(
        &s,
        "web-1",
        r#"{"status":{"podIP":"10.244.1.5","podIPs":[{"ip":"10.244.1.5"},{"ip":"fd00:244:1::5"}],"conditions":[{"type":"Ready","status":"True"}]}}"#,
    );
    let slices = |svc: &str| {
        jsonpath(
            &s,
            &[
                "get",
                "endpointslices",
                "-l",
                &format!("kubernetes.io/service-name={svc}"),
            ],
            "{range .items[*]}{.addressType}={.endpoints[*].addresses[0]} {end}",
        )
    };
    let dual = eventually("a slice per family", || {
        let got = slices("dual");
        (got.contains("IPv4=10.244.1.5") && got.contains("IPv6=fd00:244:1::5")).then_some(got)
    });
    assert_eq!(dual.split_whitespace().count(), 2, "{dual}");
    assert_eq!(slices("six").trim(), "IPv6=fd00:244:1::5");
    assert_eq!(slices("four").trim(), "IPv4=10.244.1.5");
}

/// `dual` (`PreferDualStack`) over the pods `b0` and `b1` of the lab.
const LAB_OBJECTS: &str = "\
apiVersion: v1
kind: Service
metadata: {name: dual, namespace: default}
spec:
  ipFamilyPolicy: PreferDualStack
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Pod
metadata: {name: b0, namespace: default, labels: {app: web}}
spec: {nodeName: node-a, containers: [{name: c, image: responder}]}
---
apiVersion: v1
kind: Pod
metadata: {name: b1, namespace: default, labels: {app: web}}
spec: {nodeName: node-a, containers: [{name: c, image: responder}]}
";

#[test]
fn a_prefer_dual_stack_service_from_kubectl_is_reached_on_both_cluster_ips_from_a_pod() {
    if !require_privileges(
        "a_prefer_dual_stack_service_from_kubectl_is_reached_on_both_cluster_ips_from_a_pod",
    ) {
        return;
    }
    let mut lab = web_lab6(2);
    lab.start_apiserver(&["--service-cluster-ip-range", "10.96.0.0/12,fd00:96::/112"])
        .unwrap();
    let dir = lab.dir().to_path_buf();
    apply(lab.apiserver(), &dir, None, "dual.yaml", LAB_OBJECTS);
    for i in 0..2 {
        let (v4, v6) = (backend_ip(i), backend_ip6(i));
        set_pod_status(
            lab.apiserver(),
            &backend_name(i),
            &format!(
                r#"{{"status":{{"podIP":"{v4}","podIPs":[{{"ip":"{v4}"}},{{"ip":"{v6}"}}],"conditions":[{{"type":"Ready","status":"True"}}]}}}}"#
            ),
        );
    }
    let ips = jsonpath(
        lab.apiserver(),
        &["get", "service", "dual"],
        "{.spec.clusterIPs[*]}",
    );
    let ips: Vec<std::net::IpAddr> = ips
        .split_whitespace()
        .map(|ip| ip.parse().unwrap())
        .collect();
    assert!(
        ips.len() == 2 && ips[0].is_ipv4() && ips[1].is_ipv6(),
        "{ips:?}"
    );
    start_agent_on_apiserver(&mut lab);
    let client = &lab.pod("client").ns;
    for ip in ips {
        let to = SocketAddr::from((ip, 80)).to_string();
        // Until the slices reach the agent, then until both pods answered.
        let mut seen = BTreeSet::new();
        eventually(&format!("both backends through {to}"), || {
            let out = probe(&lab, client, &["tcp", &to]);
            if out.iter().any(|l| l.starts_with("reply ")) {
                assert_eq!(line(&out, "peer "), to, "getpeername shows the ClusterIP");
                seen.insert(who(line(&out, "reply ")));
            }
            (seen.len() == 2).then_some(())
        });
        assert_eq!(seen, BTreeSet::from(["b0".to_owned(), "b1".to_owned()]));
    }
}
