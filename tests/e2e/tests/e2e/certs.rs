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
use sluice_lab::{
    AgentOptions, AgentSource, ApiServer, default_bin, process::Process, require_privileges,
};
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

/// A bootstrap token Secret and the bindings of manifests/bootstrap/ (with
/// `auto`, the auto-approval ones too) on `server`; `dir/bootstrap.kubeconfig`
/// with that token.
fn prepare_bootstrap(server: &ApiServer, dir: &Path, auto: bool) {
    let secret = dir.join("secret.yaml");
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
        dir.join("bootstrap.kubeconfig"),
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster: {{server: {}, certificate-authority-data: {ca}}}\n\
             users:\n- name: u\n  user: {{token: {TOKEN_ID}.{TOKEN_SECRET}}}\ncontexts:\n- name: x\n  context: {{cluster: c, user: u}}\ncurrent-context: x\n",
            server.url()
        ),
    )
    .unwrap();
}

/// The Node object `node-1`, with these `status.addresses` (`type=address`).
fn set_node_addresses(server: &ApiServer, dir: &Path, addresses: &[(&str, &str)]) {
    let path = dir.join("node.yaml");
    fs::write(&path, NODE_OBJECT).unwrap();
    server
        .kubectl(&["apply", "-f", path.to_str().unwrap()])
        .unwrap();
    let list: Vec<String> = addresses
        .iter()
        .map(|(t, a)| format!("{{\"type\":\"{t}\",\"address\":\"{a}\"}}"))
        .collect();
    server
        .kubectl(&[
            "patch",
            "node",
            NODE,
            "--subresource=status",
            "--type=merge",
            "-p",
            &format!("{{\"status\":{{\"addresses\":[{}]}}}}", list.join(",")),
        ])
        .unwrap();
}

/// An API server with bootstrap tokens, a node directory, and the agent.
pub(crate) struct Node {
    dir: TempDir,
    pub(crate) server: ApiServer,
    agent: Option<Process>,
    health: u16,
    pub(crate) secure: u16,
    read_only: u16,
    /// More flags for the agent.
    pub(crate) extra_args: Vec<String>,
}

