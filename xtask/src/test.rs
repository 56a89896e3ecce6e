//! `cargo xtask test`.
use anyhow::Result;

#[derive(clap::Args)]
pub struct Args {}

pub fn test(_args: &Args) -> Result<()> {
    anyhow::bail!("todo")
}
