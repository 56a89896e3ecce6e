//! The lab topology: one node namespace, pods wired to it by routed veths.
//!
//! ```text
//!   pod ns: eth0 10.244.1.N/32, default via 10.244.0.1 (onlink)
//!      │ veth
//!   node ns: vethN (no address), route 10.244.1.N/32 dev vethN;
//!            10.244.0.1/32 on lo (answers ARP on every veth);
//!            ip_forward=1, rp_filter=0; the agent's TC program on vethN
//! ```

use std::{
    fs,
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, UdpSocket},
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, Result, anyhow, bail};
use nix::mount::{MntFlags, umount2};

use crate::{
    Agent, AgentOptions, ApiServer, Cgroup, Netns, Responder,
    netns::{owner_is_dead, unique_stem},
    process::Process,
};

/// The pods' default gateway: an address of the node namespace.
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 1);
/// The node's IPv6 address (on its loopback), for pods given one too.
pub const GATEWAY6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x244, 0, 0, 0, 0, 0, 1);
/// The link-local address of the node's side of every pod's veth: an IPv6
/// pod's default route goes through it.
const LINK_GATEWAY6: &str = "fe80::1";
pub(crate) const LAB_DIR_PREFIX: &str = "sluice-lab-";

pub struct Pod {
    pub name: String,
    pub ip: Ipv4Addr,
    /// The host side of its veth, in the node namespace.
    pub host_if: String,
    pub ns: Netns,
}

pub struct Lab {
    dir: PathBuf,
    stem: String,
    // Field order is drop order: agent, API server, responders, pods, node.
    agent: Option<Agent>,
    apiserver: Option<ApiServer>,
    /// Other servers in pods (dnsmasq as an upstream DNS server).
    servers: Vec<(String, Process)>,
    responders: Vec<Responder>,
    pods: Vec<Pod>,
    node: Netns,
    /// Socket LB's cgroup: removed last, when nothing runs in it.
    cgroup: Cgroup,
}

impl Lab {
    /// A node namespace and an empty manifest directory.
    pub fn new() -> Result<Self> {
        let stem = unique_stem();
        let dir = std::env::temp_dir().join(format!("{LAB_DIR_PREFIX}{stem}"));
        fs::create_dir_all(dir.join("manifests"))
            .with_context(|| format!("creating {}", dir.display()))?;
        let node = Netns::create(&format!("{stem}-node"))?;
        let cgroup = Cgroup::create(&stem)?;
        let lab = Self {
            dir,
            stem,
            agent: None,
            apiserver: None,
            servers: Vec::new(),
            responders: Vec::new(),
            pods: Vec::new(),
            node,
            cgroup,
        };
        lab.node
            .ip(&["addr", "add", &format!("{GATEWAY}/32"), "dev", "lo"])?;
        lab.node.sysctl("net.ipv4.ip_forward", "1")?;
        lab.node.ip(&[
            "-6",
            "addr",
            "add",
            &format!("{GATEWAY6}/128"),
            "dev",
            "lo",
            "nodad",
        ])?;
        lab.node.sysctl("net.ipv6.conf.all.forwarding", "1")?;
        // Replies are reverse-NATed to the ClusterIP before routing; the
        // ClusterIP has no route back through the backend's veth.
        lab.node.sysctl("net.ipv4.conf.all.rp_filter", "0")?;
        lab.node.sysctl("net.ipv4.conf.default.rp_filter", "0")?;
        Ok(lab)
    }

    pub fn node(&self) -> &Netns {
        &self.node
    }

    pub fn manifests_dir(&self) -> PathBuf {
        self.dir.join("manifests")
    }

    pub fn pin_dir(&self) -> PathBuf {
        self.dir.join("bpf")
    }

    /// Adds a pod namespace with address `ip`, wired to the node.
    pub fn add_pod(&mut self, name: &str, ip: Ipv4Addr) -> Result<&Pod> {
        let host_if = format!("veth{}", self.pods.len());
        self.add_wired(name, ip, host_if)
    }

