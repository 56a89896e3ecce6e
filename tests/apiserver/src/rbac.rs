//! RBAC authorization over the Roles and bindings in the store, with
//! `system:masters` as superuser; and the default policy created at start.

use serde_json::{Value, json};

use crate::{
    authn::{GROUP_MASTERS, UserInfo},
    store::Store,
};

/// What is being done, as RBAC rules see it.
#[derive(Debug, Clone, Default)]
pub struct Attributes {
    pub verb: String,
    /// Resource requests.
    pub group: String,
    pub resource: String,
    pub subresource: String,
    pub namespace: String,
    pub name: String,
    /// Non-resource requests (`resource` empty).
    pub path: String,
}

impl Attributes {
    pub fn resource(
        verb: &str,
        group: &str,
        resource: &str,
        subresource: &str,
        namespace: &str,
        name: &str,
    ) -> Self {
        Self {
            verb: verb.into(),
            group: group.into(),
            resource: resource.into(),
            subresource: subresource.into(),
            namespace: namespace.into(),
            name: name.into(),
            path: String::new(),
        }
    }

    pub fn non_resource(verb: &str, path: &str) -> Self {
        Self {
            verb: verb.into(),
            path: path.into(),
            ..Self::default()
        }
    }

    /// kube-apiserver's wording of a denial.
    pub fn forbidden_message(&self, user: &str) -> String {
        if self.resource.is_empty() {
            return format!(
                "forbidden: User \"{user}\" cannot {} path \"{}\"",
                self.verb, self.path
            );
        }
        let resource = if self.subresource.is_empty() {
            self.resource.clone()
        } else {
            format!("{}/{}", self.resource, self.subresource)
        };
        let scope = if self.namespace.is_empty() {
            "at the cluster scope".to_owned()
        } else {
            format!("in the namespace \"{}\"", self.namespace)
        };
        let named = if self.name.is_empty() {
            String::new()
        } else {
            format!(" \"{}\"", self.name)
        };
        format!(
            "{resource}{named} is forbidden: User \"{user}\" cannot {} resource \"{resource}\" in API group \"{}\" {scope}",
            self.verb, self.group
        )
    }
}

