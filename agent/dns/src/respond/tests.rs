//! Whole messages: malformed input, the error codes, negative answers,
//! EDNS0 and truncation.

use std::net::Ipv4Addr;

use hickory_proto::{
    op::{Edns, Message, ResponseCode},
    rr::{DNSClass, RecordType},
};

use super::*;
use crate::fixture::{self, name};

/// `web` (ClusterIP) and `big` (headless, 100 endpoints); no upstream.
fn resolver() -> Resolver {
    fixture::resolver(100)
}

fn ask(r: &Resolver, m: &Message, t: Transport) -> Message {
    let wire = m.to_vec().unwrap();
    let Step::Done(Some(answer)) = r.try_answer(&wire, t) else {
        panic!("answered at once")
    };
    Message::from_vec(&answer).unwrap()
}

#[test]
fn garbage_gets_formerr_with_its_id_and_short_or_response_messages_nothing() {
    let r = resolver();
    let garbage = [0xab, 0xcd, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0, 7, b'x'];
    let Step::Done(Some(answer)) = r.try_answer(&garbage, Transport::Udp) else {
        panic!("answered")
    };
    assert_eq!(answer.len(), 12);
    assert_eq!(&answer[..2], &[0xab, 0xcd]);
    assert_eq!(answer[2] & 0x80, 0x80, "a response");
    assert_eq!(answer[3] & 0x0f, 1, "FORMERR");
    assert_eq!(r.try_answer(&[1, 2, 3], Transport::Udp), Step::Done(None));
    let mut response = query_message(
        1,
        &name("web.default.svc.cluster.local."),
        RecordType::A,
        None,
    );
    response.metadata.message_type = MessageType::Response;
    assert_eq!(
        r.try_answer(&response.to_vec().unwrap(), Transport::Udp),
        Step::Done(None)
    );
    assert!(
        r.metrics
            .render()
            .contains("sluice_dns_dropped_total{reason=\"short\"} 1")
    );
}

#[test]
fn unsupported_requests_get_their_error_codes() {
    let r = resolver();
    let q = |id, n: &str, t| query_message(id, &name(n), t, None);
    let mut two = q(1, "web.default.svc.cluster.local.", RecordType::A);
    two.add_query(Query::query(name("x.cluster.local."), RecordType::A));
    assert_eq!(
        ask(&r, &two, Transport::Udp).metadata.response_code,
        ResponseCode::FormErr
    );
    let mut notify = q(2, "cluster.local.", RecordType::SOA);
    notify.metadata.op_code = OpCode::Notify;
    assert_eq!(
        ask(&r, &notify, Transport::Udp).metadata.response_code,
        ResponseCode::NotImp
    );
    let mut chaos = q(3, "version.bind.", RecordType::TXT);
    chaos.queries[0].set_query_class(DNSClass::CH);
    assert_eq!(
        ask(&r, &chaos, Transport::Udp).metadata.response_code,
        ResponseCode::Refused
    );
    let axfr = q(4, "cluster.local.", RecordType::AXFR);
    assert_eq!(
        ask(&r, &axfr, Transport::Tcp).metadata.response_code,
        ResponseCode::Refused
    );
    let mut v1 = q(5, "web.default.svc.cluster.local.", RecordType::A);
    let mut edns = Edns::new();
    edns.set_version(1);
    v1.set_edns(edns);
    // BADVERS is 16 (shared with BADSIG, which decoding names it).
    assert_eq!(
        u16::from(ask(&r, &v1, Transport::Udp).metadata.response_code),
        16
    );
}

#[test]
fn answers_are_authoritative_and_negative_ones_carry_the_soa() {
    let r = resolver();
    let a = ask(
        &r,
        &query_message(
            7,
            &name("web.default.svc.cluster.local."),
            RecordType::A,
            None,
        ),
        Transport::Udp,
    );
    assert_eq!(a.metadata.id, 7);
    assert!(a.metadata.authoritative && a.metadata.recursion_available);
    assert_eq!(a.answers.len(), 1);
    let nx = ask(
        &r,
        &query_message(
            8,
            &name("nosuch.default.svc.cluster.local."),
            RecordType::A,
            None,
        ),
        Transport::Udp,
    );
    assert_eq!(nx.metadata.response_code, ResponseCode::NXDomain);
    assert_eq!(nx.authorities.len(), 1);
    assert_eq!(nx.authorities[0].record_type(), RecordType::SOA);
}

