//! The UDP fast path. Each UDP worker remembers the wire answers it built
//! for plain queries (one question, no EDNS options), keyed by the
//! question's exact bytes, for as long as the zone has not changed. A
//! repeated question then costs a bounds-checked walk over the header and
//! the question, a hash lookup and a copy, instead of parsing and encoding
//! whole messages. The answer is the library's own, so it is byte for byte
//! what the library path gives (the `dns_memo` fuzz target checks that);
//! only the id and the RD bit are the new query's.
//!
//! It is not a cache: an entry is only valid for the zone generation it was
//! computed in, and any change to the zone ends that generation. Each
//! worker's memo is bounded in bytes (its share of `--dns-cache-bytes`);
//! past it, the memo starts over.

use std::{collections::HashMap, time::Instant};

use hickory_proto::{op::ResponseCode, rr::RecordType};

use crate::respond::{EDNS_BUFFER, Resolver, Step, Transport};

/// Default bound of one worker's memo, in bytes.
pub const DEFAULT_MEMO_BYTES: usize = 4 << 20;
/// The longest name on the wire (RFC 1035 §3.1).
const MAX_NAME: usize = 255;
/// Header: id, flags, and the four section counts.
const HEADER: usize = 12;
/// RFC 1035's UDP limit without EDNS0.
const PLAIN_UDP: usize = 512;

struct Entry {
    wire: Box<[u8]>,
    qtype: RecordType,
    rcode: ResponseCode,
}

/// One worker's remembered answers.
pub struct Memo {
    generation: u64,
    entries: HashMap<Box<[u8]>, Entry>,
    /// The key being looked up, reused between queries.
    key: Vec<u8>,
    /// What the entries take (wire answers, keys and the map's slots).
    bytes: usize,
    max_bytes: usize,
}

impl Default for Memo {
    fn default() -> Self {
        Self::new(DEFAULT_MEMO_BYTES)
    }
}

impl Memo {
    /// A memo of at most `max_bytes`.
    pub fn new(max_bytes: usize) -> Self {
        Self {
            generation: u64::MAX,
            entries: HashMap::new(),
            key: Vec::with_capacity(MAX_NAME + 5),
            bytes: 0,
            max_bytes,
        }
    }

    /// Bytes held now.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    fn clear(&mut self, metrics: &crate::metrics::Metrics) {
        self.entries.clear();
        metrics.memo_bytes.fetch_sub(
            u64::try_from(self.bytes).unwrap_or(0),
            std::sync::atomic::Ordering::Relaxed,
        );
        self.bytes = 0;
    }
}

/// What the fast path needs from a plain query.
#[derive(Debug, PartialEq, Eq)]
struct Plain<'q> {
    /// The question: name, type and class, as sent.
    question: &'q [u8],
    /// Its EDNS0 payload size, if it has an OPT record.
    edns: Option<u16>,
}

impl Plain<'_> {
    /// The most a UDP answer to it may take.
    fn limit(&self) -> usize {
        self.edns
            .map_or(PLAIN_UDP, |size| usize::from(size.clamp(512, EDNS_BUFFER)))
    }
}

fn be16(bytes: &[u8], at: usize) -> Option<u16> {
    let pair = bytes.get(at..at.checked_add(2)?)?;
    Some(u16::from_be_bytes([*pair.first()?, *pair.get(1)?]))
}

