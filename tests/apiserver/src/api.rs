//! Request handling: authentication, impersonation, authorization, then the
//! resource or non-resource handler.

pub mod crud;
mod discovery;
pub mod list;
mod openapi;
mod reviews;
mod table;
mod watch;

use std::{collections::HashMap, convert::Infallible, sync::Arc};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt as _, Full, combinators::BoxBody};
use hyper::body::Incoming;
use serde_json::Value;

use crate::{
    App,
    authn::{Impersonation, UserInfo},
    error::{ApiError, ApiResult},
    rbac::{self, Attributes},
    request::{self, ResourceRequest, Target},
};

pub type Body = BoxBody<Bytes, Infallible>;

/// How objects are written back: as themselves, or as a Table (`kubectl get`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Printing {
    Json,
    /// `full`: rows carry whole objects (`includeObject=Object`).
    Table {
        full: bool,
    },
}

/// The largest request body accepted (kube-apiserver's limit is 3 MiB).
const MAX_BODY: usize = 3 * 1024 * 1024;

/// Paths anyone may read, as `system:public-info-viewer` grants.
const PUBLIC: &[&str] = &["/healthz", "/livez", "/readyz", "/version", "/version/"];

pub fn full(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Body> {
    let mut resp = Response::new(Full::new(body.into()).boxed());
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

pub fn json(status: StatusCode, value: &Value) -> Response<Body> {
    full(
        status,
        "application/json",
        serde_json::to_vec(value).unwrap_or_default(),
    )
}

pub fn error(err: &ApiError) -> Response<Body> {
    json(
        StatusCode::from_u16(err.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        &err.status(),
    )
}

/// One request, after TLS: `cert_user` is the verified client certificate's.
pub async fn handle(
    app: Arc<App>,
    req: Request<Incoming>,
    cert_user: Option<UserInfo>,
) -> Response<Body> {
    let method = req.method().clone();
    let uri = req.uri().to_string();
    let resp = match handle_inner(&app, req, cert_user.as_ref()).await {
        Ok(resp) => resp,
        Err(err) => {
            if err.code >= 500 {
                tracing::warn!(%method, uri, "{err}");
            }
            error(&err)
        }
    };
    tracing::debug!(%method, uri, status = resp.status().as_u16(), "request");
    resp
}

/// Resource requests by verb, group and resource (with its subresource),
/// as kube-apiserver's `apiserver_request_total` counts them.
#[derive(Debug, Default)]
pub struct RequestCounts(
    std::sync::Mutex<std::collections::BTreeMap<(String, String, String), u64>>,
);

impl RequestCounts {
    fn count(&self, rr: &ResourceRequest) {
        let resource = match &rr.subresource {
            Some(sub) => format!("{}/{sub}", rr.resource.plural),
            None => rr.resource.plural.to_owned(),
        };
        let key = (rr.verb.to_owned(), rr.resource.group.to_owned(), resource);
        *self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(key)
            .or_default() += 1;
    }

    /// The Prometheus text of `/metrics`.
    fn render(&self) -> String {
        use std::fmt::Write as _;
        let mut out = String::from(
            "# HELP apiserver_request_total Resource requests, by verb, group and resource.\n# TYPE apiserver_request_total counter\n",
        );
        let counts = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for ((verb, group, resource), n) in counts.iter() {
            let _ = writeln!(
                out,
                "apiserver_request_total{{verb=\"{verb}\",group=\"{group}\",resource=\"{resource}\"}} {n}"
            );
        }
        out
    }
}

/// The caller after authentication and impersonation.
pub struct Caller {
    pub user: Option<UserInfo>,
}

async fn handle_inner(
    app: &Arc<App>,
    req: Request<Incoming>,
    cert_user: Option<&UserInfo>,
) -> ApiResult<Response<Body>> {
    let (parts, body) = req.into_parts();
    let query = request::parse_query(parts.uri.query());
    let path = parts.uri.path().to_owned();
    let authorization = parts
        .headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let mut user = app.authn.authenticate(cert_user, authorization)?;

    let impersonation = Impersonation::from_headers(&parts.headers);
    if impersonation.is_requested() {
        let real = user.clone().ok_or_else(ApiError::unauthorized)?;
        authorize_impersonation(app, &real, &impersonation)?;
        user = impersonation.user();
    }
    let caller = Caller { user };

    let target = request::parse(&parts.method, &path, &query)
        .map_err(|request::ParseError::NotFound| ApiError::not_found("path", &path))?;
    match target {
        Target::NonResource(path) => {
            let verb = parts.method.as_str().to_ascii_lowercase();
            if !PUBLIC.contains(&path.as_str()) {
                let user = caller.user.as_ref().ok_or_else(ApiError::unauthorized)?;
                let attrs = Attributes::non_resource(&verb, &path);
                if !rbac::authorize(&app.store, user, &attrs).0 {
                    return Err(ApiError::forbidden(attrs.forbidden_message(&user.name)));
                }
            }
            non_resource(app, &parts.method, &path, &query)
        }
        Target::Resource(rr) => {
            let user = caller.user.as_ref().ok_or_else(ApiError::unauthorized)?;
            let attrs = Attributes::resource(
                rr.verb,
                rr.resource.group,
                rr.resource.plural,
                rr.subresource.as_deref().unwrap_or_default(),
                &rr.namespace,
                rr.name.as_deref().unwrap_or_default(),
            );
            if !rbac::authorize(&app.store, user, &attrs).0 {
                return Err(ApiError::forbidden(attrs.forbidden_message(&user.name)));
            }
            app.requests.count(&rr);
            let content_type = parts
                .headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            let accept = parts
                .headers
                .get(header::ACCEPT)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default();
            let printing = if table::wanted(accept) {
                Printing::Table {
                    full: query.get("includeObject").map(String::as_str) == Some("Object"),
                }
            } else {
                Printing::Json
            };
            let body = read_body(body, &parts.method, &content_type).await?;
            resource(app, &rr, &query, &content_type, body, user, printing)
        }
    }
}

/// Impersonation needs `impersonate` on users (or serviceaccounts), groups,
/// uids and userextras; `system:masters` may always.
fn authorize_impersonation(app: &App, real: &UserInfo, imp: &Impersonation) -> ApiResult<()> {
    let mut checks = Vec::new();
    if let Some(name) = &imp.user {
        if let Some((ns, sa)) = name
            .strip_prefix("system:serviceaccount:")
            .and_then(|r| r.split_once(':'))
        {
            checks.push(Attributes::resource(
                "impersonate",
                "",
                "serviceaccounts",
                "",
                ns,
                sa,
            ));
        } else {
            checks.push(Attributes::resource(
                "impersonate",
                "",
                "users",
                "",
                "",
                name,
            ));
        }
    }
    for g in &imp.groups {
        checks.push(Attributes::resource("impersonate", "", "groups", "", "", g));
    }
    if let Some(uid) = &imp.uid {
        checks.push(Attributes::resource(
            "impersonate",
            "authentication.k8s.io",
            "uids",
            "",
            "",
            uid,
        ));
    }
    for (key, values) in &imp.extra {
        for v in values {
            checks.push(Attributes::resource(
                "impersonate",
                "authentication.k8s.io",
                "userextras",
                key,
                "",
                v,
            ));
        }
    }
    for attrs in checks {
        if !rbac::authorize(&app.store, real, &attrs).0 {
            return Err(ApiError::forbidden(attrs.forbidden_message(&real.name)));
        }
    }
    Ok(())
}

async fn read_body(
    body: Incoming,
    method: &Method,
    content_type: &str,
) -> ApiResult<Option<Value>> {
    if matches!(*method, Method::GET | Method::HEAD) {
        return Ok(None);
    }
    let bytes = body
        .collect()
        .await
        .map_err(|e| ApiError::bad_request(format!("reading the body: {e}")))?
        .to_bytes();
    if bytes.len() > MAX_BODY {
        return Err(ApiError::bad_request("request entity too large"));
    }
    if bytes.is_empty() {
        return Ok(None);
    }
    if content_type.starts_with("application/vnd.kubernetes.protobuf") {
        let decoded = crate::proto::decode(&bytes);
        tracing::trace!(?decoded, "protobuf body");
        return decoded
            .map(Some)
            .map_err(|e| ApiError::bad_request(format!("the protobuf body: {e}")));
    }
    // JSON is YAML; kubectl sends JSON, people with curl sometimes YAML.
    serde_json::from_slice(&bytes)
        .or_else(|_| serde_yaml::from_slice(&bytes))
        .map(Some)
        .map_err(|e| ApiError::bad_request(format!("the body is not JSON: {e}")))
}

fn non_resource(
    app: &Arc<App>,
    method: &Method,
    path: &str,
    query: &HashMap<String, String>,
) -> ApiResult<Response<Body>> {
    if *method == Method::POST && path == crate::COMPACT_PATH {
        let rv = app
            .store
            .compact()
            .map_err(|e| ApiError::internal(format!("{e:#}")))?;
        return Ok(json(
            StatusCode::OK,
            &serde_json::json!({"compactedResourceVersion": rv.to_string()}),
        ));
    }
    if *method != Method::GET && *method != Method::HEAD {
        return Err(ApiError::method_not_allowed(format!(
            "{method} is not allowed on {path}"
        )));
    }
    match path {
        "/healthz" | "/livez" | "/readyz" => Ok(full(StatusCode::OK, "text/plain", "ok")),
        "/version" | "/version/" => Ok(json(StatusCode::OK, &discovery::version())),
        "/metrics" => Ok(full(
            StatusCode::OK,
            "text/plain; version=0.0.4",
            app.requests.render(),
        )),
        p if p.starts_with("/openapi") => openapi::handle(p, query),
        p => discovery::handle(app, p).ok_or_else(|| ApiError::not_found("path", p)),
    }
}

fn resource(
    app: &Arc<App>,
    rr: &ResourceRequest,
    query: &HashMap<String, String>,
    content_type: &str,
    body: Option<Value>,
    user: &UserInfo,
    printing: Printing,
) -> ApiResult<Response<Body>> {
    if !rr.resource.verbs.contains(&rr.verb) {
        return Err(ApiError::method_not_allowed(format!(
            "the server does not allow this method on the requested resource ({})",
            rr.resource.plural
        )));
    }
    if let Some(sub) = rr.subresource.as_deref()
        && !rr.resource.subresources.contains(&sub)
    {
        return Err(ApiError::not_found(
            rr.resource.plural,
            &format!("{}/{sub}", rr.name.as_deref().unwrap_or_default()),
        ));
    }
    if rr.resource.namespaced && rr.namespace.is_empty() && !matches!(rr.verb, "list" | "watch") {
        return Err(ApiError::bad_request(
            "the namespace of the provided object is missing",
        ));
    }
    match rr.verb {
        "watch" => watch::watch(app, rr, query, printing),
        "create" if rr.resource.is_review() => reviews::create(app, rr, body, user),
        "create" if rr.subresource.as_deref() == Some("token") => {
            reviews::token_request(app, rr, body)
        }
        "get" | "list" => crud::read(app, rr, query, printing),
        _ => crud::handle(app, rr, query, content_type, body, user),
    }
}
