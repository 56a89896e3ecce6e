//! One manifest file, decoded: a YAML stream (a large one cut at its
//! document markers and parsed in parallel) or JSON, `kind: List`
//! unpacked, and each object translated on its own, so that an invalid one
//! keeps its last good state while the others apply.

use std::{collections::BTreeMap, path::Path};

use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};
use serde_json::Value;

use super::{ManifestError, Object, ObjectId};
use crate::model::{
    ObjectKey,
    translate::{self, InvalidObject},
};

/// Parses one file. `None` when the file as a whole does not parse.
pub(super) fn parse_file(
    path: &Path,
    content: &[u8],
    previous: &BTreeMap<ObjectId, Object>,
    problems: &mut Vec<ManifestError>,
) -> Option<BTreeMap<ObjectId, Object>> {
    let parse_error = |message: String| ManifestError::Parse {
        file: path.to_path_buf(),
        message,
    };
    let Ok(text) = std::str::from_utf8(content) else {
        problems.push(parse_error("not UTF-8".into()));
        return None;
    };
    let documents = if path.extension().is_some_and(|e| e == "json") {
        serde_json::from_str::<Value>(text)
            .map(|v| vec![v])
            .map_err(|e| format!("invalid JSON: {e}"))
    } else {
        parse_yaml(text).map_err(|e| format!("invalid YAML: {e}"))
    };
    let documents = match documents {
        Ok(d) => d,
        Err(message) => {
            problems.push(parse_error(message));
            return None;
        }
    };
    // `kind: List` (as `kubectl get -o yaml` writes) holds its objects in items.
    let mut objects_in = Vec::new();
    for mut doc in documents {
        if doc.get("kind").and_then(Value::as_str) == Some("List") {
            if let Some(Value::Array(items)) = doc.get_mut("items").map(Value::take) {
                objects_in.extend(items);
            }
        } else {
            objects_in.push(doc);
        }
    }
    let mut objects = BTreeMap::new();
    for outcome in in_parallel(objects_in, OBJECTS_PER_THREAD, |value| {
        object(path, &value, previous)
    }) {
        match outcome {
            Outcome::Object(id, object) => {
                objects.insert(id, object);
            }
            Outcome::Ignored => {}
            Outcome::Invalid(kept, problem) => {
                if let Some((id, old)) = kept {
                    objects.insert(id, old);
                }
                problems.push(problem);
            }
        }
    }
    Some(objects)
}

/// Fewer objects than this per CPU are decoded on one thread.
const OBJECTS_PER_THREAD: usize = 256;

/// What one document of a file gives.
enum Outcome {
    Object(ObjectId, Object),
    /// Another kind of object.
    Ignored,
    /// Invalid: the object's last good state, if it had one, is kept.
    Invalid(Option<(ObjectId, Object)>, ManifestError),
}

fn object(path: &Path, value: &Value, previous: &BTreeMap<ObjectId, Object>) -> Outcome {
    let api_version = value
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let kind = value
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let result = match (api_version, kind) {
        ("v1", "Service") => decode::<Service>(value, "Service")
            .and_then(|s| translate::service(&s))
            .map(|s| (ObjectId::Service(s.key.clone()), Object::Service(s))),
        ("discovery.k8s.io/v1", "EndpointSlice") => decode::<EndpointSlice>(value, "EndpointSlice")
            .and_then(|s| translate::endpoint_slice(&s))
            .map(|s| (ObjectId::Slice(s.key.clone()), Object::Slice(s))),
        _ => {
            tracing::debug!(file = %path.display(), api_version, kind, "ignoring an object of another kind");
            return Outcome::Ignored;
        }
    };
    match result {
        Ok((id, object)) => Outcome::Object(id, object),
        Err(source) => {
            let kept = object_id(value, kind)
                .and_then(|id| previous.get(&id).map(|old| (id, old.clone())));
            Outcome::Invalid(
                kept,
                ManifestError::Invalid {
                    file: path.to_path_buf(),
                    source,
                },
            )
        }
    }
}