    /// Gives pod `name` an IPv6 address too, routed as its IPv4 one is:
    /// the node's side of its veth is `fe80::1`, its default route.
    pub fn add_ipv6(&mut self, name: &str, ip: Ipv6Addr) -> Result<()> {
        let pod = self.pod(name);
        let host_if = pod.host_if.clone();
        pod.ns.ip(&[
            "-6",
            "addr",
            "add",
            &format!("{ip}/128"),
            "dev",
            "eth0",
            "nodad",
        ])?;
        let link_local = format!("{LINK_GATEWAY6}/64");
        // Several pods' veths carry the same link-local address.
        self.node.ip(&[
            "-6",
            "addr",
            "replace",
            &link_local,
            "dev",
            &host_if,
            "nodad",
        ])?;
        pod.ns.ip(&[
            "-6",
            "route",
            "replace",
            "default",
            "via",
            LINK_GATEWAY6,
            "dev",
            "eth0",
        ])?;
        self.node
            .ip(&["-6", "route", "add", &format!("{ip}/128"), "dev", &host_if])?;
        Ok(())
    }

    /// A namespace wired as a pod is, but through an interface the agent
    /// does not treat as a pod's (`ext<N>`, outside `--interfaces`): a
    /// host beside the node, not one of its pods.
    pub fn add_outsider(&mut self, name: &str, ip: Ipv4Addr) -> Result<&Pod> {
        let host_if = format!("ext{}", self.pods.len());
        self.add_wired(name, ip, host_if)
    }

    fn add_wired(&mut self, name: &str, ip: Ipv4Addr, host_if: String) -> Result<&Pod> {
        let ns = Netns::create(&format!("{}-{name}", self.stem))?;
        self.node.ip(&[
            "link",
            "add",
            &host_if,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            ns.name(),
        ])?;
        ns.ip(&["addr", "add", &format!("{ip}/32"), "dev", "eth0"])?;
        ns.ip(&["link", "set", "eth0", "up"])?;
        ns.ip(&[
            "route",
            "add",
            &GATEWAY.to_string(),
            "dev",
            "eth0",
            "scope",
            "link",
        ])?;
        ns.ip(&[
            "route",
            "add",
            "default",
            "via",
            &GATEWAY.to_string(),
            "dev",
            "eth0",
        ])?;
        self.node.ip(&["link", "set", &host_if, "up"])?;
        self.node
            .ip(&["route", "add", &format!("{ip}/32"), "dev", &host_if])?;
        self.pods.push(Pod {
            name: name.to_owned(),
            ip,
            host_if,
            ns,
        });
        self.pods.last().ok_or_else(|| anyhow!("pod vanished"))
    }

    /// Every pod, in the order they were added.
    pub fn pods(&self) -> &[Pod] {
        &self.pods
    }

    pub fn pod(&self, name: &str) -> &Pod {
        self.pods
            .iter()
            .find(|p| p.name == name)
            .unwrap_or_else(|| panic!("no pod `{name}` in the lab"))
    }

    /// Runs a responder in pod `name` on the given ports.
    pub fn serve(&mut self, name: &str, tcp: &[u16], udp: &[u16]) -> Result<()> {
        let responder = Responder::start(&self.pod(name).ns, name, tcp, udp)?;
        self.responders.push(responder);
        Ok(())
    }

    /// A DNS server (Debian's dnsmasq) in pod `name` at `ip`, answering
    /// from `args` only (`--host-record=…`, `--local=/zone/`): it reads no
    /// config file, no hosts file and no resolv.conf.
    pub fn add_dnsmasq(&mut self, name: &str, ip: Ipv4Addr, args: &[&str]) -> Result<()> {
        self.add_pod(name, ip)?;
        self.start_dnsmasq(name, args)
    }

    /// dnsmasq in pod `name` (again, after `stop_server`), on its address.
    pub fn start_dnsmasq(&mut self, name: &str, args: &[&str]) -> Result<()> {
        let ip = self.pod(name).ip;
        let file = self.pod(name).ns.open()?;
        let mut cmd = dnsmasq_command(ip);
        cmd.args(args);
        crate::netns::enter_on_spawn(&mut cmd, &file);
        let echo = std::env::var_os("SLUICE_LAB_ECHO").is_some();
        let mut process = Process::spawn("dnsmasq", cmd, echo)?;
        drop(file);
        process
            .wait_for("started, version", 0, Duration::from_secs(10))
            .context("dnsmasq did not start")?;
        self.servers.push((name.to_owned(), process));
        Ok(())
    }

    /// Stops the server started in pod `name` (SIGTERM, then SIGKILL).
    pub fn stop_server(&mut self, name: &str) -> Result<()> {
        let i = self
            .servers
            .iter()
            .position(|(n, _)| n == name)
            .ok_or_else(|| anyhow!("no server in pod `{name}`"))?;
        let (_, mut process) = self.servers.remove(i);
        process.signal_and_wait(nix::sys::signal::Signal::SIGTERM)?;
        Ok(())
    }

