//! `sluice monitor`: the kernel's drops, rejects and new flows as they
//! happen, read from the pinned ring buffer (`SLUICE_MONITOR`), with the
//! frontend's name, the backend and the interface; filtered, as text or
//! JSON lines. While it runs, a flag (`SLUICE_MON_ON`) tells the programs
//! to write events; it is cleared when the monitor stops.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    io::Write as _,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use aya::maps::{Array, HashMap, Map, MapData, PerCpuArray, RingBuf};
use sluice_abi::{
    addr::In6,
    maps as names,
    monitor::{
        FAMILY_V6, KIND_DROP, KIND_NEW_FLOW, KIND_REJECT, MonitorEvent, MonitorLimiter, as_v4,
    },
    proto,
    service::{ServiceKey, ServiceKey6, ServiceName, ServiceValue},
    stats::DropReason,
};
use tokio::{
    io::{Interest, unix::AsyncFd},
    signal::unix::{SignalKind, signal},
};

/// What to show.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    /// `namespace/name` (every port) or `namespace/name:port`.
    pub service: Option<String>,
    /// A drop reason's label (`no_endpoints`, …).
    pub reason: Option<String>,
    /// The event's source, destination, backend or SNAT address.
    pub addr: Option<IpAddr>,
    /// `drop`, `reject`, `new-flow` or `snat` (new flows that got a SNAT port).
    pub kind: Option<String>,
}

/// One event, as shown.
#[derive(Debug, serde::Serialize)]
pub struct Line {
    /// RFC 3339, from the kernel's timestamp.
    pub time: String,
    pub kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'static str>,
    pub proto: &'static str,
    pub src: String,
    pub dst: String,
    /// `namespace/name:port`, when the event names a frontend.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub frontend: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backend: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snat: Option<String>,
    pub iface: String,
    /// The addresses above, for `Filter::addr`.
    #[serde(skip)]
    pub addrs: Vec<IpAddr>,
}

impl Line {
    fn text(&self) -> String {
        let mut out = format!(
            "{} {:<8} {:<5} {} -> {}",
            self.time, self.kind, self.proto, self.src, self.dst
        );
        for (label, value) in [
            ("reason", self.reason.map(str::to_owned)),
            ("frontend", self.frontend.clone()),
            ("backend", self.backend.clone()),
            ("snat", self.snat.clone()),
        ] {
            if let Some(v) = value {
                let _ = write!(out, " {label}={v}");
            }
        }
        let _ = write!(out, " iface={}", self.iface);
        out
    }

    fn matches(&self, f: &Filter) -> bool {
        let service = f.service.as_ref().is_none_or(|want| {
            self.frontend.as_ref().is_some_and(|have| {
                have == want
                    || have
                        .strip_prefix(want.as_str())
                        .is_some_and(|r| r.starts_with(':'))
            })
        });
        let reason = f
            .reason
            .as_ref()
            .is_none_or(|want| self.reason == Some(want.as_str()));
        let kind = f.kind.as_deref().is_none_or(|want| match want {
            "snat" => self.snat.is_some(),
            other => other == self.kind,
        });
        let addr = f.addr.is_none_or(|want| self.addrs.contains(&want));
        service && reason && kind && addr
    }
}

/// Frontend names by id, read from the pins again on a miss.
struct Names {
    map: HashMap<MapData, u32, ServiceName>,
    frontends: HashMap<MapData, ServiceKey, ServiceValue>,
    /// Absent in the pins of a build without IPv6.
    frontends6: Option<HashMap<MapData, ServiceKey6, ServiceValue>>,
    known: BTreeMap<u32, String>,
}

impl Names {
    /// The frontend an event was about: its id, or else (a reject or drop
    /// before one was chosen) the one at its destination.
    fn of(&mut self, e: &MonitorEvent) -> Option<String> {
        if e.service_id != 0 {
            return self.get(e.service_id);
        }
        let port = u16::from_be_bytes(e.dport_be);
        let value = match address(e.family, e.daddr_be) {
            IpAddr::V4(a) => self
                .frontends
                .get(&ServiceKey::new(a, port, e.proto), 0)
                .ok()?,
            IpAddr::V6(a) => self
                .frontends6
                .as_ref()?
                .get(&ServiceKey6::new(a, port, e.proto), 0)
                .ok()?,
        };
        self.get(value.id)
    }

    fn get(&mut self, id: u32) -> Option<String> {
        if id == 0 {
            return None;
        }
        if !self.known.contains_key(&id) {
            let name = self.map.get(&id, 0).ok()?;
            self.known.insert(id, name.as_str().to_owned());
        }
        self.known.get(&id).cloned()
    }
}

/// Clears the flag when the monitor stops, however it stops.
struct Attached(Array<MapData, u32>);

impl Drop for Attached {
    fn drop(&mut self) {
        if let Err(e) = self.0.set(0, 0, 0) {
            tracing::warn!("clearing the monitor flag: {e}");
        }
    }
}

