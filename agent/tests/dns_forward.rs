//! The forwarder against a real upstream on loopback: the answer comes back with the
//! client's id, a second ask within the TTL is served from the cache (the upstream sees
//! one query), the cached TTL counts down, and an upstream that never answers gives
//! SERVFAIL, not a hang.

use std::{
    net::{Ipv4Addr, SocketAddr, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use ferry_agent::dns::{Forwarder, wire};
use hickory_proto::{
    op::{Message, MessageType, OpCode, ResponseCode},
    rr::{RData, Record, rdata::A},
};

/// An upstream that answers every query for any name with 192.0.2.7, TTL `ttl`, and counts
/// the queries it saw.
fn upstream(ttl: u32) -> (SocketAddr, Arc<AtomicUsize>) {
    let socket = UdpSocket::bind("127.0.0.1:0").expect("bind the upstream");
    let address = socket.local_addr().expect("its address");
    let seen = Arc::new(AtomicUsize::new(0));
    let counter = seen.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 512];
        while let Ok((n, peer)) = socket.recv_from(&mut buf) {
            counter.fetch_add(1, Ordering::SeqCst);
            let Ok(query) = Message::from_vec(&buf[..n]) else {
                continue;
            };
            let mut response =
                Message::new(query.metadata.id, MessageType::Response, OpCode::Query);
            response.queries = query.queries.clone();
            let name = query.queries[0].name.clone();
            response.add_answer(Record::from_rdata(
                name,
                ttl,
                RData::A(A(Ipv4Addr::new(192, 0, 2, 7))),
            ));
            let _ = socket.send_to(&response.to_vec().expect("encode"), peer);
        }
    });
    (address, seen)
}

fn query(id: u16) -> Vec<u8> {
    query_for(id, "partner.example")
}

#[tokio::test]
async fn answers_are_cached_for_their_ttl_and_keep_the_clients_id() {
    let (address, seen) = upstream(30);
    let forwarder = Forwarder::new(vec![address]);
    let first = forwarder
        .forward(&query(0x1111), wire::UDP_LIMIT)
        .await
        .expect("an answer");
    let first = Message::from_vec(&first).expect("parses");
    assert_eq!(first.metadata.id, 0x1111);
    assert_eq!(
        first.answers[0].data,
        RData::A(A(Ipv4Addr::new(192, 0, 2, 7)))
    );
    // A second passes on a paused clock; real time resumes for the next exchange.
    tokio::time::pause();
    tokio::time::advance(Duration::from_millis(1100)).await;
    tokio::time::resume();
    let second = forwarder
        .forward(&query(0x2222), wire::UDP_LIMIT)
        .await
        .expect("an answer");
    let second = Message::from_vec(&second).expect("parses");
    assert_eq!(second.metadata.id, 0x2222);
    assert_eq!(
        seen.load(Ordering::SeqCst),
        1,
        "the second came from the cache"
    );
    assert!(second.answers[0].ttl < 30, "the cached TTL counts down");
}

