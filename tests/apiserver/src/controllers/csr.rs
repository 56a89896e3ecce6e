//! CertificateSigningRequests: kube-controller-manager's `csrapproving`
//! (kubelet client certificates, approved after a SubjectAccessReview of the
//! requester) and `csrsigning` (the built-in kubernetes.io signers, with the
//! cluster CA).

use std::{collections::BTreeSet, sync::Arc, time::Duration};

use base64::Engine as _;
use rcgen::{DnType, DnValue, SanType};
use serde_json::{Value, json};

use super::{Controller, str_at, update};
use crate::{
    App,
    admission::{now, validate_csr_request},
    authn::UserInfo,
    rbac::{self, Attributes},
    store::Event,
};

const CLIENT_KUBELET: &str = "kubernetes.io/kube-apiserver-client-kubelet";
const KUBELET_SERVING: &str = "kubernetes.io/kubelet-serving";
const APISERVER_CLIENT: &str = "kubernetes.io/kube-apiserver-client";

pub struct Csr;

impl Controller for Csr {
    fn name(&self) -> &'static str {
        "csr"
    }

    fn resync(&mut self, app: &Arc<App>) {
        let (csrs, _) = app
            .store
            .list("certificates.k8s.io/certificatesigningrequests/");
        for csr in csrs {
            handle(app, &csr);
        }
    }

    fn on_event(&mut self, app: &Arc<App>, e: &Event) {
        if e.key
            .starts_with("certificates.k8s.io/certificatesigningrequests/")
            && e.kind != crate::store::EventType::Deleted
        {
            handle(app, &e.object);
        }
    }
}

fn has_condition(csr: &Value, kind: &str) -> bool {
    csr.pointer("/status/conditions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .any(|c| c.get("type").and_then(Value::as_str) == Some(kind))
}

fn handle(app: &Arc<App>, csr: &Value) {
    if has_condition(csr, "Denied") || has_condition(csr, "Failed") {
        return;
    }
    if !has_condition(csr, "Approved") {
        approve(app, csr);
    } else if csr
        .pointer("/status/certificate")
        .and_then(Value::as_str)
        .is_none_or(str::is_empty)
    {
        sign(app, csr);
    }
}

/// What the CSR asks for: subject and SANs.
struct Request {
    cn: String,
    orgs: Vec<String>,
    sans: Vec<SanType>,
    usages: BTreeSet<String>,
}

fn parse(csr: &Value) -> Result<(Request, rcgen::CertificateSigningRequestParams), String> {
    let (params, _) = validate_csr_request(csr)?;
    let dn = &params.params.distinguished_name;
    let value = |v: &DnValue| -> String {
        match v {
            DnValue::Utf8String(s) => s.clone(),
            DnValue::PrintableString(s) => s.to_string(),
            DnValue::Ia5String(s) => s.to_string(),
            DnValue::TeletexString(s) => s.to_string(),
            other => format!("{other:?}"),
        }
    };
    let cn = dn.get(&DnType::CommonName).map(value).unwrap_or_default();
    let orgs = dn
        .iter()
        .filter(|(t, _)| **t == DnType::OrganizationName)
        .map(|(_, v)| value(v))
        .collect();
    let usages = csr
        .pointer("/spec/usages")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|u| u.as_str().map(str::to_owned))
        .collect();
    Ok((
        Request {
            cn,
            orgs,
            sans: params.params.subject_alt_names.clone(),
            usages,
        },
        params,
    ))
}

fn usages_are(usages: &BTreeSet<String>, allowed: &[&[&str]]) -> bool {
    allowed
        .iter()
        .any(|set| set.iter().map(|s| (*s).to_owned()).collect::<BTreeSet<_>>() == *usages)
}