fn open(pin_dir: &Path, name: &'static str) -> anyhow::Result<MapData> {
    MapData::from_pin(pin_dir.join(name)).map_err(|e| {
        anyhow::anyhow!(
            "opening `{}` (is the agent running with this pin dir?): {e}",
            pin_dir.join(name).display()
        )
    })
}

/// Shows events until SIGINT or SIGTERM; `json`: one JSON object a line.
pub fn run(pin_dir: &Path, filter: &Filter, json: bool) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(watch(pin_dir.to_path_buf(), filter, json))
}

async fn watch(pin_dir: PathBuf, filter: &Filter, json: bool) -> anyhow::Result<()> {
    let ring = RingBuf::try_from(Map::RingBuf(open(&pin_dir, names::MONITOR)?))?;
    // SAFETY: the ring buffer owns its map's descriptor, which stays open
    // and the same until the `AsyncFd` (and the ring in it) is dropped.
    let mut ring = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
        .map_err(|e| anyhow::anyhow!("watching the ring buffer: {e}"))?;
    let limiter: PerCpuArray<MapData, MonitorLimiter> =
        PerCpuArray::try_from(Map::PerCpuArray(open(&pin_dir, names::MONITOR_LIMIT)?))?;
    let mut names = Names {
        map: HashMap::try_from(Map::HashMap(open(&pin_dir, names::SERVICE_NAMES)?))?,
        frontends: HashMap::try_from(Map::HashMap(open(&pin_dir, names::SERVICES)?))?,
        frontends6: open(&pin_dir, names::SERVICES6)
            .ok()
            .and_then(|m| HashMap::try_from(Map::HashMap(m)).ok()),
        known: BTreeMap::new(),
    };
    let mut flag: Array<MapData, u32> =
        Array::try_from(Map::Array(open(&pin_dir, names::MONITOR_ON)?))?;
    flag.set(0, 1, 0)?;
    let _attached = Attached(flag);
    let clock = Clock::now();
    let mut suppressed = suppressed_total(&limiter);
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    eprintln!(
        "monitoring the dataplane at {} (Ctrl-C to stop)",
        pin_dir.display()
    );
    let mut out = std::io::stdout().lock();
    loop {
        tokio::select! {
            ready = ring.readable_mut() => {
                let mut guard = ready?;
                let ring = guard.get_inner_mut();
                while let Some(item) = ring.next() {
                    let Some(event) = read_event(&item) else { continue };
                    let line = describe(&event, &mut names, &clock);
                    if line.matches(filter) {
                        let text = if json { serde_json::to_string(&line)? } else { line.text() };
                        writeln!(out, "{text}")?;
                    }
                }
                out.flush()?;
                guard.clear_ready();
            }
            _ = tick.tick() => {
                let now = suppressed_total(&limiter);
                if now > suppressed {
                    eprintln!("{} events not shown: over the rate limit or the ring full", now - suppressed);
                    suppressed = now;
                }
            }
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
        }
    }
    Ok(())
}

fn read_event(bytes: &[u8]) -> Option<MonitorEvent> {
    if bytes.len() < size_of::<MonitorEvent>() {
        return None;
    }
    // SAFETY: the length is checked; MonitorEvent is plain integers, and
    // read_unaligned makes no assumption about the ring's alignment.
    Some(unsafe { bytes.as_ptr().cast::<MonitorEvent>().read_unaligned() })
}

fn suppressed_total(limiter: &PerCpuArray<MapData, MonitorLimiter>) -> u64 {
    limiter
        .get(&0, 0)
        .map(|v| v.iter().map(|l| l.suppressed).sum())
        .unwrap_or_default()
}

/// The kernel's monotonic clock against the wall clock.
struct Clock {
    wall: SystemTime,
    mono_ns: u64,
}

impl Clock {
    fn now() -> Self {
        let mono = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
            .map(|t| {
                u64::try_from(t.tv_sec()).unwrap_or_default() * 1_000_000_000
                    + u64::try_from(t.tv_nsec()).unwrap_or_default()
            })
            .unwrap_or_default();
        Self {
            wall: SystemTime::now(),
            mono_ns: mono,
        }
    }

    fn wall(&self, ts_ns: u64) -> String {
        let at = if ts_ns >= self.mono_ns {
            self.wall + Duration::from_nanos(ts_ns - self.mono_ns)
        } else {
            self.wall - Duration::from_nanos(self.mono_ns - ts_ns)
        };
        time::OffsetDateTime::from(at)
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default()
    }
}

/// An event's address field, as its family reads.
fn address(family: u8, a: In6) -> IpAddr {
    if family == FAMILY_V6 {
        IpAddr::V6(Ipv6Addr::from(a))
    } else {
        IpAddr::V4(Ipv4Addr::from(as_v4(a)))
    }
}

