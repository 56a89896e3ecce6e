//! The listeners on `<dns-ip>:53`: a UDP socket per CPU (`SO_REUSEPORT`, so
//! the kernel spreads clients over them), each served by a thread of its
//! own in a blocking loop (no event loop between a query and its answer),
//! and a TCP listener whose connections may pipeline queries. Cluster
//! answers are computed inline; a forwarded query runs as a task on the
//! runtime, so that a slow upstream never stalls other clients. A client
//! outside the access list, or past its share of forwarded queries or TCP
//! connections, is refused (`clients`).

use std::{
    io::{self, IoSlice, IoSliceMut},
    net::{SocketAddr, UdpSocket},
    os::fd::{AsRawFd as _, RawFd},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering::Relaxed},
    },
    thread::JoinHandle,
    time::Duration,
};

use nix::{
    errno::Errno,
    sys::socket::{ControlMessage, MsgFlags, MultiHeaders, SockaddrStorage, recvmmsg, sendmmsg},
};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
    runtime::Handle,
    sync::Semaphore,
    task::JoinSet,
    time::timeout,
};

use crate::{
    clients::Share,
    memo::Memo,
    metrics::Refused,
    respond::{Resolver, Step, Transport},
};

/// TCP connections served at once; more are closed at once (and counted).
const MAX_TCP: usize = 1024;
/// A TCP connection with no complete query for this long is closed.
const TCP_IDLE: Duration = Duration::from_secs(10);
/// A TCP client that does not take its answer within this is closed.
const TCP_WRITE: Duration = Duration::from_secs(10);
/// The largest UDP query read (a bigger one is cut, fails to parse and
/// gets FORMERR).
const UDP_READ: usize = 4096;

/// Receive buffer of each UDP socket: a burst of queries (every pod of a
/// node resolving at once) waits here rather than being dropped.
const UDP_RECV_BUFFER: usize = 8 << 20;

fn socket(addr: SocketAddr, ty: Type, proto: Protocol) -> io::Result<Socket> {
    let s = Socket::new(Domain::for_address(addr), ty, Some(proto))?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    if ty == Type::DGRAM {
        // Beyond net.core.rmem_max (the agent has CAP_NET_ADMIN); else as
        // much as the limit allows.
        if nix::sys::socket::setsockopt(
            &s,
            nix::sys::socket::sockopt::RcvBufForce,
            &UDP_RECV_BUFFER,
        )
        .is_err()
        {
            s.set_recv_buffer_size(UDP_RECV_BUFFER)?;
        }
    }
    s.set_nonblocking(true)?;
    s.bind(&SockAddr::from(addr))?;
    Ok(s)
}

/// How often a UDP thread looks whether it should stop.
const UDP_POLL: Duration = Duration::from_millis(200);

/// The running listeners; stopped on drop.
pub struct Servers {
    stop: Arc<AtomicBool>,
    udp: Vec<JoinHandle<()>>,
    _tcp: JoinSet<()>,
}

impl Drop for Servers {
    fn drop(&mut self) {
        self.stop.store(true, Relaxed);
        for thread in self.udp.drain(..) {
            let _ = thread.join();
        }
    }
}

/// Binds every socket now (so that errors surface at start), then serves:
/// `workers` UDP threads, and TCP and forwarding on `runtime`. The UDP
/// workers' memos share `memo_bytes`.
pub fn serve(
    addr: SocketAddr,
    workers: usize,
    resolver: Arc<Resolver>,
    runtime: &Handle,
    memo_bytes: usize,
) -> io::Result<Servers> {
    let memo_bytes = memo_bytes / workers.max(1);
    let stop = Arc::new(AtomicBool::new(false));
    let mut udp = Vec::new();
    for i in 0..workers.max(1) {
        let s = socket(addr, Type::DGRAM, Protocol::UDP)?;
        s.set_nonblocking(false)?;
        s.set_read_timeout(Some(UDP_POLL))?;
        let socket = Arc::new(UdpSocket::from(s));
        let (resolver, stop, runtime) = (Arc::clone(&resolver), Arc::clone(&stop), runtime.clone());
        udp.push(
            std::thread::Builder::new()
                .name(format!("sluice-dns-udp{i}"))
                .spawn(move || udp_worker(&socket, &resolver, &stop, &runtime, memo_bytes))?,
        );
    }
    let tcp = socket(addr, Type::STREAM, Protocol::TCP)?;
    tcp.listen(1024)?;
    let mut tasks = JoinSet::new();
    let _in_runtime = runtime.enter();
    let tcp = TcpListener::from_std(tcp.into())?;
    tasks.spawn_on(tcp_acceptor(tcp, resolver), runtime);
    Ok(Servers {
        stop,
        udp,
        _tcp: tasks,
    })
}

