//! End-to-end: the local API server's ServiceAccount keys as a new user
//! makes them with `openssl` (the seed's commands), RSA and ECDSA, several
//! keys per file, keys that change across restarts, and the fallback to
//! `--tls-private-key-file`. Both kinds of token must authenticate: the
//! legacy token Secrets of the token controller, and `kubectl create token`.
#![allow(clippy::unwrap_used, reason = "tests: a failure fails the test")]

use std::{fs, path::Path, process::Command};

use base64::Engine as _;
use sluice_lab::ApiServer;

use crate::apiserver::{eventually, server, token_kubeconfig};

/// `openssl` with these arguments, in `dir`.
fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Whether `token` authenticates as `demo`'s account.
fn authenticates(s: &ApiServer, dir: &Path, token: &str) -> bool {
    let kubeconfig = token_kubeconfig(s, dir, "probe", token);
    s.kubectl_as(&kubeconfig, &["auth", "whoami"])
        .is_ok_and(|who| who.contains("system:serviceaccount:default:demo"))
}

/// The token of `demo`'s token Secret, once it authenticates.
fn legacy_token(s: &ApiServer, dir: &Path) -> String {
    eventually("a token Secret that authenticates", || {
        let names = s.kubectl(&["get", "secrets", "-o", "name"]).ok()?;
        let secret = names.lines().find(|n| n.contains("demo-token"))?;
        let b64 = s
            .kubectl(&["get", secret, "-o", "jsonpath={.data.token}"])
            .ok()?;
        let token = String::from_utf8(
            base64::engine::general_purpose::STANDARD
                .decode(b64.trim())
                .ok()?,
        )
        .ok()?;
        authenticates(s, dir, &token).then_some(token)
    })
}

fn bound_token(s: &ApiServer) -> String {
    s.kubectl(&["create", "token", "demo"])
        .unwrap()
        .trim()
        .to_owned()
}

#[test]
fn openssl_rsa_and_ecdsa_keys_sign_tokens_that_authenticate_across_key_changes() {
    let keys = tempfile::tempdir().unwrap();
    let k = keys.path();
    // The seed's RSA key, and an ECDSA key as `openssl ecparam` writes it
    // (an EC PARAMETERS block, then SEC1).
    openssl(k, &["genrsa", "-out", "sa.key", "2048"]);
    openssl(k, &["rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub"]);
    openssl(
        k,
        &[
            "ecparam",
            "-name",
            "prime256v1",
            "-genkey",
            "-out",
            "ec.key",
        ],
    );
    openssl(k, &["ec", "-in", "ec.key", "-pubout", "-out", "ec.pub"]);
    let path = |name: &str| k.join(name).display().to_string();

    let rsa = [
        "--service-account-private-key-file",
        &path("sa.key"),
        "--service-account-key-file",
        &path("sa.pub"),
    ];
    let (dir, mut s) = server(&rsa);
    s.kubectl(&["create", "serviceaccount", "demo"]).unwrap();
    let legacy_rsa = legacy_token(&s, dir.path());
    let bound_rsa = bound_token(&s);
    assert!(authenticates(&s, dir.path(), &bound_rsa), "RS256");
    // `kubectl auth can-i` with the token Secret answers by RBAC.
    let as_demo = token_kubeconfig(&s, dir.path(), "demo", &legacy_rsa);
    let can = |verb: &str| {
        s.kubectl_output(&as_demo, &["auth", "can-i", verb, "pods"])
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap()
    };
    assert_eq!(can("list"), "no");
    s.kubectl(&[
        "create",
        "role",
        "pod-reader",
        "--verb=list",
        "--resource=pods",
    ])
    .unwrap();
    s.kubectl(&[
        "create",
        "rolebinding",
        "pod-reader",
        "--role=pod-reader",
        "--serviceaccount=default:demo",
    ])
    .unwrap();
    assert_eq!(can("list"), "yes");
    assert_eq!(can("delete"), "no");

    // ECDSA now, with both public keys in one file (a rotation): the RSA
    // tokens still authenticate, so the token Secret keeps its token.
    fs::write(
        k.join("both.pub"),
        fs::read_to_string(k.join("ec.pub")).unwrap()
            + &fs::read_to_string(k.join("sa.pub")).unwrap(),
    )
    .unwrap();
    s.restart_with(&[
        "--service-account-private-key-file",
        &path("ec.key"),
        "--service-account-key-file",
        &path("both.pub"),
    ])
    .unwrap();
    assert!(
        authenticates(&s, dir.path(), &bound_rsa),
        "the old key still verifies"
    );
    assert!(authenticates(&s, dir.path(), &bound_token(&s)), "ES256");
    assert_eq!(
        legacy_token(&s, dir.path()),
        legacy_rsa,
        "kept: in both.pub"
    );

    // ECDSA only: RSA-signed tokens no longer authenticate, and the token
    // Secret is signed again with the key that does.
    s.restart_with(&[
        "--service-account-private-key-file",
        &path("ec.key"),
        "--service-account-key-file",
        &path("ec.pub"),
    ])
    .unwrap();
    assert!(!authenticates(&s, dir.path(), &bound_rsa));
    assert!(!authenticates(&s, dir.path(), &legacy_rsa));
    let legacy_ec = legacy_token(&s, dir.path());
    assert_ne!(legacy_ec, legacy_rsa, "signed again");
    assert!(authenticates(&s, dir.path(), &bound_token(&s)));
}

#[test]
fn without_key_files_the_tls_private_key_signs_and_verifies() {
    let keys = tempfile::tempdir().unwrap();
    let k = keys.path();
    openssl(
        k,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "tls.key",
            "-out",
            "tls.crt",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ],
    );
    let path = |name: &str| k.join(name).display().to_string();
    let (dir, s) = server(&[
        "--tls-cert-file",
        &path("tls.crt"),
        "--tls-private-key-file",
        &path("tls.key"),
    ]);
    // kubectl trusts the cluster CA, which did not sign this certificate:
    // ask without verifying the server, as the token is what is tested.
    s.kubectl(&[
        "--insecure-skip-tls-verify",
        "create",
        "serviceaccount",
        "demo",
    ])
    .unwrap();
    let token = s
        .kubectl(&["--insecure-skip-tls-verify", "create", "token", "demo"])
        .unwrap();
    let kubeconfig = token_kubeconfig(&s, dir.path(), "tls-key", token.trim());
    let who = s
        .kubectl_as(
            &kubeconfig,
            &["--insecure-skip-tls-verify", "auth", "whoami"],
        )
        .unwrap();
    assert!(who.contains("system:serviceaccount:default:demo"), "{who}");
}

#[test]
fn an_rsa_key_under_2048_bits_is_refused_at_start_with_the_reason() {
    let keys = tempfile::tempdir().unwrap();
    openssl(keys.path(), &["genrsa", "-out", "small.key", "1024"]);
    let data = keys.path().join("data");
    let out = Command::new(sluice_lab::apiserver_bin())
        .arg("--data-dir")
        .arg(&data)
        .args(["--bind-address", "127.0.0.1", "--secure-port", "0"])
        .arg("--service-account-private-key-file")
        .arg(keys.path().join("small.key"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("1024 bits") && err.contains("2048 to 4096"),
        "{err}"
    );
}
