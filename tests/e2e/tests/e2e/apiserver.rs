//! The local API server (`sluice-apiserver`), judged by what real clients do
//! with it: kubectl (as installed on the machine) and a kube-rs watcher.
//! No root needed: the server listens on a loopback port.
#![allow(clippy::unwrap_used, reason = "tests: a failure fails the test")]

use std::{
    fs,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use base64::Engine as _;
use sluice_lab::ApiServer;
use tempfile::TempDir;

const WAIT: Duration = Duration::from_secs(10);

/// A server with its state in a fresh directory (removed after the server).
pub(crate) fn server(args: &[&str]) -> (TempDir, ApiServer) {
    let dir = tempfile::Builder::new()
        .prefix("sluice-apiserver-test-")
        .tempdir()
        .unwrap();
    let server = ApiServer::start(&dir.path().join("data"), args).unwrap();
    (dir, server)
}

/// Polls `f` until it returns `Some`, for at most `WAIT`; the condition is
/// another component's work (a controller), with no event to wait on here.
pub(crate) fn eventually<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A kubeconfig for a bearer token.
pub(crate) fn token_kubeconfig(s: &ApiServer, dir: &Path, name: &str, token: &str) -> PathBuf {
    let path = dir.join(format!("{name}.kubeconfig"));
    let ca = base64::engine::general_purpose::STANDARD.encode(fs::read(s.ca()).unwrap());
    fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster: {{server: {}, certificate-authority-data: {ca}}}\n\
             users:\n- name: u\n  user: {{token: {token}}}\ncontexts:\n- name: x\n  context: {{cluster: c, user: u}}\ncurrent-context: x\n",
            s.url()
        ),
    )
    .unwrap();
    path
}

/// A kubelet-style client CSR (`system:node:<node>`, `system:nodes`), PEM.
fn node_csr(node: &str) -> String {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationName, "system:nodes");
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, format!("system:node:{node}"));
    params.serialize_request(&key).unwrap().pem().unwrap()
}

fn csr_manifest(name: &str, pem: &str) -> String {
    let request = base64::engine::general_purpose::STANDARD.encode(pem);
    format!(
        "apiVersion: certificates.k8s.io/v1\nkind: CertificateSigningRequest\nmetadata: {{name: {name}}}\nspec:\n  \
         request: {request}\n  signerName: kubernetes.io/kube-apiserver-client-kubelet\n  usages: [digital signature, client auth]\n"
    )
}

pub(crate) fn apply(
    s: &ApiServer,
    dir: &Path,
    kubeconfig: Option<&Path>,
    file: &str,
    yaml: &str,
) -> String {
    let path = dir.join(file);
    fs::write(&path, yaml).unwrap();
    let path = path.to_str().unwrap();
    match kubeconfig {
        Some(k) => s.kubectl_as(k, &["apply", "-f", path]).unwrap(),
        None => s.kubectl(&["apply", "-f", path]).unwrap(),
    }
}

/// Merges `status` (JSON) into pod `pod`'s status.
pub(crate) fn set_pod_status(s: &ApiServer, pod: &str, status: &str) {
    s.kubectl(&[
        "patch",
        "pod",
        pod,
        "--subresource=status",
        "--type=merge",
        "-p",
        status,
    ])
    .unwrap();
}

pub(crate) fn jsonpath(s: &ApiServer, args: &[&str], path: &str) -> String {
    let expr = format!("jsonpath={path}");
    let mut all = args.to_vec();
    all.extend(["-o", &expr]);
    s.kubectl(&all).unwrap()
}

/// The CN of a CSR's issued certificate, once issued.
fn issued_cn(s: &ApiServer, csr: &str) -> Option<String> {
    let b64 = jsonpath(s, &["get", "csr", csr], "{.status.certificate}");
    if b64.is_empty() {
        return None;
    }
    let pem_text = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap();
    let (_, pem) = x509_parser::pem::parse_x509_pem(&pem_text).unwrap();
    let cert = pem.parse_x509().unwrap();
    let cn = cert
        .subject()
        .iter_common_name()
        .next()
        .unwrap()
        .as_str()
        .unwrap()
        .to_owned();
    Some(cn)
}

const SERVICES: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec:\n  ports: [{name: http, port: 80, targetPort: 8080}]\n---\n\
apiVersion: v1\nkind: Service\nmetadata: {name: api}\nspec:\n  clusterIP: 10.96.0.50\n  ports: [{port: 443}]\n";
const SLICE: &str = "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: api-1\n  labels: {kubernetes.io/service-name: api}\n\
addressType: IPv4\nports: [{name: \"\", port: 443}]\nendpoints: [{addresses: [10.244.1.5]}]\n";
const RBAC: &str = "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata: {name: svc-reader}\n\
rules: [{apiGroups: [\"\"], resources: [services], verbs: [get, list, watch]}]\n---\n\
apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata: {name: svc-reader}\n\
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: svc-reader}\nsubjects: [{kind: User, name: alice}]\n";
const BOOTSTRAP_SECRET: &str = "apiVersion: v1\nkind: Secret\nmetadata: {name: bootstrap-token-07401b, namespace: kube-system}\n\
type: bootstrap.kubernetes.io/token\nstringData:\n  token-id: 07401b\n  token-secret: f395accd246ae52d\n  expiration: \"2099-01-01T00:00:00Z\"\n  \
usage-bootstrap-authentication: \"true\"\n  usage-bootstrap-signing: \"true\"\n";

