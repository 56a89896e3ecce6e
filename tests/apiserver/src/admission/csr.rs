//! CertificateSigningRequest rules (certificates.k8s.io/v1 validation and
//! strategy): the request, the requester, and the approval and status
//! subresources.

use std::collections::BTreeSet;

use base64::Engine as _;
use rcgen::CertificateSigningRequestParams;
use serde_json::{Value, json};

use super::{invalid, now};
use crate::{authn::UserInfo, error::ApiResult};

const KNOWN_USAGES: &[&str] = &[
    "signing",
    "digital signature",
    "content commitment",
    "key encipherment",
    "key agreement",
    "data encipherment",
    "cert sign",
    "crl sign",
    "encipher only",
    "decipher only",
    "any",
    "server auth",
    "client auth",
    "code signing",
    "email protection",
    "s/mime",
    "ipsec end system",
    "ipsec tunnel",
    "ipsec user",
    "timestamping",
    "ocsp signing",
    "microsoft sgc",
    "netscape sgc",
];

/// Decodes and verifies `spec.request` (a PEM PKCS#10 request, base64 in JSON).
pub fn validate_csr_request(
    obj: &Value,
) -> Result<(CertificateSigningRequestParams, String), String> {
    let b64 = obj
        .pointer("/spec/request")
        .and_then(Value::as_str)
        .ok_or("spec.request: Required value")?;
    let pem = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or("spec.request: Invalid value: not base64-encoded PEM")?;
    if !pem.contains("-----BEGIN CERTIFICATE REQUEST-----") {
        return Err(
            "spec.request: Invalid value: PEM block type must be CERTIFICATE REQUEST".into(),
        );
    }
    let params = CertificateSigningRequestParams::from_pem(&pem)
        .map_err(|e| format!("spec.request: Invalid value: {e}"))?;
    Ok((params, pem))
}

pub fn on_create(obj: &mut Value, user: &UserInfo) -> ApiResult<()> {
    validate_csr_request(obj).map_err(|e| invalid("CertificateSigningRequest", obj, e))?;
    let signer = obj
        .pointer("/spec/signerName")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if signer.is_empty() || !signer.contains('/') {
        return Err(invalid(
            "CertificateSigningRequest",
            obj,
            "spec.signerName: Required value",
        ));
    }
    if signer == "kubernetes.io/legacy-unknown" {
        return Err(invalid(
            "CertificateSigningRequest",
            obj,
            "spec.signerName: Invalid value: \"kubernetes.io/legacy-unknown\": the legacy signerName is not allowed via this API version",
        ));
    }
    let usages: Vec<&str> = obj
        .pointer("/spec/usages")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    if usages.is_empty() {
        return Err(invalid(
            "CertificateSigningRequest",
            obj,
            "spec.usages: Required value",
        ));
    }
    if let Some(u) = usages.iter().find(|u| !KNOWN_USAGES.contains(u)) {
        return Err(invalid(
            "CertificateSigningRequest",
            obj,
            format!("spec.usages: Unsupported value: \"{u}\""),
        ));
    }
    if usages.iter().collect::<BTreeSet<_>>().len() != usages.len() {
        return Err(invalid(
            "CertificateSigningRequest",
            obj,
            "spec.usages: Duplicate value",
        ));
    }
    if let Some(secs) = obj
        .pointer("/spec/expirationSeconds")
        .and_then(Value::as_i64)
        && secs < 600
    {
        return Err(invalid(
            "CertificateSigningRequest",
            obj,
            "spec.expirationSeconds: Invalid value: may not specify a duration less than 600 seconds (10 minutes)",
        ));
    }
    // Who asked is the API server's to say.
    obj["spec"]["username"] = json!(user.name);
    obj["spec"]["uid"] = json!(user.uid);
    obj["spec"]["groups"] = json!(user.groups);
    if user.extra.is_empty() {
        if let Some(spec) = obj["spec"].as_object_mut() {
            spec.remove("extra");
        }
    } else {
        obj["spec"]["extra"] = json!(user.extra);
    }
    obj["status"] = json!({});
    Ok(())
}

