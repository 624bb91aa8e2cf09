//! The DNS wire format, as far as the answers ferry makes need it: reading a query's one
//! question, and writing a response to it. Every read is bounds-checked; anything unusual
//! (compression in the question, several questions, a response) is not a query this reads,
//! and the caller decides what to do with it.

use std::net::Ipv4Addr;

/// Size of the DNS header.
pub const HEADER: usize = 12;
/// Longest name on the wire (RFC 1035).
pub const MAX_NAME: usize = 255;
/// Largest UDP response without EDNS.
pub const UDP_LIMIT: usize = 512;
/// The UDP payload size ferry advertises and honours at most with EDNS(0): the DNS Flag
/// Day 2020 figure, which fits a 1280-byte IPv6 MTU without fragments.
pub const EDNS_PAYLOAD: u16 = 1232;
/// Bytes of the OPT record ferry appends (root name, fixed fields, no options).
pub const OPT_LEN: usize = 11;

/// Record types ferry answers itself.
pub mod rtype {
    /// An IPv4 address.
    pub const A: u16 = 1;
    /// Start of authority (in negative answers).
    pub const SOA: u16 = 6;
    /// EDNS(0)'s pseudo-record (RFC 6891).
    pub const OPT: u16 = 41;
    /// An IPv6 address.
    pub const AAAA: u16 = 28;
    /// A service's port.
    pub const SRV: u16 = 33;
    /// Any type.
    pub const ANY: u16 = 255;
}

/// The class of the Internet.
pub const CLASS_IN: u16 = 1;

/// Response codes.
pub mod rcode {
    /// No error.
    pub const NOERROR: u8 = 0;
    /// The query could not be read.
    pub const FORMERR: u8 = 1;
    /// The server failed (an upstream did not answer).
    pub const SERVFAIL: u8 = 2;
    /// The name does not exist.
    pub const NXDOMAIN: u8 = 3;
    /// The server does not do that (an opcode other than QUERY).
    pub const NOTIMP: u8 = 4;
    /// The upper eight bits of BADVERS (16), carried in the OPT record: an EDNS version
    /// above 0 (RFC 6891 §6.1.3).
    pub const BADVERS_HIGH: u8 = 1;
}

/// A query's one question, read from the packet.
#[derive(Debug, PartialEq, Eq)]
pub struct Question {
    /// The name, lowercased, as labels.
    name: [u8; MAX_NAME],
    /// Bytes of `name` in use, dots between labels.
    len: usize,
    /// The type asked for.
    pub qtype: u16,
    /// The class asked for.
    pub qclass: u16,
    /// Where the question ends in the packet.
    pub end: usize,
}

impl Question {
    /// The name as dotted text, lowercased, without the final dot ("" for the root).
    pub fn name(&self) -> &str {
        // Only ASCII bytes are accepted into the name, so this cannot fail.
        std::str::from_utf8(&self.name[..self.len]).unwrap_or("")
    }
}

/// Why a packet is not a query this module reads.
#[derive(Debug, PartialEq, Eq)]
pub enum NotSimple {
    /// Too short for a header, or the question runs past the end.
    Truncated,
    /// A response, not a query: never answered (it could start a loop).
    Response,
    /// An opcode other than QUERY.
    Opcode,
    /// Not exactly one question, or answers in a query.
    Shape,
    /// A label that is a compression pointer, too long, or not printable ASCII.
    Name,
}

