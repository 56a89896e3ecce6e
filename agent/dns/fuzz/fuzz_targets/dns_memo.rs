//! Differential: the UDP fast path (`memo`) against the library path,
//! answer for answer. The input is a query; a second query is the same
//! with the first four bytes (id and flags) taken from the input's end.
//! Each, asked through one memo in turn, must get exactly the bytes the
//! library path gives it, whether the memo had the answer or not.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_dns::{
    memo::Memo,
    respond::{Step, Transport},
};
use sluice_dns_fuzz::resolver;

fuzz_target!(|data: &[u8]| {
    let r = resolver();
    let first = data;
    let mut second = data.to_vec();
    if let (Some(head), Some(tail)) = (
        second.get_mut(..4),
        data.len().checked_sub(4).and_then(|at| data.get(at..)),
    ) {
        head.copy_from_slice(tail);
    }
    let mut memo = Memo::default();
    for query in [first, &second, first] {
        let fast = r.try_answer_udp(query, &mut memo);
        let library = r.try_answer(query, Transport::Udp);
        match (&fast, &library) {
            // A name outside the zone: both need the network.
            (Step::Network, Step::Network) => {}
            (Step::Done(a), Step::Done(b)) => assert_eq!(a, b, "the same answer"),
            _ => panic!("fast path {fast:?}, library {library:?}"),
        }
    }
});