/// What both kubelet signers require: a node's subject, and the usages of
/// an ECDSA (or RSA, with key encipherment) key for `auth`.
fn node_identity(r: &Request, auth: &str) -> Result<(), String> {
    if r.orgs != ["system:nodes"] {
        return Err(format!(
            "subject organization is not system:nodes: {:?}",
            r.orgs
        ));
    }
    if !r.cn.starts_with("system:node:") {
        return Err(format!(
            "subject common name does not begin with system:node:: {}",
            r.cn
        ));
    }
    if !usages_are(
        &r.usages,
        &[
            &["digital signature", "key encipherment", auth],
            &["digital signature", auth],
        ],
    ) {
        return Err(format!(
            "usages did not match [digital signature key encipherment {auth}]: {:?}",
            r.usages
        ));
    }
    Ok(())
}

/// ValidateKubeletClientCSR.
fn kubelet_client(r: &Request) -> Result<(), String> {
    node_identity(r, "client auth")?;
    if !r.sans.is_empty() {
        return Err("subject alternative names are not allowed".into());
    }
    Ok(())
}

/// ValidateKubeletServingCSR.
fn kubelet_serving(r: &Request) -> Result<(), String> {
    node_identity(r, "server auth")?;
    if !r
        .sans
        .iter()
        .any(|s| matches!(s, SanType::DnsName(_) | SanType::IpAddress(_)))
    {
        return Err("DNS or IP subjectAltName is required".into());
    }
    if r.sans
        .iter()
        .any(|s| matches!(s, SanType::Rfc822Name(_) | SanType::URI(_)))
    {
        return Err("email and URI subjectAltNames are not allowed".into());
    }
    Ok(())
}

/// The serving certificate names only the node's own addresses: every SAN
/// is among the Node object's `status.addresses` (or is its name). Without
/// a Node object there is nothing to check against, and no auto-approval.
fn names_are_the_nodes(app: &App, r: &Request) -> bool {
    let node = r.cn.trim_start_matches("system:node:");
    let Some(obj) = app.store.get(&format!("core/nodes//{node}")) else {
        tracing::debug!(node, "no Node object to check serving SANs against");
        return false;
    };
    let addresses: Vec<&str> = obj
        .pointer("/status/addresses")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|a| a.get("address").and_then(Value::as_str))
        .collect();
    r.sans.iter().all(|san| match san {
        SanType::IpAddress(ip) => addresses.contains(&ip.to_string().as_str()),
        SanType::DnsName(name) => name.as_str() == node || addresses.contains(&name.as_str()),
        _ => false,
    })
}

/// The requester, from the CSR spec (as the API server recorded it).
fn requester(csr: &Value) -> UserInfo {
    UserInfo {
        name: str_at(csr, "/spec/username").to_owned(),
        uid: str_at(csr, "/spec/uid").to_owned(),
        groups: csr
            .pointer("/spec/groups")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|g| g.as_str().map(str::to_owned))
            .collect(),
        extra: serde_json::from_value(
            csr.pointer("/spec/extra")
                .cloned()
                .unwrap_or_else(|| json!({})),
        )
        .unwrap_or_default(),
    }
}

fn allowed(app: &App, csr: &Value, subresource: &str) -> bool {
    let attrs = Attributes::resource(
        "create",
        "certificates.k8s.io",
        "certificatesigningrequests",
        subresource,
        "",
        "",
    );
    rbac::authorize(&app.store, &requester(csr), &attrs).0
}

