//! The dataplane: sole owner of the loaded eBPF object, its maps and its
//! links. Map updates and attachments happen here and nowhere else.
//!
//! Maps and links are pinned under the pin directory, so that a stopped
//! agent leaves the dataplane serving (as kube-proxy leaves its rules) and a
//! restarted one adopts the pinned maps and swaps its program into the
//! pinned links atomically, without dropping a flow.

mod attach;
mod batch;
mod bpffs;
pub mod conntrack;
mod error;
mod interfaces;
pub mod layout;
pub mod maps;
pub mod probe;
pub mod sock;
mod stale_udp;
mod steps;

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{MapData, MapError},
    programs::links::PinnedLink,
};
pub use error::Error;
/// Removes the programs, links and pinned maps (`sluice cleanup`): the
/// netlink filters of every interface of this namespace, then the pins,
/// whose links go with them.
pub fn cleanup(pin_dir: &Path) -> Result<(), Error> {
    attach::remove_filters(&[TC_PROGRAM, TC_EXTERNAL, TC_NORTH_SOUTH]);
    bpffs::cleanup(pin_dir)
}
use attach::{classifier, tc_program, xdp_program};
use sluice_abi::{config::DataplaneConfig, maps as names};
use thiserror::Error;

use crate::{
    EBPF_OBJ,
    model::frontends::{DesiredChanges, Refused, Touched},
    plan::capacity::{self, Entries},
    reconcile::{Current, Op, reconcile_changes},
};

/// The TC program's function name in the eBPF object.
const TC_PROGRAM: &str = "tc_ingress";
/// The XDP program's function name in the eBPF object.
const XDP_PROGRAM: &str = "xdp_ingress";
/// The programs tail-called, by their slot in `SLUICE_TAIL` (`maps::TAIL_*`
/// in the programs): from `tc_ingress`, pod-facing IPv6, its new flows, its
/// ICMPv6 errors; from the external interfaces' TC programs, the same for
/// IPv6 from outside.
const TAILS: [&str; names::TAIL_SLOTS as usize] = [
    "tc_ingress6",
    "tc_ingress6_new",
    "tc_ingress6_icmp",
    "tc_edge6",
    "tc_edge6_new",
    "tc_edge6_icmp",
];
/// The XDP programs `xdp_ingress` tail-calls, by their slot in
/// `SLUICE_XDP_TAIL`: IPv6 from outside, its flows looked up in both
/// tables, its new flows, and its replies looked up in both tables.
const XDP_TAILS: [&str; names::XDP_TAIL_SLOTS as usize] = [
    "xdp_edge6",
    "xdp_edge6_flow",
    "xdp_edge6_new",
    "xdp_edge6_reply",
];
/// The TC program behind XDP on external interfaces.
const TC_EXTERNAL: &str = "tc_external";
const TC_NORTH_SOUTH: &str = "tc_north_south";
/// The load-time configuration global in the eBPF object.
const CONFIG_GLOBAL: &str = "CONFIG";

/// How to load the dataplane.
#[derive(Clone, Debug)]
pub struct Options {
    pub pin_dir: PathBuf,
    /// Conntrack entries over the eight maps (`split_sizes`).
    pub conntrack_size: u32,
    /// How often the conntrack garbage collector runs.
    pub conntrack_gc_interval: std::time::Duration,
    pub config: DataplaneConfig,
    /// Socket LB on this cgroup (v2) directory; `None`: off.
    pub socket_lb: Option<PathBuf>,
    /// How XDP attaches to external interfaces.
    pub xdp_mode: XdpAttach,
    /// How TC programs attach (`--tc-attach`).
    pub tc_attach: TcAttach,
    /// The smallest Maglev table (a prime).
    pub maglev_size: u32,
    /// Frontends and ClusterIP markers the maps hold (`--max-frontends`).
    pub max_frontends: u32,
    /// Backends over all frontends (`--max-backends`).
    pub max_backends: u32,
}

/// How the XDP program attaches (`--xdp-mode`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum XdpAttach {
    /// In the driver when it supports XDP, else generic (bpfman's fallback).
    #[default]
    Auto,
    Native,
    Generic,
    /// No XDP: the same north-south logic in TC at the interface's ingress
    /// (`tc_north_south`), for drivers or stacks where XDP cannot be used.
    Tc,
}

pub use attach::{TcAttach, TcPath, link_tail_calls, pinned_path};
pub use batch::create_map;

