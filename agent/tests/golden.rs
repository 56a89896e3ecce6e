//! Golden cases, in the manner of Cilium's `pkg/loadbalancer` txtar tests:
//! each file of `tests/golden/` states one semantics rule of
//! `docs/semantics.md`, gives manifests (and later steps), and the maps it
//! expects, dumped in `sluice status`'s format. They run without root:
//! the manifest directory's decoder, the model, the planner, reconcile and
//! the simulated maps (`reconcile::sim`), checked after every operation.
//!
//! A case file:
//!
//! ```text
//! One line naming the rule, then any prose.
//! # node: node-a                (optional: `--node-name`)
//! # zone: zone-a                (optional: the Node's zone label)
//! # max-frontends: 4            (optional: capacity limits)
//! # max-backends: 10
//!
//! -- web.yaml --                (a manifest file; the same name again
//! ...                            later changes it)
//! -- delete web.yaml --         (removes a file)
//! -- want --                    (the maps after the files so far)
//! ...
//! ```
//!
//! `SLUICE_GOLDEN_UPDATE=1 cargo test -p sluice-agent --test golden`
//! rewrites each `want` with what the code gives; review the diff.

#![allow(clippy::unwrap_used, reason = "tests: a failure fails the test")]

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write as _,
    fs,
    path::{Path, PathBuf},
};

use sluice_abi::service::{SVC_FLAG_MARKER, ServiceValue};
use sluice_agent::{
    frontend::FrontendKey,
    model::{
        NodeInfo, ObjectKey,
        frontends::Refused,
        store::{Event, SourceEvent, list_events},
    },
    plan::{
        Planner,
        capacity::{Entries, Resource},
    },
    reconcile::{Current, reconcile_changes, sim::SimMaps},
    source::manifests::ManifestDir,
    status::{RefusedRow, Traffic, flag_list, frontend, service_rows, services_table},
};

/// One section of a case file.
enum Section {
    File(String, String),
    Delete(String),
    Want(String),
}

struct Case {
    node: Option<String>,
    zone: Option<String>,
    limits: Vec<(Resource, u64)>,
    /// The text before the first section.
    preamble: String,
    sections: Vec<Section>,
}

fn parse(text: &str) -> Case {
    let mut case = Case {
        node: None,
        zone: None,
        limits: Vec::new(),
        preamble: String::new(),
        sections: Vec::new(),
    };
    let mut current: Option<(String, String)> = None;
    let finish = |case: &mut Case, header: String, body: String| {
        let section = if header == "want" {
            Section::Want(body)
        } else if let Some(name) = header.strip_prefix("delete ") {
            Section::Delete(name.to_owned())
        } else {
            Section::File(header, body)
        };
        case.sections.push(section);
    };
    for line in text.split_inclusive('\n') {
        if let Some(header) = line
            .trim_end()
            .strip_prefix("-- ")
            .and_then(|l| l.strip_suffix(" --"))
        {
            if let Some((h, b)) = current.take() {
                finish(&mut case, h, b);
            }
            current = Some((header.to_owned(), String::new()));
            continue;
        }
        match &mut current {
            Some((_, body)) => body.push_str(line),
            None => {
                case.preamble.push_str(line);
                if let Some((key, value)) = line.strip_prefix("# ").and_then(|l| l.split_once(": "))
                {
                    let value = value.trim();
                    match key {
                        "node" => case.node = Some(value.to_owned()),
                        "zone" => case.zone = Some(value.to_owned()),
                        "max-frontends" => case
                            .limits
                            .push((Resource::Frontends, value.parse().unwrap())),
                        "max-backends" => case
                            .limits
                            .push((Resource::Backends, value.parse().unwrap())),
                        other => panic!("unknown directive `{other}`"),
                    }
                }
            }
        }
    }
    if let Some((h, b)) = current.take() {
        finish(&mut case, h, b);
    }
    case
}

/// The model, planner, reconcile and simulated maps of one case.
struct Run {
    dir: tempfile::TempDir,
    manifests: ManifestDir,
    planner: Planner,
    current: Current,
    maps: SimMaps,
    refused: BTreeMap<FrontendKey, Refused>,
    listed: bool,
}

