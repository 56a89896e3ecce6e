//! The agent's configuration: one YAML file whose keys are the flags of
//! `sluice run` (kebab-case), merged with the command line (flags win).

use std::{
    fs,
    net::{IpAddr, Ipv4Addr},
    path::{Path, PathBuf},
};

use sluice_abi::{config::DataplaneConfig, conntrack::Lifetimes};
use thiserror::Error;

use crate::{
    certs::CertConfig,
    cli::DEFAULT_PIN_DIR,
    dns::DnsConfig,
    interfaces::{InterfaceMatcher, PatternError},
    settings::{ListValue, Settings},
};

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read config file `{}`", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config file `{}`: {source}", path.display())]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_yaml::Error,
    },
    #[error(
        "no Service source: give `--manifests DIR` or `--kubeconfig FILE` (or run in a Pod, with KUBERNETES_SERVICE_HOST set)"
    )]
    NoSource,
    #[error("`manifests` and `kubeconfig` are two Service sources; give one")]
    TwoSources,
    #[error("no interfaces: give `--interfaces LIST` (or `interfaces:` in the config file)")]
    NoInterfaces,
    #[error(
        "`service-cidr`: `{0}` is not one CIDR, or one of each IP family comma-separated, such as 10.96.0.0/12,fd00:96::/108"
    )]
    ServiceCidr(String),
    #[error("`metrics-per-service-top` needs `metrics-per-service: true`")]
    TopWithoutPerService,
    #[error("`metrics-per-service-top` must be at least 1")]
    TopZero,
    #[error("`conntrack-size` must be at least 4096")]
    ConntrackSize,
    #[error("`{0}` must be from 16 to 16777216")]
    Capacity(&'static str),
    #[error("`{0}` must be from 1 to 604800 seconds (a week)")]
    Seconds(&'static str),
    #[error("socket LB needs a cgroup: give `cgroup-path` or `socket-lb: false`")]
    NoCgroup(#[source] std::io::Error),
    #[error("`interfaces`")]
    Interfaces(#[source] PatternError),
    #[error("`external-interfaces`")]
    ExternalInterfaces(#[source] PatternError),
    #[error("`xdp-mode`: `{0}` is not auto, native, generic or tc")]
    XdpMode(String),
    #[error("`tc-attach`: `{0}` is not auto, tcx or netlink")]
    TcAttach(String),
    #[error("`nodeport-addresses`: {0}")]
    NodePortAddresses(String),
    #[error("`nodeport-range`: `{0}` is not a range MIN-MAX of ports such as 30000-32767")]
    NodePortRange(String),
    #[error(
        "`snat-port-range`: `{0}` is not a range MIN-MAX of ports above 1023, apart from the NodePort range"
    )]
    SnatPortRange(String),
    #[error("`maglev-table-size`: {0} is not a prime from 251 to 131071")]
    MaglevSize(u32),
    #[error("`dns-ttl` must be at most 3600 seconds")]
    DnsTtl,
    #[error("`upstream`: `{0}` is not an IP address or IP:port")]
    Upstream(String),
    #[error("cannot read the upstream DNS servers from `{}`", path.display())]
    ResolvConf {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the DNS settings (`cluster-domain`, `dns-ttl`, `upstream`, `forward-zone`, `dns-*`) need `dns-ip`"
    )]
    DnsWithoutIp,
    #[error("`forward-zone` `{0}`: give ZONE=IP[:PORT][,IP[:PORT]…], e.g. corp.example=10.0.0.53")]
    ForwardZone(String),
    #[error(
        "`dns-ip`: one to three addresses (the node-local one, and kube-dns's ClusterIPs), at most two IPv4 and one IPv6"
    )]
    DnsIp,
    #[error("`dns-pods` `{0}`: insecure or disabled")]
    DnsPods(String),
    #[error("`dns-prefer-udp` and `dns-force-tcp` exclude each other")]
    DnsProtocols,
    #[error("`dns-allow-cidrs`: {0}")]
    DnsAllow(String),
    #[error("`{0}` must be at least 1")]
    DnsShare(&'static str),
    #[error("`dns-cache-bytes` {0} is below 1 MiB (1048576)")]
    DnsCacheBytes(u64),
    #[error("certificate management needs the node's name: give `--node-name` (or NODE_NAME)")]
    CertsWithoutNode,
    #[error(
        "`anonymous-auth`, `tls-min-version` and `tls-cipher-suites` are for the secure port, which needs certificate management (`--bootstrap-kubeconfig`, `--kubelet-kubeconfig` or `--cert-dir`)"
    )]
    SecurePortWithoutCerts,
    #[error("the secure port's TLS: {0}")]
    Tls(String),
}

