//! End-to-end: the agent's life cycle and tools. Restarts that drop no flow
//! (on TCX links and on netlink filters), cleanup, status, independent
//! agents, configuration, manifest handling.
#![allow(clippy::unwrap_used, reason = "tests: a failure fails the test")]

use std::{fs, net::SocketAddr, process::Command, time::Duration};

use aya::maps::MapData;
use sluice_lab::{
    AgentOptions, Lab, default_bin,
    lab::request_line,
    manifest::{self, Port},
    require_privileges,
};

use crate::common::{
    APPLY, SERVICE_CIDR, T, VIP, apply, http, http_get, spread, web_lab, web_manifest, who,
};

fn status(lab: &Lab) -> String {
    lab.status(&default_bin()).unwrap()
}

/// A drop or event counter from `sluice status`.
fn counter(status: &str, label: &str) -> u64 {
    status
        .split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{label}=")))
        .unwrap_or_else(|| panic!("no counter {label} in:\n{status}"))
        .parse()
        .unwrap()
}

/// The TC filters at the ingress of the client pod's interface (`tc`).
fn client_filters(lab: &Lab) -> String {
    let host_if = &lab.pod("client").host_if;
    let out = lab
        .node()
        .command("tc")
        .args(["filter", "show", "dev", host_if, "ingress"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Stops (SIGTERM) or kills (SIGKILL) the agent, checks that traffic and an
/// established connection keep flowing without it, restarts it, and checks
/// that it took the dataplane over without breaking the connection.
fn restart_keeps_flows(kill: bool) {
    restart_keeps_flows_on(kill, "tcx");
}

/// `restart_keeps_flows` with `--tc-attach path`.
fn restart_keeps_flows_on(kill: bool, path: &str) {
    let opts = AgentOptions {
        extra_args: vec!["--tc-attach".into(), path.into()],
        ..AgentOptions::default()
    };
    let mut lab = web_lab(3);
    lab.start_agent(&opts).unwrap();
    let log = lab.agent().log();
    assert!(
        log.lines()
            .any(|l| l.contains("TC attach path") && l.contains(path)),
        "{log}"
    );
    let status = lab.status(&default_bin()).unwrap();
    assert!(
        status.contains(&format!("TC attach path: {path}")),
        "{status}"
    );
    if path == "netlink" {
        // A direct-action filter of Sluice's priority and handle, and no
        // TCX link pinned for the pods' interfaces.
        let filters = client_filters(&lab);
        assert!(
            filters.contains("tc_ingress")
                && filters.contains("pref 1 ")
                && filters.contains("handle 0x5c1")
                && filters.contains("direct-action"),
            "{filters}"
        );
        let pinned = fs::read_dir(lab.pin_dir().join("links")).map_or(0, |d| {
            d.flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with("tc_ingress"))
                .count()
        });
        assert_eq!(pinned, 0, "no TCX link");
    }
    let mut conn = lab.pod("client").tcp_connect(http(), T).unwrap();
    let backend = who(&request_line(&mut conn, T).unwrap());

    let agent = lab.take_agent().unwrap();
    let exit = if kill {
        agent.kill().unwrap()
    } else {
        agent.stop().unwrap()
    };
    if !kill {
        assert!(exit.success(), "SIGTERM exits cleanly: {exit}");
    }
    // No agent: the pinned program and maps keep serving.
    assert_eq!(who(&request_line(&mut conn, T).unwrap()), backend);
    assert_eq!(spread(&lab, http(), 3, 60).len(), 3);

    lab.start_agent(&opts).unwrap();
    let log = lab.agent().log();
    assert!(log.contains("adopted the pinned maps"), "{log}");
    let took_over = if path == "netlink" {
        "took over the TC filter"
    } else {
        "took over the pinned link"
    };
    assert!(log.contains(took_over), "{log}");
    assert!(
        log.contains("map_ops=0"),
        "an unchanged state rewrites nothing:\n{log}"
    );
    assert_eq!(
        who(&request_line(&mut conn, T).unwrap()),
        backend,
        "the connection survived the restart"
    );
    // The new agent is in charge: a change is applied.
    apply(&mut lab, "web.yaml", &web_manifest(&[0]));
    for _ in 0..10 {
        assert_eq!(
            who(&lab.pod("client").tcp_request(http(), T).unwrap()),
            "b0"
        );
    }
}

#[test]
fn sigterm_leaves_the_dataplane_serving_and_a_restart_takes_it_over() {
    if require_privileges("sigterm_leaves_the_dataplane_serving_and_a_restart_takes_it_over") {
        restart_keeps_flows(false);
    }
}

#[test]
fn with_netlink_filters_sigterm_leaves_the_dataplane_serving_and_a_restart_takes_it_over() {
    if require_privileges(
        "with_netlink_filters_sigterm_leaves_the_dataplane_serving_and_a_restart_takes_it_over",
    ) {
        restart_keeps_flows_on(false, "netlink");
    }
}

#[test]
fn with_netlink_filters_a_killed_agent_leaves_the_dataplane_serving_and_a_restart_takes_it_over() {
    if require_privileges(
        "with_netlink_filters_a_killed_agent_leaves_the_dataplane_serving_and_a_restart_takes_it_over",
    ) {
        restart_keeps_flows_on(true, "netlink");
    }
}

#[test]
fn a_killed_agent_leaves_the_dataplane_serving_and_a_restart_takes_it_over() {
    if require_privileges("a_killed_agent_leaves_the_dataplane_serving_and_a_restart_takes_it_over")
    {
        restart_keeps_flows(true);
    }
}

#[test]
fn pins_of_interfaces_deleted_while_the_agent_was_down_are_removed() {
    if !require_privileges("pins_of_interfaces_deleted_while_the_agent_was_down_are_removed") {
        return;
    }
    let mut lab = web_lab(1);
    lab.add_pod("gone", std::net::Ipv4Addr::new(10, 244, 1, 77))
        .unwrap();
    lab.start_agent(&AgentOptions::default()).unwrap();
    let links = lab.pin_dir().join("links");
    // The TC links' pins (socket LB's are there too).
    let pins = || {
        fs::read_dir(&links)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("tc_ingress"))
            .count()
    };
    assert_eq!(pins(), 3, "client, b0 and gone are attached");
    lab.take_agent().unwrap().stop().unwrap();
    let gone_if = lab.pod("gone").host_if.clone();
    lab.node().ip(&["link", "del", &gone_if]).unwrap();
    lab.start_agent(&AgentOptions::default()).unwrap();
    assert!(
        lab.agent()
            .log()
            .contains("removing the pin of a deleted interface")
    );
    assert_eq!(pins(), 2);
    lab.pod("client").tcp_request(http(), T).unwrap();
}

/// Runs an agent on `path` (`--tc-attach`), stops it, runs `sluice
/// cleanup` on the node, and checks that nothing of Sluice is left.
fn cleanup_removes_everything(path: &str) {
    let mut lab = web_lab(1);
    lab.start_agent(&AgentOptions {
        extra_args: vec!["--tc-attach".into(), path.into()],
        ..AgentOptions::default()
    })
    .unwrap();
    lab.pod("client").tcp_request(http(), T).unwrap();
    lab.take_agent().unwrap().stop().unwrap();
    let pin_dir = lab.pin_dir();
    assert!(pin_dir.join("SLUICE_SVC").exists() && pin_dir.join("links").exists());
    // On the node, as an operator runs it.
    let out = lab
        .node()
        .command(&default_bin().display().to_string())
        .arg("cleanup")
        .arg("--pin-dir")
        .arg(&pin_dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !pin_dir.exists(),
        "the pin directory (a bpffs the agent mounted) is gone"
    );
    assert!(
        !client_filters(&lab).contains("tc_ingress"),
        "no filter is left"
    );
    // No program: the ClusterIP is an address like any other, and unrouted.
    assert!(lab.pod("client").tcp_request(http(), T).is_err());
    lab.pod("client")
        .tcp_request(SocketAddr::from((crate::common::backend_ip(0), 8080)), T)
        .unwrap();
}

#[test]
fn cleanup_removes_the_programs_links_and_pins() {
    if require_privileges("cleanup_removes_the_programs_links_and_pins") {
        cleanup_removes_everything("tcx");
    }
}

#[test]
fn cleanup_removes_the_netlink_filters_and_pins() {
    if require_privileges("cleanup_removes_the_netlink_filters_and_pins") {
        cleanup_removes_everything("netlink");
    }
}

#[test]
fn status_prints_services_backends_and_counters() {
    if !require_privileges("status_prints_services_backends_and_counters") {
        return;
    }
    let mut lab = web_lab(2);
    lab.start_agent(&AgentOptions::default()).unwrap();
    for _ in 0..4 {
        lab.pod("client").tcp_request(http(), T).unwrap();
    }
    let out = status(&lab);
    for want in [
        "default/web:http",
        "10.96.0.10:80/TCP",
        "default/web:dns",
        "10.96.0.10:53/UDP",
        "-> 10.244.1.10:8080",
        "-> 10.244.1.11:8080",
    ] {
        assert!(out.contains(want), "missing `{want}` in:\n{out}");
    }
    let http_row = out
        .lines()
        .find(|l| l.contains("default/web:http"))
        .unwrap();
    let cols: Vec<&str> = http_row.split_whitespace().collect();
    assert_eq!(cols[cols.len() - 1], "4", "four new flows: {http_row}");
    assert_eq!(counter(&out, "new_flow"), 4);
}

/// mimalloc would madvise its heap for huge pages, and a fault there may
/// compact memory first (a cold start at 100,000 Services took 15 s with
/// them, 5.6 s without): the agent turns THP off for its process.
#[test]
fn the_agent_heap_takes_no_transparent_huge_pages() {
    if !require_privileges("the_agent_heap_takes_no_transparent_huge_pages") {
        return;
    }
    let mut lab = web_lab(1);
    let pid = lab
        .start_agent(&AgentOptions::default())
        .unwrap()
        .pid()
        .unwrap();
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let thp = status
        .lines()
        .find(|l| l.starts_with("THP_enabled:"))
        .unwrap_or_else(|| panic!("no THP_enabled in /proc/{pid}/status:\n{status}"));
    assert_eq!(thp.split_whitespace().nth(1), Some("0"), "{thp}");
}

#[test]
fn agents_with_different_pin_dirs_in_different_namespaces_are_independent() {
    if !require_privileges("agents_with_different_pin_dirs_in_different_namespaces_are_independent")
    {
        return;
    }
    let mut a = web_lab(2);
    let mut b = web_lab(2);
    a.start_agent(&AgentOptions::default()).unwrap();
    b.start_agent(&AgentOptions::default()).unwrap();
    assert_eq!(spread(&a, http(), 2, 40).len(), 2);
    assert_eq!(spread(&b, http(), 2, 40).len(), 2);
    // Change and then remove A's dataplane entirely; B does not notice.
    apply(&mut a, "web.yaml", &web_manifest(&[0]));
    a.take_agent().unwrap().stop().unwrap();
    let out = Command::new(default_bin())
        .arg("cleanup")
        .arg("--pin-dir")
        .arg(a.pin_dir())
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(
        spread(&b, http(), 2, 40).len(),
        2,
        "B still balances over both backends"
    );
    assert!(status(&b).contains("default/web:http"));
}

/// The sizes of the pinned conntrack maps.
fn conntrack_sizes(lab: &Lab) -> [u32; 8] {
    sluice_abi::maps::CONNTRACK.map(|name| {
        let map = MapData::from_pin(lab.pin_dir().join(name)).unwrap();
        map.info().unwrap().max_entries()
    })
}

#[test]
fn the_config_file_sets_every_option_and_rejects_unknown_keys() {
    if !require_privileges("the_config_file_sets_every_option_and_rejects_unknown_keys") {
        return;
    }
    let mut lab = web_lab(1);
    let config = lab.manifests_dir().with_file_name("sluice.yaml");
    fs::write(
        &config,
        format!("service-cidr: {SERVICE_CIDR}\nconntrack-size: 4096\nlog-level: debug\n"),
    )
    .unwrap();
    let args = vec!["--config".to_owned(), config.display().to_string()];
    lab.start_agent(&AgentOptions {
        extra_args: args,
        ..AgentOptions::default()
    })
    .unwrap();
    assert_eq!(
        conntrack_sizes(&lab),
        sluice_abi::conntrack::split_sizes(4096),
        "conntrack-size from the file"
    );
    let refused = lab
        .pod("client")
        .tcp_connect(SocketAddr::from((VIP, 81)), T)
        .unwrap_err();
    assert!(
        refused.to_string().contains("refused"),
        "service-cidr from the file: {refused:#}"
    );
    assert!(
        lab.agent().log().contains("DEBUG"),
        "log-level from the file"
    );

    // A restart with another conntrack size recreates the map, and says so.
    lab.take_agent().unwrap().stop().unwrap();
    let args = vec![
        "--config".to_owned(),
        config.display().to_string(),
        "--conntrack-size".into(),
        "8192".into(),
    ];
    lab.start_agent(&AgentOptions {
        extra_args: args,
        ..AgentOptions::default()
    })
    .unwrap();
    assert!(lab.agent().log().contains("replacing it"));
    assert_eq!(
        conntrack_sizes(&lab),
        sluice_abi::conntrack::split_sizes(8192),
        "the flag wins over the file"
    );

    fs::write(&config, "manifests: /nonexistent\nintefaces: veth*\n").unwrap();
    let out = Command::new(default_bin())
        .args(["run", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("unknown field `intefaces`"), "{stderr}");
}

#[test]
fn a_change_writes_only_the_affected_map_entries() {
    if !require_privileges("a_change_writes_only_the_affected_map_entries") {
        return;
    }
    let mut lab = web_lab(3);
    // Twenty more Services that the change does not touch.
    let others: Vec<String> = (1..=20u8)
        .map(|i| {
            let ip = std::net::Ipv4Addr::new(10, 96, 1, i);
            manifest::service(&format!("other-{i}"), ip, &[Port::tcp("", 80)])
        })
        .collect();
    lab.write_manifest("others.yaml", &others.join("---\n"))
        .unwrap();
    lab.write_manifest("web.yaml", &web_manifest(&[0, 1]))
        .unwrap();
    lab.start_agent(&AgentOptions::default()).unwrap();
    // One endpoint more, on both ports of web: a backend, a slot and the
    // count for each of the two frontends.
    let line = apply(&mut lab, "web.yaml", &web_manifest(&[0, 1, 2]));
    assert!(line.contains("map_ops=6"), "{line}");
    assert_eq!(spread(&lab, http(), 3, 60).len(), 3);
}

#[test]
fn a_broken_file_is_reported_by_name_and_everything_else_still_applies() {
    if !require_privileges("a_broken_file_is_reported_by_name_and_everything_else_still_applies") {
        return;
    }
    let mut lab = web_lab(2);
    lab.start_agent(&AgentOptions::default()).unwrap();
    let mark = lab.agent().log_len();
    // web.yaml breaks: its objects keep their last good state.
    lab.write_manifest(
        "web.yaml",
        "apiVersion: v1\nkind: Service\nmetadata: {name: web\n",
    )
    .unwrap();
    // api.yaml holds a bad Service (port 0) and a good one.
    let bad = manifest::service(
        "bad",
        std::net::Ipv4Addr::new(10, 96, 0, 30),
        &[Port::tcp("", 0)],
    );
    let good = manifest::service_with_endpoints(
        "api",
        std::net::Ipv4Addr::new(10, 96, 0, 31),
        &[Port::tcp("", 443)],
        &[Port::tcp("", 8080)],
        &[manifest::Endpoint::ready(crate::common::backend_ip(1))],
    );
    lab.write_manifest("api.yaml", &format!("{bad}---\n{good}"))
        .unwrap();
    let agent = lab.agent();
    let broken = agent.wait_for("web.yaml", mark, APPLY).unwrap();
    assert!(broken.contains("invalid YAML"), "{broken}");
    let invalid = agent.wait_for("api.yaml", mark, APPLY).unwrap();
    assert!(
        invalid.contains("Service `default/bad`") && invalid.contains("spec.ports[0].port"),
        "{invalid}"
    );
    agent.wait_for("Services applied", mark, APPLY).unwrap();
    assert_eq!(
        spread(&lab, http(), 2, 40).len(),
        2,
        "web kept its last good state"
    );
    let api = lab
        .pod("client")
        .tcp_request(
            SocketAddr::from((std::net::Ipv4Addr::new(10, 96, 0, 31), 443)),
            T,
        )
        .unwrap();
    assert_eq!(
        who(&api),
        "b1",
        "the good Service next to the bad one was applied"
    );
}

#[test]
fn a_malformed_ipv4_header_from_a_pod_is_dropped_and_counted() {
    if !require_privileges("a_malformed_ipv4_header_from_a_pod_is_dropped_and_counted") {
        return;
    }
    let mut lab = web_lab(1);
    lab.start_agent(&AgentOptions::default()).unwrap();
    let client = lab.pod("client");
    let host_mac = sluice_lab::lab::mac_of(lab.node(), &client.host_if).unwrap();
    let pod_mac = client.mac("eth0").unwrap();
    // IHL 4 (16 bytes): no valid IPv4 header is that short.
    let mut frame = Vec::new();
    frame.extend_from_slice(&host_mac);
    frame.extend_from_slice(&pod_mac);
    frame.extend_from_slice(&[0x08, 0x00, 0x44, 0, 0, 40, 0, 1, 0, 0, 64, 6, 0, 0]);
    frame.extend_from_slice(&crate::common::CLIENT.octets());
    frame.extend_from_slice(&VIP.octets());
    frame.extend_from_slice(&[0u8; 20]);
    client.send_raw_frame(frame).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    loop {
        let out = status(&lab);
        if counter(&out, "malformed_ip") == 1 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "malformed_ip was not counted:\n{out}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_missing_kernel_feature_is_named_with_what_was_turned_off() {
    if !require_privileges("a_missing_kernel_feature_is_named_with_what_was_turned_off") {
        return;
    }
    let missing = |features: &str| AgentOptions {
        env: vec![("SLUICE_PROBE_MISSING".into(), features.into())],
        ..AgentOptions::default()
    };
    // What socket LB and XDP need: each is turned off, in one line that
    // names the feature; the pods' dataplane serves on.
    let mut lab = web_lab(1);
    lab.start_agent(&missing("helper bpf_set_retval,helper bpf_xdp_load_bytes"))
        .unwrap();
    let log = lab.agent().log();
    assert!(
        log.contains("socket LB off: this kernel lacks helper bpf_set_retval (Linux 5.18)"),
        "{log}"
    );
    assert!(
        log.contains("XDP off: this kernel lacks helper bpf_xdp_load_bytes (Linux 5.18)"),
        "{log}"
    );
    assert!(
        !lab.pin_dir().join("links/sock_connect4").exists(),
        "no socket LB"
    );
    lab.pod("client").tcp_request(http(), T).unwrap();
    lab.take_agent().unwrap().stop().unwrap();

    // What the dataplane itself needs: the agent does not start, and says
    // what is missing.
    let agent = lab.spawn_agent(&missing("batch map commands")).unwrap();
    agent
        .wait_for(
            "this kernel lacks what the dataplane needs: batch map commands (Linux 5.6)",
            0,
            APPLY,
        )
        .unwrap();
}

#[test]
fn the_health_port_closes_silent_connections_and_caps_how_many_it_serves() {
    if !require_privileges("the_health_port_closes_silent_connections_and_caps_how_many_it_serves")
    {
        return;
    }
    let mut lab = web_lab(1);
    lab.start_agent(&AgentOptions::default()).unwrap();
    let health = SocketAddr::from(([127, 0, 0, 1], 10256));
    let outcome = lab
        .node()
        .run(move || -> (Vec<bool>, Option<Duration>, bool) {
            use std::io::{Read as _, Write as _};
            // 256 connections (the cap) that never finish their headers.
            let silent: Vec<std::net::TcpStream> = (0..256)
                .map(|_| {
                    let mut s = std::net::TcpStream::connect_timeout(&health, T).unwrap();
                    s.write_all(b"GET /healthz HTTP/1.1\r\n").unwrap();
                    s
                })
                .collect();
            // One more, complete: it waits for a slot.
            let mut queued = std::net::TcpStream::connect_timeout(&health, T).unwrap();
            queued
                .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .unwrap();
            queued
                .set_read_timeout(Some(Duration::from_secs(2)))
                .unwrap();
            let mut buf = [0u8; 64];
            let waited = queued.read(&mut buf).is_err();
            // The silent ones are closed within the header timeout (10 s);
            // then the queued one is answered.
            let started = std::time::Instant::now();
            queued
                .set_read_timeout(Some(Duration::from_secs(20)))
                .unwrap();
            let answered = queued.read(&mut buf).is_ok_and(|n| n > 0);
            let closed = silent
                .into_iter()
                .map(|mut s| {
                    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
                    // Closed by the server; a timeout here is not that.
                    let read = s.read(&mut buf);
                    matches!(read, Ok(0))
                        || read.is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset)
                })
                .collect();
            (closed, answered.then(|| started.elapsed()), waited)
        })
        .unwrap();
    let (closed, answered, waited) = outcome;
    assert!(waited, "the 257th connection waits while 256 are served");
    assert!(answered.is_some(), "and is answered once slots free up");
    assert!(
        closed.iter().all(|c| *c),
        "every silent connection was closed"
    );
    // Served as ever.
    assert_eq!(http_get(&lab, health, "/healthz").unwrap().0, 200);
}

/// `n` Services `s000…`, created a minute apart in that order, each a
/// ClusterIP (10.96.2.0/23) on 80/TCP with backend b0; the last, if
/// `health_port`, a NodePort with `externalTrafficPolicy: Local` and that
/// health check port.
fn aged_services(range: std::ops::Range<usize>, last_health_port: Option<(usize, u16)>) -> String {
    let mut docs = Vec::new();
    for i in range {
        let ip = std::net::Ipv4Addr::new(
            10,
            96,
            2 + u8::try_from(i / 200).unwrap(),
            u8::try_from(i % 200 + 1).unwrap(),
        );
        let created = format!("2026-01-01T{:02}:{:02}:00Z", i / 60, i % 60);
        let mut spec = format!(
            "  clusterIP: {ip}\n  ports:\n  - port: 80\n    protocol: TCP\n    name: http\n"
        );
        if let Some((_, port)) = last_health_port.filter(|(last, _)| *last == i) {
            spec = format!(
                "  type: NodePort\n  externalTrafficPolicy: Local\n  healthCheckNodePort: {port}\n  clusterIP: {ip}\n  ports:\n  - port: 80\n    protocol: TCP\n    name: http\n    nodePort: 30080\n"
            );
        }
        docs.push(format!(
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: s{i:03}\n  namespace: default\n  creationTimestamp: \"{created}\"\nspec:\n{spec}"
        ));
        docs.push(manifest::endpoint_slice(
            &format!("s{i:03}-1"),
            &format!("s{i:03}"),
            &[Port::tcp("http", 8080)],
            &[manifest::Endpoint::ready(crate::common::backend_ip(0))],
        ));
    }
    docs.join("---\n")
}

fn aged_ip(i: usize) -> SocketAddr {
    let ip = std::net::Ipv4Addr::new(
        10,
        96,
        2 + u8::try_from(i / 200).unwrap(),
        u8::try_from(i % 200 + 1).unwrap(),
    );
    SocketAddr::from((ip, 80))
}

/// `/readyz`, `/healthz`, the health check port of the left-out `s149`,
/// `/metrics` and `sluice status` say that 50 Services (`s100`…) are left
/// out of a full `SLUICE_SVC`.
fn assert_left_out_reported(lab: &Lab, health_port: u16) {
    let health = SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, 10256));
    let (code, body) = http_get(lab, health, "/readyz").unwrap();
    assert_eq!(code, 503, "{body}");
    assert!(
        body.contains("SLUICE_SVC")
            && body.contains("default/s100")
            && body.contains("default/s149"),
        "{body}"
    );
    assert!(!body.contains("default/s099"), "{body}");
    let (code, body) = http_get(lab, health, "/healthz").unwrap();
    assert_eq!(code, 503, "{body}");
    assert!(
        body.contains("\"lastUpdated\"") && body.contains("\"nodeEligible\":true"),
        "{body}"
    );
    assert_eq!(http_get(lab, health, "/livez").unwrap().0, 200);
    // The left-out Service's health check port drains the node.
    let check = SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, health_port));
    let (code, body) = http_get(lab, check, "/healthz").unwrap();
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("\"serviceProxyHealthy\":false"), "{body}");
    let (_, metrics) = http_get(lab, health, "/metrics").unwrap();
    for series in [
        "sluice_services_left_out 50",
        "sluice_map_capacity{map=\"SLUICE_SVC\"} 200",
        "sluice_map_entries{map=\"SLUICE_SVC\"} 200",
    ] {
        assert!(
            metrics.lines().any(|l| l == series),
            "{series} in\n{metrics}"
        );
    }
    assert!(
        !metrics.contains("sluice_service_packets_total{"),
        "no series per Service unless asked: {metrics}"
    );
    let shown = status(lab);
    assert!(
        shown.contains("LEFT OUT")
            && shown.contains("default/s149")
            && shown.contains("SLUICE_SVC 200/264"),
        "{shown}"
    );
}

