//! PATCH bodies: JSON merge patch (RFC 7386), JSON patch (RFC 6902) and
//! strategic merge patch (what `kubectl apply` and `kubectl patch` send), for
//! the list fields of the types served here.

use serde_json::{Map, Value};

/// How a list field merges under strategic merge patch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ListStrategy {
    /// Replace the whole list (the default).
    Atomic,
    /// Merge maps matched by this key.
    MergeKey(&'static str),
    /// Set union of primitives.
    Primitive,
}

/// Merge strategies of list fields (`patchStrategy`/`patchMergeKey` in the
/// Kubernetes types), by kind and field path without list indexes.
fn list_strategy(kind: &str, path: &[String]) -> ListStrategy {
    use ListStrategy::{Atomic, MergeKey, Primitive};
    let p: Vec<&str> = path.iter().map(String::as_str).collect();
    match (kind, p.as_slice()) {
        (_, ["metadata", "ownerReferences"]) => MergeKey("uid"),
        (_, ["metadata", "finalizers"]) => Primitive,
        ("Service", ["spec", "ports"]) => MergeKey("port"),
        (
            "Pod",
            [
                "spec",
                "containers"
                | "initContainers"
                | "ephemeralContainers"
                | "volumes"
                | "imagePullSecrets",
            ],
        ) => MergeKey("name"),
        ("Pod", ["spec", "hostAliases"]) => MergeKey("ip"),
        ("Pod", ["spec", "containers" | "initContainers", "ports"]) => MergeKey("containerPort"),
        ("Pod", ["spec", "containers" | "initContainers", "env"]) => MergeKey("name"),
        ("Pod", ["spec", "containers" | "initContainers", "volumeMounts"]) => MergeKey("mountPath"),
        ("Pod" | "Node" | "Namespace", ["status", "conditions"]) => MergeKey("type"),
        ("Pod", ["status", "podIPs"]) => MergeKey("ip"),
        ("Node", ["status", "addresses"]) => MergeKey("type"),
        ("ServiceAccount", ["secrets"]) => MergeKey("name"),
        _ => Atomic,
    }
}

/// RFC 7386 JSON merge patch.
pub fn merge(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let Value::Object(t) = target else { return };
    for (k, v) in patch {
        if v.is_null() {
            t.remove(k);
        } else {
            merge(t.entry(k.clone()).or_insert(Value::Null), v);
        }
    }
}

/// Strategic merge patch of `patch` into `target`, an object of `kind`.
pub fn strategic(kind: &str, target: &mut Value, patch: &Value) -> Result<(), String> {
    strategic_at(kind, &mut Vec::new(), target, patch)
}

fn strategic_at(
    kind: &str,
    path: &mut Vec<String>,
    target: &mut Value,
    patch: &Value,
) -> Result<(), String> {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return Ok(());
    };
    match patch.get("$patch").and_then(Value::as_str) {
        Some("replace") => {
            let mut replaced = patch.clone();
            replaced.remove("$patch");
            *target = Value::Object(replaced);
            return Ok(());
        }
        Some("delete") => {
            *target = Value::Null;
            return Ok(());
        }
        Some(other) => return Err(format!("unknown $patch directive `{other}`")),
        None => {}
    }
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let Value::Object(t) = target else {
        return Ok(());
    };
    for (k, v) in patch {
        if k == "$retainKeys"
            || k.starts_with("$setElementOrder/")
            || k.starts_with("$deleteFromPrimitiveList/")
        {
            continue;
        }
        if v.is_null() {
            t.remove(k);
            continue;
        }
        path.push(k.clone());
        let slot = t.entry(k.clone()).or_insert(Value::Null);
        match v {
            Value::Array(items) => merge_list(kind, path, slot, items)?,
            Value::Object(_) => {
                strategic_at(kind, path, slot, v)?;
                if slot.is_null() {
                    t.remove(k);
                }
            }
            _ => *slot = v.clone(),
        }
        path.pop();
    }
    for (k, v) in patch {
        if let Some(field) = k.strip_prefix("$deleteFromPrimitiveList/")
            && let (Some(Value::Array(list)), Value::Array(remove)) = (t.get_mut(field), v)
        {
            list.retain(|x| !remove.contains(x));
        }
        if let Some(field) = k.strip_prefix("$setElementOrder/")
            && let (Some(Value::Array(list)), Value::Array(order)) = (t.get_mut(field), v)
        {
            path.push(field.to_owned());
            let strategy = list_strategy(kind, path);
            path.pop();
            reorder(list, order, strategy);
        }
    }
    if let Some(Value::Array(keep)) = patch.get("$retainKeys") {
        t.retain(|k, _| keep.iter().any(|x| x.as_str() == Some(k)));
    }
    Ok(())
}

