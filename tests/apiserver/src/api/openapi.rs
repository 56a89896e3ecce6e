//! OpenAPI v3, as much as kubectl needs: per group-version documents whose
//! PATCH operations name their GroupVersionKind and take `fieldValidation`.
//! kubectl then leaves validation to the server (`fieldValidation=Strict`,
//! checked against the typed models) and builds strategic merge patches from
//! its compiled-in types.

use std::collections::HashMap;

use http::{Response, StatusCode};
use serde_json::{Map, Value, json};

use super::{Body, json as respond};
use crate::{
    error::{ApiError, ApiResult},
    resources,
};

fn gv_path(group: &str) -> String {
    if group.is_empty() {
        "api/v1".to_owned()
    } else {
        format!("apis/{group}/v1")
    }
}

/// Changes whenever the served resources change (kubectl caches by hash).
fn hash() -> String {
    use sha2::Digest as _;
    let mut h = sha2::Sha256::new();
    for r in resources::RESOURCES {
        h.update(r.plural.as_bytes());
        h.update(r.group.as_bytes());
    }
    h.finalize().iter().take(8).fold(String::new(), |mut s, b| {
        use std::fmt::Write as _;
        let _ = write!(s, "{b:02X}");
        s
    })
}

fn document(group: &str) -> Value {
    let params = json!([
        {"name": "dryRun", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
        {"name": "fieldManager", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
        {"name": "fieldValidation", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
        {"name": "force", "in": "query", "schema": {"type": "boolean", "uniqueItems": true}},
    ]);
    let mut paths = Map::new();
    for r in resources::RESOURCES
        .iter()
        .filter(|r| r.group == group && r.verbs.contains(&"patch"))
    {
        let base = if r.namespaced {
            format!(
                "/{}/namespaces/{{namespace}}/{}/{{name}}",
                gv_path(group),
                r.plural
            )
        } else {
            format!("/{}/{}/{{name}}", gv_path(group), r.plural)
        };
        let gvk = json!({"group": r.group, "version": r.version, "kind": r.kind});
        paths.insert(
            base,
            json!({"patch": {
                "operationId": format!("patch{}", r.kind),
                "x-kubernetes-action": "patch",
                "x-kubernetes-group-version-kind": gvk,
                "parameters": params,
                "requestBody": {"content": {
                    "application/json-patch+json": {"schema": {"type": "object"}},
                    "application/merge-patch+json": {"schema": {"type": "object"}},
                    "application/strategic-merge-patch+json": {"schema": {"type": "object"}},
                }},
                "responses": {"200": {"description": "OK"}},
            }}),
        );
    }
    json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": "v1.33.0"},
        "paths": paths,
        "components": {"schemas": {}},
    })
}

pub fn handle(path: &str, _query: &HashMap<String, String>) -> ApiResult<Response<Body>> {
    let path = path.trim_end_matches('/');
    if path == "/openapi/v3" {
        let hash = hash();
        let mut index = Map::new();
        for g in std::iter::once("").chain(resources::groups()) {
            let p = gv_path(g);
            index.insert(
                p.clone(),
                json!({"serverRelativeURL": format!("/openapi/v3/{p}?hash={hash}")}),
            );
        }
        return Ok(respond(StatusCode::OK, &json!({"paths": index})));
    }
    if let Some(gv) = path.strip_prefix("/openapi/v3/") {
        let group = if gv == "api/v1" {
            Some("")
        } else {
            gv.strip_prefix("apis/")
                .and_then(|r| r.strip_suffix("/v1"))
                .filter(|g| resources::groups().contains(g))
        };
        if let Some(group) = group {
            return Ok(respond(StatusCode::OK, &document(group)));
        }
    }
    Err(ApiError::not_found("path", path))
}
