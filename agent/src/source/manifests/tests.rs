//! The manifest directory: files and objects in, events out; broken files
//! and objects named, everything else applied.

use std::net::IpAddr;

use super::{
    decode::{PARALLEL_BYTES, parse_yaml, parse_yaml_stream, split_documents},
    *,
};
use crate::model::ServiceKind;

const WEB: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec:\n  clusterIP: 10.96.0.10\n  ports: [{name: http, port: 80}]\n";
const WEB_SLICE: &str = "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: web-1\n  labels: {kubernetes.io/service-name: web}\naddressType: IPv4\nports: [{name: http, port: 8080}]\nendpoints: [{addresses: [10.0.0.1]}]\n";

fn write(dir: &Path, name: &str, content: &str) {
    fs::write(dir.join(name), content).unwrap();
}

fn cluster_ip(m: &Model, name: &str) -> IpAddr {
    match &m.services[&ObjectKey {
        namespace: "default".into(),
        name: name.into(),
    }]
        .kind
    {
        ServiceKind::ClusterIp { ips } => ips[0],
        other => panic!("{other:?}"),
    }
}

#[test]
fn multi_document_yaml_json_and_lists_load() {
    let d = tempfile::tempdir().unwrap();
    write(d.path(), "a.yaml", &format!("{WEB}---\n{WEB_SLICE}---\n"));
    write(
        d.path(),
        "b.json",
        r#"{"apiVersion":"v1","kind":"List","items":[{"apiVersion":"v1","kind":"Service","metadata":{"name":"api","namespace":"prod"},"spec":{"clusterIP":"10.96.0.11","ports":[{"port":443}]}}]}"#,
    );
    write(
        d.path(),
        "c.yml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: ignored}\n",
    );
    write(d.path(), "notes.txt", "not a manifest");
    let mut m = ManifestDir::new(d.path());
    let scan = m.rescan().unwrap();
    assert!(scan.changed);
    assert!(scan.problems.is_empty(), "{:?}", scan.problems);
    let model = m.model();
    assert_eq!(model.services.len(), 2);
    assert_eq!(model.slices.len(), 1);
    assert_eq!(
        cluster_ip(&model, "web"),
        "10.96.0.10".parse::<IpAddr>().unwrap()
    );
    assert!(
        !m.rescan().unwrap().changed,
        "an unchanged directory is not reparsed"
    );
}

#[test]
fn a_broken_file_keeps_its_last_good_objects_and_the_rest_applies() {
    let d = tempfile::tempdir().unwrap();
    write(d.path(), "web.yaml", WEB);
    write(d.path(), "slice.yaml", WEB_SLICE);
    let mut m = ManifestDir::new(d.path());
    m.rescan().unwrap();
    write(
        d.path(),
        "web.yaml",
        "apiVersion: v1\nkind: Service\nmetadata: {name: web\n",
    );
    write(
        d.path(),
        "slice.yaml",
        &WEB_SLICE.replace("10.0.0.1", "10.0.0.2"),
    );
    let scan = m.rescan().unwrap();
    assert_eq!(scan.problems.len(), 1);
    let msg = scan.problems[0].to_string();
    assert!(
        msg.contains("web.yaml") && msg.contains("invalid YAML"),
        "{msg}"
    );
    let model = m.model();
    assert_eq!(
        cluster_ip(&model, "web"),
        "10.96.0.10".parse::<IpAddr>().unwrap()
    );
    let slice = model.slices.values().next().unwrap();
    assert_eq!(
        slice.endpoints[0].addresses[0],
        "10.0.0.2".parse::<IpAddr>().unwrap()
    );
}

