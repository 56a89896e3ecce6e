//! The deployment manifests (`manifests/`) as a cluster would receive them:
//! no container is privileged, the agent's capabilities are named, and it
//! reaches the API server at a real address, never a Service's ClusterIP
//! (which only a running Service proxy, Sluice itself, would translate).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests: a failure fails the test"
)]

use std::{fs, net::Ipv4Addr, path::Path};

use serde_yaml::Value;

/// Every document of every YAML file directly in `manifests/`.
fn documents() -> Vec<(String, Value)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests");
    let mut docs = Vec::new();
    let mut files: Vec<_> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    for path in files {
        let text = fs::read_to_string(&path).unwrap();
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let value = serde::Deserialize::deserialize(doc).unwrap();
            docs.push((path.display().to_string(), value));
        }
    }
    docs
}

/// The Pod templates' containers, init containers too, by workload.
fn containers(docs: &[(String, Value)]) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    for (file, doc) in docs {
        let spec = match doc["kind"].as_str() {
            Some("DaemonSet" | "Deployment" | "StatefulSet" | "Job") => {
                &doc["spec"]["template"]["spec"]
            }
            Some("Pod") => &doc["spec"],
            _ => continue,
        };
        for list in ["containers", "initContainers"] {
            for c in spec[list].as_sequence().into_iter().flatten() {
                out.push((
                    format!("{file}: {}", c["name"].as_str().unwrap_or("?")),
                    c.clone(),
                ));
            }
        }
    }
    out
}

fn daemonset(docs: &[(String, Value)]) -> &Value {
    docs.iter()
        .map(|(_, d)| d)
        .find(|d| d["kind"] == "DaemonSet" && d["metadata"]["name"] == "sluice")
        .expect("the sluice DaemonSet")
}

/// `key` of the ConfigMap `name` in the manifests.
fn config_map_value<'a>(docs: &'a [(String, Value)], name: &str, key: &str) -> &'a str {
    docs.iter()
        .map(|(_, d)| d)
        .find(|d| d["kind"] == "ConfigMap" && d["metadata"]["name"] == name)
        .and_then(|cm| cm["data"][key].as_str())
        .unwrap_or_else(|| panic!("no `{key}` in ConfigMap `{name}`"))
}

#[test]
fn no_container_is_privileged_and_the_agent_names_its_capabilities() {
    let docs = documents();
    let containers = containers(&docs);
    assert!(!containers.is_empty(), "no workload in manifests/");
    for (name, c) in &containers {
        let ctx = &c["securityContext"];
        assert_ne!(
            ctx["privileged"].as_bool(),
            Some(true),
            "{name} is privileged"
        );
        let added: Vec<&str> = ctx["capabilities"]["add"]
            .as_sequence()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        assert!(!added.contains(&"ALL"), "{name} adds every capability");
    }
    let pod = &daemonset(&docs)["spec"]["template"]["spec"];
    let agent = &pod["containers"][0];
    let ctx = &agent["securityContext"];
    let dropped: Vec<&str> = ctx["capabilities"]["drop"]
        .as_sequence()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(dropped, ["ALL"], "the agent drops what it was not given");
    assert_eq!(ctx["allowPrivilegeEscalation"].as_bool(), Some(false));
    assert_eq!(
        ctx["seccompProfile"]["type"].as_str(),
        Some("RuntimeDefault")
    );
    assert_eq!(
        pod["hostPID"].as_bool(),
        Some(true),
        "stale-UDP closing reaches pods"
    );
    assert!(
        agent["resources"]["limits"]["memory"].as_str().is_some()
            && agent["resources"]["requests"]["memory"].as_str().is_some(),
        "memory requested and limited"
    );
}

#[test]
fn the_agent_reaches_the_api_server_at_an_address_that_is_not_a_cluster_ip() {
    let docs = documents();
    let agent = &daemonset(&docs)["spec"]["template"]["spec"]["containers"][0];
    let env = |name: &str| -> String {
        let var = agent["env"]
            .as_sequence()
            .into_iter()
            .flatten()
            .find(|e| e["name"] == name)
            .unwrap_or_else(|| panic!("the agent has no {name}"));
        if let Some(v) = var["value"].as_str() {
            return v.to_owned();
        }
        let r = &var["valueFrom"]["configMapKeyRef"];
        config_map_value(
            &docs,
            r["name"].as_str().unwrap(),
            r["key"].as_str().unwrap(),
        )
        .to_owned()
    };
    let host = env("KUBERNETES_SERVICE_HOST");
    let port: u16 = env("KUBERNETES_SERVICE_PORT").parse().unwrap();
    assert_ne!(port, 0);
    // The agent's own service CIDR, from its config file.
    let config: Value =
        serde_yaml::from_str(config_map_value(&docs, "sluice", "sluice.yaml")).unwrap();
    let cidr = config["service-cidr"].as_str().unwrap();
    let (net, len) = cidr.split_once('/').unwrap();
    let (net, len): (Ipv4Addr, u32) = (net.parse().unwrap(), len.parse().unwrap());
    let mask = u32::MAX.checked_shl(32 - len).unwrap_or(0);
    if let Ok(ip) = host.parse::<Ipv4Addr>() {
        assert_ne!(
            u32::from(ip) & mask,
            u32::from(net) & mask,
            "{host} is in the service CIDR {cidr}"
        );
    } else {
        assert!(
            !host.starts_with("kubernetes.default") && host != "kubernetes",
            "{host} names the `kubernetes` Service"
        );
    }
}
