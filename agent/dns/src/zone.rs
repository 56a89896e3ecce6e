//! The cluster zone, straight from the agent's model: what each Service publishes
//! in DNS (Kubernetes DNS-Based Service Discovery, schema 1.1.0), indexed
//! for lookups, and updated per Service as the model changes. No cache
//! stands between a change and its answer.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{
        PoisonError, RwLock,
        atomic::{AtomicU64, Ordering},
    },
};

use hickory_proto::rr::{
    Name, RData, Record, RecordType,
    rdata::{A, AAAA, CNAME, PTR, SOA, SRV, TXT},
};

/// The schema version the `dns-version` TXT record announces.
pub const SCHEMA_VERSION: &str = "1.1.0";
/// TTL of the `dns-version` record (CoreDNS's).
const VERSION_TTL: u32 = 28_800;

/// A port as DNS publishes it: SRV `_<name>._<proto>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DnsPort {
    /// Lowercase; empty for an unnamed port (no SRV record of its own).
    pub name: String,
    pub protocol: Proto,
    pub port: u16,
}

/// An endpoint as DNS publishes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DnsEndpoint {
    /// Its hostname, or its first address with dashes (`10-244-1-5`).
    pub name: String,
    pub ips: Vec<IpAddr>,
    /// The endpoint (target) ports of its slice.
    pub ports: Vec<DnsPort>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DnsKind {
    ClusterIp(Vec<IpAddr>),
    Headless,
    ExternalName(Name),
}

/// What one Service publishes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DnsService {
    pub kind: DnsKind,
    pub ports: Vec<DnsPort>,
    /// Ready endpoints (all of them with `publishNotReadyAddresses`).
    pub endpoints: Vec<DnsEndpoint>,
}

/// A port's protocol, as SRV names it (`_tcp`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    Tcp,
    Udp,
    Sctp,
}

impl Proto {
    const fn label(self) -> &'static str {
        match self {
            Self::Tcp => "_tcp",
            Self::Udp => "_udp",
            Self::Sctp => "_sctp",
        }
    }
}

/// The answer to one question in the cluster zone.
#[derive(Debug, PartialEq, Eq)]
pub enum Lookup {
    /// Not a cluster name (or a reverse name of no cluster IP): forward it.
    NotOurs,
    /// The model has not been listed yet (CoreDNS answers SERVFAIL too).
    NotReady,
    Answer {
        answers: Vec<Record>,
        additionals: Vec<Record>,
    },
    /// The name exists, without records of this type.
    NoData,
    NxDomain,
    /// An ExternalName Service: the CNAME, whose target the caller chases
    /// for address queries.
    Alias {
        cname: Box<Record>,
        target: Name,
    },
}

#[derive(Default)]
struct Data {
    synced: bool,
    /// namespace → name → records; all lowercase.
    services: HashMap<String, HashMap<String, DnsService>>,
    /// Address → the names whose PTR it has.
    reverse: HashMap<IpAddr, Vec<Name>>,
    serial: u32,
}

/// The cluster zone (`<domain>`), shared by the DNS workers.
/// What `<a-b-c-d>.<ns>.pod.<zone>` answers (CoreDNS's `pods` option).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Pods {
    /// The address the name spells, unchecked (`pods insecure`, the
    /// Kubernetes default Corefile's).
    #[default]
    Insecure,
    /// NXDOMAIN (`pods disabled`).
    Disabled,
}

pub struct ClusterZone {
    domain: Name,
    ttl: u32,
    pods: Pods,
    data: RwLock<Data>,
    /// Bumped after every change: an answer computed after reading `n`
    /// holds while the generation is still `n`.
    generation: AtomicU64,
}

impl ClusterZone {
    /// `domain` such as `cluster.local`; `ttl` of every cluster record.
    pub fn new(domain: &Name, ttl: u32) -> Self {
        let mut domain = domain.to_lowercase();
        domain.set_fqdn(true);
        Self {
            domain,
            ttl,
            pods: Pods::default(),
            data: RwLock::default(),
            generation: AtomicU64::new(0),
        }
    }

    /// With pod records answered as `pods` says.
    #[must_use]
    pub fn with_pods(mut self, pods: Pods) -> Self {
        self.pods = pods;
        self
    }

    pub fn domain(&self) -> &Name {
        &self.domain
    }

    pub fn ttl(&self) -> u32 {
        self.ttl
    }

