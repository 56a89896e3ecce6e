//! ServiceAccounts: a `default` account in every namespace, and for each
//! account a `kubernetes.io/service-account-token` Secret holding a token,
//! `ca.crt` and `namespace` (the pre-1.24 token controller). Token Secrets
//! that users create for an account are filled in too.

use std::sync::Arc;

use base64::Engine as _;
use serde_json::{Value, json};

use super::{Controller, create, delete, str_at, update};
use crate::{
    App,
    store::{Event, EventType},
    tokens,
};

const TOKEN_TYPE: &str = "kubernetes.io/service-account-token";
const SA_NAME: &str = "kubernetes.io/service-account.name";
const SA_UID: &str = "kubernetes.io/service-account.uid";

pub struct ServiceAccounts;

impl Controller for ServiceAccounts {
    fn name(&self) -> &'static str {
        "serviceaccount-token"
    }

    fn resync(&mut self, app: &Arc<App>) {
        let (namespaces, _) = app.store.list("core/namespaces/");
        for ns in namespaces {
            default_account(app, str_at(&ns, "/metadata/name"));
        }
        let (accounts, _) = app.store.list("core/serviceaccounts/");
        for sa in accounts {
            ensure_token(app, &sa);
        }
        let (secrets, _) = app.store.list("core/secrets/");
        for s in secrets {
            fill_token(app, &s);
        }
    }

    fn on_event(&mut self, app: &Arc<App>, e: &Event) {
        match (e.key.split('/').nth(1), e.kind) {
            (Some("namespaces"), EventType::Added) => {
                default_account(app, str_at(&e.object, "/metadata/name"));
            }
            (Some("serviceaccounts"), EventType::Added | EventType::Modified) => {
                ensure_token(app, &e.object);
            }
            (Some("serviceaccounts"), EventType::Deleted) => {
                let ns = str_at(&e.object, "/metadata/namespace");
                let (secrets, _) = app.store.list(&format!("core/secrets/{ns}/"));
                for s in secrets.iter().filter(|s| owned_by(s, &e.object)) {
                    delete(app, "", "secrets", ns, str_at(s, "/metadata/name"));
                }
            }
            (Some("secrets"), EventType::Added | EventType::Modified) => fill_token(app, &e.object),
            _ => {}
        }
    }
}

fn annotation<'a>(obj: &'a Value, key: &str) -> &'a str {
    obj.pointer("/metadata/annotations")
        .and_then(|a| a.get(key))
        .and_then(Value::as_str)
        .unwrap_or_default()
}

fn owned_by(secret: &Value, sa: &Value) -> bool {
    secret.get("type").and_then(Value::as_str) == Some(TOKEN_TYPE)
        && annotation(secret, SA_NAME) == str_at(sa, "/metadata/name")
        && annotation(secret, SA_UID) == str_at(sa, "/metadata/uid")
}

fn default_account(app: &Arc<App>, ns: &str) {
    if ns.is_empty()
        || app
            .store
            .get(&format!("core/serviceaccounts/{ns}/default"))
            .is_some()
    {
        return;
    }
    let sa = json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "default", "namespace": ns}});
    if let Err(e) = create(app, "", "serviceaccounts", ns, sa) {
        tracing::debug!(namespace = ns, "creating the default ServiceAccount: {e}");
    }
}

/// Makes sure the account has a token Secret listed in `secrets`.
fn ensure_token(app: &Arc<App>, sa: &Value) {
    let ns = str_at(sa, "/metadata/namespace");
    let name = str_at(sa, "/metadata/name");
    let (secrets, _) = app.store.list(&format!("core/secrets/{ns}/"));
    if secrets.iter().any(|s| owned_by(s, sa)) {
        return;
    }
    let secret = json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "type": TOKEN_TYPE,
        "metadata": {
            "generateName": format!("{name}-token-"),
            "namespace": ns,
            "annotations": {SA_NAME: name, SA_UID: str_at(sa, "/metadata/uid")},
        },
    });
    match create(app, "", "secrets", ns, secret) {
        Ok(created) => {
            let secret_name = str_at(&created, "/metadata/name").to_owned();
            let _ = update(app, ("", "serviceaccounts", ns, name, None), |obj| {
                let list = obj["secrets"].as_array().cloned().unwrap_or_default();
                if list
                    .iter()
                    .any(|s| s.get("name").and_then(Value::as_str) == Some(&secret_name))
                {
                    return false;
                }
                obj["secrets"] = json!(
                    list.into_iter()
                        .chain([json!({"name": secret_name})])
                        .collect::<Vec<_>>()
                );
                true
            });
        }
        Err(e) => tracing::warn!(
            namespace = ns,
            account = name,
            "creating a token Secret: {e}"
        ),
    }
}

/// Fills `token`, `ca.crt` and `namespace` into a token Secret that lacks
/// them, or whose token no key verifies any more (the keys were given or
/// changed since it was signed): legacy token Secrets authenticate with
/// whatever keys the server has.
fn fill_token(app: &Arc<App>, secret: &Value) {
    if secret.get("type").and_then(Value::as_str) != Some(TOKEN_TYPE) {
        return;
    }
    let held = secret
        .pointer("/data/token")
        .and_then(Value::as_str)
        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
        .and_then(|t| String::from_utf8(t).ok());
    if held
        .as_deref()
        .is_some_and(|t| app.authn.verified_claims(t).is_some())
    {
        return;
    }
    let ns = str_at(secret, "/metadata/namespace").to_owned();
    let secret_name = str_at(secret, "/metadata/name").to_owned();
    let sa_name = annotation(secret, SA_NAME).to_owned();
    let Some(sa) = app
        .store
        .get(&format!("core/serviceaccounts/{ns}/{sa_name}"))
    else {
        return;
    };
    let sa_uid = str_at(&sa, "/metadata/uid").to_owned();
    let Ok(token) = tokens::legacy(app, &ns, &sa_name, &sa_uid, &secret_name) else {
        return;
    };
    if app.authn.verified_claims(&token).is_none() {
        // The signing key is not among the verification keys: a new token
        // would not authenticate either (and would be signed again forever).
        tracing::warn!(
            namespace = ns,
            secret = secret_name,
            "no ServiceAccount key file verifies the signing key's tokens: the token Secret is left as it is"
        );
        return;
    }
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let _ = update(app, ("", "secrets", &ns, &secret_name, None), |obj| {
        if obj.pointer("/data/token") != secret.pointer("/data/token") {
            // Changed meanwhile: the next event decides again.
            return false;
        }
        if held.is_some() {
            tracing::info!(
                namespace = ns,
                secret = secret_name,
                "signed the token Secret again: no key verifies its token"
            );
        }
        obj["data"]["token"] = json!(b64(&token));
        obj["data"]["ca.crt"] = json!(b64(&app.pki.ca_pem));
        obj["data"]["namespace"] = json!(b64(&ns));
        obj["metadata"]["annotations"][SA_UID] = json!(sa_uid);
        true
    });
}
