//! The DNS answers ferry gives for cloud66.local, read back with hickory's parser: which
//! containers each caller gets, in what order, what is NXDOMAIN, and that no packet, however
//! broken, makes the answerer panic or answer beyond its limit.

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddrV4},
};

use ferry_agent::{
    discovery::{Callers, LocalCaller, Records},
    dns::{Answerer, Outcome, Who, wire},
};
use ferry_api::{
    records::{Endpoint, ServiceRecord},
    servicefile::{DnsBehaviour, LoadBalancing},
};
use hickory_proto::{
    op::{Message, ResponseCode},
    rr::{RData, RecordType},
};

fn endpoint(last: u8, server: &str) -> Endpoint {
    Endpoint {
        address: Ipv4Addr::new(10, 66, 1, last),
        server: server.into(),
        container: format!("c{last}"),
    }
}

fn record(service: &str, generations: &[(u64, Vec<Endpoint>)]) -> ServiceRecord {
    ServiceRecord {
        stack: "shop".into(),
        service: service.into(),
        address: Some(Ipv4Addr::new(10, 96, 0, 7)),
        serving: Some(2),
        dns_behaviour: DnsBehaviour::Versioned,
        load_balancing: LoadBalancing::RoundRobin,
        ports: vec![4000],
        published: Vec::new(),
        traffic_matches: Vec::new(),
        generations: generations.iter().cloned().collect::<BTreeMap<_, _>>(),
    }
}

/// shop's api: generation 1 on .11, generation 2 (serving) on .21 and .22.
fn answerer(tweak: impl FnOnce(&mut ServiceRecord)) -> Answerer {
    let mut api = record(
        "api",
        &[
            (1, vec![endpoint(11, "one")]),
            (2, vec![endpoint(21, "one"), endpoint(22, "two")]),
        ],
    );
    tweak(&mut api);
    let records = Records::default();
    records.replace([api, record("web", &[(2, vec![endpoint(31, "one")])])]);
    let callers = Callers::new(None);
    for (cgroup, generation) in [(100, 1), (200, 2)] {
        callers.register(
            cgroup,
            LocalCaller {
                stack: "shop".into(),
                service: "web".into(),
                generation,
                address: None,
            },
        );
    }
    Answerer::new(records, callers, "two".into())
}

fn query(name: &str, qtype: u16) -> Vec<u8> {
    let mut q = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    q.extend_from_slice(&wire::wire_name(name));
    q.extend_from_slice(&qtype.to_be_bytes());
    q.extend_from_slice(&1u16.to_be_bytes());
    q
}

fn host() -> Who {
    Who::Host(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 5000))
}

fn ask(answerer: &Answerer, who: &Who, name: &str, qtype: u16) -> Message {
    let mut out = Vec::new();
    let outcome = answerer.answer(&query(name, qtype), who, &mut out, wire::UDP_LIMIT);
    assert_eq!(outcome, Outcome::Answered, "{name}");
    let message = Message::from_vec(&out).expect("a well-formed response");
    assert_eq!(message.metadata.id, 0x1234);
    assert!(message.metadata.authoritative);
    message
}

fn addresses(message: &Message) -> Vec<Ipv4Addr> {
    message
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(a.0),
            _ => None,
        })
        .collect()
}

fn last(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 66, 1, n)
}

#[test]
fn each_caller_gets_its_own_generation_and_hosts_the_serving_one() {
    let a = answerer(|_| {});
    let gen1 = a.who(Some(100), SocketAddrV4::new(last(5), 1000));
    let gen2 = a.who(Some(200), SocketAddrV4::new(last(5), 1000));
    assert_eq!(
        addresses(&ask(&a, &gen1, "api.cloud66.local", 1)),
        [last(11)]
    );
    let mut served = addresses(&ask(&a, &gen2, "API.Cloud66.Local", 1));
    served.sort();
    assert_eq!(served, [last(21), last(22)]);
    let mut hosts = addresses(&ask(&a, &host(), "api.cloud66.local", 1));
    hosts.sort();
    assert_eq!(hosts, [last(21), last(22)]);
    // An unknown cgroup is a host process.
    assert_eq!(
        a.who(Some(999), SocketAddrV4::new(last(5), 1)),
        Who::Host(SocketAddrV4::new(last(5), 1))
    );

    let flat = answerer(|r| r.dns_behaviour = DnsBehaviour::NonVersioned);
    let gen1 = flat.who(Some(100), SocketAddrV4::new(last(5), 1000));
    assert_eq!(
        addresses(&ask(&flat, &gen1, "api.cloud66.local", 1)).len(),
        2
    );
}

