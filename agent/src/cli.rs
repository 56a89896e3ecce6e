//! Command-line interface. The flags of `sluice run` are `Settings`
//! (`settings.rs`), each also a key of the config file; a flag given on the
//! command line wins.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::settings::Settings;

/// Default pin directory, as `bpftool` and Cilium lay out bpffs.
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/sluice";

#[derive(Parser, Debug)]
#[command(name = "sluice", version, about = "eBPF Kubernetes Service dataplane")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the agent in the current network namespace.
    Run(Box<Settings>),
    /// Print the Services, backends and counters from the pinned maps.
    Status(StatusArgs),
    /// Show drops, rejects and new flows as they happen (from a ring buffer
    /// the programs write to while a monitor runs).
    Monitor(MonitorArgs),
    /// Remove the programs, links and pinned maps (like `kube-proxy --cleanup`).
    Cleanup(PinDirArgs),
}

#[derive(Args, Debug)]
pub struct PinDirArgs {
    #[arg(long, default_value = DEFAULT_PIN_DIR)]
    pub pin_dir: PathBuf,
}

#[derive(Args, Debug)]
pub struct MonitorArgs {
    #[command(flatten)]
    pub pins: PinDirArgs,
    /// Only events of this Service: `namespace/name` or `namespace/name:port`.
    #[arg(long)]
    pub service: Option<String>,
    /// Only drops and rejects for this reason (`no_endpoints`, `ct_invalid`, …).
    #[arg(long)]
    pub reason: Option<String>,
    /// Only events with this address as source, destination, backend or SNAT.
    #[arg(long)]
    pub addr: Option<std::net::IpAddr>,
    /// Only `drop`, `reject`, `new-flow` or `snat` events.
    #[arg(long)]
    pub kind: Option<String>,
    /// `text`, or `json`: one JSON object a line.
    #[arg(short = 'o', long, default_value = "text")]
    pub output: String,
}

#[derive(Args, Debug)]
pub struct StatusArgs {
    #[command(flatten)]
    pub pins: PinDirArgs,
    /// The agent's health port, asked which Services do not fit in the maps.
    #[arg(long, default_value = "127.0.0.1:10256")]
    pub health_listen: std::net::SocketAddr,
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use clap::CommandFactory as _;

    use super::Cli;

    /// The flags of `sluice run`.
    fn run_flags() -> BTreeSet<String> {
        let cli = Cli::command();
        let run = cli.find_subcommand("run").expect("a run subcommand");
        run.get_arguments()
            .filter_map(|a| a.get_long())
            .filter(|l| *l != "help")
            .map(|l| format!("--{l}"))
            .collect()
    }

    /// The flags in the table of `docs/configuration.md` for `sluice run` (rows starting with
    /// `` | `--name``), and the config key each names after ` / `.
    fn documented() -> Vec<(String, Option<String>)> {
        let readme = include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/docs/configuration.md"
        ));
        readme
            .lines()
            .filter_map(|l| l.strip_prefix("| `--"))
            .map(|row| {
                let cell = row.split(" |").next().unwrap_or_default();
                let flag = format!("--{}", cell.split([' ', '`']).next().unwrap_or_default());
                let key = cell
                    .split(" / `")
                    .nth(1)
                    .map(|k| k.trim_end_matches('`').to_owned());
                (flag, key)
            })
            .collect()
    }

    #[test]
    fn every_flag_is_documented_and_every_documented_flag_exists() {
        let flags = run_flags();
        let rows = documented();
        let table: BTreeSet<String> = rows.iter().map(|(f, _)| f.clone()).collect();
        let undocumented: Vec<_> = flags.difference(&table).collect();
        let unknown: Vec<_> = table.difference(&flags).collect();
        assert!(
            undocumented.is_empty() && unknown.is_empty(),
            "flags missing from the table of docs/configuration.md: {undocumented:?}; rows for no flag: {unknown:?}"
        );
        // Every flag but `--config` has its config key, of its own name.
        for (flag, key) in rows.iter().filter(|(f, _)| f != "--config") {
            assert_eq!(
                key.as_deref(),
                flag.strip_prefix("--"),
                "the configuration row of {flag} names its key"
            );
        }
    }
}