/// A loopback port the kernel picked (released for the agent).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Node {
    /// `auto`: the auto-approval bindings of manifests/bootstrap/ too.
    pub(crate) fn new(server_args: &[&str], auto: bool) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("sluice-certs-test-")
            .tempdir()
            .unwrap();
        let mut args = vec!["--enable-bootstrap-token-auth"];
        args.extend(server_args);
        let server = ApiServer::start(&dir.path().join("apiserver"), &args).unwrap();
        prepare_bootstrap(&server, dir.path(), auto);
        Self {
            dir,
            server,
            agent: None,
            health: free_port(),
            secure: free_port(),
            read_only: free_port(),
            extra_args: Vec::new(),
        }
    }

    pub(crate) fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn kubeconfig(&self) -> PathBuf {
        self.path("kubelet.kubeconfig")
    }

    fn pki(&self) -> PathBuf {
        self.path("pki")
    }

    pub(crate) fn start_agent(&mut self) {
        self.start_agent_with(true);
    }

    /// `bootstrap`: with the bootstrap kubeconfig (as a node that has not
    /// deleted it).
    fn start_agent_with(&mut self, bootstrap: bool) {
        let mut cmd = Command::new(default_bin());
        cmd.arg("run");
        if bootstrap {
            cmd.arg("--bootstrap-kubeconfig")
                .arg(self.path("bootstrap.kubeconfig"));
        }
        cmd.arg("--kubelet-kubeconfig")
            .arg(self.kubeconfig())
            .arg("--cert-dir")
            .arg(self.pki())
            .args(["--node-name", NODE])
            .args(["--health-listen", &format!("127.0.0.1:{}", self.health)])
            .args(["--secure-listen", &format!("127.0.0.1:{}", self.secure)])
            .args([
                "--read-only-listen",
                &format!("127.0.0.1:{}", self.read_only),
            ])
            .args(&self.extra_args)
            .env_remove("RUST_LOG")
            .env_remove("KUBERNETES_SERVICE_HOST");
        let echo = std::env::var_os("SLUICE_LAB_ECHO").is_some();
        self.agent = Some(Process::spawn("agent", cmd, echo).unwrap());
    }

    fn agent(&mut self) -> &mut Process {
        self.agent.as_mut().unwrap()
    }

    pub(crate) fn wait(&mut self, needle: &str, from: usize) -> String {
        self.agent()
            .wait_for(needle, from, STEP)
            .unwrap_or_else(|e| panic!("waiting for `{needle}`: {e:#}"))
    }

    fn mark(&mut self) -> usize {
        self.agent().log_len()
    }

    /// `(status, body)` of a GET on the health port.
    fn health(&self, path: &str) -> (u16, String) {
        plain_get(self.health, path)
    }

    /// The file `kubelet-client-current.pem` points at.
    fn current(&self) -> PathBuf {
        fs::read_link(self.pki().join("kubelet-client-current.pem")).unwrap()
    }

    /// The client-certificate CSRs: name and first condition ("" while
    /// pending).
    fn csrs(&self) -> Vec<(String, String)> {
        let out = self
            .server
            .kubectl(&[
                "get",
                "csr",
                "-o",
                "jsonpath={range .items[*]}{.metadata.name} {.spec.signerName} {.status.conditions[0].type}{\"\\n\"}{end}",
            ])
            .unwrap();
        // Client CSRs only: the serving certificate has its own tests.
        out.lines()
            .filter_map(|l| {
                let mut parts = l.split_whitespace();
                let name = parts.next()?.to_owned();
                let signer = parts.next()?;
                (signer == "kubernetes.io/kube-apiserver-client-kubelet")
                    .then(|| (name, parts.next().unwrap_or_default().to_owned()))
            })
            .collect()
    }

    /// The name of the pending serving CSR, once the agent made it.
    fn wait_serving_csr(&mut self) -> String {
        let deadline = Instant::now() + STEP;
        loop {
            let name = self
                .server
                .kubectl(&[
                    "get",
                    "csr",
                    "-o",
                    "jsonpath={.items[?(@.spec.signerName==\"kubernetes.io/kubelet-serving\")].metadata.name}",
                ])
                .unwrap();
            if !name.trim().is_empty() {
                return name.trim().to_owned();
            }
            assert!(Instant::now() < deadline, "no serving CSR");
            // The agent logs each CSR it creates: wait for the next one.
            let from = self.mark();
            let _ = self
                .agent()
                .wait_for("CSR created", from, Duration::from_secs(2));
        }
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
    pub(crate) fn assert_log_clean(&self) {
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
    // The read-only port: health and metrics, nothing else, no TLS.
    assert_eq!(
        plain_get(node.read_only, "/healthz"),
        (200, "ok".to_owned())
    );
    let (code, public) = plain_get(node.read_only, "/metrics");
    assert_eq!(code, 200);
    assert!(
        public.contains("sluice_certificate_rotations_total"),
        "{public}"
    );
    assert_eq!(plain_get(node.read_only, "/status").0, 404);
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

    // The serving certificate waits for its approval too; there being no
    // Node object, it names the host's addresses and hostname. Until then
    // the secure port has nothing to serve.
    let serving = node.wait_serving_csr();
    let hostname = fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    let client = SecureClient::new(&node, true).expecting(hostname.trim());
    assert!(client.get("/healthz").is_err());
    node.server
        .kubectl(&["certificate", "approve", &serving])
        .unwrap();
    let issued = node.wait("serving certificate issued", 0);
    assert!(issued.contains(hostname.trim()), "{issued}");
    assert!(
        !issued.contains("127.0.0.1"),
        "no loopback address: {issued}"
    );
    assert_eq!(client.get("/healthz").unwrap().status, 200);
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
    // The file is in place before the agent takes it into use (and out of
    // its error state, had the old one expired meanwhile); it says so.
    node.agent()
        .wait_for("client certificate in use", from, STEP)
        .unwrap();
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

/// A TLS client of the secure port: the cluster CA as its only root, and
/// optionally a client certificate of the cluster CA (the admin's).
pub(crate) struct SecureClient {
    config: std::sync::Arc<rustls::ClientConfig>,
    port: u16,
    /// The name the server certificate must carry.
    name: rustls::pki_types::ServerName<'static>,
}

/// One HTTP response, and the serial of the server certificate it came with.
pub(crate) struct Answer {
    pub(crate) status: u16,
    pub(crate) body: String,
    serial: String,
}

impl SecureClient {
    pub(crate) fn new(node: &Node, authenticated: bool) -> Self {
        Self::of(&node.server, node.secure, authenticated)
    }

    /// A client of the secure port on `port`, trusting `server`'s CA, with
    /// its admin certificate if `authenticated`.
    fn of(server: &ApiServer, port: u16, authenticated: bool) -> Self {
        Self::with(server, port, authenticated, rustls::DEFAULT_VERSIONS)
    }

    /// A client offering only `versions` of TLS.
    pub(crate) fn with(
        server: &ApiServer,
        port: u16,
        authenticated: bool,
        versions: &[&'static rustls::SupportedProtocolVersion],
    ) -> Self {
        use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _};
        let builder = Self::builder(server, versions);
        let config = if authenticated {
            let field = |name: &str| {
                let out = server
                    .kubectl(&[
                        "config",
                        "view",
                        "--raw",
                        "-o",
                        &format!("jsonpath={{.users[0].user.{name}}}"),
                    ])
                    .unwrap();
                base64::engine::general_purpose::STANDARD
                    .decode(out.trim())
                    .unwrap()
            };
            let chain = CertificateDer::pem_slice_iter(&field("client-certificate-data"))
                .collect::<Result<Vec<_>, _>>()
                .unwrap();
            let key = PrivateKeyDer::from_pem_slice(&field("client-key-data")).unwrap();
            builder.with_client_auth_cert(chain, key).unwrap()
        } else {
            builder.with_no_client_auth()
        };
        Self {
            config: std::sync::Arc::new(config),
            port,
            name: rustls::pki_types::ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()),
        }
    }

    fn builder(
        server: &ApiServer,
        versions: &[&'static rustls::SupportedProtocolVersion],
    ) -> rustls::ConfigBuilder<rustls::ClientConfig, rustls::client::WantsClientCert> {
        use rustls::pki_types::{CertificateDer, pem::PemObject as _};
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(server.ca()).unwrap() {
            roots.add(cert.unwrap()).unwrap();
        }
        rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .unwrap()
            .with_root_certificates(roots)
    }

    /// A client presenting this certificate (PEM) and key.
    pub(crate) fn with_identity(server: &ApiServer, port: u16, cert: &str, key: &str) -> Self {
        use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _};
        let chain = CertificateDer::pem_slice_iter(cert.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap();
        let config = Self::builder(server, rustls::DEFAULT_VERSIONS)
            .with_client_auth_cert(chain, key)
            .unwrap();
        Self {
            config: std::sync::Arc::new(config),
            port,
            name: rustls::pki_types::ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()),
        }
    }

    /// Expects the server certificate to name `name` instead of 127.0.0.1.
    fn expecting(mut self, name: &str) -> Self {
        self.name = rustls::pki_types::ServerName::try_from(name.to_owned()).unwrap();
        self
    }

    /// Opens a connection to 127.0.0.1 (the name the certificate must have).
    fn connect(
        &self,
    ) -> std::io::Result<rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream>> {
        let tcp = std::net::TcpStream::connect(("127.0.0.1", self.port))?;
        tcp.set_read_timeout(Some(Duration::from_secs(5)))?;
        let conn =
            rustls::ClientConnection::new(std::sync::Arc::clone(&self.config), self.name.clone())
                .map_err(std::io::Error::other)?;
        Ok(rustls::StreamOwned::new(conn, tcp))
    }

    /// A GET on a new connection.
    pub(crate) fn get(&self, path: &str) -> std::io::Result<Answer> {
        let mut stream = self.connect()?;
        request(&mut stream, path)
    }

    /// A GET with a bearer token, on a new connection.
    pub(crate) fn get_with_token(&self, path: &str, token: &str) -> std::io::Result<Answer> {
        let mut stream = self.connect()?;
        request_with(
            &mut stream,
            path,
            &format!("Authorization: Bearer {token}\r\n"),
        )
    }
}

/// GET `path` on an open connection (kept alive); reads one response.
fn request(
    stream: &mut rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream>,
    path: &str,
) -> std::io::Result<Answer> {
    request_with(stream, path, "")
}

/// GET `path` with more header lines (each ending in CRLF).
fn request_with(
    stream: &mut rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream>,
    path: &str,
    headers: &str,
) -> std::io::Result<Answer> {
    use std::io::{BufRead as _, Read as _, Write as _};
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: node-1\r\n{headers}\r\n"
    )?;
    stream.flush()?;
    let serial = stream
        .conn
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| {
            use x509_parser::prelude::FromDer as _;
            x509_parser::certificate::X509Certificate::from_der(c)
                .map(|(_, x)| x.raw_serial_as_string())
                .unwrap_or_default()
        })
        .unwrap_or_default();
    let mut reader = std::io::BufReader::new(stream);
    let mut status_line = String::new();
    reader.read_line(&mut status_line)?;
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let mut length = 0usize;
    for _ in 0..64 {
        let mut line = String::new();
        reader.read_line(&mut line)?;
        if line.trim().is_empty() {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            length = v.trim().parse().unwrap_or(0);
        }
    }
    let mut body = vec![0u8; length];
    reader.read_exact(&mut body)?;
    Ok(Answer {
        status,
        body: String::from_utf8_lossy(&body).into_owned(),
        serial,
    })
}

