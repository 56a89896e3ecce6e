//! The resource types this server serves, as discovery describes them.

use serde_json::Value;

#[derive(Debug)]
pub struct ResourceType {
    /// API group; "" for core.
    pub group: &'static str,
    pub version: &'static str,
    pub plural: &'static str,
    pub singular: &'static str,
    pub kind: &'static str,
    pub namespaced: bool,
    pub short_names: &'static [&'static str],
    pub verbs: &'static [&'static str],
    pub subresources: &'static [&'static str],
    /// Round-trips an object through its typed model: fields that do not
    /// survive are unknown (strict field validation).
    pub typed: fn(&Value) -> Result<Value, String>,
}

const CRUD: &[&str] = &[
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];
const CREATE_ONLY: &[&str] = &["create"];

fn typed<T: serde::de::DeserializeOwned + serde::Serialize>(v: &Value) -> Result<Value, String> {
    let t: T = serde_json::from_value(v.clone()).map_err(|e| e.to_string())?;
    serde_json::to_value(t).map_err(|e| e.to_string())
}

macro_rules! resource {
    ($group:literal, $plural:literal, $singular:literal, $kind:literal, $ns:literal, [$($short:literal),*], $verbs:expr, [$($sub:literal),*], $ty:ty) => {
        ResourceType {
            group: $group,
            version: "v1",
            plural: $plural,
            singular: $singular,
            kind: $kind,
            namespaced: $ns,
            short_names: &[$($short),*],
            verbs: $verbs,
            subresources: &[$($sub),*],
            typed: typed::<$ty>,
        }
    };
}

use k8s_openapi::api::{
    apps::v1 as apps, authentication::v1 as authn, authorization::v1 as authz,
    certificates::v1 as certs, core::v1 as core, discovery::v1 as discovery, rbac::v1 as rbac,
};

#[rustfmt::skip]
pub static RESOURCES: &[ResourceType] = &[
    resource!("", "namespaces", "namespace", "Namespace", false, ["ns"], &["create", "delete", "get", "list", "patch", "update", "watch"], ["status"], core::Namespace),
    resource!("", "services", "service", "Service", true, ["svc"], CRUD, ["status"], core::Service),
    resource!("", "secrets", "secret", "Secret", true, [], CRUD, [], core::Secret),
    resource!("", "serviceaccounts", "serviceaccount", "ServiceAccount", true, ["sa"], CRUD, ["token"], core::ServiceAccount),
    resource!("", "configmaps", "configmap", "ConfigMap", true, ["cm"], CRUD, [], core::ConfigMap),
    resource!("", "nodes", "node", "Node", false, ["no"], CRUD, ["status"], core::Node),
    resource!("", "pods", "pod", "Pod", true, ["po"], CRUD, ["status"], core::Pod),
    resource!("", "events", "event", "Event", true, ["ev"], CRUD, [], core::Event),
    resource!("discovery.k8s.io", "endpointslices", "endpointslice", "EndpointSlice", true, [], CRUD, [], discovery::EndpointSlice),
    resource!("certificates.k8s.io", "certificatesigningrequests", "certificatesigningrequest", "CertificateSigningRequest", false, ["csr"], CRUD, ["approval", "status"], certs::CertificateSigningRequest),
    resource!("rbac.authorization.k8s.io", "roles", "role", "Role", true, [], CRUD, [], rbac::Role),
    resource!("rbac.authorization.k8s.io", "rolebindings", "rolebinding", "RoleBinding", true, [], CRUD, [], rbac::RoleBinding),
    resource!("rbac.authorization.k8s.io", "clusterroles", "clusterrole", "ClusterRole", false, [], CRUD, [], rbac::ClusterRole),
    resource!("rbac.authorization.k8s.io", "clusterrolebindings", "clusterrolebinding", "ClusterRoleBinding", false, [], CRUD, [], rbac::ClusterRoleBinding),
    resource!("authorization.k8s.io", "selfsubjectaccessreviews", "selfsubjectaccessreview", "SelfSubjectAccessReview", false, [], CREATE_ONLY, [], authz::SelfSubjectAccessReview),
    resource!("authorization.k8s.io", "subjectaccessreviews", "subjectaccessreview", "SubjectAccessReview", false, [], CREATE_ONLY, [], authz::SubjectAccessReview),
    resource!("apps", "daemonsets", "daemonset", "DaemonSet", true, ["ds"], CRUD, ["status"], apps::DaemonSet),
    resource!("authentication.k8s.io", "selfsubjectreviews", "selfsubjectreview", "SelfSubjectReview", false, [], CREATE_ONLY, [], authn::SelfSubjectReview),
    resource!("authentication.k8s.io", "tokenreviews", "tokenreview", "TokenReview", false, [], CREATE_ONLY, [], authn::TokenReview),
];

impl ResourceType {
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_owned()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// Prefix of this resource's keys in the store.
    pub fn key_prefix(&self) -> String {
        let group = if self.group.is_empty() {
            "core"
        } else {
            self.group
        };
        format!("{group}/{}", self.plural)
    }

    /// Create-only "review" resources are answered, never stored.
    pub fn is_review(&self) -> bool {
        self.verbs == CREATE_ONLY
    }
}

pub fn find(group: &str, version: &str, plural: &str) -> Option<&'static ResourceType> {
    RESOURCES
        .iter()
        .find(|r| r.group == group && r.version == version && r.plural == plural)
}

/// API groups other than core, in discovery order.
pub fn groups() -> Vec<&'static str> {
    let mut groups: Vec<&str> = RESOURCES
        .iter()
        .map(|r| r.group)
        .filter(|g| !g.is_empty())
        .collect();
    groups.dedup();
    groups
}
