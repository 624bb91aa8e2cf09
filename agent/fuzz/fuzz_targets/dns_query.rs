//! Any bytes as a DNS query from a container: a response that hickory can read, of at most
//! 512 bytes (1232 when the query carries an EDNS OPT record), a hand-over to the
//! forwarder, or nothing; never a panic or a hang.
#![no_main]

use std::{
    net::{Ipv4Addr, SocketAddrV4},
    sync::OnceLock,
};

use ferry_agent::{
    discovery::{Callers, LocalCaller, Records},
    dns::{Answerer, Outcome, Who, wire},
};
use ferry_api::{
    records::{Endpoint, ServiceRecord},
    servicefile::{DnsBehaviour, LoadBalancing},
};
use libfuzzer_sys::fuzz_target;

fn answerer() -> &'static (Answerer, Who) {
    static ANSWERER: OnceLock<(Answerer, Who)> = OnceLock::new();
    ANSWERER.get_or_init(|| {
        let endpoints = (1..=40)
            .map(|n| Endpoint {
                address: Ipv4Addr::new(10, 66, 1, n),
                server: "one".into(),
                container: format!("c{n}"),
            })
            .collect();
        let records = Records::default();
        records.replace([ServiceRecord {
            stack: "shop".into(),
            service: "api".into(),
            address: Some(Ipv4Addr::new(10, 96, 0, 1)),
            serving: Some(1),
            dns_behaviour: DnsBehaviour::Versioned,
            load_balancing: LoadBalancing::RoundRobin,
            ports: vec![4000, 4001],
            published: Vec::new(),
            traffic_matches: Vec::new(),
            generations: [(1, endpoints)].into_iter().collect(),
        }]);
        let callers = Callers::new(None);
        callers.register(
            7,
            LocalCaller {
                stack: "shop".into(),
                service: "web".into(),
                generation: 1,
            },
        );
        let answerer = Answerer::new(records, callers, "one".into());
        let who = answerer.who(Some(7), SocketAddrV4::new(Ipv4Addr::new(10, 66, 1, 99), 5353));
        (answerer, who)
    })
}

fuzz_target!(|data: &[u8]| {
    let (answerer, who) = answerer();
    let mut out = Vec::new();
    match answerer.answer(data, who, &mut out, wire::UDP_LIMIT) {
        Outcome::Answered => {
            let limit = if wire::additional_count(data) == 0 {
                wire::UDP_LIMIT
            } else {
                usize::from(wire::EDNS_PAYLOAD)
            };
            assert!(out.len() >= wire::HEADER && out.len() <= limit);
            hickory_proto::op::Message::from_vec(&out).expect("ferry's response parses");
        }
        // The forwarder reads it with hickory's parser first.
        Outcome::Forward => {
            let _ = hickory_proto::op::Message::from_vec(data);
        }
        Outcome::Ignore => {}
    }
});