#[test]
fn round_robin_rotates_the_first_answer_evenly() {
    let a = answerer(|_| {});
    let mut first = BTreeMap::new();
    for _ in 0..100 {
        let got = addresses(&ask(&a, &host(), "api.cloud66.local", 1));
        *first.entry(got[0]).or_insert(0) += 1;
    }
    assert_eq!(first.values().copied().collect::<Vec<_>>(), [50, 50]);
}

#[test]
fn sticky_keeps_a_caller_and_closest_puts_this_server_first() {
    let sticky = answerer(|r| r.load_balancing = LoadBalancing::Sticky);
    let caller = sticky.who(Some(200), SocketAddrV4::new(last(5), 1000));
    let first = addresses(&ask(&sticky, &caller, "api.cloud66.local", 1));
    for _ in 0..10 {
        assert_eq!(
            addresses(&ask(&sticky, &caller, "api.cloud66.local", 1)),
            first
        );
    }
    // This answerer's server is "two", where .22 runs.
    let closest = answerer(|r| r.load_balancing = LoadBalancing::Closest);
    for _ in 0..4 {
        assert_eq!(
            addresses(&ask(&closest, &host(), "api.cloud66.local", 1)),
            [last(22), last(21)]
        );
    }
}

#[test]
fn srv_the_service_address_nodata_and_nxdomain() {
    let a = answerer(|_| {});
    let srv = ask(&a, &host(), "api.cloud66.local", 33);
    assert_eq!(srv.answers.len(), 1);
    match &srv.answers[0].data {
        RData::SRV(s) => {
            assert_eq!(s.port, 4000);
            assert_eq!(s.target.to_ascii(), "api.cloud66.local.");
        }
        other => panic!("not SRV: {other:?}"),
    }
    assert_eq!(
        addresses(&ask(&a, &host(), "api.address.cloud66.local", 1)),
        [Ipv4Addr::new(10, 96, 0, 7)]
    );
    // A name that exists has no AAAA: NOERROR with no answer, so getaddrinfo goes on.
    let aaaa = ask(&a, &host(), "api.cloud66.local", 28);
    assert_eq!(aaaa.metadata.response_code, ResponseCode::NoError);
    assert!(aaaa.answers.is_empty());
    assert_eq!(aaaa.authorities[0].record_type(), RecordType::SOA);
    for name in [
        "nosuch.cloud66.local",
        "x.api.cloud66.local",
        "api.other.cloud66.local",
    ] {
        let missing = ask(&a, &host(), name, 1);
        assert_eq!(
            missing.metadata.response_code,
            ResponseCode::NXDomain,
            "{name}"
        );
        assert_eq!(missing.authorities[0].record_type(), RecordType::SOA);
    }
    let mut out = Vec::new();
    assert_eq!(
        a.answer(&query("example.com", 1), &host(), &mut out, wire::UDP_LIMIT),
        Outcome::Forward
    );
}

#[test]
fn broken_packets_never_panic_nor_overflow_the_limit() {
    // A deterministic stand-in for the fuzz target (agent/fuzz), so the unit tier keeps
    // the property: any bytes in, a bounded response or none, never a panic.
    let a = answerer(|_| {});
    let mut seed: u64 = 0xd15c;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let bases = [
        query("api.cloud66.local", 1),
        query("api.cloud66.local", 33),
        query("example.com", 1),
    ];
    let mut out = Vec::new();
    for round in 0..20_000 {
        let mut packet = bases[round % bases.len()].clone();
        for _ in 0..(next() % 6) {
            let at = (next() as usize) % (packet.len() + 1);
            match next() % 4 {
                0 if at < packet.len() => packet[at] = next() as u8,
                1 => packet.insert(at, next() as u8),
                2 => packet.truncate(at),
                _ => packet.extend((0..(next() % 64)).map(|_| next() as u8)),
            }
        }
        if a.answer(&packet, &host(), &mut out, wire::UDP_LIMIT) == Outcome::Answered {
            assert!((wire::HEADER..=wire::UDP_LIMIT).contains(&out.len()));
            // What ferry writes, hickory reads.
            Message::from_vec(&out).expect("a response hickory can read");
        }
    }
}