impl Run {
    fn new(case: &Case) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let manifests = ManifestDir::new(dir.path());
        let mut planner = Planner::new(case.node.clone());
        if let Some(zone) = &case.zone {
            // This node's Node object, with its zone label.
            let name = case.node.clone().unwrap_or_default();
            planner.apply(vec![SourceEvent::Node(Event::Applied(
                ObjectKey {
                    namespace: String::new(),
                    name: name.clone(),
                },
                Some(NodeInfo {
                    name,
                    zone: Some(zone.clone()),
                    ..NodeInfo::default()
                }),
            ))]);
        }
        let mut limits = Entries::UNLIMITED;
        for &(r, n) in &case.limits {
            limits.set(r, n);
        }
        planner.set_limits(limits, sluice_abi::maglev::DEFAULT_TABLE_SIZE);
        Self {
            dir,
            manifests,
            planner,
            current: Current::default(),
            maps: SimMaps::default(),
            refused: BTreeMap::new(),
            listed: false,
        }
    }

    /// Reads the directory as the manifest source does, and writes the
    /// plan into the simulated maps, checking them after every operation.
    fn sync(&mut self) -> Result<(), String> {
        let scan = self.manifests.rescan().map_err(|e| e.to_string())?;
        let events = if self.listed {
            self.manifests.changes(&scan.touched)
        } else {
            self.listed = true;
            list_events(&self.manifests.model())
        };
        self.planner.apply(events);
        let current = &self.current;
        let changes = self
            .planner
            .plan(|| current.scope())
            .ok_or("the planner has not synced")?;
        let plan = reconcile_changes(&changes, &mut self.current);
        for op in plan.iter() {
            self.maps.apply(op);
            self.maps
                .check()
                .map_err(|e| format!("after {op:?}: {e}"))?;
        }
        for (key, r) in changes.refused {
            match r {
                Some(r) => self.refused.insert(key, r),
                None => self.refused.remove(&key),
            };
        }
        Ok(())
    }

    /// The maps in `sluice status`'s format (without counters), each
    /// frontend's flags with their settings, the ClusterIP markers and
    /// the Services left out.
    fn dump(&self) -> String {
        let maps = &self.maps;
        let mut slots: BTreeMap<u32, Vec<_>> = BTreeMap::new();
        for (s, b) in &maps.slots {
            slots.entry(s.service_id).or_default().push((s.slot, *b));
        }
        // The flags, with what the maps next to them hold.
        let flags = |v: &ServiceValue| {
            let ranges: Vec<String> = maps
                .ranges
                .iter()
                .filter(|(id, ..)| *id == v.id)
                .map(|(_, net, len)| format!("{net}/{len}"))
                .collect();
            let words: Vec<String> = flag_list(v.flags)
                .map(|word| match word {
                    "affinity" => format!(
                        "affinity {}s",
                        maps.affinity.get(&v.id).copied().unwrap_or_default()
                    ),
                    "source-ranges" => format!("source-ranges {}", ranges.join(" ")),
                    "maglev" => format!(
                        "maglev {}",
                        maps.maglev.get(&v.id).copied().unwrap_or_default()
                    ),
                    other => other.to_owned(),
                })
                .collect();
            words.join(", ")
        };
        let rows = service_rows(
            maps.services
                .iter()
                .filter(|(_, v)| v.flags & SVC_FLAG_MARKER == 0)
                .map(|(k, v)| (*k, *v)),
            |id| maps.names.get(&id).cloned(),
            slots,
            flags,
            |_| Traffic::default(),
            |_| Traffic::default(),
        );
        let refused: Vec<RefusedRow> = self
            .refused
            .iter()
            .map(|(key, r)| RefusedRow {
                frontend: frontend(*key),
                owner: r.owner.to_string(),
                claimant: r
                    .claimants
                    .first()
                    .map(ToString::to_string)
                    .unwrap_or_default(),
                claimants: u32::try_from(r.claimants.len()).unwrap_or(u32::MAX),
            })
            .collect();
        let mut out = services_table(&rows, &refused, false);
        let markers: Vec<String> = maps
            .services
            .keys()
            .filter(|k| k.is_marker())
            .map(|k| k.addr.to_string())
            .collect();
        let _ = write!(out, "\nClusterIPs:");
        for m in &markers {
            let _ = write!(out, " {m}");
        }
        out.push('\n');
        let left_out = self.planner.admission().left_out();
        if !left_out.is_empty() {
            let names: Vec<String> = left_out
                .iter()
                .map(|(key, r)| format!("{key} ({})", r.map()))
                .collect();
            let _ = writeln!(out, "left out: {}", names.join(", "));
        }
        out
    }
}

