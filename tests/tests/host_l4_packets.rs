//! Host tier: the L4 tc programs packet by packet, through `BPF_PROG_TEST_RUN` (which
//! needs root, hence this tier): crafted packets go in, the verdict and the rewritten bytes
//! come out, and the checksums of what comes out are computed again from scratch. Covers
//! a new flow and its later packets, the reply turned back, ICMP errors about a flow turned
//! both ways ("fragmentation needed" to the backend, "port unreachable" to the client),
//! SNAT to a backend on another server, round-robin, UDP with and without a checksum, IP
//! options, truncated headers,
//! fragments, packets of no flow or no port, and a SYN flood from 140,000 sources against
//! the connection tracking map's 65,536 flows while an established flow keeps its backend.
//!
//! The reply program of the WireGuard link (`ferry_l4_reply_l3`) cannot run here: the test
//! run hands every tc program an Ethernet frame. It runs on the host tier's cross-server
//! flows (`host_l4`).

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddrV4},
};

use anyhow::{Context as _, Result, ensure};
use aya::{
    maps::{HashMap, Map, MapData},
    programs::{SchedClassifier, TestRun as _, TestRunOptions},
};
use ferry_agent::dataplane::{Dataplane, DataplaneConfig, L4Table, L4Target, Protocol, map_dir};
use ferry_ebpf_abi::{Flow, FlowKey, MAX_L4_FLOWS, SNAT_PORT_FIRST, map_names, program_names};
use ferry_tests::{agent::Pins, cgroup::TestCgroup, unique};

const TC_ACT_OK: u32 = 0;
const TC_ACT_REDIRECT: u32 = 7;
const TCP: u8 = 6;
const UDP: u8 = 17;
const SYN: u8 = 0x02;
const ACK: u8 = 0x10;

const SERVER: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
const CLIENT: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
const SNAT: Ipv4Addr = Ipv4Addr::new(10, 66, 1, 1);
const BRIDGE: u32 = 42;
const WIREGUARD: u32 = 43;

/// A packet to craft: Ethernet, IPv4 (with `options`), TCP or UDP, `payload`.
#[derive(Clone)]
struct Craft {
    src: SocketAddrV4,
    dst: SocketAddrV4,
    protocol: u8,
    tcp_flags: u8,
    options: Vec<u8>,
    payload: Vec<u8>,
    /// The IPv4 flags and fragment offset field.
    fragment: u16,
    /// UDP only: send without a checksum.
    no_udp_checksum: bool,
}

impl Craft {
    fn tcp(src: SocketAddrV4, dst: SocketAddrV4, flags: u8) -> Self {
        Self {
            src,
            dst,
            protocol: TCP,
            tcp_flags: flags,
            options: Vec::new(),
            payload: b"hello".to_vec(),
            fragment: 0x4000,
            no_udp_checksum: false,
        }
    }

    fn udp(src: SocketAddrV4, dst: SocketAddrV4) -> Self {
        Self {
            protocol: UDP,
            tcp_flags: 0,
            fragment: 0,
            ..Self::tcp(src, dst, 0)
        }
    }

    fn bytes(&self) -> Vec<u8> {
        let mut l4 = Vec::new();
        l4.extend(self.src.port().to_be_bytes());
        l4.extend(self.dst.port().to_be_bytes());
        if self.protocol == TCP {
            l4.extend(1u32.to_be_bytes()); // sequence
            l4.extend(0u32.to_be_bytes()); // acknowledgment
            l4.push(5 << 4);
            l4.push(self.tcp_flags);
            l4.extend(64240u16.to_be_bytes());
            l4.extend([0, 0, 0, 0]); // checksum, urgent pointer
        } else {
            l4.extend(((8 + self.payload.len()) as u16).to_be_bytes());
            l4.extend([0, 0]);
        }
        l4.extend(&self.payload);
        let checksum_at = if self.protocol == TCP { 16 } else { 6 };
        if !self.no_udp_checksum {
            let sum = l4_checksum(*self.src.ip(), *self.dst.ip(), self.protocol, &l4);
            let sum = if self.protocol == UDP && sum == 0 {
                0xffff
            } else {
                sum
            };
            l4[checksum_at..checksum_at + 2].copy_from_slice(&sum.to_be_bytes());
        }
        let ihl = 20 + self.options.len();
        let mut ip = vec![0x40 | (ihl / 4) as u8, 0];
        ip.extend(((ihl + l4.len()) as u16).to_be_bytes());
        ip.extend([0x12, 0x34]);
        ip.extend(self.fragment.to_be_bytes());
        ip.extend([64, self.protocol, 0, 0]);
        ip.extend(self.src.ip().octets());
        ip.extend(self.dst.ip().octets());
        ip.extend(&self.options);
        let sum = checksum(&ip, 0);
        ip[10..12].copy_from_slice(&sum.to_be_bytes());
        let mut frame = vec![2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2, 0x08, 0x00];
        frame.extend(ip);
        frame.extend(l4);
        frame
    }
}

