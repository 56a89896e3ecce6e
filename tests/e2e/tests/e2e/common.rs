//! Shared set-up of the end-to-end tests: the `web` Service lab.
#![allow(clippy::unwrap_used, reason = "test helpers: a failure fails the test")]

use std::{
    collections::BTreeMap,
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, TcpStream},
    time::Duration,
};

use sluice_lab::{
    AgentOptions, Cluster, Lab, Netns, Pod,
    manifest::{self, Endpoint, Port},
};

pub const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
pub const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 2);
pub const SERVICE_CIDR: &str = "10.96.0.0/12";
pub const T: Duration = Duration::from_secs(2);
/// How long the agent may take to apply a manifest change (it takes
/// milliseconds; this only bounds the wait for its log line).
pub const APPLY: Duration = Duration::from_secs(5);

pub fn backend_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 244, 1, 10 + u8::try_from(i).unwrap())
}

pub fn backend_name(i: usize) -> String {
    format!("b{i}")
}

pub fn http() -> SocketAddr {
    SocketAddr::from((VIP, 80))
}

pub fn dns() -> SocketAddr {
    SocketAddr::from((VIP, 53))
}

/// `web`: http 80/TCP → 8080 and dns 53/UDP → 5353 on the given backends.
pub fn web_manifest(backends: &[usize]) -> String {
    let eps: Vec<Endpoint> = backends
        .iter()
        .map(|&i| Endpoint::ready(backend_ip(i)))
        .collect();
    manifest::service_with_endpoints(
        "web",
        VIP,
        &[Port::tcp("http", 80), Port::udp("dns", 53)],
        &[Port::tcp("http", 8080), Port::udp("dns", 5353)],
        &eps,
    )
}

/// A lab with a client and `n` backends serving 8080/TCP and 5353/UDP, and
/// `web` pointing at all of them. The agent is not started.
pub fn web_lab(n: usize) -> Lab {
    let mut lab = Lab::new().unwrap();
    lab.add_pod("client", CLIENT).unwrap();
    for i in 0..n {
        lab.add_pod(&backend_name(i), backend_ip(i)).unwrap();
        lab.serve(&backend_name(i), &[8080], &[5353]).unwrap();
    }
    lab.write_manifest("web.yaml", &web_manifest(&(0..n).collect::<Vec<_>>()))
        .unwrap();
    lab
}

/// The backend name in a responder's answer (`<name> <peer>`).
pub fn who(answer: &str) -> String {
    answer
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned()
}

/// The peer the backend saw, from its answer.
pub fn peer(answer: &str) -> SocketAddr {
    answer.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Sends up to `max` requests over new connections until every name in
/// `want` answered; returns how often each backend answered.
pub fn spread(lab: &Lab, to: SocketAddr, want: usize, max: usize) -> BTreeMap<String, usize> {
    let mut seen = BTreeMap::new();
    for _ in 0..max {
        let answer = lab.pod("client").tcp_request(to, T).unwrap();
        *seen.entry(who(&answer)).or_insert(0) += 1;
        if seen.len() == want {
            break;
        }
    }
    seen
}

/// Writes a manifest and waits for the agent to log that it applied it.
pub fn apply(lab: &mut Lab, file: &str, content: &str) -> String {
    let mark = lab.agent().log_len();
    lab.write_manifest(file, content).unwrap();
    lab.agent()
        .wait_for("Services applied", mark, APPLY)
        .unwrap()
}

/// Removes a manifest and waits for the agent to apply that.
pub fn delete(lab: &mut Lab, file: &str) {
    let mark = lab.agent().log_len();
    lab.remove_manifest(file).unwrap();
    lab.agent()
        .wait_for("Services applied", mark, APPLY)
        .unwrap();
}

/// A minimal HTTP GET on the node namespace's loopback: (status, body).
pub fn http_get(lab: &Lab, addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    http_in(lab.node(), addr, path)
}

/// A minimal HTTP GET from a pod (or a client outside the cluster).
pub fn http_from(pod: &Pod, addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    http_in(&pod.ns, addr, path)
}

/// A minimal HTTP GET from a namespace: (status, body).
pub fn http_in(ns: &Netns, addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let path = path.to_owned();
    ns.run(move || -> std::io::Result<(u16, String)> {
        let mut s = TcpStream::connect_timeout(&addr, T)?;
        s.set_read_timeout(Some(T))?;
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
        )?;
        let mut out = String::new();
        s.take(64 * 1024).read_to_string(&mut out)?;
        let code = out
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let body = out.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned();
        Ok((code, body))
    })
    .ok()?
    .ok()
}

