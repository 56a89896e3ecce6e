//! get, list, create, update, patch, delete and deletecollection.

use std::{collections::HashMap, sync::Arc};

use http::{Response, StatusCode};
use serde_json::{Value, json};

use super::{
    Body, json as respond,
    list::{list_page, matching},
};
use crate::{
    App,
    admission::{self, now},
    authn::UserInfo,
    error::{ApiError, ApiResult},
    patch,
    request::ResourceRequest,
    store::{object_key, resource_version},
};

pub fn handle(
    app: &Arc<App>,
    rr: &ResourceRequest,
    query: &HashMap<String, String>,
    content_type: &str,
    body: Option<Value>,
    user: &UserInfo,
) -> ApiResult<Response<Body>> {
    match rr.verb {
        "create" => create(
            app,
            rr,
            query,
            body.ok_or_else(|| ApiError::bad_request("no body"))?,
            user,
        ),
        "update" => update(
            app,
            rr,
            query,
            body.ok_or_else(|| ApiError::bad_request("no body"))?,
        ),
        "patch" => patch(
            app,
            rr,
            query,
            content_type,
            &body.ok_or_else(|| ApiError::bad_request("no body"))?,
        ),
        "delete" => delete(app, rr, query, body.as_ref()),
        "deletecollection" => delete_collection(app, rr, query),
        other => Err(ApiError::method_not_allowed(format!(
            "{other} is not supported"
        ))),
    }
}

fn key(rr: &ResourceRequest, name: &str) -> String {
    object_key(&rr.resource.key_prefix(), &rr.namespace, name)
}

fn name(rr: &ResourceRequest) -> ApiResult<&str> {
    rr.name
        .as_deref()
        .ok_or_else(|| ApiError::bad_request("resource name may not be empty"))
}

/// get and list, as objects or as a Table.
pub fn read(
    app: &Arc<App>,
    rr: &ResourceRequest,
    query: &HashMap<String, String>,
    printing: super::Printing,
) -> ApiResult<Response<Body>> {
    if rr.verb == "get" {
        let n = name(rr)?;
        let obj = app
            .store
            .get(&key(rr, n))
            .ok_or_else(|| ApiError::not_found(rr.resource.plural, n))?;
        return Ok(match printing {
            super::Printing::Json => respond(StatusCode::OK, &obj),
            super::Printing::Table { full } => respond(
                StatusCode::OK,
                &super::table::table(rr.resource, &[&obj], None, full),
            ),
        });
    }
    let page = list_page(app, rr, query)?;
    let items: Vec<&Value> = page.items.iter().map(AsRef::as_ref).collect();
    let mut list = match printing {
        super::Printing::Json => json!({
            "apiVersion": rr.resource.api_version(),
            "kind": format!("{}List", rr.resource.kind),
            "metadata": {"resourceVersion": page.rv.to_string()},
            "items": items,
        }),
        super::Printing::Table { full } => {
            super::table::table(rr.resource, &items, Some(page.rv), full)
        }
    };
    if let Some(token) = page.continue_token {
        list["metadata"]["continue"] = Value::String(token);
    }
    Ok(respond(StatusCode::OK, &list))
}

/// `fieldValidation=Strict`: fields that the type does not have are an error.
fn check_fields(
    rr: &ResourceRequest,
    obj: &Value,
    query: &HashMap<String, String>,
) -> ApiResult<()> {
    if query.get("fieldValidation").map(String::as_str) != Some("Strict") {
        return Ok(());
    }
    let typed = (rr.resource.typed)(obj)
        .map_err(|e| ApiError::bad_request(format!("strict decoding error: {e}")))?;
    let mut unknown = Vec::new();
    unknown_fields(obj, &typed, "", &mut unknown);
    if unknown.is_empty() {
        return Ok(());
    }
    let list: Vec<String> = unknown
        .iter()
        .map(|f| format!("unknown field \"{f}\""))
        .collect();
    Err(ApiError::bad_request(format!(
        "strict decoding error: {}",
        list.join(", ")
    )))
}

