//! A private bpffs mount for tests that load programs with pinned maps.

use std::{fs, path::PathBuf};

use anyhow::{Context as _, Result};
use nix::mount::{MntFlags, MsFlags, mount, umount2};

use crate::netns::unique_stem;

/// A bpffs mounted in a directory of its own; unmounted and removed on drop.
pub struct Bpffs {
    root: PathBuf,
}

impl Bpffs {
    pub fn new() -> Result<Self> {
        let root =
            std::env::temp_dir().join(format!("{}{}", crate::lab::LAB_DIR_PREFIX, unique_stem()));
        let dir = root.join("bpf");
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let fs = Self { root };
        mount(
            Some("bpf"),
            &dir,
            Some("bpf"),
            MsFlags::empty(),
            Some("mode=0700"),
        )
        .with_context(|| format!("mounting bpffs at {}", dir.display()))?;
        Ok(fs)
    }

    pub fn path(&self) -> PathBuf {
        self.root.join("bpf")
    }
}

impl Drop for Bpffs {
    fn drop(&mut self) {
        let _ = umount2(&self.path(), MntFlags::MNT_DETACH);
        let _ = fs::remove_dir_all(&self.root);
    }
}