pub(crate) const NODE_OBJECT: &str = "apiVersion: v1\nkind: Node\nmetadata: {name: node-1}\n";

impl Node {
    pub(crate) fn set_node_addresses(&self, addresses: &[(&str, &str)]) {
        set_node_addresses(&self.server, self.dir.path(), addresses);
    }
}

#[test]
fn the_secure_port_serves_the_nodes_serving_certificate_to_cluster_clients_only() {
    let mut node = Node::new(&["--approve-kubelet-serving"], true);
    node.set_node_addresses(&[("InternalIP", "127.0.0.1"), ("Hostname", "node-1")]);
    node.start_agent();
    let issued = node.wait("serving certificate issued", 0);
    assert!(
        issued.contains("[\"127.0.0.1\", \"node-1\"]"),
        "sorted SANs: {issued}"
    );

    let admin = SecureClient::new(&node, true);
    let health = admin.get("/healthz").unwrap();
    assert_eq!((health.status, health.body.as_str()), (200, "ok"));
    let status = admin.get("/status").unwrap();
    assert_eq!(status.status, 200);
    let json: serde_json::Value = serde_json::from_str(&status.body).unwrap();
    let serving = &json["certificates"]["serving"];
    assert_eq!(serving["subject"], "system:node:node-1", "{json}");
    assert_eq!(
        serving["serial"].as_str().unwrap(),
        status.serial.replace(':', "")
    );
    assert!(
        json["certificates"]["client"]["notAfter"]
            .as_u64()
            .is_some(),
        "{json}"
    );
    let metrics = admin.get("/metrics").unwrap().body;
    assert!(
        metrics.contains("sluice_certificate_expiration_timestamp_seconds{kind=\"serving\"}"),
        "{metrics}"
    );

    // No client certificate: the handshake works, the request does not.
    let anonymous = SecureClient::new(&node, false).get("/status").unwrap();
    assert_eq!(anonymous.status, 401);
    assert!(!anonymous.body.contains("serial"));

    // A client that never starts its handshake is closed within the
    // handshake timeout (10 s), not kept forever.
    let mut silent = std::net::TcpStream::connect(("127.0.0.1", node.secure)).unwrap();
    silent
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut buf = [0u8; 16];
    let read = std::io::Read::read(&mut silent, &mut buf);
    assert!(
        matches!(&read, Ok(0))
            || read
                .as_ref()
                .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset),
        "closed by the server, not timed out here: {read:?}"
    );
    assert!(
        admin.get("/healthz").is_ok(),
        "served beside a silent client"
    );

    // New addresses: a new certificate that names them.
    let from = node.mark();
    node.set_node_addresses(&[
        ("InternalIP", "127.0.0.1"),
        ("InternalIP", "127.0.0.2"),
        ("Hostname", "node-1"),
    ]);
    node.wait("names changed", from);
    let reissued = node.wait("serving certificate issued", from);
    assert!(reissued.contains("127.0.0.2"), "{reissued}");
    assert_ne!(admin.get("/healthz").unwrap().serial, health.serial);
    node.assert_log_clean();
}