fn unknown_fields(input: &Value, typed: &Value, path: &str, out: &mut Vec<String>) {
    match (input, typed) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in a {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                match b.get(k) {
                    None if !v.is_null() => out.push(p),
                    Some(t) => unknown_fields(v, t, &p, out),
                    None => {}
                }
            }
        }
        (Value::Array(a), Value::Array(b)) => {
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                unknown_fields(x, y, &format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}

/// Checks apiVersion, kind and namespace of a body against the URL.
fn check_identity(rr: &ResourceRequest, obj: &mut Value) -> ApiResult<()> {
    if !obj.is_object() {
        return Err(ApiError::bad_request("the body is not an object"));
    }
    let api_version = rr.resource.api_version();
    match obj.get("apiVersion").and_then(Value::as_str) {
        Some(v) if v != api_version => {
            return Err(ApiError::bad_request(format!(
                "the API version in the data ({v}) does not match the expected API version ({api_version})"
            )));
        }
        _ => obj["apiVersion"] = json!(api_version),
    }
    match obj.get("kind").and_then(Value::as_str) {
        Some(k) if k != rr.resource.kind => {
            return Err(ApiError::bad_request(format!(
                "the kind in the data ({k}) does not match the expected kind ({})",
                rr.resource.kind
            )));
        }
        _ => obj["kind"] = json!(rr.resource.kind),
    }
    if !obj.get("metadata").is_some_and(Value::is_object) {
        obj["metadata"] = json!({});
    }
    if rr.resource.namespaced {
        match obj.pointer("/metadata/namespace").and_then(Value::as_str) {
            Some(ns) if !ns.is_empty() && ns != rr.namespace => {
                return Err(ApiError::bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request",
                ));
            }
            _ => obj["metadata"]["namespace"] = json!(rr.namespace),
        }
    } else if let Some(meta) = obj["metadata"].as_object_mut() {
        meta.remove("namespace");
    }
    Ok(())
}

fn create(
    app: &Arc<App>,
    rr: &ResourceRequest,
    query: &HashMap<String, String>,
    obj: Value,
    user: &UserInfo,
) -> ApiResult<Response<Body>> {
    let stored = create_object(app, rr, query, obj, user)?;
    Ok(respond(StatusCode::CREATED, &stored))
}

/// Creates an object as `user` would through the API (controllers use it too).
pub fn create_object(
    app: &Arc<App>,
    rr: &ResourceRequest,
    query: &HashMap<String, String>,
    mut obj: Value,
    user: &UserInfo,
) -> ApiResult<Arc<Value>> {
    check_identity(rr, &mut obj)?;
    let name = match obj
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
    {
        Some(n) => n.to_owned(),
        None => {
            let prefix = obj
                .pointer("/metadata/generateName")
                .and_then(Value::as_str)
                .filter(|n| !n.is_empty());
            let prefix = prefix.ok_or_else(|| {
                ApiError::invalid(
                    rr.resource.kind,
                    "",
                    "metadata.name: Required value: name or generateName is required",
                )
            })?;
            format!("{prefix}{}", random_suffix())
        }
    };
    if let Some(n) = rr.name.as_deref()
        && n != name
    {
        return Err(ApiError::bad_request(
            "the name of the object does not match the name on the URL",
        ));
    }
    if rr.resource.namespaced {
        let ns = app.store.get(&format!("core/namespaces//{}", rr.namespace));
        match ns {
            None => return Err(ApiError::not_found("namespaces", &rr.namespace)),
            Some(ns)
                if ns.pointer("/status/phase").and_then(Value::as_str) == Some("Terminating") =>
            {
                return Err(ApiError::forbidden(format!(
                    "unable to create new content in namespace {} because it is being terminated",
                    rr.namespace
                )));
            }
            Some(_) => {}
        }
    }
    check_fields(rr, &obj, query)?;
    obj["metadata"]["name"] = json!(name);
    obj["metadata"]["uid"] = json!(uuid::Uuid::new_v4().to_string());
    obj["metadata"]["creationTimestamp"] = json!(now());
    if obj.get("spec").is_some() {
        obj["metadata"]["generation"] = json!(1);
    }
    if let Some(meta) = obj["metadata"].as_object_mut() {
        meta.remove("resourceVersion");
        meta.remove("deletionTimestamp");
    }
    admission::on_create(rr, &mut obj, user, &app.ips, &app.node_ports)?;
    let allocated = admission::cluster_ips(&obj);
    let node_ports = admission::node_ports(&obj);
    let result = app.store.mutate(&key(rr, &name), |old| {
        if old.is_some() {
            return Err(ApiError::already_exists(rr.resource.plural, &name));
        }
        Ok(Some(obj))
    });
    if result.is_err() && rr.resource.kind == "Service" {
        release(app, &allocated);
        for port in node_ports {
            app.node_ports.release(port);
        }
    }
    result
}

fn release(app: &App, ips: &[std::net::IpAddr]) {
    for ip in ips {
        app.ips.release(*ip);
    }
}