/// Where Services and EndpointSlices come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Manifests(PathBuf),
    Kubeconfig(PathBuf),
    /// In-cluster configuration, credentials in this directory.
    InCluster(PathBuf),
}

/// kube-proxy's healthz port.
pub const DEFAULT_HEALTH_LISTEN: std::net::SocketAddr =
    std::net::SocketAddr::V4(std::net::SocketAddrV4::new(Ipv4Addr::LOCALHOST, 10256));

/// Everything `sluice run` needs, validated.
#[derive(Debug)]
pub struct RunConfig {
    pub node_name: Option<String>,
    pub health_listen: std::net::SocketAddr,
    /// Series per Service frontend in `/metrics` (`--metrics-per-service`).
    pub metrics_per_service: crate::status::PerService,
    /// The Service dataplane and DNS; `None` when only certificates are
    /// managed.
    pub services: Option<ServicesConfig>,
    pub certs: Option<CertConfig>,
    /// The plain-HTTP read-only port, when asked for.
    pub read_only_listen: Option<std::net::SocketAddr>,
}

/// The Service source, the dataplane and DNS.
#[derive(Debug)]
pub struct ServicesConfig {
    pub source: Source,
    pub interfaces: InterfaceMatcher,
    /// The XDP program's interfaces; `None`: those holding node addresses.
    pub external_interfaces: Option<InterfaceMatcher>,
    /// The NodePort range, inclusive.
    pub nodeport_range: (u16, u16),
    /// Which node addresses serve NodePorts.
    pub nodeport_addresses: crate::external::NodePortAddresses,
    /// The SNAT ports, inclusive.
    pub snat_ports: (u16, u16),
    /// How the dataplane is loaded.
    pub dataplane: crate::dataplane::Options,
    pub dns: Option<DnsConfig>,
}

/// Where the default upstreams come from.
const RESOLV_CONF: &str = "/etc/resolv.conf";

impl RunConfig {
    pub fn from_args(args: Settings) -> Result<Self, ConfigError> {
        let file = match &args.config {
            Some(path) => load(path)?,
            None => Settings::default(),
        };
        let mut c = args.over(file);
        let certs = cert_config(
            [
                c.bootstrap_kubeconfig.take(),
                c.kubelet_kubeconfig.take(),
                c.cert_dir.take(),
                c.client_ca_file.take(),
            ],
            c.secure_listen,
            c.node_name.as_deref(),
            (
                c.anonymous_auth.take(),
                c.tls_min_version.take(),
                c.tls_cipher_suites.take(),
            ),
        )?;
        // Certificate flags alone: the agent manages certificates only.
        let certs_only = certs.is_some()
            && c.manifests.is_none()
            && c.kubeconfig.is_none()
            && c.interfaces.is_none()
            && std::env::var_os("KUBERNETES_SERVICE_HOST").is_none();
        Ok(Self {
            health_listen: c.health_listen.unwrap_or(DEFAULT_HEALTH_LISTEN),
            metrics_per_service: per_service(&c)?,
            read_only_listen: c.read_only_listen,
            services: if certs_only {
                None
            } else {
                Some(services_config(&mut c)?)
            },
            node_name: c.node_name,
            certs,
        })
    }
}