#[tokio::test]
async fn an_answer_with_ttl_zero_is_not_cached() {
    let (address, seen) = upstream(0);
    let forwarder = Forwarder::new(vec![address]);
    for id in [1, 2] {
        forwarder
            .forward(&query(id), wire::UDP_LIMIT)
            .await
            .expect("an answer");
    }
    assert_eq!(seen.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_silent_upstream_gives_servfail() {
    // Bound but never read: queries to it go unanswered.
    let silent = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let forwarder = Forwarder::new(vec![silent.local_addr().expect("address")]);
    let answer = forwarder
        .forward(&query(7), wire::UDP_LIMIT)
        .await
        .expect("an answer");
    let answer = Message::from_vec(&answer).expect("parses");
    assert_eq!(answer.metadata.id, 7);
    assert_eq!(answer.metadata.response_code, ResponseCode::ServFail);
    assert_eq!(answer.queries.len(), 1, "the SERVFAIL echoes the question");
    assert_eq!(answer.queries[0].name.to_ascii(), "partner.example.");
}

#[tokio::test]
async fn a_query_that_does_not_parse_gets_formerr_with_its_question() {
    let (address, seen) = upstream(30);
    let forwarder = Forwarder::new(vec![address]);
    // One question, and a header that promises an answer record the packet does not hold.
    let mut broken = query(9);
    broken[7] = 1;
    let answer = forwarder
        .forward(&broken, wire::UDP_LIMIT)
        .await
        .expect("an answer");
    let answer = Message::from_vec(&answer).expect("parses");
    assert_eq!(answer.metadata.response_code, ResponseCode::FormErr);
    assert_eq!(answer.queries.len(), 1, "the FORMERR echoes the question");
    assert_eq!(answer.queries[0].name.to_ascii(), "partner.example.");
    assert_eq!(seen.load(Ordering::SeqCst), 0, "nothing was forwarded");
}

/// ferry's listener in miniature: every datagram on `socket` answered by `forwarder`, as
/// the agent's DNS server does for names outside cloud66.local. Counts what arrives.
fn serve(forwarder: Arc<Forwarder>, socket: tokio::net::UdpSocket) -> Arc<AtomicUsize> {
    let arrived = Arc::new(AtomicUsize::new(0));
    let counter = arrived.clone();
    tokio::spawn(async move {
        let socket = Arc::new(socket);
        let mut buf = [0u8; 512];
        while let Ok((n, peer)) = socket.recv_from(&mut buf).await {
            counter.fetch_add(1, Ordering::SeqCst);
            let (forwarder, socket, query) = (forwarder.clone(), socket.clone(), buf[..n].to_vec());
            tokio::spawn(async move {
                if let Some(answer) = forwarder.forward(&query, wire::UDP_LIMIT).await {
                    let _ = socket.send_to(&answer, peer).await;
                }
            });
        }
    });
    arrived
}

/// A free UDP port on loopback.
fn free_port() -> u16 {
    let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
    socket.local_addr().expect("address").port()
}

#[tokio::test]
async fn an_upstream_that_forwards_back_to_the_listener_is_found_and_left_out() {
    let listener = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("bind the listener");
    let listen = listener.local_addr().expect("its address");
    // A real dnsmasq whose only upstream is ferry's listener: the loop an operator makes by
    // pointing the server's resolver at ferry while ferry forwards to that resolver.
    let port = free_port();
    let mut dnsmasq = std::process::Command::new("dnsmasq")
        .args([
            "--keep-in-foreground",
            "--conf-file=/dev/null",
            "--no-resolv",
            "--no-hosts",
            "--bind-interfaces",
            "--listen-address=127.0.0.1",
            "--pid-file=",
            &format!("--port={port}"),
            &format!("--server=127.0.0.1#{}", listen.port()),
        ])
        .spawn()
        .expect("dnsmasq (from the distribution's dnsmasq-base; `./x setup` installs it)");
    let looping: SocketAddr = (Ipv4Addr::LOCALHOST, port).into();
    let (good, seen) = upstream(30);
    let forwarder = Arc::new(Forwarder::new(vec![looping, good]));
    let arrived = serve(forwarder.clone(), listener);
    // dnsmasq answers once it has bound its port; until then a probe finds nothing.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let found = loop {
        let found = forwarder.probe_loops().await;
        if !found.is_empty() || std::time::Instant::now() > deadline {
            break found;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        found,
        vec![looping],
        "the looping upstream is named, the other is not"
    );
    let before = (seen.load(Ordering::SeqCst), arrived.load(Ordering::SeqCst));
    let answer = forwarder
        .forward(&query(0x4242), wire::UDP_LIMIT)
        .await
        .expect("an answer");
    let answer = Message::from_vec(&answer).expect("parses");
    assert_eq!(answer.metadata.response_code, ResponseCode::NoError);
    assert_eq!(
        answer.answers[0].data,
        RData::A(A(Ipv4Addr::new(192, 0, 2, 7))),
        "answered by the upstream that does not loop"
    );
    assert_eq!(seen.load(Ordering::SeqCst), before.0 + 1);
    assert_eq!(
        arrived.load(Ordering::SeqCst),
        before.1,
        "the looping upstream was not asked, so nothing came back to the listener"
    );
    let _ = dnsmasq.kill();
    let _ = dnsmasq.wait();
}

/// A query for `name` carrying an OPT: payload `payload`, `version`, a cookie option.
fn edns_query(id: u16, name: &str, payload: u16, version: u8) -> Vec<u8> {
    let mut q = id.to_be_bytes().to_vec();
    q.extend_from_slice(&[1, 0, 0, 1, 0, 0, 0, 0, 0, 1]);
    q.extend_from_slice(&wire::wire_name(name));
    q.extend_from_slice(&[0, 1, 0, 1]);
    q.push(0);
    q.extend_from_slice(&41u16.to_be_bytes());
    q.extend_from_slice(&payload.to_be_bytes());
    q.extend_from_slice(&[0, version, 0, 0]);
    // One option: a client cookie (code 10), 8 bytes.
    q.extend_from_slice(&[0, 12, 0, 10, 0, 8, 1, 2, 3, 4, 5, 6, 7, 8]);
    q
}

#[tokio::test]
async fn a_clients_opt_is_replaced_by_ferrys_both_ways() {
    // An upstream that answers 60 A records (about 1 kB: more than 512, less than 1232)
    // and keeps the OPT of every query it saw.
    let socket = UdpSocket::bind("127.0.0.1:0").expect("bind the upstream");
    let address = socket.local_addr().expect("its address");
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let saw = seen.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok((n, peer)) = socket.recv_from(&mut buf) {
            let Ok(query) = Message::from_vec(&buf[..n]) else {
                continue;
            };
            saw.lock().expect("lock").push(query.edns.clone());
            let mut response =
                Message::new(query.metadata.id, MessageType::Response, OpCode::Query);
            response.queries = query.queries.clone();
            for i in 0..60 {
                response.add_answer(Record::from_rdata(
                    query.queries[0].name.clone(),
                    30,
                    RData::A(A(Ipv4Addr::new(192, 0, 2, i))),
                ));
            }
            response.edns = query.edns.clone();
            let _ = socket.send_to(&response.to_vec().expect("encode"), peer);
        }
    });
    let forwarder = Forwarder::new(vec![address]);
    let reply = forwarder
        .forward(
            &edns_query(0x4444, "many.example", 4096, 0),
            wire::UDP_LIMIT,
        )
        .await
        .expect("an answer");
    let reply = Message::from_vec(&reply).expect("parses");
    assert_eq!(reply.answers.len(), 60, "1232 bytes hold them all");
    assert!(!reply.metadata.truncation);
    let edns = reply.edns.as_ref().expect("ferry's OPT back");
    assert_eq!(edns.max_payload(), 1232);
    assert!(edns.options().as_ref().is_empty());
    {
        let seen = seen.lock().expect("lock");
        let sent = seen[0].as_ref().expect("the upstream got an OPT");
        assert_eq!(
            sent.max_payload(),
            1232,
            "ferry's payload, not the client's 4096"
        );
        assert!(
            sent.options().as_ref().is_empty(),
            "the client's cookie stayed here"
        );
    }
    // Without an OPT: no OPT back, and 512 bytes at most (TC set).
    let plain = forwarder
        .forward(&query_for(0x5555, "many.example"), wire::UDP_LIMIT)
        .await
        .expect("an answer");
    assert!(plain.len() <= 512);
    let plain = Message::from_vec(&plain).expect("parses");
    assert!(plain.metadata.truncation);
    assert!(plain.edns.is_none());
    // Version 1: BADVERS (16) with ferry's OPT, nothing sent upstream.
    let before = seen.lock().expect("lock").len();
    let bad = forwarder
        .forward(
            &edns_query(0x6666, "other.example", 4096, 1),
            wire::UDP_LIMIT,
        )
        .await
        .expect("an answer");
    let bad = Message::from_vec(&bad).expect("parses");
    assert_eq!(u16::from(bad.metadata.response_code), 16);
    assert_eq!(bad.edns.as_ref().map(|e| e.version()), Some(0));
    assert_eq!(seen.lock().expect("lock").len(), before);
    // Two OPTs: FORMERR.
    let mut two = edns_query(0x7777, "other.example", 4096, 0);
    let opt = two[two.len() - 25..].to_vec();
    two.extend_from_slice(&opt);
    two[11] = 2;
    let formerr = forwarder
        .forward(&two, wire::UDP_LIMIT)
        .await
        .expect("an answer");
    assert_eq!(formerr[3] & 0x0f, 1, "FORMERR");
}

/// An A query for `name` with id `id`, without an OPT.
fn query_for(id: u16, name: &str) -> Vec<u8> {
    let mut q = id.to_be_bytes().to_vec();
    q.extend_from_slice(&[1, 0, 0, 1, 0, 0, 0, 0, 0, 0]);
    q.extend_from_slice(&wire::wire_name(name));
    q.extend_from_slice(&[0, 1, 0, 1]);
    q
}