/// Reads the header and the one question of a standard query.
pub fn read_query(packet: &[u8]) -> Result<Question, NotSimple> {
    if packet.len() < HEADER {
        return Err(NotSimple::Truncated);
    }
    let flags = u16::from_be_bytes([packet[2], packet[3]]);
    if flags & 0x8000 != 0 {
        return Err(NotSimple::Response);
    }
    if (flags >> 11) & 0x0f != 0 {
        return Err(NotSimple::Opcode);
    }
    let count = |at: usize| u16::from_be_bytes([packet[at], packet[at + 1]]);
    if count(4) != 1 || count(6) != 0 || count(8) != 0 {
        return Err(NotSimple::Shape);
    }
    let mut name = [0u8; MAX_NAME];
    let mut len = 0;
    let mut at = HEADER;
    loop {
        let label = usize::from(*packet.get(at).ok_or(NotSimple::Truncated)?);
        at += 1;
        if label == 0 {
            break;
        }
        if label > 63 {
            // 0xC0 and up is a compression pointer; 64..=191 are reserved label types.
            return Err(NotSimple::Name);
        }
        let bytes = packet.get(at..at + label).ok_or(NotSimple::Truncated)?;
        let dot = usize::from(len > 0);
        if len + dot + label > MAX_NAME - 1 {
            return Err(NotSimple::Name);
        }
        if dot == 1 {
            name[len] = b'.';
            len += 1;
        }
        for b in bytes {
            if !b.is_ascii_graphic() || *b == b'.' {
                return Err(NotSimple::Name);
            }
            name[len] = b.to_ascii_lowercase();
            len += 1;
        }
        at += label;
    }
    let fixed = packet.get(at..at + 4).ok_or(NotSimple::Truncated)?;
    Ok(Question {
        name,
        len,
        qtype: u16::from_be_bytes([fixed[0], fixed[1]]),
        qclass: u16::from_be_bytes([fixed[2], fixed[3]]),
        end: at + 4,
    })
}

/// A query's EDNS(0) OPT record (RFC 6891 §6.1.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Edns {
    /// The largest UDP response the client takes, in bytes.
    pub payload: u16,
    /// The EDNS version; ferry does version 0.
    pub version: u8,
    /// The DO bit (RFC 3225), echoed in the response.
    pub dnssec_ok: bool,
}

impl Edns {
    /// The largest UDP response this client gets ([`udp_limit`] of its payload size).
    pub fn udp_limit(&self) -> usize {
        udp_limit(self.payload)
    }
}

/// The largest UDP response for a client that advertises `payload` bytes in its OPT: at
/// least 512 (RFC 6891 §6.2.3 treats smaller values as 512), at most [`EDNS_PAYLOAD`].
pub fn udp_limit(payload: u16) -> usize {
    usize::from(payload.clamp(UDP_LIMIT as u16, EDNS_PAYLOAD))
}

/// Why a query's additional section is refused (FORMERR).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EdnsError {
    /// A record runs past the end of the packet, or its owner name is malformed.
    Truncated,
    /// More than one OPT record (RFC 6891 §6.1.1).
    TwoOpts,
    /// An OPT record owned by another name than the root (RFC 6891 §6.1.2).
    OptNotAtRoot,
}

/// The number of records in a packet's additional section (0 for a packet too short).
pub fn additional_count(packet: &[u8]) -> u16 {
    packet
        .get(10..12)
        .map_or(0, |c| u16::from_be_bytes([c[0], c[1]]))
}

/// The OPT record of a query whose question ends at `question_end`, if it carries one;
/// other additional records (a TSIG, say) are skipped, and an OPT's options are ignored
/// (RFC 6891 §6.1.2: unknown options are ignored). Call it only when
/// [`additional_count`] is not 0: the fast path of plain queries never reads this far.
pub fn read_edns(packet: &[u8], question_end: usize) -> Result<Option<Edns>, EdnsError> {
    let mut at = question_end;
    let mut found = None;
    for _ in 0..additional_count(packet) {
        let owner = at;
        // The owner name: labels, ended by the root or a compression pointer.
        loop {
            let label = *packet.get(at).ok_or(EdnsError::Truncated)?;
            if label >= 0xc0 {
                at += 2;
                break;
            }
            if label > 63 {
                return Err(EdnsError::Truncated);
            }
            at += 1 + usize::from(label);
            if label == 0 {
                break;
            }
        }
        let fixed = packet.get(at..at + 10).ok_or(EdnsError::Truncated)?;
        let rtype = u16::from_be_bytes([fixed[0], fixed[1]]);
        let rdlen = usize::from(u16::from_be_bytes([fixed[8], fixed[9]]));
        if rtype == rtype::OPT {
            if found.is_some() {
                return Err(EdnsError::TwoOpts);
            }
            if at != owner + 1 || packet[owner] != 0 {
                return Err(EdnsError::OptNotAtRoot);
            }
            found = Some(Edns {
                payload: u16::from_be_bytes([fixed[2], fixed[3]]),
                version: fixed[5],
                dnssec_ok: fixed[6] & 0x80 != 0,
            });
        }
        at += 10 + rdlen;
        if at > packet.len() {
            return Err(EdnsError::Truncated);
        }
    }
    Ok(found)
}