#[test]
fn an_error_response_echoes_the_question() {
    let a = answerer(|_| {});
    // Opcode STATUS (2), which ferry does not do, with a well-formed question.
    let mut status = query("api.cloud66.local", 1);
    status[2] = 0x10 | 0x01;
    let mut out = Vec::new();
    assert_eq!(
        a.answer(&status, &host(), &mut out, wire::UDP_LIMIT),
        Outcome::Answered
    );
    let message = Message::from_vec(&out).expect("a response hickory can read");
    assert_eq!(message.metadata.response_code, ResponseCode::NotImp);
    assert_eq!(message.metadata.id, 0x1234);
    assert_eq!(message.queries.len(), 1, "the question is echoed");
    assert_eq!(message.queries[0].name.to_ascii(), "api.cloud66.local.");
    assert_eq!(message.queries[0].query_type, RecordType::A);
    // A standard query cut after its header: FORMERR, and no question to echo.
    let cut = query("api.cloud66.local", 1);
    let mut out = Vec::new();
    assert_eq!(
        a.answer(&cut[..wire::HEADER], &host(), &mut out, wire::UDP_LIMIT),
        Outcome::Answered
    );
    let message = Message::from_vec(&out).expect("a response hickory can read");
    assert_eq!(message.metadata.response_code, ResponseCode::FormErr);
    assert!(message.queries.is_empty());
}

#[test]
fn a_name_with_names_below_it_is_nodata_and_the_apex_owns_its_soa() {
    let a = answerer(|_| {});
    // `address.cloud66.local` has `api.address.cloud66.local` below it: it exists.
    for qtype in [1, 28, 33] {
        let empty = ask(&a, &host(), "address.cloud66.local", qtype);
        assert_eq!(empty.metadata.response_code, ResponseCode::NoError);
        assert!(empty.answers.is_empty());
        assert_eq!(empty.authorities[0].record_type(), RecordType::SOA);
    }
    // With no service address anywhere, nothing is below it.
    let bare = answerer(|r| r.address = None);
    let records = Records::default();
    records.replace([]);
    let none = Answerer::new(records, Callers::new(None), "one".into());
    assert_eq!(
        ask(&none, &host(), "address.cloud66.local", 1)
            .metadata
            .response_code,
        ResponseCode::NXDomain
    );
    // web has no address in `bare`, api neither: NXDOMAIN there too.
    let web_only = ask(&bare, &host(), "address.cloud66.local", 1);
    assert_eq!(
        web_only.metadata.response_code,
        ResponseCode::NoError,
        "web still has its service address"
    );

    // The apex: its SOA in the answer section for SOA and ANY, in authority otherwise.
    for qtype in [6, 255] {
        let soa = ask(&a, &host(), "Cloud66.Local", qtype);
        assert_eq!(soa.metadata.response_code, ResponseCode::NoError);
        assert_eq!(soa.answers.len(), 1, "qtype {qtype}");
        assert_eq!(soa.answers[0].record_type(), RecordType::SOA);
        assert_eq!(soa.answers[0].name.to_ascii(), "cloud66.local.");
        assert!(soa.authorities.is_empty());
    }
    let a_at_apex = ask(&a, &host(), "cloud66.local", 1);
    assert!(a_at_apex.answers.is_empty());
    assert_eq!(a_at_apex.authorities[0].record_type(), RecordType::SOA);
    // A service's own name has no SOA: NODATA.
    let soa = ask(&a, &host(), "api.cloud66.local", 6);
    assert_eq!(soa.metadata.response_code, ResponseCode::NoError);
    assert!(soa.answers.is_empty());
}

#[test]
fn a_service_of_two_stacks_is_nodata_for_a_caller_of_neither() {
    let records = Records::default();
    let mut other = record("api", &[(1, vec![endpoint(41, "one")])]);
    other.stack = "blog".into();
    other.serving = Some(1);
    records.replace([record("api", &[(2, vec![endpoint(21, "one")])]), other]);
    let a = Answerer::new(records, Callers::new(None), "one".into());
    let either = ask(&a, &host(), "api.cloud66.local", 1);
    assert_eq!(either.metadata.response_code, ResponseCode::NoError);
    assert!(either.answers.is_empty());
    assert_eq!(
        ask(&a, &host(), "x.api.cloud66.local", 1)
            .metadata
            .response_code,
        ResponseCode::NXDomain
    );
}

/// A query for `name` with an OPT record: `payload` bytes, `version`, DO set, and `options`
/// (code, data) in its RDATA; `opts` OPT records of the same shape.
fn edns_query(
    name: &str,
    payload: u16,
    version: u8,
    options: &[(u16, &[u8])],
    opts: u16,
) -> Vec<u8> {
    let mut q = query(name, 1);
    q[11] = opts as u8;
    let mut rdata = Vec::new();
    for (code, data) in options {
        rdata.extend_from_slice(&code.to_be_bytes());
        rdata.extend_from_slice(&(data.len() as u16).to_be_bytes());
        rdata.extend_from_slice(data);
    }
    for _ in 0..opts {
        q.push(0);
        q.extend_from_slice(&41u16.to_be_bytes());
        q.extend_from_slice(&payload.to_be_bytes());
        q.extend_from_slice(&[0, version, 0x80, 0]);
        q.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
        q.extend_from_slice(&rdata);
    }
    q
}