/// The Service source, interfaces, dataplane and DNS of merged settings.
fn services_config(c: &mut Settings) -> Result<ServicesConfig, ConfigError> {
    let source = match (c.manifests.take(), c.kubeconfig.take()) {
        (Some(_), Some(_)) => return Err(ConfigError::TwoSources),
        (Some(dir), None) => Source::Manifests(dir),
        (None, Some(path)) => Source::Kubeconfig(path),
        (None, None) if std::env::var_os("KUBERNETES_SERVICE_HOST").is_some() => Source::InCluster(
            c.service_account_dir
                .take()
                .unwrap_or_else(|| crate::source::apiserver::SERVICE_ACCOUNT_DIR.into()),
        ),
        (None, None) => return Err(ConfigError::NoSource),
    };
    let interfaces = interface_matcher(c.interfaces.take())?;
    let external_interfaces = match c.external_interfaces.take() {
        None => None,
        Some(list) => {
            Some(InterfaceMatcher::new(&list.items()).map_err(ConfigError::ExternalInterfaces)?)
        }
    };
    let xdp_mode = match c.xdp_mode.take().as_deref() {
        None | Some("auto") => crate::dataplane::XdpAttach::Auto,
        Some("native") => crate::dataplane::XdpAttach::Native,
        Some("generic") => crate::dataplane::XdpAttach::Generic,
        Some("tc") => crate::dataplane::XdpAttach::Tc,
        Some(other) => return Err(ConfigError::XdpMode(other.to_owned())),
    };
    let tc_attach = match c.tc_attach.take().as_deref() {
        None | Some("auto") => crate::dataplane::TcAttach::Auto,
        Some("tcx") => crate::dataplane::TcAttach::Tcx,
        Some("netlink") => crate::dataplane::TcAttach::Netlink,
        Some(other) => return Err(ConfigError::TcAttach(other.to_owned())),
    };
    let nodeport_addresses = match c.nodeport_addresses.take() {
        None => crate::external::NodePortAddresses::All,
        Some(list) => crate::external::NodePortAddresses::parse(&list.items())
            .map_err(ConfigError::NodePortAddresses)?,
    };
    let nodeport_range = match c.nodeport_range.take() {
        None => DEFAULT_NODEPORT_RANGE,
        Some(r) => parse_port_range(&r).ok_or(ConfigError::NodePortRange(r))?,
    };
    let snat_ports = match c.snat_port_range.take() {
        None => sluice_abi::config::DEFAULT_SNAT_PORTS,
        Some(r) => parse_port_range(&r)
            .filter(|&(min, max)| min > 1023 && (max < nodeport_range.0 || min > nodeport_range.1))
            .ok_or(ConfigError::SnatPortRange(r))?,
    };
    let maglev_size = c
        .maglev_table_size
        .unwrap_or(sluice_abi::maglev::DEFAULT_TABLE_SIZE);
    if !(251..=131_071).contains(&maglev_size) || !sluice_abi::maglev::is_prime(maglev_size) {
        return Err(ConfigError::MaglevSize(maglev_size));
    }
    let dns = dns_config(c)?;
    let dataplane = dataplane_config(c.service_cidr.take(), dns.as_ref())?
        .with_nodeport_range(nodeport_range.0, nodeport_range.1)
        .with_snat_ports(snat_ports.0, snat_ports.1)
        .with_lifetimes(lifetimes(c)?);
    let conntrack_size = c
        .conntrack_size
        .unwrap_or_else(crate::dataplane::conntrack::default_size);
    if conntrack_size < 4096 {
        return Err(ConfigError::ConntrackSize);
    }
    let (max_frontends, max_backends) = capacities(c)?;
    let conntrack_gc_interval = std::time::Duration::from_secs(u64::from(seconds(
        "conntrack-gc-interval",
        c.conntrack_gc_interval,
        10,
    )?));
    let socket_lb = socket_lb(c)?;
    Ok(ServicesConfig {
        source,
        interfaces,
        external_interfaces,
        nodeport_range,
        nodeport_addresses,
        snat_ports,
        dataplane: crate::dataplane::Options {
            pin_dir: c.pin_dir.take().unwrap_or_else(|| DEFAULT_PIN_DIR.into()),
            conntrack_size,
            conntrack_gc_interval,
            config: dataplane,
            socket_lb,
            xdp_mode,
            tc_attach,
            maglev_size,
            max_frontends,
            max_backends,
        },
        dns,
    })
}

