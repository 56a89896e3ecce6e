//! A small TCP/UDP responder run in a pod: every request line (TCP) or
//! datagram (UDP) is answered with `<name> <peer-ip>:<peer-port>\n`, so a
//! client learns which backend answered and what source that backend saw.
//! Its sockets are dual-stack (`[::]`), for the pods given an IPv6
//! address too (`Lab::add_ipv6`).

use std::{
    io::{BufRead as _, BufReader, Write as _},
    net::{Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::{self, JoinHandle},
};

use anyhow::Result;

use crate::Netns;

/// Stops and joins its threads on drop.
pub struct Responder {
    stop: Arc<AtomicBool>,
    listeners: Vec<TcpListener>,
    udp: Vec<UdpSocket>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
    threads: Vec<JoinHandle<()>>,
}

pub fn answer(name: &str, peer: SocketAddr) -> String {
    // The sockets are dual-stack: an IPv4 peer shows as IPv4.
    let peer = SocketAddr::new(peer.ip().to_canonical(), peer.port());
    format!("{name} {peer}\n")
}

impl Responder {
    pub fn start(ns: &Netns, name: &str, tcp_ports: &[u16], udp_ports: &[u16]) -> Result<Self> {
        let tcp = tcp_ports.to_vec();
        let udp = udp_ports.to_vec();
        let (listeners, sockets) = ns.run(
            move || -> std::io::Result<(Vec<TcpListener>, Vec<UdpSocket>)> {
                let l = tcp
                    .iter()
                    .map(|p| TcpListener::bind((Ipv6Addr::UNSPECIFIED, *p)))
                    .collect::<Result<Vec<_>, _>>()?;
                let u = udp
                    .iter()
                    .map(|p| UdpSocket::bind((Ipv6Addr::UNSPECIFIED, *p)))
                    .collect::<Result<Vec<_>, _>>()?;
                Ok((l, u))
            },
        )??;
        let stop = Arc::new(AtomicBool::new(false));
        let conns: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let mut threads = Vec::new();
        for listener in &listeners {
            let listener = listener.try_clone()?;
            let (stop, conns, name) = (stop.clone(), conns.clone(), name.to_owned());
            threads.push(thread::spawn(move || {
                accept_loop(&listener, &stop, &conns, &name);
            }));
        }
        for socket in &sockets {
            let socket = socket.try_clone()?;
            let (stop, name) = (stop.clone(), name.to_owned());
            threads.push(thread::spawn(move || udp_loop(&socket, &stop, &name)));
        }
        Ok(Self {
            stop,
            listeners,
            udp: sockets,
            conns,
            threads,
        })
    }
}

fn accept_loop(
    listener: &TcpListener,
    stop: &AtomicBool,
    conns: &Mutex<Vec<TcpStream>>,
    name: &str,
) {
    for stream in listener.incoming() {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let Ok(stream) = stream else { continue };
        if let (Ok(clone), Ok(mut list)) = (stream.try_clone(), conns.lock()) {
            list.push(clone);
        }
        let name = name.to_owned();
        // Connection threads end when the client closes or on shutdown.
        thread::spawn(move || serve(stream, &name));
    }
}

fn serve(stream: TcpStream, name: &str) {
    let Ok(peer) = stream.peer_addr() else { return };
    let Ok(mut writer) = stream.try_clone() else {
        return;
    };
    let reply = answer(name, peer);
    for line in BufReader::new(stream).lines() {
        if line.is_err() || writer.write_all(reply.as_bytes()).is_err() {
            break;
        }
    }
    // The client is done: close our side too, as a server does (a clone
    // of the socket is kept for shutdown, so dropping would not close it).
    let _ = writer.shutdown(Shutdown::Both);
}

fn udp_loop(socket: &UdpSocket, stop: &AtomicBool, name: &str) {
    let mut buf = [0u8; 2048];
    loop {
        let received = socket.recv_from(&mut buf);
        if stop.load(Ordering::Relaxed) {
            return;
        }
        if let Ok((_, peer)) = received {
            let _ = socket.send_to(answer(name, peer).as_bytes(), peer);
        }
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // shutdown() wakes threads blocked in accept() and recv_from().
        for l in &self.listeners {
            shutdown_fd(l);
        }
        for u in &self.udp {
            shutdown_fd(u);
        }
        if let Ok(conns) = self.conns.lock() {
            for c in conns.iter() {
                let _ = c.shutdown(Shutdown::Both);
            }
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn shutdown_fd(fd: &impl std::os::fd::AsRawFd) {
    // SAFETY: shutdown(2) on a descriptor we own; errors (ENOTCONN on an
    // unconnected UDP socket) still wake the blocked reader.
    unsafe {
        libc::shutdown(fd.as_raw_fd(), libc::SHUT_RDWR);
    }
}
