//! Kernel features, probed at start: each program type, helper, map type
//! and command the programs and the agent use. What is missing either
//! turns off what needs it, said in one log line (socket LB; XDP, whose
//! north-south logic then runs in TC), or stops the agent with the
//! feature named (the pod-facing TC dataplane).
//!
//! The probes load minimal programs or make a small map (aya's
//! `is_program_supported`, `is_helper_supported`, `is_map_supported`, as
//! libbpf's probes do); nothing is attached. `SLUICE_PROBE_MISSING`, a
//! comma-separated list of feature names, makes them report those missing
//! (for tests of what a missing feature does).

use std::collections::BTreeSet;

use aya::{
    maps::MapType,
    programs::ProgramType,
    sys::{BpfHelper, is_helper_supported, is_map_supported, is_program_supported},
};

/// What needs a feature.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    /// The dataplane itself: without it the agent does not start.
    Dataplane,
    /// North-south in XDP: without it, north-south runs in TC.
    Xdp,
    /// Socket LB: without it, socket LB is off.
    SocketLb,
}

/// One kernel feature.
#[derive(Debug)]
pub struct Feature {
    pub name: &'static str,
    /// The first Linux release with it.
    pub since: &'static str,
    pub need: Need,
    probe: fn() -> bool,
}

fn helper(program: ProgramType, helper: BpfHelper) -> bool {
    is_helper_supported(program, helper).unwrap_or(false)
}

fn program(program: ProgramType) -> bool {
    is_program_supported(program).unwrap_or(false)
}

fn map(map: MapType) -> bool {
    is_map_supported(map).unwrap_or(false)
}

/// `BPF_PROG_LOAD`'s attribute, as far as a probe needs it.
#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

/// Whether a `cgroup_sock_addr` program for attach point `attach_type`
/// (linux/bpf.h's `enum bpf_attach_type`) loads: a kernel without the
/// hook refuses the attach type. The program is `return 1` and is closed
/// at once; nothing is attached.
fn sock_addr_hook(attach_type: u32) -> bool {
    const BPF_PROG_LOAD: libc::c_long = 5;
    const BPF_PROG_TYPE_CGROUP_SOCK_ADDR: u32 = 18;
    // r0 = 1; exit.
    let insns: [u64; 2] = [0x0000_0001_0000_00b7, 0x95];
    let license = c"GPL";
    let mut attr = ProgLoadAttr {
        prog_type: BPF_PROG_TYPE_CGROUP_SOCK_ADDR,
        insn_cnt: 2,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        expected_attach_type: attach_type,
        ..ProgLoadAttr::default()
    };
    // SAFETY: a `prog_load` attribute of the size given, whose
    // instructions and license outlive the call.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_LOAD,
            &raw mut attr,
            size_of::<ProgLoadAttr>(),
        )
    };
    let Ok(fd) = i32::try_from(fd) else {
        return false;
    };
    if fd < 0 {
        return false;
    }
    // SAFETY: the kernel just returned this descriptor.
    unsafe { libc::close(fd) };
    true
}