/// Appends ferry's own OPT record to the response in `out` (RFC 6891 §7: a response to
/// a query with an OPT carries one): payload [`EDNS_PAYLOAD`], version 0, the upper bits
/// of the response code `rcode_high`, the DO bit as the query had it, no options.
pub fn append_opt(out: &mut Vec<u8>, rcode_high: u8, dnssec_ok: bool) {
    if out.len() < HEADER {
        return;
    }
    out.push(0);
    out.extend_from_slice(&rtype::OPT.to_be_bytes());
    out.extend_from_slice(&EDNS_PAYLOAD.to_be_bytes());
    out.extend_from_slice(&[rcode_high, 0, if dnssec_ok { 0x80 } else { 0 }, 0]);
    out.extend_from_slice(&[0, 0]);
    let count = additional_count(out).saturating_add(1);
    out[10..12].copy_from_slice(&count.to_be_bytes());
}

/// One answer record ferry writes; its owner is always the question's name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Record {
    /// An A record.
    A(Ipv4Addr),
    /// An SRV record pointing at the question's own name on `port`.
    Srv {
        /// The port.
        port: u16,
    },
}

/// The section of a response a record goes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Section {
    /// The answer section.
    Answer,
    /// The authority section (a negative answer's SOA).
    Authority,
}

/// Writes responses into a reused buffer.
pub struct Response<'a> {
    out: &'a mut Vec<u8>,
    limit: usize,
    answers: u16,
    authority: u16,
}

/// Offset of the question's name in every packet: right after the header. Owner names of
/// answers point here.
const NAME_POINTER: [u8; 2] = [0xc0, HEADER as u8];

