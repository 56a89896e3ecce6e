//! Watch: newline-delimited JSON events (ADDED, MODIFIED, DELETED, BOOKMARK,
//! ERROR) with kube-apiserver's semantics for resourceVersion, selectors,
//! bookmarks, streaming lists and expired resourceVersions.

use std::{collections::HashMap, convert::Infallible, sync::Arc, time::Duration};

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::{BodyExt as _, StreamBody};
use hyper::body::Frame;
use serde_json::{Value, json};
use tokio::sync::{broadcast::error::RecvError, mpsc};

use super::{Body, list};
use crate::{
    App,
    error::{ApiError, ApiResult},
    request::{ResourceRequest, is_true},
    selectors::Selector,
    store::{Event, EventType, WatchStart},
};

/// kube-apiserver ends watches after a random 30–60 minutes; clients renew.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1800);

struct Filter {
    labels: Selector,
    fields: Selector,
    printing: super::Printing,
    resource: &'static crate::resources::ResourceType,
}

impl Filter {
    /// The object as the watcher asked to see it.
    fn print(&self, obj: &Value) -> Value {
        match self.printing {
            super::Printing::Json => obj.clone(),
            super::Printing::Table { full } => {
                super::table::table(self.resource, &[obj], None, full)
            }
        }
    }

    fn matches(&self, obj: &Value) -> bool {
        self.labels.matches_labels(obj) && self.fields.matches_fields(obj)
    }

    /// What a watcher with these selectors sees of a change.
    fn translate(&self, e: &Event) -> Option<(&'static str, Arc<Value>)> {
        match e.kind {
            EventType::Added => self.matches(&e.object).then(|| ("ADDED", e.object.clone())),
            EventType::Deleted => {
                let before = e.prev.as_deref().unwrap_or(&e.object);
                self.matches(before).then(|| ("DELETED", e.object.clone()))
            }
            EventType::Modified => {
                let was = e.prev.as_deref().is_some_and(|p| self.matches(p));
                match (was, self.matches(&e.object)) {
                    (true, true) => Some(("MODIFIED", e.object.clone())),
                    (false, true) => Some(("ADDED", e.object.clone())),
                    (true, false) => Some(("DELETED", e.object.clone())),
                    (false, false) => None,
                }
            }
        }
    }
}

fn line(kind: &str, object: &Value) -> Bytes {
    let mut bytes =
        serde_json::to_vec(&json!({"type": kind, "object": object})).unwrap_or_default();
    bytes.push(b'\n');
    Bytes::from(bytes)
}

fn bookmark(rr: &ResourceRequest, rv: u64, initial_end: bool) -> Bytes {
    let mut meta = json!({"resourceVersion": rv.to_string()});
    if initial_end {
        meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
    }
    line(
        "BOOKMARK",
        &json!({"apiVersion": rr.resource.api_version(), "kind": rr.resource.kind, "metadata": meta}),
    )
}