#[test]
fn an_invalid_object_keeps_its_last_good_state_and_is_named() {
    let d = tempfile::tempdir().unwrap();
    let api = "apiVersion: v1\nkind: Service\nmetadata: {name: api}\nspec: {clusterIP: 10.96.0.11, ports: [{port: 443}]}\n";
    write(d.path(), "svc.yaml", &format!("{WEB}---\n{api}"));
    let mut m = ManifestDir::new(d.path());
    m.rescan().unwrap();
    // web gets a bad IP, api a new port: api changes, web keeps 10.96.0.10.
    let bad = WEB.replace("10.96.0.10", "10.96.0.999");
    write(
        d.path(),
        "svc.yaml",
        &format!("{bad}---\n{}", api.replace("443", "8443")),
    );
    let scan = m.rescan().unwrap();
    assert_eq!(scan.problems.len(), 1);
    let msg = scan.problems[0].to_string();
    assert!(
        msg.contains("svc.yaml")
            && msg.contains("Service `default/web`")
            && msg.contains("spec.clusterIP"),
        "{msg}"
    );
    let model = m.model();
    assert_eq!(
        cluster_ip(&model, "web"),
        "10.96.0.10".parse::<IpAddr>().unwrap()
    );
    let api = &model.services[&ObjectKey {
        namespace: "default".into(),
        name: "api".into(),
    }];
    assert_eq!(api.ports[0].port, 8443);
    // A schema error (a string where a number belongs) is reported the same way.
    write(
        d.path(),
        "svc.yaml",
        &WEB.replace("port: 80", "port: eighty"),
    );
    let scan = m.rescan().unwrap();
    assert!(
        scan.problems[0]
            .to_string()
            .contains("Service `default/web`"),
        "{}",
        scan.problems[0]
    );
    assert_eq!(m.model().services.len(), 1, "api was removed from the file");
}

#[test]
fn removed_files_remove_their_objects_and_duplicates_are_reported() {
    let d = tempfile::tempdir().unwrap();
    write(d.path(), "a.yaml", WEB);
    write(d.path(), "b.yaml", &WEB.replace("10.96.0.10", "10.96.0.20"));
    let mut m = ManifestDir::new(d.path());
    let scan = m.rescan().unwrap();
    assert_eq!(scan.problems.len(), 1);
    assert!(
        scan.problems[0].to_string().contains("also defined"),
        "{}",
        scan.problems[0]
    );
    assert_eq!(
        cluster_ip(&m.model(), "web"),
        "10.96.0.10".parse::<IpAddr>().unwrap()
    );
    fs::remove_file(d.path().join("a.yaml")).unwrap();
    assert!(m.rescan().unwrap().changed);
    assert_eq!(
        cluster_ip(&m.model(), "web"),
        "10.96.0.20".parse::<IpAddr>().unwrap()
    );
    fs::remove_file(d.path().join("b.yaml")).unwrap();
    m.rescan().unwrap();
    assert!(m.model().services.is_empty());
}

/// `n` Services and their slices as one YAML stream, over 256 KiB.
fn many(n: usize) -> String {
    let mut out = String::new();
    for i in 0..n {
        out.push_str(
            &WEB.replace("name: web", &format!("name: web-{i}"))
                .replace("10.96.0.10", &format!("10.96.{}.{}", i / 250, i % 250 + 1)),
        );
        out.push_str("---\n");
        out.push_str(
            &WEB_SLICE
                .replace("service-name: web", &format!("service-name: web-{i}"))
                .replace("name: web-1", &format!("name: web-{i}-1")),
        );
        out.push_str("---\n");
    }
    out
}

#[test]
fn a_large_yaml_stream_is_parsed_in_pieces_as_in_one() {
    let text = many(1500);
    assert!(text.len() > PARALLEL_BYTES);
    let pieces = split_documents(&text, 4);
    assert_eq!(pieces.len(), 4);
    assert_eq!(pieces.concat(), text);
    assert!(pieces[1..].iter().all(|p| p.starts_with("---\n")));
    let whole = parse_yaml_stream(&text).unwrap();
    assert_eq!(whole.len(), 3000);
    assert_eq!(parse_yaml(&text).unwrap(), whole);
    // Directives belong to the document after them: no cutting.
    assert_eq!(
        split_documents(&format!("%YAML 1.2\n---\n{text}"), 4).len(),
        1
    );
}

#[test]
fn an_error_late_in_a_large_stream_names_the_line_of_the_file() {
    let mut text = many(1500);
    let line = text.lines().count() + 2;
    text.push_str("apiVersion: v1\nkind: [unclosed\n");
    let message = parse_yaml(&text).unwrap_err().to_string();
    assert!(message.contains(&format!("line {line}")), "{message}");
}