#[test]
fn certificates_rotate_under_a_client_that_never_sees_a_failed_request() {
    let mut node = Node::new(
        &[
            "--approve-kubelet-serving",
            "--cluster-signing-duration",
            "30s",
        ],
        true,
    );
    node.set_node_addresses(&[("InternalIP", "127.0.0.1"), ("Hostname", "node-1")]);
    node.start_agent();
    node.wait("serving certificate issued", 0);
    let client = SecureClient::new(&node, true);
    // One connection stays open throughout; every other request opens a
    // new one, and sees the certificate of the moment.
    let mut kept = client.connect().unwrap();
    let first_kept = request(&mut kept, "/healthz").unwrap();
    let mut serials: Vec<String> = vec![first_kept.serial.clone()];
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut requests = 0u32;
    while serials.len() < 3 {
        assert!(
            Instant::now() < deadline,
            "serials seen: {serials:?}; log: {}",
            node.agent.as_ref().unwrap().log()
        );
        let answer = client
            .get("/healthz")
            .unwrap_or_else(|e| panic!("request {requests}: {e}"));
        assert_eq!(answer.status, 200, "request {requests}: {}", answer.body);
        if !serials.contains(&answer.serial) {
            serials.push(answer.serial);
        }
        // The open connection keeps working, with the certificate it began
        // with.
        let on_kept =
            request(&mut kept, "/healthz").unwrap_or_else(|e| panic!("kept connection: {e}"));
        assert_eq!((on_kept.status, &on_kept.serial), (200, &first_kept.serial));
        requests += 1;
        // Pacing of the probe, not a wait for a condition.
        std::thread::sleep(Duration::from_millis(100));
    }
    // The client certificate rotates as well: twice, within its bound.
    let deadline = Instant::now() + STEP * 2;
    loop {
        let log = node.agent.as_ref().unwrap().log();
        if log.matches("client certificate rotated").count() >= 2 {
            break;
        }
        assert!(Instant::now() < deadline, "{log}");
        let from = node.mark();
        let _ = node
            .agent()
            .wait_for("client certificate rotated", from, Duration::from_secs(5));
    }
    node.assert_log_clean();
}