pub fn watch(
    app: &Arc<App>,
    rr: &ResourceRequest,
    query: &HashMap<String, String>,
    printing: super::Printing,
) -> ApiResult<Response<Body>> {
    let (labels, mut fields) = list::selectors(query)?;
    if let Some(name) = &rr.name {
        fields =
            Selector::fields(&format!("metadata.name={name}")).map_err(ApiError::bad_request)?;
    }
    let send_initial = is_true(query, "sendInitialEvents");
    if send_initial && query.get("resourceVersionMatch").map(String::as_str) != Some("NotOlderThan")
    {
        return Err(ApiError::invalid(
            "ListOptions",
            "",
            "resourceVersionMatch: Forbidden: sendInitialEvents requires setting resourceVersionMatch to NotOlderThan",
        ));
    }
    let rv = match query.get("resourceVersion").map(String::as_str) {
        None | Some("" | "0") => None,
        Some(_) if send_initial => None,
        Some(rv) => Some(
            rv.parse::<u64>()
                .map_err(|_| ApiError::bad_request(format!("invalid resource version \"{rv}\"")))?,
        ),
    };
    let timeout = query
        .get("timeoutSeconds")
        .and_then(|t| t.parse().ok())
        .map_or(DEFAULT_TIMEOUT, Duration::from_secs);
    let bookmarks = is_true(query, "allowWatchBookmarks");
    let prefix = list::prefix(rr);
    let (tx, rx) = mpsc::channel::<Bytes>(256);
    match app.store.watch(&prefix, rv) {
        // kube-apiserver answers an expired resourceVersion inside the
        // stream (HTTP 200, then an ERROR event); clients relist on it.
        Err(err) if err.code == 410 => {
            let _ = tx.try_send(line("ERROR", &err.status()));
        }
        Err(err) => return Err(err),
        Ok((start, events)) => {
            let filter = Filter {
                labels,
                fields,
                printing,
                resource: rr.resource,
            };
            let rr = ResourceRequest {
                resource: rr.resource,
                namespace: rr.namespace.clone(),
                name: None,
                subresource: None,
                verb: "watch",
            };
            let stream = Stream {
                tx,
                events,
                filter,
                rr,
                prefix,
                send_initial,
                bookmarks: bookmarks.then_some(app.config.watch_bookmark_interval),
                timeout,
                epoch: app.store.epoch(),
            };
            tokio::spawn(stream.run(start));
        }
    }
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<_, Infallible>(Frame::data(b)), rx))
    });
    let mut resp = Response::new(StreamBody::new(stream).boxed());
    *resp.status_mut() = StatusCode::OK;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Ok(resp)
}

/// One open watch, moved into its task.
struct Stream {
    tx: mpsc::Sender<Bytes>,
    events: tokio::sync::broadcast::Receiver<Arc<Event>>,
    filter: Filter,
    rr: ResourceRequest,
    prefix: String,
    send_initial: bool,
    bookmarks: Option<Duration>,
    timeout: Duration,
    /// Compaction ends the watch, as a restart would.
    epoch: tokio::sync::watch::Receiver<u64>,
}

impl Stream {
    async fn send(&self, bytes: Bytes) -> bool {
        self.tx.send(bytes).await.is_ok()
    }

    async fn run(mut self, start: WatchStart) {
        let mut last = 0u64;
        match start {
            WatchStart::Snapshot(items, rv) => {
                for obj in items.iter().filter(|o| self.filter.matches(o)) {
                    if !self.send(line("ADDED", &self.filter.print(obj))).await {
                        return;
                    }
                }
                last = rv;
                if self.send_initial && !self.send(bookmark(&self.rr, rv, true)).await {
                    return;
                }
            }
            WatchStart::Backlog(backlog) => {
                for e in backlog {
                    last = e.rv;
                    if let Some((kind, obj)) = self.filter.translate(&e)
                        && !self.send(line(kind, &self.filter.print(&obj))).await
                    {
                        return;
                    }
                }
            }
        }
        let deadline = tokio::time::Instant::now() + self.timeout;
        let every = self.bookmarks.unwrap_or(Duration::from_secs(3600));
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        loop {
            tokio::select! {
                received = self.events.recv() => match received {
                    Ok(e) => {
                        if e.rv <= last {
                            continue;
                        }
                        // Bookmarks carry the store's progress, not only this
                        // resource's, so a resumed watch skips other resources.
                        last = e.rv;
                        if !e.key.starts_with(&self.prefix) {
                            continue;
                        }
                        if let Some((kind, obj)) = self.filter.translate(&e)
                            && !self.send(line(kind, &self.filter.print(&obj))).await
                        {
                            return;
                        }
                    }
                    // A watcher that fell behind is closed; it resumes from the
                    // last resourceVersion it saw (or relists on 410).
                    Err(RecvError::Lagged(_) | RecvError::Closed) => return,
                },
                _ = tick.tick(), if self.bookmarks.is_some() => {
                    if last > 0 && !self.send(bookmark(&self.rr, last, false)).await {
                        return;
                    }
                }
                _ = self.epoch.changed() => return,
                () = tokio::time::sleep_until(deadline) => return,
                () = self.tx.closed() => return,
            }
        }
    }
}