#[test]
fn a_watched_change_rereads_only_the_files_it_names() {
    let d = tempfile::tempdir().unwrap();
    let api = "apiVersion: v1\nkind: Service\nmetadata: {name: api}\nspec:\n  clusterIP: 10.96.0.11\n  ports: [{port: 443}]\n";
    write(d.path(), "a.yaml", WEB);
    write(d.path(), "b.yaml", api);
    let mut m = ManifestDir::new(d.path());
    m.rescan().unwrap();

    write(d.path(), "a.yaml", &WEB.replace("10.96.0.10", "10.96.0.20"));
    write(d.path(), "b.yaml", &api.replace("10.96.0.11", "10.96.0.21"));
    // The watcher may prefix paths otherwise than the directory's name.
    let named: BTreeSet<PathBuf> = [PathBuf::from("/elsewhere/a.yaml")].into();
    let scan = m.rescan_paths(&named);
    assert_eq!(scan.touched.len(), 1, "{:?}", scan.touched);
    assert_eq!(
        cluster_ip(&m.model(), "web"),
        "10.96.0.20".parse::<IpAddr>().unwrap()
    );
    assert_eq!(
        cluster_ip(&m.model(), "api"),
        "10.96.0.11".parse::<IpAddr>().unwrap(),
        "b.yaml was not named, so not reread"
    );

    // A named file that is gone takes its objects with it.
    fs::remove_file(d.path().join("a.yaml")).unwrap();
    let scan = m.rescan_paths(&[d.path().join("a.yaml")].into());
    assert!(scan.changed);
    assert!(m.model().services.values().all(|s| s.key.name != "web"));
    // A full rescan (after lost events) finds the rest.
    m.rescan().unwrap();
    assert_eq!(
        cluster_ip(&m.model(), "api"),
        "10.96.0.21".parse::<IpAddr>().unwrap()
    );
}

#[test]
fn a_rescan_sends_only_what_the_changed_files_held() {
    let d = tempfile::tempdir().unwrap();
    let api = "apiVersion: v1\nkind: Service\nmetadata: {name: api}\nspec:\n  clusterIP: 10.96.0.11\n  ports: [{port: 443}]\n";
    write(d.path(), "a.yaml", &format!("{WEB}---\n{WEB_SLICE}"));
    write(d.path(), "b.yaml", api);
    let mut m = ManifestDir::new(d.path());
    m.rescan().unwrap();

    // web moves to another address in a.yaml; b.yaml is untouched.
    write(
        d.path(),
        "a.yaml",
        &format!(
            "{}---\n{WEB_SLICE}",
            WEB.replace("10.96.0.10", "10.96.0.20")
        ),
    );
    let scan = m.rescan().unwrap();
    let events = m.changes(&scan.touched);
    assert_eq!(events.len(), 2, "web and its slice only: {events:?}");
    assert!(events.iter().all(|e| matches!(
        e,
        SourceEvent::Service(Event::Applied(k, _)) | SourceEvent::Slice(Event::Applied(k, _))
            if k.name.starts_with("web")
    )));

    // The slice goes: one deletion.
    write(d.path(), "a.yaml", &WEB.replace("10.96.0.10", "10.96.0.20"));
    let scan = m.rescan().unwrap();
    let events = m.changes(&scan.touched);
    assert!(
        events.contains(&SourceEvent::Slice(Event::Deleted(ObjectKey {
            namespace: "default".into(),
            name: "web-1".into(),
        })))
    );

    // A duplicate in a later file wins once the first one is removed.
    write(d.path(), "c.yaml", &WEB.replace("10.96.0.10", "10.96.0.30"));
    m.rescan().unwrap();
    fs::remove_file(d.path().join("a.yaml")).unwrap();
    let scan = m.rescan().unwrap();
    let events = m.changes(&scan.touched);
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(
        cluster_ip(&m.model(), "web"),
        "10.96.0.30".parse::<IpAddr>().unwrap()
    );
    assert!(
        matches!(&events[0], SourceEvent::Service(Event::Applied(_, Some(s))) if s.kind == m.model().services.values().find(|v| v.key.name == "web").unwrap().kind)
    );
}
