//! The reviews: SelfSubjectAccessReview and SubjectAccessReview (RBAC,
//! asked), TokenReview (a bearer token, authenticated), SelfSubjectReview
//! (`kubectl auth whoami`) and TokenRequest.

use std::{collections::BTreeMap, sync::Arc};

use http::{Response, StatusCode};
use serde_json::{Value, json};

use super::{Body, json as respond};
use crate::{
    App,
    authn::UserInfo,
    error::{ApiError, ApiResult},
    rbac::{self, Attributes},
    request::ResourceRequest,
};

fn attributes(spec: &Value) -> ApiResult<Attributes> {
    let s = |v: &Value, k: &str| {
        v.get(k)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    if let Some(r) = spec.get("resourceAttributes") {
        return Ok(Attributes::resource(
            &s(r, "verb"),
            &s(r, "group"),
            &s(r, "resource"),
            &s(r, "subresource"),
            &s(r, "namespace"),
            &s(r, "name"),
        ));
    }
    if let Some(n) = spec.get("nonResourceAttributes") {
        return Ok(Attributes::non_resource(&s(n, "verb"), &s(n, "path")));
    }
    Err(ApiError::invalid(
        "SubjectAccessReview",
        "",
        "spec: Invalid value: exactly one of nonResourceAttributes or resourceAttributes must be specified",
    ))
}

pub fn create(
    app: &Arc<App>,
    rr: &ResourceRequest,
    body: Option<Value>,
    caller: &UserInfo,
) -> ApiResult<Response<Body>> {
    if rr.resource.kind == "SelfSubjectReview" {
        // `kubectl auth whoami`: who the server thinks the caller is.
        return Ok(respond(
            StatusCode::CREATED,
            &json!({
                "apiVersion": "authentication.k8s.io/v1",
                "kind": "SelfSubjectReview",
                "metadata": {"creationTimestamp": crate::admission::now()},
                "status": {"userInfo": {"username": caller.name, "uid": caller.uid, "groups": caller.groups, "extra": caller.extra}},
            }),
        ));
    }
    let mut review = body.ok_or_else(|| ApiError::bad_request("no body"))?;
    let spec = review.get("spec").cloned().unwrap_or_else(|| json!({}));
    if rr.resource.kind == "TokenReview" {
        review["apiVersion"] = json!("authentication.k8s.io/v1");
        review["kind"] = json!("TokenReview");
        review["status"] = token_review(app, &spec)?;
        return Ok(respond(StatusCode::CREATED, &review));
    }
    let attrs = attributes(&spec)?;
    let user = if rr.resource.kind == "SelfSubjectAccessReview" {
        caller.clone()
    } else {
        let strings = |k: &str| -> Vec<String> {
            spec.get(k)
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|g| g.as_str().map(str::to_owned))
                .collect()
        };
        let extra: BTreeMap<String, Vec<String>> = spec
            .get("extra")
            .and_then(Value::as_object)
            .map(|m| {
                m.iter()
                    .map(|(k, v)| {
                        (
                            k.clone(),
                            serde_json::from_value(v.clone()).unwrap_or_default(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        UserInfo {
            name: spec
                .get("user")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
            uid: spec
                .get("uid")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
            groups: strings("groups"),
            extra,
        }
    };
    let (allowed, reason) = rbac::authorize(&app.store, &user, &attrs);
    review["apiVersion"] = json!("authorization.k8s.io/v1");
    review["kind"] = json!(rr.resource.kind);
    review["status"] = json!({"allowed": allowed, "reason": reason});
    Ok(respond(StatusCode::CREATED, &review))
}

/// TokenRequest (`kubectl create token`): a bound ServiceAccount token.
pub fn token_request(
    app: &Arc<App>,
    rr: &ResourceRequest,
    body: Option<Value>,
) -> ApiResult<Response<Body>> {
    let name = rr.name.as_deref().unwrap_or_default();
    let sa = app
        .store
        .get(&format!("core/serviceaccounts/{}/{name}", rr.namespace))
        .ok_or_else(|| ApiError::not_found("serviceaccounts", name))?;
    let mut request = body.unwrap_or_else(|| json!({}));
    let spec = request.get("spec").cloned().unwrap_or_else(|| json!({}));
    let seconds = spec
        .get("expirationSeconds")
        .and_then(Value::as_i64)
        .unwrap_or(3600);
    if seconds < 600 {
        return Err(ApiError::invalid(
            "TokenRequest",
            name,
            "spec.expirationSeconds: Invalid value: may not specify a duration less than 10 minutes",
        ));
    }
    let audiences: Vec<String> = spec
        .get("audiences")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|a| a.as_str().map(str::to_owned))
        .collect();
    let uid = sa
        .pointer("/metadata/uid")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let (token, exp) = crate::tokens::bound(app, &rr.namespace, name, uid, &audiences, seconds)
        .map_err(ApiError::internal)?;
    let expiration = time::OffsetDateTime::from_unix_timestamp(exp)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default();
    request["apiVersion"] = json!("authentication.k8s.io/v1");
    request["kind"] = json!("TokenRequest");
    request["metadata"] = json!({"name": name, "namespace": rr.namespace, "creationTimestamp": crate::admission::now()});
    request["spec"]["expirationSeconds"] = json!(seconds);
    request["status"] = json!({"token": token, "expirationTimestamp": expiration});
    Ok(respond(StatusCode::CREATED, &request))
}

/// A TokenReview's status: who `spec.token` authenticates as, by the
/// authenticators of requests (static tokens, bootstrap tokens,
/// ServiceAccount tokens), or `authenticated: false`.
fn token_review(app: &Arc<App>, spec: &Value) -> ApiResult<Value> {
    let token = spec
        .get("token")
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| {
            ApiError::invalid(
                "TokenReview",
                "",
                "spec.token: Required value: token must not be empty",
            )
        })?;
    let audiences = spec
        .get("audiences")
        .and_then(Value::as_array)
        .filter(|a| !a.is_empty())
        .cloned()
        .unwrap_or_else(|| vec![json!(app.config.service_account_issuer)]);
    let header = format!("Bearer {token}");
    Ok(match app.authn.authenticate(None, Some(&header)) {
        Ok(Some(user)) => json!({
            "authenticated": true,
            "user": {"username": user.name, "uid": user.uid, "groups": user.groups, "extra": user.extra},
            "audiences": audiences,
        }),
        _ => json!({"authenticated": false, "error": "invalid bearer token"}),
    })
}