#[test]
fn services_that_do_not_fit_are_left_out_whole_named_and_come_back_when_room_frees() {
    if !require_privileges(
        "services_that_do_not_fit_are_left_out_whole_named_and_come_back_when_room_frees",
    ) {
        return;
    }
    let mut lab = web_lab(1);
    lab.remove_manifest("web.yaml").unwrap();
    // 150 Services; the maps hold 200 frontends and ClusterIPs: 100 of them.
    let health_port = 31_999;
    lab.write_manifest(
        "many.yaml",
        &aged_services(0..150, Some((149, health_port))),
    )
    .unwrap();
    let opts = AgentOptions {
        service_cidr: Some(SERVICE_CIDR.into()),
        extra_args: vec!["--max-frontends".into(), "200".into()],
        ..AgentOptions::default()
    };
    lab.start_agent(&opts).unwrap();
    let line = lab.agent().wait_for("Services left out", 0, APPLY).unwrap();
    assert!(
        line.contains("count=50") && line.contains("default/s100"),
        "{line}"
    );
    for i in [0, 57, 99] {
        assert_eq!(
            who(&lab.pod("client").tcp_request(aged_ip(i), T).unwrap()),
            "b0",
            "s{i:03}"
        );
    }
    for i in [100, 148] {
        assert!(
            lab.pod("client").tcp_request(aged_ip(i), T).is_err(),
            "s{i:03} is left out"
        );
    }
    assert_left_out_reported(&lab, health_port);

    // 60 go: the 50 left out come in, with no restart.
    let health = SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, 10256));
    let check = SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, health_port));
    let mark = lab.agent().log_len();
    lab.write_manifest(
        "many.yaml",
        &aged_services(60..150, Some((149, health_port))),
    )
    .unwrap();
    lab.agent()
        .wait_for("every Service fits in the maps again", mark, APPLY)
        .unwrap();
    for i in [60, 100, 148, 149] {
        assert_eq!(
            who(&lab.pod("client").tcp_request(aged_ip(i), T).unwrap()),
            "b0",
            "s{i:03}"
        );
    }
    assert!(
        lab.pod("client").tcp_request(aged_ip(0), T).is_err(),
        "s000 was deleted"
    );
    assert_eq!(http_get(&lab, health, "/readyz").unwrap().0, 200);
    assert_eq!(http_get(&lab, health, "/healthz").unwrap().0, 200);
    let (_, body) = http_get(&lab, check, "/healthz").unwrap();
    assert!(body.contains("\"serviceProxyHealthy\":true"), "{body}");
    assert_eq!(
        lab.agent().log().matches("sluice is ready").count(),
        1,
        "no restart"
    );
}

