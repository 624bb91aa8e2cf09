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
    let mut q = id.to_be_bytes().to_vec();
    q.extend_from_slice(&[1, 0, 0, 1, 0, 0, 0, 0, 0, 0]);
    q.extend_from_slice(&wire::wire_name("partner.example"));
    q.extend_from_slice(&[0, 1, 0, 1]);
    q
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
    tokio::time::sleep(Duration::from_millis(1100)).await;
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
}