impl<'a> Response<'a> {
    /// Starts the response to `query` (whose question `question` was read from it) with
    /// `rcode`, authoritative when `authoritative`; at most `limit` bytes long.
    pub fn start(
        out: &'a mut Vec<u8>,
        query: &[u8],
        question: &Question,
        rcode: u8,
        authoritative: bool,
        limit: usize,
    ) -> Self {
        out.clear();
        out.extend_from_slice(&query[..2]);
        let recursion_desired = query[2] & 0x01;
        let aa = if authoritative { 0x04 } else { 0 };
        // QR, opcode QUERY, AA, RD as asked; RA: this server recurses for other names.
        out.push(0x80 | aa | recursion_desired);
        out.push(0x80 | (rcode & 0x0f));
        out.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, 0]);
        // The question exactly as asked, so 0x20 case mixing survives.
        out.extend_from_slice(&query[HEADER..question.end]);
        Self {
            out,
            limit,
            answers: 0,
            authority: 0,
        }
    }

    /// Adds an answer for the question's name; false (and the truncation bit set) when it
    /// does not fit.
    pub fn answer(&mut self, record: Record, ttl: u32) -> bool {
        let (rtype, data): (u16, &[u8]) = match record {
            Record::A(address) => (rtype::A, &address.octets()),
            Record::Srv { port } => {
                let mut srv = [0u8; 8];
                // Priority 0, weight 1, the port, then the owner name as the target.
                srv[2..4].copy_from_slice(&1u16.to_be_bytes());
                srv[4..6].copy_from_slice(&port.to_be_bytes());
                srv[6..8].copy_from_slice(&NAME_POINTER);
                return self.push(rtype::SRV, ttl, &srv);
            }
        };
        let data = *data.first_chunk::<4>().unwrap_or(&[0; 4]);
        self.push(rtype, ttl, &data)
    }

    /// Adds the zone's SOA to `section`: the authority section of a negative answer, to be
    /// cached `ttl` seconds (RFC 2308), or the answer to a question for the apex's SOA.
    /// `zone` is the zone's name in wire form.
    pub fn soa(&mut self, zone: &[u8], ttl: u32, section: Section) {
        let mut data = Vec::with_capacity(64);
        // MNAME ns.<zone>, RNAME hostmaster.<zone>, then the five numbers.
        data.extend_from_slice(b"\x02ns");
        data.extend_from_slice(zone);
        data.extend_from_slice(b"\x0ahostmaster");
        data.extend_from_slice(zone);
        for n in [1u32, 3600, 600, 86_400, ttl] {
            data.extend_from_slice(&n.to_be_bytes());
        }
        self.push_owned(zone, rtype::SOA, ttl, &data, section);
    }

    /// Adds a record whose owner is the question's name to the answer section.
    fn push(&mut self, rtype: u16, ttl: u32, data: &[u8]) -> bool {
        self.push_owned(&NAME_POINTER, rtype, ttl, data, Section::Answer)
    }

    /// Adds a record owned by `owner` (wire form, or a pointer) to `section`; false (and
    /// the truncation bit set) when it does not fit.
    fn push_owned(
        &mut self,
        owner: &[u8],
        rtype: u16,
        ttl: u32,
        data: &[u8],
        section: Section,
    ) -> bool {
        if self.out.len() + owner.len() + 10 + data.len() > self.limit {
            self.out[2] |= 0x02;
            return false;
        }
        self.out.extend_from_slice(owner);
        self.out.extend_from_slice(&rtype.to_be_bytes());
        self.out.extend_from_slice(&CLASS_IN.to_be_bytes());
        self.out.extend_from_slice(&ttl.to_be_bytes());
        // Record data is at most a few hundred bytes.
        self.out
            .extend_from_slice(&(data.len() as u16).to_be_bytes());
        self.out.extend_from_slice(data);
        match section {
            Section::Answer => {
                self.answers += 1;
                self.out[6..8].copy_from_slice(&self.answers.to_be_bytes());
            }
            Section::Authority => {
                self.authority += 1;
                self.out[8..10].copy_from_slice(&self.authority.to_be_bytes());
            }
        }
        true
    }
}

/// An error response (`rcode`) to `query`: the header's id, opcode and RD kept, and the
/// question echoed when the query has exactly one that can be delimited (RFC 1035 §4.1.1:
/// a response carries the question; some stub resolvers drop one that does not). None when
/// there is no header to answer, or the packet is itself a response.
pub fn error_response(out: &mut Vec<u8>, query: &[u8], rcode: u8) -> Option<()> {
    let header = query.get(..HEADER)?;
    if header[2] & 0x80 != 0 {
        // Never answer a response.
        return None;
    }
    let question = question_end(query).and_then(|end| query.get(HEADER..end));
    out.clear();
    out.extend_from_slice(&header[..2]);
    out.push(0x80 | (header[2] & 0x79));
    out.push(0x80 | (rcode & 0x0f));
    out.extend_from_slice(&[0, u8::from(question.is_some()), 0, 0, 0, 0, 0, 0]);
    if let Some(question) = question {
        out.extend_from_slice(question);
    }
    Some(())
}