/// `sluice monitor -o json` (and `args`) in the node's namespace, once it
/// says it is watching.
pub(crate) fn start_monitor(lab: &Lab, args: &[&str]) -> sluice_lab::process::Process {
    let mut cmd = Command::new(default_bin());
    cmd.arg("monitor")
        .arg("--pin-dir")
        .arg(lab.pin_dir())
        .args(["-o", "json"])
        .args(args);
    let mut monitor = lab
        .node()
        .run(move || sluice_lab::process::Process::spawn("monitor", cmd, false))
        .unwrap()
        .unwrap();
    monitor
        .wait_for("monitoring the dataplane", 0, APPLY)
        .unwrap();
    monitor
}

/// The monitor's flag, from the pins.
fn monitor_flag(lab: &Lab) -> u32 {
    let data = MapData::from_pin(lab.pin_dir().join("SLUICE_MON_ON")).unwrap();
    let flag: aya::maps::Array<MapData, u32> =
        aya::maps::Array::try_from(aya::maps::Map::Array(data)).unwrap();
    flag.get(&0, 0).unwrap()
}

#[test]
fn the_monitor_shows_rejects_and_new_flows_with_their_tuple_and_frontend() {
    if !require_privileges("the_monitor_shows_rejects_and_new_flows_with_their_tuple_and_frontend")
    {
        return;
    }
    let mut lab = web_lab(1);
    let empty = std::net::Ipv4Addr::new(10, 96, 0, 30);
    lab.write_manifest(
        "empty.yaml",
        &manifest::service_with_endpoints(
            "empty",
            empty,
            &[Port::tcp("http", 80)],
            &[Port::tcp("http", 8080)],
            &[],
        ),
    )
    .unwrap();
    lab.start_agent(&AgentOptions::default()).unwrap();
    assert_eq!(
        monitor_flag(&lab),
        0,
        "no monitor: the programs write nothing"
    );
    let mut monitor = start_monitor(&lab, &[]);
    assert_eq!(monitor_flag(&lab), 1);

    // A Service without endpoints: rejected, shown within a second.
    assert!(
        lab.pod("client")
            .tcp_request(SocketAddr::from((empty, 80)), T)
            .is_err()
    );
    let line = monitor
        .wait_for("\"reject\"", 0, Duration::from_secs(1))
        .unwrap();
    let event: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(event["reason"], "no_endpoints", "{line}");
    assert_eq!(event["proto"], "TCP", "{line}");
    assert_eq!(event["dst"], "10.96.0.30:80", "{line}");
    assert_eq!(event["frontend"], "default/empty:http", "{line}");
    let src = event["src"].as_str().unwrap();
    assert!(
        src.starts_with(&format!("{}:", crate::common::CLIENT)),
        "{line}"
    );
    assert_eq!(event["iface"], lab.pod("client").host_if.as_str(), "{line}");

    // A new flow: its frontend and backend.
    let mark = monitor.log_len();
    assert_eq!(
        who(&lab.pod("client").tcp_request(http(), T).unwrap()),
        "b0"
    );
    let line = monitor
        .wait_for("\"new-flow\"", mark, Duration::from_secs(1))
        .unwrap();
    let event: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(event["frontend"], "default/web:http", "{line}");
    assert_eq!(
        event["backend"],
        format!("{}:8080", crate::common::backend_ip(0)),
        "{line}"
    );
    assert_eq!(event["dst"], format!("{VIP}:80"), "{line}");

    // Stopped, it turns the events off again.
    assert!(monitor.stop().unwrap().success());
    assert_eq!(monitor_flag(&lab), 0);

    // A filter: only what it asks for.
    let mut monitor = start_monitor(&lab, &["--kind", "new-flow", "--service", "default/web"]);
    assert!(
        lab.pod("client")
            .tcp_request(SocketAddr::from((empty, 80)), T)
            .is_err()
    );
    let mark = monitor.log_len();
    assert_eq!(
        who(&lab.pod("client").tcp_request(http(), T).unwrap()),
        "b0"
    );
    monitor
        .wait_for("\"new-flow\"", mark, Duration::from_secs(1))
        .unwrap();
    assert!(!monitor.log().contains("\"reject\""), "{}", monitor.log());
}