/// Socket LB's cgroup (`cgroup-path`, else the cgroup2 root); `None` with
/// `socket-lb: false`.
fn socket_lb(c: &mut Settings) -> Result<Option<PathBuf>, ConfigError> {
    if !c.socket_lb.unwrap_or(true) {
        return Ok(None);
    }
    match c.cgroup_path.take() {
        Some(path) => Ok(Some(path)),
        None => crate::dataplane::sock::cgroup2_root()
            .map(Some)
            .map_err(ConfigError::NoCgroup),
    }
}

/// The conntrack lifetimes, each from 1 s to a week.
fn lifetimes(c: &Settings) -> Result<Lifetimes, ConfigError> {
    let d = Lifetimes::DEFAULT;
    Ok(Lifetimes {
        syn_s: seconds("conntrack-lifetime-syn", c.conntrack_lifetime_syn, d.syn_s)?,
        established_s: seconds(
            "conntrack-lifetime-established",
            c.conntrack_lifetime_established,
            d.established_s,
        )?,
        closing_s: seconds(
            "conntrack-lifetime-closing",
            c.conntrack_lifetime_closing,
            d.closing_s,
        )?,
        other_s: seconds(
            "conntrack-lifetime-udp",
            c.conntrack_lifetime_udp,
            d.other_s,
        )?,
        other_replied_s: seconds(
            "conntrack-lifetime-udp-replied",
            c.conntrack_lifetime_udp_replied,
            d.other_replied_s,
        )?,
        _pad: 0,
    })
}

/// Which frontends get series of their own in `/metrics`.
fn per_service(c: &Settings) -> Result<crate::status::PerService, ConfigError> {
    use crate::status::PerService;
    match (
        c.metrics_per_service.unwrap_or(false),
        c.metrics_per_service_top,
    ) {
        (false, None) => Ok(PerService::Off),
        (false, Some(_)) => Err(ConfigError::TopWithoutPerService),
        (true, None) => Ok(PerService::All),
        (true, Some(0)) => Err(ConfigError::TopZero),
        (true, Some(n)) => Ok(PerService::Top(usize::try_from(n).unwrap_or(usize::MAX))),
    }
}

/// A number of seconds from 1 to 604800 (`default` when not given).
fn seconds(key: &'static str, value: Option<u32>, default: u32) -> Result<u32, ConfigError> {
    let s = value.unwrap_or(default);
    if (1..=604_800).contains(&s) {
        Ok(s)
    } else {
        Err(ConfigError::Seconds(key))
    }
}

fn dataplane_config(
    service_cidr: Option<String>,
    dns: Option<&DnsConfig>,
) -> Result<DataplaneConfig, ConfigError> {
    let mut dataplane = DataplaneConfig::default();
    if let Some(cidrs) = service_cidr {
        // One range per family, as kube-apiserver's and kube-proxy's.
        let bad = || ConfigError::ServiceCidr(cidrs.clone());
        let (mut v4, mut v6) = (None, None);
        for cidr in cidrs.split(',').map(str::trim) {
            match crate::cidr::parse_ip(cidr).ok_or_else(bad)? {
                (IpAddr::V4(net), len) if v4.is_none() => v4 = Some((net, len)),
                (IpAddr::V6(net), len) if v6.is_none() => v6 = Some((net, len)),
                _ => return Err(bad()),
            }
        }
        if let Some((net, len)) = v4 {
            dataplane = DataplaneConfig::with_service_cidr(net, len);
        }
        if let Some((net, len)) = v6 {
            dataplane = dataplane.with_service_cidr6(net, len);
        }
    }
    // The DNS addresses are the agent's own: the dataplane passes them.
    for ip in dns.iter().flat_map(|d| &d.ips) {
        dataplane = match ip {
            IpAddr::V4(ip) => dataplane.with_local_ip(*ip),
            IpAddr::V6(ip) => dataplane.with_local_ip6(*ip),
        };
    }
    Ok(dataplane)
}

