//! What ferry answers for `cloud66.local`, from the records and the caller.
//!
//! Names (documented in the README):
//! - `<service>.cloud66.local`: A records of the service's running containers of the
//!   caller's own generation (the versioned rule of [`ServiceRecord::pick`]), ordered by the
//!   service's `load_balancing`; SRV records (one per declared port, target the same name)
//!   for SRV queries. Container addresses, as Cloud 66 gives, because that is what lets
//!   `sticky` and `closest` mean anything and what apps that open one connection per
//!   address expect.
//! - `<service>.address.cloud66.local`: the service's stable service address, which
//!   `connect4` steers per connect (to the caller's generation too) and which never goes
//!   stale in a client's cache.
//!
//! A caller's own stack is searched first; a host process, or a caller of another stack,
//! gets the one stack that has such a service. The apex answers its SOA; a name that exists
//! without records of the type asked (`address.cloud66.local`, which has names below it,
//! or a service several stacks have, asked by a caller of none) is NODATA; anything else
//! under the zone is NXDOMAIN.

use std::{
    hash::{Hash as _, Hasher as _},
    net::SocketAddrV4,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use ferry_api::{
    records::{Endpoint, ServiceRecord},
    servicefile::LoadBalancing,
};

use super::wire::{self, Question, Record, Response, Section, rcode, rtype};
use crate::discovery::{Callers, Found, LocalCaller, Records};

/// The zone ferry answers for.
pub const ZONE: &str = "cloud66.local";
/// TTL of positive answers: short, so a client that caches still follows a deploy soon.
pub const TTL: u32 = 5;
/// How long a negative answer may be cached.
pub const NEGATIVE_TTL: u32 = 5;

/// Who sent a query.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Who {
    /// One of this server's containers: its cgroup id and what it is.
    Container(u64, Arc<LocalCaller>),
    /// A process of this server outside ferry's containers (or one the agent does not know
    /// yet), from this address.
    Host(SocketAddrV4),
}

/// What to do with a query.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The response is in the output buffer.
    Answered,
    /// Not ferry's name: ask the upstream resolvers.
    Forward,
    /// Send nothing back (a response, or too broken to answer).
    Ignore,
}

/// Answers queries for the zone from the shared records and callers.
pub struct Answerer {
    records: Records,
    callers: Callers,
    server: String,
    zone: Vec<u8>,
    turn: AtomicU64,
}

impl Answerer {
    /// An answerer for this server (`server`, for `closest`) from `records` and `callers`.
    pub fn new(records: Records, callers: Callers, server: String) -> Self {
        Self {
            records,
            callers,
            server,
            zone: wire::wire_name(ZONE),
            turn: AtomicU64::new(0),
        }
    }

    /// The caller of cgroup `cgroup` (None: the kernel did not say), seen at `peer`.
    pub fn who(&self, cgroup: Option<u64>, peer: SocketAddrV4) -> Who {
        match cgroup.and_then(|c| Some((c, self.callers.get(c)?))) {
            Some((cgroup, caller)) => Who::Container(cgroup, caller),
            None => Who::Host(peer),
        }
    }

    /// Answers `query` from `who` into `out` when the name is ferry's, or says what else to
    /// do. `limit` is the transport's limit for a client without EDNS (512 bytes over UDP,
    /// 65535 over TCP); a query's EDNS(0) payload size raises it, up to
    /// [`wire::EDNS_PAYLOAD`]. What does not fit is cut at a record boundary with TC set.
    pub fn answer(&self, query: &[u8], who: &Who, out: &mut Vec<u8>, limit: usize) -> Outcome {
        let question = match wire::read_query(query) {
            Ok(question) => question,
            Err(wire::NotSimple::Response) => return Outcome::Ignore,
            Err(wire::NotSimple::Truncated) => {
                return match wire::error_response(out, query, rcode::FORMERR) {
                    Some(()) => Outcome::Answered,
                    None => Outcome::Ignore,
                };
            }
            Err(wire::NotSimple::Opcode) => {
                return match wire::error_response(out, query, rcode::NOTIMP) {
                    Some(()) => Outcome::Answered,
                    None => Outcome::Ignore,
                };
            }
            // Legal but unusual (compression in the question, several questions): not
            // ferry's fast path; the upstream resolver reads it properly.
            Err(wire::NotSimple::Shape | wire::NotSimple::Name) => return Outcome::Forward,
        };
        let name = question.name();
        let Some(inside) = zone_part(name) else {
            return Outcome::Forward;
        };
        // Plain queries (no additional records) never read further: the fast path.
        let edns = match wire::additional_count(query) {
            0 => None,
            _ => match wire::read_edns(query, question.end) {
                Ok(edns) => edns,
                Err(_) => {
                    return match wire::error_response(out, query, rcode::FORMERR) {
                        Some(()) => Outcome::Answered,
                        None => Outcome::Ignore,
                    };
                }
            },
        };
        let Some(edns) = edns else {
            self.answer_zone(query, &question, inside, who, out, limit);
            return Outcome::Answered;
        };
        if edns.version > 0 {
            // BADVERS: no answer, and the version ferry speaks in its OPT (RFC 6891 §6.1.3).
            Response::start(out, query, &question, rcode::NOERROR, true, limit);
            wire::append_opt(out, rcode::BADVERS_HIGH, edns.dnssec_ok);
            return Outcome::Answered;
        }
        let limit = limit.max(edns.udp_limit()) - wire::OPT_LEN;
        self.answer_zone(query, &question, inside, who, out, limit);
        wire::append_opt(out, 0, edns.dnssec_ok);
        Outcome::Answered
    }