/// The pinned `SLUICE_LAYOUT`: map name → layout version.
fn layout_stamps(lab: &Lab) -> aya::maps::HashMap<MapData, [u8; 16], u32> {
    let data = MapData::from_pin(lab.pin_dir().join("SLUICE_LAYOUT")).unwrap();
    aya::maps::HashMap::try_from(aya::maps::Map::HashMap(data)).unwrap()
}

fn stamp_key(name: &str) -> [u8; 16] {
    let mut key = [0u8; 16];
    key[..name.len()].copy_from_slice(name.as_bytes());
    key
}

#[test]
fn a_live_connection_survives_an_agent_start_over_pins_of_the_previous_layout() {
    if !require_privileges(
        "a_live_connection_survives_an_agent_start_over_pins_of_the_previous_layout",
    ) {
        return;
    }
    let mut lab = web_lab(3);
    lab.start_agent(&AgentOptions::default()).unwrap();
    assert_eq!(
        layout_stamps(&lab)
            .get(&stamp_key("SLUICE_CT_EWT"), 0)
            .unwrap(),
        3,
        "every pinned map carries its layout version"
    );
    let mut conn = lab.pod("client").tcp_connect(http(), T).unwrap();
    let backend = who(&request_line(&mut conn, T).unwrap());
    lab.take_agent().unwrap().stop().unwrap();
    // The pins as the build before layout versions left them: unstamped.
    fs::remove_file(lab.pin_dir().join("SLUICE_LAYOUT")).unwrap();

    lab.start_agent(&AgentOptions::default()).unwrap();
    let log = lab.agent().log();
    assert!(log.contains("carry no layout versions"), "{log}");
    assert!(!log.contains("replacing it"), "{log}");
    assert_eq!(
        who(&request_line(&mut conn, T).unwrap()),
        backend,
        "the connection (its conntrack entries) survived"
    );
    assert_eq!(
        layout_stamps(&lab)
            .get(&stamp_key("SLUICE_SVC"), 0)
            .unwrap(),
        1
    );
}

