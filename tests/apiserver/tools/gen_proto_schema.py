#!/usr/bin/env python3
"""Generates src/proto/schema.rs: the protobuf field tables of the Kubernetes
types the server accepts, so that it can read the protobuf bodies kubectl's
typed clients send (`kubectl create clusterrolebinding`, `certificate
approve`, `auth can-i`, ...).

Tags and field types come from k8s-pb (prost code generated from the
Kubernetes .proto files); JSON field names from k8s-openapi (generated from
the OpenAPI spec). `cargo xtask gen-proto` fetches both into cargo's registry
and runs this with their source directories in K8S_PB_SRC and
K8S_OPENAPI_SRC (its v1_33 module); `cargo xtask gen-proto --check`, run by
`cargo xtask test`, fails when the committed file differs. The output is
kept as written (`#[rustfmt::skip]` on the module).
"""
import glob
import os
import re
import sys

PB = os.environ["K8S_PB_SRC"]
OPENAPI = os.environ["K8S_OPENAPI_SRC"]

# (apiVersion, kind, k8s-pb message) of every body the server decodes.
ROOTS = [
    ("v1", "Namespace", "api.core.v1.Namespace"),
    ("v1", "Service", "api.core.v1.Service"),
    ("v1", "Secret", "api.core.v1.Secret"),
    ("v1", "ServiceAccount", "api.core.v1.ServiceAccount"),
    ("v1", "ConfigMap", "api.core.v1.ConfigMap"),
    ("v1", "Node", "api.core.v1.Node"),
    ("v1", "Pod", "api.core.v1.Pod"),
    ("v1", "Event", "api.core.v1.Event"),
    ("apps/v1", "DaemonSet", "api.apps.v1.DaemonSet"),
    ("discovery.k8s.io/v1", "EndpointSlice", "api.discovery.v1.EndpointSlice"),
    ("certificates.k8s.io/v1", "CertificateSigningRequest", "api.certificates.v1.CertificateSigningRequest"),
    ("rbac.authorization.k8s.io/v1", "Role", "api.rbac.v1.Role"),
    ("rbac.authorization.k8s.io/v1", "RoleBinding", "api.rbac.v1.RoleBinding"),
    ("rbac.authorization.k8s.io/v1", "ClusterRole", "api.rbac.v1.ClusterRole"),
    ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding", "api.rbac.v1.ClusterRoleBinding"),
    ("authorization.k8s.io/v1", "SelfSubjectAccessReview", "api.authorization.v1.SelfSubjectAccessReview"),
    ("authorization.k8s.io/v1", "SubjectAccessReview", "api.authorization.v1.SubjectAccessReview"),
    ("authentication.k8s.io/v1", "TokenRequest", "api.authentication.v1.TokenRequest"),
    ("authentication.k8s.io/v1", "SelfSubjectReview", "api.authentication.v1.SelfSubjectReview"),
    ("meta.k8s.io/v1", "DeleteOptions", "apimachinery.pkg.apis.meta.v1.DeleteOptions"),
    ("v1", "DeleteOptions", "apimachinery.pkg.apis.meta.v1.DeleteOptions"),
]

# Messages whose JSON form is not their field structure.
SPECIAL = {
    "apimachinery.pkg.apis.meta.v1.Time": "Time",
    "apimachinery.pkg.apis.meta.v1.MicroTime": "MicroTime",
    "apimachinery.pkg.util.intstr.IntOrString": "IntOrString",
    "apimachinery.pkg.api.resource.Quantity": "Quantity",
    "apimachinery.pkg.runtime.RawExtension": "Raw",
    "apimachinery.pkg.apis.meta.v1.FieldsV1": "Raw",
    "apimachinery.pkg.apis.meta.v1.Duration": "Duration",
    "api.authentication.v1.ExtraValue": "StringList",
    "api.authorization.v1.ExtraValue": "StringList",
    "api.certificates.v1.ExtraValue": "StringList",
}

# Proto fields that are Go embedded structs, inlined in the JSON form.
EMBEDDED = {"localObjectReference", "handler", "volumeSource", "ephemeralContainerCommon", "persistentVolumeSource"}

# Raw identifiers (`r#type`) are fields too.
ATTR_RE = re.compile(r"#\[prost\(([^\]]*)\)\]\s*pub ((?:r#)?\w+):")


def fields_of(body):
    """(attributes, field, type) of each prost field; a type ends at the
    first comma outside angle brackets."""
    out = []
    for m in ATTR_RE.finditer(body):
        depth, i = 0, m.end()
        while i < len(body):
            c = body[i]
            if c == "<":
                depth += 1
            elif c == ">":
                depth -= 1
            elif c == "," and depth == 0:
                break
            i += 1
        ty = re.sub(r"\s+", "", body[m.end():i]).replace(",>", ">")
        out.append((m.group(1), m.group(2), ty))
    return out