/// Datagrams taken from (and answers given to) the kernel per system call.
const UDP_BATCH: usize = 32;

/// Receives a batch of queries with one `recvmmsg` (waiting for the first
/// only), answers them, and sends the answers with one `sendmmsg`: under
/// load, two system calls serve up to `UDP_BATCH` clients.
fn udp_worker(
    socket: &Arc<UdpSocket>,
    resolver: &Arc<Resolver>,
    stop: &AtomicBool,
    runtime: &Handle,
    memo_bytes: usize,
) {
    let fd = socket.as_raw_fd();
    let mut bufs = vec![[0u8; UDP_READ]; UDP_BATCH];
    let mut recv_headers = MultiHeaders::<SockaddrStorage>::preallocate(UDP_BATCH, None);
    let mut send_headers = MultiHeaders::<SockaddrStorage>::preallocate(UDP_BATCH, None);
    let mut received: Vec<(usize, SockaddrStorage)> = Vec::with_capacity(UDP_BATCH);
    let mut answers: Vec<Vec<u8>> = Vec::with_capacity(UDP_BATCH);
    let mut peers: Vec<Option<SockaddrStorage>> = Vec::with_capacity(UDP_BATCH);
    let mut memo = Memo::new(memo_bytes);
    while !stop.load(Relaxed) {
        received.clear();
        {
            let mut iovs: Vec<[IoSliceMut<'_>; 1]> = bufs
                .iter_mut()
                .map(|b| [IoSliceMut::new(b.as_mut_slice())])
                .collect();
            match recvmmsg(
                fd,
                &mut recv_headers,
                iovs.iter_mut(),
                MsgFlags::MSG_WAITFORONE,
                None,
            ) {
                Ok(msgs) => {
                    received.extend(msgs.filter_map(|m| Some((m.bytes, m.address?))));
                }
                // The poll timeout, a signal: look at `stop` again.
                Err(Errno::EAGAIN | Errno::EINTR) => continue,
                Err(e) => {
                    tracing::debug!("dns udp: {e}");
                    continue;
                }
            }
        }
        answers.clear();
        peers.clear();
        let access = resolver.clients.access();
        for (buf, &(n, peer)) in bufs.iter().zip(&received) {
            let Some(query) = buf.get(..n) else { continue };
            let Some(from) = socket_addr(&peer) else {
                continue;
            };
            let step = if access.contains(from.ip()) {
                resolver.try_answer_udp(query, &mut memo)
            } else {
                resolver.metrics.refused(Refused::Access);
                Step::Done(resolver.refuse(query))
            };
            let step = match step {
                Step::Network => match resolver.clients.forward(from.ip(), &resolver.metrics) {
                    Some(share) => {
                        forward(socket, resolver, runtime, query, from, share);
                        continue;
                    }
                    None => Step::Done(resolver.refuse(query)),
                },
                done @ Step::Done(_) => done,
            };
            if let Step::Done(Some(answer)) = step {
                answers.push(answer);
                peers.push(Some(peer));
            }
        }
        send_all(fd, &mut send_headers, &answers, &peers);
    }
}

/// Sends `answers[i]` to `peers[i]`, in as few `sendmmsg` calls as the
/// kernel takes them; an answer it refuses is dropped (the client retries).
fn send_all(
    fd: RawFd,
    headers: &mut MultiHeaders<SockaddrStorage>,
    answers: &[Vec<u8>],
    peers: &[Option<SockaddrStorage>],
) {
    let mut from = 0;
    // Each call sends at least one or skips one: bounded by the count.
    for _ in 0..answers.len() {
        let (Some(rest), Some(to)) = (answers.get(from..), peers.get(from..)) else {
            return;
        };
        if rest.is_empty() {
            return;
        }
        let iovs: Vec<[IoSlice<'_>; 1]> = rest.iter().map(|a| [IoSlice::new(a)]).collect();
        let cmsgs: [ControlMessage<'_>; 0] = [];
        match sendmmsg(fd, headers, &iovs, to, cmsgs, MsgFlags::empty()) {
            Ok(sent) => from += sent.count().max(1),
            Err(e) => {
                tracing::debug!("dns udp send: {e}");
                from += 1;
            }
        }
    }
}

fn socket_addr(peer: &SockaddrStorage) -> Option<SocketAddr> {
    peer.as_sockaddr_in()
        .map(|a| SocketAddr::from(std::net::SocketAddrV4::from(*a)))
        .or_else(|| {
            peer.as_sockaddr_in6()
                .map(|a| SocketAddr::from(std::net::SocketAddrV6::from(*a)))
        })
}

/// A query that needs an upstream becomes a task, so that this thread goes
/// on with the next; it holds one of its client's shares until answered.
fn forward(
    socket: &Arc<UdpSocket>,
    resolver: &Arc<Resolver>,
    runtime: &Handle,
    query: &[u8],
    peer: SocketAddr,
    share: Share,
) {
    let (socket, resolver, query) = (Arc::clone(socket), Arc::clone(resolver), query.to_vec());
    runtime.spawn(async move {
        let _share = share;
        if let Some(answer) = resolver.answer(&query, Transport::Udp).await {
            let _ = socket.send_to(&answer, peer);
        }
    });
}

async fn tcp_acceptor(listener: TcpListener, resolver: Arc<Resolver>) {
    let limit = Arc::new(Semaphore::new(MAX_TCP));
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            continue;
        };
        if !resolver.clients.allowed(peer.ip(), &resolver.metrics) {
            continue;
        }
        let Some(share) = resolver.clients.connection(peer.ip(), &resolver.metrics) else {
            continue;
        };
        let Ok(permit) = Arc::clone(&limit).try_acquire_owned() else {
            resolver.metrics.tcp_refused.fetch_add(1, Relaxed);
            continue;
        };
        let resolver = Arc::clone(&resolver);
        tokio::spawn(async move {
            let _held = (permit, share);
            let _ = tcp_connection(stream, &resolver).await;
        });
    }
}

/// Length-prefixed queries (RFC 1035 §4.2.2), answered in order.
async fn tcp_connection(mut stream: TcpStream, resolver: &Resolver) -> io::Result<()> {
    stream.set_nodelay(true)?;
    loop {
        let Ok(len) = timeout(TCP_IDLE, stream.read_u16()).await else {
            return Ok(());
        };
        let mut query = vec![0u8; usize::from(len?)];
        if timeout(TCP_IDLE, stream.read_exact(&mut query))
            .await
            .is_err()
        {
            return Ok(());
        }
        let Some(answer) = resolver.answer(&query, Transport::Tcp).await else {
            continue;
        };
        let Ok(n) = u16::try_from(answer.len()) else {
            continue;
        };
        let mut framed = Vec::with_capacity(answer.len() + 2);
        framed.extend_from_slice(&n.to_be_bytes());
        framed.extend_from_slice(&answer);
        match timeout(TCP_WRITE, stream.write_all(&framed)).await {
            Ok(written) => written?,
            Err(_) => {
                resolver.metrics.tcp_write_timeouts.fetch_add(1, Relaxed);
                return Ok(());
            }
        }
    }
}