fn merge_list(
    kind: &str,
    path: &mut Vec<String>,
    slot: &mut Value,
    items: &[Value],
) -> Result<(), String> {
    match list_strategy(kind, path) {
        ListStrategy::Atomic => *slot = Value::Array(items.to_vec()),
        ListStrategy::Primitive => {
            let mut list = slot.as_array().cloned().unwrap_or_default();
            for item in items {
                if !list.contains(item) {
                    list.push(item.clone());
                }
            }
            *slot = Value::Array(list);
        }
        ListStrategy::MergeKey(key) => {
            if items
                .iter()
                .any(|i| i.get("$patch").and_then(Value::as_str) == Some("replace"))
            {
                let kept = items
                    .iter()
                    .filter(|i| i.get("$patch").is_none())
                    .cloned()
                    .collect();
                *slot = Value::Array(kept);
                return Ok(());
            }
            let mut list = slot.as_array().cloned().unwrap_or_default();
            for item in items {
                let id = item
                    .get(key)
                    .ok_or_else(|| format!("list item without merge key `{key}`"))?;
                let pos = list.iter().position(|x| x.get(key) == Some(id));
                if item.get("$patch").and_then(Value::as_str) == Some("delete") {
                    if let Some(pos) = pos {
                        list.remove(pos);
                    }
                    continue;
                }
                match pos {
                    Some(pos) => {
                        if let Some(existing) = list.get_mut(pos) {
                            strategic_at(kind, path, existing, item)?;
                        }
                    }
                    None => {
                        let mut fresh = Value::Null;
                        strategic_at(kind, path, &mut fresh, item)?;
                        list.push(fresh);
                    }
                }
            }
            *slot = Value::Array(list);
        }
    }
    Ok(())
}

/// Orders `list` as `order` says; items it does not name keep their
/// relative order after the named ones.
fn reorder(list: &mut [Value], order: &[Value], strategy: ListStrategy) {
    let rank = |item: &Value| -> usize {
        let found = match strategy {
            ListStrategy::MergeKey(key) => order
                .iter()
                .position(|o| o.get(key).is_some() && o.get(key) == item.get(key)),
            _ => order.iter().position(|o| o == item),
        };
        found.unwrap_or(order.len())
    };
    list.sort_by_key(rank);
}

/// RFC 6902 JSON patch.
pub fn json_patch(target: &mut Value, ops: &Value) -> Result<(), String> {
    let ops = ops
        .as_array()
        .ok_or("a JSON patch is an array of operations")?;
    for op in ops {
        let kind = op
            .get("op")
            .and_then(Value::as_str)
            .ok_or("operation without `op`")?;
        let path = op
            .get("path")
            .and_then(Value::as_str)
            .ok_or("operation without `path`")?;
        match kind {
            "add" => add(
                target,
                path,
                op.get("value").cloned().ok_or("add without value")?,
            )?,
            "remove" => {
                remove(target, path)?;
            }
            "replace" => {
                remove(target, path)?;
                add(
                    target,
                    path,
                    op.get("value").cloned().ok_or("replace without value")?,
                )?;
            }
            "move" | "copy" => {
                let from = op
                    .get("from")
                    .and_then(Value::as_str)
                    .ok_or("move/copy without from")?;
                let value = if kind == "move" {
                    remove(target, from)?
                } else {
                    target
                        .pointer(from)
                        .cloned()
                        .ok_or_else(|| format!("no value at {from}"))?
                };
                add(target, path, value)?;
            }
            "test" => {
                if target.pointer(path) != op.get("value") {
                    return Err(format!("test failed at {path}"));
                }
            }
            other => return Err(format!("unknown JSON patch operation `{other}`")),
        }
    }
    Ok(())
}

fn split_pointer(path: &str) -> Result<(String, String), String> {
    let (parent, last) = path
        .rsplit_once('/')
        .ok_or_else(|| format!("bad JSON pointer `{path}`"))?;
    Ok((
        parent.to_owned(),
        last.replace("~1", "/").replace("~0", "~"),
    ))
}

fn add(target: &mut Value, path: &str, value: Value) -> Result<(), String> {
    if path.is_empty() {
        *target = value;
        return Ok(());
    }
    let (parent, last) = split_pointer(path)?;
    match target.pointer_mut(&parent) {
        Some(Value::Object(map)) => {
            map.insert(last, value);
            Ok(())
        }
        Some(Value::Array(list)) => {
            if last == "-" {
                list.push(value);
                return Ok(());
            }
            let i: usize = last.parse().map_err(|_| format!("bad index in `{path}`"))?;
            if i > list.len() {
                return Err(format!("index out of range in `{path}`"));
            }
            list.insert(i, value);
            Ok(())
        }
        _ => Err(format!("no container at `{parent}`")),
    }
}