    /// Writes a manifest atomically (a hidden temporary file, then rename),
    /// as `kubectl cp` or a `ConfigMap` update would.
    pub fn write_manifest(&self, file: &str, content: &str) -> Result<()> {
        let dir = self.manifests_dir();
        let tmp = dir.join(format!(".{file}.tmp"));
        fs::write(&tmp, content)?;
        fs::rename(&tmp, dir.join(file))?;
        Ok(())
    }

    pub fn remove_manifest(&self, file: &str) -> Result<()> {
        Ok(fs::remove_file(self.manifests_dir().join(file))?)
    }

    /// Starts the agent in the node namespace and waits until it is ready.
    pub fn start_agent(&mut self, opts: &AgentOptions) -> Result<&mut Agent> {
        if self.agent.is_some() {
            bail!("the agent is already running");
        }
        let agent = Agent::start(&self.node, &self.agent_dirs(), opts)?;
        Ok(self.agent.insert(agent))
    }

    /// Starts the agent without waiting for it to be ready.
    pub fn spawn_agent(&mut self, opts: &AgentOptions) -> Result<&mut Agent> {
        if self.agent.is_some() {
            bail!("the agent is already running");
        }
        let agent = Agent::spawn(&self.node, &self.agent_dirs(), opts)?;
        Ok(self.agent.insert(agent))
    }

    fn agent_dirs(&self) -> crate::agent::Dirs {
        crate::agent::Dirs {
            manifests: self.manifests_dir(),
            pin_dir: self.pin_dir(),
            cgroup: self.cgroup.path().to_path_buf(),
        }
    }

    /// The lab's cgroup: socket LB acts on the processes in it.
    pub fn cgroup(&self) -> &Cgroup {
        &self.cgroup
    }

    pub fn agent(&mut self) -> &mut Agent {
        self.agent.as_mut().expect("the agent is not running")
    }

    /// Starts `sluice-apiserver` in the node namespace, on 127.0.0.1:6443,
    /// with its state under the lab directory; kubectl runs there too.
    pub fn start_apiserver(&mut self, args: &[&str]) -> Result<&mut ApiServer> {
        let data_dir = self.dir.join("apiserver");
        self.start_apiserver_at(&data_dir, args)
    }

    /// As `start_apiserver`, with its state in `data_dir` (e.g. on tmpfs).
    pub fn start_apiserver_at(&mut self, data_dir: &Path, args: &[&str]) -> Result<&mut ApiServer> {
        if self.apiserver.is_some() {
            bail!("the API server is already running");
        }
        let server = ApiServer::start_in(Some(&self.node), data_dir, args)?;
        Ok(self.apiserver.insert(server))
    }

    pub fn apiserver(&mut self) -> &mut ApiServer {
        self.apiserver
            .as_mut()
            .expect("the API server is not running")
    }

    /// The lab's own directory (removed on drop), for test files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Takes the running agent out (to stop or kill it).
    pub fn take_agent(&mut self) -> Option<Agent> {
        self.agent.take()
    }

    /// `sluice status` against this lab's pins.
    pub fn status(&self, bin: &Path) -> Result<String> {
        // In the node's namespace, where the agent's health port is.
        let (bin, pin_dir) = (bin.to_path_buf(), self.pin_dir());
        self.node.run(move || {
            crate::run(
                std::process::Command::new(bin)
                    .arg("status")
                    .arg("--pin-dir")
                    .arg(pin_dir),
            )
        })?
    }
}

impl Pod {
    /// One request over a new TCP connection; returns the answer line.
    pub fn tcp_request(&self, to: SocketAddr, timeout: Duration) -> Result<String> {
        self.ns.run(move || -> Result<String> {
            let mut s = TcpStream::connect_timeout(&to, timeout)?;
            request_line(&mut s, timeout)
        })?
    }

    /// Opens a TCP connection from this pod (for long-lived flows).
    pub fn tcp_connect(&self, to: SocketAddr, timeout: Duration) -> Result<TcpStream> {
        Ok(self
            .ns
            .run(move || TcpStream::connect_timeout(&to, timeout))??)
    }

