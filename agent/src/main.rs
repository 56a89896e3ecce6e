//! `sluice`: the node agent binary. Argument parsing, logging, then the
//! subcommand; everything else lives in the library.

use std::process::ExitCode;

use clap::Parser as _;
use sluice_agent::{app, cli, config, dataplane, monitor, status};

/// Parsing thousands of manifests or API objects is mostly small
/// allocations, where mimalloc is about twice as fast as glibc's malloc.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc asks for transparent huge pages (`MADV_HUGEPAGE`) on its heap.
/// Where the kernel's THP defrag is `madvise` (its default), a fault on such
/// a region may first compact memory to find 2 MiB: on a 6.18 node a cold
/// start at 100,000 Services spent two thirds of its time there (15.1 s to
/// ready, 5.6 s without). The agent's heap is small objects that gain
/// nothing from huge pages, so the process turns THP off for itself (the
/// flag is per process, and `/proc/<pid>/status` shows `THP_enabled: 0`).
fn no_huge_pages() -> nix::Result<()> {
    nix::sys::prctl::set_thp_disable(true)
}

fn main() -> ExitCode {
    let thp = no_huge_pages();
    let cli = cli::Cli::parse();
    let log_level = match &cli.command {
        cli::Command::Run(args) => args
            .log_level
            .clone()
            .or_else(|| args.config.as_deref().and_then(config::file_log_level)),
        _ => None,
    };
    init_tracing(log_level.as_deref());
    if let Err(e) = thp {
        tracing::warn!("could not turn transparent huge pages off for the agent's heap: {e}");
    }
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!("{err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: cli::Cli) -> anyhow::Result<()> {
    match cli.command {
        cli::Command::Run(args) => {
            let config = config::RunConfig::from_args(*args)?;
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            runtime.block_on(app::run(config))
        }
        cli::Command::Status(args) => {
            let mut out = status::render(&args.pins.pin_dir)?;
            out.push_str(&status::left_out(args.health_listen));
            print!("{out}");
            Ok(())
        }
        cli::Command::Monitor(args) => {
            let json = match args.output.as_str() {
                "json" => true,
                "text" => false,
                other => anyhow::bail!("`-o {other}`: the output is `text` or `json`"),
            };
            let filter = monitor::Filter {
                service: args.service,
                reason: args.reason,
                addr: args.addr,
                kind: args.kind,
            };
            monitor::run(&args.pins.pin_dir, &filter, json)
        }
        cli::Command::Cleanup(args) => {
            dataplane::cleanup(&args.pin_dir)?;
            tracing::info!(pin_dir = %args.pin_dir.display(), "removed Sluice's programs, links and pinned maps");
            Ok(())
        }
    }
}

/// `RUST_LOG` wins over `--log-level`; aya's `log` records are bridged in.
fn init_tracing(level: Option<&str>) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(level.unwrap_or("info")));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr)
        .init();
}