fn endpoint(addr: IpAddr, port: [u8; 2]) -> String {
    let port = u16::from_be_bytes(port);
    if port == 0 {
        addr.to_string()
    } else {
        std::net::SocketAddr::from((addr, port)).to_string()
    }
}

fn describe(e: &MonitorEvent, names: &mut Names, clock: &Clock) -> Line {
    let kind = match e.kind {
        KIND_DROP => "drop",
        KIND_REJECT => "reject",
        KIND_NEW_FLOW => "new-flow",
        _ => "?",
    };
    let reason = (e.kind != KIND_NEW_FLOW)
        .then(|| DropReason::try_from(u32::from(e.reason)).map_or("?", DropReason::label));
    let proto = match e.proto {
        proto::TCP => "TCP",
        proto::UDP => "UDP",
        proto::ICMP => "ICMP",
        _ => "?",
    };
    let iface = nix::net::if_::if_indextoname(e.ifindex).map_or_else(
        |_| format!("#{}", e.ifindex),
        |n| n.to_string_lossy().into_owned(),
    );
    let at = |a| address(e.family, a);
    let (src, dst) = (at(e.saddr_be), at(e.daddr_be));
    let backend = (e.backend_be != In6::default()).then(|| at(e.backend_be));
    let snat = (e.snat_be != In6::default()).then(|| at(e.snat_be));
    Line {
        time: clock.wall(e.ts_ns),
        kind,
        reason,
        proto,
        src: endpoint(src, e.sport_be),
        dst: endpoint(dst, e.dport_be),
        frontend: names.of(e),
        backend: backend.map(|a| endpoint(a, e.backend_port_be)),
        snat: snat.map(|a| endpoint(a, e.snat_port_be)),
        iface,
        addrs: [src, dst].into_iter().chain(backend).chain(snat).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line() -> Line {
        Line {
            time: "2026-12-06T03:00:00Z".into(),
            kind: "new-flow",
            reason: None,
            proto: "TCP",
            src: "10.244.1.2:40000".into(),
            dst: "10.96.0.10:80".into(),
            frontend: Some("default/web:http".into()),
            backend: Some("10.244.1.10:8080".into()),
            snat: None,
            iface: "veth0".into(),
            addrs: ["10.244.1.2", "10.96.0.10", "10.244.1.10"]
                .map(|a| a.parse().unwrap())
                .to_vec(),
        }
    }

    #[test]
    fn filters_by_service_reason_kind_and_address() {
        let l = line();
        let f = |service: Option<&str>,
                 reason: Option<&str>,
                 kind: Option<&str>,
                 addr: Option<&str>| Filter {
            service: service.map(Into::into),
            reason: reason.map(Into::into),
            kind: kind.map(Into::into),
            addr: addr.map(|a| a.parse().unwrap()),
        };
        assert!(l.matches(&Filter::default()));
        assert!(l.matches(&f(Some("default/web"), None, None, None)));
        assert!(l.matches(&f(Some("default/web:http"), None, None, None)));
        assert!(!l.matches(&f(Some("default/we"), None, None, None)));
        assert!(!l.matches(&f(None, Some("no_endpoints"), None, None)));
        assert!(l.matches(&f(None, None, Some("new-flow"), None)));
        assert!(!l.matches(&f(None, None, Some("snat"), None)));
        assert!(l.matches(&f(None, None, None, Some("10.244.1.10"))));
        assert!(!l.matches(&f(None, None, None, Some("10.244.1.1"))));
        let text = l.text();
        assert!(
            text.contains("10.244.1.2:40000 -> 10.96.0.10:80")
                && text.contains("frontend=default/web:http"),
            "{text}"
        );
    }

    #[test]
    fn an_event_reads_from_the_ring_bytes() {
        let e = MonitorEvent {
            kind: KIND_REJECT,
            reason: DropReason::NoEndpoints as u8,
            proto: proto::TCP,
            family: sluice_abi::monitor::FAMILY_V4,
            saddr_be: sluice_abi::monitor::v4([10, 244, 1, 2]),
            daddr_be: sluice_abi::monitor::v4([10, 96, 0, 10]),
            sport_be: 40000u16.to_be_bytes(),
            dport_be: 80u16.to_be_bytes(),
            ..MonitorEvent::default()
        };
        let bytes: [u8; 96] = unsafe { core::mem::transmute(e) };
        assert_eq!(read_event(&bytes), Some(e));
        assert_eq!(read_event(&bytes[..90]), None);
        assert_eq!(address(e.family, e.saddr_be), IpAddr::from([10, 244, 1, 2]));
        let v6: Ipv6Addr = "fd00:96::a".parse().unwrap();
        assert_eq!(address(FAMILY_V6, In6::from(v6)), IpAddr::V6(v6));
        assert_eq!(
            endpoint(IpAddr::V6(v6), 80u16.to_be_bytes()),
            "[fd00:96::a]:80"
        );
    }
}
