//! Names outside the cluster go to the upstream servers: those of the
//! longest `--forward-zone` the name is in, else the default ones. As
//! CoreDNS's `forward`: over the client's protocol (UDP, then TCP when the
//! answer comes back truncated; TCP for a TCP client), or UDP first always
//! (`prefer-udp`), or TCP always (`force-tcp`); the next upstream when one
//! fails. An upstream that fails twice in a row is down: queries skip it
//! at once (or try every upstream when all are down), and a health check
//! asks it `. NS` every half second until it answers.
//! Answers are cached: positive ones for their TTL capped at 30 s, negative
//! ones for 5 s; when every upstream fails, an expired entry is served for
//! up to 5 minutes more (RFC 8767, "serve stale"). The cache is bounded in
//! bytes (`--dns-cache-bytes`): each entry counts its wire size twice
//! over, plus its records' and key's memory, an estimate above what it
//! holds.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex, PoisonError, atomic::Ordering::Relaxed},
    time::{Duration, Instant},
};

use hickory_proto::{
    op::{Edns, Message, MessageType, OpCode, Query, ResponseCode},
    rr::{DNSClass, Name, Record, RecordType},
};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpStream, UdpSocket},
    sync::Semaphore,
    time::timeout,
};

use crate::{metrics::Metrics, respond::Transport};

mod upstream;
use upstream::probe;
pub use upstream::{HEALTH_CHECK_INTERVAL, MAX_FAILS, Protocol, Upstream};

/// What the forwarder is made of.
#[derive(Clone, Debug, Default)]
pub struct ForwardConfig {
    /// For names in no forward zone.
    pub upstreams: Vec<SocketAddr>,
    /// `(zone, its upstreams)`.
    pub zones: Vec<(Name, Vec<SocketAddr>)>,
    pub protocol: Protocol,
    pub cache_bytes: usize,
}

const MAX_POSITIVE_TTL: u32 = 30;
const NEGATIVE_TTL: u32 = 5;
const STALE_FOR: Duration = Duration::from_secs(300);
/// The TTL of a stale answer (RFC 8767 suggests 30 s).
const STALE_TTL: u32 = 30;
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(2);
/// Default of the forward cache's bound, in bytes.
pub const DEFAULT_CACHE_BYTES: usize = 16 << 20;
/// Forwarded queries in flight at once (CoreDNS's `max_concurrent 1000`).
const MAX_IN_FLIGHT: usize = 1000;
const BUFFER: u16 = 1232;

/// An upstream's answer, as kept and replayed.
#[derive(Clone, Debug)]
pub struct Answer {
    pub rcode: ResponseCode,
    pub answers: Vec<Record>,
    pub authorities: Vec<Record>,
    pub additionals: Vec<Record>,
}

#[derive(Clone)]
struct Entry {
    answer: Answer,
    stored: Instant,
    expires: Instant,
    /// What it is counted as against the bound.
    bytes: usize,
}

/// The cache, the bytes its entries count, and how many are negative.
#[derive(Default)]
struct Cache {
    entries: HashMap<Key, Entry>,
    bytes: usize,
    denials: usize,
}

impl Cache {
    fn remove(&mut self, key: &Key) {
        if let Some(e) = self.entries.remove(key) {
            self.bytes -= e.bytes;
            self.denials -= usize::from(e.answer.answers.is_empty());
        }
    }

    fn insert(&mut self, key: Key, entry: Entry) {
        self.remove(&key);
        self.bytes += entry.bytes;
        self.denials += usize::from(entry.answer.answers.is_empty());
        self.entries.insert(key, entry);
    }

    /// Keeps the entries `keep` says, and counts again.
    fn retain(&mut self, keep: impl FnMut(&Key, &mut Entry) -> bool) {
        self.entries.retain(keep);
        self.bytes = self.entries.values().map(|e| e.bytes).sum();
        self.denials = self
            .entries
            .values()
            .filter(|e| e.answer.answers.is_empty())
            .count();
    }
}

type Key = (Name, RecordType, DNSClass);

pub struct Forwarder {
    upstreams: Vec<Arc<Upstream>>,
    /// Longest zone first.
    zones: Vec<(Name, Vec<Arc<Upstream>>)>,
    protocol: Protocol,
    cache: Mutex<Cache>,
    max_bytes: usize,
    in_flight: Semaphore,
}

/// Why a name could not be forwarded.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("no upstream DNS server is configured")]
    NoUpstream,
    #[error("every upstream failed")]
    AllFailed,
    #[error("too many forwarded queries in flight")]
    Busy,
}

