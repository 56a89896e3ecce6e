//! Command-line interface. Every `run` flag is also a key of the config file
//! (`config.rs`); a flag given on the command line wins.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

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
    Run(Box<RunArgs>),
    /// Print the Services, backends and counters from the pinned maps.
    Status(StatusArgs),
    /// Show drops, rejects and new flows as they happen (from a ring buffer
    /// the programs write to while a monitor runs).
    Monitor(MonitorArgs),
    /// Remove the programs, links and pinned maps (like `kube-proxy --cleanup`).
    Cleanup(PinDirArgs),
}

#[derive(Args, Debug, Default)]
pub struct RunArgs {
    /// YAML config file; every flag below is also a key there.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Directory of Service and EndpointSlice manifests, watched for changes.
    #[arg(long)]
    pub manifests: Option<PathBuf>,
    /// Watch Services and EndpointSlices through this kubeconfig. Without it
    /// (and without `--manifests`), in-cluster configuration is used.
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// This node's name: its Node object is watched.
    #[arg(long, env = "NODE_NAME")]
    pub node_name: Option<String>,
    /// `/healthz` and `/readyz` (kube-proxy's healthz port).
    #[arg(long)]
    pub health_listen: Option<std::net::SocketAddr>,
    /// In-cluster credentials (token, ca.crt, namespace).
    #[arg(long)]
    pub service_account_dir: Option<PathBuf>,
    /// Pod-facing interfaces: comma-separated names or globs, e.g. `veth*,eth0`.
    #[arg(long)]
    pub interfaces: Option<String>,
    /// Node-facing interfaces for the XDP program (NodePorts, external and
    /// load balancer addresses from outside): names or globs. Default: the
    /// interfaces holding the node's addresses, but loopback and
    /// `--interfaces`.
    #[arg(long)]
    pub external_interfaces: Option<String>,
    /// How XDP attaches: `auto` (native, else generic), `native` or
    /// `generic`; or `tc`: no XDP, external traffic is handled in TC at
    /// the interfaces' ingress.
    #[arg(long)]
    pub xdp_mode: Option<String>,
    /// How TC programs attach: `auto` (TCX where the kernel has it, Linux
    /// 6.6 and later; else netlink), `tcx`, or `netlink` (a clsact qdisc
    /// and a direct-action filter of fixed priority and handle).
    #[arg(long)]
    pub tc_attach: Option<String>,
    /// The NodePort range `MIN-MAX` (default 30000-32767): reserved for
    /// NodePorts among the node's local ports, and never a SNAT port.
    #[arg(long)]
    pub nodeport_range: Option<String>,
    /// The ports flows from outside to backends on other nodes are SNATed
    /// to, `MIN-MAX` (default 61000-65535): reserved among the node's local
    /// ports, apart from the NodePort range.
    #[arg(long)]
    pub snat_port_range: Option<String>,
    /// Maglev table size, a prime from 251 to 131071 (default 16381);
    /// frontends with many backends get larger tables.
    #[arg(long)]
    pub maglev_table_size: Option<u32>,
    /// Service CIDR: reject unallocated addresses in it and unknown ports of ClusterIPs.
    #[arg(long)]
    pub service_cidr: Option<String>,
    /// bpffs directory for the pinned maps and links (mounted if needed).
    #[arg(long)]
    pub pin_dir: Option<PathBuf>,
    /// Conntrack entries over all its maps (two per flow; default: 0.25 %
    /// of the node's memory, at least 262144). Split between east-west and
    /// north-south, TCP and other protocols, established and new flows.
    #[arg(long)]
    pub conntrack_size: Option<u32>,
    /// Frontends (a Service port on one address) and ClusterIPs the maps
    /// hold (default 131072; about 300 bytes each, plus 24 per CPU).
    /// Services that do not fit are left out whole, oldest first kept.
    #[arg(long)]
    pub max_frontends: Option<u32>,
    /// Backends over all frontends (default 524288; about 250 bytes each,
    /// plus 24 per CPU).
    #[arg(long)]
    pub max_backends: Option<u32>,
    /// Seconds between conntrack garbage collections (default 10).
    #[arg(long)]
    pub conntrack_gc_interval: Option<u32>,
    /// Seconds a TCP flow lives without traffic before its handshake
    /// completes (default 60).
    #[arg(long)]
    pub conntrack_lifetime_syn: Option<u32>,
    /// Seconds an established TCP flow lives without traffic (default 21600).
    #[arg(long)]
    pub conntrack_lifetime_established: Option<u32>,
    /// Seconds a TCP flow lives without traffic after a FIN or RST (default 10).
    #[arg(long)]
    pub conntrack_lifetime_closing: Option<u32>,
    /// Seconds a UDP flow lives without traffic before a reply (default 30).
    #[arg(long)]
    pub conntrack_lifetime_udp: Option<u32>,
    /// Seconds a UDP flow lives without traffic once replied (default 120).
    #[arg(long)]
    pub conntrack_lifetime_udp_replied: Option<u32>,
    /// Series per Service frontend in `/metrics` (default false: node-level
    /// series only, as kube-proxy has; per-backend detail is in `sluice
    /// status`)
    #[arg(long, action = clap::ArgAction::Set, value_name = "true|false")]
    pub metrics_per_service: Option<bool>,
    /// Socket LB: `connect()` and sends to ClusterIPs from processes in the
    /// cgroup go straight to a backend (default true)
    #[arg(long, action = clap::ArgAction::Set, value_name = "true|false")]
    pub socket_lb: Option<bool>,
    /// The cgroup (v2) directory socket LB attaches to (default: the root
    /// of the cgroup2 mount, i.e. every process on the node)
    #[arg(long)]
    pub cgroup_path: Option<PathBuf>,
    /// Serve cluster DNS on this address (made local to the node; passed
    /// untouched by the dataplane), UDP and TCP port 53.
    #[arg(long)]
    pub dns_ip: Option<std::net::IpAddr>,
    /// The cluster domain (default `cluster.local`).
    #[arg(long)]
    pub cluster_domain: Option<String>,
    /// TTL of cluster records, in seconds (default 5, as CoreDNS).
    #[arg(long)]
    pub dns_ttl: Option<u32>,
    /// Upstream DNS servers for other names: comma-separated `IP` or
    /// `IP:port`. Default: the nameservers of /etc/resolv.conf at start.
    #[arg(long)]
    pub upstream: Option<String>,
    /// Kubelet TLS bootstrapping: a kubeconfig with a bootstrap token (or
    /// token-file) user, used when there is no valid client certificate.
    #[arg(long)]
    pub bootstrap_kubeconfig: Option<PathBuf>,
    /// The kubelet kubeconfig the agent writes and keeps pointing at the
    /// current client certificate (default /var/lib/kubelet/kubeconfig).
    #[arg(long)]
    pub kubelet_kubeconfig: Option<PathBuf>,
    /// Where the kubelet's certificates live (default /var/lib/kubelet/pki).
    #[arg(long)]
    pub cert_dir: Option<PathBuf>,
    /// The secure port, HTTPS with the serving certificate (default
    /// 0.0.0.0:10250; only with certificate management).
    #[arg(long)]
    pub secure_listen: Option<std::net::SocketAddr>,
    /// CA bundle for client certificates on the secure port (default: the
    /// cluster CA of the bootstrap or kubelet kubeconfig).
    #[arg(long)]
    pub client_ca_file: Option<PathBuf>,
    /// A plain-HTTP port with /healthz and /metrics only (default: off).
    #[arg(long)]
    pub read_only_listen: Option<std::net::SocketAddr>,
    /// Log filter (`info`, `debug`, …); `RUST_LOG` overrides it.
    #[arg(long)]
    pub log_level: Option<String>,
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
    pub addr: Option<std::net::Ipv4Addr>,
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

    /// The flags in the README's table of `sluice run` (rows starting with
    /// `` | `--name``), and the config key each names after ` / `.
    fn documented() -> Vec<(String, Option<String>)> {
        let readme = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"));
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
            "flags missing from the README's table: {undocumented:?}; rows for no flag: {unknown:?}"
        );
        // Every flag but `--config` has its config key, of its own name.
        for (flag, key) in rows.iter().filter(|(f, _)| f != "--config") {
            assert_eq!(
                key.as_deref(),
                flag.strip_prefix("--"),
                "the README row of {flag} names its key"
            );
        }
    }
}
