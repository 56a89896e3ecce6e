//! Bulk transfers: a server in a pod and the client side, so that tests
//! move megabytes each way and check that every byte arrived; and a UDP
//! echo for datagrams larger than the MTU. A connection
//! asks `GET <n>\n` (the server sends n bytes) or `PUT <n>\n` (the client
//! sends n bytes, the server answers `OK <n>\n` once it has them all). The
//! bytes follow a pattern (`i % 251`), so that a corrupted or misplaced
//! segment is seen.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};

use crate::Netns;

const CHUNK: usize = 256 * 1024;

/// The byte at offset `i` of every transfer.
fn pattern(i: usize) -> u8 {
    u8::try_from(i % 251).unwrap_or(0)
}

fn fill(buf: &mut [u8], from: usize) {
    for (j, b) in buf.iter_mut().enumerate() {
        *b = pattern(from + j);
    }
}

/// The bulk server in a pod, on a TCP port; stopped on drop.
pub struct BulkServer {
    stop: Arc<AtomicBool>,
    listener: TcpListener,
    thread: Option<JoinHandle<()>>,
}

impl BulkServer {
    pub fn start(ns: &Netns, port: u16) -> Result<Self> {
        // `::` takes IPv4 too (mapped), unless the namespace says otherwise.
        let listener = ns.run(move || TcpListener::bind(("::", port)))??;
        let accepting = listener.try_clone()?;
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let thread = thread::spawn(move || {
            let listener = accepting;
            for conn in listener.incoming() {
                if stop2.load(Ordering::Relaxed) {
                    return;
                }
                if let Ok(conn) = conn {
                    thread::spawn(move || {
                        let _ = serve(conn);
                    });
                }
            }
        });
        Ok(Self {
            stop,
            listener,
            thread: Some(thread),
        })
    }
}

impl Drop for BulkServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // SAFETY: shutdown(2) on a descriptor we own: it wakes accept().
        unsafe {
            libc::shutdown(
                std::os::fd::AsRawFd::as_raw_fd(&self.listener),
                libc::SHUT_RDWR,
            );
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(conn: TcpStream) -> Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(60)))?;
    conn.set_write_timeout(Some(Duration::from_secs(60)))?;
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut writer = conn;
    let (verb, n) = line
        .trim()
        .split_once(' ')
        .context("a request is `GET n` or `PUT n`")?;
    let n: usize = n.parse()?;
    match verb {
        "GET" => {
            let mut buf = vec![0u8; CHUNK];
            let mut sent = 0;
            while sent < n {
                let len = CHUNK.min(n - sent);
                fill(&mut buf[..len], sent);
                writer.write_all(&buf[..len])?;
                sent += len;
            }
        }
        "PUT" => {
            read_checked(&mut reader, n)?;
            writer.write_all(format!("OK {n}\n").as_bytes())?;
        }
        _ => bail!("unknown request {line:?}"),
    }
    writer.shutdown(Shutdown::Write)?;
    Ok(())
}

/// Reads exactly `n` bytes of the pattern; fails on a wrong byte.
fn read_checked(r: &mut impl std::io::Read, n: usize) -> Result<()> {
    let mut buf = vec![0u8; CHUNK];
    let mut got = 0;
    while got < n {
        let want = CHUNK.min(n - got);
        let len = r.read(&mut buf[..want])?;
        ensure!(len > 0, "the connection closed after {got} of {n} bytes");
        if let Some(bad) = (0..len).find(|j| buf[*j] != pattern(got + j)) {
            bail!("byte {} of {n} is wrong", got + bad);
        }
        got += len;
    }
    Ok(())
}

/// Downloads `n` bytes from the bulk server at `to`, from a thread in
/// `ns`, within `limit`; how long it took.
pub fn download(ns: &Netns, to: SocketAddr, n: usize, limit: Duration) -> Result<Duration> {
    ns.run(move || download_here(to, n, limit))?
}

/// `download`, from this thread's namespace (a process started in a pod).
pub fn download_here(to: SocketAddr, n: usize, limit: Duration) -> Result<Duration> {
    let t = Instant::now();
    let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(5))?;
    s.set_read_timeout(Some(limit))?;
    s.write_all(format!("GET {n}\n").as_bytes())?;
    read_checked(&mut s, n).with_context(|| format!("downloading {n} bytes from {to}"))?;
    ensure!(t.elapsed() < limit, "took {:?}", t.elapsed());
    Ok(t.elapsed())
}

/// Uploads `n` bytes to the bulk server at `to`, which confirms it read
/// them all, within `limit`; how long it took.
pub fn upload(ns: &Netns, to: SocketAddr, n: usize, limit: Duration) -> Result<Duration> {
    ns.run(move || upload_here(to, n, limit))?
}

/// `upload`, from this thread's namespace (a process started in a pod).
pub fn upload_here(to: SocketAddr, n: usize, limit: Duration) -> Result<Duration> {
    {
        let t = Instant::now();
        let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(5))?;
        s.set_read_timeout(Some(limit))?;
        s.set_write_timeout(Some(limit))?;
        s.write_all(format!("PUT {n}\n").as_bytes())?;
        let mut buf = vec![0u8; CHUNK];
        let mut sent = 0;
        while sent < n {
            let len = CHUNK.min(n - sent);
            fill(&mut buf[..len], sent);
            s.write_all(&buf[..len])
                .with_context(|| format!("uploading to {to}: {sent} of {n} bytes sent"))?;
            sent += len;
        }
        let mut answer = String::new();
        BufReader::new(s).read_line(&mut answer)?;
        ensure!(
            answer.trim() == format!("OK {n}"),
            "the server said {answer:?}"
        );
        Ok(t.elapsed())
    }
}

/// A UDP echo server in a pod: each datagram comes back as it came, for
/// datagrams larger than the MTU (fragmented both ways); stopped on drop.
pub struct UdpEcho {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl UdpEcho {
    pub fn start(ns: &Netns, port: u16) -> Result<Self> {
        let sock = ns.run(move || UdpSocket::bind(("::", port)))??;
        // The stop flag is seen within this.
        sock.set_read_timeout(Some(Duration::from_millis(100)))?;
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let thread = thread::spawn(move || {
            let mut buf = vec![0u8; 65_536];
            while !stop2.load(Ordering::Relaxed) {
                if let Ok((n, from)) = sock.recv_from(&mut buf) {
                    let _ = sock.send_to(&buf[..n], from);
                }
            }
        });
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for UdpEcho {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Sends one datagram of `n` bytes of the pattern to `to` from a socket in
/// `ns` connected to it, and checks that the same bytes come back from
/// `to` within `limit`.
pub fn udp_echo(ns: &Netns, to: SocketAddr, n: usize, limit: Duration) -> Result<()> {
    ns.run(move || -> Result<()> {
        let s = UdpSocket::bind(crate::lab::unspecified(to))?;
        s.connect(to)?;
        s.set_read_timeout(Some(limit))?;
        let mut out = vec![0u8; n];
        fill(&mut out, 0);
        s.send(&out)?;
        let mut back = vec![0u8; n + 1];
        let got = s
            .recv(&mut back)
            .with_context(|| format!("no echo of {n} bytes from {to}"))?;
        ensure!(got == n, "{got} bytes came back of {n}");
        ensure!(back[..n] == out[..], "the echo of {n} bytes differs");
        Ok(())
    })?
}
