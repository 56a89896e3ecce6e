//! The dataplane's errors: each names the map, program, interface or path
//! at fault, with its source.

use std::{io, path::PathBuf};

use aya::{maps::MapError, programs::ProgramError};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum Error {
    #[error("bpffs at `{}`", path.display())]
    Bpffs {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot start the `{name}` thread")]
    Thread {
        name: &'static str,
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
    #[error(
        "`--tc-attach tcx`: this kernel has no TCX (Linux 6.6 and later); use `netlink` or `auto`"
    )]
    NoTcx(#[source] Box<ProgramError>),
    #[error("this kernel lacks what the dataplane needs: {0}")]
    Kernel(String),
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

impl Error {
    /// The error and its sources, `: `-separated, as anyhow's `{:#}` prints
    /// them: for log lines and health answers.
    pub fn chain(&self) -> String {
        let mut out = self.to_string();
        let mut source = std::error::Error::source(self);
        while let Some(s) = source {
            out.push_str(": ");
            out.push_str(&s.to_string());
            source = s.source();
        }
        out
    }

    /// The map an error is about (`"-"` for others).
    pub const fn map(&self) -> &'static str {
        match self {
            Self::Batch { name, .. } | Self::Map { name, .. } => name,
            _ => "-",
        }
    }
}