    /// Sets what Service `namespace/name` publishes (`None`: it is gone).
    pub fn set(&self, namespace: &str, name: &str, service: Option<DnsService>) {
        let (ns, name) = (namespace.to_ascii_lowercase(), name.to_ascii_lowercase());
        let fqdn = self.service_name(&ns, &name);
        let added = service
            .as_ref()
            .map(|s| reverse_entries(s, fqdn.as_ref()))
            .unwrap_or_default();
        let mut data = self.data.write().unwrap_or_else(PoisonError::into_inner);
        data.serial = data.serial.wrapping_add(1);
        let old = match service {
            Some(s) => data.services.entry(ns).or_default().insert(name, s),
            None => {
                let old = data.services.get_mut(&ns).and_then(|m| m.remove(&name));
                if data.services.get(&ns).is_some_and(HashMap::is_empty) {
                    data.services.remove(&ns);
                }
                old
            }
        };
        if let Some(old) = &old {
            for (ip, target) in reverse_entries(old, fqdn.as_ref()) {
                if let Some(names) = data.reverse.get_mut(&ip) {
                    names.retain(|n| *n != target);
                    if names.is_empty() {
                        data.reverse.remove(&ip);
                    }
                }
            }
        }
        for (ip, target) in added {
            data.reverse.entry(ip).or_default().push(target);
        }
        drop(data);
        self.generation.fetch_add(1, Ordering::Release);
    }

    /// Changes so far; read it before a lookup whose answer is kept.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The model has been listed: answer from it.
    pub fn set_synced(&self) {
        self.data
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .synced = true;
        self.generation.fetch_add(1, Ordering::Release);
    }

    fn service_name(&self, ns: &str, name: &str) -> Option<Name> {
        Name::from_labels([name.as_bytes(), ns.as_bytes(), b"svc"])
            .and_then(|n| n.append_domain(&self.domain))
            .ok()
    }

    /// The SOA of negative answers: its minimum is the record TTL, and its
    /// own TTL at most 300 s (CoreDNS).
    pub fn soa(&self) -> Record {
        let serial = self
            .data
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .serial;
        let label = |l: &str| Name::from_ascii(l).and_then(|n| n.append_domain(&self.domain));
        let mname = label("ns.dns").unwrap_or_else(|_| self.domain.clone());
        let rname = label("hostmaster").unwrap_or_else(|_| self.domain.clone());
        let soa = SOA::new(mname, rname, serial, 7200, 1800, 86_400, self.ttl);
        Record::from_rdata(self.domain.clone(), self.ttl.min(300), RData::SOA(soa))
    }

    /// Answers `qname`/`qtype`; records carry `qname` as asked (its case).
    pub fn lookup(&self, qname: &Name, qtype: RecordType) -> Lookup {
        let lower = qname.to_lowercase();
        if let Some(ip) = reverse_ip(&lower) {
            let data = self.data.read().unwrap_or_else(PoisonError::into_inner);
            return match data.reverse.get(&ip) {
                Some(targets) if qtype == RecordType::PTR => Lookup::Answer {
                    answers: targets
                        .iter()
                        .map(|t| {
                            Record::from_rdata(qname.clone(), self.ttl, RData::PTR(PTR(t.clone())))
                        })
                        .collect(),
                    additionals: Vec::new(),
                },
                Some(_) => Lookup::NoData,
                None => Lookup::NotOurs,
            };
        }
        if !self.domain.zone_of(&lower) {
            return Lookup::NotOurs;
        }
        let data = self.data.read().unwrap_or_else(PoisonError::into_inner);
        if !data.synced {
            return Lookup::NotReady;
        }
        let depth = usize::from(lower.num_labels() - self.domain.num_labels());
        let labels: Vec<String> = lower
            .iter()
            .take(depth)
            .map(|l| String::from_utf8_lossy(l).into_owned())
            .collect();
        let rel: Vec<&str> = labels.iter().map(String::as_str).collect();
        let answer = Answerer {
            zone: self,
            qname,
            qtype,
        };
        match rel.as_slice() {
            [] if qtype == RecordType::SOA => records(vec![self.soa()], Vec::new()),
            [] | ["svc" | "pod"] => Lookup::NoData,
            ["dns-version"] if qtype == RecordType::TXT => records(
                vec![Record::from_rdata(
                    qname.clone(),
                    VERSION_TTL,
                    RData::TXT(TXT::new(vec![SCHEMA_VERSION.to_owned()])),
                )],
                Vec::new(),
            ),
            ["dns-version"] => Lookup::NoData,
            [ns, "svc"] if data.services.contains_key(*ns) => Lookup::NoData,
            [name, ns, "svc"] => match data.services.get(*ns).and_then(|m| m.get(*name)) {
                Some(svc) => answer.service(svc, ns, name),
                None => Lookup::NxDomain,
            },
            [first, name, ns, "svc"] => match data.services.get(*ns).and_then(|m| m.get(*name)) {
                // `_tcp.<svc>…`: an empty non-terminal above its SRV names.
                Some(svc) if first.starts_with('_') => {
                    if svc.ports.iter().any(|p| p.protocol.label() == *first) {
                        Lookup::NoData
                    } else {
                        Lookup::NxDomain
                    }
                }
                Some(svc) => answer.endpoint(svc, first),
                None => Lookup::NxDomain,
            },
            [ip, _ns, "pod"] => match (self.pods, undashed(ip)) {
                (Pods::Insecure, Some(ip)) => answer.pod(ip),
                _ => Lookup::NxDomain,
            },
            [port, proto, name, ns, "svc"] if port.starts_with('_') && proto.starts_with('_') => {
                match data.services.get(*ns).and_then(|m| m.get(*name)) {
                    Some(svc) => answer.srv(svc, ns, name, port.trim_start_matches('_'), proto),
                    None => Lookup::NxDomain,
                }
            }
            _ => Lookup::NxDomain,
        }
    }
}