impl Forwarder {
    pub fn new(upstreams: Vec<SocketAddr>) -> Self {
        Self::with_cache_bytes(upstreams, DEFAULT_CACHE_BYTES)
    }

    /// A forwarder whose cache holds at most `max_bytes`.
    pub fn with_cache_bytes(upstreams: Vec<SocketAddr>, max_bytes: usize) -> Self {
        Self::with(ForwardConfig {
            upstreams,
            cache_bytes: max_bytes,
            ..ForwardConfig::default()
        })
    }

    pub fn with(config: ForwardConfig) -> Self {
        let mut zones: Vec<(Name, Vec<Arc<Upstream>>)> = config
            .zones
            .into_iter()
            .map(|(zone, addrs)| {
                let zone = zone.to_lowercase();
                (zone, addrs.into_iter().map(Upstream::new).collect())
            })
            .collect();
        zones.sort_by_key(|(zone, _)| std::cmp::Reverse(zone.num_labels()));
        Self {
            upstreams: config.upstreams.into_iter().map(Upstream::new).collect(),
            zones,
            protocol: config.protocol,
            cache: Mutex::new(Cache::default()),
            max_bytes: config.cache_bytes,
            in_flight: Semaphore::new(MAX_IN_FLIGHT),
        }
    }

    /// The upstreams `name` goes to.
    fn upstreams_of(&self, name: &Name) -> &[Arc<Upstream>] {
        self.zones
            .iter()
            .find(|(zone, _)| zone.zone_of(name))
            .map_or(&self.upstreams, |(_, ups)| ups)
    }

    /// The default upstreams, then each zone's.
    fn all(&self) -> impl Iterator<Item = &Arc<Upstream>> {
        self.upstreams
            .iter()
            .chain(self.zones.iter().flat_map(|(_, ups)| ups))
    }

    /// Every upstream, once (an address in several zones is one server).
    pub fn upstreams(&self) -> Vec<Arc<Upstream>> {
        let mut seen: Vec<Arc<Upstream>> = Vec::new();
        for up in self.all() {
            if !seen.iter().any(|u| u.addr == up.addr) {
                seen.push(Arc::clone(up));
            }
        }
        seen
    }