#[test]
fn kubectl_apply_of_a_directory_then_a_second_apply_patches_only_the_change() {
    let (dir, s) = server(&[]);
    let manifests = dir.path().join("manifests");
    fs::create_dir(&manifests).unwrap();
    for (file, yaml) in [
        ("svc.yaml", SERVICES),
        ("slice.yaml", SLICE),
        ("rbac.yaml", RBAC),
        ("token.yaml", BOOTSTRAP_SECRET),
    ] {
        fs::write(manifests.join(file), yaml).unwrap();
    }
    let out = s
        .kubectl(&["apply", "-f", manifests.to_str().unwrap()])
        .unwrap();
    assert_eq!(out.matches(" created").count(), 6, "{out}");
    let ip = jsonpath(&s, &["get", "svc", "web"], "{.spec.clusterIP}");
    let bits = ip.parse::<std::net::Ipv4Addr>().unwrap().to_bits();
    let (low, high) = (0x0a60_0000_u32, 0x0a70_0000_u32); // 10.96.0.0/12
    assert!(
        (low..high).contains(&bits) && ip != "10.96.0.50",
        "a ClusterIP in the range was allocated: {ip}"
    );
    let uid = jsonpath(&s, &["get", "svc", "web"], "{.metadata.uid}");
    let api_rv = jsonpath(&s, &["get", "svc", "api"], "{.metadata.resourceVersion}");
    let token_id = jsonpath(
        &s,
        &[
            "get",
            "secret",
            "-n",
            "kube-system",
            "bootstrap-token-07401b",
        ],
        "{.data.token-id}",
    );
    assert_eq!(
        token_id,
        base64::engine::general_purpose::STANDARD.encode("07401b"),
        "stringData went into data"
    );

    fs::write(
        manifests.join("svc.yaml"),
        SERVICES.replace("targetPort: 8080", "targetPort: 9090"),
    )
    .unwrap();
    let out = s
        .kubectl(&["apply", "-f", manifests.to_str().unwrap()])
        .unwrap();
    assert!(out.contains("service/web configured"), "{out}");
    assert!(
        out.contains("service/api unchanged")
            && out.contains("endpointslice.discovery.k8s.io/api-1 unchanged"),
        "{out}"
    );
    assert_eq!(
        jsonpath(&s, &["get", "svc", "web"], "{.spec.ports[0].targetPort}"),
        "9090"
    );
    assert_eq!(
        jsonpath(&s, &["get", "svc", "web"], "{.spec.clusterIP}"),
        ip,
        "the allocated IP stays"
    );
    assert_eq!(jsonpath(&s, &["get", "svc", "web"], "{.metadata.uid}"), uid);
    assert_eq!(
        jsonpath(&s, &["get", "svc", "api"], "{.metadata.resourceVersion}"),
        api_rv,
        "api was not written"
    );

    // Default validation is strict: an unknown field is refused, by name.
    let bad = manifests.join("bad.yaml");
    fs::write(
        &bad,
        "apiVersion: v1\nkind: Service\nmetadata: {name: bad}\nspec: {portz: [{port: 80}]}\n",
    )
    .unwrap();
    let err = s
        .kubectl(&["apply", "-f", bad.to_str().unwrap()])
        .unwrap_err();
    assert!(
        err.to_string().contains("unknown field \"spec.portz\""),
        "{err}"
    );
    // A taken ClusterIP is refused.
    let dup = manifests.join("dup.yaml");
    fs::write(&dup, "apiVersion: v1\nkind: Service\nmetadata: {name: dup}\nspec: {clusterIP: 10.96.0.50, ports: [{port: 80}]}\n").unwrap();
    let err = s
        .kubectl(&["apply", "-f", dup.to_str().unwrap()])
        .unwrap_err();
    assert!(err.to_string().contains("already allocated"), "{err}");
}

