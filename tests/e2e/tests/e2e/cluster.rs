//! End-to-end: the agent on a cluster. `sluice-apiserver` runs in the lab's
//! node namespace, kubectl changes Services and EndpointSlices, and traffic
//! from a pod follows; through API server outages, 410 relists, agent
//! crashes, in-cluster credentials and the manifests in manifests/.
#![allow(clippy::unwrap_used, reason = "tests: a failure fails the test")]

use std::{
    collections::BTreeSet,
    fs,
    net::{Ipv4Addr, SocketAddr, TcpStream},
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use sluice_lab::{
    AgentOptions, AgentSource, Lab, default_bin,
    lab::request_line,
    manifest::{self, Endpoint, Port},
    require_privileges,
};

use crate::common::{SERVICE_CIDR, T, VIP, backend_ip, http, http_get, spread, web_lab, who};

/// Bounds every wait on the agent catching up with the API server.
const CATCH_UP: Duration = Duration::from_secs(20);
const APPLIED: &str = "Services applied";

/// A lab with a client, `n` backends and the API server in the node
/// namespace; the agent is not started.
fn cluster_lab(n: usize) -> Lab {
    let mut lab = web_lab(n);
    lab.start_apiserver(&[]).unwrap();
    lab
}

fn kubectl(lab: &mut Lab, args: &[&str]) -> String {
    lab.apiserver().kubectl(args).unwrap()
}

/// `kubectl apply -f` of a YAML text.
fn kubectl_apply(lab: &mut Lab, yaml: &str) {
    let path = lab.dir().join("apply.yaml");
    fs::write(&path, yaml).unwrap();
    kubectl(lab, &["apply", "-f", path.to_str().unwrap()]);
}

/// `web` (80/TCP → 8080) with one slice `web-1` on the given backends.
fn web(backends: &[usize]) -> String {
    http_service("web", VIP, backends)
}

/// A Service `name` (80/TCP → 8080) with one slice `<name>-1`.
fn http_service(name: &str, vip: Ipv4Addr, backends: &[usize]) -> String {
    manifest::service_with_endpoints(
        name,
        vip,
        &[Port::tcp("http", 80)],
        &[Port::tcp("http", 8080)],
        &eps(backends),
    )
}

fn eps(backends: &[usize]) -> Vec<Endpoint> {
    backends
        .iter()
        .map(|&i| Endpoint::ready(backend_ip(i)))
        .collect()
}

fn slice(name: &str, service: &str, backends: &[usize]) -> String {
    manifest::endpoint_slice(name, service, &[Port::tcp("http", 8080)], &eps(backends))
}

fn kubeconfig_agent(lab: &mut Lab) -> AgentOptions {
    AgentOptions {
        source: AgentSource::Kubeconfig(lab.apiserver().admin_kubeconfig()),
        service_cidr: Some(SERVICE_CIDR.into()),
        ..AgentOptions::default()
    }
}

/// Waits until `cond` holds, re-checking after each model the agent
/// applies (its log line is the signal), within `CATCH_UP`.
fn until_applied(lab: &mut Lab, what: &str, mut cond: impl FnMut(&Lab) -> bool) {
    let deadline = Instant::now() + CATCH_UP;
    loop {
        let mark = lab.agent().log_len();
        if cond(lab) {
            return;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || lab.agent().wait_for(APPLIED, mark, left).is_err() {
            // One last look: the change may have landed with the last line.
            assert!(
                cond(lab),
                "timed out waiting for {what}; agent log:\n{}",
                lab.agent().log()
            );
            return;
        }
    }
}

/// The backends that answer on `to` over `tries` new connections; a
/// refused or unanswered connection counts as "-".
fn answering(lab: &Lab, to: SocketAddr, tries: usize) -> BTreeSet<String> {
    (0..tries)
        .map(|_| {
            lab.pod("client")
                .tcp_request(to, T)
                .map_or_else(|_| "-".to_owned(), |a| who(&a))
        })
        .collect()
}

fn names(list: &[&str]) -> BTreeSet<String> {
    list.iter().map(|s| (*s).to_owned()).collect()
}

/// A connection to an address the agent has no entry for is refused at
/// once (the Service CIDR is configured), not left to time out.
fn refused(lab: &Lab, to: SocketAddr) -> bool {
    lab.pod("client").tcp_request(to, T).is_err()
}

fn status(lab: &Lab) -> String {
    lab.status(&default_bin()).unwrap()
}

#[test]
fn kubectl_changes_to_services_and_slices_steer_traffic() {
    if !require_privileges("kubectl_changes_to_services_and_slices_steer_traffic") {
        return;
    }
    let mut lab = cluster_lab(3);
    kubectl_apply(&mut lab, &web(&[0]));
    let opts = kubeconfig_agent(&mut lab);
    lab.start_agent(&opts).unwrap();
    assert_eq!(answering(&lab, http(), 6), names(&["b0"]));

    // A changed slice.
    kubectl_apply(&mut lab, &slice("web-1", "web", &[1]));
    until_applied(&mut lab, "web-1 → b1", |lab| {
        answering(lab, http(), 6) == names(&["b1"])
    });

    // A second slice of the same Service is merged with the first.
    kubectl_apply(&mut lab, &slice("web-2", "web", &[2]));
    until_applied(&mut lab, "web-1 + web-2", |lab| {
        answering(lab, http(), 30) == names(&["b1", "b2"])
    });

    // A changed Service: a new port number; the old one is rejected.
    let moved = manifest::service("web", VIP, &[Port::tcp("http", 81)]);
    kubectl_apply(&mut lab, &moved);
    let on_81 = SocketAddr::from((VIP, 81));
    until_applied(&mut lab, "web on port 81", |lab| {
        lab.pod("client").tcp_request(on_81, T).is_ok()
    });
    assert!(refused(&lab, http()));

    // Services that are not ours: another proxy's (by label), and headless.
    let other_vip = Ipv4Addr::new(10, 96, 0, 20);
    kubectl_apply(
        &mut lab,
        &format!(
            "{}---\n{}---\n{}",
            manifest::service("other", other_vip, &[Port::tcp("http", 80)]).replace(
                "  namespace: default\n",
                "  namespace: default\n  labels:\n    service.kubernetes.io/service-proxy-name: someone-else\n"
            ),
            slice("other-1", "other", &[0]),
            "apiVersion: v1\nkind: Service\nmetadata: {name: headless, namespace: default}\n\
             spec: {clusterIP: None, ports: [{port: 80}]}\n",
        ),
    );
    // The marker: a Service created after them shows they were seen.
    let marker_vip = Ipv4Addr::new(10, 96, 0, 30);
    kubectl_apply(&mut lab, &http_service("marker", marker_vip, &[0]));
    until_applied(&mut lab, "marker", |lab| {
        lab.pod("client")
            .tcp_request(SocketAddr::from((marker_vip, 80)), T)
            .is_ok()
    });
    let st = status(&lab);
    assert!(st.contains("default/marker"), "{st}");
    assert!(
        !st.contains("default/other") && !st.contains("default/headless"),
        "{st}"
    );
    assert!(refused(&lab, SocketAddr::from((other_vip, 80))));

    // Deleted: its entry goes, and its ClusterIP is refused.
    kubectl(&mut lab, &["delete", "service", "web"]);
    until_applied(&mut lab, "web deleted", |lab| refused(lab, on_81));
    assert!(!status(&lab).contains("default/web"));
}

#[test]
fn with_the_apiserver_down_traffic_flows_and_changes_apply_after_it_returns() {
    if !require_privileges(
        "with_the_apiserver_down_traffic_flows_and_changes_apply_after_it_returns",
    ) {
        return;
    }
    let mut lab = cluster_lab(3);
    let gone_vip = Ipv4Addr::new(10, 96, 0, 40);
    kubectl_apply(&mut lab, &web(&[0]));
    kubectl_apply(&mut lab, &http_service("gone", gone_vip, &[2]));
    let mut opts = kubeconfig_agent(&mut lab);
    // Retries are logged at debug level: they are the signal that the
    // agent kept trying while the server was down.
    opts.extra_args = vec!["--log-level".into(), "info,sluice_agent=debug".into()];
    lab.start_agent(&opts).unwrap();
    let mut conn = lab.pod("client").tcp_connect(http(), T).unwrap();
    assert_eq!(who(&request_line(&mut conn, T).unwrap()), "b0");

    let mark = lab.agent().log_len();
    lab.apiserver().stop().unwrap();
    lab.agent()
        .wait_for("keeps its current state", mark, CATCH_UP)
        .unwrap();
    // Several failed retries, one warning.
    let mut at = mark;
    for _ in 0..3 {
        lab.agent().wait_for("API server:", at, CATCH_UP).unwrap();
        at = lab.agent().log_len();
    }
    // Still served: an established connection, new connections, both Services.
    assert_eq!(who(&request_line(&mut conn, T).unwrap()), "b0");
    assert_eq!(answering(&lab, http(), 6), names(&["b0"]));
    assert_eq!(
        answering(&lab, SocketAddr::from((gone_vip, 80)), 3),
        names(&["b2"])
    );
    let log = lab.agent().log();
    assert_eq!(
        log.matches("keeps its current state").count(),
        1,
        "one warning for the outage, not one per retry:\n{log}"
    );

    // Back, and changed before the agent reconnects: web moves to b1 and
    // `gone` is deleted.
    lab.apiserver().restart().unwrap();
    kubectl_apply(&mut lab, &slice("web-1", "web", &[1]));
    kubectl(&mut lab, &["delete", "service", "gone"]);
    kubectl(&mut lab, &["delete", "endpointslice", "gone-1"]);
    until_applied(&mut lab, "the changes made at the restart", |lab| {
        answering(lab, http(), 6) == names(&["b1"])
            && refused(lab, SocketAddr::from((gone_vip, 80)))
    });
    lab.agent()
        .wait_for("reachable again", mark, CATCH_UP)
        .unwrap();
    // The established connection to b0 was not cut by the change.
    assert_eq!(who(&request_line(&mut conn, T).unwrap()), "b0");
}

#[test]
fn a_forced_410_relist_fails_no_request() {
    if !require_privileges("a_forced_410_relist_fails_no_request") {
        return;
    }
    let mut lab = cluster_lab(2);
    kubectl_apply(&mut lab, &web(&[0, 1]));
    // More Services, so that the relist has something to gather.
    let mut many = String::new();
    for i in 0..50u8 {
        many.push_str(&http_service(
            &format!("s{i}"),
            Ipv4Addr::new(10, 96, 1, i + 1),
            &[0],
        ));
        many.push_str("---\n");
    }
    kubectl_apply(&mut lab, &many);
    let opts = kubeconfig_agent(&mut lab);
    lab.start_agent(&opts).unwrap();
    let last = SocketAddr::from((Ipv4Addr::new(10, 96, 1, 50), 80));
    until_applied(&mut lab, "s49", |lab| {
        lab.pod("client").tcp_request(last, T).is_ok()
    });

    // A request loop through the ClusterIP, on its own thread.
    let stop = Arc::new(AtomicBool::new(false));
    let looper = {
        let stop = Arc::clone(&stop);
        lab.pod("client")
            .ns
            .spawn(move || {
                let (mut ok, mut failed) = (0u32, Vec::new());
                // Bounded: at most this many requests, each bounded by T.
                for _ in 0..100_000 {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let r = TcpStream::connect_timeout(&http(), T)
                        .and_then(|mut s| request_line(&mut s, T).map_err(std::io::Error::other));
                    match r {
                        Ok(_) => ok += 1,
                        Err(e) => failed.push(e.to_string()),
                    }
                }
                (ok, failed)
            })
            .unwrap()
    };

    // A write the agent does not watch, then compaction: the agent's
    // watches end and resuming from their resourceVersion gets 410 Gone.
    let mark = lab.agent().log_len();
    kubectl(&mut lab, &["create", "configmap", "unrelated"]);
    let empty = lab.dir().join("empty.json");
    fs::write(&empty, "{}").unwrap();
    kubectl(
        &mut lab,
        &[
            "create",
            "--raw",
            "/sluice-debug/compact",
            "-f",
            empty.to_str().unwrap(),
        ],
    );
    lab.agent()
        .wait_for("relisted Services", mark, CATCH_UP)
        .unwrap();
    lab.agent()
        .wait_for("relisted EndpointSlices", mark, CATCH_UP)
        .unwrap();
    // And a change after the relist is still followed.
    kubectl_apply(&mut lab, &slice("web-1", "web", &[1]));
    until_applied(&mut lab, "web-1 → b1", |lab| {
        answering(lab, http(), 4) == names(&["b1"])
    });
    stop.store(true, Ordering::SeqCst);
    let (ok, failed) = looper.join().unwrap().unwrap();
    assert!(ok > 0);
    assert!(
        failed.is_empty(),
        "{} of {} requests failed, first: {:?}",
        failed.len(),
        ok as usize + failed.len(),
        failed.iter().take(5).collect::<Vec<_>>()
    );
}

#[test]
fn kill_9_and_restart_keeps_established_connections_and_catches_up() {
    if !require_privileges("kill_9_and_restart_keeps_established_connections_and_catches_up") {
        return;
    }
    let mut lab = cluster_lab(3);
    let gone_vip = Ipv4Addr::new(10, 96, 0, 40);
    kubectl_apply(&mut lab, &web(&[0]));
    kubectl_apply(&mut lab, &http_service("gone", gone_vip, &[2]));
    let opts = kubeconfig_agent(&mut lab);
    lab.start_agent(&opts).unwrap();
    let mut conn = lab.pod("client").tcp_connect(http(), T).unwrap();
    assert_eq!(who(&request_line(&mut conn, T).unwrap()), "b0");

    let exit = lab.take_agent().unwrap().kill().unwrap();
    assert!(!exit.success());
    assert_eq!(who(&request_line(&mut conn, T).unwrap()), "b0");
    // While the agent is away: web gains b1, and `gone` is deleted.
    kubectl_apply(&mut lab, &slice("web-1", "web", &[0, 1]));
    kubectl(&mut lab, &["delete", "service", "gone"]);

    lab.start_agent(&opts).unwrap();
    let log = lab.agent().log();
    assert!(log.contains("adopted the pinned maps"), "{log}");
    assert!(log.contains("took over the pinned link"), "{log}");
    assert_eq!(
        who(&request_line(&mut conn, T).unwrap()),
        "b0",
        "the connection survived"
    );
    assert_eq!(spread(&lab, http(), 2, 60).len(), 2);
    assert!(
        refused(&lab, SocketAddr::from((gone_vip, 80))),
        "deleted while the agent was away"
    );
    assert!(!status(&lab).contains("default/gone"));
    assert_eq!(who(&request_line(&mut conn, T).unwrap()), "b0");
}

#[test]
fn readyz_waits_for_the_first_sync_and_healthz_answers_throughout() {
    if !require_privileges("readyz_waits_for_the_first_sync_and_healthz_answers_throughout") {
        return;
    }
    let mut lab = cluster_lab(1);
    kubectl_apply(&mut lab, &web(&[0]));
    let mut opts = kubeconfig_agent(&mut lab);
    opts.extra_args
        .extend(["--metrics-per-service".into(), "true".into()]);
    lab.apiserver().stop().unwrap();
    lab.spawn_agent(&opts).unwrap();
    let health = SocketAddr::from((Ipv4Addr::LOCALHOST, 10256));
    // The health port comes up before any sync; the agent says so, and
    // then tries the API server.
    lab.agent()
        .wait_for("serving /healthz", 0, CATCH_UP)
        .unwrap();
    lab.agent()
        .wait_for("keeps its current state", 0, CATCH_UP)
        .unwrap();
    assert_eq!(http_get(&lab, health, "/healthz").unwrap().0, 200);
    let (code, body) = http_get(&lab, health, "/readyz").unwrap();
    assert_eq!(code, 503, "not ready before the first sync: {body}");
    assert!(!lab.agent().log().contains("sluice is ready"));
    assert!(
        lab.pod("client").tcp_request(http(), T).is_err(),
        "no Service before the first sync"
    );

    lab.apiserver().restart().unwrap();
    lab.agent()
        .wait_for("sluice is ready", 0, CATCH_UP)
        .unwrap();
    assert_eq!(http_get(&lab, health, "/readyz").unwrap().0, 200);
    assert_eq!(answering(&lab, http(), 3), names(&["b0"]));
    // The dataplane's counters, from the pinned maps, on /metrics (per
    // Service, as asked): walked every 5 s away from the request, so the
    // three flows show within a few walks.
    let flows_line = |metrics: &str| {
        metrics
            .lines()
            .find(|l| {
                l.starts_with("sluice_service_new_flows_total{service=\"default/web:http\",frontend=\"10.96.0.10:80/TCP\"}")
            })
            .map(str::to_owned)
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    let metrics = loop {
        let (_, metrics) = http_get(&lab, health, "/metrics").unwrap();
        let done = flows_line(&metrics).is_some_and(|l| l.ends_with(" 3"));
        if done || Instant::now() > deadline {
            break metrics;
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    let flows = flows_line(&metrics).unwrap_or_else(|| panic!("{metrics}"));
    assert!(
        flows.ends_with(" 3"),
        "three requests, three flows: {flows}"
    );
    assert!(
        metrics.contains("sluice_dataplane_drops_total{reason=\"no_endpoints\"}"),
        "{metrics}"
    );
}

/// The repository's manifests/ directory.
fn manifests_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../manifests")
}

/// The agent's account can do exactly what it needs: read Services,
/// EndpointSlices and Nodes, and nothing else.
fn assert_least_privilege(lab: &mut Lab) {
    let sa = "system:serviceaccount:sluice:sluice";
    let admin = lab.apiserver().admin_kubeconfig();
    let can = |lab: &mut Lab, verb: &str, resource: &str| {
        let out = lab
            .apiserver()
            .kubectl_output(&admin, &["auth", "can-i", verb, resource, "--as", sa, "-A"])
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim() == "yes"
    };
    for resource in ["services", "endpointslices.discovery.k8s.io", "nodes"] {
        for verb in ["get", "list", "watch"] {
            assert!(can(lab, verb, resource), "{sa} cannot {verb} {resource}");
        }
        for verb in ["create", "update", "patch", "delete"] {
            assert!(!can(lab, verb, resource), "{sa} can {verb} {resource}");
        }
    }
    for resource in [
        "secrets",
        "configmaps",
        "pods",
        "serviceaccounts",
        "certificatesigningrequests.certificates.k8s.io",
    ] {
        assert!(!can(lab, "get", resource), "{sa} can get {resource}");
        assert!(!can(lab, "list", resource), "{sa} can list {resource}");
    }
}

#[test]
fn the_deployment_manifests_apply_grant_least_privilege_and_run_in_cluster() {
    if !require_privileges(
        "the_deployment_manifests_apply_grant_least_privilege_and_run_in_cluster",
    ) {
        return;
    }
    let mut lab = cluster_lab(2);
    let dir = manifests_dir();
    let out = kubectl(&mut lab, &["apply", "-f", dir.to_str().unwrap()]);
    for object in [
        "namespace/sluice",
        "serviceaccount/sluice",
        "clusterrole.rbac.authorization.k8s.io/sluice",
        "clusterrolebinding.rbac.authorization.k8s.io/sluice",
        "configmap/sluice",
        "daemonset.apps/sluice",
    ] {
        assert!(out.contains(object), "{object} not applied:\n{out}");
    }

    assert_least_privilege(&mut lab);

    // In-cluster configuration with a token the API server issued for the
    // account, and the config from the ConfigMap.
    let token = kubectl(&mut lab, &["create", "token", "sluice", "-n", "sluice"]);
    let sa_dir = lab.dir().join("serviceaccount");
    fs::create_dir_all(&sa_dir).unwrap();
    fs::write(sa_dir.join("token"), token.trim()).unwrap();
    fs::copy(lab.apiserver().ca(), sa_dir.join("ca.crt")).unwrap();
    fs::write(sa_dir.join("namespace"), "sluice").unwrap();
    let config = kubectl(
        &mut lab,
        &[
            "get",
            "configmap",
            "sluice",
            "-n",
            "sluice",
            "-o",
            "jsonpath={.data.sluice\\.yaml}",
        ],
    );
    let config_file = lab.dir().join("sluice.yaml");
    fs::write(&config_file, config).unwrap();
    kubectl_apply(&mut lab, &web(&[0]));
    kubectl_apply(
        &mut lab,
        "apiVersion: v1\nkind: Node\nmetadata: {name: lab-node}\nstatus:\n  addresses: [{type: InternalIP, address: 192.0.2.10}]\n",
    );

    let port = lab.apiserver().port();
    let opts = AgentOptions {
        source: AgentSource::InCluster {
            dir: sa_dir,
            host: "127.0.0.1".into(),
            port,
        },
        // The ConfigMap's file, with the lab's pin directory (a flag wins).
        extra_args: vec![
            "--config".into(),
            config_file.display().to_string(),
            "--node-name".into(),
            "lab-node".into(),
        ],
        ..AgentOptions::default()
    };
    lab.start_agent(&opts).unwrap();
    let log = lab.agent().log();
    assert!(log.contains("in-cluster"), "{log}");
    // The Node watch is listed on its own, maybe after readiness.
    let node = lab.agent().wait_for("this node", 0, CATCH_UP).unwrap();
    assert!(
        node.contains("lab-node") && node.contains("InternalIP=192.0.2.10"),
        "{node}"
    );
    assert_eq!(answering(&lab, http(), 6), names(&["b0"]));
    // The ConfigMap turns on node-local DNS at 169.254.20.10.
    let dig = lab
        .pod("client")
        .ns
        .command("dig")
        .args([
            "+short",
            "+time=2",
            "+tries=1",
            "@169.254.20.10",
            "web.default.svc.cluster.local",
        ])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&dig.stdout).trim(), VIP.to_string());
    kubectl_apply(&mut lab, &slice("web-1", "web", &[1]));
    until_applied(&mut lab, "web-1 → b1", |lab| {
        answering(lab, http(), 6) == names(&["b1"])
    });
    // Forbidden requests would show in the log (`reason: "Forbidden",
    // code: 403`; a bare "403" may be digits of a timestamp).
    let log = lab.agent().log();
    assert!(
        !log.contains("code: 403") && !log.contains("Forbidden"),
        "{log}"
    );
}

/// `kubeproxy_network_programming_duration_seconds_count` on the health port.
fn programming_count(lab: &Lab) -> u64 {
    let health = SocketAddr::from((Ipv4Addr::LOCALHOST, 10256));
    let (_, metrics) = http_get(lab, health, "/metrics").unwrap();
    metrics
        .lines()
        .find_map(|l| l.strip_prefix("kubeproxy_network_programming_duration_seconds_count "))
        .unwrap_or_else(|| panic!("no programming latency in\n{metrics}"))
        .parse()
        .unwrap()
}

#[test]
fn an_endpoint_change_through_the_api_server_is_timed_to_the_maps() {
    if !require_privileges("an_endpoint_change_through_the_api_server_is_timed_to_the_maps") {
        return;
    }
    let mut lab = cluster_lab(1);
    // A Service with a selector: the API server's EndpointSlice controller
    // writes its slices, with their trigger time.
    let vip = Ipv4Addr::new(10, 96, 0, 20);
    kubectl_apply(
        &mut lab,
        &format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: app, namespace: default}}\nspec:\n  clusterIP: {vip}\n  selector: {{app: web}}\n  ports: [{{name: http, port: 80, targetPort: 8080}}]\n---\n\
             apiVersion: v1\nkind: Pod\nmetadata: {{name: b0, namespace: default, labels: {{app: web}}}}\nspec:\n  containers: [{{name: c, image: web}}]\n"
        ),
    );
    // The controller writes slices from its own task, after the apply
    // returns. A slice written after the agent's first list would be a
    // change, so the agent starts once the controller has caught up: it
    // handles events in order, and a later Service's slice means it has
    // handled the Service and the Pod above.
    kubectl_apply(
        &mut lab,
        "apiVersion: v1\nkind: Service\nmetadata: {name: fence, namespace: default}\nspec:\n  selector: {app: fence}\n  ports: [{port: 80}]\n",
    );
    let deadline = Instant::now() + CATCH_UP;
    while kubectl(
        &mut lab,
        &[
            "get",
            "endpointslices",
            "-l",
            "kubernetes.io/service-name=fence",
            "-o",
            "name",
        ],
    )
    .trim()
    .is_empty()
    {
        assert!(
            Instant::now() < deadline,
            "the controller wrote no slice for fence"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let opts = kubeconfig_agent(&mut lab);
    lab.start_agent(&opts).unwrap();
    lab.agent()
        .wait_for("sluice is ready", 0, CATCH_UP)
        .unwrap();
    assert_eq!(programming_count(&lab), 0, "the first list is not a change");
    // The Pod becomes ready: the controller changes the slice, the agent
    // programs it and times it from the trigger.
    kubectl(
        &mut lab,
        &[
            "patch",
            "pod",
            "b0",
            "--subresource=status",
            "--type=merge",
            "-p",
            &format!(
                r#"{{"status":{{"podIP":"{}","conditions":[{{"type":"Ready","status":"True"}}]}}}}"#,
                backend_ip(0)
            ),
        ],
    );
    let to = SocketAddr::from((vip, 80));
    until_applied(&mut lab, "the ready Pod behind the Service", |lab| {
        answering(lab, to, 1) == names(&["b0"])
    });
    assert!(programming_count(&lab) >= 1);
}
