#![allow(clippy::unwrap_used, reason = "tests: a failure fails the test")]

use hickory_proto::rr::{RData, rdata::A};

use super::*;

#[test]
fn the_cache_stays_within_its_bytes_and_keeps_the_newest() {
    let forwarder = Forwarder::with_cache_bytes(Vec::new(), 64 << 10);
    let metrics = Metrics::default();
    let now = Instant::now();
    let mut most = 0;
    for i in 0..5000u32 {
        let name = Name::from_ascii(format!("n{i}.example.")).unwrap();
        let record = Record::from_rdata(name.clone(), 30, RData::A(A(std::net::Ipv4Addr::from(i))));
        let answer = Answer {
            rcode: ResponseCode::NoError,
            answers: vec![record],
            authorities: Vec::new(),
            additionals: Vec::new(),
        };
        // Later ones expire later, as they would.
        let at = now + Duration::from_millis(u64::from(i));
        forwarder.store(
            (name, RecordType::A, DNSClass::IN),
            &answer,
            60,
            at,
            &metrics,
        );
        most = most.max(forwarder.cache_bytes());
    }
    assert!(most <= 64 << 10, "{most} bytes");
    let last = Name::from_ascii("n4999.example.").unwrap();
    assert!(
        forwarder
            .cached(&last, RecordType::A, DNSClass::IN, &metrics)
            .is_some()
    );
    let first = Name::from_ascii("n0.example.").unwrap();
    assert!(
        forwarder
            .entry(&(first, RecordType::A, DNSClass::IN))
            .is_none()
    );
    assert_eq!(
        metrics.cache_bytes.load(Relaxed),
        u64::try_from(forwarder.cache_bytes()).unwrap()
    );
}

/// A loopback upstream answering every A question with `ip`, over UDP
/// (unless `tcp_only`) and TCP; counts the queries of each.
struct Fake {
    addr: SocketAddr,
    udp: Arc<std::sync::atomic::AtomicU64>,
    tcp: Arc<std::sync::atomic::AtomicU64>,
}

fn reply(query: &[u8], ip: std::net::Ipv4Addr) -> Option<Vec<u8>> {
    let q = Message::from_vec(query).ok()?;
    let mut r = Message::new(q.metadata.id, MessageType::Response, OpCode::Query);
    r.metadata.recursion_available = true;
    for question in &q.queries {
        r.add_query(question.clone());
        if question.query_type() == RecordType::A {
            r.answers.push(Record::from_rdata(
                question.name().clone(),
                30,
                RData::A(A(ip)),
            ));
        }
    }
    r.to_vec().ok()
}

async fn fake(ip: std::net::Ipv4Addr, tcp_only: bool, port: u16) -> Fake {
    let udp_socket = UdpSocket::bind(("127.0.0.1", port)).await.unwrap();
    let addr = udp_socket.local_addr().unwrap();
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let (udp, tcp) = (
        Arc::new(std::sync::atomic::AtomicU64::new(0)),
        Arc::new(std::sync::atomic::AtomicU64::new(0)),
    );
    let count = Arc::clone(&udp);
    tokio::spawn(async move {
        let mut buf = [0u8; 1500];
        while let Ok((n, peer)) = udp_socket.recv_from(&mut buf).await {
            count.fetch_add(1, Relaxed);
            if !tcp_only && let Some(r) = buf.get(..n).and_then(|q| reply(q, ip)) {
                let _ = udp_socket.send_to(&r, peer).await;
            }
        }
    });
    let count = Arc::clone(&tcp);
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            count.fetch_add(1, Relaxed);
            let Ok(len) = s.read_u16().await else {
                continue;
            };
            let mut q = vec![0u8; usize::from(len)];
            if s.read_exact(&mut q).await.is_err() {
                continue;
            }
            if let Some(r) = reply(&q, ip) {
                let mut framed = u16::try_from(r.len()).unwrap().to_be_bytes().to_vec();
                framed.extend_from_slice(&r);
                let _ = s.write_all(&framed).await;
            }
        }
    });
    Fake { addr, udp, tcp }
}