    /// One UDP request/response from a fresh socket.
    pub fn udp_request(&self, to: SocketAddr, timeout: Duration) -> Result<(String, SocketAddr)> {
        self.ns.run(move || -> Result<(String, SocketAddr)> {
            let s = UdpSocket::bind(unspecified(to))?;
            s.set_read_timeout(Some(timeout))?;
            s.send_to(b"hello\n", to)?;
            let mut buf = [0u8; 2048];
            let (n, from) = s.recv_from(&mut buf)?;
            Ok((
                String::from_utf8_lossy(buf.get(..n).unwrap_or_default()).into_owned(),
                from,
            ))
        })?
    }

    /// Sends a raw Ethernet frame out of the pod's eth0 (an `AF_PACKET` socket),
    /// e.g. a malformed packet no socket API would build.
    pub fn send_raw_frame(&self, frame: Vec<u8>) -> Result<()> {
        self.send_frames(vec![frame])
    }

    /// The MAC address of an interface in this pod's namespace.
    pub fn mac(&self, iface: &str) -> Result<[u8; 6]> {
        mac_of(&self.ns, iface)
    }

    /// A UDP socket in this pod.
    pub fn udp_socket(&self) -> Result<UdpSocket> {
        self.udp_socket_on(0)
    }

    /// A UDP socket in this pod on `port`.
    pub fn udp_socket_on(&self, port: u16) -> Result<UdpSocket> {
        Ok(self.ns.run(move || UdpSocket::bind(("0.0.0.0", port)))??)
    }
}

/// Any port of the unspecified address of `to`'s family, to bind a client
/// socket to.
pub fn unspecified(to: SocketAddr) -> SocketAddr {
    match to {
        SocketAddr::V4(_) => SocketAddr::from(([0, 0, 0, 0], 0)),
        SocketAddr::V6(_) => SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0)),
    }
}

/// The MAC address of `iface` in `ns`, from `ip link show`.
pub fn mac_of(ns: &Netns, iface: &str) -> Result<[u8; 6]> {
    let out = ns.ip(&["link", "show", iface])?;
    let text = out
        .split_whitespace()
        .skip_while(|w| *w != "link/ether")
        .nth(1)
        .ok_or_else(|| anyhow!("no MAC address for {iface}"))?;
    let mut mac = [0u8; 6];
    let mut parts = text.split(':');
    for byte in &mut mac {
        *byte = u8::from_str_radix(parts.next().ok_or_else(|| anyhow!("bad MAC {text}"))?, 16)?;
    }
    Ok(mac)
}

/// Sends one request line on a connection and reads the answer line.
pub fn request_line(s: &mut TcpStream, timeout: Duration) -> Result<String> {
    s.set_read_timeout(Some(timeout))?;
    s.write_all(b"hello\n")?;
    let mut line = String::new();
    BufReader::new(std::io::Read::by_ref(s).take(4096)).read_line(&mut line)?;
    if line.is_empty() {
        bail!("the connection closed without an answer");
    }
    Ok(line)
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.agent.take();
        self.apiserver.take();
        self.servers.clear();
        self.responders.clear();
        self.pods.clear();
        // The node namespace is dropped after this body; the pin directory is
        // a bpffs the agent mounted: unmount it, which drops every pin.
        let pin = self.pin_dir();
        let _ = umount2(&pin, MntFlags::MNT_DETACH);
        if let Err(e) = fs::remove_dir_all(&self.dir) {
            eprintln!("warning: removing {}: {e}", self.dir.display());
        }
    }
}

/// Unmounts and removes lab directories of processes that are gone.
pub(crate) fn reap_stale_dirs() {
    let Ok(entries) = fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(stem) = name.strip_prefix(LAB_DIR_PREFIX) else {
            continue;
        };
        if owner_is_dead(stem) {
            let _ = umount2(&entry.path().join("bpf"), MntFlags::MNT_DETACH);
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

/// Debian's dnsmasq in the foreground, listening on `ip` only and logging to
/// stderr. It reads no config file, no hosts file and no resolv.conf: it
/// knows only what the caller adds (`--host-record=…`, `--server=…`).
pub fn dnsmasq_command(ip: Ipv4Addr) -> std::process::Command {
    let mut cmd = std::process::Command::new("dnsmasq");
    cmd.args([
        "--keep-in-foreground",
        "--log-facility=-",
        "--conf-file=/dev/null",
        "--no-resolv",
        "--no-hosts",
        "--no-poll",
        "--bind-interfaces",
        "--user=root",
        "--pid-file=",
    ])
    .arg(format!("--listen-address={ip}"));
    cmd
}
