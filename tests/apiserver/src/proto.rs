//! Kubernetes protobuf request bodies, read into their JSON form.
//!
//! kubectl's typed clients (`kubectl create clusterrolebinding`, `kubectl
//! certificate approve`, `kubectl auth can-i`, …) send
//! `application/vnd.kubernetes.protobuf` and do not fall back to JSON. The
//! body is the `k8s\0` magic and a `runtime.Unknown` envelope whose `raw`
//! field holds the object; the field tables in `schema.rs` are generated
//! from k8s-pb (tags) and k8s-openapi (JSON names).

// Kept as generated (`cargo xtask gen-proto`), not reformatted.
#[rustfmt::skip]
mod schema;

use base64::Engine as _;
use serde_json::{Map, Value, json};

pub struct Msg {
    pub name: &'static str,
    pub fields: &'static [Field],
}

pub struct Field {
    pub tag: u32,
    pub json: &'static str,
    pub kind: Kind,
    pub repeated: bool,
}

#[expect(
    dead_code,
    reason = "the engine reads any field type; the generated tables use a subset"
)]
pub enum Kind {
    Str,
    Bytes,
    Bool,
    Int32,
    Int64,
    Double,
    Msg(&'static Msg),
    /// A Go embedded struct: its fields go into the parent object.
    Inline(&'static Msg),
    Special(Special),
    MapStr,
    MapBytes,
    MapMsg(&'static Msg),
    MapSpecial(Special),
}

/// Messages whose JSON form differs from their fields.
#[derive(Clone, Copy)]
#[expect(
    dead_code,
    reason = "the engine reads any field type; the generated tables use a subset"
)]
pub enum Special {
    Time,
    MicroTime,
    IntOrString,
    Quantity,
    /// RawExtension and FieldsV1: JSON bytes.
    Raw,
    Duration,
    StringList,
}

const MAGIC: &[u8] = b"k8s\x00";

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn varint(&mut self) -> Result<u64, String> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = *self.buf.get(self.pos).ok_or("truncated varint")?;
            self.pos += 1;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err("varint too long".into())
    }

    fn bytes(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|e| *e <= self.buf.len())
            .ok_or("truncated field")?;
        let out = self.buf.get(self.pos..end).ok_or("truncated field")?;
        self.pos = end;
        Ok(out)
    }

    fn done(&self) -> bool {
        self.pos >= self.buf.len()
    }
}

/// One field's raw value.
enum Raw<'a> {
    Varint(u64),
    Fixed64(u64),
    Fixed32,
    Len(&'a [u8]),
}

fn fields(buf: &[u8]) -> Result<Vec<(u32, Raw<'_>)>, String> {
    let mut r = Reader { buf, pos: 0 };
    let mut out = Vec::new();
    while !r.done() {
        let key = r.varint()?;
        let tag = u32::try_from(key >> 3).map_err(|_| "bad tag")?;
        let raw = match key & 7 {
            0 => Raw::Varint(r.varint()?),
            1 => Raw::Fixed64(u64::from_le_bytes(
                r.bytes(8)?.try_into().map_err(|_| "bad fixed64")?,
            )),
            2 => {
                let n = usize::try_from(r.varint()?).map_err(|_| "bad length")?;
                Raw::Len(r.bytes(n)?)
            }
            5 => {
                r.bytes(4)?;
                Raw::Fixed32
            }
            w => return Err(format!("unsupported wire type {w}")),
        };
        out.push((tag, raw));
    }
    Ok(out)
}

fn utf8(b: &[u8]) -> Result<String, String> {
    String::from_utf8(b.to_vec()).map_err(|_| "invalid UTF-8".to_owned())
}

fn varint_of(raw: &Raw<'_>) -> Option<u64> {
    if let Raw::Varint(v) = raw {
        Some(*v)
    } else {
        None
    }
}

