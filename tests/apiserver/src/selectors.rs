//! Label and field selectors, as list and watch take them.

use std::collections::BTreeSet;

use serde_json::Value;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Op {
    Exists,
    NotExists,
    Eq(String),
    NotEq(String),
    In(BTreeSet<String>),
    NotIn(BTreeSet<String>),
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selector {
    requirements: Vec<(String, Op)>,
}

/// Splits on commas outside parentheses.
fn split_top(s: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0i32, 0);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&s[start..]);
    parts
        .into_iter()
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .collect()
}

fn set(list: &str) -> Result<BTreeSet<String>, String> {
    let inner = list
        .trim()
        .strip_prefix('(')
        .and_then(|l| l.strip_suffix(')'))
        .ok_or_else(|| format!("expected a (list), got `{list}`"))?;
    Ok(inner
        .split(',')
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
        .collect())
}

impl Selector {
    /// A label selector (`a=b,c!=d,e in (f,g),!h,i`).
    pub fn labels(s: &str) -> Result<Self, String> {
        let mut requirements = Vec::new();
        for part in split_top(s) {
            let req = if let Some(key) = part.strip_prefix('!') {
                (key.trim().to_owned(), Op::NotExists)
            } else if let Some((k, v)) = part.split_once("!=") {
                (k.trim().to_owned(), Op::NotEq(v.trim().to_owned()))
            } else if let Some((k, v)) = part.split_once("==").or_else(|| part.split_once('=')) {
                (k.trim().to_owned(), Op::Eq(v.trim().to_owned()))
            } else if let Some((k, v)) = part.split_once(" notin ") {
                (k.trim().to_owned(), Op::NotIn(set(v)?))
            } else if let Some((k, v)) = part.split_once(" in ") {
                (k.trim().to_owned(), Op::In(set(v)?))
            } else if part
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c))
            {
                (part.to_owned(), Op::Exists)
            } else {
                return Err(format!("unable to parse requirement `{part}`"));
            };
            requirements.push(req);
        }
        Ok(Self { requirements })
    }

    /// A field selector (`metadata.name=x,spec.signerName!=y`).
    pub fn fields(s: &str) -> Result<Self, String> {
        let mut requirements = Vec::new();
        for part in split_top(s) {
            let req = if let Some((k, v)) = part.split_once("!=") {
                (k.trim().to_owned(), Op::NotEq(v.trim().to_owned()))
            } else if let Some((k, v)) = part.split_once("==").or_else(|| part.split_once('=')) {
                (k.trim().to_owned(), Op::Eq(v.trim().to_owned()))
            } else {
                return Err(format!("invalid field selector `{part}`"));
            };
            requirements.push(req);
        }
        Ok(Self { requirements })
    }

    /// Matches against a lookup of keys (labels, or field paths).
    fn matches_with(&self, get: impl Fn(&str) -> Option<String>) -> bool {
        self.requirements.iter().all(|(key, op)| {
            let value = get(key);
            match op {
                Op::Exists => value.is_some(),
                Op::NotExists => value.is_none(),
                Op::Eq(v) => value.as_deref() == Some(v.as_str()),
                Op::NotEq(v) => value.as_deref() != Some(v.as_str()),
                Op::In(set) => value.is_some_and(|v| set.contains(&v)),
                Op::NotIn(set) => value.is_none_or(|v| !set.contains(&v)),
            }
        })
    }

    pub fn matches_labels(&self, obj: &Value) -> bool {
        let labels = obj.pointer("/metadata/labels");
        self.matches_with(|k| {
            labels
                .and_then(|l| l.get(k))
                .and_then(Value::as_str)
                .map(str::to_owned)
        })
    }

    /// Fields are dotted paths into the object, compared as strings; a
    /// missing field is the empty string (as `metadata.namespace` of a
    /// cluster-scoped object).
    pub fn matches_fields(&self, obj: &Value) -> bool {
        self.matches_with(|path| {
            let pointer = format!("/{}", path.replace('.', "/"));
            Some(match obj.pointer(&pointer) {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Null) | None => String::new(),
                Some(other) => other.to_string(),
            })
        })
    }

    /// Matches a map of labels (a Service selector against Pod labels).
    pub fn from_map(map: &serde_json::Map<String, Value>) -> Self {
        let requirements = map
            .iter()
            .map(|(k, v)| (k.clone(), Op::Eq(v.as_str().unwrap_or_default().to_owned())))
            .collect();
        Self { requirements }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn label_selectors() {
        let obj = json!({"metadata": {"labels": {"app": "web", "tier": "front"}}});
        let yes = [
            "app=web",
            "app==web,tier",
            "tier in (front, back)",
            "app notin (db)",
            "!missing",
            "app!=db",
            "",
        ];
        for s in yes {
            assert!(Selector::labels(s).unwrap().matches_labels(&obj), "{s}");
        }
        for s in [
            "app=db",
            "missing",
            "tier in (back)",
            "!app",
            "app,tier notin (front)",
        ] {
            assert!(!Selector::labels(s).unwrap().matches_labels(&obj), "{s}");
        }
        assert!(Selector::labels("a b c").is_err());
    }

    #[test]
    fn field_selectors() {
        let obj = json!({"metadata": {"name": "x", "namespace": "ns"}, "spec": {"signerName": "kubernetes.io/kubelet-serving"}});
        assert!(
            Selector::fields("metadata.name=x,metadata.namespace==ns")
                .unwrap()
                .matches_fields(&obj)
        );
        assert!(
            Selector::fields("spec.signerName=kubernetes.io/kubelet-serving")
                .unwrap()
                .matches_fields(&obj)
        );
        assert!(
            !Selector::fields("metadata.name!=x")
                .unwrap()
                .matches_fields(&obj)
        );
        let cluster = json!({"metadata": {"name": "n"}});
        assert!(
            Selector::fields("metadata.namespace=")
                .unwrap()
                .matches_fields(&cluster)
        );
    }
}
