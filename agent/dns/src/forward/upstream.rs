//! An upstream server, its health (down after `MAX_FAILS` failures in a
//! row, back when it answers a health check), and how queries reach it.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU32, AtomicU64, Ordering::Relaxed},
    },
    time::Duration,
};

use hickory_proto::{
    op::{Message, Query},
    rr::{Name, RecordType},
};

/// Consecutive failures that mark an upstream down (CoreDNS's `max_fails`).
pub const MAX_FAILS: u32 = 2;
/// How often a down upstream is asked whether it is back.
pub const HEALTH_CHECK_INTERVAL: Duration = Duration::from_millis(500);

/// How queries travel to an upstream.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Protocol {
    /// The client's: UDP (TCP after a truncated answer) for a UDP client,
    /// TCP for a TCP client.
    #[default]
    SameAsClient,
    /// UDP first whatever the client used (`prefer_udp`).
    PreferUdp,
    /// TCP always (`force_tcp`).
    ForceTcp,
}

/// One upstream server and its health.
#[derive(Debug)]
pub struct Upstream {
    pub addr: SocketAddr,
    /// Consecutive failures; down from `MAX_FAILS`.
    pub(super) fails: AtomicU32,
    /// Health checks it did not answer.
    pub health_check_failures: AtomicU64,
}

impl Upstream {
    pub(super) fn new(addr: SocketAddr) -> Arc<Self> {
        Arc::new(Self {
            addr,
            fails: AtomicU32::new(0),
            health_check_failures: AtomicU64::new(0),
        })
    }

    pub fn is_up(&self) -> bool {
        self.fails.load(Relaxed) < MAX_FAILS
    }

    pub(super) fn failed(&self) {
        self.fails.fetch_add(1, Relaxed);
    }

    pub(super) fn answered(&self) {
        self.fails.store(0, Relaxed);
    }
}

/// Whether `upstream` answers `. NS` over UDP at all.
pub(super) async fn probe(upstream: SocketAddr) -> bool {
    let mut query = Message::query();
    query.add_query(Query::query(Name::root(), RecordType::NS));
    let Ok(bytes) = query.to_vec() else {
        return false;
    };
    super::ask_udp(upstream, &query, &bytes).await.is_ok()
}
