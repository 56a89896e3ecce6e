//! A slow upstream DNS server for the lab: every A question gets one
//! address, and every other question an empty NOERROR, after a fixed delay
//! (as a far or overloaded resolver answers). There is no netem qdisc on
//! the lab's kernels, so the delay is the server's own. Stopped on drop.

use std::{
    net::{Ipv4Addr, SocketAddr, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
        mpsc,
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use anyhow::Result;

use crate::Netns;

/// How often the threads look whether they should stop.
const POLL: Duration = Duration::from_millis(100);

pub struct SlowDns {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    answered: Arc<AtomicU64>,
}

impl SlowDns {
    /// Serves on `ip:53` in `ns`, answering A questions with `address`
    /// after `delay`.
    pub fn start(ns: &Netns, ip: Ipv4Addr, delay: Duration, address: Ipv4Addr) -> Result<Self> {
        let socket = ns.run(move || UdpSocket::bind((ip, 53)))??;
        socket.set_read_timeout(Some(POLL))?;
        let socket = Arc::new(socket);
        let stop = Arc::new(AtomicBool::new(false));
        let answered = Arc::new(AtomicU64::new(0));
        let (tx, rx) = mpsc::channel::<(Instant, Vec<u8>, SocketAddr)>();
        let receiver = {
            let (socket, stop) = (Arc::clone(&socket), Arc::clone(&stop));
            thread::spawn(move || {
                let mut buf = [0u8; 1500];
                while !stop.load(Relaxed) {
                    let Ok((n, peer)) = socket.recv_from(&mut buf) else {
                        continue;
                    };
                    if let Some(reply) = buf.get(..n).and_then(|q| reply(q, address)) {
                        let _ = tx.send((Instant::now() + delay, reply, peer));
                    }
                }
            })
        };
        let sender = {
            let (socket, stop, answered) = (
                Arc::clone(&socket),
                Arc::clone(&stop),
                Arc::clone(&answered),
            );
            thread::spawn(move || {
                // Every reply has the same delay: due in arrival order.
                while !stop.load(Relaxed) {
                    let Ok((due, reply, peer)) = rx.recv_timeout(POLL) else {
                        continue;
                    };
                    thread::sleep(due.saturating_duration_since(Instant::now()));
                    if socket.send_to(&reply, peer).is_ok() {
                        answered.fetch_add(1, Relaxed);
                    }
                }
            })
        };
        Ok(Self {
            stop,
            threads: vec![receiver, sender],
            answered,
        })
    }

    /// Queries answered so far.
    pub fn answered(&self) -> u64 {
        self.answered.load(Relaxed)
    }
}

impl Drop for SlowDns {
    fn drop(&mut self) {
        self.stop.store(true, Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// The answer to the query `q`: its id and question, no EDNS; one A
/// record of `address` for an A question.
fn reply(q: &[u8], address: Ipv4Addr) -> Option<Vec<u8>> {
    let header = q.get(..12)?;
    if header.get(2)? & 0x80 != 0 || q.get(4..6)? != [0, 1] {
        return None;
    }
    let mut at = 12;
    // Bounded by the message: each label moves forward.
    for _ in 0..q.len() {
        let len = usize::from(*q.get(at)?);
        if len & 0xc0 != 0 {
            return None;
        }
        at += 1 + len;
        if len == 0 {
            break;
        }
    }
    let question = q.get(12..at + 4)?;
    let is_a = question.get(question.len() - 4..question.len() - 2)? == [0, 1];
    let mut out = Vec::with_capacity(64 + question.len());
    out.extend_from_slice(header.get(..2)?);
    // QR, the query's RD, RA; NOERROR.
    out.extend_from_slice(&[0x80 | (header.get(2)? & 0x01), 0x80]);
    out.extend_from_slice(&[0, 1, 0, u8::from(is_a), 0, 0, 0, 0]);
    out.extend_from_slice(question);
    if is_a {
        out.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 30, 0, 4]);
        out.extend_from_slice(&address.octets());
    }
    Some(out)
}