/// The Internet checksum (RFC 1071) of `data`, starting from `sum`.
fn checksum(data: &[u8], mut sum: u32) -> u16 {
    for pair in data.chunks(2) {
        let word = u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]);
        sum += u32::from(word);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn l4_checksum(src: Ipv4Addr, dst: Ipv4Addr, protocol: u8, l4: &[u8]) -> u16 {
    let mut pseudo = Vec::new();
    pseudo.extend(src.octets());
    pseudo.extend(dst.octets());
    pseudo.extend([0, protocol]);
    pseudo.extend((l4.len() as u16).to_be_bytes());
    let partial = !checksum(&pseudo, 0);
    checksum(l4, u32::from(partial))
}

/// An ICMP error (`kind`, `code`) from `from` to `to` quoting the first 28 bytes of the
/// IP packet in `quoted` (an Ethernet frame).
fn icmp_error(from: Ipv4Addr, to: Ipv4Addr, kind: u8, code: u8, quoted: &[u8]) -> Vec<u8> {
    let mut icmp = vec![kind, code, 0, 0, 0, 0, 0x05, 0x78]; // next-hop MTU 1400
    icmp.extend(&quoted[14..14 + 28]);
    let sum = checksum(&icmp, 0);
    icmp[2..4].copy_from_slice(&sum.to_be_bytes());
    let mut ip = vec![0x45, 0];
    ip.extend(((20 + icmp.len()) as u16).to_be_bytes());
    ip.extend([0, 1, 0, 0, 64, 1, 0, 0]);
    ip.extend(from.octets());
    ip.extend(to.octets());
    let sum = checksum(&ip, 0);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    let mut frame = vec![2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2, 0x08, 0x00];
    frame.extend(ip);
    frame.extend(icmp);
    frame
}

/// An ICMP error as the program left it: outer source and destination, the quoted
/// packet's source and destination; every checksum (outer, ICMP, quoted IP) checked.
fn inspect_icmp(frame: &[u8]) -> Result<(Ipv4Addr, Ipv4Addr, SocketAddrV4, SocketAddrV4)> {
    let ip = &frame[14..];
    ensure!(
        checksum(&ip[..20], 0) == 0,
        "the outer IP checksum is wrong"
    );
    let icmp = &ip[20..];
    ensure!(checksum(icmp, 0) == 0, "the ICMP checksum is wrong");
    let inner = &icmp[8..];
    ensure!(
        checksum(&inner[..20], 0) == 0,
        "the quoted IP checksum is wrong"
    );
    let addr = |b: &[u8]| Ipv4Addr::new(b[0], b[1], b[2], b[3]);
    let port = |b: &[u8]| u16::from_be_bytes([b[0], b[1]]);
    Ok((
        addr(&ip[12..]),
        addr(&ip[16..]),
        SocketAddrV4::new(addr(&inner[12..]), port(&inner[20..])),
        SocketAddrV4::new(addr(&inner[16..]), port(&inner[22..])),
    ))
}

/// A frame as the program left it.
struct Seen {
    src: SocketAddrV4,
    dst: SocketAddrV4,
    /// The UDP checksum field (0: none).
    udp_checksum: u16,
}

/// Reads `frame`'s addresses and checks both its checksums from scratch.
fn inspect(frame: &[u8]) -> Result<Seen> {
    let ip = &frame[14..];
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    ensure!(
        checksum(&ip[..ihl], 0) == 0,
        "the IP header checksum is wrong"
    );
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    let l4 = &ip[ihl..total];
    let src = Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
    let dst = Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
    let udp_checksum = if ip[9] == UDP {
        u16::from_be_bytes([l4[6], l4[7]])
    } else {
        1
    };
    if udp_checksum != 0 {
        let mut pseudo = Vec::new();
        pseudo.extend(src.octets());
        pseudo.extend(dst.octets());
        pseudo.extend([0, ip[9]]);
        pseudo.extend((l4.len() as u16).to_be_bytes());
        ensure!(
            checksum(l4, u32::from(!checksum(&pseudo, 0))) == 0,
            "the {} checksum is wrong",
            if ip[9] == TCP { "TCP" } else { "UDP" }
        );
    }
    Ok(Seen {
        src: SocketAddrV4::new(src, u16::from_be_bytes([l4[0], l4[1]])),
        dst: SocketAddrV4::new(dst, u16::from_be_bytes([l4[2], l4[3]])),
        udp_checksum,
    })
}

