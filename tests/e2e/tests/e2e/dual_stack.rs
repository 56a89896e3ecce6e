//! End-to-end: the local API server with a service range per family, as
//! kube-apiserver: ClusterIPs by `ipFamilyPolicy` and `ipFamilies`, and an
//! EndpointSlice per family from the pods' `podIPs`. (The agent's IPv6
//! dataplane is issue 20's next part.)
#![allow(clippy::unwrap_used, reason = "tests: a failure fails the test")]

use crate::apiserver::{apply, eventually, jsonpath, server, set_pod_status};

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
