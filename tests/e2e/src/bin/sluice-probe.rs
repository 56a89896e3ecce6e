//! A client for the socket LB tests, run as a process of its own (socket LB
//! acts on processes in a cgroup; the tests start this one inside the
//! lab's). It prints one line per result, for the test to read:
//!
//! - `sluice-probe tcp ADDR`: connect, `peer <getpeername>`, one request,
//!   `reply <answer>`; a failed connect prints `error <errno>`.
//! - `sluice-probe udp ADDR N`: N requests from one unconnected socket,
//!   each `reply <recvfrom source> <answer>`.
//! - `sluice-probe udp-connected ADDR N`: the same on a connected socket,
//!   after `peer <getpeername>`.
//! - `sluice-probe bulk ADDR BYTES`: downloads then uploads BYTES through
//!   the lab's bulk server (`sluice_lab::bulk`), `down <seconds>` and
//!   `up <seconds>`, within 60 s each.
//! - `sluice-probe udp-stream ADDR SECONDS`: a connected socket sending a
//!   request every 20 ms for SECONDS, `reply <answer>` each; an error
//!   prints `error <errno>` and the probe connects a new socket.
//!
//! An IPv6 `ADDR` (`[::ffff:10.96.0.10]:53`) makes the UDP socket an
//! IPv6 one, as a TCP connect to it does.
//!
//! Every wait is bounded (1 s per answer).

use std::{
    io::{BufRead as _, BufReader, Write as _},
    net::{SocketAddr, TcpStream, UdpSocket},
    process::ExitCode,
    time::{Duration, Instant},
};

const WAIT: Duration = Duration::from_secs(1);

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["tcp", addr] => parse(addr).and_then(tcp),
        ["udp", addr, n] => parse(addr).and_then(|a| udp(a, count(n)?, false)),
        ["udp-connected", addr, n] => parse(addr).and_then(|a| udp(a, count(n)?, true)),
        ["udp-stream", addr, secs] => parse(addr).and_then(|a| udp_stream(a, count(secs)?)),
        ["bulk", addr, n] => parse(addr).and_then(|a| bulk(a, count(n)?)),
        _ => Err("usage: sluice-probe tcp|udp|udp-connected|udp-stream|bulk ADDR [N]".into()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            println!("error {e}");
            ExitCode::FAILURE
        }
    }
}

type Result<T> = std::result::Result<T, String>;

fn parse(addr: &str) -> Result<SocketAddr> {
    addr.parse().map_err(|e| format!("{addr}: {e}"))
}

fn count(n: &str) -> Result<u64> {
    n.parse().map_err(|e| format!("{n}: {e}"))
}

/// An I/O error as its errno name where it has one (`ECONNREFUSED`), for
/// the tests to match.
fn errno(e: &std::io::Error) -> String {
    e.raw_os_error().map_or_else(
        || e.to_string(),
        |code| {
            let name = match code {
                libc::ECONNREFUSED => "ECONNREFUSED",
                libc::ECONNABORTED => "ECONNABORTED",
                libc::EDESTADDRREQ => "EDESTADDRREQ",
                libc::EPERM => "EPERM",
                libc::EAGAIN => "EAGAIN",
                libc::ETIMEDOUT => "ETIMEDOUT",
                libc::ENOTCONN => "ENOTCONN",
                _ => return format!("errno {code}"),
            };
            name.to_owned()
        },
    )
}

fn bulk(to: SocketAddr, n: u64) -> Result<()> {
    let n = usize::try_from(n).map_err(|e| e.to_string())?;
    let limit = Duration::from_secs(60);
    let down = sluice_lab::bulk::download_here(to, n, limit).map_err(|e| format!("{e:#}"))?;
    say(&format!("down {}", down.as_secs_f64()));
    let up = sluice_lab::bulk::upload_here(to, n, limit).map_err(|e| format!("{e:#}"))?;
    say(&format!("up {}", up.as_secs_f64()));
    Ok(())
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn tcp(addr: SocketAddr) -> Result<()> {
    let started = Instant::now();
    let s = TcpStream::connect_timeout(&addr, WAIT)
        .map_err(|e| format!("{} after {} us", errno(&e), started.elapsed().as_micros()))?;
    s.set_read_timeout(Some(WAIT)).map_err(|e| errno(&e))?;
    say(&format!("peer {}", s.peer_addr().map_err(|e| errno(&e))?));
    let mut s = BufReader::new(s);
    s.get_mut().write_all(b"hello\n").map_err(|e| errno(&e))?;
    let mut line = String::new();
    s.read_line(&mut line).map_err(|e| errno(&e))?;
    say(&format!("reply {}", line.trim()));
    Ok(())
}

/// An unbound UDP socket of `to`'s family.
fn udp_socket(to: SocketAddr) -> std::io::Result<UdpSocket> {
    UdpSocket::bind(if to.is_ipv6() { "[::]:0" } else { "0.0.0.0:0" })
}

fn udp(addr: SocketAddr, n: u64, connected: bool) -> Result<()> {
    let s = udp_socket(addr).map_err(|e| errno(&e))?;
    s.set_read_timeout(Some(WAIT)).map_err(|e| errno(&e))?;
    if connected {
        s.connect(addr).map_err(|e| errno(&e))?;
        say(&format!("peer {}", s.peer_addr().map_err(|e| errno(&e))?));
    }
    let mut buf = [0u8; 512];
    for _ in 0..n {
        if connected {
            s.send(b"hello\n")
        } else {
            s.send_to(b"hello\n", addr)
        }
        .map_err(|e| errno(&e))?;
        let (len, from) = s.recv_from(&mut buf).map_err(|e| errno(&e))?;
        let answer = String::from_utf8_lossy(buf.get(..len).unwrap_or_default());
        say(&format!("reply {from} {}", answer.trim()));
    }
    Ok(())
}

fn udp_stream(addr: SocketAddr, seconds: u64) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let connect = || -> std::io::Result<UdpSocket> {
        let s = udp_socket(addr)?;
        s.set_read_timeout(Some(WAIT))?;
        s.connect(addr)?;
        Ok(s)
    };
    let mut socket = connect().map_err(|e| errno(&e))?;
    say("connected");
    let mut buf = [0u8; 512];
    while Instant::now() < deadline {
        let exchange = socket.send(b"hello\n").and_then(|_| socket.recv(&mut buf));
        match exchange {
            Ok(len) => {
                let answer = String::from_utf8_lossy(buf.get(..len).unwrap_or_default());
                say(&format!("reply {}", answer.trim()));
            }
            Err(e) => {
                say(&format!("error {}", errno(&e)));
                socket = connect().map_err(|e| errno(&e))?;
                say("connected");
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}
