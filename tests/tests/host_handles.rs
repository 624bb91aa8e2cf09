//! Host tier: the agent's DNS server and ingress as a program embedding them sees them
//! (the daemon, the benchmarks): each started in process reports the address it serves,
//! answers there, and stops when its handle is dropped.
//!
//! Both run in a server namespace of their own; the pinned maps the DNS server needs come
//! from a real agent attached to a test cgroup.

use std::{
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddrV4, TcpStream, UdpSocket},
    path::PathBuf,
    time::Duration,
};

use anyhow::{Context as _, Result};
use ferry_agent::{
    discovery::{Callers, Records},
    dns::{DnsOptions, DnsServer},
    ingress::{Certificates, Ingress, IngressOptions},
};
use ferry_api::{
    records::ServiceRecord,
    servicefile::{DnsBehaviour, LoadBalancing, Port},
};
use ferry_tests::{
    agent::{Agent, AgentPaths, Pins},
    cgroup::TestCgroup,
    cluster::{Saw, eventually},
    netns::Network,
    unique,
};

const WAIT: Duration = Duration::from_secs(10);

/// A query for `web.shop.cloud66.local`, type A, id 0x4a4a.
fn query() -> Vec<u8> {
    let mut q = vec![0x4a, 0x4a, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in ["web", "shop", "cloud66", "local"] {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    q
}

/// Whether `reply` answers [`query`]: its id, with the response bit set.
fn answers(reply: &[u8]) -> bool {
    reply.len() >= 12 && reply[..2] == [0x4a, 0x4a] && reply[2] & 0x80 != 0
}

/// What one query found.
#[derive(Debug, PartialEq, Eq)]
enum Asked {
    Answered,
    /// Nothing listens there.
    Refused,
    /// No reply within 2 s (a datagram that reached a socket nobody reads).
    Silent,
}

/// One query over UDP from this host.
fn ask_udp(at: SocketAddrV4) -> Result<Asked> {
    let socket = UdpSocket::bind((*at.ip(), 0))?;
    socket.set_read_timeout(Some(Duration::from_secs(2)))?;
    socket.connect(at)?;
    socket.send(&query())?;
    let mut reply = [0u8; 512];
    match socket.recv(&mut reply) {
        Ok(n) if answers(&reply[..n]) => Ok(Asked::Answered),
        Ok(n) => anyhow::bail!("{at} sent {n} bytes that answer nothing asked"),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => Ok(Asked::Refused),
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(Asked::Silent),
        Err(e) => Err(e).with_context(|| format!("asking {at} over UDP")),
    }
}

/// One query over TCP.
fn ask_tcp(at: SocketAddrV4) -> Result<Asked> {
    let mut stream = match TcpStream::connect_timeout(&at.into(), Duration::from_secs(2)) {
        Ok(stream) => stream,
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => return Ok(Asked::Refused),
        Err(e) => return Err(e).with_context(|| format!("connecting to {at}")),
    };
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    let q = query();
    stream.write_all(&(q.len() as u16).to_be_bytes())?;
    stream.write_all(&q)?;
    let mut length = [0u8; 2];
    stream.read_exact(&mut length)?;
    let mut reply = vec![0u8; usize::from(u16::from_be_bytes(length))];
    stream.read_exact(&mut reply)?;
    anyhow::ensure!(answers(&reply), "{at} answered something else over TCP");
    Ok(Asked::Answered)
}

/// Polls the blocking `ask` until it is refused: `what` names the wait.
async fn until_refused(what: &str, ask: impl Fn() -> Result<Asked>) -> Result<()> {
    eventually(WAIT, what, || async {
        let asked = ask()?;
        Ok(Saw(asked == Asked::Refused, asked))
    })
    .await
}

/// A server namespace with a real agent's pinned maps; `run` gets the server's address
/// and the maps' directory, inside the namespace.
fn in_a_server(subnet: u8, run: impl FnOnce(Ipv4Addr, PathBuf) -> Result<()> + Send) -> Result<()> {
    let tag = unique("fh");
    let mut network = Network::new(&format!("hb{tag}"), subnet)?;
    let server = network.server(&format!("hs{tag}"))?;
    let ip = server
        .addr()
        .context("servers on a network have an address")?;
    let cgroup = TestCgroup::top_level(&format!("ferry-test-{tag}"))?;
    let pins = Pins::new(&format!("ferry-test-{tag}"))?;
    let _agent = Agent::start(&AgentPaths {
        cgroup_root: cgroup.path().to_path_buf(),
        bpffs: pins.path().to_path_buf(),
        state_dir: std::env::temp_dir().join(format!("ferry-test-state-{tag}")),
        wg_interface: "ferry0".into(),
        extra: Vec::new(),
    })?;
    let map_dir = ferry_agent::dataplane::map_dir(pins.path());
    server.run(|| run(ip, map_dir))?
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?)
}

#[test]
fn the_dns_server_answers_where_it_says_and_stops_when_dropped() -> Result<()> {
    in_a_server(17, |ip, map_dir| {
        let listen = SocketAddrV4::new(ip, 5353);
        let records = Records::default();
        records.replace(Vec::new());
        let callers = Callers::new(Some(map_dir.clone()));
        callers.replace(Default::default());
        let options = DnsOptions {
            listen,
            upstreams: Vec::new(),
            map_dir,
            server: "a".into(),
            keeper: None,
        };
        runtime()?.block_on(async {
            let mut dns = DnsServer::start(options, records, callers);
            assert_eq!(dns.address(), listen);
            let answering = tokio::time::timeout(WAIT, dns.answering()).await;
            assert_eq!(answering.context("answering in time")??, listen);
            assert_eq!(ask_udp(listen)?, Asked::Answered, "over UDP while running");
            assert_eq!(ask_tcp(listen)?, Asked::Answered, "over TCP while running");
            // A connection open when the handle goes: it ends with the server, not at its
            // idle timeout.
            let mut open = TcpStream::connect(listen)?;
            open.set_read_timeout(Some(WAIT))?;
            drop(dns);
            until_refused("UDP refused once the handle is dropped", || ask_udp(listen)).await?;
            until_refused("TCP refused once the handle is dropped", || ask_tcp(listen)).await?;
            let mut rest = Vec::new();
            let read = open.read_to_end(&mut rest);
            assert!(
                matches!(read, Ok(0))
                    || read
                        .as_ref()
                        .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset),
                "the open connection was closed: {read:?}"
            );
            Ok(())
        })
    })
}