    fn answer_zone(
        &self,
        query: &[u8],
        question: &Question,
        inside: &str,
        who: &Who,
        out: &mut Vec<u8>,
        limit: usize,
    ) {
        let (service, address) = match inside.split_once('.') {
            None => (inside, false),
            Some((service, "address")) => (service, true),
            Some(_) => ("", false),
        };
        let directory = self.records.read();
        let caller = match who {
            Who::Container(_, caller) => Some(&**caller),
            Who::Host(_) => None,
        };
        let found = if service.is_empty() {
            Found::Missing
        } else {
            directory.find(service, caller.map(|c| c.stack.as_str()))
        };
        let record = match found {
            Found::One(record) => record,
            _ if inside.is_empty() => {
                // The apex owns the zone's SOA (RFC 1035 §6.2) and nothing else ferry has.
                let mut r = Response::start(out, query, question, rcode::NOERROR, true, limit);
                let section = if question.qtype == rtype::SOA || question.qtype == rtype::ANY {
                    Section::Answer
                } else {
                    Section::Authority
                };
                r.soa(&self.zone, NEGATIVE_TTL, section);
                return;
            }
            // A name that exists with records for other callers (a service of several
            // stacks, the caller in none), or with names below it (`address.cloud66.local`
            // while any service has an address), is NODATA, never NXDOMAIN, which tells a
            // caching resolver that nothing below exists either (RFC 8020).
            other => {
                let exists = matches!(other, Found::Ambiguous)
                    || (inside == "address" && directory.all().any(|r| r.address.is_some()));
                let code = if exists {
                    rcode::NOERROR
                } else {
                    rcode::NXDOMAIN
                };
                let mut r = Response::start(out, query, question, code, true, limit);
                r.soa(&self.zone, NEGATIVE_TTL, Section::Authority);
                return;
            }
        };
        let mut r = Response::start(out, query, question, rcode::NOERROR, true, limit);
        let wants = |t: u16| question.qtype == t || question.qtype == rtype::ANY;
        let mut any = false;
        if address {
            if let (true, Some(a)) = (wants(rtype::A), record.address) {
                any = r.answer(Record::A(a), TTL);
            }
        } else if wants(rtype::A) {
            any = self.write_ordered(&mut r, record, caller, who);
        } else if wants(rtype::SRV) {
            for port in &record.ports {
                any |= r.answer(Record::Srv { port: *port }, TTL);
            }
        }
        if !any {
            r.soa(&self.zone, NEGATIVE_TTL, Section::Authority);
        }
    }

    /// Writes the caller's endpoints of `record` as A records, in the order its load
    /// balancing asks for; whether any was written. No allocation on the common paths:
    /// this runs for every query.
    fn write_ordered(
        &self,
        r: &mut Response<'_>,
        record: &ServiceRecord,
        caller: Option<&LocalCaller>,
        who: &Who,
    ) -> bool {
        let generation = caller
            .filter(|c| c.stack == record.stack)
            .map(|c| c.generation);
        let endpoints = record.pick(generation);
        let mut any = false;
        let mut write = |group: &mut dyn Iterator<Item = &Endpoint>| {
            for e in group {
                if !r.answer(Record::A(e.address), TTL) {
                    return false;
                }
                any = true;
            }
            true
        };
        match record.load_balancing {
            LoadBalancing::RoundRobin => {
                write(&mut rotated(
                    endpoints,
                    self.turn.fetch_add(1, Ordering::Relaxed),
                ));
            }
            LoadBalancing::Sticky => {
                write(&mut rotated(endpoints, sticky_key(who)));
            }
            LoadBalancing::Closest => {
                let turn = self.turn.fetch_add(1, Ordering::Relaxed);
                let (near, far): (Vec<&Endpoint>, Vec<&Endpoint>) =
                    endpoints.iter().partition(|e| e.server == self.server);
                for group in [near, far] {
                    if !write(&mut rotated(&group, turn).copied()) {
                        break;
                    }
                }
            }
        }
        any
    }
}

/// `list` starting at position `by` (modulo its length), wrapping around.
fn rotated<T>(list: &[T], by: u64) -> impl Iterator<Item = &T> {
    let start = if list.is_empty() {
        0
    } else {
        (by % list.len() as u64) as usize
    };
    list[start..].iter().chain(&list[..start])
}

/// The part of `name` before `.cloud66.local` ("" for the zone itself), or None outside.
fn zone_part(name: &str) -> Option<&str> {
    if name == ZONE {
        return Some("");
    }
    name.strip_suffix(ZONE)?.strip_suffix('.')
}

/// A caller's stable key for `sticky`: its cgroup, or a host process's address.
fn sticky_key(who: &Who) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    match who {
        Who::Container(cgroup, _) => cgroup.hash(&mut hasher),
        Who::Host(peer) => peer.ip().hash(&mut hasher),
    }
    hasher.finish()
}
