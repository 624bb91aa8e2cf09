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