/// `(status, body)` of a plain-HTTP GET on a loopback port.
fn plain_get(port: u16, path: &str) -> (u16, String) {
    use std::io::{Read as _, Write as _};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
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

#[test]
fn an_expired_certificate_without_a_bootstrap_kubeconfig_is_an_error_in_healthz() {
    let mut node = Node::new(&[], true);
    node.start_agent();
    node.wait("bootstrapped", 0);
    drop(node.agent.take());
    // Replace the certificate with an expired one of the same key.
    let current = node.current();
    let text = fs::read_to_string(&current).unwrap();
    let key_pem = &text[text.find("-----BEGIN PRIVATE KEY-----").unwrap()..];
    let key = rcgen::KeyPair::from_pem(key_pem).unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.not_before = rcgen::date_time_ymd(2020, 1, 1);
    params.not_after = rcgen::date_time_ymd(2021, 1, 1);
    fs::write(
        &current,
        format!("{}{key_pem}", params.self_signed(&key).unwrap().pem()),
    )
    .unwrap();
    // The kubelet kubeconfig's cluster CA still lets the secure port start.
    node.start_agent_with(false);
    node.wait("serving /healthz", 0);
    let deadline = Instant::now() + STEP;
    let body = loop {
        let (code, body) = node.health("/healthz");
        if code == 500 {
            break body;
        }
        assert!(Instant::now() < deadline, "healthz stayed {code}: {body}");
        let from = node.mark();
        let _ = node
            .agent()
            .wait_for("no bootstrap kubeconfig", from, Duration::from_secs(1));
    };
    assert!(
        body.contains("client certificate") && body.contains("no bootstrap kubeconfig"),
        "{body}"
    );
    node.assert_log_clean();
}

#[test]
fn the_secure_port_shows_the_services_backends_and_certificates_of_a_running_node() {
    if !require_privileges(
        "the_secure_port_shows_the_services_backends_and_certificates_of_a_running_node",
    ) {
        return;
    }
    // The full agent in a lab: Services from the API server, and the node's
    // certificates from the same server.
    let mut lab = crate::common::web_lab(2);
    lab.start_apiserver(&["--enable-bootstrap-token-auth", "--approve-kubelet-serving"])
        .unwrap();
    let dir = lab.dir().to_owned();
    prepare_bootstrap(lab.apiserver(), &dir, true);
    set_node_addresses(lab.apiserver(), &dir, &[("InternalIP", "127.0.0.1")]);
    let web = dir.join("web.yaml");
    fs::write(&web, crate::common::web_manifest(&[0, 1])).unwrap();
    lab.apiserver()
        .kubectl(&["apply", "-f", web.to_str().unwrap()])
        .unwrap();
    let path = |name: &str| dir.join(name).display().to_string();
    let opts = AgentOptions {
        source: AgentSource::Kubeconfig(lab.apiserver().admin_kubeconfig()),
        service_cidr: Some(crate::common::SERVICE_CIDR.into()),
        extra_args: [
            "--bootstrap-kubeconfig",
            &path("bootstrap.kubeconfig"),
            "--kubelet-kubeconfig",
            &path("kubelet.kubeconfig"),
            "--cert-dir",
            &path("pki"),
            "--node-name",
            NODE,
            "--secure-listen",
            "127.0.0.1:10250",
        ]
        .map(str::to_owned)
        .to_vec(),
        ..AgentOptions::default()
    };
    lab.start_agent(&opts).unwrap();
    lab.agent()
        .wait_for("serving certificate issued", 0, STEP)
        .unwrap();
    for _ in 0..4 {
        lab.pod("client")
            .tcp_request(crate::common::http(), crate::common::T)
            .unwrap();
    }
    // Asked from the node namespace, where the agent listens.
    let client = SecureClient::of(lab.apiserver(), 10250, true);
    let status = lab
        .node()
        .run(move || client.get("/status"))
        .unwrap()
        .unwrap();
    assert_eq!(status.status, 200, "{}", status.body);
    let json: serde_json::Value = serde_json::from_str(&status.body).unwrap();
    let services = json["dataplane"]["services"].as_array().unwrap();
    let web = services
        .iter()
        .find(|s| s["name"] == "default/web:http")
        .unwrap_or_else(|| panic!("{json}"));
    assert_eq!(web["frontend"], "10.96.0.10:80/TCP");
    assert_eq!(web["backends"].as_array().unwrap().len(), 2, "{web}");
    assert_eq!(web["traffic"]["new_flows"], 4, "{web}");
    assert_eq!(
        json["certificates"]["serving"]["sans"][0], "127.0.0.1",
        "{json}"
    );
    assert_eq!(
        json["certificates"]["client"]["subject"],
        "system:node:node-1"
    );
    let log = lab.agent().log();
    assert!(
        !log.contains(TOKEN_SECRET) && !log.contains("PRIVATE KEY"),
        "{log}"
    );
}
