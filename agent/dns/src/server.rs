//! The listeners on `<dns-ip>:53`: a UDP socket per CPU (`SO_REUSEPORT`, so
//! the kernel spreads clients over them), each served by a thread of its
//! own in a blocking loop (no event loop between a query and its answer),
//! and a TCP listener whose connections may pipeline queries. Cluster
//! answers are computed inline; a forwarded query runs as a task on the
//! runtime, so that a slow upstream never stalls other clients.

use std::{
    io,
    net::{SocketAddr, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering::Relaxed},
    },
    thread::JoinHandle,
    time::Duration,
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

use crate::respond::{Resolver, Step, Transport};

/// TCP connections served at once; more are closed at once (and counted).
const MAX_TCP: usize = 1024;
/// A TCP connection with no complete query for this long is closed.
const TCP_IDLE: Duration = Duration::from_secs(10);
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
/// `workers` UDP threads, and TCP and forwarding on `runtime`.
pub fn serve(
    addr: SocketAddr,
    workers: usize,
    resolver: Arc<Resolver>,
    runtime: &Handle,
) -> io::Result<Servers> {
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
                .spawn(move || udp_worker(&socket, &resolver, &stop, &runtime))?,
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

fn udp_worker(
    socket: &Arc<UdpSocket>,
    resolver: &Arc<Resolver>,
    stop: &AtomicBool,
    runtime: &Handle,
) {
    let mut buf = vec![0u8; UDP_READ];
    while !stop.load(Relaxed) {
        let (n, peer) = match socket.recv_from(&mut buf) {
            Ok(got) => got,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                continue;
            }
            Err(e) => {
                tracing::debug!("dns udp: {e}");
                continue;
            }
        };
        let Some(query) = buf.get(..n) else { continue };
        match resolver.try_answer(query, Transport::Udp) {
            Step::Done(Some(answer)) => {
                let _ = socket.send_to(&answer, peer);
            }
            Step::Done(None) => {}
            Step::Network => {
                // Forwarded: a task, so that this thread goes on.
                let (socket, resolver, query) =
                    (Arc::clone(socket), Arc::clone(resolver), query.to_vec());
                runtime.spawn(async move {
                    if let Some(answer) = resolver.answer(&query, Transport::Udp).await {
                        let _ = socket.send_to(&answer, peer);
                    }
                });
            }
        }
    }
}

async fn tcp_acceptor(listener: TcpListener, resolver: Arc<Resolver>) {
    let limit = Arc::new(Semaphore::new(MAX_TCP));
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let Ok(permit) = Arc::clone(&limit).try_acquire_owned() else {
            resolver.metrics.tcp_refused.fetch_add(1, Relaxed);
            continue;
        };
        let resolver = Arc::clone(&resolver);
        tokio::spawn(async move {
            let _permit = permit;
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
        stream.write_all(&framed).await?;
    }
}