#[test]
fn large_answers_are_truncated_to_what_the_client_can_take() {
    let r = resolver();
    let big = name("big.default.svc.cluster.local.");
    // No EDNS: 512 bytes; 100 A records do not fit.
    let plain = ask(
        &r,
        &query_message(1, &big, RecordType::A, None),
        Transport::Udp,
    );
    assert!(plain.metadata.truncation && plain.answers.is_empty());
    assert_eq!(plain.queries.len(), 1, "the question stays");
    // EDNS asking for 4096: capped at 1232, which 100 records exceed too.
    let edns = ask(
        &r,
        &query_message(2, &big, RecordType::A, Some(4096)),
        Transport::Udp,
    );
    assert!(edns.metadata.truncation);
    assert_eq!(edns.edns.as_ref().map(Edns::max_payload), Some(EDNS_BUFFER));
    // Over TCP: all of it.
    let tcp = ask(
        &r,
        &query_message(3, &big, RecordType::A, None),
        Transport::Tcp,
    );
    assert!(!tcp.metadata.truncation);
    assert_eq!(tcp.answers.len(), 100);
    assert!(r.metrics.render().contains("sluice_dns_truncated_total 2"));
}

#[tokio::test]
async fn names_outside_the_cluster_need_the_network_and_fail_without_upstreams() {
    let r = resolver();
    let q = query_message(9, &name("example.org."), RecordType::A, None)
        .to_vec()
        .unwrap();
    assert_eq!(r.try_answer(&q, Transport::Udp), Step::Network);
    let answer = Message::from_vec(&r.answer(&q, Transport::Udp).await.unwrap()).unwrap();
    assert_eq!(answer.metadata.response_code, ResponseCode::ServFail);
    assert!(!answer.metadata.authoritative);
}

#[tokio::test]
async fn a_cached_upstream_answer_is_given_at_once_without_the_network() {
    // An upstream on loopback that answers exactly one query.
    let upstream = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut r = resolver();
    r.forwarder = Forwarder::new(vec![upstream.local_addr().unwrap()]);
    let server = tokio::spawn(async move {
        let mut buf = [0u8; 512];
        let (n, peer) = upstream.recv_from(&mut buf).await.unwrap();
        let query = Message::from_vec(&buf[..n]).unwrap();
        let mut reply = Message::response(query.metadata.id, query.metadata.op_code);
        reply.add_queries(query.queries.iter().cloned());
        let owner = query.queries[0].name().clone();
        reply.add_answer(Record::from_rdata(
            owner,
            60,
            hickory_proto::rr::RData::A(Ipv4Addr::new(192, 0, 2, 7).into()),
        ));
        upstream
            .send_to(&reply.to_vec().unwrap(), peer)
            .await
            .unwrap();
    });
    let q = query_message(5, &name("example.org."), RecordType::A, None)
        .to_vec()
        .unwrap();
    assert_eq!(r.try_answer(&q, Transport::Udp), Step::Network);
    let first = Message::from_vec(&r.answer(&q, Transport::Udp).await.unwrap()).unwrap();
    assert_eq!(first.answers.len(), 1);
    server.await.unwrap();

    // The upstream is gone: only the cache can answer, and it does inline.
    let again = query_message(6, &name("Example.ORG."), RecordType::A, None);
    let cached = ask(&r, &again, Transport::Udp);
    assert_eq!(cached.metadata.id, 6);
    assert_eq!(cached.answers.len(), 1);
    assert!(cached.answers[0].ttl <= 30, "capped at 30 s");
    assert!(r.metrics.render().contains("sluice_dns_cache_hits_total 1"));
}
