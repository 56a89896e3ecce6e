//! One query in, one answer out: parsing (hickory-proto), the cluster zone
//! or the forwarder, negative answers with the zone's SOA, EDNS0 and
//! truncation. Malformed input gets FORMERR, or nothing and a counter; it
//! never costs more than parsing it.

use std::{sync::Arc, time::Instant};

use hickory_proto::{
    op::{Edns, Message, MessageType, OpCode, Query, ResponseCode},
    rr::{DNSClass, Name, Record, RecordType},
};

use crate::{
    forward::{Answer, Forwarder},
    metrics::{Dropped, Metrics},
    zone::{ClusterZone, Lookup},
};

/// EDNS0 buffer size: advertised, and the most a UDP answer may take
/// (CoreDNS's `bufsize` default, DNS Flag Day 2020).
pub const EDNS_BUFFER: u16 = 1232;
/// Without EDNS0, RFC 1035's limit.
const PLAIN_UDP: usize = 512;
/// CNAMEs followed for an ExternalName Service.
const MAX_CHAIN: usize = 8;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}

pub struct Resolver {
    pub zone: Arc<ClusterZone>,
    pub forwarder: Forwarder,
    pub metrics: Arc<Metrics>,
    /// Who is answered, and each client's share.
    pub clients: Arc<crate::clients::Clients>,
}

/// What the answer section and rcode of a response are made of.
struct Outcome {
    rcode: ResponseCode,
    authoritative: bool,
    answers: Vec<Record>,
    authorities: Vec<Record>,
    additionals: Vec<Record>,
    /// Straight from the zone: the same question gets the same answer
    /// until the zone changes (see `memo`).
    from_zone: bool,
}

impl Outcome {
    fn forwarded(answer: Answer) -> Self {
        Self {
            rcode: answer.rcode,
            authoritative: false,
            answers: answer.answers,
            authorities: answer.authorities,
            additionals: answer.additionals,
            from_zone: false,
        }
    }

    fn rcode(rcode: ResponseCode) -> Self {
        Self {
            rcode,
            authoritative: false,
            answers: Vec::new(),
            authorities: Vec::new(),
            additionals: Vec::new(),
            from_zone: false,
        }
    }
}

/// What `Resolver::try_answer` could do without the network.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// The answer (or `None`: stay silent).
    Done(Option<Vec<u8>>),
    /// The question needs an upstream: call `Resolver::answer`.
    Network,
}

impl Resolver {
    /// Answers at once what needs no upstream (cluster names, malformed
    /// queries); says so when the network is needed.
    pub fn try_answer(&self, bytes: &[u8], transport: Transport) -> Step {
        self.try_answer_at(bytes, transport, Instant::now()).0
    }

    /// `try_answer`, and whether the answer came straight from the zone.
    pub(crate) fn try_answer_at(
        &self,
        bytes: &[u8],
        transport: Transport,
        started: Instant,
    ) -> (Step, bool) {
        let request = match self.parse(bytes, transport, started) {
            Ok(request) => request,
            Err(done) => return (Step::Done(done), false),
        };
        let outcome = match check(&request) {
            Err(outcome) => outcome,
            Ok(query) => match self.local(query.name(), query.query_type()) {
                Some(outcome) => outcome,
                None => return (Step::Network, false),
            },
        };
        let from_zone = outcome.from_zone;
        (
            Step::Done(self.finish(&request, outcome, transport, started)),
            from_zone,
        )
    }

    /// The wire answer to the wire query `bytes`, or `None` to stay silent.
    pub async fn answer(&self, bytes: &[u8], transport: Transport) -> Option<Vec<u8>> {
        let started = Instant::now();
        let request = match self.parse(bytes, transport, started) {
            Ok(request) => request,
            Err(done) => return done,
        };
        let outcome = match check(&request) {
            Err(outcome) => outcome,
            Ok(query) => {
                self.resolve(query.name(), query.query_type(), 0, transport)
                    .await
            }
        };
        self.finish(&request, outcome, transport, started)
    }