/// Decodes one message into a JSON object.
fn message(msg: &Msg, buf: &[u8]) -> Result<Map<String, Value>, String> {
    let mut out = Map::new();
    for (tag, raw) in fields(buf)? {
        // Fields newer than the tables are skipped, as unknown JSON fields would be.
        let Some(field) = msg.fields.iter().find(|f| f.tag == tag) else {
            continue;
        };
        match (&field.kind, &raw) {
            (Kind::Inline(inner), Raw::Len(b)) => {
                out.extend(message(inner, b)?);
                continue;
            }
            (
                Kind::MapStr | Kind::MapBytes | Kind::MapMsg(_) | Kind::MapSpecial(_),
                Raw::Len(b),
            ) => {
                let (k, v) = map_entry(&field.kind, b)?;
                let slot = out
                    .entry(field.json)
                    .or_insert_with(|| Value::Object(Map::new()));
                if let Value::Object(m) = slot {
                    m.insert(k, v);
                }
                continue;
            }
            _ => {}
        }
        let values = match (&field.kind, raw) {
            // Packed repeated scalars (proto3 style); Kubernetes uses unpacked.
            (Kind::Int32 | Kind::Int64 | Kind::Bool, Raw::Len(b)) if field.repeated => {
                let mut r = Reader { buf: b, pos: 0 };
                let mut vs = Vec::new();
                while !r.done() {
                    vs.push(scalar(&field.kind, &Raw::Varint(r.varint()?))?);
                }
                vs
            }
            (kind, raw) => vec![value(kind, &raw)?],
        };
        if field.repeated {
            let slot = out
                .entry(field.json)
                .or_insert_with(|| Value::Array(Vec::new()));
            if let Value::Array(list) = slot {
                list.extend(values);
            }
        } else if let Some(v) = values.into_iter().next() {
            // Go writes unset optional strings as "" and zero times; their
            // JSON omits them.
            if !(v.is_null() || matches!(field.kind, Kind::Str) && v == "") {
                out.insert(field.json.to_owned(), v);
            }
        }
    }
    Ok(out)
}

fn scalar(kind: &Kind, raw: &Raw<'_>) -> Result<Value, String> {
    let v = varint_of(raw).ok_or("expected a varint")?;
    Ok(match kind {
        Kind::Bool => json!(v != 0),
        // int32 negatives are sign-extended to 64 bits on the wire.
        #[expect(clippy::cast_possible_truncation, reason = "int32 on the wire")]
        Kind::Int32 => json!(v.cast_signed() as i32),
        #[expect(clippy::cast_possible_wrap, reason = "int64 on the wire")]
        Kind::Int64 => json!(v as i64),
        _ => return Err("unexpected varint".into()),
    })
}

fn value(kind: &Kind, raw: &Raw<'_>) -> Result<Value, String> {
    match (kind, raw) {
        (Kind::Str, Raw::Len(b)) => Ok(Value::String(utf8(b)?)),
        (Kind::Bytes, Raw::Len(b)) => Ok(Value::String(
            base64::engine::general_purpose::STANDARD.encode(b),
        )),
        (Kind::Bool | Kind::Int32 | Kind::Int64, Raw::Varint(_)) => scalar(kind, raw),
        (Kind::Double, Raw::Fixed64(bits)) => Ok(json!(f64::from_bits(*bits))),
        (Kind::Msg(m), Raw::Len(b)) => Ok(Value::Object(message(m, b)?)),
        (Kind::Special(s), Raw::Len(b)) => special(*s, b),
        (_, Raw::Fixed32) => Ok(Value::Null),
        _ => Err("field of an unexpected wire type".into()),
    }
}

fn map_entry(kind: &Kind, buf: &[u8]) -> Result<(String, Value), String> {
    let (mut key, mut val) = (String::new(), Value::Null);
    for (tag, raw) in fields(buf)? {
        match (tag, raw) {
            (1, Raw::Len(b)) => key = utf8(b)?,
            (2, raw) => {
                val = match kind {
                    Kind::MapStr => value(&Kind::Str, &raw)?,
                    Kind::MapBytes => value(&Kind::Bytes, &raw)?,
                    Kind::MapMsg(m) => value(&Kind::Msg(m), &raw)?,
                    Kind::MapSpecial(s) => value(&Kind::Special(*s), &raw)?,
                    _ => return Err("not a map".into()),
                };
            }
            _ => {}
        }
    }
    if val.is_null() {
        val = match kind {
            Kind::MapStr | Kind::MapBytes => json!(""),
            Kind::MapSpecial(Special::StringList) => json!([]),
            _ => json!({}),
        };
    }
    Ok((key, val))
}

