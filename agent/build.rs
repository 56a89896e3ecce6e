//! Builds the eBPF programs (ebpf/programs) with aya-build and leaves the
//! object in `OUT_DIR`, where `src/lib.rs` embeds it.
//!
//! With `AYA_BUILD_SKIP=1` (lint runs on machines without bpf-linker) an empty
//! stub is written instead, so `include_bytes_aligned!` still finds a file;
//! loading that stub fails with a clear error.

use std::{env, fs, path::PathBuf};

use anyhow::{Context as _, anyhow};

const EBPF_PACKAGE: &str = "sluice-ebpf";
const EBPF_BIN: &str = "sluice";

fn main() -> anyhow::Result<()> {
    let manifest_dir =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR")?);
    let root_dir = manifest_dir.join("../ebpf/programs");
    let root_dir = root_dir
        .to_str()
        .ok_or_else(|| anyhow!("non-UTF-8 path {}", root_dir.display()))?;
    let skip = env::var("AYA_BUILD_SKIP").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
    if skip {
        let out_dir = PathBuf::from(env::var_os("OUT_DIR").context("OUT_DIR")?);
        fs::write(out_dir.join(EBPF_BIN), []).context("writing the eBPF stub")?;
        println!("cargo:rerun-if-env-changed=AYA_BUILD_SKIP");
        return Ok(());
    }
    let package = aya_build::Package {
        name: EBPF_PACKAGE,
        root_dir,
        ..Default::default()
    };
    aya_build::build_ebpf([package], aya_build::Toolchain::default())
}