/// The PTR entries of a Service: ClusterIPs to the Service's name, and
/// headless endpoints to theirs.
fn reverse_entries(svc: &DnsService, fqdn: Option<&Name>) -> Vec<(IpAddr, Name)> {
    let Some(fqdn) = fqdn else { return Vec::new() };
    match &svc.kind {
        DnsKind::ClusterIp(ips) => ips.iter().map(|ip| (*ip, fqdn.clone())).collect(),
        DnsKind::Headless => svc
            .endpoints
            .iter()
            .filter_map(|e| Some((e, fqdn.prepend_label(e.name.as_bytes()).ok()?)))
            .flat_map(|(e, name)| e.ips.iter().map(move |ip| (*ip, name.clone())))
            .collect(),
        DnsKind::ExternalName(_) => Vec::new(),
    }
}

/// `10-244-1-5` → `10.244.1.5`; `fd00--1` → `fd00::1` (a pod's name).
fn undashed(label: &str) -> Option<IpAddr> {
    let four: Vec<&str> = label.split('-').collect();
    if four.len() == 4
        && four
            .iter()
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
    {
        return label.replace('-', ".").parse().ok();
    }
    label
        .replace('-', ":")
        .parse::<std::net::Ipv6Addr>()
        .ok()
        .map(IpAddr::V6)
}

/// The address of a full `in-addr.arpa.` / `ip6.arpa.` name.
fn reverse_ip(name: &Name) -> Option<IpAddr> {
    let labels = name.num_labels();
    if labels != 6 && labels != 34 {
        return None;
    }
    let net = name.parse_arpa_name().ok()?;
    (net.prefix_len() == net.max_prefix_len()).then(|| net.addr())
}

/// An answer, or NODATA when there is no record.
fn records(answers: Vec<Record>, additionals: Vec<Record>) -> Lookup {
    if answers.is_empty() {
        Lookup::NoData
    } else {
        Lookup::Answer {
            answers,
            additionals,
        }
    }
}

/// Builds the records of one question.
struct Answerer<'a> {
    zone: &'a ClusterZone,
    qname: &'a Name,
    qtype: RecordType,
}

