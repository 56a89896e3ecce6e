//! Summaries shared by the benchmarks' tables.

use std::{fs, path::Path, time::Duration};

use anyhow::{Context, Result};

/// The `p` quantile (0..=1) of an ascending list, nearest-rank.
pub fn percentile(sorted: &[Duration], p: f64) -> Option<Duration> {
    if sorted.is_empty() {
        return None;
    }
    #[expect(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss,
        reason = "an index into a list"
    )]
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted.get(i).copied()
}

/// Milliseconds with `decimals` places, or `-` when there is no value.
pub fn ms(d: Option<Duration>, decimals: usize) -> String {
    d.map_or_else(
        || "-".into(),
        |d| format!("{:.decimals$} ms", d.as_secs_f64() * 1e3),
    )
}

/// `Linux <release>, <n> CPUs`: the machine a table was measured on.
pub fn machine() -> String {
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cpus = std::thread::available_parallelism().map_or(0, std::num::NonZero::get);
    format!("Linux {}, {cpus} CPUs", kernel.trim())
}

/// Prints `table` and writes it to `out`, creating its directory.
pub fn publish(table: &str, out: &Path) -> Result<()> {
    println!("\n{table}");
    if let Some(dir) = out.parent() {
        fs::create_dir_all(dir)?;
    }
    fs::write(out, table).with_context(|| format!("writing {}", out.display()))?;
    println!("written to {}", out.display());
    Ok(())
}

/// The one of `all` that `name` calls `s` (a `--modes` value), or an error
/// that lists them.
pub fn parse_named<T: Copy>(all: &[T], name: fn(T) -> &'static str, s: &str) -> Result<T, String> {
    all.iter().copied().find(|m| name(*m) == s).ok_or_else(|| {
        let names: Vec<&str> = all.iter().map(|m| name(*m)).collect();
        format!("unknown mode `{s}`; there are {}", names.join(", "))
    })
}