fn strings(v: &Value, key: &str) -> Vec<String> {
    v.get(key)
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

fn has(list: &[String], item: &str) -> bool {
    list.iter().any(|x| x == "*" || x == item)
}

fn rule_allows(rule: &Value, a: &Attributes) -> bool {
    if !has(&strings(rule, "verbs"), &a.verb) {
        return false;
    }
    if a.resource.is_empty() {
        return strings(rule, "nonResourceURLs").iter().any(|u| {
            u == "*"
                || *u == a.path
                || u.strip_suffix('*')
                    .is_some_and(|prefix| a.path.starts_with(prefix))
        });
    }
    let combined = if a.subresource.is_empty() {
        a.resource.clone()
    } else {
        format!("{}/{}", a.resource, a.subresource)
    };
    let resources = strings(rule, "resources");
    let resource_ok = resources.iter().any(|r| {
        r == "*"
            || *r == combined
            || (!a.subresource.is_empty() && *r == format!("*/{}", a.subresource))
    });
    let names = strings(rule, "resourceNames");
    resource_ok
        && has(&strings(rule, "apiGroups"), &a.group)
        && (names.is_empty() || names.contains(&a.name))
}

fn subject_matches(subject: &Value, user: &UserInfo, binding_namespace: &str) -> bool {
    let name = subject
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    match subject.get("kind").and_then(Value::as_str) {
        Some("User") => name == user.name,
        Some("Group") => user.in_group(name),
        Some("ServiceAccount") => {
            let ns = subject
                .get("namespace")
                .and_then(Value::as_str)
                .filter(|n| !n.is_empty())
                .unwrap_or(binding_namespace);
            user.name == format!("system:serviceaccount:{ns}:{name}")
        }
        _ => false,
    }
}

/// Whether `user` may do `a`, and why.
pub fn authorize(store: &Store, user: &UserInfo, a: &Attributes) -> (bool, String) {
    if user.in_group(GROUP_MASTERS) {
        return (true, String::new());
    }
    let role_allows = |kind: &str, name: &str, namespace: &str| -> bool {
        let key = if kind == "ClusterRole" {
            format!("rbac.authorization.k8s.io/clusterroles//{name}")
        } else {
            format!("rbac.authorization.k8s.io/roles/{namespace}/{name}")
        };
        store.get(&key).is_some_and(|role| {
            role.get("rules")
                .and_then(Value::as_array)
                .is_some_and(|rules| rules.iter().any(|r| rule_allows(r, a)))
        })
    };
    let bound = |binding: &Value, namespace: &str| {
        binding
            .get("subjects")
            .and_then(Value::as_array)
            .is_some_and(|s| s.iter().any(|s| subject_matches(s, user, namespace)))
    };
    let (cluster_bindings, _) = store.list("rbac.authorization.k8s.io/clusterrolebindings/");
    for b in &cluster_bindings {
        let role = b
            .pointer("/roleRef/name")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if bound(b, "") && role_allows("ClusterRole", role, "") {
            let name = b
                .pointer("/metadata/name")
                .and_then(Value::as_str)
                .unwrap_or_default();
            return (
                true,
                format!("RBAC: allowed by ClusterRoleBinding \"{name}\" of ClusterRole \"{role}\""),
            );
        }
    }
    if !a.namespace.is_empty() {
        let (bindings, _) = store.list(&format!(
            "rbac.authorization.k8s.io/rolebindings/{}/",
            a.namespace
        ));
        for b in &bindings {
            let kind = b
                .pointer("/roleRef/kind")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let role = b
                .pointer("/roleRef/name")
                .and_then(Value::as_str)
                .unwrap_or_default();
            if bound(b, &a.namespace) && role_allows(kind, role, &a.namespace) {
                let name = b
                    .pointer("/metadata/name")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                return (
                    true,
                    format!("RBAC: allowed by RoleBinding \"{name}/{}\"", a.namespace),
                );
            }
        }
    }
    (false, String::new())
}

/// The default ClusterRoles and ClusterRoleBindings, as kube-apiserver's
/// bootstrap policy has them (the ones that matter here).
pub fn default_policy() -> Vec<Value> {
    let role = |name: &str, rules: Value| {
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
        "metadata": {"name": name, "labels": {"kubernetes.io/bootstrapping": "rbac-defaults"}}, "rules": rules})
    };
    let binding = |name: &str, role: &str, groups: &[&str]| {
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
        "metadata": {"name": name, "labels": {"kubernetes.io/bootstrapping": "rbac-defaults"}},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
        "subjects": groups.iter().map(|g| json!({"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": g})).collect::<Vec<_>>()})
    };
    let csr = "certificates.k8s.io";
    let approver = |signer: &str| {
        role(
            &format!(
                "system:certificates.k8s.io:{}-approver",
                signer.trim_start_matches("kubernetes.io/")
            ),
            json!([{"apiGroups": [csr], "resources": ["signers"], "resourceNames": [signer], "verbs": ["approve"]}]),
        )
    };
    vec![
        role(
            "cluster-admin",
            json!([{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}, {"nonResourceURLs": ["*"], "verbs": ["*"]}]),
        ),
        binding("cluster-admin", "cluster-admin", &["system:masters"]),
        role(
            "system:discovery",
            json!([{"nonResourceURLs": ["/api", "/api/*", "/apis", "/apis/*", "/healthz", "/livez", "/openapi", "/openapi/*", "/readyz", "/version", "/version/"], "verbs": ["get"]}]),
        ),
        binding(
            "system:discovery",
            "system:discovery",
            &["system:authenticated"],
        ),
        role(
            "system:public-info-viewer",
            json!([{"nonResourceURLs": ["/healthz", "/livez", "/readyz", "/version", "/version/"], "verbs": ["get"]}]),
        ),
        binding(
            "system:public-info-viewer",
            "system:public-info-viewer",
            &["system:authenticated", "system:unauthenticated"],
        ),
        role(
            "system:basic-user",
            json!([
                {"apiGroups": ["authorization.k8s.io"], "resources": ["selfsubjectaccessreviews", "selfsubjectrulesreviews"], "verbs": ["create"]},
                {"apiGroups": ["authentication.k8s.io"], "resources": ["selfsubjectreviews"], "verbs": ["create"]},
            ]),
        ),
        binding(
            "system:basic-user",
            "system:basic-user",
            &["system:authenticated"],
        ),
        role(
            "system:node-bootstrapper",
            json!([{"apiGroups": [csr], "resources": ["certificatesigningrequests"], "verbs": ["create", "get", "list", "watch"]}]),
        ),
        role(
            "system:certificates.k8s.io:certificatesigningrequests:nodeclient",
            json!([{"apiGroups": [csr], "resources": ["certificatesigningrequests/nodeclient"], "verbs": ["create"]}]),
        ),
        role(
            "system:certificates.k8s.io:certificatesigningrequests:selfnodeclient",
            json!([{"apiGroups": [csr], "resources": ["certificatesigningrequests/selfnodeclient"], "verbs": ["create"]}]),
        ),
        approver("kubernetes.io/kubelet-serving"),
        approver("kubernetes.io/kube-apiserver-client-kubelet"),
        approver("kubernetes.io/kube-apiserver-client"),
        approver("kubernetes.io/legacy-unknown"),
        // Stands in for kube-apiserver's Node authorizer (NodeRules): what a
        // kubelet's credentials may do, without the per-node graph.
        role(
            "system:node",
            json!([
                {"apiGroups": [csr], "resources": ["certificatesigningrequests"], "verbs": ["create", "get", "list", "watch"]},
                {"apiGroups": [""], "resources": ["nodes"], "verbs": ["create", "get", "list", "watch", "update", "patch"]},
                {"apiGroups": [""], "resources": ["nodes/status", "pods/status"], "verbs": ["patch", "update"]},
                {"apiGroups": [""], "resources": ["pods", "services", "configmaps", "secrets"], "verbs": ["get", "list", "watch"]},
                {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["get", "list", "watch"]},
                {"apiGroups": ["authentication.k8s.io"], "resources": ["tokenreviews"], "verbs": ["create"]},
                {"apiGroups": ["authorization.k8s.io"], "resources": ["subjectaccessreviews"], "verbs": ["create"]},
            ]),
        ),
        binding("system:node", "system:node", &["system:nodes"]),
        // What a server that delegates authentication and authorization
        // to this one needs (the kubelet's secure port, an aggregated API).
        role(
            "system:auth-delegator",
            json!([
                {"apiGroups": ["authentication.k8s.io"], "resources": ["tokenreviews"], "verbs": ["create"]},
                {"apiGroups": ["authorization.k8s.io"], "resources": ["subjectaccessreviews"], "verbs": ["create"]},
            ]),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_match_verbs_groups_resources_subresources_and_names() {
        let rule = json!({"apiGroups": [""], "resources": ["secrets", "pods/status"], "resourceNames": ["a"], "verbs": ["get"]});
        assert!(rule_allows(
            &rule,
            &Attributes::resource("get", "", "secrets", "", "ns", "a")
        ));
        assert!(!rule_allows(
            &rule,
            &Attributes::resource("get", "", "secrets", "", "ns", "b")
        ));
        assert!(!rule_allows(
            &rule,
            &Attributes::resource("list", "", "secrets", "", "ns", "a")
        ));
        assert!(rule_allows(
            &rule,
            &Attributes::resource("get", "", "pods", "status", "ns", "a")
        ));
        assert!(!rule_allows(
            &rule,
            &Attributes::resource("get", "", "pods", "", "ns", "a")
        ));
        assert!(!rule_allows(
            &rule,
            &Attributes::resource("get", "apps", "secrets", "", "ns", "a")
        ));
        let urls = json!({"nonResourceURLs": ["/apis/*", "/version"], "verbs": ["get"]});
        assert!(rule_allows(
            &urls,
            &Attributes::non_resource("get", "/apis/discovery.k8s.io/v1")
        ));
        assert!(rule_allows(
            &urls,
            &Attributes::non_resource("get", "/version")
        ));
        assert!(!rule_allows(
            &urls,
            &Attributes::non_resource("get", "/healthz")
        ));
    }
}
