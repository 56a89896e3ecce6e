//! The agent's configuration: one YAML file whose keys are the flags of
//! `sluice run` (kebab-case), merged with the command line (flags win).

use std::{
    fs,
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use serde::Deserialize;
use sluice_abi::{config::DataplaneConfig, conntrack::Lifetimes};
use thiserror::Error;

use crate::{
    certs::CertConfig,
    cli::{DEFAULT_PIN_DIR, RunArgs},
    dns::DnsConfig,
    interfaces::{InterfaceMatcher, PatternError},
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
    #[error("`service-cidr`: `{0}` is not an IPv4 CIDR such as 10.96.0.0/12")]
    ServiceCidr(String),
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
    #[error("`cluster-domain`, `dns-ttl` and `upstream` need `dns-ip`")]
    DnsWithoutIp,
    #[error("certificate management needs the node's name: give `--node-name` (or NODE_NAME)")]
    CertsWithoutNode,
}

/// A list value (interfaces, upstreams): a comma-separated string or a YAML
/// list.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum ListValue {
    Joined(String),
    List(Vec<String>),
}

/// The config file. Unknown keys are an error that names the key.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct FileConfig {
    manifests: Option<PathBuf>,
    kubeconfig: Option<PathBuf>,
    node_name: Option<String>,
    health_listen: Option<std::net::SocketAddr>,
    metrics_per_service: Option<bool>,
    service_account_dir: Option<PathBuf>,
    interfaces: Option<ListValue>,
    external_interfaces: Option<ListValue>,
    xdp_mode: Option<String>,
    tc_attach: Option<String>,
    nodeport_range: Option<String>,
    snat_port_range: Option<String>,
    maglev_table_size: Option<u32>,
    service_cidr: Option<String>,
    pin_dir: Option<PathBuf>,
    conntrack_size: Option<u32>,
    max_frontends: Option<u32>,
    max_backends: Option<u32>,
    conntrack_gc_interval: Option<u32>,
    conntrack_lifetime_syn: Option<u32>,
    conntrack_lifetime_established: Option<u32>,
    conntrack_lifetime_closing: Option<u32>,
    conntrack_lifetime_udp: Option<u32>,
    conntrack_lifetime_udp_replied: Option<u32>,
    socket_lb: Option<bool>,
    cgroup_path: Option<PathBuf>,
    dns_ip: Option<std::net::IpAddr>,
    cluster_domain: Option<String>,
    dns_ttl: Option<u32>,
    upstream: Option<ListValue>,
    bootstrap_kubeconfig: Option<PathBuf>,
    kubelet_kubeconfig: Option<PathBuf>,
    cert_dir: Option<PathBuf>,
    secure_listen: Option<std::net::SocketAddr>,
    client_ca_file: Option<PathBuf>,
    read_only_listen: Option<std::net::SocketAddr>,
    log_level: Option<String>,
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
    pub metrics_per_service: bool,
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
    /// The SNAT ports, inclusive.
    pub snat_ports: (u16, u16),
    /// How the dataplane is loaded.
    pub dataplane: crate::dataplane::Options,
    pub dns: Option<DnsConfig>,
}

/// Where the default upstreams come from.
const RESOLV_CONF: &str = "/etc/resolv.conf";

