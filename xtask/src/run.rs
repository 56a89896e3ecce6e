//! `cargo xtask run`: the agent in a local lab.
use std::path::PathBuf;

use anyhow::Result;

#[derive(clap::Args)]
pub struct Args {}

pub fn build_agent(_release: bool) -> Result<PathBuf> {
    anyhow::bail!("todo")
}

pub fn run(_args: &Args) -> Result<()> {
    anyhow::bail!("todo")
}
