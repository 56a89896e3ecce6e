//! What the TC and XDP packet tests share: the agent's eBPF object loaded
//! with its maps pinned in a bpffs of the test's own, one program loaded,
//! the maps filled as the agent fills them (reconcile, then `apply_all`),
//! and frames run through BPF_PROG_TEST_RUN inside the test's namespace,
//! whose routes the program's lookups see.

use aya::{
    Ebpf, EbpfLoader,
    programs::{SchedClassifier, TestRun as _, TestRunOptions, Xdp},
};
use sluice_abi::{
    config::DataplaneConfig,
    stats::{DropReason, Event},
};
use sluice_agent::{
    EBPF_OBJ,
    dataplane::maps::Maps,
    model::Desired,
    reconcile::{Current, reconcile},
};
use sluice_lab::{Bpffs, Netns};

/// The program under test.
#[derive(Clone, Copy)]
pub enum Hook {
    /// `tc_ingress`, on pod-facing interfaces.
    Tc,
    /// `xdp_ingress`, on external interfaces.
    Xdp,
    /// `tc_north_south`, on external interfaces (`--xdp-mode tc`).
    TcEdge,
}

impl Hook {
    const fn program(self) -> &'static str {
        match self {
            Self::Tc => "tc_ingress",
            Self::Xdp => "xdp_ingress",
            Self::TcEdge => "tc_north_south",
        }
    }
}

/// The loaded object, its maps, and what reconcile believes they hold.
pub struct Loaded {
    pub ebpf: Ebpf,
    pub maps: Maps,
    pub current: Current,
    pub fs: Bpffs,
    hook: Hook,
}

/// Frames out are at most this long.
const OUT_MAX: usize = 2048;

impl Loaded {
    /// The object with `config` and `conntrack_size` entries of conntrack
    /// (split as the agent splits `--conntrack-size`), and `hook` loaded.
    pub fn new(hook: Hook, config: &DataplaneConfig, conntrack_size: u32) -> Self {
        let fs = Bpffs::new().unwrap();
        let mut loader = EbpfLoader::new();
        loader.default_map_pin_directory(fs.path());
        let sizes = sluice_abi::conntrack::split_sizes(conntrack_size);
        for (name, size) in sluice_abi::maps::CONNTRACK.iter().zip(sizes) {
            loader.map_max_entries(name, size);
        }
        for (name, size) in sluice_abi::maps::CONNTRACK6.iter().zip(sizes) {
            loader.map_max_entries(name, size);
        }
        let mut ebpf = loader
            .override_global("CONFIG", config, true)
            .load(EBPF_OBJ)
            .unwrap();
        let program = ebpf.program_mut(hook.program()).unwrap();
        match hook {
            Hook::Tc | Hook::TcEdge => {
                <&mut SchedClassifier>::try_from(program)
                    .unwrap()
                    .load()
                    .unwrap();
                // Only the programs this one hands packets to: each load
                // is a verification, slow in the 6.1 guest.
                let prefix = match hook {
                    Hook::TcEdge => "tc_edge6",
                    _ => "tc_ingress6",
                };
                sluice_agent::dataplane::link_tail_calls(&mut ebpf, |n| n.starts_with(prefix))
                    .unwrap();
            }
            Hook::Xdp => {
                <&mut Xdp>::try_from(program).unwrap().load().unwrap();
                sluice_agent::dataplane::link_tail_calls(&mut ebpf, |n| n.starts_with("xdp_edge6"))
                    .unwrap();
            }
        }
        let maps = Maps::take(&mut ebpf).unwrap();
        Self {
            ebpf,
            maps,
            current: Current::default(),
            fs,
            hook,
        }
    }

    /// Makes the maps hold `desired`, written as the agent writes them: in
    /// write order, in batches.
    pub fn program(&mut self, desired: &Desired) {
        let ops = reconcile(desired, &mut self.current);
        self.maps.apply_all(&ops).unwrap();
    }

    /// Runs the program on `frame` with context `ctx` (`__sk_buff` or
    /// `xdp_md`), inside `ns`: the verdict and the frame as it left.
    pub fn run(&self, frame: &[u8], ctx: &[u8], ns: &Netns) -> (u32, Vec<u8>) {
        self.run_hook(self.hook, frame, ctx, ns)
    }

    /// Loads `xdp_ingress` (and `xdp_edge6`, its tail call) beside a TC
    /// hook, for tests of flows TC creates and XDP then translates.
    pub fn load_xdp(&mut self) {
        let program = self.ebpf.program_mut(Hook::Xdp.program()).unwrap();
        <&mut Xdp>::try_from(program).unwrap().load().unwrap();
        sluice_agent::dataplane::link_tail_calls(&mut self.ebpf, |n| n.starts_with("xdp_edge6"))
            .unwrap();
    }

    /// Runs `xdp_ingress` (`load_xdp`) on `frame` arriving on interface
    /// `ifindex`, inside `ns`.
    pub fn run_xdp(&self, frame: &[u8], ifindex: u32, ns: &Netns) -> (u32, Vec<u8>) {
        // struct xdp_md: data, data_end, data_meta, ingress_ifindex,
        // rx_queue_index, egress_ifindex.
        let len = u32::try_from(frame.len()).unwrap();
        let ctx: Vec<u8> = [0, len, 0, ifindex, 0, 0]
            .iter()
            .flat_map(|v: &u32| v.to_ne_bytes())
            .collect();
        self.run_hook(Hook::Xdp, frame, &ctx, ns)
    }

    fn run_hook(&self, hook: Hook, frame: &[u8], ctx: &[u8], ns: &Netns) -> (u32, Vec<u8>) {
        let mut out = vec![0u8; OUT_MAX];
        let opts = TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            ctx_in: Some(ctx),
            ..TestRunOptions::default()
        };
        let program = self.ebpf.program(hook.program()).unwrap();
        let _inside = ns.enter().unwrap();
        let r = match hook {
            Hook::Tc | Hook::TcEdge => <&SchedClassifier>::try_from(program)
                .unwrap()
                .test_run(opts),
            Hook::Xdp => <&Xdp>::try_from(program).unwrap().test_run(opts),
        }
        .unwrap();
        out.truncate(usize::try_from(r.data_size_out).unwrap());
        (r.return_value, out)
    }

    pub fn drops(&self, reason: DropReason) -> u64 {
        self.maps.drop_count(reason)
    }

    pub fn events(&self, event: Event) -> u64 {
        self.maps.event_count(event)
    }
}

/// A loaded program and the place it believes it runs in (`S`: the pod's
/// interface, or the node's external one); it reads as its `Loaded`.
pub struct Harness<S> {
    pub loaded: Loaded,
    pub side: S,
}

impl<S> std::ops::Deref for Harness<S> {
    type Target = Loaded;
    fn deref(&self) -> &Loaded {
        &self.loaded
    }
}

impl<S> std::ops::DerefMut for Harness<S> {
    fn deref_mut(&mut self) -> &mut Loaded {
        &mut self.loaded
    }
}
