//! `sluice-bench`: Sluice's benchmarks, run by `cargo xtask bench`. Each
//! measures, prints a table and writes it to a file; none asserts anything
//! (targets are printed next to the numbers, for a person to read).

mod dataplane;
mod dns;
mod north_south;
mod stats;
mod sync;

use anyhow::{Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "sluice-bench",
    about = "Sluice benchmarks (run by `cargo xtask bench`)"
)]
struct Cli {
    #[command(subcommand)]
    bench: Bench,
}

#[derive(Subcommand)]
enum Bench {
    /// The control loop against the local API server: time to ready, update
    /// latency, map writes per change and memory, at several scales.
    Sync(sync::Args),
    /// Cluster DNS: dnsperf against Sluice, NSD, Unbound and dnsmasq.
    Dns(dns::Args),
    /// The Service dataplane against kube-proxy's iptables, nftables and
    /// IPVS modes and no Service at all.
    Dataplane(dataplane::Args),
    /// NodePort forwarding in packets per second: Sluice's XDP and TC
    /// paths against iptables DNAT and plain routing.
    NorthSouth(north_south::Args),
    /// (Internal) the load of one dataplane measurement, from this process.
    #[command(hide = true)]
    Load {
        tcp: std::net::SocketAddr,
        udp: std::net::SocketAddr,
        seconds: f64,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    if !sluice_lab::privileged() {
        bail!("the benchmarks need root: they create network namespaces and load BPF programs");
    }
    if let Bench::Load { tcp, udp, seconds } = cli.bench {
        return dataplane::load_command(tcp, udp, seconds);
    }
    sluice_lab::reap_stale();
    match cli.bench {
        Bench::Sync(args) => sync::run(&args),
        Bench::Dns(args) => dns::run(&args),
        Bench::Dataplane(args) => dataplane::run(&args),
        Bench::NorthSouth(args) => north_south::run(&args),
        Bench::Load { .. } => Ok(()),
    }
}