pub struct Dataplane {
    ebpf: Ebpf,
    maps: maps::Maps,
    pin_dir: PathBuf,
    /// Attached interfaces by ifindex (names change; indexes do not).
    links: BTreeMap<u32, Attached>,
    /// External interfaces with the XDP program (and `tc_external`).
    xdp_links: BTreeMap<u32, ExternalAttached>,
    xdp_mode: XdpAttach,
    /// How TC programs are attached (TCX links, or netlink filters).
    tc_path: TcPath,
    current: Current,
    /// Socket LB's cgroup, when it is on.
    socket_lb: Option<PathBuf>,
    /// Conntrack's garbage collector (stopped on drop).
    collector: conntrack::Collector,
    /// What the refused-claims map holds.
    refused: BTreeMap<crate::frontend::FrontendKey, sluice_abi::service::RefusedClaim>,
    /// What the maps can hold (`plan::capacity`).
    limits: Entries,
    /// Pins replaced at load (`layout`).
    replaced: Vec<layout::Replaced>,
}

struct Attached {
    name: String,
    link: attach::TcLink,
}

struct ExternalAttached {
    name: String,
    /// `None` with `--xdp-mode tc`.
    _xdp: Option<PinnedLink>,
    tc: attach::TcLink,
}

/// What `opts` asks for, less what this kernel lacks (`probe`): the XDP
/// mode (north-south in TC without XDP's features) and socket LB's cgroup
/// (none without its features); an error when the dataplane itself, or a
/// mode asked for by name, cannot run.
fn probed(opts: &Options) -> Result<(XdpAttach, Option<PathBuf>), Error> {
    use probe::Need;
    let missing = probe::Missing::probe();
    tracing::info!(
        features = probe::FEATURES.len(),
        missing = missing.count(),
        "kernel features probed"
    );
    if let Some(what) = missing.for_need(Need::Dataplane) {
        return Err(Error::Kernel(what));
    }
    let xdp_mode = match (missing.for_need(Need::Xdp), opts.xdp_mode) {
        (None, mode) | (Some(_), mode @ XdpAttach::Tc) => mode,
        (Some(what), XdpAttach::Auto) => {
            tracing::warn!(
                "XDP off: this kernel lacks {what}; north-south runs in TC, as with --xdp-mode tc"
            );
            XdpAttach::Tc
        }
        (Some(what), XdpAttach::Native | XdpAttach::Generic) => {
            return Err(Error::Kernel(format!("{what}, for the XDP mode asked for")));
        }
    };
    let socket_lb = match (missing.for_need(Need::SocketLb), &opts.socket_lb) {
        (Some(what), Some(_)) => {
            tracing::warn!("socket LB off: this kernel lacks {what}");
            None
        }
        (_, cgroup) => cgroup.clone(),
    };
    Ok((xdp_mode, socket_lb))
}