#[test]
fn pods_become_endpoint_slice_entries_with_named_ports_readiness_and_deletion() {
    let (dir, s) = server(&[]);
    let yaml = "apiVersion: v1\nkind: Service\nmetadata: {name: app}\nspec:\n  selector: {app: web}\n  ports: [{name: http, port: 80, targetPort: web}]\n---\n\
apiVersion: v1\nkind: Pod\nmetadata: {name: web-1, labels: {app: web}}\nspec:\n  nodeName: node-a\n  \
containers: [{name: c, image: nginx, ports: [{name: web, containerPort: 8081}]}]\n---\n\
apiVersion: v1\nkind: Pod\nmetadata: {name: other, labels: {app: db}}\nspec:\n  containers: [{name: c, image: db}]\n";
    apply(&s, dir.path(), None, "app.yaml", yaml);
    let endpoints = || {
        jsonpath(
            &s,
            &[
                "get",
                "endpointslices",
                "-l",
                "kubernetes.io/service-name=app",
            ],
            "{.items[*].endpoints}",
        )
    };
    let set_status = |status: &str| set_pod_status(&s, "web-1", status);
    set_status(
        r#"{"status":{"podIP":"10.244.1.5","conditions":[{"type":"Ready","status":"True"}]}}"#,
    );
    let ready = eventually("a ready endpoint", || {
        let e = endpoints();
        e.contains("10.244.1.5").then_some(e)
    });
    assert!(
        ready.contains(r#""ready":true"#) && ready.contains(r#""nodeName":"node-a""#),
        "{ready}"
    );
    let ports = jsonpath(
        &s,
        &[
            "get",
            "endpointslices",
            "-l",
            "kubernetes.io/service-name=app",
        ],
        "{.items[*].ports}",
    );
    assert!(
        ports.contains(r#""port":8081"#) && ports.contains(r#""name":"http""#),
        "named targetPort resolved: {ports}"
    );
    // The change carries the time it was seen, as kube-controller-manager's.
    let trigger = jsonpath(
        &s,
        &[
            "get",
            "endpointslices",
            "-l",
            "kubernetes.io/service-name=app",
        ],
        r"{.items[*].metadata.annotations.endpoints\.kubernetes\.io/last-change-trigger-time}",
    );
    assert!(
        trigger.starts_with("20") && trigger.ends_with('Z'),
        "an RFC 3339 trigger time: {trigger:?}"
    );

    set_status(r#"{"status":{"conditions":[{"type":"Ready","status":"False"}]}}"#);
    eventually("a not-ready endpoint", || {
        endpoints()
            .contains(r#""ready":false,"serving":false"#)
            .then_some(())
    });

    // A graceful deletion marks the endpoint terminating; a forced one removes it.
    set_status(r#"{"status":{"conditions":[{"type":"Ready","status":"True"}]}}"#);
    s.kubectl(&["delete", "pod", "web-1", "--wait=false"])
        .unwrap();
    eventually("a terminating endpoint", || {
        endpoints().contains(r#""terminating":true"#).then_some(())
    });
    s.kubectl(&["delete", "pod", "web-1", "--grace-period=0", "--force"])
        .unwrap();
    eventually("no endpoint", || {
        (!endpoints().contains("10.244.1.5")).then_some(())
    });
}

#[test]
fn kubectl_get_delete_and_a_watch_seeing_another_clients_change() {
    let (dir, s) = server(&[]);
    apply(&s, dir.path(), None, "svc.yaml", SERVICES);
    apply(&s, dir.path(), None, "slice.yaml", SLICE);
    let all = s.kubectl(&["get", "svc", "-A"]).unwrap();
    for want in [
        "NAMESPACE",
        "kubernetes",
        "web",
        "api",
        "10.96.0.50",
        "ClusterIP",
    ] {
        assert!(all.contains(want), "missing {want}:\n{all}");
    }
    let slices = s.kubectl(&["get", "endpointslices"]).unwrap();
    assert!(
        slices.contains("api-1") && slices.contains("10.244.1.5"),
        "{slices}"
    );
    apply(
        &s,
        dir.path(),
        None,
        "csr.yaml",
        &csr_manifest("node-csr-x", &node_csr("node-a")),
    );
    let csrs = s.kubectl(&["get", "csr"]).unwrap();
    assert!(
        csrs.contains("node-csr-x") && csrs.contains("kube-apiserver-client-kubelet"),
        "{csrs}"
    );

    let mut watch = s.kubectl_spawn(&["get", "svc", "-w"]).unwrap();
    watch.wait_for("kubernetes", 0, WAIT).unwrap();
    let mark = watch.log_len();
    s.kubectl(&[
        "create",
        "service",
        "clusterip",
        "newcomer",
        "--tcp=80:8080",
    ])
    .unwrap();
    watch.wait_for("newcomer", mark, WAIT).unwrap();

    s.kubectl(&["delete", "svc", "web"]).unwrap();
    let err = s.kubectl(&["get", "svc", "web"]).unwrap_err();
    assert!(
        err.to_string().contains("NotFound") || err.to_string().contains("not found"),
        "{err}"
    );
}

#[test]
fn the_seed_commands_work_verbatim() {
    const BOOTSTRAP_TOKEN: &str = "02b50b05283e98dd0fd71db496ef01e8";
    let dir = tempfile::Builder::new()
        .prefix("sluice-apiserver-test-")
        .tempdir()
        .unwrap();
    let token_csv = dir.path().join("token.csv");
    fs::write(
        &token_csv,
        format!("{BOOTSTRAP_TOKEN},kubelet-bootstrap,10001,\"system:kubelet-bootstrap\"\n"),
    )
    .unwrap();
    let token_flag = token_csv.to_str().unwrap();
    let s = ApiServer::start(
        &dir.path().join("data"),
        &[
            "--token-auth-file",
            token_flag,
            "--enable-bootstrap-token-auth",
        ],
    )
    .unwrap();

    s.kubectl(&[
        "create",
        "clusterrolebinding",
        "kubelet-bootstrap",
        "--clusterrole=system:node-bootstrapper",
        "--user=kubelet-bootstrap",
    ])
    .unwrap();
    let selfnodeserver = "# A ClusterRole which instructs the CSR approver to approve a node requesting a\n\
# serving cert matching its client cert.\nkind: ClusterRole\napiVersion: rbac.authorization.k8s.io/v1\nmetadata:\n  \
name: system:certificates.k8s.io:certificatesigningrequests:selfnodeserver\nrules:\n- apiGroups: [\"certificates.k8s.io\"]\n  \
resources: [\"certificatesigningrequests/selfnodeserver\"]\n  verbs: [\"create\"]\n";
    apply(&s, dir.path(), None, "selfnodeserver.yaml", selfnodeserver);
    for args in [
        "create clusterrolebinding node-client-auto-approve-csr --clusterrole=system:certificates.k8s.io:certificatesigningrequests:nodeclient --group=system:bootstrappers",
        "create clusterrolebinding node-client-auto-renew-crt --clusterrole=system:certificates.k8s.io:certificatesigningrequests:selfnodeclient --group=system:nodes",
        "create clusterrolebinding node-server-auto-renew-crt --clusterrole=system:certificates.k8s.io:certificatesigningrequests:selfnodeserver --group=system:nodes",
    ] {
        s.kubectl(&args.split(' ').collect::<Vec<_>>()).unwrap();
    }

    // The token-file user (group system:kubelet-bootstrap) may create a CSR,
    // but nothing auto-approves it: it waits for a person.
    let kubelet = token_kubeconfig(&s, dir.path(), "kubelet-bootstrap", BOOTSTRAP_TOKEN);
    apply(
        &s,
        dir.path(),
        Some(&kubelet),
        "csr-a.yaml",
        &csr_manifest("node-csr-a", &node_csr("node-a")),
    );
    // A bootstrap token (group system:bootstrappers) is auto-approved; the
    // approver handles CSRs in order, so node-csr-a was decided before it.
    apply(&s, dir.path(), None, "token.yaml", BOOTSTRAP_SECRET);
    s.kubectl(&[
        "create",
        "clusterrolebinding",
        "bootstrappers",
        "--clusterrole=system:node-bootstrapper",
        "--group=system:bootstrappers",
    ])
    .unwrap();
    let bootstrapper = token_kubeconfig(&s, dir.path(), "bootstrapper", "07401b.f395accd246ae52d");
    apply(
        &s,
        dir.path(),
        Some(&bootstrapper),
        "csr-b.yaml",
        &csr_manifest("node-csr-b", &node_csr("node-b")),
    );
    eventually("node-csr-b auto-approved and issued", || {
        issued_cn(&s, "node-csr-b")
    });
    let reason = jsonpath(
        &s,
        &["get", "csr", "node-csr-b"],
        "{.status.conditions[0].reason}",
    );
    assert_eq!(reason, "AutoApproved");
    assert_eq!(
        jsonpath(&s, &["get", "csr", "node-csr-a"], "{.status.conditions}"),
        "",
        "node-csr-a is pending"
    );

    s.kubectl(&["certificate", "approve", "node-csr-a"])
        .unwrap();
    let cn = eventually("node-csr-a issued", || issued_cn(&s, "node-csr-a"));
    assert_eq!(cn, "system:node:node-a");
    assert_eq!(
        jsonpath(&s, &["get", "csr", "node-csr-a"], "{.spec.username}"),
        "kubelet-bootstrap"
    );
}

#[test]
fn bootstrap_tokens_authenticate_create_csrs_and_are_refused_secrets() {
    let (dir, s) = server(&["--enable-bootstrap-token-auth"]);
    apply(&s, dir.path(), None, "token.yaml", BOOTSTRAP_SECRET);
    s.kubectl(&[
        "create",
        "clusterrolebinding",
        "bootstrappers",
        "--clusterrole=system:node-bootstrapper",
        "--group=system:bootstrappers",
    ])
    .unwrap();
    let token = token_kubeconfig(&s, dir.path(), "token", "07401b.f395accd246ae52d");
    let whoami = s.kubectl_as(&token, &["auth", "whoami"]).unwrap();
    assert!(
        whoami.contains("system:bootstrap:07401b") && whoami.contains("system:bootstrappers"),
        "{whoami}"
    );
    apply(
        &s,
        dir.path(),
        Some(&token),
        "csr.yaml",
        &csr_manifest("node-csr-c", &node_csr("node-c")),
    );
    let denied = s
        .kubectl_as(&token, &["get", "secrets", "-A"])
        .unwrap_err()
        .to_string();
    assert!(
        denied.contains("Forbidden") || denied.contains("forbidden"),
        "{denied}"
    );
    assert!(denied.contains("system:bootstrap:07401b"), "{denied}");

    let expired = BOOTSTRAP_SECRET
        .replace("07401b", "abcdef")
        .replace("2099-01-01", "2020-01-01");
    apply(&s, dir.path(), None, "expired.yaml", &expired);
    let old = token_kubeconfig(&s, dir.path(), "old", "abcdef.f395accd246ae52d");
    let err = s.kubectl_as(&old, &["get", "ns"]).unwrap_err().to_string();
    assert!(
        err.contains("Unauthorized") || err.contains("unauthorized"),
        "{err}"
    );
    let wrong = token_kubeconfig(&s, dir.path(), "wrong", "07401b.0000000000000000");
    assert!(
        s.kubectl_as(&wrong, &["get", "ns"])
            .unwrap_err()
            .to_string()
            .contains("nauthorized")
    );
}

#[test]
fn service_account_tokens_authenticate_and_auth_can_i_answers_by_rbac() {
    let (dir, s) = server(&[]);
    s.kubectl(&["create", "namespace", "demo"]).unwrap();
    s.kubectl(&["create", "serviceaccount", "reader", "-n", "demo"])
        .unwrap();
    let token = eventually("the token Secret", || {
        let names = jsonpath(
            &s,
            &["get", "secrets", "-n", "demo"],
            "{.items[*].metadata.name}",
        );
        let secret = names
            .split_whitespace()
            .find(|n| n.starts_with("reader-token-"))?
            .to_owned();
        let b64 = jsonpath(
            &s,
            &["get", "secret", "-n", "demo", &secret],
            "{.data.token}",
        );
        (!b64.is_empty()).then(|| {
            String::from_utf8(
                base64::engine::general_purpose::STANDARD
                    .decode(b64)
                    .unwrap(),
            )
            .unwrap()
        })
    });
    let sa = token_kubeconfig(&s, dir.path(), "reader", &token);
    let whoami = s.kubectl_as(&sa, &["auth", "whoami"]).unwrap();
    assert!(
        whoami.contains("system:serviceaccount:demo:reader")
            && whoami.contains("system:serviceaccounts:demo"),
        "{whoami}"
    );
    assert!(
        s.kubectl_as(&sa, &["get", "pods", "-n", "demo"])
            .unwrap_err()
            .to_string()
            .contains("forbidden")
    );

    let can = |verb: &str, resource: &str| {
        let out = s
            .kubectl_output(
                &s.admin_kubeconfig(),
                &[
                    "auth",
                    "can-i",
                    verb,
                    resource,
                    "-n",
                    "demo",
                    "--as=system:serviceaccount:demo:reader",
                ],
            )
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    assert_eq!(can("list", "pods"), "no");
    s.kubectl(&[
        "create",
        "role",
        "pod-reader",
        "--verb=get,list",
        "--resource=pods",
        "-n",
        "demo",
    ])
    .unwrap();
    s.kubectl(&[
        "create",
        "rolebinding",
        "pod-reader",
        "--role=pod-reader",
        "--serviceaccount=demo:reader",
        "-n",
        "demo",
    ])
    .unwrap();
    assert_eq!(can("list", "pods"), "yes");
    assert_eq!(can("list", "secrets"), "no");
    assert_eq!(can("delete", "pods"), "no");
    s.kubectl_as(&sa, &["get", "pods", "-n", "demo"]).unwrap();

    // A bound token from the TokenRequest API works as well.
    let bound = s
        .kubectl(&["create", "token", "reader", "-n", "demo"])
        .unwrap();
    let bound = token_kubeconfig(&s, dir.path(), "bound", bound.trim());
    assert!(
        s.kubectl_as(&bound, &["auth", "whoami"])
            .unwrap()
            .contains("system:serviceaccount:demo:reader")
    );
    // A token from a deleted account stops working.
    s.kubectl(&["delete", "serviceaccount", "reader", "-n", "demo"])
        .unwrap();
    assert!(
        s.kubectl_as(&sa, &["get", "pods", "-n", "demo"])
            .unwrap_err()
            .to_string()
            .contains("nauthorized")
    );
}

#[test]
fn state_survives_a_restart() {
    let (dir, mut s) = server(&[]);
    apply(&s, dir.path(), None, "svc.yaml", SERVICES);
    let before = jsonpath(
        &s,
        &["get", "svc", "web"],
        "{.metadata.uid} {.metadata.resourceVersion} {.spec.clusterIP}",
    );
    let ca = fs::read(s.ca()).unwrap();
    s.restart().unwrap();
    assert_eq!(
        jsonpath(
            &s,
            &["get", "svc", "web"],
            "{.metadata.uid} {.metadata.resourceVersion} {.spec.clusterIP}"
        ),
        before
    );
    assert_eq!(fs::read(s.ca()).unwrap(), ca, "the cluster CA is kept");
    s.kubectl(&["create", "service", "clusterip", "later", "--tcp=80"])
        .unwrap();
    let rv: u64 = jsonpath(&s, &["get", "svc", "later"], "{.metadata.resourceVersion}")
        .parse()
        .unwrap();
    let old_rv: u64 = before.split(' ').nth(1).unwrap().parse().unwrap();
    assert!(
        rv > old_rv,
        "resourceVersions keep increasing across restarts"
    );
    assert_ne!(
        jsonpath(&s, &["get", "svc", "later"], "{.spec.clusterIP}"),
        before.split(' ').nth(2).unwrap()
    );
}

#[test]
fn a_kube_rs_watcher_resumes_after_a_restart_and_relists_after_410() {
    use futures::StreamExt as _;
    use k8s_openapi::api::core::v1::Service;
    use kube::runtime::watcher::{self, Event};

    let (dir, mut s) = server(&[]);
    let kubeconfig = kube::config::Kubeconfig::read_from(s.admin_kubeconfig()).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let client = runtime.block_on(async {
        let config = kube::Config::from_custom_kubeconfig(
            kubeconfig,
            &kube::config::KubeConfigOptions::default(),
        )
        .await
        .unwrap();
        kube::Client::try_from(config).unwrap()
    });
    let api: kube::Api<Service> = kube::Api::namespaced(client, "default");
    let watch = runtime.spawn(async move {
        let mut stream = watcher::watcher(api, watcher::Config::default()).boxed();
        while let Some(event) = stream.next().await {
            let label = match event {
                Ok(Event::Init) => "init".to_owned(),
                Ok(Event::InitApply(svc)) => {
                    format!("init-apply {}", svc.metadata.name.unwrap_or_default())
                }
                Ok(Event::InitDone) => "init-done".to_owned(),
                Ok(Event::Apply(svc)) => format!("apply {}", svc.metadata.name.unwrap_or_default()),
                Ok(Event::Delete(svc)) => {
                    format!("delete {}", svc.metadata.name.unwrap_or_default())
                }
                Err(e) => format!("error {e}"),
            };
            if tx.send(label).is_err() {
                return;
            }
        }
    });
    // Collects events until `want`, bounded.
    let mut seen: Vec<String> = Vec::new();
    let mut until = |want: &str| -> Vec<String> {
        let start = seen.len();
        runtime.block_on(async {
            tokio::time::timeout(Duration::from_secs(30), async {
                while let Some(e) = rx.recv().await {
                    let done = e == want;
                    seen.push(e);
                    if done {
                        return;
                    }
                }
            })
            .await
            .unwrap_or_else(|_| panic!("no `{want}` event; saw {seen:?}"));
        });
        seen[start..].to_vec()
    };
    until("init-done");
    s.kubectl(&["create", "service", "clusterip", "one", "--tcp=80"])
        .unwrap();
    until("apply one");

    s.restart().unwrap();
    s.kubectl(&["create", "service", "clusterip", "two", "--tcp=80"])
        .unwrap();
    let events = until("apply two");
    assert!(
        !events.iter().any(|e| e == "init"),
        "resumed from its resourceVersion, no relist: {events:?}"
    );

    // A write the watcher does not see, then compaction: its resourceVersion
    // is now too old, the watch ends, and resuming gets 410 → relist.
    s.kubectl(&["create", "configmap", "unrelated"]).unwrap();
    let empty = dir.path().join("empty.json");
    fs::write(&empty, "{}").unwrap();
    s.kubectl(&[
        "create",
        "--raw",
        "/sluice-debug/compact",
        "-f",
        empty.to_str().unwrap(),
    ])
    .unwrap();
    let events = until("init-done");
    assert!(
        events.iter().any(|e| e == "init"),
        "relisted after 410: {events:?}"
    );
    assert!(events.iter().any(|e| e == "init-apply two"), "{events:?}");
    watch.abort();
}

#[test]
fn updates_are_optimistic_namespaces_must_exist_and_selectors_filter() {
    let (dir, s) = server(&[]);
    apply(&s, dir.path(), None, "svc.yaml", SERVICES);
    // kubectl replace with a stale resourceVersion gets 409 Conflict.
    let yaml = s.kubectl(&["get", "svc", "web", "-o", "yaml"]).unwrap();
    let first = dir.path().join("first.yaml");
    fs::write(&first, yaml.replace("port: 80", "port: 81")).unwrap();
    s.kubectl(&["replace", "-f", first.to_str().unwrap()])
        .unwrap();
    let stale = dir.path().join("stale.yaml");
    fs::write(&stale, yaml.replace("port: 80", "port: 82")).unwrap();
    let err = s
        .kubectl(&["replace", "-f", stale.to_str().unwrap()])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("Conflict") || err.contains("the object has been modified"),
        "{err}"
    );
    assert_eq!(
        jsonpath(&s, &["get", "svc", "web"], "{.spec.ports[0].port}"),
        "81"
    );

    let err = s
        .kubectl(&["create", "configmap", "x", "-n", "nowhere"])
        .unwrap_err()
        .to_string();
    assert!(err.contains("namespaces \"nowhere\" not found"), "{err}");

    s.kubectl(&["label", "svc", "api", "tier=backend"]).unwrap();
    let by_label = jsonpath(
        &s,
        &["get", "svc", "-l", "tier=backend"],
        "{.items[*].metadata.name}",
    );
    assert_eq!(by_label, "api");
    let by_field = jsonpath(
        &s,
        &["get", "svc", "-A", "--field-selector", "metadata.name=web"],
        "{.items[*].metadata.name}",
    );
    assert_eq!(by_field, "web");
    let not_default = jsonpath(
        &s,
        &["get", "ns", "--field-selector", "metadata.name!=default"],
        "{.items[*].metadata.name}",
    );
    assert!(
        !not_default.split(' ').any(|n| n == "default") && not_default.contains("kube-system"),
        "{not_default}"
    );
}

#[test]
fn lists_are_paged_with_limit_and_continue() {
    let (dir, s) = server(&[]);
    apply(&s, dir.path(), None, "svc.yaml", SERVICES);
    let page = |query: &str| -> serde_json::Value {
        let raw = s
            .kubectl(&[
                "get",
                "--raw",
                &format!("/api/v1/namespaces/default/services?{query}"),
            ])
            .unwrap();
        serde_json::from_str(&raw).unwrap()
    };
    let names = |list: &serde_json::Value| -> Vec<String> {
        list["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["metadata"]["name"].as_str().unwrap().to_owned())
            .collect()
    };
    // api, kubernetes, web: two, then the rest at the first page's version.
    let first = page("limit=2");
    assert_eq!(names(&first), ["api", "kubernetes"]);
    let token = first["metadata"]["continue"].as_str().unwrap().to_owned();
    s.kubectl(&["create", "service", "clusterip", "zeta", "--tcp=80"])
        .unwrap();
    let rest = page(&format!("limit=2&continue={token}"));
    assert_eq!(names(&rest), ["web", "zeta"]);
    assert_eq!(
        rest["metadata"]["resourceVersion"],
        first["metadata"]["resourceVersion"]
    );
    assert!(rest["metadata"].get("continue").is_none(), "{rest}");
    // Selectors filter before the limit; kubectl follows the tokens.
    s.kubectl(&["label", "svc", "web", "tier=front"]).unwrap();
    assert_eq!(names(&page("limit=1&labelSelector=tier%3Dfront")), ["web"]);
    let all = s
        .kubectl(&["get", "svc", "--chunk-size=1", "-o", "name"])
        .unwrap();
    assert_eq!(all.lines().count(), 4, "{all}");
    let err = s
        .kubectl(&[
            "get",
            "--raw",
            "/api/v1/services?limit=1&continue=bm90LWEtdG9rZW4",
        ])
        .unwrap_err()
        .to_string();
    assert!(err.contains("continue"), "{err}");
}

#[test]
fn csrs_are_signed_for_the_signing_duration_and_invalid_ones_fail() {
    let (dir, s) = server(&["--cluster-signing-duration", "30s"]);
    apply(
        &s,
        dir.path(),
        None,
        "csr.yaml",
        &csr_manifest("short", &node_csr("node-a")),
    );
    eventually("issued", || issued_cn(&s, "short"));
    let b64 = jsonpath(&s, &["get", "csr", "short"], "{.status.certificate}");
    let pem_text = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap();
    let (_, pem) = x509_parser::pem::parse_x509_pem(&pem_text).unwrap();
    let cert = pem.parse_x509().unwrap();
    let validity = cert.validity();
    let lifetime = validity.not_after.timestamp() - validity.not_before.timestamp();
    // 30 s from signing, backdated by a tenth of that (not 5 minutes), so a
    // 70–90% rotation deadline lies ahead.
    assert_eq!(lifetime, 33, "NotBefore..NotAfter");

    // The kubelet-client signer refuses a subject outside system:nodes.
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationName, "system:masters");
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "system:node:evil");
    let pem = params.serialize_request(&key).unwrap().pem().unwrap();
    apply(&s, dir.path(), None, "bad.yaml", &csr_manifest("bad", &pem));
    s.kubectl(&["certificate", "approve", "bad"]).ok();
    let failed = eventually("a Failed condition", || {
        let c = jsonpath(
            &s,
            &["get", "csr", "bad"],
            "{.status.conditions[*].type} {.status.conditions[*].reason}",
        );
        c.contains("Failed").then_some(c)
    });
    assert!(failed.contains("SignerValidationFailure"), "{failed}");
    assert_eq!(
        jsonpath(&s, &["get", "csr", "bad"], "{.status.certificate}"),
        ""
    );
}

#[test]
fn watches_get_bookmarks_and_streaming_lists() {
    use futures::StreamExt as _;
    use k8s_openapi::api::core::v1::Service;
    use kube::{
        api::{WatchEvent, WatchParams},
        runtime::watcher::{self, Event},
    };

    let (_dir, s) = server(&["--watch-bookmark-interval", "1s"]);
    let kubeconfig = kube::config::Kubeconfig::read_from(s.admin_kubeconfig()).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let config = kube::Config::from_custom_kubeconfig(
            kubeconfig,
            &kube::config::KubeConfigOptions::default(),
        )
        .await
        .unwrap();
        let api: kube::Api<Service> = kube::Api::all(kube::Client::try_from(config).unwrap());
        let list = api.list(&kube::api::ListParams::default()).await.unwrap();
        let rv = list.metadata.resource_version.unwrap();
        let mut stream = api
            .watch(
                &WatchParams {
                    bookmarks: true,
                    ..WatchParams::default()
                }
                .timeout(30),
                &rv,
            )
            .await
            .unwrap()
            .boxed();
        let bookmark = tokio::time::timeout(Duration::from_secs(20), async {
            while let Some(e) = stream.next().await {
                if let Ok(WatchEvent::Bookmark(b)) = e {
                    return b.metadata.resource_version;
                }
            }
            String::new()
        })
        .await
        .unwrap();
        assert!(!bookmark.is_empty(), "a BOOKMARK with a resourceVersion");

        // A streaming list (sendInitialEvents, ended by a bookmark).
        let config = watcher::Config::default().streaming_lists();
        let mut events = watcher::watcher(api, config).boxed();
        let seen = tokio::time::timeout(Duration::from_secs(20), async {
            let mut names = Vec::new();
            while let Some(Ok(e)) = events.next().await {
                match e {
                    Event::InitApply(svc) => names.push(svc.metadata.name.unwrap_or_default()),
                    Event::InitDone => return names,
                    _ => {}
                }
            }
            names
        })
        .await
        .unwrap();
        assert_eq!(seen, ["kubernetes"]);
    });
}

/// A kubeconfig with a client certificate.
fn cert_kubeconfig(
    s: &ApiServer,
    dir: &Path,
    name: &str,
    cert_pem: &str,
    key_pem: &str,
) -> PathBuf {
    let b64 = |t: &str| base64::engine::general_purpose::STANDARD.encode(t);
    let ca = base64::engine::general_purpose::STANDARD.encode(fs::read(s.ca()).unwrap());
    let path = dir.join(format!("{name}.kubeconfig"));
    fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster: {{server: {}, certificate-authority-data: {ca}}}\n\
             users:\n- name: u\n  user: {{client-certificate-data: {}, client-key-data: {}}}\n\
             contexts:\n- name: x\n  context: {{cluster: c, user: u}}\ncurrent-context: x\n",
            s.url(),
            b64(cert_pem),
            b64(key_pem)
        ),
    )
    .unwrap();
    path
}

fn serving_csr(name: &str, node: &str, sans: &[&str]) -> String {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationName, "system:nodes");
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, format!("system:node:{node}"));
    for san in sans {
        params.subject_alt_names.push(match san.parse() {
            Ok(ip) => rcgen::SanType::IpAddress(ip),
            Err(_) => rcgen::SanType::DnsName((*san).try_into().unwrap()),
        });
    }
    let pem = params.serialize_request(&key).unwrap().pem().unwrap();
    let request = base64::engine::general_purpose::STANDARD.encode(pem);
    format!(
        "apiVersion: certificates.k8s.io/v1\nkind: CertificateSigningRequest\nmetadata: {{name: {name}}}\nspec:\n  \
         request: {request}\n  signerName: kubernetes.io/kubelet-serving\n  usages: [digital signature, server auth]\n"
    )
}