fn remove(target: &mut Value, path: &str) -> Result<Value, String> {
    let (parent, last) = split_pointer(path)?;
    match target.pointer_mut(&parent) {
        Some(Value::Object(map)) => map
            .remove(&last)
            .ok_or_else(|| format!("nothing at `{path}`")),
        Some(Value::Array(list)) => {
            let i: usize = last.parse().map_err(|_| format!("bad index in `{path}`"))?;
            if i >= list.len() {
                return Err(format!("index out of range in `{path}`"));
            }
            Ok(list.remove(i))
        }
        _ => Err(format!("no container at `{parent}`")),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn merge_patch_deletes_with_null_and_replaces_lists() {
        let mut t = json!({"a": 1, "b": {"c": 2, "d": 3}, "l": [1, 2]});
        merge(&mut t, &json!({"a": null, "b": {"c": 5}, "l": [3]}));
        assert_eq!(t, json!({"b": {"c": 5, "d": 3}, "l": [3]}));
    }

    #[test]
    fn strategic_merge_of_service_ports_by_port() {
        let mut svc = json!({"spec": {"clusterIP": "10.96.0.10", "ports": [
            {"name": "http", "port": 80, "targetPort": 8080},
            {"name": "dns", "port": 53, "protocol": "UDP"}]}});
        // What kubectl apply sends when the http targetPort changes and dns goes.
        let patch = json!({"spec": {
            "$setElementOrder/ports": [{"port": 80}],
            "ports": [{"port": 80, "targetPort": 9090}, {"port": 53, "$patch": "delete"}]}});
        strategic("Service", &mut svc, &patch).unwrap();
        assert_eq!(
            svc,
            json!({"spec": {"clusterIP": "10.96.0.10", "ports": [
            {"name": "http", "port": 80, "targetPort": 9090}]}})
        );
    }

    #[test]
    fn strategic_directives() {
        let mut pod = json!({"metadata": {"finalizers": ["a", "b"], "labels": {"x": "1"}},
            "status": {"conditions": [{"type": "Ready", "status": "False"}]}});
        let patch = json!({
            "metadata": {"$deleteFromPrimitiveList/finalizers": ["a"], "finalizers": ["c"], "labels": {"$patch": "replace", "y": "2"}},
            "status": {"conditions": [{"type": "Ready", "status": "True"}, {"type": "Initialized", "status": "True"}]}});
        strategic("Pod", &mut pod, &patch).unwrap();
        assert_eq!(pod["metadata"]["finalizers"], json!(["b", "c"]));
        assert_eq!(pod["metadata"]["labels"], json!({"y": "2"}));
        assert_eq!(pod["status"]["conditions"][0]["status"], "True");
        assert_eq!(pod["status"]["conditions"].as_array().unwrap().len(), 2);
        // An atomic list (EndpointSlice endpoints) is replaced.
        let mut slice =
            json!({"endpoints": [{"addresses": ["10.0.0.1"]}, {"addresses": ["10.0.0.2"]}]});
        strategic(
            "EndpointSlice",
            &mut slice,
            &json!({"endpoints": [{"addresses": ["10.0.0.3"]}]}),
        )
        .unwrap();
        assert_eq!(slice["endpoints"].as_array().unwrap().len(), 1);
        let mut cm = json!({"data": {"a": "1", "b": "2"}});
        strategic(
            "ConfigMap",
            &mut cm,
            &json!({"data": {"$retainKeys": ["a"], "a": "3"}}),
        )
        .unwrap();
        assert_eq!(cm, json!({"data": {"a": "3"}}));
    }

    #[test]
    fn json_patch_operations() {
        let mut t = json!({"metadata": {"labels": {"a": "1"}}, "list": [1, 2]});
        json_patch(
            &mut t,
            &json!([
                {"op": "add", "path": "/metadata/labels/b~1c", "value": "2"},
                {"op": "remove", "path": "/metadata/labels/a"},
                {"op": "replace", "path": "/list/0", "value": 9},
                {"op": "add", "path": "/list/-", "value": 3},
                {"op": "test", "path": "/list/1", "value": 2},
            ]),
        )
        .unwrap();
        assert_eq!(
            t,
            json!({"metadata": {"labels": {"b/c": "2"}}, "list": [9, 2, 3]})
        );
        assert!(
            json_patch(
                &mut t,
                &json!([{"op": "test", "path": "/list/0", "value": 1}])
            )
            .is_err()
        );
    }
}
