//! The fast path: which queries take it, and that what it gives is what
//! the library path gives, for the zone as it is now.

use std::net::Ipv4Addr;

use hickory_proto::{
    op::{Message, ResponseCode},
    rr::{RData, RecordType},
};

use super::*;
use crate::{
    fixture::{self, cluster_ip, name},
    respond::query_message,
};

/// `web` at 10.96.0.10 and `big`, headless with 40 endpoints (about 700
/// bytes of answer).
fn resolver() -> Resolver {
    fixture::resolver(40)
}

fn wire(id: u16, qname: &str, qtype: RecordType, edns: Option<u16>) -> Vec<u8> {
    query_message(id, &name(qname), qtype, edns)
        .to_vec()
        .unwrap()
}

fn answer(step: Step) -> Vec<u8> {
    let Step::Done(Some(wire)) = step else {
        panic!("an answer at once, got {step:?}")
    };
    wire
}

#[test]
fn only_plain_queries_take_the_fast_path() {
    let q = wire(1, "web.default.svc.cluster.local.", RecordType::A, None);
    let p = plain(&q).unwrap();
    assert_eq!(p.edns, None);
    assert_eq!(p.question.len(), q.len() - HEADER);
    assert_eq!(p.limit(), 512);

    let e = wire(
        1,
        "web.default.svc.cluster.local.",
        RecordType::A,
        Some(4096),
    );
    assert_eq!(plain(&e).unwrap().edns, Some(4096));
    assert_eq!(plain(&e).unwrap().limit(), 1232);

    // A response, another opcode, trailing bytes, a second question, a
    // compression pointer in the question, class CH, a cut message.
    let mut response = q.clone();
    response[2] |= 0x80;
    let mut notify = q.clone();
    notify[2] |= 4 << 3;
    let mut trailing = q.clone();
    trailing.push(0);
    let mut two = q.clone();
    two[5] = 2;
    let mut pointer = q[..HEADER].to_vec();
    pointer.extend([0xc0, 12, 0, 1, 0, 1]);
    let mut chaos = q.clone();
    let class = chaos.len() - 1;
    chaos[class] = 3;
    for (what, bytes) in [
        ("response", &response[..]),
        ("opcode", &notify[..]),
        ("trailing", &trailing[..]),
        ("two questions", &two[..]),
        ("pointer", &pointer[..]),
        ("class", &chaos[..]),
        ("cut", &q[..q.len() - 1]),
        ("header only", &q[..HEADER]),
        ("empty", &[][..]),
    ] {
        assert_eq!(plain(bytes), None, "{what}");
    }

    // EDNS with an option (a cookie) or version 1 is not plain.
    let mut cookie = e.clone();
    let rdlen = cookie.len() - 2;
    cookie[rdlen + 1] = 12;
    cookie.extend([0, 10, 0, 8, 1, 2, 3, 4, 5, 6, 7, 8]);
    assert_eq!(plain(&cookie), None);
    let mut version = e.clone();
    let v = version.len() - 5;
    version[v] = 1;
    assert_eq!(plain(&version), None);
}

#[test]
fn a_repeated_question_gets_the_library_answer_with_its_own_id() {
    let r = resolver();
    let mut memo = Memo::default();
    for (qname, qtype, edns) in [
        ("web.default.svc.cluster.local.", RecordType::A, None),
        (
            "web.default.svc.cluster.local.",
            RecordType::AAAA,
            Some(1232),
        ),
        ("nope.default.svc.cluster.local.", RecordType::A, None),
        ("big.default.svc.cluster.local.", RecordType::A, Some(1232)),
    ] {
        let first = answer(r.try_answer_udp(&wire(1, qname, qtype, edns), &mut memo));
        let mut again = wire(2, qname, qtype, edns);
        again[2] &= !1; // RD off this time
        let remembered = answer(r.try_answer_udp(&again, &mut memo));
        assert_eq!(remembered, answer(r.try_answer(&again, Transport::Udp)));
        assert_ne!(remembered, first, "the id and RD are the new query's");
        assert_eq!(&remembered[..2], &[0, 2]);
    }
    assert_eq!(memo.entries.len(), 4);
    let metrics = r.metrics.render();
    assert!(
        metrics.contains(r#"sluice_dns_queries_total{type="A",rcode="NXDOMAIN"} 3"#),
        "answers from the memo are counted (two, and one by the library path): {metrics}"
    );
}

#[test]
fn a_zone_change_ends_what_was_remembered() {
    let r = resolver();
    let mut memo = Memo::default();
    let q = wire(7, "web.default.svc.cluster.local.", RecordType::A, None);
    let address = |wire: &[u8]| {
        let m = Message::from_vec(wire).unwrap();
        match m.answers.first().map(|a| &a.data) {
            Some(RData::A(a)) => Some(a.0),
            _ => None,
        }
    };
    assert_eq!(
        address(&answer(r.try_answer_udp(&q, &mut memo))),
        Some(Ipv4Addr::new(10, 96, 0, 10))
    );
    r.zone.set(
        "default",
        "web",
        Some(cluster_ip(Ipv4Addr::new(10, 96, 0, 99))),
    );
    assert_eq!(
        address(&answer(r.try_answer_udp(&q, &mut memo))),
        Some(Ipv4Addr::new(10, 96, 0, 99))
    );
    r.zone.set("default", "web", None);
    let gone = Message::from_vec(&answer(r.try_answer_udp(&q, &mut memo))).unwrap();
    assert_eq!(gone.metadata.response_code, ResponseCode::NXDomain);
}

#[test]
fn an_answer_too_big_for_the_client_is_truncated_not_remembered_whole() {
    let r = resolver();
    let mut memo = Memo::default();
    let qname = "big.default.svc.cluster.local.";
    let whole = answer(r.try_answer_udp(&wire(1, qname, RecordType::A, Some(1232)), &mut memo));
    assert!(whole.len() > 512, "{} bytes", whole.len());
    // Same question, a client that takes 512 bytes only.
    let small = answer(r.try_answer_udp(&wire(2, qname, RecordType::A, Some(512)), &mut memo));
    let m = Message::from_vec(&small).unwrap();
    assert!(m.metadata.truncation);
    assert!(m.answers.is_empty());
    // Without EDNS: not kept either, and truncated each time.
    for id in [3, 4] {
        let plain = answer(r.try_answer_udp(&wire(id, qname, RecordType::A, None), &mut memo));
        assert!(Message::from_vec(&plain).unwrap().metadata.truncation);
    }
    assert_eq!(memo.entries.len(), 1);
}

#[test]
fn a_memo_stays_within_its_bytes() {
    let r = resolver();
    let mut memo = Memo::new(16 << 10);
    let mut most = 0;
    for i in 0..2000u16 {
        // Names of the zone that do not exist: NXDOMAIN from the zone,
        // remembered, each distinct.
        let q = wire(
            i,
            &format!("n{i}.default.svc.cluster.local."),
            RecordType::A,
            None,
        );
        answer(r.try_answer_udp(&q, &mut memo));
        most = most.max(memo.bytes());
    }
    assert!(most <= 16 << 10, "{most} bytes");
    assert!(most > 8 << 10, "it was used: {most}");
    assert_eq!(
        r.metrics
            .memo_bytes
            .load(std::sync::atomic::Ordering::Relaxed),
        u64::try_from(memo.bytes()).unwrap()
    );
}