def parse_pb():
    messages = {}
    for path in glob.glob(os.path.join(PB, "**/mod.rs"), recursive=True):
        module = os.path.relpath(os.path.dirname(path), PB).replace(os.sep, ".")
        text = open(path).read()
        for m in re.finditer(r"pub struct (\w+) \{(.*?)\n\}", text, re.S):
            name, body = m.group(1), m.group(2)
            messages[f"{module}.{name}"] = (module, fields_of(body))
    return messages


def resolve(module, ty):
    """The full name of a message type expression inside `module`."""
    inner = re.sub(r"^::core::option::Option<(.*)>$", r"\1", ty)
    inner = re.sub(r"^::prost::alloc::vec::Vec<(.*)>$", r"\1", inner)
    m = re.match(r"^::prost::alloc::collections::BTreeMap<[^,]*,(.*)>$", inner)
    if m:
        inner = m.group(1)
    parts = module.split(".")
    segs = inner.split("::")
    while segs and segs[0] == "super":
        parts.pop()
        segs.pop(0)
    return ".".join(parts + segs)


def openapi_names():
    """JSON names per (module, struct): {rust_field: json_name}."""
    names = {}
    for path in glob.glob(os.path.join(OPENAPI, "**/*.rs"), recursive=True):
        rel = os.path.relpath(os.path.dirname(path), OPENAPI).replace(os.sep, ".")
        text = open(path).read()
        for s in re.finditer(r"pub struct (\w+)\b", text):
            mapping = dict((rust, js) for js, rust in re.findall(r'"(\w+)" => Field::Key_(\w+)', text))
            # k8s-pb spells acronyms as words (PodIp for PodIP): match case-blind.
            names[f"{rel}.{s.group(1)}".lower()] = mapping
    return names


def camel(snake):
    head, *rest = snake.split("_")
    return head + "".join(p.capitalize() for p in rest)


def const_name(full):
    return re.sub(r"[^A-Za-z0-9]", "_", full).upper()


def main():
    pb = parse_pb()
    json_names = openapi_names()
    todo = [r[2] for r in ROOTS]
    done = {}
    while todo:
        full = todo.pop()
        if full in done or full in SPECIAL:
            continue
        module, fields = pb[full]
        out = []
        for attrs, field, ty in fields:
            tag = int(re.search(r'tag = "(\d+)"', attrs).group(1))
            repeated = "repeated" in attrs
            field = field.removeprefix("r#")
            known = json_names.get(full.lower())
            json_name = (known or {}).get(field) or camel(field)
            kind_word = attrs.split(",")[0].strip()
            # A Go embedded struct (Probe's ProbeHandler, Volume's
            # VolumeSource) is a field in the proto but inlined in JSON.
            inline = camel(field) in EMBEDDED and known is not None and field not in known
            if kind_word.startswith("btree_map") or kind_word.startswith("map"):
                value = re.search(r'map = "string, (\w+)"', attrs).group(1)
                if value == "message":
                    target = resolve(module, ty)
                    todo.append(target)
                    kind = f"Kind::MapMsg(&{const_name(target)})" if target not in SPECIAL else f"Kind::MapSpecial(Special::{SPECIAL[target]})"
                else:
                    kind = {"string": "Kind::MapStr", "bytes": "Kind::MapBytes"}[value]
            elif kind_word == "message":
                target = resolve(module, ty)
                if target in SPECIAL:
                    kind = f"Kind::Special(Special::{SPECIAL[target]})"
                else:
                    todo.append(target)
                    kind = f"Kind::{'Inline' if inline else 'Msg'}(&{const_name(target)})"
            elif kind_word.startswith("bytes"):
                kind = "Kind::Bytes"
            else:
                kind = {"string": "Kind::Str", "bool": "Kind::Bool", "int32": "Kind::Int32",
                        "int64": "Kind::Int64", "double": "Kind::Double"}[kind_word]
            out.append((tag, json_name, kind, repeated))
        done[full] = out

    print("// @generated by tests/apiserver/tools/gen_proto_schema.py from k8s-pb 0.9.0 (tags)")
    print("// and k8s-openapi 0.29.0 v1_33 (JSON names). Do not edit: `cargo xtask gen-proto`.")
    print("#![allow(clippy::unreadable_literal, reason = \"generated\")]\n")
    print("use super::{Field, Kind, Msg, Special};\n")
    for full in sorted(done):
        print(f"pub static {const_name(full)}: Msg = Msg {{")
        print(f"    name: \"{full}\",")
        print("    fields: &[")
        for tag, js, kind, rep in done[full]:
            print(f"        Field {{ tag: {tag}, json: \"{js}\", kind: {kind}, repeated: {'true' if rep else 'false'} }},")
        print("    ],")
        print("};\n")
    print("/// (apiVersion, kind) of each body the server decodes, and its message.")
    print("pub static ROOTS: &[(&str, &str, &Msg)] = &[")
    for api, kind, full in ROOTS:
        print(f"    (\"{api}\", \"{kind}\", &{const_name(full)}),")
    print("];")


if __name__ == "__main__":
    sys.exit(main())