fn address(answer: &Answer) -> Option<std::net::Ipv4Addr> {
    answer.answers.iter().find_map(|r| match &r.data {
        RData::A(a) => Some(a.0),
        _ => None,
    })
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

const ONE: std::net::Ipv4Addr = std::net::Ipv4Addr::new(192, 0, 2, 1);
const TWO: std::net::Ipv4Addr = std::net::Ipv4Addr::new(192, 0, 2, 2);
const THREE: std::net::Ipv4Addr = std::net::Ipv4Addr::new(192, 0, 2, 3);

#[test]
fn names_go_to_the_upstreams_of_their_longest_forward_zone() {
    runtime().block_on(async {
        let (default, corp, deep) = (
            fake(ONE, false, 0).await,
            fake(TWO, false, 0).await,
            fake(THREE, false, 0).await,
        );
        let forwarder = Forwarder::with(ForwardConfig {
            upstreams: vec![default.addr],
            zones: vec![
                (Name::from_ascii("corp.example.").unwrap(), vec![corp.addr]),
                (
                    Name::from_ascii("Deep.Corp.Example.").unwrap(),
                    vec![deep.addr],
                ),
            ],
            cache_bytes: 1 << 20,
            ..ForwardConfig::default()
        });
        let metrics = Metrics::default();
        let ask = |name: &str| {
            let name = Name::from_ascii(name).unwrap();
            let f = &forwarder;
            let m = &metrics;
            async move {
                f.resolve(&name, RecordType::A, DNSClass::IN, Transport::Udp, m)
                    .await
                    .map(|a| address(&a))
                    .unwrap()
            }
        };
        assert_eq!(ask("www.example.org.").await, Some(ONE));
        assert_eq!(ask("www.corp.example.").await, Some(TWO));
        assert_eq!(ask("corp.example.").await, Some(TWO));
        assert_eq!(ask("a.deep.corp.example.").await, Some(THREE));
        assert_eq!(ask("notcorp.example.").await, Some(ONE));
    });
}

#[test]
fn the_protocol_is_the_clients_unless_udp_is_preferred_or_tcp_forced() {
    runtime().block_on(async {
        let metrics = Metrics::default();
        let name = Name::from_ascii("www.example.org.").unwrap();
        for (protocol, client, want) in [
            (Protocol::SameAsClient, Transport::Udp, (1, 0)),
            (Protocol::SameAsClient, Transport::Tcp, (0, 1)),
            (Protocol::PreferUdp, Transport::Tcp, (1, 0)),
            (Protocol::ForceTcp, Transport::Udp, (0, 1)),
        ] {
            let up = fake(ONE, false, 0).await;
            let forwarder = Forwarder::with(ForwardConfig {
                upstreams: vec![up.addr],
                protocol,
                cache_bytes: 1 << 20,
                ..ForwardConfig::default()
            });
            let answer = forwarder
                .resolve(&name, RecordType::A, DNSClass::IN, client, &metrics)
                .await
                .unwrap();
            assert_eq!(address(&answer), Some(ONE));
            assert_eq!(
                (up.udp.load(Relaxed), up.tcp.load(Relaxed)),
                want,
                "{protocol:?} for a {client:?} client"
            );
        }
    });
}

#[test]
fn an_upstream_that_fails_twice_is_skipped_until_a_health_check_brings_it_back() {
    runtime().block_on(async {
        // A port with no server: each query fails at once (ICMP port
        // unreachable on a connected UDP socket).
        let dead = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let dead_addr = dead.local_addr().unwrap();
        drop(dead);
        let good = fake(TWO, false, 0).await;
        let forwarder = Forwarder::with(ForwardConfig {
            upstreams: vec![dead_addr, good.addr],
            cache_bytes: 1 << 20,
            ..ForwardConfig::default()
        });
        let metrics = Arc::new(Metrics::default());
        for i in 0..4 {
            let name = Name::from_ascii(format!("n{i}.example.org.")).unwrap();
            let answer = forwarder
                .resolve(&name, RecordType::A, DNSClass::IN, Transport::Udp, &metrics)
                .await
                .unwrap();
            assert_eq!(address(&answer), Some(TWO));
        }
        // Failed twice, then skipped.
        assert_eq!(
            metrics.upstream_failures.load(Relaxed),
            u64::from(MAX_FAILS)
        );
        let ups = forwarder.upstreams();
        assert!(!ups[0].is_up() && ups[1].is_up());

        // It comes back: the health check finds it answering.
        let back = fake(ONE, false, dead_addr.port()).await;
        let checks = tokio::spawn(forwarder.health_checks(Arc::clone(&metrics)));
        let deadline = Instant::now() + Duration::from_secs(5);
        while !ups[0].is_up() {
            assert!(Instant::now() < deadline, "not back");
            tokio::time::sleep(HEALTH_CHECK_INTERVAL / 5).await;
        }
        checks.abort();
        assert!(back.udp.load(Relaxed) >= 1, "probed");
        let name = Name::from_ascii("after.example.org.").unwrap();
        let answer = forwarder
            .resolve(&name, RecordType::A, DNSClass::IN, Transport::Udp, &metrics)
            .await
            .unwrap();
        assert_eq!(address(&answer), Some(ONE), "first again");
    });
}