impl RunConfig {
    pub fn from_args(args: RunArgs) -> Result<Self, ConfigError> {
        let file = match &args.config {
            Some(path) => load(path)?,
            None => FileConfig::default(),
        };
        let mut c = merge(args, file);
        let certs = cert_config(
            [
                c.bootstrap_kubeconfig.take(),
                c.kubelet_kubeconfig.take(),
                c.cert_dir.take(),
                c.client_ca_file.take(),
            ],
            c.secure_listen,
            c.node_name.as_deref(),
        )?;
        // Certificate flags alone: the agent manages certificates only.
        let certs_only = certs.is_some()
            && c.manifests.is_none()
            && c.kubeconfig.is_none()
            && c.interfaces.is_none()
            && std::env::var_os("KUBERNETES_SERVICE_HOST").is_none();
        Ok(Self {
            health_listen: c.health_listen.unwrap_or(DEFAULT_HEALTH_LISTEN),
            metrics_per_service: c.metrics_per_service.unwrap_or(false),
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

/// The flags over the config file: a flag given wins.
fn merge(args: RunArgs, file: FileConfig) -> FileConfig {
    FileConfig {
        manifests: args.manifests.or(file.manifests),
        kubeconfig: args.kubeconfig.or(file.kubeconfig),
        node_name: args.node_name.or(file.node_name),
        health_listen: args.health_listen.or(file.health_listen),
        metrics_per_service: args.metrics_per_service.or(file.metrics_per_service),
        service_account_dir: args.service_account_dir.or(file.service_account_dir),
        interfaces: args.interfaces.map(ListValue::Joined).or(file.interfaces),
        external_interfaces: args
            .external_interfaces
            .map(ListValue::Joined)
            .or(file.external_interfaces),
        xdp_mode: args.xdp_mode.or(file.xdp_mode),
        tc_attach: args.tc_attach.or(file.tc_attach),
        nodeport_range: args.nodeport_range.or(file.nodeport_range),
        snat_port_range: args.snat_port_range.or(file.snat_port_range),
        maglev_table_size: args.maglev_table_size.or(file.maglev_table_size),
        service_cidr: args.service_cidr.or(file.service_cidr),
        pin_dir: args.pin_dir.or(file.pin_dir),
        conntrack_size: args.conntrack_size.or(file.conntrack_size),
        max_frontends: args.max_frontends.or(file.max_frontends),
        max_backends: args.max_backends.or(file.max_backends),
        conntrack_gc_interval: args.conntrack_gc_interval.or(file.conntrack_gc_interval),
        conntrack_lifetime_syn: args.conntrack_lifetime_syn.or(file.conntrack_lifetime_syn),
        conntrack_lifetime_established: args
            .conntrack_lifetime_established
            .or(file.conntrack_lifetime_established),
        conntrack_lifetime_closing: args
            .conntrack_lifetime_closing
            .or(file.conntrack_lifetime_closing),
        conntrack_lifetime_udp: args.conntrack_lifetime_udp.or(file.conntrack_lifetime_udp),
        conntrack_lifetime_udp_replied: args
            .conntrack_lifetime_udp_replied
            .or(file.conntrack_lifetime_udp_replied),
        socket_lb: args.socket_lb.or(file.socket_lb),
        cgroup_path: args.cgroup_path.or(file.cgroup_path),
        dns_ip: args.dns_ip.or(file.dns_ip),
        cluster_domain: args.cluster_domain.or(file.cluster_domain),
        dns_ttl: args.dns_ttl.or(file.dns_ttl),
        upstream: args.upstream.map(ListValue::Joined).or(file.upstream),
        bootstrap_kubeconfig: args.bootstrap_kubeconfig.or(file.bootstrap_kubeconfig),
        kubelet_kubeconfig: args.kubelet_kubeconfig.or(file.kubelet_kubeconfig),
        cert_dir: args.cert_dir.or(file.cert_dir),
        secure_listen: args.secure_listen.or(file.secure_listen),
        client_ca_file: args.client_ca_file.or(file.client_ca_file),
        read_only_listen: args.read_only_listen.or(file.read_only_listen),
        log_level: args.log_level.or(file.log_level),
    }
}

/// The Service source, interfaces, dataplane and DNS of merged settings.
fn services_config(c: &mut FileConfig) -> Result<ServicesConfig, ConfigError> {
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
            let names = match list {
                ListValue::Joined(s) => split(&s),
                ListValue::List(l) => l,
            };
            Some(InterfaceMatcher::new(&names).map_err(ConfigError::ExternalInterfaces)?)
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
    let upstream = match c.upstream.take() {
        Some(ListValue::Joined(s)) => Some(split(&s)),
        Some(ListValue::List(l)) => Some(l),
        None => None,
    };
    let dns = dns_config(c.dns_ip, c.cluster_domain.take(), c.dns_ttl, upstream)?;
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
fn socket_lb(c: &mut FileConfig) -> Result<Option<PathBuf>, ConfigError> {
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
fn lifetimes(c: &FileConfig) -> Result<Lifetimes, ConfigError> {
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
    let mut dataplane = match service_cidr {
        Some(cidr) => {
            let (net, len) = parse_cidr(&cidr).ok_or(ConfigError::ServiceCidr(cidr))?;
            DataplaneConfig::with_service_cidr(net, len)
        }
        None => DataplaneConfig::default(),
    };
    // The DNS address is the agent's own: the dataplane passes it.
    if let Some(DnsConfig {
        ip: std::net::IpAddr::V4(ip),
        ..
    }) = dns
    {
        dataplane = dataplane.with_local_ip(*ip);
    }
    Ok(dataplane)
}

fn interface_matcher(list: Option<ListValue>) -> Result<InterfaceMatcher, ConfigError> {
    let interfaces = match list {
        Some(ListValue::Joined(s)) => split(&s),
        Some(ListValue::List(l)) => l,
        None => return Err(ConfigError::NoInterfaces),
    };
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
) -> Result<Option<CertConfig>, ConfigError> {
    if bootstrap_kubeconfig.is_none() && kubelet_kubeconfig.is_none() && cert_dir.is_none() {
        return Ok(None);
    }
    Ok(Some(CertConfig {
        bootstrap_kubeconfig,
        kubelet_kubeconfig: kubelet_kubeconfig
            .unwrap_or_else(|| crate::certs::DEFAULT_KUBELET_KUBECONFIG.into()),
        cert_dir: cert_dir.unwrap_or_else(|| crate::certs::DEFAULT_CERT_DIR.into()),
        node_name: node_name.ok_or(ConfigError::CertsWithoutNode)?.to_owned(),
        secure_listen: secure_listen.unwrap_or(crate::certs::DEFAULT_SECURE_LISTEN),
        client_ca_file,
    }))
}

fn dns_config(
    ip: Option<std::net::IpAddr>,
    domain: Option<String>,
    ttl: Option<u32>,
    upstream: Option<Vec<String>>,
) -> Result<Option<DnsConfig>, ConfigError> {
    let Some(ip) = ip else {
        if domain.is_some() || ttl.is_some() || upstream.is_some() {
            return Err(ConfigError::DnsWithoutIp);
        }
        return Ok(None);
    };
    let ttl = ttl.unwrap_or(crate::dns::DEFAULT_TTL);
    if ttl > 3600 {
        return Err(ConfigError::DnsTtl);
    }
    let upstreams = match upstream {
        Some(list) => list
            .iter()
            .map(|u| crate::dns::parse_upstream(u).ok_or_else(|| ConfigError::Upstream(u.clone())))
            .collect::<Result<Vec<_>, _>>()?,
        None => {
            crate::dns::upstreams_from_resolv_conf(Path::new(RESOLV_CONF)).map_err(|source| {
                ConfigError::ResolvConf {
                    path: RESOLV_CONF.into(),
                    source,
                }
            })?
        }
    };
    Ok(Some(DnsConfig {
        ip,
        cluster_domain: domain.unwrap_or_else(|| crate::dns::DEFAULT_CLUSTER_DOMAIN.to_owned()),
        ttl,
        upstreams,
    }))
}

/// The log level from the config file, for logging set up before the rest.
pub fn file_log_level(path: &Path) -> Option<String> {
    load(path).ok().and_then(|f| f.log_level)
}

fn load(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.into(),
        source,
    })?;
    if text.trim().is_empty() {
        return Ok(FileConfig::default());
    }
    serde_yaml::from_str(&text).map_err(|source| ConfigError::Parse {
        path: path.into(),
        source,
    })
}

fn split(list: &str) -> Vec<String> {
    list.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Kubernetes' default `--service-node-port-range`.
pub const DEFAULT_NODEPORT_RANGE: (u16, u16) = (30_000, 32_767);

fn parse_port_range(range: &str) -> Option<(u16, u16)> {
    let (min, max) = range.trim().split_once('-')?;
    let (min, max): (u16, u16) = (min.trim().parse().ok()?, max.trim().parse().ok()?);
    (min >= 1 && min <= max).then_some((min, max))
}

/// `max-frontends` and `max-backends`, from 16 to 2^24.
fn capacities(c: &FileConfig) -> Result<(u32, u32), ConfigError> {
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

fn parse_cidr(cidr: &str) -> Option<(Ipv4Addr, u8)> {
    let (net, len) = cidr.split_once('/')?;
    let len: u8 = len.parse().ok().filter(|l| *l <= 32)?;
    Some((net.parse().ok()?, len))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn services(c: RunConfig) -> ServicesConfig {
        c.services.expect("a Service configuration")
    }

    fn with_file(yaml: &str, args: RunArgs) -> Result<RunConfig, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sluice.yaml");
        fs::write(&path, yaml).unwrap();
        RunConfig::from_args(RunArgs {
            config: Some(path),
            ..args
        })
    }

    #[test]
    fn every_flag_has_a_key_and_flags_win() {
        let c = with_file(
            "manifests: /m\ninterfaces: [veth*, eth0]\nservice-cidr: 10.96.0.0/12\npin-dir: /p\nconntrack-size: 8192\nlog-level: debug\n\
             conntrack-gc-interval: 3\nconntrack-lifetime-syn: 4\nconntrack-lifetime-established: 5\n\
             conntrack-lifetime-closing: 6\nconntrack-lifetime-udp: 7\nconntrack-lifetime-udp-replied: 8\n\
             max-frontends: 1000\nmax-backends: 5000\n",
            RunArgs::default(),
        )
        .map(services)
        .unwrap();
        assert_eq!(
            (c.dataplane.max_frontends, c.dataplane.max_backends),
            (1000, 5000)
        );
        assert_eq!(c.source, Source::Manifests("/m".into()));
        assert!(
            c.interfaces.matches("veth12")
                && c.interfaces.matches("eth0")
                && !c.interfaces.matches("eth1")
        );
        assert!(c.dataplane.config.in_service_cidr([10, 100, 0, 1]));
        assert_eq!(c.dataplane.pin_dir, PathBuf::from("/p"));
        assert_eq!(c.dataplane.conntrack_size, 8192);
        assert_eq!(
            c.dataplane.conntrack_gc_interval,
            std::time::Duration::from_secs(3)
        );
        let l = c.dataplane.config.lifetimes;
        assert_eq!(
            [
                l.syn_s,
                l.established_s,
                l.closing_s,
                l.other_s,
                l.other_replied_s
            ],
            [4, 5, 6, 7, 8]
        );

        let c = with_file(
            "manifests: /m\ninterfaces: 'veth*'\n",
            RunArgs {
                manifests: Some("/flag".into()),
                conntrack_size: Some(4096),
                conntrack_lifetime_closing: Some(2),
                ..RunArgs::default()
            },
        )
        .map(services)
        .unwrap();
        assert_eq!(c.source, Source::Manifests("/flag".into()));
        assert_eq!(c.dataplane.conntrack_size, 4096);
        assert_eq!(c.dataplane.config.lifetimes.closing_s, 2);
        assert_eq!(
            c.dataplane.config.lifetimes.established_s, 21_600,
            "the others keep their defaults"
        );
        assert_eq!(c.dataplane.pin_dir, PathBuf::from(DEFAULT_PIN_DIR));
    }

    #[test]
    fn the_deployed_configuration_file_is_valid() {
        let cm = include_str!("../../manifests/03-configmap.yaml");
        let (_, body) = cm.split_once("sluice.yaml: |\n").unwrap();
        let yaml: String = body
            .lines()
            .map(|l| l.strip_prefix("    ").unwrap_or(l))
            .collect::<Vec<_>>()
            .join("\n");
        let c = with_file(
            &yaml,
            RunArgs {
                manifests: Some("/m".into()),
                ..RunArgs::default()
            },
        )
        .map(services)
        .unwrap();
        assert_eq!(c.dataplane.xdp_mode, crate::dataplane::XdpAttach::Auto);
        assert_eq!(c.nodeport_range, (30_000, 32_767));
        assert_eq!(c.dataplane.maglev_size, 16_381);
        assert_eq!(
            c.dataplane.conntrack_size,
            crate::dataplane::conntrack::default_size(),
            "sized from memory"
        );
        assert_eq!(c.dataplane.config.lifetimes, Lifetimes::DEFAULT);
    }

    #[test]
    fn the_tc_attach_path_has_a_key_a_flag_a_default_and_a_check() {
        let c = with_file(
            "manifests: /m\ninterfaces: veth*\ntc-attach: netlink\n",
            RunArgs::default(),
        )
        .map(services)
        .unwrap();
        assert_eq!(c.dataplane.tc_attach, crate::dataplane::TcAttach::Netlink);
        let args = |v: Option<&str>| RunArgs {
            manifests: Some("/m".into()),
            interfaces: Some("veth*".into()),
            tc_attach: v.map(Into::into),
            ..RunArgs::default()
        };
        let c = services(RunConfig::from_args(args(None)).unwrap());
        assert_eq!(c.dataplane.tc_attach, crate::dataplane::TcAttach::Auto);
        let c = services(RunConfig::from_args(args(Some("tcx"))).unwrap());
        assert_eq!(c.dataplane.tc_attach, crate::dataplane::TcAttach::Tcx);
        let err = RunConfig::from_args(args(Some("bpf")))
            .unwrap_err()
            .to_string();
        assert!(err.contains("tc-attach"), "{err}");
    }

    #[test]
    #[expect(clippy::too_many_lines, reason = "one table of bad values")]
    fn xdp_settings_have_keys_defaults_and_checks() {
        let c = with_file(
            "manifests: /m\ninterfaces: veth*\nexternal-interfaces: [eth0, bond*]\nxdp-mode: generic\nnodeport-range: 20000-20999\nmaglev-table-size: 65521\n",
            RunArgs::default(),
        )
        .map(services)
        .unwrap();
        let ext = c.external_interfaces.unwrap();
        assert!(ext.matches("eth0") && ext.matches("bond0") && !ext.matches("veth1"));
        assert_eq!(c.dataplane.xdp_mode, crate::dataplane::XdpAttach::Generic);
        assert_eq!(c.nodeport_range, (20_000, 20_999));
        assert_eq!(
            c.snat_ports,
            sluice_abi::config::DEFAULT_SNAT_PORTS,
            "the default SNAT ports"
        );
        assert!(
            c.dataplane.config.in_nodeport_range(20_500)
                && !c.dataplane.config.in_nodeport_range(30_000)
        );
        assert_eq!(c.dataplane.maglev_size, 65_521);
        assert_eq!(
            (c.dataplane.max_frontends, c.dataplane.max_backends),
            (
                sluice_abi::maps::MAX_SERVICES,
                sluice_abi::maps::MAX_BACKENDS
            ),
            "the defaults"
        );

        let args = || RunArgs {
            manifests: Some("/m".into()),
            interfaces: Some("veth*".into()),
            ..RunArgs::default()
        };
        let c = services(RunConfig::from_args(args()).unwrap());
        assert!(
            c.external_interfaces.is_none(),
            "default: the node's interfaces"
        );
        assert_eq!(c.dataplane.xdp_mode, crate::dataplane::XdpAttach::Auto);
        assert_eq!(c.nodeport_range, DEFAULT_NODEPORT_RANGE);
        assert_eq!(c.dataplane.maglev_size, 16_381);
        let c = services(
            RunConfig::from_args(RunArgs {
                xdp_mode: Some("tc".into()),
                ..args()
            })
            .unwrap(),
        );
        assert_eq!(c.dataplane.xdp_mode, crate::dataplane::XdpAttach::Tc);
        for (bad, key) in [
            (
                RunArgs {
                    xdp_mode: Some("fast".into()),
                    ..args()
                },
                "xdp-mode",
            ),
            (
                RunArgs {
                    nodeport_range: Some("32767-30000".into()),
                    ..args()
                },
                "nodeport-range",
            ),
            (
                RunArgs {
                    snat_port_range: Some("32000-33000".into()),
                    ..args()
                },
                "snat-port-range",
            ),
            (
                RunArgs {
                    nodeport_range: Some("0-100".into()),
                    ..args()
                },
                "nodeport-range",
            ),
            (
                RunArgs {
                    maglev_table_size: Some(16_000),
                    ..args()
                },
                "maglev-table-size",
            ),
            (
                RunArgs {
                    maglev_table_size: Some(131),
                    ..args()
                },
                "maglev-table-size",
            ),
            (
                RunArgs {
                    max_frontends: Some(8),
                    ..args()
                },
                "max-frontends",
            ),
            (
                RunArgs {
                    max_backends: Some(1 << 25),
                    ..args()
                },
                "max-backends",
            ),
        ] {
            let err = RunConfig::from_args(bad).unwrap_err().to_string();
            assert!(err.contains(key), "{err}");
        }
    }

    #[test]
    fn an_unknown_key_is_an_error_naming_it() {
        let err = with_file("manifests: /m\nintefaces: eth0\n", RunArgs::default()).unwrap_err();
        let msg = format!("{err}");
        assert!(msg.contains("unknown field `intefaces`"), "{msg}");
    }

    #[test]
    fn bad_values_are_named() {
        let args = || RunArgs {
            manifests: Some("/m".into()),
            interfaces: Some("eth0".into()),
            ..RunArgs::default()
        };
        let err = RunConfig::from_args(RunArgs {
            service_cidr: Some("10.96.0.0/33".into()),
            ..args()
        })
        .unwrap_err();
        assert!(err.to_string().contains("service-cidr"));
        assert!(matches!(
            RunConfig::from_args(RunArgs {
                kubeconfig: Some("/k".into()),
                ..args()
            }),
            Err(ConfigError::TwoSources)
        ));
        assert!(matches!(
            RunConfig::from_args(RunArgs {
                interfaces: Some(" , ".into()),
                ..args()
            }),
            Err(ConfigError::NoInterfaces)
        ));
        let err = RunConfig::from_args(RunArgs {
            conntrack_lifetime_udp: Some(0),
            ..args()
        })
        .unwrap_err();
        assert!(err.to_string().contains("conntrack-lifetime-udp"), "{err}");
        assert!(matches!(
            RunConfig::from_args(RunArgs {
                conntrack_size: Some(1000),
                ..args()
            }),
            Err(ConfigError::ConntrackSize)
        ));
    }
}
