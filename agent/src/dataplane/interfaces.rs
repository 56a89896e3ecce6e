//! Which interfaces carry which programs: `tc_ingress` on pod interfaces,
//! and on external interfaces XDP with `tc_external` behind it, or
//! `tc_north_south` alone with `--xdp-mode tc`. Each link is pinned, so
//! a restart finds it and replaces its program in place (`attach.rs`).

use std::collections::BTreeSet;

use aya::programs::{XdpMode, links::PinnedLink};

use super::{
    Attached, Dataplane, Error, ExternalAttached, TC_EXTERNAL, TC_NORTH_SOUTH, XdpAttach, attach,
    classifier, tc_program, xdp_program,
};

impl Dataplane {
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
        let link = attach::attach_tc(prog, name, &path, self.tc_path)?;
        self.links.insert(
            index,
            Attached {
                name: name.to_owned(),
                link,
            },
        );
        Ok(())
    }

    /// Attaches the XDP program (or, with `--xdp-mode tc`, its TC twin) to
    /// an external interface, flows to backends on other nodes leaving it
    /// SNATed to `snat` (updated when called again). Replaces the program
    /// of a pinned link atomically.
    pub fn attach_xdp(
        &mut self,
        index: u32,
        name: &str,
        snat: crate::external::Snat,
    ) -> Result<(), Error> {
        // Before the program sees a packet: routes out of here are remote.
        self.maps.set_ext_if6(index, snat.v6)?;
        // No IPv4 address (an IPv6-only node): still external, and its
        // IPv4 flows to other nodes are dropped (`ExtIf::snat`).
        let v4 = snat.v4.unwrap_or(std::net::Ipv4Addr::UNSPECIFIED);
        self.maps.set_ext_if(index, Some(v4))?;
        if let Some(attached) = self.xdp_links.get_mut(&index) {
            name.clone_into(&mut attached.name);
            return Ok(());
        }
        match self.attach_external(index, name) {
            Ok((xdp, tc)) => {
                self.xdp_links.insert(
                    index,
                    ExternalAttached {
                        name: name.to_owned(),
                        _xdp: xdp,
                        tc,
                    },
                );
                Ok(())
            }
            Err(e) => {
                let _ = self.maps.set_ext_if(index, None);
                let _ = self.maps.set_ext_if6(index, None);
                Err(e)
            }
        }
    }

    /// The links of an external interface: XDP and `tc_external` behind
    /// it; or, with `--xdp-mode tc`, `tc_north_south` in `tc_external`'s
    /// place (its pinned link's program is replaced) and no XDP (a link
    /// pinned in another mode is removed).
    fn attach_external(
        &mut self,
        index: u32,
        name: &str,
    ) -> Result<(Option<PinnedLink>, attach::TcLink), Error> {
        let xdp_path = attach::xdp_pin_path(&self.pin_dir, index);
        let tc_path = attach::ext_tc_pin_path(&self.pin_dir, index);
        let mode = match self.xdp_mode {
            XdpAttach::Tc => {
                attach::remove_pin(&xdp_path);
                let prog = classifier(&mut self.ebpf, TC_NORTH_SOUTH)?;
                return Ok((None, attach::attach_tc(prog, name, &tc_path, self.tc_path)?));
            }
            XdpAttach::Native => Some(XdpMode::Driver),
            XdpAttach::Generic => Some(XdpMode::Skb),
            XdpAttach::Auto => None,
        };
        let prog = xdp_program(&mut self.ebpf)?;
        let xdp = match mode {
            Some(mode) => attach::attach_xdp_pinned(prog, index, name, &xdp_path, mode)?,
            None => attach::attach_xdp_pinned(prog, index, name, &xdp_path, XdpMode::Driver)
                .or_else(|e| {
                    tracing::info!(
                        iface = name,
                        "no native XDP ({:#}); attaching generic XDP",
                        e.chain()
                    );
                    attach::attach_xdp_pinned(prog, index, name, &xdp_path, XdpMode::Skb)
                })?,
        };
        let prog = classifier(&mut self.ebpf, TC_EXTERNAL)?;
        Ok((
            Some(xdp),
            attach::attach_tc(prog, name, &tc_path, self.tc_path)?,
        ))
    }

    /// Detaches XDP from an interface that is gone or no longer external.
    pub fn detach_xdp(&mut self, index: u32) {
        if let Some(attached) = self.xdp_links.remove(&index) {
            attached.tc.detach(index);
        }
        attach::remove_pin(&attach::xdp_pin_path(&self.pin_dir, index));
        attach::remove_pin(&attach::ext_tc_pin_path(&self.pin_dir, index));
        for result in [
            self.maps.set_ext_if(index, None),
            self.maps.set_ext_if6(index, None),
        ] {
            if let Err(e) = result {
                tracing::warn!("{}", e.chain());
            }
        }
    }

    /// Interfaces with a pinned XDP link (from before a restart, too).
    pub fn xdp_pinned(&self) -> BTreeSet<u32> {
        attach::xdp_pins(&self.pin_dir)
    }

    pub fn is_xdp_attached(&self, index: u32) -> bool {
        self.xdp_links.contains_key(&index)
    }

    pub fn xdp_attached(&self) -> impl Iterator<Item = &str> {
        self.xdp_links.values().map(|a| a.name.as_str())
    }

    /// Detaches from an interface that is gone or no longer matches: drops
    /// the link and its pin.
    pub fn detach(&mut self, index: u32) {
        if let Some(attached) = self.links.remove(&index) {
            attached.link.detach(index);
        }
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
}