#[test]
fn a_pin_of_another_layout_version_is_replaced_with_a_logged_counted_loss() {
    if !require_privileges("a_pin_of_another_layout_version_is_replaced_with_a_logged_counted_loss")
    {
        return;
    }
    let mut lab = web_lab(1);
    lab.start_agent(&AgentOptions::default()).unwrap();
    let mut conn = lab.pod("client").tcp_connect(http(), T).unwrap();
    assert_eq!(who(&request_line(&mut conn, T).unwrap()), "b0");
    lab.take_agent().unwrap().stop().unwrap();
    // A newer build's conntrack layout (a downgrade): no conversion back.
    layout_stamps(&lab)
        .insert(stamp_key("SLUICE_CT_EWT"), 4, 0)
        .unwrap();

    lab.start_agent(&AgentOptions::default()).unwrap();
    let line = lab.agent().wait_for("cannot be adopted", 0, APPLY).unwrap();
    assert!(
        line.contains("SLUICE_CT_EWT")
            && line.contains("layout version 4")
            && line.contains("entries=2"),
        "the flow's two entries are named as lost: {line}"
    );
    let health = SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, 10256));
    let (_, metrics) = http_get(&lab, health, "/metrics").unwrap();
    for series in [
        "sluice_pinned_map_replaced_total{map=\"SLUICE_CT_EWT\"} 1",
        "sluice_pinned_map_entries_lost_total{map=\"SLUICE_CT_EWT\"} 2",
    ] {
        assert!(
            metrics.lines().any(|l| l == series),
            "{series} in\n{metrics}"
        );
    }
    // Only that map: the Services were adopted, and it is this build's now.
    assert!(
        !metrics.contains("map=\"SLUICE_SVC\"} 1\nsluice_pinned"),
        "{metrics}"
    );
    assert_eq!(
        layout_stamps(&lab)
            .get(&stamp_key("SLUICE_CT_EWT"), 0)
            .unwrap(),
        3
    );
    assert!(lab.agent().log().contains("adopted the pinned maps"));
}