impl Dataplane {
    /// Loads the programs, creating the pinned maps or adopting existing ones.
    pub fn load(opts: &Options) -> Result<Self, Error> {
        bpffs::ensure(&opts.pin_dir)?;
        let (xdp_mode, socket_lb) = probed(opts)?;
        let tc_path = attach::choose(opts.tc_attach)?;
        let ct_sizes = sluice_abi::conntrack::split_sizes(opts.conntrack_size);
        let replaced = layout::check(&opts.pin_dir, &ct_sizes);
        let mut loader = EbpfLoader::new();
        loader.default_map_pin_directory(&opts.pin_dir);
        for (name, size) in names::CONNTRACK.iter().zip(ct_sizes) {
            loader.map_max_entries(name, size);
        }
        for (name, size) in names::CONNTRACK6.iter().zip(ct_sizes) {
            loader.map_max_entries(name, size);
        }
        for (name, limit) in steps::capacity_maps(opts) {
            loader.map_max_entries(name, capacity::map_size(limit));
        }
        let mut ebpf = loader
            .override_global(CONFIG_GLOBAL, &opts.config, true)
            .load(EBPF_OBJ)
            .map_err(|e| Error::Load(Box::new(e)))?;
        // External interfaces get XDP and `tc_external`, or with
        // `--xdp-mode tc` only `tc_north_south`: the verifier sees only
        // the programs this mode attaches.
        let tc_mode = xdp_mode == XdpAttach::Tc;
        let external = if tc_mode { TC_NORTH_SOUTH } else { TC_EXTERNAL };
        for name in [TC_PROGRAM, external] {
            classifier(&mut ebpf, name)?
                .load()
                .map_err(|e| Error::Program {
                    name,
                    source: Box::new(e),
                })?;
        }
        // XDP's only where XDP runs.
        link_tail_calls(&mut ebpf, |name| !tc_mode || !XDP_TAILS.contains(&name))?;
        if !tc_mode {
            xdp_program(&mut ebpf)?.load().map_err(|e| Error::Program {
                name: XDP_PROGRAM,
                source: Box::new(e),
            })?;
        }
        attach::mark_path(classifier(&mut ebpf, TC_PROGRAM)?, &opts.pin_dir, tc_path)?;
        layout::stamp(ebpf.take_map(names::LAYOUT).ok_or(Error::Map {
            name: names::LAYOUT,
            source: Box::new(MapError::InvalidName {
                name: names::LAYOUT.into(),
            }),
        })?)?;
        let maps = maps::Maps::take(&mut ebpf)?;
        let current = maps.adopt()?.with_maglev_size(opts.maglev_size);
        let limits = steps::limits(opts, &maps);
        let refused = maps.refused_claims().into_iter().collect();
        // Before the new programs take over: the old layout's flows.
        convert_conntrack(&opts.pin_dir, &maps);
        let collector = conntrack::Collector::spawn(
            &opts.pin_dir,
            opts.config.lifetimes,
            opts.conntrack_gc_interval,
        )?;
        match &socket_lb {
            Some(cgroup) => sock::attach(&mut ebpf, cgroup, &opts.pin_dir)?,
            None => sock::detach(&opts.pin_dir),
        }
        if !current.frontends.is_empty() {
            tracing::info!(
                frontends = current.frontends.len(),
                backends = current.backend_count(),
                "adopted the pinned maps"
            );
        }
        Ok(Self {
            ebpf,
            maps,
            pin_dir: opts.pin_dir.clone(),
            links: BTreeMap::new(),
            xdp_links: BTreeMap::new(),
            xdp_mode,
            tc_path,
            current,
            socket_lb,
            collector,
            refused,
            limits,
            replaced,
        })
    }

    /// The pinned maps this start replaced, losing what they held.
    pub fn replaced(&self) -> &[layout::Replaced] {
        &self.replaced
    }

    /// What the maps can hold, by resource, for the planner.
    pub const fn limits(&self) -> Entries {
        self.limits
    }

    /// Once the new programs are attached: converts the flows the old
    /// programs created since `load` and removes the old layout's pins.
    pub fn finish_upgrade(&self) {
        convert_conntrack(&self.pin_dir, &self.maps);
        bpffs::remove_legacy_pins(&self.pin_dir);
    }

    /// The conntrack collector's latest census.
    pub fn conntrack_census(&self) -> conntrack::Latest {
        self.collector.latest()
    }

    /// Writes what `changes` asks that the maps do not hold yet; returns the
    /// number of map operations. On a failed write, the state is re-read
    /// from the maps (the caller then syncs everything).
    #[tracing::instrument(level = "debug", skip_all)]
    pub fn sync_changes(&mut self, changes: &DesiredChanges) -> Result<usize, Error> {
        let mut count = 0;
        let mut removed = false;
        for step in steps::steps(changes, &self.limits) {
            let ops = reconcile_changes(&step, &mut self.current);
            if let Err(e) = self.maps.apply_all(&ops) {
                let maglev_size = self.current.maglev_size();
                self.current = self
                    .maps
                    .adopt()
                    .unwrap_or_default()
                    .with_maglev_size(maglev_size);
                return Err(e);
            }
            count += ops.len();
            removed |= ops
                .iter()
                .any(|op| matches!(op, Op::DeleteBackend { .. } | Op::DeleteFrontend { .. }));
        }
        self.record_refused(&changes.refused);
        // Only UDP frontends have connected sockets to close.
        let udp = || {
            changes
                .frontends
                .keys()
                .any(|k| k.proto == sluice_abi::proto::UDP)
        };
        if removed
            && udp()
            && let Some(cgroup) = &self.socket_lb
        {
            self.close_stale_udp(cgroup.clone());
        }
        Ok(count)
    }