    /// REFUSED to the wire query `bytes` (a client outside the access
    /// list, or past its share), or nothing for what is not a query.
    pub fn refuse(&self, bytes: &[u8]) -> Option<Vec<u8>> {
        let started = Instant::now();
        let request = match self.parse(bytes, Transport::Udp, started) {
            Ok(request) => request,
            Err(done) => return done,
        };
        self.finish(
            &request,
            Outcome::rcode(ResponseCode::Refused),
            Transport::Udp,
            started,
        )
    }

    /// The request, or what to send instead (FORMERR, or nothing).
    fn parse(
        &self,
        bytes: &[u8],
        transport: Transport,
        started: Instant,
    ) -> Result<Message, Option<Vec<u8>>> {
        let Some(header) = bytes.get(..12) else {
            self.metrics.dropped(Dropped::Short);
            return Err(None);
        };
        if header.get(2).is_some_and(|b| b & 0x80 != 0) {
            self.metrics.dropped(Dropped::Response);
            return Err(None);
        }
        Message::from_vec(bytes).map_err(|_| {
            self.metrics
                .answered(None, ResponseCode::FormErr, transport, started.elapsed());
            Some(formerr(header))
        })
    }

    fn finish(
        &self,
        request: &Message,
        outcome: Outcome,
        transport: Transport,
        started: Instant,
    ) -> Option<Vec<u8>> {
        let rcode = outcome.rcode;
        let wire = encode(request, outcome, transport, &self.metrics);
        let qtype = request.queries.first().map(Query::query_type);
        self.metrics
            .answered(qtype, rcode, transport, started.elapsed());
        wire
    }

    /// The zone's answer, or a fresh cached one for a name not ours;
    /// `None` when it needs the network (a cache miss, or an alias to
    /// chase).
    fn local(&self, name: &Name, qtype: RecordType) -> Option<Outcome> {
        match self.zone.lookup(name, qtype) {
            Lookup::Alias { .. } => None,
            Lookup::NotOurs => self
                .forwarder
                .cached(name, qtype, DNSClass::IN, &self.metrics)
                .map(Outcome::forwarded),
            other => Some(self.zone_outcome(other)),
        }
    }

    fn zone_outcome(&self, lookup: Lookup) -> Outcome {
        let negative = |rcode| Outcome {
            rcode,
            authoritative: true,
            answers: Vec::new(),
            authorities: vec![self.zone.soa()],
            additionals: Vec::new(),
            from_zone: true,
        };
        match lookup {
            Lookup::Answer {
                answers,
                additionals,
            } => Outcome {
                rcode: ResponseCode::NoError,
                authoritative: true,
                answers,
                authorities: Vec::new(),
                additionals,
                from_zone: true,
            },
            Lookup::NoData => negative(ResponseCode::NoError),
            Lookup::NxDomain => negative(ResponseCode::NXDomain),
            Lookup::NotReady | Lookup::NotOurs | Lookup::Alias { .. } => {
                Outcome::rcode(ResponseCode::ServFail)
            }
        }
    }

    async fn resolve(
        &self,
        name: &Name,
        qtype: RecordType,
        depth: usize,
        transport: Transport,
    ) -> Outcome {
        match self.zone.lookup(name, qtype) {
            Lookup::Alias { cname, target } => {
                let mut outcome = Outcome {
                    rcode: ResponseCode::NoError,
                    authoritative: true,
                    answers: vec![*cname],
                    authorities: Vec::new(),
                    additionals: Vec::new(),
                    from_zone: false,
                };
                // As CoreDNS does for ExternalName: follow the alias for
                // address questions, through this same server.
                let chase = matches!(qtype, RecordType::A | RecordType::AAAA | RecordType::ANY);
                if chase && depth < MAX_CHAIN {
                    let next = Box::pin(self.resolve(&target, qtype, depth + 1, transport)).await;
                    if next.rcode != ResponseCode::ServFail {
                        outcome.rcode = next.rcode;
                        outcome.answers.extend(next.answers);
                        outcome.authorities = next.authorities;
                    }
                }
                outcome
            }
            Lookup::NotOurs => {
                match self
                    .forwarder
                    .resolve(name, qtype, DNSClass::IN, transport, &self.metrics)
                    .await
                {
                    Ok(answer) => Outcome::forwarded(answer),
                    Err(e) => {
                        tracing::debug!(%name, "forwarding: {e}");
                        Outcome::rcode(ResponseCode::ServFail)
                    }
                }
            }
            other => self.zone_outcome(other),
        }
    }
}

