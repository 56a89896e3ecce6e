//! End-to-end: the secure port authenticates and authorizes each request
//! as the kubelet does, against the local API server on loopback: client
//! certificates and ServiceAccount tokens (TokenReview), a
//! SubjectAccessReview on `nodes/<subresource>` of this node, decisions
//! cached; and its TLS flags.
#![allow(clippy::unwrap_used, reason = "tests: a failure fails the test")]

use std::fs;

use super::certs::{Node, SecureClient};

/// A ServiceAccount in `default` bound to a ClusterRole that may get
/// `nodes/metrics`, and nothing else.
const METRICS_READER: &str = "\
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: node-metrics-reader}
rules:
- {apiGroups: [\"\"], resources: [nodes/metrics], verbs: [get]}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: metrics-reader, namespace: default}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: metrics-reader-2, namespace: default}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: node-metrics-reader}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: node-metrics-reader}
subjects:
- {kind: ServiceAccount, name: metrics-reader, namespace: default}
- {kind: ServiceAccount, name: metrics-reader-2, namespace: default}
";

/// The API server's count of `verb` requests on `resource`.
fn requests(node: &Node, verb: &str, resource: &str) -> u64 {
    let metrics = node.server.kubectl(&["get", "--raw", "/metrics"]).unwrap();
    metrics
        .lines()
        .find(|l| {
            l.starts_with("apiserver_request_total{")
                && l.contains(&format!("verb=\"{verb}\""))
                && l.contains(&format!("resource=\"{resource}\""))
        })
        .and_then(|l| l.rsplit(' ').next())
        .map_or(0, |n| n.parse().unwrap())
}

/// A client certificate of the cluster CA for another node, and its key.
fn other_nodes_certificate(node: &Node) -> (String, String) {
    let dir = node.server.data_dir();
    let ca_key =
        rcgen::KeyPair::from_pem(&fs::read_to_string(dir.join("ca.key")).unwrap()).unwrap();
    let issuer =
        rcgen::Issuer::from_ca_cert_pem(&fs::read_to_string(dir.join("ca.crt")).unwrap(), ca_key)
            .unwrap();
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "system:node:node-2");
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationName, "system:nodes");
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap();
    (cert.pem(), key.serialize_pem())
}

fn started(extra: &[&str]) -> Node {
    let mut node = Node::new(&["--approve-kubelet-serving"], true);
    node.set_node_addresses(&[("InternalIP", "127.0.0.1"), ("Hostname", "node-1")]);
    node.extra_args = extra.iter().map(|a| (*a).to_owned()).collect();
    node.start_agent();
    node.wait("serving certificate issued", 0);
    node
}

#[test]
fn the_secure_port_authorizes_each_request_with_a_subject_access_review_of_this_node() {
    let node = started(&[]);
    let yaml = node.path("metrics-reader.yaml");
    fs::write(&yaml, METRICS_READER).unwrap();
    node.server
        .kubectl(&["apply", "-f", yaml.to_str().unwrap()])
        .unwrap();

    // The cluster admin (system:masters) may do everything.
    let admin = SecureClient::new(&node, true);
    assert_eq!(admin.get("/status").unwrap().status, 200);
    assert_eq!(admin.get("/metrics").unwrap().status, 200);

    // Another node's certificate chains to the CA, but the node may not
    // read this node's Services.
    let (cert, key) = other_nodes_certificate(&node);
    let other = SecureClient::with_identity(&node.server, node.secure, &cert, &key);
    for path in ["/status", "/metrics"] {
        let answer = other.get(path).unwrap();
        assert_eq!(answer.status, 403, "{path}: {}", answer.body);
        assert!(
            answer.body.contains("system:node:node-2"),
            "{}",
            answer.body
        );
    }

    // A ServiceAccount token bound to nodes/metrics: /metrics, not /status.
    let token = node
        .server
        .kubectl(&["create", "token", "metrics-reader", "-n", "default"])
        .unwrap();
    let bare = SecureClient::new(&node, false);
    let metrics = bare.get_with_token("/metrics", token.trim()).unwrap();
    assert_eq!(metrics.status, 200, "{}", metrics.body);
    assert!(metrics.body.contains("sluice_"), "{}", metrics.body);
    let status = bare.get_with_token("/status", token.trim()).unwrap();
    assert_eq!(status.status, 403, "{}", status.body);
    assert!(!status.body.contains("serial"));

    // An unknown token, and no credentials at all: 401.
    assert_eq!(
        bare.get_with_token("/metrics", "not-a-token")
            .unwrap()
            .status,
        401
    );
    assert_eq!(bare.get("/metrics").unwrap().status, 401);

    // Ten requests with one new credential: one TokenReview and one
    // SubjectAccessReview at the API server.
    let token = node
        .server
        .kubectl(&["create", "token", "metrics-reader-2", "-n", "default"])
        .unwrap();
    let (sars, token_reviews) = (
        requests(&node, "create", "subjectaccessreviews"),
        requests(&node, "create", "tokenreviews"),
    );
    for _ in 0..10 {
        let answer = bare.get_with_token("/metrics", token.trim()).unwrap();
        assert_eq!(answer.status, 200, "{}", answer.body);
    }
    assert_eq!(
        requests(&node, "create", "subjectaccessreviews") - sars,
        1,
        "SubjectAccessReviews for ten requests"
    );
    assert_eq!(
        requests(&node, "create", "tokenreviews") - token_reviews,
        1,
        "TokenReviews for ten requests"
    );
    node.assert_log_clean();
}

#[test]
fn anonymous_requests_are_authorized_as_system_anonymous_only_when_allowed() {
    let node = started(&["--anonymous-auth", "true"]);
    // system:anonymous may do nothing on nodes: 403, not 401.
    let bare = SecureClient::new(&node, false);
    let answer = bare.get("/healthz").unwrap();
    assert_eq!(answer.status, 403, "{}", answer.body);
    assert!(answer.body.contains("system:anonymous"), "{}", answer.body);
    let grant = node.path("anonymous-healthz.yaml");
    fs::write(
        &grant,
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata: {name: node-healthz}\n\
         rules:\n- {apiGroups: [\"\"], resources: [nodes/healthz], verbs: [get]}\n---\n\
         apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata: {name: node-healthz}\n\
         roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: node-healthz}\n\
         subjects:\n- {apiGroup: rbac.authorization.k8s.io, kind: User, name: \"system:anonymous\"}\n",
    )
    .unwrap();
    node.server
        .kubectl(&["apply", "-f", grant.to_str().unwrap()])
        .unwrap();
    // The denial was cached for 30 s; then the new grant applies.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(45);
    let mut last = 0;
    while std::time::Instant::now() < deadline {
        last = bare.get("/healthz").unwrap().status;
        if last == 200 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
    assert_eq!(last, 200, "the grant took within the denial's 30 s");
    assert_eq!(bare.get("/metrics").unwrap().status, 403);
}

#[test]
fn tls_min_version_13_refuses_a_tls_12_client() {
    let node = started(&["--tls-min-version", "VersionTLS13"]);
    let tls12 = SecureClient::with(&node.server, node.secure, true, &[&rustls::version::TLS12]);
    assert!(tls12.get("/healthz").is_err(), "a TLS 1.2 handshake");
    let tls13 = SecureClient::with(&node.server, node.secure, true, &[&rustls::version::TLS13]);
    assert_eq!(tls13.get("/healthz").unwrap().status, 200);
}