fn answer_raw(a: &Answerer, query: &[u8], limit: usize) -> Message {
    let mut out = Vec::new();
    assert_eq!(a.answer(query, &host(), &mut out, limit), Outcome::Answered);
    assert!(out.len() <= limit.max(wire::EDNS_PAYLOAD as usize));
    Message::from_vec(&out).expect("a response hickory can read")
}

#[test]
fn edns_is_answered_with_ferrys_own_opt() {
    let a = answerer(|_| {});
    // An OPT with a cookie and an unknown option: both ignored, ferry's OPT back.
    let q = edns_query(
        "api.cloud66.local",
        4096,
        0,
        &[(10, &[1, 2, 3, 4, 5, 6, 7, 8]), (65001, b"x")],
        1,
    );
    let m = answer_raw(&a, &q, wire::UDP_LIMIT);
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert_eq!(addresses(&m).len(), 2);
    let edns = m.edns.as_ref().expect("an OPT in the response");
    assert_eq!(edns.max_payload(), 1232);
    assert_eq!(edns.version(), 0);
    assert!(edns.flags().dnssec_ok, "DO echoed");
    assert!(
        edns.options().as_ref().is_empty(),
        "no option of the client's echoed"
    );

    // Version 1: BADVERS, ferry's version in its OPT, no answer.
    let m = answer_raw(
        &a,
        &edns_query("api.cloud66.local", 4096, 1, &[], 1),
        wire::UDP_LIMIT,
    );
    // 16 is BADVERS in an OPT's context (hickory names the number BADSIG, TSIG's 16).
    assert_eq!(u16::from(m.metadata.response_code), 16, "BADVERS");
    assert!(m.answers.is_empty());
    assert_eq!(m.edns.as_ref().map(|e| e.version()), Some(0));

    // Two OPTs: FORMERR, the question echoed.
    let mut out = Vec::new();
    let q = edns_query("api.cloud66.local", 4096, 0, &[], 2);
    assert_eq!(
        a.answer(&q, &host(), &mut out, wire::UDP_LIMIT),
        Outcome::Answered
    );
    assert_eq!(out[3] & 0x0f, 1, "FORMERR");
    // An OPT cut short: FORMERR too.
    let q = edns_query("api.cloud66.local", 4096, 0, &[(10, b"12345678")], 1);
    assert_eq!(
        a.answer(&q[..q.len() - 3], &host(), &mut out, wire::UDP_LIMIT),
        Outcome::Answered
    );
    assert_eq!(out[3] & 0x0f, 1, "FORMERR");
    // No OPT asked, none given.
    assert!(ask(&a, &host(), "api.cloud66.local", 1).edns.is_none());
}

#[test]
fn a_large_answer_is_cut_at_whole_records_over_udp_and_whole_over_tcp() {
    // 40 containers: past what 512 bytes hold (12 header + 23 question + 16 per A).
    let many: Vec<Endpoint> = (1..=40).map(|i| endpoint(i, "one")).collect();
    let a = answerer(|r| {
        r.generations = [(2, many.clone())].into_iter().collect();
    });
    let udp = answer_raw(&a, &query("api.cloud66.local", 1), wire::UDP_LIMIT);
    assert!(udp.metadata.truncation, "TC set");
    assert_eq!(
        addresses(&udp).len(),
        (512 - 12 - 23) / 16,
        "as many whole records as fit"
    );
    // An EDNS client that takes 1232 bytes gets all 40, without TC.
    let q = edns_query("api.cloud66.local", 1232, 0, &[], 1);
    let edns = answer_raw(&a, &q, wire::UDP_LIMIT);
    assert!(!edns.metadata.truncation);
    assert_eq!(addresses(&edns).len(), 40);
    // A payload below 512 is taken as 512 (RFC 6891 §6.2.3), less ferry's own OPT.
    let q = edns_query("api.cloud66.local", 100, 0, &[], 1);
    let small = answer_raw(&a, &q, wire::UDP_LIMIT);
    assert!(small.metadata.truncation);
    assert_eq!(addresses(&small).len(), (512 - 11 - 12 - 23) / 16);
    // TCP: the whole set.
    let tcp = answer_raw(&a, &query("api.cloud66.local", 1), usize::from(u16::MAX));
    assert!(!tcp.metadata.truncation);
    assert_eq!(addresses(&tcp).len(), 40);
}