impl Answerer<'_> {
    /// A and AAAA records of `ips` at `owner`, as the question asks.
    fn addresses(&self, owner: &Name, ips: &[IpAddr], qtype: RecordType) -> Vec<Record> {
        let ttl = self.zone.ttl;
        ips.iter()
            .filter_map(|ip| match (ip, qtype) {
                (IpAddr::V4(v4), RecordType::A | RecordType::ANY) => {
                    Some(Record::from_rdata(owner.clone(), ttl, RData::A(A(*v4))))
                }
                (IpAddr::V6(v6), RecordType::AAAA | RecordType::ANY) => Some(Record::from_rdata(
                    owner.clone(),
                    ttl,
                    RData::AAAA(AAAA(*v6)),
                )),
                _ => None,
            })
            .collect()
    }

    /// A pod's record: the address its name spells.
    fn pod(&self, ip: IpAddr) -> Lookup {
        records(self.addresses(self.qname, &[ip], self.qtype), Vec::new())
    }

    fn service(&self, svc: &DnsService, ns: &str, name: &str) -> Lookup {
        let Some(fqdn) = self.zone.service_name(ns, name) else {
            return Lookup::NxDomain;
        };
        match &svc.kind {
            DnsKind::ExternalName(target) => Lookup::Alias {
                cname: Box::new(Record::from_rdata(
                    self.qname.clone(),
                    self.zone.ttl,
                    RData::CNAME(CNAME(target.clone())),
                )),
                target: target.clone(),
            },
            // The spec: a headless Service with no ready endpoints does not exist.
            DnsKind::Headless if svc.endpoints.is_empty() => Lookup::NxDomain,
            DnsKind::ClusterIp(ips) if self.qtype == RecordType::SRV => {
                let srv = svc
                    .ports
                    .iter()
                    .map(|p| self.srv_record(p.port, &fqdn, svc.ports.len()))
                    .collect();
                records(srv, self.addresses(&fqdn, ips, RecordType::ANY))
            }
            DnsKind::ClusterIp(ips) => {
                records(self.addresses(self.qname, ips, self.qtype), Vec::new())
            }
            DnsKind::Headless if self.qtype == RecordType::SRV => {
                let mut srv = Vec::new();
                let mut extra = Vec::new();
                for ep in &svc.endpoints {
                    let Ok(target) = fqdn.prepend_label(ep.name.as_bytes()) else {
                        continue;
                    };
                    for p in &ep.ports {
                        srv.push(self.srv_record(
                            p.port,
                            &target,
                            svc.endpoints.len() * ep.ports.len(),
                        ));
                    }
                    extra.extend(self.addresses(&target, &ep.ips, RecordType::ANY));
                }
                records(srv, extra)
            }
            DnsKind::Headless => {
                let ips: Vec<IpAddr> = svc
                    .endpoints
                    .iter()
                    .flat_map(|e| e.ips.iter().copied())
                    .collect();
                records(self.addresses(self.qname, &ips, self.qtype), Vec::new())
            }
        }
    }

    /// `<endpoint>.<svc>.<ns>.svc.<zone>`: by hostname or dashed address.
    fn endpoint(&self, svc: &DnsService, endpoint: &str) -> Lookup {
        if matches!(svc.kind, DnsKind::ExternalName(_)) {
            return Lookup::NxDomain;
        }
        match svc.endpoints.iter().find(|e| e.name == endpoint) {
            Some(ep) => records(self.addresses(self.qname, &ep.ips, self.qtype), Vec::new()),
            None => Lookup::NxDomain,
        }
    }

    /// `_<port>._<proto>.<svc>.<ns>.svc.<zone>`: one SRV per named port
    /// (per ready endpoint for headless Services, with its target port).
    fn srv(&self, svc: &DnsService, ns: &str, name: &str, port: &str, proto: &str) -> Lookup {
        let Some(fqdn) = self.zone.service_name(ns, name) else {
            return Lookup::NxDomain;
        };
        let matches =
            |p: &&DnsPort| !p.name.is_empty() && p.name == port && p.protocol.label() == proto;
        let Some(svc_port) = svc.ports.iter().find(matches) else {
            return Lookup::NxDomain;
        };
        match &svc.kind {
            DnsKind::ExternalName(_) => Lookup::NxDomain,
            DnsKind::ClusterIp(_) if self.qtype != RecordType::SRV => Lookup::NoData,
            DnsKind::ClusterIp(ips) => records(
                vec![self.srv_record(svc_port.port, &fqdn, 1)],
                self.addresses(&fqdn, ips, RecordType::ANY),
            ),
            DnsKind::Headless if svc.endpoints.is_empty() => Lookup::NxDomain,
            DnsKind::Headless if self.qtype != RecordType::SRV => Lookup::NoData,
            DnsKind::Headless => {
                let mut srv = Vec::new();
                let mut extra = Vec::new();
                for ep in &svc.endpoints {
                    let Some(p) = ep.ports.iter().find(matches) else {
                        continue;
                    };
                    let Ok(target) = fqdn.prepend_label(ep.name.as_bytes()) else {
                        continue;
                    };
                    srv.push(self.srv_record(p.port, &target, svc.endpoints.len()));
                    extra.extend(self.addresses(&target, &ep.ips, RecordType::ANY));
                }
                records(srv, extra)
            }
        }
    }

    /// Priority 0; the weight shared evenly among `count` records.
    fn srv_record(&self, port: u16, target: &Name, count: usize) -> Record {
        let weight = u16::try_from(100 / count.max(1)).unwrap_or(1).max(1);
        Record::from_rdata(
            self.qname.clone(),
            self.zone.ttl,
            RData::SRV(SRV::new(0, weight, port, target.clone())),
        )
    }
}

#[cfg(test)]
mod tests;
