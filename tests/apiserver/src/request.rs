//! What a request asks for: kube-apiserver's RequestInfo, from path and query.

use std::collections::HashMap;

use crate::resources::{self, ResourceType};

#[derive(Debug)]
pub enum Target {
    /// Non-resource paths: discovery, health, version, OpenAPI.
    NonResource(String),
    Resource(ResourceRequest),
}

#[derive(Debug)]
pub struct ResourceRequest {
    pub resource: &'static ResourceType,
    /// Set for namespaced requests (empty for all namespaces).
    pub namespace: String,
    pub name: Option<String>,
    pub subresource: Option<String>,
    /// get, list, watch, create, update, patch, delete, deletecollection.
    pub verb: &'static str,
}

#[derive(Debug)]
pub enum ParseError {
    NotFound,
}

/// Percent-decodes a query value ('+' is a space).
pub fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes.get(i) {
            Some(b'%') => {
                let hex = s
                    .get(i + 1..i + 3)
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                if let Some(b) = hex {
                    out.push(b);
                    i += 3;
                    continue;
                }
                out.push(b'%');
            }
            Some(b'+') => out.push(b' '),
            Some(b) => out.push(*b),
            None => {}
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub fn parse_query(query: Option<&str>) -> HashMap<String, String> {
    query
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect()
}

pub fn is_true(q: &HashMap<String, String>, key: &str) -> bool {
    q.get(key).is_some_and(|v| v == "true" || v == "1")
}

/// Parses `/api/v1/...` and `/apis/<group>/<version>/...` resource paths.
pub fn parse(
    method: &http::Method,
    path: &str,
    query: &HashMap<String, String>,
) -> Result<Target, ParseError> {
    let parts: Vec<&str> = path
        .trim_matches('/')
        .split('/')
        .filter(|p| !p.is_empty())
        .collect();
    let (group, version, rest) = match parts.as_slice() {
        ["api", version, rest @ ..] if !rest.is_empty() => ("", *version, rest),
        ["apis", group, version, rest @ ..] if !rest.is_empty() => (*group, *version, rest),
        _ => return Ok(Target::NonResource(path.to_owned())),
    };
    let mut rest: Vec<&str> = rest.to_vec();
    let mut watch = is_true(query, "watch");
    if rest.first() == Some(&"watch") {
        watch = true;
        rest.remove(0);
    }
    let mut namespace = String::new();
    // namespaces/<ns>/<resource>…, unless the next part is a subresource of
    // the namespace itself (status, finalize).
    if rest.first() == Some(&"namespaces")
        && rest.len() > 2
        && !matches!(rest.get(2), Some(&"status" | &"finalize"))
    {
        namespace = rest.get(1).map(|s| (*s).to_owned()).unwrap_or_default();
        rest.drain(..2);
    }
    let plural = *rest.first().ok_or(ParseError::NotFound)?;
    let resource = resources::find(group, version, plural).ok_or(ParseError::NotFound)?;
    let name = rest.get(1).map(|s| (*s).to_owned());
    let subresource = rest.get(2).map(|s| (*s).to_owned());
    if rest.len() > 3 {
        return Err(ParseError::NotFound);
    }
    let verb = match (method.as_str(), name.is_some()) {
        ("GET" | "HEAD", true) if watch => "watch",
        ("GET" | "HEAD", true) => "get",
        ("GET" | "HEAD", false) if watch => "watch",
        ("GET" | "HEAD", false) => "list",
        ("POST", _) => "create",
        ("PUT", _) => "update",
        ("PATCH", _) => "patch",
        ("DELETE", true) => "delete",
        ("DELETE", false) => "deletecollection",
        _ => return Err(ParseError::NotFound),
    };
    Ok(Target::Resource(ResourceRequest {
        resource,
        namespace,
        name,
        subresource,
        verb,
    }))
}

#[cfg(test)]
mod tests {
    use http::Method;

    use super::*;

    fn res(method: &Method, path: &str, query: &str) -> ResourceRequest {
        match parse(method, path, &parse_query(Some(query))).unwrap() {
            Target::Resource(r) => r,
            Target::NonResource(p) => panic!("non-resource {p}"),
        }
    }

    #[test]
    fn request_info() {
        let r = res(&Method::GET, "/api/v1/namespaces/default/services/web", "");
        assert_eq!(
            (
                r.resource.plural,
                r.namespace.as_str(),
                r.name.as_deref(),
                r.verb
            ),
            ("services", "default", Some("web"), "get")
        );
        let r = res(&Method::GET, "/api/v1/services", "watch=true");
        assert_eq!((r.namespace.as_str(), r.verb), ("", "watch"));
        let r = res(&Method::GET, "/api/v1/namespaces/kube-system", "");
        assert_eq!(
            (r.resource.plural, r.name.as_deref()),
            ("namespaces", Some("kube-system"))
        );
        let r = res(&Method::PUT, "/api/v1/namespaces/kube-system/status", "");
        assert_eq!(
            (r.resource.plural, r.subresource.as_deref(), r.verb),
            ("namespaces", Some("status"), "update")
        );
        let r = res(
            &Method::PUT,
            "/apis/certificates.k8s.io/v1/certificatesigningrequests/node-csr-x/approval",
            "",
        );
        assert_eq!(
            (r.resource.kind, r.subresource.as_deref()),
            ("CertificateSigningRequest", Some("approval"))
        );
        let r = res(
            &Method::DELETE,
            "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices",
            "",
        );
        assert_eq!(r.verb, "deletecollection");
        let r = res(&Method::GET, "/api/v1/watch/namespaces/default/pods", "");
        assert_eq!((r.verb, r.namespace.as_str()), ("watch", "default"));
        assert!(matches!(
            parse(&Method::GET, "/version", &HashMap::new()),
            Ok(Target::NonResource(_))
        ));
        assert!(parse(&Method::GET, "/api/v1/widgets", &HashMap::new()).is_err());
        assert_eq!(decode("app%3Dweb%2Ctier+in+(a)"), "app=web,tier in (a)");
    }
}
