//! End-to-end: kubelet TLS bootstrapping and client-certificate rotation
//! by the agent (certificate flags only), against the local API server on
//! loopback: automatic and manual approval, a denied CSR, rotations with a
//! short signing duration, the API server down during a rotation, and
//! corrupt or expired files at start.
#![allow(clippy::unwrap_used, reason = "tests: a failure fails the test")]

use std::{
    fs,
    net::TcpListener,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use base64::Engine as _;
use sluice_lab::{ApiServer, default_bin, process::Process};
use tempfile::TempDir;

const NODE: &str = "node-1";
const TOKEN_ID: &str = "07401b";
const TOKEN_SECRET: &str = "f395accd246ae52d";
const BOOTSTRAP_SECRET: &str = "apiVersion: v1\nkind: Secret\nmetadata: {name: bootstrap-token-07401b, namespace: kube-system}\n\
type: bootstrap.kubernetes.io/token\nstringData:\n  token-id: 07401b\n  token-secret: f395accd246ae52d\n  expiration: \"2099-01-01T00:00:00Z\"\n  \
usage-bootstrap-authentication: \"true\"\n  usage-bootstrap-signing: \"true\"\n";
/// Bootstrap, or one rotation, takes well under this.
const STEP: Duration = Duration::from_secs(30);

fn manifests(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../manifests/bootstrap")
        .join(file)
}

/// An API server with bootstrap tokens, a node directory, and the agent.
struct Node {
    dir: TempDir,
    server: ApiServer,
    agent: Option<Process>,
    health: u16,
}

impl Node {
    /// `auto`: the auto-approval bindings of manifests/bootstrap/ too.
    fn new(server_args: &[&str], auto: bool) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("sluice-certs-test-")
            .tempdir()
            .unwrap();
        let mut args = vec!["--enable-bootstrap-token-auth"];
        args.extend(server_args);
        let server = ApiServer::start(&dir.path().join("apiserver"), &args).unwrap();
        let secret = dir.path().join("secret.yaml");
        fs::write(&secret, BOOTSTRAP_SECRET).unwrap();
        server
            .kubectl(&["apply", "-f", secret.to_str().unwrap()])
            .unwrap();
        let mut files = vec!["00-kubelet-bootstrap.yaml"];
        if auto {
            files.push("01-auto-approve.yaml");
        }
        for file in files {
            server
                .kubectl(&["apply", "-f", manifests(file).to_str().unwrap()])
                .unwrap();
        }
        let ca = base64::engine::general_purpose::STANDARD.encode(fs::read(server.ca()).unwrap());
        fs::write(
            dir.path().join("bootstrap.kubeconfig"),
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster: {{server: {}, certificate-authority-data: {ca}}}\n\
                 users:\n- name: u\n  user: {{token: {TOKEN_ID}.{TOKEN_SECRET}}}\ncontexts:\n- name: x\n  context: {{cluster: c, user: u}}\ncurrent-context: x\n",
                server.url()
            ),
        )
        .unwrap();
        let health = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        Self {
            dir,
            server,
            agent: None,
            health,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn kubeconfig(&self) -> PathBuf {
        self.path("kubelet.kubeconfig")
    }

    fn pki(&self) -> PathBuf {
        self.path("pki")
    }

    fn start_agent(&mut self) {
        let mut cmd = Command::new(default_bin());
        cmd.arg("run")
            .arg("--bootstrap-kubeconfig")
            .arg(self.path("bootstrap.kubeconfig"))
            .arg("--kubelet-kubeconfig")
            .arg(self.kubeconfig())
            .arg("--cert-dir")
            .arg(self.pki())
            .args(["--node-name", NODE])
            .args(["--health-listen", &format!("127.0.0.1:{}", self.health)])
            .env_remove("RUST_LOG")
            .env_remove("KUBERNETES_SERVICE_HOST");
        let echo = std::env::var_os("SLUICE_LAB_ECHO").is_some();
        self.agent = Some(Process::spawn("agent", cmd, echo).unwrap());
    }

    fn agent(&mut self) -> &mut Process {
        self.agent.as_mut().unwrap()
    }

    fn wait(&mut self, needle: &str, from: usize) -> String {
        self.agent()
            .wait_for(needle, from, STEP)
            .unwrap_or_else(|e| panic!("waiting for `{needle}`: {e:#}"))
    }

    fn mark(&mut self) -> usize {
        self.agent().log_len()
    }

    /// `(status, body)` of a GET on the health port.
    fn health(&self, path: &str) -> (u16, String) {
        use std::io::{Read as _, Write as _};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.health)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        let code = out
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        (
            code,
            out.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned(),
        )
    }

    /// The file `kubelet-client-current.pem` points at.
    fn current(&self) -> PathBuf {
        fs::read_link(self.pki().join("kubelet-client-current.pem")).unwrap()
    }

    /// Names of the CSRs whose condition is `condition` ("" = pending).
    fn csrs(&self) -> Vec<(String, String)> {
        let out = self
            .server
            .kubectl(&[
                "get",
                "csr",
                "-o",
                "jsonpath={range .items[*]}{.metadata.name} {.status.conditions[0].type}{\"\\n\"}{end}",
            ])
            .unwrap();
        out.lines()
            .map(|l| {
                let mut parts = l.split_whitespace();
                (
                    parts.next().unwrap_or_default().to_owned(),
                    parts.next().unwrap_or_default().to_owned(),
                )
            })
            .collect()
    }

    /// kubectl with the kubelet kubeconfig is the node, in `system:nodes`.
    fn assert_authenticates_as_node(&self) {
        let whoami = self
            .server
            .kubectl_as(&self.kubeconfig(), &["auth", "whoami"])
            .unwrap();
        assert!(whoami.contains("system:node:node-1"), "{whoami}");
        assert!(whoami.contains("system:nodes"), "{whoami}");
    }

    /// Nothing secret in the agent's log: the token, a private key.
    fn assert_log_clean(&self) {
        let log = self.agent.as_ref().unwrap().log();
        assert!(
            !log.contains(TOKEN_SECRET),
            "the bootstrap token is logged: {log}"
        );
        assert!(
            !log.contains("PRIVATE KEY"),
            "a private key is logged: {log}"
        );
    }
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn a_fresh_node_bootstraps_to_a_kubeconfig_that_authenticates_as_the_node() {
    let mut node = Node::new(&[], true);
    node.start_agent();
    node.wait("managing the kubelet certificates only", 0);
    node.wait("bootstrapped", 0);

    node.assert_authenticates_as_node();
    // The CSR had the deterministic bootstrap name and was auto-approved.
    let csrs = node.csrs();
    assert!(
        csrs.iter()
            .any(|(n, c)| n.starts_with("node-csr-") && c == "Approved"),
        "{csrs:?}"
    );
    // The kubeconfig names the kubelet's files.
    let kubeconfig = fs::read_to_string(node.kubeconfig()).unwrap();
    for part in [
        "default-cluster",
        "default-auth",
        "default-context",
        "kubelet-client-current.pem",
    ] {
        assert!(kubeconfig.contains(part), "{part}: {kubeconfig}");
    }
    assert_eq!(mode(&node.kubeconfig()), 0o600);
    assert_eq!(mode(&node.current()), 0o600);
    assert!(!node.pki().join("kubelet-client.key.tmp").exists());
    assert_eq!(node.health("/healthz").0, 200);
    let (_, metrics) = node.health("/metrics");
    assert!(
        metrics.contains("sluice_certificate_expiration_timestamp_seconds{kind=\"client\"}"),
        "{metrics}"
    );
    node.assert_log_clean();

    // A restart keeps the certificate: no second CSR.
    let before = node.current();
    drop(node.agent.take());
    node.start_agent();
    node.wait("client certificate in use", 0);
    assert_eq!(node.current(), before);
    assert_eq!(node.csrs().len(), 1);
}

#[test]
fn without_auto_approval_the_agent_waits_for_kubectl_certificate_approve() {
    let mut node = Node::new(&[], false);
    node.start_agent();
    let created = node.wait("CSR created", 0);
    let csrs = node.csrs();
    let [(name, condition)] = csrs.as_slice() else {
        panic!("one CSR: {csrs:?}")
    };
    assert!(created.contains(name.as_str()), "{created}");
    assert_eq!(condition, "", "pending");
    assert!(!node.kubeconfig().exists());
    assert_eq!(node.health("/healthz").0, 200, "waiting is not an error");

    node.server
        .kubectl(&["certificate", "approve", name])
        .unwrap();
    node.wait("bootstrapped", 0);
    node.assert_authenticates_as_node();
    node.assert_log_clean();
}

#[test]
fn a_denied_csr_is_terminal_and_reported_in_healthz() {
    let mut node = Node::new(&[], false);
    node.start_agent();
    node.wait("CSR created", 0);
    let name = node.csrs().remove(0).0;
    node.server
        .kubectl(&["certificate", "deny", &name])
        .unwrap();
    let line = node.wait("bootstrap failed for good", 0);
    assert!(line.contains("denied"), "{line}");
    let (code, body) = node.health("/healthz");
    assert_eq!(code, 500);
    assert!(
        body.contains("client certificate") && body.contains("denied"),
        "{body}"
    );
    assert!(!node.kubeconfig().exists());
    node.assert_log_clean();
}

#[test]
fn short_certificates_rotate_twice_with_the_nodes_own_credentials() {
    let mut node = Node::new(&["--cluster-signing-duration", "30s"], true);
    node.start_agent();
    node.wait("bootstrapped", 0);
    let first = node.current();
    // Each rotation comes 70–90 % into a ~33 s lifetime.
    let mut seen = vec![first];
    for _ in 0..2 {
        let from = node.mark();
        node.wait("client certificate rotated", from);
        let now = node.current();
        assert!(!seen.contains(&now), "a new file each time");
        seen.push(now);
    }
    // Rotations are asked for as the node: `csr-` names, auto-approved by
    // the selfnodeclient rule.
    let csrs = node.csrs();
    let renewals = csrs
        .iter()
        .filter(|(n, c)| n.starts_with("csr-") && c == "Approved")
        .count();
    assert!(renewals >= 2, "{csrs:?}");
    node.assert_authenticates_as_node();
    let (_, metrics) = node.health("/metrics");
    assert!(
        metrics.contains("sluice_certificate_rotations_total{kind=\"client\"} 2")
            || metrics.contains("sluice_certificate_rotations_total{kind=\"client\"} 3"),
        "{metrics}"
    );
    node.assert_log_clean();
}

#[test]
fn with_the_api_server_down_the_current_certificate_is_kept_until_a_new_one_comes() {
    let mut node = Node::new(&["--cluster-signing-duration", "30s"], true);
    node.start_agent();
    node.wait("bootstrapped", 0);
    let first = node.current();
    node.server.stop().unwrap();
    let from = node.mark();
    let failed = node.wait("rotating the client certificate:", from);
    assert!(failed.contains("retry_in_s=2"), "{failed}");
    assert_eq!(node.current(), first, "kept while renewal fails");
    assert_eq!(node.health("/healthz").0, 200, "still valid");
    node.server.restart().unwrap();
    // Renewed (or, had it expired meanwhile, bootstrapped again).
    let deadline = Instant::now() + STEP * 2;
    while node.current() == first {
        assert!(
            Instant::now() < deadline,
            "never renewed: {}",
            node.agent.as_ref().unwrap().log()
        );
        let from = node.mark();
        let _ = node
            .agent()
            .wait_for("client certificate", from, Duration::from_secs(5));
    }
    assert_eq!(node.health("/healthz").0, 200);
    node.assert_log_clean();
}

#[test]
fn a_corrupt_or_expired_certificate_at_start_leads_to_a_new_bootstrap() {
    let mut node = Node::new(&[], true);
    fs::create_dir_all(node.pki()).unwrap();
    // An expired certificate with its key, as `-current.pem`.
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.not_before = rcgen::date_time_ymd(2020, 1, 1);
    params.not_after = rcgen::date_time_ymd(2021, 1, 1);
    let expired = params.self_signed(&key).unwrap().pem();
    let file = node.pki().join("kubelet-client-2020-01-01-00-00-00.pem");
    fs::write(&file, format!("{expired}{}", key.serialize_pem())).unwrap();
    std::os::unix::fs::symlink(&file, node.pki().join("kubelet-client-current.pem")).unwrap();
    node.start_agent();
    node.wait("bootstrapped", 0);
    assert_ne!(node.current(), file);
    drop(node.agent.take());

    // Now a corrupt one: garbage where the PEM was.
    fs::write(node.current(), "garbage").unwrap();
    node.start_agent();
    let complaint = node.wait("client certificate unusable", 0);
    assert!(complaint.contains("kubelet-client"), "{complaint}");
    node.wait("bootstrapped", 0);
    node.assert_authenticates_as_node();
    node.assert_log_clean();
}