fn approve(app: &Arc<App>, csr: &Value) {
    let Ok((r, _)) = parse(csr) else { return };
    let signer = str_at(csr, "/spec/signerName");
    let self_request = str_at(csr, "/spec/username") == r.cn;
    let message = match signer {
        CLIENT_KUBELET if kubelet_client(&r).is_ok() => {
            if self_request && allowed(app, csr, "selfnodeclient") {
                "Auto approving self kubelet client certificate after SubjectAccessReview."
            } else if allowed(app, csr, "nodeclient") {
                "Auto approving kubelet client certificate after SubjectAccessReview."
            } else {
                tracing::debug!(
                    csr = str_at(csr, "/metadata/name"),
                    "recognized a kubelet client CSR, but the SubjectAccessReview was not approved"
                );
                return;
            }
        }
        // kube-controller-manager before 1.11: a node's serving certificate
        // for its own name, when the requester may create selfnodeserver.
        KUBELET_SERVING if app.config.approve_kubelet_serving && kubelet_serving(&r).is_ok() => {
            let user = requester(csr);
            if !(self_request
                && user.in_group("system:nodes")
                && allowed(app, csr, "selfnodeserver")
                && names_are_the_nodes(app, &r))
            {
                return;
            }
            "Auto approving self kubelet serving certificate after SubjectAccessReview."
        }
        _ => return,
    };
    let name = str_at(csr, "/metadata/name").to_owned();
    let result = update(
        app,
        (
            "certificates.k8s.io",
            "certificatesigningrequests",
            "",
            &name,
            Some("approval"),
        ),
        |obj| {
            if has_condition(obj, "Approved") || has_condition(obj, "Denied") {
                return false;
            }
            let mut conditions = obj
                .pointer("/status/conditions")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            conditions.push(json!({"type": "Approved", "status": "True", "reason": "AutoApproved", "message": message,
            "lastUpdateTime": now(), "lastTransitionTime": now()}));
            obj["status"]["conditions"] = json!(conditions);
            true
        },
    );
    match result {
        Ok(_) => tracing::info!(csr = name, "approved"),
        Err(e) => tracing::warn!(csr = name, "approving: {e}"),
    }
}

fn sign(app: &Arc<App>, csr: &Value) {
    let signer = str_at(csr, "/spec/signerName");
    if ![CLIENT_KUBELET, KUBELET_SERVING, APISERVER_CLIENT].contains(&signer) {
        return; // Not one of ours.
    }
    let name = str_at(csr, "/metadata/name").to_owned();
    let outcome = parse(csr).and_then(|(r, params)| {
        match signer {
            CLIENT_KUBELET => kubelet_client(&r)?,
            KUBELET_SERVING => kubelet_serving(&r)?,
            _ => {
                if !r.usages.contains("client auth")
                    || r.usages.iter().any(|u| {
                        !matches!(
                            u.as_str(),
                            "client auth" | "digital signature" | "key encipherment"
                        )
                    })
                {
                    return Err(format!(
                        "invalid usages for {APISERVER_CLIENT}: {:?}",
                        r.usages
                    ));
                }
                if r.orgs.iter().any(|o| o == "system:masters") {
                    return Err("the system:masters group may not be requested".into());
                }
            }
        }
        let mut ttl = app.config.cluster_signing_duration;
        if let Some(secs) = csr
            .pointer("/spec/expirationSeconds")
            .and_then(Value::as_u64)
        {
            ttl = ttl.min(Duration::from_secs(secs));
        }
        let usages: Vec<String> = r.usages.iter().cloned().collect();
        app.pki
            .sign(&params, &usages, ttl)
            .map_err(|e| format!("signing: {e:#}"))
    });
    let result = update(
        app,
        (
            "certificates.k8s.io",
            "certificatesigningrequests",
            "",
            &name,
            Some("status"),
        ),
        |obj| {
            if has_condition(obj, "Failed")
                || obj
                    .pointer("/status/certificate")
                    .and_then(Value::as_str)
                    .is_some_and(|c| !c.is_empty())
            {
                return false;
            }
            match &outcome {
                Ok(pem) => {
                    obj["status"]["certificate"] =
                        json!(base64::engine::general_purpose::STANDARD.encode(pem));
                }
                Err(why) => {
                    let mut conditions = obj
                        .pointer("/status/conditions")
                        .and_then(Value::as_array)
                        .cloned()
                        .unwrap_or_default();
                    conditions.push(json!({"type": "Failed", "status": "True", "reason": "SignerValidationFailure", "message": why,
                    "lastUpdateTime": now(), "lastTransitionTime": now()}));
                    obj["status"]["conditions"] = json!(conditions);
                }
            }
            true
        },
    );
    match (result, &outcome) {
        (Ok(_), Ok(_)) => tracing::info!(csr = name, signer, "signed"),
        (Ok(_), Err(why)) => tracing::info!(csr = name, signer, "failed: {why}"),
        (Err(e), _) => tracing::warn!(csr = name, "updating the status: {e}"),
    }
}