/// A standard query (QR and opcode 0) with one question in class IN whose
/// name has no compression pointer, nothing in the answer or authority
/// sections, and at most an OPT record (version 0, no options) after it,
/// ending exactly there. Anything else takes the library path.
fn plain(bytes: &[u8]) -> Option<Plain<'_>> {
    let flags = *bytes.get(2)?;
    if flags & 0xf8 != 0 {
        return None;
    }
    let counts = (
        be16(bytes, 4)?,
        be16(bytes, 6)?,
        be16(bytes, 8)?,
        be16(bytes, 10)?,
    );
    let has_opt = match counts {
        (1, 0, 0, 0) => false,
        (1, 0, 0, 1) => true,
        _ => return None,
    };
    let mut at = HEADER;
    loop {
        let len = usize::from(*bytes.get(at)?);
        if len & 0xc0 != 0 {
            return None;
        }
        at = at.checked_add(1 + len)?;
        if at - HEADER > MAX_NAME {
            return None;
        }
        if len == 0 {
            break;
        }
    }
    // Type and class; class IN only.
    if be16(bytes, at + 2)? != 1 {
        return None;
    }
    let end = at + 4;
    let question = bytes.get(HEADER..end)?;
    if !has_opt {
        return (bytes.len() == end).then_some(Plain {
            question,
            edns: None,
        });
    }
    // OPT: root owner, type 41, class = payload size, extended rcode 0,
    // version 0, flags, no data.
    let opt = bytes.get(end..)?;
    let [0, 0, 41, p0, p1, 0, 0, _, _, 0, 0] = *opt else {
        return None;
    };
    Some(Plain {
        question,
        edns: Some(u16::from_be_bytes([p0, p1])),
    })
}

impl Resolver {
    /// `try_answer` over UDP, through `memo`.
    pub fn try_answer_udp(&self, bytes: &[u8], memo: &mut Memo) -> Step {
        let started = Instant::now();
        let Some(query) = plain(bytes) else {
            return self.try_answer_at(bytes, Transport::Udp, started).0;
        };
        // Read before the lookup: an answer computed now holds for it.
        let generation = self.zone.generation();
        if memo.generation != generation {
            memo.clear(&self.metrics);
            memo.generation = generation;
        }
        memo.key.clear();
        memo.key.extend_from_slice(query.question);
        memo.key.push(u8::from(query.edns.is_some()));
        if let Some(entry) = memo.entries.get(memo.key.as_slice())
            && entry.wire.len() <= query.limit()
        {
            let mut wire = entry.wire.to_vec();
            patch(&mut wire, bytes);
            self.metrics.answered(
                Some(entry.qtype),
                entry.rcode,
                Transport::Udp,
                started.elapsed(),
            );
            return Step::Done(Some(wire));
        }
        let (step, from_zone) = self.try_answer_at(bytes, Transport::Udp, started);
        if from_zone
            && let Step::Done(Some(wire)) = &step
            && let Some(entry) = entry(wire, query.question)
        {
            let bytes = entry.wire.len() + 2 * memo.key.len() + size_of::<(Box<[u8]>, Entry)>();
            if memo.bytes + bytes > memo.max_bytes {
                memo.clear(&self.metrics);
            }
            memo.bytes += bytes;
            self.metrics.memo_bytes.fetch_add(
                u64::try_from(bytes).unwrap_or(0),
                std::sync::atomic::Ordering::Relaxed,
            );
            memo.entries.insert(memo.key.as_slice().into(), entry);
        }
        step
    }
}

/// The new query's id and RD bit in a remembered answer.
fn patch(wire: &mut [u8], query: &[u8]) {
    if let (Some(id), Some(q)) = (wire.get_mut(..2), query.get(..2)) {
        id.copy_from_slice(q);
    }
    let rd = query.get(2).map_or(0, |f| f & 1);
    if let Some(flags) = wire.get_mut(2) {
        *flags = (*flags & !1) | rd;
    }
}

/// An answer worth keeping: whole (not truncated), with its type and rcode
/// for the metrics.
fn entry(wire: &[u8], question: &[u8]) -> Option<Entry> {
    let flags = wire.get(2..4)?;
    if flags.first()? & 0x02 != 0 {
        return None;
    }
    let rcode = ResponseCode::from_low(flags.get(1)? & 0x0f);
    let qtype = RecordType::from(be16(question, question.len().checked_sub(4)?)?);
    Some(Entry {
        wire: wire.into(),
        qtype,
        rcode,
    })
}

#[cfg(test)]
mod tests;