fn random_suffix() -> String {
    const CHARS: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    (0..5)
        .map(|_| {
            char::from(
                CHARS
                    .get(rand::random::<u32>() as usize % CHARS.len())
                    .copied()
                    .unwrap_or(b'x'),
            )
        })
        .collect()
}

/// Checks the resourceVersion precondition and carries server-owned fields.
fn prepare_update(app: &App, rr: &ResourceRequest, old: &Value, new: &mut Value) -> ApiResult<()> {
    let name = old
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    if let Some(rv) = new
        .pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .filter(|r| !r.is_empty())
        && Some(rv)
            != old
                .pointer("/metadata/resourceVersion")
                .and_then(Value::as_str)
    {
        return Err(ApiError::conflict(
            format!("{}.{}", rr.resource.plural, rr.resource.group).trim_end_matches('.'),
            &name,
            "the object has been modified; please apply your changes to the latest version and try again",
        ));
    }
    if new
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .is_some_and(|n| n != name)
    {
        return Err(ApiError::bad_request(
            "the name of the object does not match the name on the URL",
        ));
    }
    for field in [
        "uid",
        "creationTimestamp",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "name",
        "namespace",
    ] {
        match old.pointer(&format!("/metadata/{field}")) {
            Some(v) => new["metadata"][field] = v.clone(),
            None => {
                if let Some(meta) = new["metadata"].as_object_mut() {
                    meta.remove(field);
                }
            }
        }
    }
    admission::on_update(rr, old, new, (&app.ips, &app.node_ports))?;
    let generation = old.pointer("/metadata/generation").and_then(Value::as_i64);
    if let Some(g) = generation {
        let spec_changed = old.get("spec") != new.get("spec");
        new["metadata"]["generation"] = json!(if spec_changed { g + 1 } else { g });
    }
    Ok(())
}

fn update(
    app: &Arc<App>,
    rr: &ResourceRequest,
    query: &HashMap<String, String>,
    obj: Value,
) -> ApiResult<Response<Body>> {
    let stored = update_object(app, rr, query, obj)?;
    Ok(respond(StatusCode::OK, &stored))
}

/// Replaces an object (PUT), with the resourceVersion precondition.
pub fn update_object(
    app: &Arc<App>,
    rr: &ResourceRequest,
    query: &HashMap<String, String>,
    mut obj: Value,
) -> ApiResult<Arc<Value>> {
    check_identity(rr, &mut obj)?;
    check_fields(rr, &obj, query)?;
    let n = name(rr)?.to_owned();
    app.store.mutate(&key(rr, &n), |old| {
        let old = old.ok_or_else(|| ApiError::not_found(rr.resource.plural, &n))?;
        prepare_update(app, rr, old, &mut obj)?;
        Ok(Some(obj))
    })
}

fn patch(
    app: &Arc<App>,
    rr: &ResourceRequest,
    query: &HashMap<String, String>,
    content_type: &str,
    body: &Value,
) -> ApiResult<Response<Body>> {
    let n = name(rr)?.to_owned();
    let media = content_type.split(';').next().unwrap_or_default().trim();
    if media == "application/apply-patch+yaml" {
        return Err(ApiError::unsupported_media_type(
            "server-side apply is not supported by this server; use client-side `kubectl apply`",
        ));
    }
    let stored = app.store.mutate(&key(rr, &n), |old| {
        let old = old.ok_or_else(|| ApiError::not_found(rr.resource.plural, &n))?;
        let mut new = old.clone();
        // The patch may carry a resourceVersion: then it is a precondition.
        if let Some(meta) = new["metadata"].as_object_mut() {
            meta.remove("resourceVersion");
        }
        match media {
            "application/merge-patch+json" => patch::merge(&mut new, body),
            "application/strategic-merge-patch+json" => {
                patch::strategic(rr.resource.kind, &mut new, body).map_err(ApiError::bad_request)?;
            }
            "application/json-patch+json" => patch::json_patch(&mut new, body).map_err(|e| ApiError::invalid(rr.resource.kind, &n, e))?,
            other => return Err(ApiError::unsupported_media_type(format!("the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/strategic-merge-patch+json (got `{other}`)"))),
        }
        check_identity(rr, &mut new)?;
        check_fields(rr, &new, query)?;
        prepare_update(app, rr, old, &mut new)?;
        Ok(Some(new))
    })?;
    Ok(respond(StatusCode::OK, &stored))
}