#[test]
fn the_ingress_listens_where_it_says_and_stops_when_dropped() -> Result<()> {
    in_a_server(18, |ip, _| {
        let published = 8181;
        let records = Records::default();
        records.replace([ServiceRecord {
            stack: "shop".into(),
            service: "web".into(),
            address: None,
            serving: Some(1),
            dns_behaviour: DnsBehaviour::Versioned,
            load_balancing: LoadBalancing::RoundRobin,
            ports: vec![80],
            published: vec![Port {
                container: 80,
                tcp: Some(published),
                ..Port::default()
            }],
            traffic_matches: Vec::new(),
            generations: Default::default(),
        }]);
        let at = SocketAddrV4::new(ip, published);
        let connects = || match TcpStream::connect_timeout(&at.into(), Duration::from_secs(2)) {
            Ok(_) => Ok(Asked::Answered),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => Ok(Asked::Refused),
            Err(e) => Err(e).with_context(|| format!("connecting to {at}")),
        };
        runtime()?.block_on(async {
            let ingress = Ingress::start(
                IngressOptions {
                    address: ip,
                    sockets: None,
                    kernel: None,
                },
                records,
                Certificates::default(),
            )?;
            assert_eq!(ingress.address(), ip);
            eventually(WAIT, "the published port accepting", || async {
                let asked = connects()?;
                Ok(Saw(asked == Asked::Answered, asked))
            })
            .await?;
            drop(ingress);
            until_refused(
                "the published port refused once the handle is dropped",
                connects,
            )
            .await
        })
    })
}