/// Where the one question of `packet` ends, whatever its opcode or flags: None when the
/// count is not one, the name is compressed or malformed, or the packet ends early.
fn question_end(packet: &[u8]) -> Option<usize> {
    if packet.get(4..6)? != [0, 1] {
        return None;
    }
    let mut at = HEADER;
    loop {
        let label = usize::from(*packet.get(at)?);
        at += 1;
        if label == 0 {
            break;
        }
        // Compression pointers and reserved label types: not a question to copy as is.
        if label > 63 || at + label - HEADER > MAX_NAME {
            return None;
        }
        at += label;
    }
    let end = at + 4;
    (end <= packet.len()).then_some(end)
}

/// `name` (dotted, no final dot) in wire form.
pub fn wire_name(name: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(name.len() + 2);
    for label in name.split('.').filter(|l| !l.is_empty()) {
        // Zone names are ferry's own constants, far below 64 bytes a label.
        out.push(label.len() as u8);
        out.extend_from_slice(label.as_bytes());
    }
    out.push(0);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(name: &str, qtype: u16) -> Vec<u8> {
        let mut q = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        q.extend_from_slice(&wire_name(name));
        q.extend_from_slice(&qtype.to_be_bytes());
        q.extend_from_slice(&CLASS_IN.to_be_bytes());
        q
    }

    #[test]
    fn reads_a_question_lowercased() {
        let q = query("Api.Cloud66.LOCAL", rtype::A);
        let question = read_query(&q).unwrap();
        assert_eq!(question.name(), "api.cloud66.local");
        assert_eq!(question.qtype, rtype::A);
        assert_eq!(question.end, q.len());
    }

    #[test]
    fn refuses_what_it_does_not_read() {
        let q = query("api.cloud66.local", rtype::A);
        assert_eq!(read_query(&q[..5]), Err(NotSimple::Truncated));
        assert_eq!(read_query(&q[..q.len() - 1]), Err(NotSimple::Truncated));
        let mut response = q.clone();
        response[2] |= 0x80;
        assert_eq!(read_query(&response), Err(NotSimple::Response));
        let mut two = q.clone();
        two[5] = 2;
        assert_eq!(read_query(&two), Err(NotSimple::Shape));
        // A compression pointer to itself: refused, never followed.
        let mut looped = q[..HEADER].to_vec();
        looped.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1]);
        assert_eq!(read_query(&looped), Err(NotSimple::Name));
        let mut long = query("a", rtype::A)[..HEADER].to_vec();
        for _ in 0..5 {
            long.push(63);
            long.extend_from_slice(&[b'x'; 63]);
        }
        long.extend_from_slice(&[0, 0, 1, 0, 1]);
        assert_eq!(read_query(&long), Err(NotSimple::Name));
    }

    #[test]
    fn writes_answers_that_point_at_the_question() {
        let q = query("api.cloud66.local", rtype::A);
        let question = read_query(&q).unwrap();
        let mut out = Vec::new();
        let mut r = Response::start(&mut out, &q, &question, rcode::NOERROR, true, UDP_LIMIT);
        assert!(r.answer(Record::A(Ipv4Addr::new(10, 66, 1, 2)), 5));
        assert!(r.answer(Record::A(Ipv4Addr::new(10, 66, 1, 3)), 5));
        assert_eq!(&out[..2], &[0x12, 0x34]);
        assert_eq!(out[2], 0x85);
        assert_eq!(&out[6..8], &[0, 2]);
        assert_eq!(out.len(), q.len() + 2 * 16);
        assert_eq!(&out[out.len() - 4..], &[10, 66, 1, 3]);
    }

    #[test]
    fn a_full_response_is_truncated_not_overlong() {
        let q = query("api.cloud66.local", rtype::A);
        let question = read_query(&q).unwrap();
        let mut out = Vec::new();
        let mut r = Response::start(&mut out, &q, &question, rcode::NOERROR, true, UDP_LIMIT);
        let fitted = (0..100)
            .take_while(|i| r.answer(Record::A(Ipv4Addr::new(10, 66, 1, *i)), 5))
            .count();
        assert!(fitted < 100);
        assert!(out.len() <= UDP_LIMIT);
        assert_eq!(out[2] & 0x02, 0x02);
    }
}