/// Every feature the dataplane uses, with its need. TCX is probed apart
/// (`attach::choose`): without it TC attaches through netlink.
pub const FEATURES: &[Feature] = &[
    Feature {
        name: "program type sched_cls",
        since: "4.1",
        need: Need::Dataplane,
        probe: || program(ProgramType::SchedClassifier),
    },
    Feature {
        name: "helper bpf_fib_lookup in sched_cls",
        since: "4.18",
        need: Need::Dataplane,
        probe: || helper(ProgramType::SchedClassifier, BpfHelper::BPF_FUNC_fib_lookup),
    },
    Feature {
        name: "helper bpf_redirect_neigh",
        since: "5.10",
        need: Need::Dataplane,
        probe: || {
            helper(
                ProgramType::SchedClassifier,
                BpfHelper::BPF_FUNC_redirect_neigh,
            )
        },
    },
    Feature {
        name: "helper bpf_skb_change_tail",
        since: "4.9",
        need: Need::Dataplane,
        probe: || {
            helper(
                ProgramType::SchedClassifier,
                BpfHelper::BPF_FUNC_skb_change_tail,
            )
        },
    },
    Feature {
        name: "map type LRU hash",
        since: "4.10",
        need: Need::Dataplane,
        probe: || map(MapType::LruHash),
    },
    Feature {
        name: "map type LPM trie",
        since: "4.11",
        need: Need::Dataplane,
        probe: || map(MapType::LpmTrie),
    },
    Feature {
        name: "batch map commands",
        since: "5.6",
        need: Need::Dataplane,
        probe: super::batch::probe,
    },
    Feature {
        name: "program type xdp",
        since: "4.8",
        need: Need::Xdp,
        probe: || program(ProgramType::Xdp),
    },
    Feature {
        name: "helper bpf_fib_lookup in xdp",
        since: "4.18",
        need: Need::Xdp,
        probe: || helper(ProgramType::Xdp, BpfHelper::BPF_FUNC_fib_lookup),
    },
    Feature {
        name: "helper bpf_xdp_load_bytes",
        since: "5.18",
        need: Need::Xdp,
        probe: || helper(ProgramType::Xdp, BpfHelper::BPF_FUNC_xdp_load_bytes),
    },
    Feature {
        name: "helper bpf_xdp_store_bytes",
        since: "5.18",
        need: Need::Xdp,
        probe: || helper(ProgramType::Xdp, BpfHelper::BPF_FUNC_xdp_store_bytes),
    },
    Feature {
        name: "program type cgroup_sock_addr",
        since: "4.17",
        need: Need::SocketLb,
        probe: || program(ProgramType::CgroupSockAddr),
    },
    Feature {
        name: "attach point cgroup/connect4",
        since: "4.17",
        need: Need::SocketLb,
        probe: || sock_addr_hook(10),
    },
    Feature {
        name: "attach point cgroup/connect6",
        since: "4.17",
        need: Need::SocketLb,
        probe: || sock_addr_hook(11),
    },
    Feature {
        name: "attach point cgroup/sendmsg4",
        since: "4.18",
        need: Need::SocketLb,
        probe: || sock_addr_hook(14),
    },
    Feature {
        name: "attach point cgroup/sendmsg6",
        since: "4.18",
        need: Need::SocketLb,
        probe: || sock_addr_hook(15),
    },
    Feature {
        name: "attach point cgroup/recvmsg4",
        since: "5.2",
        need: Need::SocketLb,
        probe: || sock_addr_hook(19),
    },
    Feature {
        name: "attach point cgroup/recvmsg6",
        since: "5.2",
        need: Need::SocketLb,
        probe: || sock_addr_hook(20),
    },
    Feature {
        name: "attach point cgroup/getpeername4",
        since: "5.8",
        need: Need::SocketLb,
        probe: || sock_addr_hook(29),
    },
    Feature {
        name: "attach point cgroup/getpeername6",
        since: "5.8",
        need: Need::SocketLb,
        probe: || sock_addr_hook(30),
    },
    Feature {
        name: "helper bpf_set_retval",
        since: "5.18",
        need: Need::SocketLb,
        probe: || helper(ProgramType::CgroupSockAddr, BpfHelper::BPF_FUNC_set_retval),
    },
    Feature {
        name: "helper bpf_get_netns_cookie",
        since: "5.7",
        need: Need::SocketLb,
        probe: || {
            helper(
                ProgramType::CgroupSockAddr,
                BpfHelper::BPF_FUNC_get_netns_cookie,
            )
        },
    },
];

/// The environment variable that makes features report missing.
pub const MISSING_ENV: &str = "SLUICE_PROBE_MISSING";

/// What the kernel lacks.
#[derive(Debug, Default)]
pub struct Missing(Vec<&'static Feature>);

impl Missing {
    /// Probes every feature (those named in `SLUICE_PROBE_MISSING` report
    /// missing without a probe).
    pub fn probe() -> Self {
        let forced: BTreeSet<String> = std::env::var(MISSING_ENV)
            .unwrap_or_default()
            .split(',')
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .collect();
        Self(
            FEATURES
                .iter()
                .filter(|f| forced.contains(f.name) || !(f.probe)())
                .collect(),
        )
    }

    /// How many features are missing.
    pub const fn count(&self) -> usize {
        self.0.len()
    }

    /// The missing features `need` needs, named with their release, for a
    /// log line: `helper bpf_set_retval (Linux 5.18)`.
    pub fn for_need(&self, need: Need) -> Option<String> {
        let names: Vec<String> = self
            .0
            .iter()
            .filter(|f| f.need == need)
            .map(|f| format!("{} (Linux {})", f.name, f.since))
            .collect();
        (!names.is_empty()).then(|| names.join(", "))
    }
}