fn conditions(obj: &Value) -> Vec<Value> {
    obj.pointer("/status/conditions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
}

fn ctype(c: &Value) -> &str {
    c.get("type").and_then(Value::as_str).unwrap_or_default()
}

fn check_conditions(obj: &Value, list: &[Value]) -> ApiResult<()> {
    let mut seen = BTreeSet::new();
    for c in list {
        let t = ctype(c);
        if matches!(t, "Approved" | "Denied" | "Failed") {
            if c.get("status").and_then(Value::as_str) != Some("True") {
                return Err(invalid(
                    "CertificateSigningRequest",
                    obj,
                    format!(
                        "status.conditions: Invalid value: {t} conditions must have status \"True\""
                    ),
                ));
            }
            if !seen.insert(t.to_owned()) {
                return Err(invalid(
                    "CertificateSigningRequest",
                    obj,
                    format!("status.conditions: Forbidden: duplicate condition {t}"),
                ));
            }
        }
    }
    if seen.contains("Approved") && seen.contains("Denied") {
        return Err(invalid(
            "CertificateSigningRequest",
            obj,
            "status.conditions: Invalid value: Approved and Denied conditions are mutually exclusive",
        ));
    }
    Ok(())
}

fn stamp(list: &mut [Value]) {
    for c in list.iter_mut() {
        if c.get("lastUpdateTime").is_none_or(Value::is_null) {
            c["lastUpdateTime"] = json!(now());
        }
        if c.get("lastTransitionTime").is_none_or(Value::is_null) {
            c["lastTransitionTime"] = json!(now());
        }
    }
}

/// `/approval`: only the Approved and Denied conditions change, and an
/// existing one cannot be taken back.
pub fn approval_update(old: &Value, new: &mut Value) -> ApiResult<()> {
    let mut wanted: Vec<Value> = conditions(new)
        .into_iter()
        .filter(|c| matches!(ctype(c), "Approved" | "Denied"))
        .collect();
    for c in conditions(old)
        .iter()
        .filter(|c| matches!(ctype(c), "Approved" | "Denied"))
    {
        if !wanted.iter().any(|w| ctype(w) == ctype(c)) {
            return Err(invalid(
                "CertificateSigningRequest",
                old,
                format!(
                    "status.conditions: Forbidden: updates may not remove a condition of type \"{}\"",
                    ctype(c)
                ),
            ));
        }
    }
    let mut merged: Vec<Value> = conditions(old)
        .into_iter()
        .filter(|c| !matches!(ctype(c), "Approved" | "Denied"))
        .collect();
    stamp(&mut wanted);
    merged.extend(wanted);
    check_conditions(old, &merged)?;
    let rv = new.pointer("/metadata/resourceVersion").cloned();
    *new = old.clone();
    new["status"]["conditions"] = json!(merged);
    if let Some(rv) = rv {
        new["metadata"]["resourceVersion"] = rv;
    }
    Ok(())
}

/// `/status`: the signer sets the certificate (once) or the Failed
/// condition; Approved and Denied stay as they are.
pub fn status_update(old: &Value, new: &mut Value) -> ApiResult<()> {
    let old_cert = old
        .pointer("/status/certificate")
        .and_then(Value::as_str)
        .filter(|c| !c.is_empty());
    let new_cert = new
        .pointer("/status/certificate")
        .and_then(Value::as_str)
        .filter(|c| !c.is_empty());
    if let (Some(a), Some(b)) = (old_cert, new_cert)
        && a != b
    {
        return Err(invalid(
            "CertificateSigningRequest",
            old,
            "status.certificate: Forbidden: updates may not modify existing certificate content",
        ));
    }
    if let Some(cert) = new_cert {
        let pem = base64::engine::general_purpose::STANDARD
            .decode(cert)
            .ok()
            .and_then(|b| String::from_utf8(b).ok());
        if !pem.is_some_and(|p| p.contains("-----BEGIN CERTIFICATE-----")) {
            return Err(invalid(
                "CertificateSigningRequest",
                old,
                "status.certificate: Invalid value: must contain at least one CERTIFICATE PEM block",
            ));
        }
    }
    let mut merged: Vec<Value> = conditions(old)
        .into_iter()
        .filter(|c| matches!(ctype(c), "Approved" | "Denied"))
        .collect();
    let mut others: Vec<Value> = conditions(new)
        .into_iter()
        .filter(|c| !matches!(ctype(c), "Approved" | "Denied"))
        .collect();
    stamp(&mut others);
    merged.extend(others);
    check_conditions(old, &merged)?;
    let rv = new.pointer("/metadata/resourceVersion").cloned();
    let cert = new_cert.or(old_cert).map(str::to_owned);
    *new = old.clone();
    new["status"]["conditions"] = json!(merged);
    if let Some(cert) = cert {
        new["status"]["certificate"] = json!(cert);
    }
    if let Some(rv) = rv {
        new["metadata"]["resourceVersion"] = rv;
    }
    Ok(())
}
