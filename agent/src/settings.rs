//! `Settings`: every setting of `sluice run`, written once. Each is a flag
//! (clap) and the config file's key of the same name (serde, kebab-case,
//! unknown keys refused); `over` lays the flags over the file. A new setting
//! is one entry in `settings!` below and one row in the table of
//! `agent/docs/configuration.md` (`cli::tests` checks the two agree).

use std::{convert::Infallible, path::PathBuf, str::FromStr};

use serde::Deserialize;

/// A list value (interfaces, upstreams): comma-separated on the command
/// line; in the file, that or a YAML list.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum ListValue {
    Joined(String),
    List(Vec<String>),
}

impl ListValue {
    /// The items, trimmed, without empty ones.
    pub fn items(self) -> Vec<String> {
        match self {
            Self::Joined(s) => s
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect(),
            Self::List(l) => l,
        }
    }
}

impl FromStr for ListValue {
    type Err = Infallible;

    fn from_str(s: &str) -> Result<Self, Infallible> {
        Ok(Self::Joined(s.to_owned()))
    }
}

impl From<&str> for ListValue {
    fn from(s: &str) -> Self {
        Self::Joined(s.to_owned())
    }
}

/// Defines `Settings` from one list of settings: each becomes an optional
/// field (a flag and a config key), and `over` merges two field by field.
macro_rules! settings {
    ($( $(#[$attr:meta])* $field:ident : $ty:ty, )*) => {
        /// The settings of `sluice run`: its flags, and the keys of its
        /// config file. Each is optional here; `config::RunConfig` gives
        /// the defaults and validates.
        #[derive(clap::Args, Deserialize, Debug, Default, Clone)]
        #[serde(deny_unknown_fields, rename_all = "kebab-case")]
        pub struct Settings {
            /// YAML config file; every flag below is also a key there.
            #[arg(long)]
            #[serde(skip)]
            pub config: Option<PathBuf>,
            $( $(#[$attr])* pub $field: Option<$ty>, )*
        }

        impl Settings {
            /// `self` laid over `under`: a setting given in `self` wins.
            #[must_use]
            pub fn over(self, under: Self) -> Self {
                Self {
                    config: self.config.or(under.config),
                    $( $field: self.$field.or(under.$field), )*
                }
            }
        }
    };
}

settings! {
    /// Directory of Service and EndpointSlice manifests, watched for changes.
    #[arg(long)]
    manifests: PathBuf,
    /// Watch Services and EndpointSlices through this kubeconfig. Without it
    /// (and without `--manifests`), in-cluster configuration is used.
    #[arg(long)]
    kubeconfig: PathBuf,
    /// This node's name: its Node object is watched.
    #[arg(long, env = "NODE_NAME")]
    node_name: String,
    /// `/healthz` and `/readyz` (kube-proxy's healthz port).
    #[arg(long)]
    health_listen: std::net::SocketAddr,
    /// In-cluster credentials (token, ca.crt, namespace).
    #[arg(long)]
    service_account_dir: PathBuf,
    /// Pod-facing interfaces: comma-separated names or globs, e.g. `veth*,eth0`.
    #[arg(long)]
    interfaces: ListValue,
    /// Node-facing interfaces for the XDP program (NodePorts, external and
    /// load balancer addresses from outside): names or globs. Default: the
    /// interfaces holding the node's addresses, but loopback and
    /// `--interfaces`.
    #[arg(long)]
    external_interfaces: ListValue,
    /// How XDP attaches: `auto` (native, else generic), `native` or
    /// `generic`; or `tc`: no XDP, external traffic is handled in TC at
    /// the interfaces' ingress.
    #[arg(long)]
    xdp_mode: String,
    /// How TC programs attach: `auto` (TCX where the kernel has it, Linux
    /// 6.6 and later; else netlink), `tcx`, or `netlink` (a clsact qdisc
    /// and a direct-action filter of fixed priority and handle).
    #[arg(long)]
    tc_attach: String,
    /// The NodePort range `MIN-MAX` (default 30000-32767): reserved for
    /// NodePorts among the node's local ports, and never a SNAT port.
    #[arg(long)]
    nodeport_range: String,
    /// Which node addresses serve NodePorts: CIDRs of either family and the
    /// word `primary` (the IPv4 source address of the default route), comma-separated
    /// (kube-proxy's `nodePortAddresses`). Default: every node address.
    #[arg(long, value_name = "CIDR|primary[,…]")]
    nodeport_addresses: ListValue,
    /// The ports flows from outside to backends on other nodes are SNATed
    /// to, `MIN-MAX` (default 61000-65535): reserved among the node's local
    /// ports, apart from the NodePort range.
    #[arg(long)]
    snat_port_range: String,
    /// Maglev table size, a prime from 251 to 131071 (default 16381);
    /// frontends with many backends get larger tables.
    #[arg(long)]
    maglev_table_size: u32,
    /// Service CIDR, or one per IP family comma-separated: reject unallocated
    /// addresses in it and unknown ports of ClusterIPs.
    #[arg(long)]
    service_cidr: String,
    /// bpffs directory for the pinned maps and links (mounted if needed).
    #[arg(long)]
    pin_dir: PathBuf,
    /// Conntrack entries over all its maps, per IP family (two per flow;
    /// default: 0.25 % of the node's memory, at least 262144). Split between
    /// east-west and north-south, TCP and other protocols, established and
    /// new flows.
    #[arg(long)]
    conntrack_size: u32,
    /// Frontends (a Service port on one address) and ClusterIPs the maps
    /// hold (default 131072; about 300 bytes each, plus 24 per CPU).
    /// Services that do not fit are left out whole, oldest first kept.
    #[arg(long)]
    max_frontends: u32,
    /// Backends over all frontends (default 524288; about 250 bytes each,
    /// plus 24 per CPU).
    #[arg(long)]
    max_backends: u32,
    /// Seconds between conntrack garbage collections (default 10).
    #[arg(long)]
    conntrack_gc_interval: u32,
    /// Seconds a TCP flow lives without traffic before its handshake
    /// completes (default 60).
    #[arg(long)]
    conntrack_lifetime_syn: u32,
    /// Seconds an established TCP flow lives without traffic (default 21600).
    #[arg(long)]
    conntrack_lifetime_established: u32,
    /// Seconds a TCP flow lives without traffic after a FIN or RST (default 10).
    #[arg(long)]
    conntrack_lifetime_closing: u32,
    /// Seconds a UDP flow lives without traffic before a reply (default 30).
    #[arg(long)]
    conntrack_lifetime_udp: u32,
    /// Seconds a UDP flow lives without traffic once replied (default 120).
    #[arg(long)]
    conntrack_lifetime_udp_replied: u32,
    /// Series per Service frontend in `/metrics` (default false: node-level
    /// series only, as kube-proxy has; per-backend detail is in `sluice
    /// status`)
    #[arg(long, action = clap::ArgAction::Set, value_name = "true|false")]
    metrics_per_service: bool,
    /// With `--metrics-per-service true`, series for only the N frontends
    /// with the most packets, chosen again at each walk of the maps
    /// (default: every frontend).
    #[arg(long, value_name = "N")]
    metrics_per_service_top: u32,
    /// Socket LB: `connect()` and sends to ClusterIPs from processes in the
    /// cgroup go straight to a backend (default true)
    #[arg(long, action = clap::ArgAction::Set, value_name = "true|false")]
    socket_lb: bool,
    /// The cgroup (v2) directory socket LB attaches to (default: the root
    /// of the cgroup2 mount, i.e. every process on the node)
    #[arg(long)]
    cgroup_path: PathBuf,
    /// Serve cluster DNS on this address (made local to the node; passed
    /// untouched by the dataplane), UDP and TCP port 53; or on up to three,
    /// comma-separated: the node-local one and kube-dns's ClusterIPs (one
    /// per family, at most two IPv4 addresses and one IPv6), which the
    /// dataplane then passes untouched too (NodeLocal DNSCache's setup).
    #[arg(long, value_name = "IP[,IP[,IP]]")]
    dns_ip: ListValue,
    /// The cluster domain (default `cluster.local`).
    #[arg(long)]
    cluster_domain: String,
    /// TTL of cluster records, in seconds (default 5, as CoreDNS).
    #[arg(long)]
    dns_ttl: u32,
    /// Upstream DNS servers for other names: comma-separated `IP` or
    /// `IP:port`. Default: the nameservers of /etc/resolv.conf at start.
    #[arg(long)]
    upstream: ListValue,
    /// Names in ZONE (and below) go to these upstreams instead of the
    /// default ones (CoreDNS's per-zone `forward`, kube-dns's stub
    /// domains); repeatable; the longest zone wins.
    #[arg(long, value_name = "ZONE=IP[:PORT][,IP[:PORT]…]")]
    forward_zone: Vec<String>,
    /// Pod records `a-b-c-d.<ns>.pod.<zone>`: `insecure` (default, as the
    /// Kubernetes Corefile's `pods insecure`: the address the name spells)
    /// or `disabled` (NXDOMAIN).
    #[arg(long, value_name = "insecure|disabled")]
    dns_pods: String,
    /// Name an endpoint without a hostname by its pod in DNS
    /// (`<pod>.<svc>.<ns>.svc.<zone>`), as CoreDNS's `endpoint_pod_names`
    /// (default false: its dashed address)
    #[arg(long, action = clap::ArgAction::Set, value_name = "true|false")]
    dns_endpoint_pod_names: bool,
    /// Forward over UDP first even for a TCP client (CoreDNS's
    /// `prefer_udp`; default false: the client's protocol)
    #[arg(long, action = clap::ArgAction::Set, value_name = "true|false")]
    dns_prefer_udp: bool,
    /// Forward over TCP always (CoreDNS's `force_tcp`; default false)
    #[arg(long, action = clap::ArgAction::Set, value_name = "true|false")]
    dns_force_tcp: bool,
    /// Sources DNS answers: comma-separated CIDRs or addresses. Default:
    /// the node itself (loopback and its addresses) and its pods (the
    /// routes through `--interfaces`), followed as they change. Others get
    /// REFUSED.
    #[arg(long)]
    dns_allow_cidrs: ListValue,
    /// Forwarded DNS queries one client may have waiting on an upstream
    /// (default 100); past it, REFUSED.
    #[arg(long, value_name = "N")]
    dns_max_forwards_per_client: u32,
    /// DNS TCP connections one client may have open (default 32); past it,
    /// new ones are closed.
    #[arg(long, value_name = "N")]
    dns_max_tcp_per_client: u32,
    /// Bytes the DNS forward cache and the UDP workers' memos may hold,
    /// half each (default 33554432, 32 MiB; at least 1 MiB).
    #[arg(long, value_name = "BYTES")]
    dns_cache_bytes: u64,
    /// Kubelet TLS bootstrapping: a kubeconfig with a bootstrap token (or
    /// token-file) user, used when there is no valid client certificate.
    #[arg(long)]
    bootstrap_kubeconfig: PathBuf,
    /// The kubelet kubeconfig the agent writes and keeps pointing at the
    /// current client certificate (default /var/lib/kubelet/kubeconfig).
    #[arg(long)]
    kubelet_kubeconfig: PathBuf,
    /// Where the kubelet's certificates live (default /var/lib/kubelet/pki).
    #[arg(long)]
    cert_dir: PathBuf,
    /// The secure port, HTTPS with the serving certificate (default
    /// 0.0.0.0:10250; only with certificate management).
    #[arg(long)]
    secure_listen: std::net::SocketAddr,
    /// CA bundle for client certificates on the secure port (default: the
    /// cluster CA of the bootstrap or kubelet kubeconfig).
    #[arg(long)]
    client_ca_file: PathBuf,
    /// Requests to the secure port without credentials are authorized as
    /// `system:anonymous` instead of refused with 401 (default false)
    #[arg(long, action = clap::ArgAction::Set, value_name = "true|false")]
    anonymous_auth: bool,
    /// The secure port's lowest TLS version: `VersionTLS12` (default) or
    /// `VersionTLS13`.
    #[arg(long)]
    tls_min_version: String,
    /// The secure port's TLS 1.2 cipher suites, comma-separated IANA names
    /// (default: the TLS library's); TLS 1.3 suites are always offered.
    #[arg(long)]
    tls_cipher_suites: ListValue,
    /// A plain-HTTP port with /healthz and /metrics only (default: off).
    #[arg(long)]
    read_only_listen: std::net::SocketAddr,
    /// Log filter (`info`, `debug`, …); `RUST_LOG` overrides it.
    #[arg(long)]
    log_level: String,
}