fn special(s: Special, buf: &[u8]) -> Result<Value, String> {
    let f = fields(buf)?;
    let int = |tag: u32| {
        f.iter()
            .find(|(t, _)| *t == tag)
            .and_then(|(_, r)| varint_of(r))
            .unwrap_or(0)
    };
    let bytes = |tag: u32| {
        f.iter().find_map(|(t, r)| {
            if let (true, Raw::Len(b)) = (*t == tag, r) {
                Some(*b)
            } else {
                None
            }
        })
    };
    #[expect(
        clippy::cast_possible_wrap,
        clippy::cast_possible_truncation,
        reason = "protobuf integers"
    )]
    Ok(match s {
        // The zero time is JSON null in Go (and then omitted).
        Special::Time | Special::MicroTime if int(1) == 0 && int(2) == 0 => Value::Null,
        Special::Time | Special::MicroTime => {
            let t = time::OffsetDateTime::from_unix_timestamp(int(1) as i64)
                .map_err(|e| e.to_string())?;
            let t = if matches!(s, Special::MicroTime) {
                t + time::Duration::nanoseconds(i64::from(int(2) as i32))
            } else {
                t
            };
            json!(
                t.format(&time::format_description::well_known::Rfc3339)
                    .map_err(|e| e.to_string())?
            )
        }
        Special::IntOrString => {
            if int(1) == 1 {
                json!(utf8(bytes(3).unwrap_or_default())?)
            } else {
                json!(int(2) as i32)
            }
        }
        Special::Quantity => json!(utf8(bytes(1).unwrap_or_default())?),
        Special::Raw => match bytes(1) {
            Some(b) if !b.is_empty() => {
                serde_json::from_slice(b).map_err(|e| format!("embedded JSON: {e}"))?
            }
            _ => Value::Null,
        },
        Special::Duration => json!(format!("{}s", int(1) as i64 / 1_000_000_000)),
        Special::StringList => {
            let items: Result<Vec<String>, String> = f
                .iter()
                .filter(|(t, _)| *t == 1)
                .map(|(_, r)| {
                    if let Raw::Len(b) = r {
                        utf8(b)
                    } else {
                        Err("bad item".into())
                    }
                })
                .collect();
            json!(items?)
        }
    })
}

