//! Discovery: /api, /apis, per-group and per-group-version resource lists,
//! and /version. Legacy (v1) discovery documents, which kubectl and kube-rs
//! fall back to when the aggregated form is not offered.

use std::sync::Arc;

use http::{Response, StatusCode};
use serde_json::{Value, json};

use super::{Body, json as respond};
use crate::{App, resources};

pub fn version() -> Value {
    json!({
        "major": "1",
        "minor": "33",
        "gitVersion": "v1.33.0-sluice",
        "gitCommit": env!("CARGO_PKG_VERSION"),
        "gitTreeState": "clean",
        "buildDate": "2026-01-01T00:00:00Z",
        "goVersion": "n/a (rust)",
        "compiler": "rustc",
        "platform": "linux/amd64",
    })
}

fn group_version(group: &str) -> Value {
    json!({"groupVersion": format!("{group}/v1"), "version": "v1"})
}

fn resource_list(group: &str) -> Value {
    let mut list = Vec::new();
    for r in resources::RESOURCES.iter().filter(|r| r.group == group) {
        list.push(json!({
            "name": r.plural,
            "singularName": r.singular,
            "namespaced": r.namespaced,
            "kind": r.kind,
            "verbs": r.verbs,
            "shortNames": r.short_names,
        }));
        for sub in r.subresources {
            list.push(json!({
                "name": format!("{}/{sub}", r.plural),
                "singularName": "",
                "namespaced": r.namespaced,
                "kind": r.kind,
                "verbs": ["get", "patch", "update"],
            }));
        }
    }
    let gv = if group.is_empty() {
        "v1".to_owned()
    } else {
        format!("{group}/v1")
    };
    json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": list})
}

/// The discovery document at `path`, if it is one.
pub fn handle(app: &Arc<App>, path: &str) -> Option<Response<Body>> {
    let path = path.trim_end_matches('/');
    let doc = match path {
        "/api" => json!({
            "kind": "APIVersions",
            "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": app.advertise.clone()}],
        }),
        "/api/v1" => resource_list(""),
        "/apis" => json!({
            "kind": "APIGroupList",
            "apiVersion": "v1",
            "groups": resources::groups().into_iter().map(|g| json!({
                "name": g, "versions": [group_version(g)], "preferredVersion": group_version(g),
            })).collect::<Vec<_>>(),
        }),
        p => {
            let rest = p.strip_prefix("/apis/")?;
            match rest.split_once('/') {
                None if resources::groups().contains(&rest) => json!({
                    "kind": "APIGroup", "apiVersion": "v1", "name": rest,
                    "versions": [group_version(rest)], "preferredVersion": group_version(rest),
                }),
                Some((group, "v1")) if resources::groups().contains(&group) => resource_list(group),
                _ => return None,
            }
        }
    };
    Some(respond(StatusCode::OK, &doc))
}