/// The one question of a well-formed standard query, or the error answer.
fn check(request: &Message) -> Result<&Query, Outcome> {
    if request.metadata.op_code != OpCode::Query {
        return Err(Outcome::rcode(ResponseCode::NotImp));
    }
    let [query] = request.queries.as_slice() else {
        return Err(Outcome::rcode(ResponseCode::FormErr));
    };
    if request.edns.as_ref().is_some_and(|e| e.version() > 0) {
        return Err(Outcome::rcode(ResponseCode::BADVERS));
    }
    if query.query_class() != DNSClass::IN {
        return Err(Outcome::rcode(ResponseCode::Refused));
    }
    match query.query_type() {
        RecordType::AXFR | RecordType::IXFR => Err(Outcome::rcode(ResponseCode::Refused)),
        RecordType::OPT => Err(Outcome::rcode(ResponseCode::FormErr)),
        _ => Ok(query),
    }
}

/// FORMERR for a message that did not parse: its id and opcode, no question.
fn formerr(header: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8; 12];
    if let (Some(dst), Some(src)) = (out.get_mut(..2), header.get(..2)) {
        dst.copy_from_slice(src);
    }
    let flags = header.get(2).copied().unwrap_or(0);
    if let Some(b) = out.get_mut(2) {
        // QR, the request's opcode and RD.
        *b = 0x80 | (flags & 0x79);
    }
    if let Some(b) = out.get_mut(3) {
        *b = 0x80 | ResponseCode::FormErr.low();
    }
    out
}

/// The response message on the wire; truncated (TC, question only) when a
/// UDP answer is larger than the client can take.
fn encode(
    request: &Message,
    outcome: Outcome,
    transport: Transport,
    metrics: &Metrics,
) -> Option<Vec<u8>> {
    let mut response = Message::new(
        request.metadata.id,
        MessageType::Response,
        request.metadata.op_code,
    );
    response.metadata.recursion_desired = request.metadata.recursion_desired;
    response.metadata.recursion_available = true;
    response.metadata.authoritative = outcome.authoritative;
    response.metadata.response_code = outcome.rcode;
    response.add_queries(request.queries.iter().cloned());
    response.answers = outcome.answers;
    response.authorities = outcome.authorities;
    response.additionals = outcome.additionals;
    if request.edns.is_some() {
        let mut edns = Edns::new();
        edns.set_max_payload(EDNS_BUFFER);
        response.set_edns(edns);
    }
    let wire = match response.to_vec() {
        Ok(wire) => wire,
        Err(e) => {
            tracing::debug!("encoding an answer: {e}");
            let mut failed = Message::new(
                request.metadata.id,
                MessageType::Response,
                request.metadata.op_code,
            );
            failed.metadata.response_code = ResponseCode::ServFail;
            failed.add_queries(request.queries.iter().cloned());
            return failed.to_vec().ok();
        }
    };
    let limit = match (transport, &request.edns) {
        (Transport::Tcp, _) => usize::from(u16::MAX),
        (Transport::Udp, Some(edns)) => usize::from(edns.max_payload().clamp(512, EDNS_BUFFER)),
        (Transport::Udp, None) => PLAIN_UDP,
    };
    if wire.len() <= limit {
        return Some(wire);
    }
    metrics
        .truncated
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    // The header (with TC set), the question and the OPT record.
    response.truncate().to_vec().ok()
}

/// A query message for tests and tools: `name`/`qtype`, recursion desired.
pub fn query_message(id: u16, name: &Name, qtype: RecordType, edns: Option<u16>) -> Message {
    let mut m = Message::new(id, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(name.clone(), qtype));
    if let Some(size) = edns {
        let mut e = Edns::new();
        e.set_max_payload(size);
        m.set_edns(e);
    }
    m
}

#[cfg(test)]
mod tests;
