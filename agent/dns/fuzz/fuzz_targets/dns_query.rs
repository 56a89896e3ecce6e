//! Any bytes as a DNS query, over UDP and TCP, against a small cluster
//! zone: no panic, no stall, and every answer is a well-formed response
//! to the query's id.
#![no_main]

use hickory_proto::op::Message;
use libfuzzer_sys::fuzz_target;
use sluice_dns::respond::{Step, Transport};
use sluice_dns_fuzz::resolver;

fuzz_target!(|data: &[u8]| {
    for transport in [Transport::Udp, Transport::Tcp] {
        if let Step::Done(Some(answer)) = resolver().try_answer(data, transport) {
            assert!(answer.len() >= 12, "an answer has a header");
            assert_eq!(answer.get(..2), data.get(..2), "the query's id");
            if transport == Transport::Udp {
                assert!(answer.len() <= 1232, "a UDP answer fits the EDNS buffer");
            }
            let parsed = Message::from_vec(&answer);
            assert!(parsed.is_ok(), "a well-formed response: {parsed:?}");
        }
    }
});
