//! End-to-end: the local API server's EndpointSlice controller writes each
//! endpoint's zone and the hints `trafficDistribution` asks for, as
//! kube-controller-manager does; the agent's use of them is in the golden
//! cases (`topology-*.txtar`).
#![allow(clippy::unwrap_used, reason = "tests: a failure fails the test")]

use crate::apiserver::{apply, eventually, jsonpath, server, set_pod_status};

const CLUSTER: &str = "\
apiVersion: v1
kind: Node
metadata: {name: node-a, labels: {topology.kubernetes.io/zone: zone-a}}
---
apiVersion: v1
kind: Node
metadata: {name: node-b, labels: {topology.kubernetes.io/zone: zone-b}}
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  trafficDistribution: PreferClose
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Pod
metadata: {name: web-a, labels: {app: web}}
spec: {nodeName: node-a, containers: [{name: c, image: nginx}]}
---
apiVersion: v1
kind: Pod
metadata: {name: web-b, labels: {app: web}}
spec: {nodeName: node-b, containers: [{name: c, image: nginx}]}
";

#[test]
fn endpoint_slices_carry_zones_and_the_hints_traffic_distribution_asks_for() {
    let (dir, s) = server(&[]);
    apply(&s, dir.path(), None, "cluster.yaml", CLUSTER);
    for (pod, ip) in [("web-a", "10.244.1.5"), ("web-b", "10.244.2.5")] {
        let status = format!(
            r#"{{"status":{{"podIP":"{ip}","conditions":[{{"type":"Ready","status":"True"}}]}}}}"#
        );
        set_pod_status(&s, pod, &status);
    }
    let endpoints = || {
        jsonpath(
            &s,
            &[
                "get",
                "endpointslices",
                "-l",
                "kubernetes.io/service-name=web",
            ],
            "{.items[*].endpoints}",
        )
    };
    let zoned = eventually("endpoints with zone hints", || {
        let e = endpoints();
        (e.contains("10.244.1.5") && e.contains("10.244.2.5")).then_some(e)
    });
    for want in [
        r#""zone":"zone-a""#,
        r#""hints":{"forZones":[{"name":"zone-a"}]}"#,
        r#""hints":{"forZones":[{"name":"zone-b"}]}"#,
    ] {
        assert!(zoned.contains(want), "{want} in {zoned}");
    }
    assert!(!zoned.contains("forNodes"), "{zoned}");

    s.kubectl(&[
        "patch",
        "service",
        "web",
        "--type=merge",
        "-p",
        r#"{"spec":{"trafficDistribution":"PreferSameNode"}}"#,
    ])
    .unwrap();
    let noded = eventually("node hints", || {
        let e = endpoints();
        e.contains("forNodes").then_some(e)
    });
    assert!(
        noded.contains(r#""forNodes":[{"name":"node-a"}]"#)
            && noded.contains(r#""forZones":[{"name":"zone-b"}]"#),
        "{noded}"
    );

    // Without trafficDistribution: no hints.
    s.kubectl(&[
        "patch",
        "service",
        "web",
        "--type=json",
        "-p",
        r#"[{"op":"remove","path":"/spec/trafficDistribution"}]"#,
    ])
    .unwrap();
    eventually("no hints", || {
        (!endpoints().contains("hints")).then_some(())
    });
}