#[test]
fn kubelet_serving_csrs_are_auto_approved_only_when_asked_for_the_nodes_own_names() {
    let (dir, s) = server(&["--approve-kubelet-serving"]);
    let node = "apiVersion: v1\nkind: Node\nmetadata: {name: node-a}\nstatus:\n  addresses:\n  \
- {type: InternalIP, address: 10.0.0.5}\n  - {type: Hostname, address: node-a}\n";
    apply(&s, dir.path(), None, "node.yaml", node);
    let role = "kind: ClusterRole\napiVersion: rbac.authorization.k8s.io/v1\nmetadata:\n  \
name: system:certificates.k8s.io:certificatesigningrequests:selfnodeserver\nrules:\n- apiGroups: [\"certificates.k8s.io\"]\n  \
resources: [\"certificatesigningrequests/selfnodeserver\"]\n  verbs: [\"create\"]\n";
    apply(&s, dir.path(), None, "role.yaml", role);
    s.kubectl(&[
        "create",
        "clusterrolebinding",
        "node-server-auto-renew-crt",
        "--clusterrole=system:certificates.k8s.io:certificatesigningrequests:selfnodeserver",
        "--group=system:nodes",
    ])
    .unwrap();

    // node-a's client certificate, through a CSR the admin creates.
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationName, "system:nodes");
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "system:node:node-a");
    let client_csr = params.serialize_request(&key).unwrap().pem().unwrap();
    apply(
        &s,
        dir.path(),
        None,
        "client.yaml",
        &csr_manifest("node-a-client", &client_csr),
    );
    eventually("the client certificate", || issued_cn(&s, "node-a-client"));
    let cert = base64::engine::general_purpose::STANDARD
        .decode(jsonpath(
            &s,
            &["get", "csr", "node-a-client"],
            "{.status.certificate}",
        ))
        .unwrap();
    let as_node = cert_kubeconfig(
        &s,
        dir.path(),
        "node-a",
        &String::from_utf8(cert).unwrap(),
        &key.serialize_pem(),
    );
    assert!(
        s.kubectl_as(&as_node, &["auth", "whoami"])
            .unwrap()
            .contains("system:node:node-a")
    );

    apply(
        &s,
        dir.path(),
        Some(&as_node),
        "foreign.yaml",
        &serving_csr("serving-foreign", "node-a", &["10.9.9.9"]),
    );
    apply(
        &s,
        dir.path(),
        Some(&as_node),
        "own.yaml",
        &serving_csr("serving-own", "node-a", &["10.0.0.5", "node-a"]),
    );
    let cn = eventually("the serving certificate", || issued_cn(&s, "serving-own"));
    assert_eq!(cn, "system:node:node-a");
    assert_eq!(
        jsonpath(
            &s,
            &["get", "csr", "serving-foreign"],
            "{.status.conditions}"
        ),
        "",
        "a SAN that is not the node's keeps the CSR pending"
    );
    // Another node's serving certificate is refused too (not the requester's own).
    apply(
        &s,
        dir.path(),
        Some(&as_node),
        "other.yaml",
        &serving_csr("serving-other", "node-b", &["10.0.0.5"]),
    );
    apply(
        &s,
        dir.path(),
        Some(&as_node),
        "own2.yaml",
        &serving_csr("serving-own2", "node-a", &["10.0.0.5"]),
    );
    eventually("the second serving certificate", || {
        issued_cn(&s, "serving-own2")
    });
    assert_eq!(
        jsonpath(&s, &["get", "csr", "serving-other"], "{.status.conditions}"),
        ""
    );
}