    /// Asks each down upstream `. NS` every `HEALTH_CHECK_INTERVAL`, for
    /// the forwarder's life; an answer of any kind brings it back.
    pub fn health_checks(
        &self,
        metrics: Arc<Metrics>,
    ) -> impl Future<Output = ()> + Send + 'static {
        let all: Vec<Arc<Upstream>> = self.all().cloned().collect();
        // An address in several zones is one upstream here and one there:
        // each is probed, and each comes back on its own.
        async move {
            loop {
                tokio::time::sleep(HEALTH_CHECK_INTERVAL).await;
                for up in all.iter().filter(|u| !u.is_up()) {
                    if probe(up.addr).await {
                        tracing::info!(upstream = %up.addr, "DNS upstream is back");
                        up.answered();
                    } else {
                        metrics.health_check_failures.fetch_add(1, Relaxed);
                        up.health_check_failures.fetch_add(1, Relaxed);
                    }
                }
            }
        }
    }

    /// Bytes the cache's entries count now.
    pub fn cache_bytes(&self) -> usize {
        self.cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .bytes
    }

    /// The answer to `name`/`qtype`, from the cache or the upstreams.
    pub async fn resolve(
        &self,
        name: &Name,
        qtype: RecordType,
        qclass: DNSClass,
        transport: Transport,
        metrics: &Metrics,
    ) -> Result<Answer, ForwardError> {
        let key = (name.to_lowercase(), qtype, qclass);
        let now = Instant::now();
        let cached = self.entry(&key);
        if let Some(entry) = &cached
            && now < entry.expires
        {
            hit(metrics, &entry.answer);
            return Ok(aged(entry, now));
        }
        metrics.cache_misses.fetch_add(1, Relaxed);
        let upstreams = self.upstreams_of(name);
        if upstreams.is_empty() {
            return Err(ForwardError::NoUpstream);
        }
        let Ok(_permit) = self.in_flight.try_acquire() else {
            return Err(ForwardError::Busy);
        };
        let tcp = match self.protocol {
            Protocol::ForceTcp => true,
            Protocol::PreferUdp => false,
            Protocol::SameAsClient => transport == Transport::Tcp,
        };
        // The healthy ones, in order; every one when none is.
        let any_up = upstreams.iter().any(|u| u.is_up());
        for upstream in upstreams.iter().filter(|u| !any_up || u.is_up()) {
            match ask(upstream.addr, name, qtype, qclass, tcp).await {
                Ok((answer, wire)) => {
                    upstream.answered();
                    self.store(key, &answer, wire, now, metrics);
                    return Ok(answer);
                }
                Err(e) => {
                    upstream.failed();
                    metrics.upstream_failures.fetch_add(1, Relaxed);
                    tracing::debug!(upstream = %upstream.addr, %name, "upstream: {e}");
                    if !upstream.is_up() && upstream.fails.load(Relaxed) == MAX_FAILS {
                        tracing::warn!(upstream = %upstream.addr, "DNS upstream is down after {MAX_FAILS} failures in a row; skipped until it answers a health check");
                    }
                }
            }
        }
        match cached {
            Some(entry) if now < entry.expires + STALE_FOR => {
                metrics.cache_stale.fetch_add(1, Relaxed);
                Ok(with_ttls(&entry.answer, |_| STALE_TTL))
            }
            _ => Err(ForwardError::AllFailed),
        }
    }

    /// A fresh cached answer, without touching the network (a miss is
    /// not counted: `resolve` follows and counts it).
    pub fn cached(
        &self,
        name: &Name,
        qtype: RecordType,
        qclass: DNSClass,
        metrics: &Metrics,
    ) -> Option<Answer> {
        let key = (name.to_lowercase(), qtype, qclass);
        let entry = self.entry(&key)?;
        let now = Instant::now();
        if now >= entry.expires {
            return None;
        }
        hit(metrics, &entry.answer);
        Some(aged(&entry, now))
    }

    fn entry(&self, key: &Key) -> Option<Entry> {
        self.cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entries
            .get(key)
            .cloned()
    }

    fn store(&self, key: Key, answer: &Answer, wire: usize, now: Instant, metrics: &Metrics) {
        let ttl = match answer.rcode {
            ResponseCode::NoError if !answer.answers.is_empty() => answer
                .answers
                .iter()
                .map(|r| r.ttl)
                .min()
                .unwrap_or(0)
                .min(MAX_POSITIVE_TTL),
            ResponseCode::NoError | ResponseCode::NXDomain => NEGATIVE_TTL,
            // SERVFAIL and the like are not kept.
            _ => return,
        };
        let records = answer.answers.len() + answer.authorities.len() + answer.additionals.len();
        let bytes =
            2 * wire + records * size_of::<Record>() + 2 * key.0.len() + size_of::<(Key, Entry)>();
        if bytes > self.max_bytes / 8 {
            // One answer may not take an eighth of the cache.
            return;
        }
        let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        cache.remove(&key);
        if cache.bytes + bytes > self.max_bytes {
            // Drop what is past serving stale, then, if still over, the
            // entries that expire first until a tenth is free.
            cache.retain(|_, e| now < e.expires + STALE_FOR);
            if cache.bytes + bytes > self.max_bytes {
                let mut by_expiry: Vec<(Instant, Key)> = cache
                    .entries
                    .iter()
                    .map(|(k, e)| (e.expires, k.clone()))
                    .collect();
                by_expiry.sort_unstable_by_key(|(at, _)| *at);
                let goal = self.max_bytes - self.max_bytes / 10 - bytes.min(self.max_bytes / 10);
                for (_, k) in by_expiry {
                    if cache.bytes <= goal {
                        break;
                    }
                    cache.remove(&k);
                }
            }
        }
        cache.insert(
            key,
            Entry {
                answer: answer.clone(),
                stored: now,
                expires: now + Duration::from_secs(u64::from(ttl)),
                bytes,
            },
        );
        metrics
            .cache_bytes
            .store(u64::try_from(cache.bytes).unwrap_or(u64::MAX), Relaxed);
        let [success, denial] = &metrics.cache_entries;
        success.store(
            u64::try_from(cache.entries.len() - cache.denials).unwrap_or(0),
            Relaxed,
        );
        denial.store(u64::try_from(cache.denials).unwrap_or(0), Relaxed);
    }
}

/// Counts a cache hit, and whether it was a negative answer.
fn hit(metrics: &Metrics, answer: &Answer) {
    metrics.cache_hits.fetch_add(1, Relaxed);
    if answer.answers.is_empty() {
        metrics.cache_denials.fetch_add(1, Relaxed);
    }
}

/// `entry`'s answer as of `now`: TTLs lowered by its age and never past
/// the entry's own expiry (the 30 s cap holds downstream too).
fn aged(entry: &Entry, now: Instant) -> Answer {
    let secs = |d: Duration| u32::try_from(d.as_secs()).unwrap_or(u32::MAX);
    let age = secs(now.saturating_duration_since(entry.stored));
    let left = secs(entry.expires.saturating_duration_since(now));
    with_ttls(&entry.answer, |ttl| ttl.saturating_sub(age).min(left))
}