/// DeleteOptions from the body or the query.
fn grace_period(query: &HashMap<String, String>, body: Option<&Value>) -> Option<i64> {
    body.and_then(|b| b.get("gracePeriodSeconds"))
        .and_then(Value::as_i64)
        .or_else(|| query.get("gracePeriodSeconds").and_then(|g| g.parse().ok()))
}

fn delete(
    app: &Arc<App>,
    rr: &ResourceRequest,
    query: &HashMap<String, String>,
    body: Option<&Value>,
) -> ApiResult<Response<Body>> {
    let n = name(rr)?.to_owned();
    if let Some(rv) = body
        .and_then(|b| b.pointer("/preconditions/resourceVersion"))
        .and_then(Value::as_str)
    {
        let current = app
            .store
            .get(&key(rr, &n))
            .and_then(|o| resource_version(&o));
        if current.map(|c| c.to_string()).as_deref() != Some(rv) {
            return Err(ApiError::conflict(
                rr.resource.plural,
                &n,
                "the ResourceVersion in the precondition does not match",
            ));
        }
    }
    let stored = delete_object(app, rr, &n, grace_period(query, body))?;
    Ok(respond(StatusCode::OK, &stored))
}

/// Deletes one object. A Pod bound to a node terminates gracefully: it gets
/// a deletionTimestamp and goes after its grace period (there is no kubelet
/// to confirm). A Namespace takes its contents with it.
pub fn delete_object(
    app: &Arc<App>,
    rr: &ResourceRequest,
    name: &str,
    grace: Option<i64>,
) -> ApiResult<Arc<Value>> {
    let key = key(rr, name);
    if rr.resource.kind == "Pod" {
        let old = app
            .store
            .get(&key)
            .ok_or_else(|| ApiError::not_found(rr.resource.plural, name))?;
        let bound = old
            .pointer("/spec/nodeName")
            .and_then(Value::as_str)
            .is_some_and(|n| !n.is_empty());
        let grace = grace
            .or_else(|| {
                old.pointer("/spec/terminationGracePeriodSeconds")
                    .and_then(Value::as_i64)
            })
            .unwrap_or(30);
        if bound && grace > 0 {
            if old
                .pointer("/metadata/deletionTimestamp")
                .is_some_and(|d| !d.is_null())
            {
                return Ok(old);
            }
            let stored = app.store.mutate(&key, |cur| {
                let mut obj = cur
                    .ok_or_else(|| ApiError::not_found(rr.resource.plural, name))?
                    .clone();
                obj["metadata"]["deletionTimestamp"] = json!(now());
                obj["metadata"]["deletionGracePeriodSeconds"] = json!(grace);
                Ok(Some(obj))
            })?;
            crate::controllers::schedule_pod_removal(app.clone(), key, grace);
            return Ok(stored);
        }
    }
    if rr.resource.kind == "Namespace" {
        if matches!(name, "default" | "kube-system" | "kube-public") {
            return Err(ApiError::forbidden(format!(
                "namespace \"{name}\" is forbidden: this namespace may not be deleted"
            )));
        }
        for r in crate::resources::RESOURCES
            .iter()
            .filter(|r| r.namespaced && !r.is_review())
        {
            let (items, _) = app.store.list(&format!("{}/{name}/", r.key_prefix()));
            for obj in items {
                let n = obj
                    .pointer("/metadata/name")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                let k = object_key(&r.key_prefix(), name, n);
                // Gone already (a concurrent delete) is fine.
                let _ = app.store.mutate(&k, |cur| match cur {
                    Some(_) => Ok(None),
                    None => Err(ApiError::not_found(r.plural, n)),
                });
                admission::on_delete(r.kind, &obj, &app.ips, &app.node_ports);
            }
        }
    }
    let old = app.store.mutate(&key, |cur| {
        if cur.is_none() {
            return Err(ApiError::not_found(rr.resource.plural, name));
        }
        Ok(None)
    })?;
    admission::on_delete(rr.resource.kind, &old, &app.ips, &app.node_ports);
    Ok(old)
}

fn delete_collection(
    app: &Arc<App>,
    rr: &ResourceRequest,
    query: &HashMap<String, String>,
) -> ApiResult<Response<Body>> {
    let (items, _) = matching(app, rr, query)?;
    for obj in &items {
        let n = obj
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let ns = obj
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let one = ResourceRequest {
            resource: rr.resource,
            namespace: ns,
            name: Some(n.to_owned()),
            subresource: None,
            verb: "delete",
        };
        match delete_object(app, &one, n, grace_period(query, None)) {
            Ok(_) | Err(ApiError { code: 404, .. }) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(respond(
        StatusCode::OK,
        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success"}),
    ))
}