/// Reads a `application/vnd.kubernetes.protobuf` body into JSON.
pub fn decode(body: &[u8]) -> Result<Value, String> {
    let envelope = body
        .strip_prefix(MAGIC)
        .ok_or("the protobuf body lacks the k8s magic")?;
    let (mut api_version, mut kind, mut raw) = (String::new(), String::new(), &[][..]);
    for (tag, r) in fields(envelope)? {
        match (tag, r) {
            (1, Raw::Len(type_meta)) => {
                for (t, r) in fields(type_meta)? {
                    match (t, r) {
                        (1, Raw::Len(b)) => api_version = utf8(b)?,
                        (2, Raw::Len(b)) => kind = utf8(b)?,
                        _ => {}
                    }
                }
            }
            (2, Raw::Len(b)) => raw = b,
            _ => {}
        }
    }
    let root = schema::ROOTS
        .iter()
        .find(|(a, k, _)| *a == api_version && *k == kind)
        .map(|(_, _, m)| *m)
        .ok_or_else(|| {
            format!("protobuf bodies of {api_version} {kind} are not supported; send JSON")
        })?;
    let mut obj = message(root, raw).map_err(|e| format!("{}: {e}", root.name))?;
    obj.insert("apiVersion".into(), json!(api_version));
    obj.insert("kind".into(), json!(kind));
    Ok(Value::Object(obj))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn varint(mut v: u64, out: &mut Vec<u8>) {
        loop {
            let byte = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                out.push(byte);
                return;
            }
            out.push(byte | 0x80);
        }
    }

    fn len(tag: u32, bytes: &[u8], out: &mut Vec<u8>) {
        varint(u64::from(tag) << 3 | 2, out);
        varint(bytes.len() as u64, out);
        out.extend_from_slice(bytes);
    }

    #[test]
    fn a_cluster_role_binding_as_kubectl_sends_it() {
        // metadata{name}, subjects[{kind, apiGroup, name}], roleRef{apiGroup, kind, name}
        let mut meta = Vec::new();
        len(1, b"kubelet-bootstrap", &mut meta);
        let mut subject = Vec::new();
        len(1, b"User", &mut subject);
        len(2, b"rbac.authorization.k8s.io", &mut subject);
        len(3, b"kubelet-bootstrap", &mut subject);
        let mut role_ref = Vec::new();
        len(1, b"rbac.authorization.k8s.io", &mut role_ref);
        len(2, b"ClusterRole", &mut role_ref);
        len(3, b"system:node-bootstrapper", &mut role_ref);
        let mut crb = Vec::new();
        len(1, &meta, &mut crb);
        len(2, &subject, &mut crb);
        len(3, &role_ref, &mut crb);
        let mut type_meta = Vec::new();
        len(1, b"rbac.authorization.k8s.io/v1", &mut type_meta);
        len(2, b"ClusterRoleBinding", &mut type_meta);
        let mut body = MAGIC.to_vec();
        len(1, &type_meta, &mut body);
        len(2, &crb, &mut body);
        let obj = decode(&body).unwrap();
        assert_eq!(obj["kind"], "ClusterRoleBinding");
        assert_eq!(obj["metadata"]["name"], "kubelet-bootstrap");
        assert_eq!(
            obj["subjects"][0],
            json!({"kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": "kubelet-bootstrap"})
        );
        assert_eq!(obj["roleRef"]["name"], "system:node-bootstrapper");
    }

    #[test]
    fn special_types_and_maps() {
        // Service: metadata{labels{a: b}, creationTimestamp}, spec{ports[{port, targetPort: "http"}], clusterIP}
        let mut label = Vec::new();
        len(1, b"a", &mut label);
        len(2, b"b", &mut label);
        let mut ts = Vec::new();
        varint(1 << 3, &mut ts);
        varint(1_700_000_000, &mut ts);
        let mut meta = Vec::new();
        len(11, &label, &mut meta);
        len(8, &ts, &mut meta);
        let mut target = Vec::new();
        varint(1 << 3, &mut target);
        varint(1, &mut target);
        len(3, b"http", &mut target);
        let mut port = Vec::new();
        varint(3 << 3, &mut port);
        varint(80, &mut port);
        len(4, &target, &mut port);
        let mut spec = Vec::new();
        len(1, &port, &mut spec);
        len(3, b"10.96.0.10", &mut spec);
        let mut svc = Vec::new();
        len(1, &meta, &mut svc);
        len(2, &spec, &mut svc);
        let mut type_meta = Vec::new();
        len(1, b"v1", &mut type_meta);
        len(2, b"Service", &mut type_meta);
        let mut body = MAGIC.to_vec();
        len(1, &type_meta, &mut body);
        len(2, &svc, &mut body);
        let obj = decode(&body).unwrap();
        assert_eq!(obj["metadata"]["labels"], json!({"a": "b"}));
        assert_eq!(obj["metadata"]["creationTimestamp"], "2023-11-14T22:13:20Z");
        assert_eq!(
            obj["spec"]["ports"][0],
            json!({"port": 80, "targetPort": "http"})
        );
        assert_eq!(obj["spec"]["clusterIP"], "10.96.0.10");
        assert!(decode(b"{}").is_err());
    }
}