fn with_ttls(answer: &Answer, ttl: impl Fn(u32) -> u32) -> Answer {
    let fix = |records: &[Record]| -> Vec<Record> {
        records
            .iter()
            .map(|r| {
                let mut r = r.clone();
                r.ttl = ttl(r.ttl);
                r
            })
            .collect()
    };
    Answer {
        rcode: answer.rcode,
        answers: fix(&answer.answers),
        authorities: fix(&answer.authorities),
        additionals: fix(&answer.additionals),
    }
}

#[derive(Debug, thiserror::Error)]
enum AskError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("timed out")]
    Timeout,
    #[error("cannot encode the query: {0}")]
    Encode(String),
    #[error("a malformed or mismatched answer")]
    Mismatch,
    #[error("answered {0}")]
    Failed(ResponseCode),
}

/// The upstream's answer, and its size on the wire.
async fn ask(
    upstream: SocketAddr,
    name: &Name,
    qtype: RecordType,
    qclass: DNSClass,
    tcp: bool,
) -> Result<(Answer, usize), AskError> {
    let mut query = Message::query();
    query.metadata.recursion_desired = true;
    let mut q = Query::query(name.clone(), qtype);
    q.set_query_class(qclass);
    query.add_query(q);
    let mut edns = Edns::new();
    edns.set_max_payload(BUFFER);
    query.set_edns(edns);
    let bytes = query
        .to_vec()
        .map_err(|e| AskError::Encode(e.to_string()))?;
    let (reply, wire) = if tcp {
        ask_tcp(upstream, &query, &bytes).await?
    } else {
        ask_udp(upstream, &query, &bytes).await?
    };
    match reply.metadata.response_code {
        ResponseCode::NoError | ResponseCode::NXDomain => Ok((
            Answer {
                rcode: reply.metadata.response_code,
                answers: reply.answers,
                authorities: reply.authorities,
                additionals: reply.additionals,
            },
            wire,
        )),
        other => Err(AskError::Failed(other)),
    }
}

/// Over UDP, then TCP if the answer is truncated.
async fn ask_udp(
    upstream: SocketAddr,
    query: &Message,
    bytes: &[u8],
) -> Result<(Message, usize), AskError> {
    let bind: SocketAddr = if upstream.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    }
    .parse()
    .map_err(|_| AskError::Mismatch)?;
    let socket = UdpSocket::bind(bind).await?;
    socket.connect(upstream).await?;
    socket.send(bytes).await?;
    let mut buf = vec![0u8; 65_535];
    let reply = timeout(ATTEMPT_TIMEOUT, async {
        loop {
            let n = socket.recv(&mut buf).await?;
            // Anything that is not the answer to this query is ignored.
            if let Some(reply) = buf.get(..n).and_then(|b| matching(query, b)) {
                return Ok::<_, std::io::Error>((reply, n));
            }
        }
    })
    .await
    .map_err(|_| AskError::Timeout)??;
    if reply.0.metadata.truncation {
        return ask_tcp(upstream, query, bytes).await;
    }
    Ok(reply)
}

async fn ask_tcp(
    upstream: SocketAddr,
    query: &Message,
    bytes: &[u8],
) -> Result<(Message, usize), AskError> {
    timeout(ATTEMPT_TIMEOUT, async {
        let mut stream = TcpStream::connect(upstream).await?;
        let len = u16::try_from(bytes.len()).map_err(|_| AskError::Mismatch)?;
        let mut framed = len.to_be_bytes().to_vec();
        framed.extend_from_slice(bytes);
        stream.write_all(&framed).await?;
        let len = usize::from(stream.read_u16().await?);
        let mut buf = vec![0u8; len];
        stream.read_exact(&mut buf).await?;
        matching(query, &buf)
            .map(|m| (m, len))
            .ok_or(AskError::Mismatch)
    })
    .await
    .map_err(|_| AskError::Timeout)?
}

/// The reply to `query` in `bytes`: same id, a response, the same question.
fn matching(query: &Message, bytes: &[u8]) -> Option<Message> {
    let reply = Message::from_vec(bytes).ok()?;
    let same_question = match (reply.queries.first(), query.queries.first()) {
        (Some(a), Some(b)) => {
            a.query_type() == b.query_type()
                && a.query_class() == b.query_class()
                && a.name().eq_ignore_root(b.name())
        }
        _ => false,
    };
    (reply.metadata.id == query.metadata.id
        && reply.metadata.message_type == MessageType::Response
        && reply.metadata.op_code == OpCode::Query
        && same_question)
        .then_some(reply)
}

#[cfg(test)]
mod tests;
