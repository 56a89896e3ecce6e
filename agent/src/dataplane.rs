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
pub mod maps;
pub mod sock;
mod stale_udp;

use std::{
    collections::{BTreeMap, BTreeSet},
    io,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{MapData, MapError},
    programs::{ProgramError, SchedClassifier, links::PinnedLink},
};
pub use bpffs::cleanup;
use sluice_abi::{config::DataplaneConfig, maps as names};
use thiserror::Error;

use crate::{
    EBPF_OBJ,
    model::frontends::{DesiredChanges, Touched},
    reconcile::{Current, Op, reconcile_changes},
};

/// The TC program's function name in the eBPF object.
const TC_PROGRAM: &str = "tc_ingress";
/// The load-time configuration global in the eBPF object.
const CONFIG_GLOBAL: &str = "CONFIG";

#[derive(Debug, Error)]
pub enum Error {
    #[error("bpffs at `{}`", path.display())]
    Bpffs {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("failed to load the eBPF object")]
    Load(#[source] Box<aya::EbpfError>),
    #[error("socket LB: cannot attach `{program}` to the cgroup `{}`", cgroup.display())]
    SocketLb {
        program: &'static str,
        cgroup: PathBuf,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("the embedded eBPF object has no program `{0}`")]
    MissingProgram(&'static str),
    #[error("failed to load program `{name}` into the kernel")]
    Program {
        name: &'static str,
        #[source]
        source: Box<ProgramError>,
    },
    #[error("batch write to map `{name}`")]
    Batch {
        name: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("map `{name}`")]
    Map {
        name: &'static str,
        #[source]
        source: Box<MapError>,
    },
    #[error("failed to attach to interface `{iface}`")]
    Attach {
        iface: String,
        #[source]
        source: Box<ProgramError>,
    },
    #[error("failed to pin the link of `{iface}` at `{}`", path.display())]
    PinLink {
        iface: String,
        path: PathBuf,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// How to load the dataplane.
#[derive(Clone, Debug)]
pub struct Options {
    pub pin_dir: PathBuf,
    pub conntrack_size: u32,
    pub config: DataplaneConfig,
    /// Socket LB on this cgroup (v2) directory; `None`: off.
    pub socket_lb: Option<PathBuf>,
}

pub struct Dataplane {
    ebpf: Ebpf,
    maps: maps::Maps,
    pin_dir: PathBuf,
    /// Attached interfaces by ifindex (names change; indexes do not).
    links: BTreeMap<u32, Attached>,
    current: Current,
    /// Socket LB's cgroup, when it is on.
    socket_lb: Option<PathBuf>,
}

struct Attached {
    name: String,
    _link: PinnedLink,
}

impl Dataplane {
    /// Loads the programs, creating the pinned maps or adopting existing ones.
    pub fn load(opts: &Options) -> Result<Self, Error> {
        bpffs::ensure(&opts.pin_dir)?;
        bpffs::drop_incompatible_pins(&opts.pin_dir, opts.conntrack_size);
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(&opts.pin_dir)
            .map_max_entries(names::CONNTRACK, opts.conntrack_size)
            .override_global(CONFIG_GLOBAL, &opts.config, true)
            .load(EBPF_OBJ)
            .map_err(|e| Error::Load(Box::new(e)))?;
        let prog = tc_program(&mut ebpf)?;
        prog.load().map_err(|e| Error::Program {
            name: TC_PROGRAM,
            source: Box::new(e),
        })?;
        let maps = maps::Maps::take(&mut ebpf)?;
        let current = maps.adopt()?;
        match &opts.socket_lb {
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
            current,
            socket_lb: opts.socket_lb.clone(),
        })
    }

    /// Writes what `changes` asks that the maps do not hold yet; returns the
    /// number of map operations. On a failed write, the state is re-read
    /// from the maps (the caller then syncs everything).
    #[tracing::instrument(level = "debug", skip_all)]
    pub fn sync_changes(&mut self, changes: &DesiredChanges) -> Result<usize, Error> {
        let ops = reconcile_changes(changes, &mut self.current);
        if let Err(e) = self.maps.apply_all(&ops) {
            self.current = self.maps.adopt().unwrap_or_default();
            return Err(e);
        }
        let removed = ops
            .iter()
            .any(|op| matches!(op, Op::DeleteBackend(_) | Op::DeleteService { .. }));
        if removed && let Some(cgroup) = &self.socket_lb {
            self.close_stale_udp(cgroup.clone());
        }
        Ok(ops.len())
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
                    .map(|(_, b)| (b.addr(), b.port()))
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

    /// Every frontend and ClusterIP the maps hold.
    pub fn scope(&self) -> Touched {
        self.current.scope()
    }

    /// Attaches the TC program to an interface's ingress, replacing the
    /// program in a pinned link atomically when one exists. Idempotent; a
    /// renamed interface keeps its link.
    pub fn attach(&mut self, index: u32, name: &str) -> Result<(), Error> {
        if let Some(attached) = self.links.get_mut(&index) {
            name.clone_into(&mut attached.name);
            return Ok(());
        }
        let path = attach::link_pin_path(&self.pin_dir, index);
        let prog = tc_program(&mut self.ebpf)?;
        let link = attach::attach_pinned(prog, name, &path)?;
        self.links.insert(
            index,
            Attached {
                name: name.to_owned(),
                _link: link,
            },
        );
        Ok(())
    }

    /// Detaches from an interface that is gone or no longer matches: drops
    /// the link and its pin.
    pub fn detach(&mut self, index: u32) {
        self.links.remove(&index);
        attach::remove_pin(&attach::link_pin_path(&self.pin_dir, index));
    }

    /// Removes link pins of interfaces that no longer exist (deleted while
    /// the agent was not running).
    pub fn prune_links(&self, present: &BTreeSet<u32>) {
        attach::prune_pins(&self.pin_dir, present);
    }

    pub fn is_attached(&self, index: u32) -> bool {
        self.links.contains_key(&index)
    }

    pub fn attached(&self) -> impl Iterator<Item = &str> {
        self.links.values().map(|a| a.name.as_str())
    }

    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }
}

fn tc_program(ebpf: &mut Ebpf) -> Result<&mut SchedClassifier, Error> {
    ebpf.program_mut(TC_PROGRAM)
        .and_then(|p| <&mut SchedClassifier>::try_from(p).ok())
        .ok_or(Error::MissingProgram(TC_PROGRAM))
}

/// Opens one pinned map of the pin directory.
pub(crate) fn open_pinned(pin_dir: &Path, name: &'static str) -> Result<MapData, Error> {
    MapData::from_pin(pin_dir.join(name)).map_err(|e| Error::Map {
        name,
        source: Box::new(e),
    })
}