/// Runs one case; the case text with each `want` as the code gives it, and
/// the differences.
fn run_case(path: &Path) -> (String, Vec<String>) {
    let text = fs::read_to_string(path).unwrap();
    let case = parse(&text);
    let mut run = Run::new(&case);
    let mut out = case.preamble.clone();
    let mut failures = Vec::new();
    let mut step = 0;
    for section in &case.sections {
        match section {
            Section::File(name, body) => {
                fs::write(run.dir.path().join(name), body).unwrap();
                let _ = write!(out, "-- {name} --\n{body}");
            }
            Section::Delete(name) => {
                fs::remove_file(run.dir.path().join(name)).unwrap();
                let _ = writeln!(out, "-- delete {name} --");
            }
            Section::Want(want) => {
                step += 1;
                let got = match run.sync() {
                    Ok(()) => run.dump(),
                    Err(e) => format!("error: {e}\n"),
                };
                if got.trim_end() != want.trim_end() {
                    failures.push(format!(
                        "{} (want #{step}):\n--- want\n{want}\n--- got\n{got}",
                        path.display()
                    ));
                }
                let _ = write!(out, "-- want --\n{got}");
                if !got.ends_with("\n\n") {
                    out.push('\n');
                }
            }
        }
    }
    (out, failures)
}

fn cases() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let mut cases: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "txtar"))
        .collect();
    cases.sort();
    cases
}

#[test]
fn every_golden_case_gives_the_maps_it_states() {
    let update = std::env::var_os("SLUICE_GOLDEN_UPDATE").is_some();
    let cases = cases();
    assert!(cases.len() >= 25, "{} golden cases", cases.len());
    let mut failures = Vec::new();
    for path in &cases {
        let (out, mut failed) = run_case(path);
        if update {
            fs::write(path, out).unwrap();
        } else {
            failures.append(&mut failed);
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Every rule of `docs/semantics.md` marked as a golden case names an
/// existing case, and every case is named there.
#[test]
fn every_case_is_a_rule_of_the_semantics_doc() {
    let doc = include_str!("../docs/semantics.md");
    let named: BTreeSet<&str> = doc
        .split("golden/")
        .skip(1)
        .filter_map(|rest| {
            let end = rest.find(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))?;
            rest[end..].starts_with(".txtar").then(|| &rest[..end])
        })
        .collect();
    let files: BTreeSet<String> = cases()
        .iter()
        .filter_map(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .collect();
    let files: BTreeSet<&str> = files.iter().map(String::as_str).collect();
    let missing: Vec<_> = files.difference(&named).collect();
    let unknown: Vec<_> = named.difference(&files).collect();
    assert!(
        missing.is_empty() && unknown.is_empty(),
        "cases not named in docs/semantics.md: {missing:?}; named but absent: {unknown:?}"
    );
}

/// Every rule of `docs/semantics.md` (a bullet before its limitations)
/// names at least one case: a golden case, or a packet or end-to-end test
/// linked as `module::test` to its file under `tests/e2e/tests/e2e/`,
/// which must hold that test.
#[test]
fn every_rule_of_the_semantics_doc_names_a_case_that_exists() {
    let doc = include_str!("../docs/semantics.md");
    let rules = doc.split("## Limitations").next().unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs");
    let mut failures = Vec::new();
    let bullets: Vec<&str> = rules.split("\n- ").skip(1).collect();
    assert!(bullets.len() >= 15, "{} rules found", bullets.len());
    for rule in bullets {
        let first = rule.lines().next().unwrap_or_default();
        let golden = rule.contains("](../tests/golden/");
        let mut tests = 0;
        for link in rule.split("[`").skip(1) {
            let Some((name, rest)) = link.split_once("`](") else {
                continue;
            };
            let Some((target, _)) = rest.split_once(')') else {
                continue;
            };
            if !target.starts_with("../../tests/e2e/") {
                continue;
            }
            tests += 1;
            let test = name.rsplit("::").next().unwrap();
            let source = fs::read_to_string(root.join(target)).unwrap_or_default();
            if !source.contains(&format!("fn {test}()")) {
                failures.push(format!("{name}: no such test in {target}"));
            }
        }
        if !golden && tests == 0 {
            failures.push(format!("a rule names no case: {first}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
