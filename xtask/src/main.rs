//! Developer tasks: `setup`, `doctor`, `build`, `run`, `test`, `bench`,
//! `vm-test`, `gen-proto`.
//!
//! `run` and `test` call `setup` first when something is missing, so a fresh
//! machine needs nothing but `cargo xtask run` or `cargo xtask test`.

mod bench;
mod gen_proto;
mod prereqs;
mod run;
mod test;
mod vm;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "Sluice developer tasks")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install every prerequisite (idempotent: does nothing when all are present).
    Setup,
    /// Say what is missing and why, without changing anything.
    Doctor,
    /// Build the agent (and with it the embedded eBPF object).
    Build {
        #[arg(long)]
        release: bool,
    },
    /// Run Sluice in a local lab of network namespaces until Ctrl-C.
    Run(run::Args),
    /// Run every test: unit, packet (BPF_PROG_TEST_RUN) and end-to-end.
    Test(test::Args),
    /// Run a benchmark (`sync`, `dns`, `dataplane`, `north-south`) and write
    /// its table to target/bench/.
    Bench(bench::Args),
    /// Run the packet tests and an end-to-end subset in a guest booting
    /// Debian's cloud kernel of a series (`6.1`) under qemu.
    VmTest(vm::Args),
    /// Regenerate the local API server's protobuf tables
    /// (tests/apiserver/src/proto/schema.rs) from k8s-pb and k8s-openapi.
    GenProto(gen_proto::Args),
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Setup => prereqs::setup(),
        Command::Doctor => prereqs::doctor(),
        Command::Build { release } => {
            prereqs::ensure()?;
            run::build_agent(release).map(drop)
        }
        Command::Run(args) => run::run(&args),
        Command::Test(args) => test::test(&args),
        Command::Bench(args) => bench::bench(&args),
        Command::GenProto(args) => gen_proto::gen_proto(&args),
        Command::VmTest(args) => {
            prereqs::ensure()?;
            vm::vm_test(&args)
        }
    }
}