/// The documents of a YAML stream, empty ones left out. A large stream is
/// cut at its document markers and the pieces are parsed in parallel; if
/// any piece fails, the whole stream is parsed again in one piece, so that
/// the error names the line of the file.
pub(super) fn parse_yaml(text: &str) -> Result<Vec<Value>, serde_yaml::Error> {
    let pieces = split_documents(text, workers());
    if pieces.len() > 1 {
        let parsed: Result<Vec<Vec<Value>>, _> = in_parallel(pieces, 1, parse_yaml_stream)
            .into_iter()
            .collect();
        if let Ok(parsed) = parsed {
            return Ok(parsed.into_iter().flatten().collect());
        }
    }
    parse_yaml_stream(text)
}

pub(super) fn parse_yaml_stream(text: &str) -> Result<Vec<Value>, serde_yaml::Error> {
    let mut documents = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(text) {
        match serde::Deserialize::deserialize(doc)? {
            Value::Null => {}
            v => documents.push(v),
        }
    }
    Ok(documents)
}

/// Below this size a YAML stream is parsed in one piece.
pub(super) const PARALLEL_BYTES: usize = 256 * 1024;

/// Cuts a YAML stream before each `---` marker at the start of a line (YAML
/// forbids that marker inside any scalar, so it always starts a document)
/// into about as many pieces as there are CPUs. A stream with directives
/// (`%YAML`, `%TAG`), which belong to the document after them, or a small
/// one, stays whole.
pub(super) fn split_documents(text: &str, workers: usize) -> Vec<&str> {
    if text.len() < PARALLEL_BYTES || workers < 2 || text.starts_with('%') || text.contains("\n%") {
        return vec![text];
    }
    let target = text.len() / workers;
    let mut pieces = Vec::with_capacity(workers);
    let mut start = 0;
    let mut at = 0;
    for line in text.split_inclusive('\n') {
        let is_marker = line
            .strip_prefix("---")
            .is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', '\t', '\r', '\n']));
        if is_marker && at - start >= target {
            pieces.push(&text[start..at]);
            start = at;
        }
        at += line.len();
    }
    pieces.push(&text[start..]);
    pieces
}

fn workers() -> usize {
    std::thread::available_parallelism()
        .map_or(1, std::num::NonZero::get)
        .min(8)
}

/// `f` over `items` on up to one thread per CPU, at least `per_thread`
/// items each, results in order. Few items stay on this thread.
fn in_parallel<T: Send, R: Send>(
    items: Vec<T>,
    per_thread: usize,
    f: impl Fn(T) -> R + Sync,
) -> Vec<R> {
    let workers = workers().min(items.len().div_ceil(per_thread.max(1)));
    if workers < 2 {
        return items.into_iter().map(f).collect();
    }
    let chunk = items.len().div_ceil(workers);
    let mut parts: Vec<Vec<T>> = Vec::with_capacity(workers);
    let mut items = items.into_iter();
    for _ in 0..workers {
        parts.push(items.by_ref().take(chunk).collect());
    }
    let f = &f;
    std::thread::scope(|scope| {
        let handles: Vec<_> = parts
            .into_iter()
            .map(|part| scope.spawn(move || part.into_iter().map(f).collect::<Vec<R>>()))
            .collect();
        handles
            .into_iter()
            .flat_map(|h| {
                h.join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            })
            .collect()
    })
}

fn decode<T: serde::de::DeserializeOwned>(
    value: &Value,
    kind: &'static str,
) -> Result<T, InvalidObject> {
    T::deserialize(value).map_err(|e| InvalidObject {
        kind,
        object: object_id(value, kind).map_or_else(
            || "?".into(),
            |id| match id {
                ObjectId::Service(k) | ObjectId::Slice(k) => k.to_string(),
            },
        ),
        field: "(schema)".into(),
        message: e.to_string(),
    })
}

fn object_id(value: &Value, kind: &str) -> Option<ObjectId> {
    let meta = value.get("metadata")?;
    let name = meta.get("name")?.as_str()?.to_owned();
    let namespace = meta
        .get("namespace")
        .and_then(Value::as_str)
        .unwrap_or("default")
        .to_owned();
    let key = ObjectKey { namespace, name };
    match kind {
        "Service" => Some(ObjectId::Service(key)),
        "EndpointSlice" => Some(ObjectId::Slice(key)),
        _ => None,
    }
}
