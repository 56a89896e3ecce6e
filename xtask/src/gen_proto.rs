//! `cargo xtask gen-proto [--check]`: regenerates the local API server's
//! protobuf field tables (`tests/apiserver/src/proto/schema.rs`) from
//! k8s-pb 0.9.0 (tags) and k8s-openapi 0.29.0 (JSON names), as
//! `tests/apiserver/tools/gen_proto_schema.py` reads them. Neither crate is a
//! dependency of the workspace, so both are fetched into cargo's registry
//! through a throwaway manifest under `target/`. The file is kept as
//! generated: `#[rustfmt::skip]` keeps rustfmt out of it.

use std::{fs, path::PathBuf, process::Command};

use anyhow::{Context as _, Result, bail};

use crate::run;

/// The crates the generator reads, pinned to what it was written against.
const MANIFEST: &str = r#"[package]
name = "sluice-gen-proto"
version = "0.0.0"
edition = "2024"
publish = false

[lib]
path = "lib.rs"

[workspace]

[dependencies]
k8s-pb = "=0.9.0"
k8s-openapi = { version = "=0.29.0", features = ["v1_33"] }
"#;

const SCHEMA: &str = "tests/apiserver/src/proto/schema.rs";
const GENERATOR: &str = "tests/apiserver/tools/gen_proto_schema.py";

#[derive(clap::Args)]
pub struct Args {
    /// Fail if the committed file differs from what the generator writes,
    /// instead of writing it.
    #[arg(long)]
    check: bool,
}

impl Args {
    /// `--check`.
    pub const fn checking() -> Self {
        Self { check: true }
    }
}

pub fn gen_proto(args: &Args) -> Result<()> {
    let root = run::workspace_root();
    let (pb, openapi) = fetch()?;
    let out = Command::new("python3")
        .arg(root.join(GENERATOR))
        .env("K8S_PB_SRC", &pb)
        .env("K8S_OPENAPI_SRC", &openapi)
        .output()
        .context("running python3 (the generator)")?;
    if !out.status.success() {
        bail!(
            "{GENERATOR} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let path = root.join(SCHEMA);
    if args.check {
        let committed = fs::read(&path).with_context(|| format!("reading {SCHEMA}"))?;
        if committed != out.stdout {
            bail!("{SCHEMA} is not what `cargo xtask gen-proto` writes; run it and commit");
        }
        println!("{SCHEMA} is as generated");
    } else {
        fs::write(&path, &out.stdout).with_context(|| format!("writing {SCHEMA}"))?;
        println!("wrote {SCHEMA}");
    }
    Ok(())
}

/// The source directories of k8s-pb and k8s-openapi (its `v1_33` module),
/// fetched into cargo's registry if they are not there yet.
fn fetch() -> Result<(PathBuf, PathBuf)> {
    let dir = run::target_dir().join("gen-proto");
    fs::create_dir_all(&dir)?;
    fs::write(dir.join("Cargo.toml"), MANIFEST)?;
    fs::write(dir.join("lib.rs"), "")?;
    let manifest = dir.join("Cargo.toml");
    let out = Command::new("cargo")
        .args(["metadata", "--format-version", "1", "--manifest-path"])
        .arg(&manifest)
        .output()
        .context("running cargo metadata")?;
    if !out.status.success() {
        bail!(
            "fetching k8s-pb and k8s-openapi: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let src = |name: &str| -> Result<PathBuf> {
        let manifest = meta["packages"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| p["name"] == name)
            .and_then(|p| p["manifest_path"].as_str())
            .with_context(|| format!("{name} is not in the metadata"))?;
        Ok(PathBuf::from(manifest)
            .parent()
            .context("a manifest's directory")?
            .join("src"))
    };
    Ok((src("k8s-pb")?, src("k8s-openapi")?.join("v1_33")))
}