fn interface_matcher(list: Option<ListValue>) -> Result<InterfaceMatcher, ConfigError> {
    let interfaces = list.ok_or(ConfigError::NoInterfaces)?.items();
    if interfaces.is_empty() {
        return Err(ConfigError::NoInterfaces);
    }
    InterfaceMatcher::new(&interfaces).map_err(ConfigError::Interfaces)
}

/// Certificate management, when any of its settings is given: the
/// bootstrap kubeconfig, kubelet kubeconfig, cert dir and client CA file.
fn cert_config(
    [
        bootstrap_kubeconfig,
        kubelet_kubeconfig,
        cert_dir,
        client_ca_file,
    ]: [Option<PathBuf>; 4],
    secure_listen: Option<std::net::SocketAddr>,
    node_name: Option<&str>,
    (anonymous_auth, tls_min_version, tls_cipher_suites): (
        Option<bool>,
        Option<String>,
        Option<ListValue>,
    ),
) -> Result<Option<CertConfig>, ConfigError> {
    if bootstrap_kubeconfig.is_none() && kubelet_kubeconfig.is_none() && cert_dir.is_none() {
        if anonymous_auth.is_some() || tls_min_version.is_some() || tls_cipher_suites.is_some() {
            return Err(ConfigError::SecurePortWithoutCerts);
        }
        return Ok(None);
    }
    let tls = crate::servers::kubelet::TlsPolicy::new(
        tls_min_version.as_deref(),
        tls_cipher_suites.map(ListValue::items).unwrap_or_default(),
    )
    .map_err(ConfigError::Tls)?;
    Ok(Some(CertConfig {
        bootstrap_kubeconfig,
        kubelet_kubeconfig: kubelet_kubeconfig
            .unwrap_or_else(|| crate::certs::DEFAULT_KUBELET_KUBECONFIG.into()),
        cert_dir: cert_dir.unwrap_or_else(|| crate::certs::DEFAULT_CERT_DIR.into()),
        node_name: node_name.ok_or(ConfigError::CertsWithoutNode)?.to_owned(),
        secure_listen: secure_listen.unwrap_or(crate::certs::DEFAULT_SECURE_LISTEN),
        client_ca_file,
        anonymous_auth: anonymous_auth.unwrap_or(false),
        tls,
    }))
}

/// The log level from the config file, for logging set up before the rest.
pub fn file_log_level(path: &Path) -> Option<String> {
    load(path).ok().and_then(|f| f.log_level)
}

fn load(path: &Path) -> Result<Settings, ConfigError> {
    let text = fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.into(),
        source,
    })?;
    if text.trim().is_empty() {
        return Ok(Settings::default());
    }
    serde_yaml::from_str(&text).map_err(|source| ConfigError::Parse {
        path: path.into(),
        source,
    })
}

/// Kubernetes' default `--service-node-port-range`.
pub const DEFAULT_NODEPORT_RANGE: (u16, u16) = (30_000, 32_767);

fn parse_port_range(range: &str) -> Option<(u16, u16)> {
    let (min, max) = range.trim().split_once('-')?;
    let (min, max): (u16, u16) = (min.trim().parse().ok()?, max.trim().parse().ok()?);
    (min >= 1 && min <= max).then_some((min, max))
}

/// `max-frontends` and `max-backends`, from 16 to 2^24.
fn capacities(c: &Settings) -> Result<(u32, u32), ConfigError> {
    let capacity = |name, value: Option<u32>, default| {
        let n = value.unwrap_or(default);
        (16..=1 << 24)
            .contains(&n)
            .then_some(n)
            .ok_or(ConfigError::Capacity(name))
    };
    Ok((
        capacity(
            "max-frontends",
            c.max_frontends,
            sluice_abi::maps::MAX_SERVICES,
        )?,
        capacity(
            "max-backends",
            c.max_backends,
            sluice_abi::maps::MAX_BACKENDS,
        )?,
    ))
}

mod dns;
use dns::dns_config;

#[cfg(test)]
mod tests;
