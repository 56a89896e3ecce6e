//! Lists: pages (`limit` and `continue`), selectors, and the key prefix a
//! request covers.

use std::{collections::HashMap, sync::Arc};

use serde_json::{Value, json};

use crate::{
    App,
    error::{ApiError, ApiResult},
    request::ResourceRequest,
    selectors::Selector,
};

/// One page of a list.
pub struct Page {
    pub items: Vec<Arc<Value>>,
    /// The resourceVersion of the list: for later pages, the first page's.
    pub rv: u64,
    pub continue_token: Option<String>,
}

/// `limit` and `continue`, as kube-apiserver pages lists (kubectl and
/// client-go ask for 500 at a time). The token carries the list's
/// resourceVersion and the last key. Later pages are read from the current
/// state rather than a snapshot at that resourceVersion: an object changed
/// in between shows its newer state, and a watch from the list's
/// resourceVersion replays the change either way.
pub fn list_page(
    app: &Arc<App>,
    rr: &ResourceRequest,
    query: &HashMap<String, String>,
) -> ApiResult<Page> {
    let (labels, fields) = selectors(query)?;
    let limit = match query.get("limit").map(|l| l.parse::<i64>()) {
        None => None,
        Some(Ok(l)) if l > 0 => usize::try_from(l).ok(),
        Some(Ok(_)) => None,
        Some(Err(_)) => return Err(ApiError::bad_request("limit: must be an integer")),
    };
    let token = query
        .get("continue")
        .filter(|t| !t.is_empty())
        .map(|t| decode_continue(t))
        .transpose()?;
    let prefix = prefix(rr);
    if let Some((_, start)) = &token
        && !start.starts_with(&prefix)
    {
        return Err(ApiError::bad_request(
            "continue: the token is for another list",
        ));
    }
    let (items, more, rv) = app.store.list_page(
        &prefix,
        token.as_ref().map(|(_, start)| start.as_str()),
        |o| labels.matches_labels(o) && fields.matches_fields(o),
        limit,
    );
    let rv = token.as_ref().map_or(rv, |(rv, _)| *rv);
    let continue_token = more
        .then(|| items.last().map(|(key, _)| encode_continue(rv, key)))
        .flatten();
    Ok(Page {
        items: items.into_iter().map(|(_, v)| v).collect(),
        rv,
        continue_token,
    })
}

fn encode_continue(rv: u64, start: &str) -> String {
    use base64::Engine as _;
    let token = json!({"v": "meta.k8s.io/v1", "rv": rv, "start": start});
    base64::engine::general_purpose::URL_SAFE.encode(token.to_string())
}

fn decode_continue(token: &str) -> ApiResult<(u64, String)> {
    use base64::Engine as _;
    let invalid = || ApiError::bad_request("continue: the token is not valid");
    let bytes = base64::engine::general_purpose::URL_SAFE
        .decode(token)
        .map_err(|_| invalid())?;
    let value: Value = serde_json::from_slice(&bytes).map_err(|_| invalid())?;
    let rv = value
        .get("rv")
        .and_then(Value::as_u64)
        .ok_or_else(invalid)?;
    let start = value
        .get("start")
        .and_then(Value::as_str)
        .ok_or_else(invalid)?;
    Ok((rv, start.to_owned()))
}

/// The objects of a collection request that its selectors match.
pub fn matching(
    app: &Arc<App>,
    rr: &ResourceRequest,
    query: &HashMap<String, String>,
) -> ApiResult<(Vec<Arc<Value>>, u64)> {
    let (labels, fields) = selectors(query)?;
    let (items, rv) = app.store.list(&prefix(rr));
    Ok((
        items
            .into_iter()
            .filter(|o| labels.matches_labels(o) && fields.matches_fields(o))
            .collect(),
        rv,
    ))
}

pub fn selectors(query: &HashMap<String, String>) -> ApiResult<(Selector, Selector)> {
    let labels = Selector::labels(query.get("labelSelector").map_or("", String::as_str))
        .map_err(ApiError::bad_request)?;
    let fields = Selector::fields(query.get("fieldSelector").map_or("", String::as_str))
        .map_err(ApiError::bad_request)?;
    Ok((labels, fields))
}

/// The store prefix of a collection request (one namespace, or all).
pub fn prefix(rr: &ResourceRequest) -> String {
    if rr.namespace.is_empty() {
        format!("{}/", rr.resource.key_prefix())
    } else {
        format!("{}/{}/", rr.resource.key_prefix(), rr.namespace)
    }
}