    /// Closes, on a thread of its own, connected UDP sockets that socket LB
    /// pointed at a backend no longer behind their frontend.
    fn close_stale_udp(&self, cgroup: PathBuf) {
        let live: stale_udp::LiveBackends = self
            .current
            .frontends
            .iter()
            .filter(|(key, _)| key.proto == sluice_abi::proto::UDP)
            .map(|(key, f)| {
                let backends = f
                    .slots
                    .iter()
                    .filter(|(slot, _)| **slot < f.count)
                    .map(|(_, b)| (b.addr, b.port))
                    .collect();
                (*key, backends)
            })
            .collect();
        let pin_dir = self.pin_dir.clone();
        let spawned = std::thread::Builder::new()
            .name("stale-udp".into())
            .spawn(move || match stale_udp::close(&pin_dir, &cgroup, &live) {
                Ok(0) => {}
                Ok(n) => tracing::info!(
                    closed = n,
                    "closed connected UDP sockets whose backend left"
                ),
                Err(e) => tracing::warn!("closing stale UDP sockets: {e}"),
            });
        if let Err(e) = spawned {
            tracing::warn!("closing stale UDP sockets: {e}");
        }
    }

    /// Records, logs and keeps for `sluice status` the claims on frontends
    /// that other Services hold, as they change.
    fn record_refused(
        &mut self,
        refused: &BTreeMap<crate::frontend::FrontendKey, Option<Refused>>,
    ) {
        use sluice_abi::service::{RefusedClaim, ServiceName};
        for (key, r) in refused {
            let want = r.as_ref().map(|r| RefusedClaim {
                owner: ServiceName::new(&r.owner.to_string()),
                claimant: ServiceName::new(
                    &r.claimants
                        .first()
                        .map(ToString::to_string)
                        .unwrap_or_default(),
                ),
                claimants: u32::try_from(r.claimants.len()).unwrap_or(u32::MAX),
                _pad: 0,
            });
            if self.refused.get(key) == want.as_ref() {
                continue;
            }
            if let Err(e) = self.maps.set_refused(*key, want) {
                tracing::warn!("{}", e.chain());
            }
            let frontend = crate::status::frontend(*key);
            match (r, want) {
                (Some(r), Some(claim)) => {
                    let claimants: Vec<String> =
                        r.claimants.iter().map(ToString::to_string).collect();
                    tracing::warn!(
                        %frontend,
                        owner = %r.owner,
                        refused = claimants.join(","),
                        "a claim on a frontend another Service holds is refused (a ClusterIP belongs to its Service; else the oldest claim wins)"
                    );
                    self.refused.insert(*key, claim);
                }
                _ => {
                    tracing::info!(%frontend, "no claim on the frontend is refused any more");
                    self.refused.remove(key);
                }
            }
        }
    }

    /// Frontends with refused claims.
    pub fn refused_count(&self) -> usize {
        self.refused.len()
    }

    /// Every frontend and ClusterIP the maps hold (refused claims too).
    pub fn scope(&self) -> Touched {
        let mut scope = self.current.scope();
        scope.frontends.extend(self.refused.keys());
        scope
    }

    /// The node's own addresses, and which of them serve NodePorts.
    pub fn set_node_addrs(
        &mut self,
        addrs: &BTreeSet<std::net::IpAddr>,
        node_ports: impl Fn(std::net::IpAddr) -> bool,
    ) -> Result<(), Error> {
        self.maps.set_node_addrs(addrs, node_ports)
    }

    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    /// How TC programs are attached.
    pub const fn tc_path(&self) -> TcPath {
        self.tc_path
    }
}

/// Converts the previous layout's conntrack entries (see
/// `conntrack::convert_v2`); a failure costs those flows, not the agent.
fn convert_conntrack(pin_dir: &Path, maps: &maps::Maps) {
    let converted = conntrack::Conntrack::open_pinned(pin_dir)
        .map(|mut ct| conntrack::convert_v2(pin_dir, &mut ct, |addr| maps.is_cluster_ip(addr)));
    match converted {
        Ok(Ok(0)) => {}
        Ok(Ok(flows)) => tracing::info!(
            flows,
            "converted tracked flows from the previous conntrack layout"
        ),
        Ok(Err(e)) => tracing::warn!("converting the previous conntrack layout: {e}"),
        Err(e) => tracing::warn!("{}", e.chain()),
    }
}

/// Opens one pinned map of the pin directory.
pub(crate) fn open_pinned(pin_dir: &Path, name: &'static str) -> Result<MapData, Error> {
    MapData::from_pin(pin_dir.join(name)).map_err(|e| Error::Map {
        name,
        source: Box::new(e),
    })
}
