//! Sluice's node agent: an eBPF Service dataplane fed by a desired-state
//! model of Services and EndpointSlices.

pub mod app;
pub mod certs;
pub mod cidr;
pub mod cli;
pub mod config;
pub mod dataplane;
pub mod dns;
pub mod external;
pub mod frontend;
pub mod interfaces;
pub mod links;
pub mod model;
pub mod monitor;
pub mod plan;
pub mod reconcile;
pub mod servers;
pub mod settings;
pub mod source;
pub mod status;

/// The eBPF object built by `build.rs` (ebpf/programs), embedded so that the
/// binary carries its own kernel programs and tests load the very same ones.
pub static EBPF_OBJ: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sluice"));