struct Programs {
    ingress: SchedClassifier,
    reply: SchedClassifier,
}

impl Programs {
    /// Runs `program` on `frame`: the verdict and the frame as it came out.
    fn run(program: &SchedClassifier, frame: &[u8]) -> Result<(u32, Vec<u8>)> {
        let mut out = vec![0u8; frame.len() + 64];
        let result = program.test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            ..Default::default()
        })?;
        out.truncate(result.data_size_out as usize);
        Ok((result.return_value, out))
    }

    fn ingress(&self, craft: &Craft) -> Result<(u32, Vec<u8>)> {
        Self::run(&self.ingress, &craft.bytes())
    }

    /// Steered: redirected, with valid checksums.
    fn steered(&self, craft: &Craft) -> Result<Seen> {
        let (verdict, out) = self.ingress(craft)?;
        ensure!(
            verdict == TC_ACT_REDIRECT,
            "verdict {verdict}, not a redirect"
        );
        inspect(&out)
    }

    /// Left to the stack, byte for byte as it came.
    fn passed(&self, program: &SchedClassifier, frame: &[u8], what: &str) -> Result<()> {
        let (verdict, out) = Self::run(program, frame)?;
        ensure!(
            verdict == TC_ACT_OK,
            "{what}: verdict {verdict}, not TC_ACT_OK"
        );
        ensure!(out == frame, "{what}: the packet was changed");
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn l4_programs_rewrite_what_they_should_and_leave_the_rest() -> Result<()> {
    let tag = unique("");
    let cgroup = TestCgroup::top_level(&format!("ferry-test-l4p{tag}"))?;
    let pins = Pins::new(&format!("ferry-test-l4p{tag}"))?;
    let config = DataplaneConfig {
        cgroup_root: cgroup.path().to_path_buf(),
        bpffs: pins.path().to_path_buf(),
    };
    let _dataplane = Dataplane::start(&config)?;
    let program = |name: &str| -> Result<SchedClassifier> {
        let path = pins.path().join("programs").join(name);
        SchedClassifier::from_pin(&path).with_context(|| format!("{}", path.display()))
    };
    let programs = Programs {
        ingress: program(program_names::L4_INGRESS)?,
        reply: program(program_names::L4_REPLY)?,
    };
    let maps = map_dir(pins.path());
    let mut table = L4Table::open(&maps)?;
    let local = |last: u8, port: u16| L4Target {
        address: SocketAddrV4::new(Ipv4Addr::new(10, 66, 1, last), port),
        ifindex: BRIDGE,
        remote: false,
    };
    let backends = [local(5, 7000), local(6, 7000), local(7, 7000)];
    table.set(Protocol::Tcp, 7000, SNAT, &backends)?;
    table.set(Protocol::Udp, 7001, SNAT, &[local(5, 7001)])?;
    let remote = L4Target {
        address: "10.66.2.5:9000".parse()?,
        ifindex: WIREGUARD,
        remote: true,
    };
    table.set(Protocol::Tcp, 7002, SNAT, &[remote])?;
    table.set(Protocol::Tcp, 7003, SNAT, &[])?;

    let client = |port: u16| SocketAddrV4::new(CLIENT, port);
    let service = |port: u16| SocketAddrV4::new(SERVER, port);

    // A new flow: the destination becomes a backend, the source stays, checksums hold.
    let first = programs.steered(&Craft::tcp(client(40000), service(7000), SYN))?;
    ensure!(
        first.src == client(40000),
        "the source changed: {}",
        first.src
    );
    ensure!(
        backends.iter().any(|b| b.address == first.dst),
        "steered to {}",
        first.dst
    );
    // Its later segments go the same way.
    for _ in 0..5 {
        let later = programs.steered(&Craft::tcp(client(40000), service(7000), ACK))?;
        ensure!(
            later.dst == first.dst,
            "a later segment went to {}",
            later.dst
        );
    }
    // The backend's reply leaves from the address and port the client used.
    let reply = Craft::tcp(first.dst, client(40000), SYN | ACK).bytes();
    let (verdict, out) = Programs::run(&programs.reply, &reply)?;
    ensure!(verdict == TC_ACT_REDIRECT, "reply verdict {verdict}");
    let back = inspect(&out)?;
    ensure!(
        back.src == service(7000) && back.dst == client(40000),
        "the reply went {} -> {}",
        back.src,
        back.dst
    );

    // ICMP errors about the flow, turned its way: "fragmentation needed" from a router on
    // the client's path, about a packet sent from the published port, reaches the backend
    // as if about the packet it sent.
    let router = Ipv4Addr::new(203, 0, 113, 1);
    let sent = Craft::tcp(service(7000), client(40000), ACK).bytes();
    let error = icmp_error(router, SERVER, 3, 4, &sent);
    let (verdict, out) = Programs::run(&programs.ingress, &error)?;
    ensure!(
        verdict == TC_ACT_REDIRECT,
        "fragmentation needed: verdict {verdict}"
    );
    let (from, to, quoted_src, quoted_dst) = inspect_icmp(&out)?;
    ensure!(
        from == router
            && to == *first.dst.ip()
            && quoted_src == first.dst
            && quoted_dst == client(40000),
        "fragmentation needed became {from} -> {to} quoting {quoted_src} -> {quoted_dst}"
    );
    // A backend's "port unreachable" about a client's datagram reaches the client from
    // the published address and port.
    let udp_first = programs.steered(&Craft::udp(client(43100), service(7001)))?;
    let datagram = Craft::udp(client(43100), udp_first.dst).bytes();
    let error = icmp_error(*udp_first.dst.ip(), CLIENT, 3, 3, &datagram);
    let (verdict, out) = Programs::run(&programs.reply, &error)?;
    ensure!(
        verdict == TC_ACT_REDIRECT,
        "port unreachable: verdict {verdict}"
    );
    let (from, to, quoted_src, quoted_dst) = inspect_icmp(&out)?;
    ensure!(
        from == SERVER
            && to == CLIENT
            && quoted_src == client(43100)
            && quoted_dst == service(7001),
        "port unreachable became {from} -> {to} quoting {quoted_src} -> {quoted_dst}"
    );
    // An error about no tracked flow, and an echo request, are left alone.
    let stranger = Craft::tcp(service(7000), client(49999), ACK).bytes();
    let error = icmp_error(router, SERVER, 3, 4, &stranger);
    programs.passed(
        &programs.ingress,
        &error,
        "an ICMP error about no tracked flow",
    )?;
    let echo = icmp_error(router, SERVER, 8, 0, &sent);
    programs.passed(&programs.ingress, &echo, "an ICMP echo request")?;

    // The client sends its SYN again (no answer came): the next backend takes it, and the
    // first backend's late answer no longer reaches the client.
    let again = programs.steered(&Craft::tcp(client(40500), service(7000), SYN))?;
    let retry = programs.steered(&Craft::tcp(client(40500), service(7000), SYN))?;
    ensure!(
        retry.dst != again.dst,
        "a SYN sent again stayed on {}",
        again.dst
    );
    let late = Craft::tcp(again.dst, client(40500), SYN | ACK).bytes();
    programs.passed(&programs.reply, &late, "the first backend's late answer")?;
    let answer = Craft::tcp(retry.dst, client(40500), SYN | ACK).bytes();
    let (verdict, _) = Programs::run(&programs.reply, &answer)?;
    ensure!(
        verdict == TC_ACT_REDIRECT,
        "the second backend's answer: verdict {verdict}"
    );

    // Round-robin: 30 new flows, 10 per backend.
    let mut counts = BTreeMap::<SocketAddrV4, usize>::new();
    for port in 41000..41030 {
        let seen = programs.steered(&Craft::tcp(client(port), service(7000), SYN))?;
        *counts.entry(seen.dst).or_default() += 1;
    }
    ensure!(
        counts.len() == 3 && counts.values().all(|n| *n == 10),
        "uneven: {counts:?}"
    );

    // A backend on another server: SNAT to this server's address and a port of the range.
    let snatted = programs.steered(&Craft::tcp(client(42000), service(7002), SYN))?;
    ensure!(
        *snatted.src.ip() == SNAT && snatted.src.port() >= SNAT_PORT_FIRST,
        "SNAT gave {}",
        snatted.src
    );
    ensure!(snatted.dst == remote.address, "steered to {}", snatted.dst);

    // UDP, with a checksum and without one (which stays without).
    let udp = programs.steered(&Craft::udp(client(43000), service(7001)))?;
    ensure!(udp.dst == local(5, 7001).address && udp.udp_checksum != 0);
    let bare = Craft {
        no_udp_checksum: true,
        ..Craft::udp(client(43001), service(7001))
    };
    let bare = programs.steered(&bare)?;
    ensure!(
        bare.udp_checksum == 0,
        "a UDP datagram without checksum got one"
    );

    // IP options: the TCP header is found after them.
    let options = Craft {
        options: vec![1, 1, 1, 0],
        ..Craft::tcp(client(44000), service(7000), SYN)
    };
    let seen = programs.steered(&options)?;
    ensure!(
        seen.src == client(44000) && backends.iter().any(|b| b.address == seen.dst),
        "with options: {} -> {}",
        seen.src,
        seen.dst
    );

    // What the programs leave to the stack, unchanged.
    let syn = Craft::tcp(client(45000), service(7000), SYN).bytes();
    programs.passed(
        &programs.ingress,
        &syn[..14 + 20],
        "a TCP packet with no TCP header",
    )?;
    programs.passed(
        &programs.ingress,
        &syn[..14 + 20 + 10],
        "a TCP header cut short",
    )?;
    let mut short_ihl = syn.clone();
    short_ihl[14] = 0x44;
    programs.passed(&programs.ingress, &short_ihl, "an IHL of 4")?;
    let mut version6 = syn.clone();
    version6[14] = 0x65;
    programs.passed(
        &programs.ingress,
        &version6,
        "IP version 6 in an IPv4 frame",
    )?;
    let more = Craft {
        fragment: 0x2000,
        ..Craft::udp(client(46000), service(7001))
    };
    programs.passed(&programs.ingress, &more.bytes(), "a first fragment")?;
    let later = Craft {
        fragment: 185,
        ..Craft::udp(client(46000), service(7001))
    };
    programs.passed(&programs.ingress, &later.bytes(), "a later fragment")?;
    let stray = Craft::tcp(client(47000), service(7000), ACK).bytes();
    programs.passed(&programs.ingress, &stray, "a segment of no tracked flow")?;
    let unpublished = Craft::tcp(client(47001), service(8000), SYN).bytes();
    programs.passed(
        &programs.ingress,
        &unpublished,
        "a SYN to an unpublished port",
    )?;
    let empty = Craft::tcp(client(47002), service(7003), SYN).bytes();
    programs.passed(&programs.ingress, &empty, "a SYN to a port with no backend")?;
    let unknown_reply = Craft::tcp(local(5, 7000).address, client(47003), ACK).bytes();
    programs.passed(
        &programs.reply,
        &unknown_reply,
        "a container's packet of no flow",
    )?;

    // A SYN flood from 140,000 sources, more than the map's 65,536 flows: the LRU evicts,
    // every SYN is still steered, and the established flow, busy meanwhile, keeps its
    // backend.
    let flood_sources = 140_000u32;
    for i in 0..flood_sources {
        let source = SocketAddrV4::new(
            Ipv4Addr::new(198, 18, (i / 50_000) as u8, 1),
            1024 + (i % 50_000) as u16,
        );
        let (verdict, _) = programs.ingress(&Craft::tcp(source, service(7000), SYN))?;
        ensure!(
            verdict == TC_ACT_REDIRECT,
            "flood SYN {i}: verdict {verdict}"
        );
        if i % 1000 == 0 {
            let busy = programs.steered(&Craft::tcp(client(40000), service(7000), ACK))?;
            ensure!(
                busy.dst == first.dst,
                "the established flow moved to {} during the flood",
                busy.dst
            );
        }
    }
    let flows: HashMap<MapData, FlowKey, Flow> = HashMap::try_from(Map::LruHashMap(
        MapData::from_pin(maps.join(map_names::L4_FLOWS))?,
    ))?;
    let entries = flows.keys().count();
    ensure!(
        entries <= MAX_L4_FLOWS as usize && entries > MAX_L4_FLOWS as usize / 2,
        "{entries} entries after the flood"
    );
    let after = programs.steered(&Craft::tcp(client(48000), service(7000), SYN))?;
    ensure!(backends.iter().any(|b| b.address == after.dst));
    let traffic = table.traffic()?;
    let steered: u64 = traffic
        .iter()
        .filter(|((protocol, port, _), _)| *protocol == Protocol::Tcp && *port == 7000)
        .map(|(_, t)| t.flows)
        .sum();
    ensure!(
        steered >= u64::from(flood_sources) + 32,
        "the counters saw {steered} flows on tcp 7000"
    );
    Ok(())
}