#[test]
fn node_ports_are_allocated_kept_on_update_refused_twice_and_freed_on_delete() {
    let (dir, mut s) = server(&["--service-node-port-range", "30000-30009"]);
    s.kubectl(&["create", "service", "nodeport", "np", "--tcp=80:8080"])
        .unwrap();
    let port: u16 = jsonpath(&s, &["get", "svc", "np"], "{.spec.ports[0].nodePort}")
        .parse()
        .unwrap();
    assert!((30000..=30009).contains(&port), "{port}");

    // A replace (a whole new spec) that leaves nodePort out keeps it.
    let yaml = "apiVersion: v1\nkind: Service\nmetadata: {name: np, namespace: default}\nspec:\n  type: NodePort\n  selector: {app: np}\n  ports: [{name: 80-8080, port: 80, targetPort: 8080}]\n";
    let np = dir.path().join("np.yaml");
    fs::write(&np, yaml).unwrap();
    s.kubectl(&["replace", "-f", np.to_str().unwrap()]).unwrap();
    let kept = jsonpath(&s, &["get", "svc", "np"], "{.spec.ports[0].nodePort}");
    assert_eq!(kept, port.to_string());

    // The same port for another Service is refused, as kube-apiserver does;
    // one outside the range too.
    let taken = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: other, namespace: default}}\nspec:\n  type: NodePort\n  ports: [{{port: 81, nodePort: {port}}}]\n"
    );
    let file = dir.path().join("other.yaml");
    fs::write(&file, &taken).unwrap();
    let e = s
        .kubectl(&["create", "-f", file.to_str().unwrap()])
        .unwrap_err();
    assert!(format!("{e:#}").contains("already allocated"), "{e:#}");
    fs::write(&file, taken.replace(&port.to_string(), "31000")).unwrap();
    let e = s
        .kubectl(&["create", "-f", file.to_str().unwrap()])
        .unwrap_err();
    assert!(format!("{e:#}").contains("valid range"), "{e:#}");

    // A LoadBalancer with externalTrafficPolicy Local gets a health check
    // NodePort of its own; held ports survive a restart.
    let lb = "apiVersion: v1\nkind: Service\nmetadata: {name: lb, namespace: default}\nspec:\n  type: LoadBalancer\n  externalTrafficPolicy: Local\n  ports: [{port: 443}]\n";
    apply(&s, dir.path(), None, "lb.yaml", lb);
    let lb_ports = jsonpath(
        &s,
        &["get", "svc", "lb"],
        "{.spec.ports[0].nodePort} {.spec.healthCheckNodePort}",
    );
    let lb_ports: Vec<u16> = lb_ports.split(' ').map(|p| p.parse().unwrap()).collect();
    assert_eq!(lb_ports.len(), 2);
    assert!(
        !lb_ports.contains(&port) && lb_ports[0] != lb_ports[1],
        "{lb_ports:?}"
    );
    s.restart().unwrap();
    fs::write(&file, taken.clone()).unwrap();
    assert!(
        s.kubectl(&["create", "-f", file.to_str().unwrap()])
            .is_err()
    );

    // Deleting frees the port for the next Service.
    s.kubectl(&["delete", "svc", "np"]).unwrap();
    s.kubectl(&["create", "-f", file.to_str().unwrap()])
        .unwrap();
    assert_eq!(
        jsonpath(&s, &["get", "svc", "other"], "{.spec.ports[0].nodePort}"),
        port.to_string()
    );
}