/// Starts the agent on both nodes of `c` (`node-a`, `node-b`), with `args`.
pub fn start_agents(c: &mut Cluster, args: &[&str]) {
    for (i, node) in ["node-a", "node-b"].into_iter().enumerate() {
        c.node(i)
            .start_agent(&AgentOptions {
                extra_args: ["--node-name", node]
                    .iter()
                    .chain(args)
                    .map(|a| (*a).to_owned())
                    .collect(),
                ..AgentOptions::default()
            })
            .unwrap();
    }
}

/// A NodePort Service `name` at `vip` with one UDP port, `port` (NodePort
/// `node_port`) to `target` on its one endpoint `backend` on `node`.
pub fn udp_node_port(
    name: &str,
    vip: Ipv4Addr,
    (port, node_port, target): (u16, u16, u16),
    (backend, node): (Ipv4Addr, &str),
) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: default}}\nspec:\n  type: NodePort\n  clusterIP: {vip}\n  ports:\n  - {{name: udp, port: {port}, protocol: UDP, nodePort: {node_port}}}\n---\n\
         apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}-1\n  namespace: default\n  labels: {{kubernetes.io/service-name: {name}}}\n\
         addressType: IPv4\nports: [{{name: udp, port: {target}, protocol: UDP}}]\nendpoints: [{{addresses: [\"{backend}\"], nodeName: {node}, conditions: {{ready: true}}}}]\n"
    )
}

/// The `sluice-probe` binary: `$SLUICE_PROBE_BIN` (a guest of `cargo xtask
/// vm-test` has it elsewhere), or the one cargo built beside the tests.
pub fn probe_bin() -> String {
    std::env::var("SLUICE_PROBE_BIN")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_sluice-probe").to_owned())
}

/// The agent's count of dataplane event `name` in `lab`, from its metrics.
pub fn event_count(lab: &Lab, name: &str) -> u64 {
    metric(lab, &format!("event=\"{name}\""))
}

/// The agent's drops for `reason` in `lab`, from its metrics.
pub fn drop_count(lab: &Lab, reason: &str) -> u64 {
    metric(lab, &format!("reason=\"{reason}\""))
}

/// The value of the first line of the agent's metrics in `lab` that
/// contains `needle`.
pub fn metric(lab: &Lab, needle: &str) -> u64 {
    let metrics = http_get(lab, SocketAddr::from(([127, 0, 0, 1], 10256)), "/metrics")
        .unwrap()
        .1;
    let line = metrics
        .lines()
        .find(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("{metrics}"));
    line.rsplit(' ')
        .next()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("{line}"))
}

/// Starts the agent on node `node-a` watching the lab's API server (as its
/// admin), with the lab's Service CIDR.
pub fn start_agent_on_apiserver(lab: &mut Lab) {
    let kubeconfig = lab.apiserver().admin_kubeconfig();
    lab.start_agent(&AgentOptions {
        source: sluice_lab::AgentSource::Kubeconfig(kubeconfig),
        service_cidr: Some(SERVICE_CIDR.into()),
        extra_args: vec!["--node-name".into(), "node-a".into()],
        ..AgentOptions::default()
    })
    .unwrap();
}
