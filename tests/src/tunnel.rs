//! Two servers joined by WireGuard, as the agent's mesh verbs build them: each a network
//! namespace with its own private key, a veth pair between them as their LAN, each one's
//! container subnet reachable from the other only through the tunnel.
//!
//! The same scenario runs on kernel WireGuard (VM tier) and on wireguard-go (host tier).

use std::{
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket},
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use anyhow::{Context as _, Result, anyhow, bail, ensure};
use ferry_agent::mesh::{
    interface::{self, InterfaceConfig},
    link::Netlink,
    wireguard::{self, Backend, Key, Peer},
};

use crate::{
    netns::{Server, ip},
    sniff,
};

const WG_PORT: u16 = 51820;
const LAN_IF: &str = "lan";
const MARKER: &[u8] = b"ferry-plaintext-marker-7f3a";

/// One server of the pair.
struct Side {
    server: Server,
    wg_name: String,
    lan_addr: Ipv4Addr,
    subnet: Ipv4Addr,
    container: Ipv4Addr,
    key: Key,
}

/// Two servers and the backend their tunnel runs on.
pub struct Tunnel {
    a: Side,
    b: Side,
    backend: Backend,
    /// The tunnel's MTU: the LAN's less WireGuard's overhead, as the agent sets it.
    tunnel_mtu: u32,
}

/// What a bulk transfer through the tunnel saw.
#[derive(Debug)]
pub struct BulkReport {
    /// How long the transfer took.
    pub elapsed: Duration,
    /// Frames on b's LAN side meanwhile.
    pub frames: usize,
    /// Of those, IPv4 fragments: the tunnel's packets did not fit the LAN.
    pub fragments: usize,
    /// UDP datagrams dropped meanwhile on either server for a full socket receive buffer:
    /// the tunnel's packets that its WireGuard did not read in time (wireguard-go reads
    /// its socket; the kernel module has none).
    pub socket_drops: u64,
}

/// What the re-apply check saw.
#[derive(Debug)]
pub struct ReapplyReport {
    /// Datagrams a sent to b through the tunnel while the passes ran.
    pub sent: u64,
    /// Of those, the ones b received.
    pub received: u64,
    /// Passes of the agent's apply over both sides meanwhile, each with nothing to change.
    pub passes: u32,
}

/// What the encrypted-traffic check saw.
#[derive(Debug)]
pub struct TrafficReport {
    /// Frames captured on the LAN.
    pub frames: usize,
    /// Of those, WireGuard frames.
    pub wireguard_frames: usize,
    /// Bytes srv-a's peer counters recorded as sent.
    pub tx_bytes: u64,
}

impl Tunnel {
    /// Creates both namespaces and the veth LAN between them. `tag` keeps names (and
    /// wireguard-go's sockets, which are not per namespace) apart from other tests.
    pub fn new(tag: &str, backend: Backend) -> Result<Self> {
        Self::with_lan_mtu(tag, backend, 1500)
    }

    /// [`new`](Self::new), the LAN's links having MTU `lan_mtu` bytes; the tunnel gets the
    /// agent's MTU for it (`mesh::mtu::tunnel_mtu`).
    pub fn with_lan_mtu(tag: &str, backend: Backend, lan_mtu: u32) -> Result<Self> {
        let side = |name: &str, host: u8| -> Result<Side> {
            Ok(Side {
                server: Server::create(&format!("{name}{tag}"), None)?,
                wg_name: format!("wg{name}{tag}"),
                lan_addr: Ipv4Addr::new(192, 168, 77, host),
                subnet: Ipv4Addr::new(10, 66, host, 0),
                container: Ipv4Addr::new(10, 66, host, 1),
                key: Key::generate_private(),
            })
        };
        let (a, b) = (side("a", 1)?, side("b", 2)?);
        ip(&[
            "-n",
            a.server.name(),
            "link",
            "add",
            LAN_IF,
            "type",
            "veth",
            "peer",
            "name",
            LAN_IF,
            "netns",
            b.server.name(),
        ])?;
        for side in [&a, &b] {
            let n = side.server.name();
            ip(&[
                "-n",
                n,
                "addr",
                "add",
                &format!("{}/24", side.lan_addr),
                "dev",
                LAN_IF,
            ])?;
            ip(&["-n", n, "link", "set", LAN_IF, "mtu", &lan_mtu.to_string()])?;
            ip(&["-n", n, "link", "set", LAN_IF, "up"])?;
        }
        Ok(Self {
            a,
            b,
            backend,
            tunnel_mtu: ferry_agent::mesh::mtu::tunnel_mtu(lan_mtu, false),
        })
    }

    /// Brings up both interfaces with each other as peers, twice on one side, since the
    /// verbs must be idempotent.
    pub fn configure(&self) -> Result<()> {
        self.configure_side(&self.a, &self.b, true)?;
        self.configure_side(&self.b, &self.a, true)?;
        self.configure_side(&self.a, &self.b, true)
    }

    /// Sends a marker from a's container address to b's and back; captures b's LAN side
    /// meanwhile. Fails unless the echo is intact, WireGuard frames crossed, no frame
    /// carried the marker in the clear, and the peer counters moved.
    pub fn check_encrypted(&self) -> Result<TrafficReport> {
        let (a, b) = (&self.a, &self.b);
        let stop = AtomicBool::new(false);
        let (capture, reply) = std::thread::scope(|scope| -> Result<_> {
            // Bound before any traffic, so the capture cannot miss the start.
            let socket = b.server.run(|| sniff::PacketSocket::bind(LAN_IF))??;
            let stop = &stop;
            let sniffer = scope.spawn(move || sniff::capture(&socket, WG_PORT, MARKER, stop));
            let listener = b.server.run(|| TcpListener::bind((b.container, 7000)))??;
            let echo = scope.spawn(move || -> Result<()> {
                let (mut stream, _) = listener.accept()?;
                let mut buf = vec![0; MARKER.len()];
                stream.read_exact(&mut buf)?;
                stream.write_all(&buf)?;
                Ok(())
            });
            let reply = a.server.run(|| -> Result<Vec<u8>> {
                let target = SocketAddr::V4(SocketAddrV4::new(b.container, 7000));
                let mut stream = TcpStream::connect_timeout(&target, Duration::from_secs(10))
                    .context("connecting through the tunnel")?;
                stream.set_read_timeout(Some(Duration::from_secs(10)))?;
                stream.write_all(MARKER)?;
                let mut buf = vec![0; MARKER.len()];
                stream.read_exact(&mut buf)?;
                Ok(buf)
            })??;
            echo.join().map_err(|_| anyhow!("echo thread panicked"))??;
            // Let the last frames of the exchange reach the sniffer.
            std::thread::sleep(Duration::from_millis(300));
            stop.store(true, Ordering::Relaxed);
            let capture = sniffer.join().map_err(|_| anyhow!("sniffer panicked"))?;
            Ok((capture, reply))
        })?;
        ensure!(reply == MARKER, "the echo came back altered: {reply:?}");
        ensure!(
            capture.udp_port_frames > 0,
            "no WireGuard frame crossed the LAN: {capture:?}"
        );
        ensure!(
            capture.marker_frames == 0,
            "plaintext crossed the LAN: {capture:?}"
        );
        let stats = a
            .server
            .run(|| wireguard::peer_stats(&a.wg_name, self.backend))??;
        let peer = stats.first().context("srv-a's interface has no peer")?;
        ensure!(
            peer.last_handshake.is_some(),
            "no handshake recorded: {peer:?}"
        );
        ensure!(
            peer.tx_bytes > 0 && peer.rx_bytes > 0,
            "no bytes counted: {peer:?}"
        );
        Ok(TrafficReport {
            frames: capture.frames,
            wireguard_frames: capture.udp_port_frames,
            tx_bytes: peer.tx_bytes,
        })
    }

    /// Sends `count` numbered datagrams from a's container address to b's, one every 200
    /// µs, while the agent's apply runs again and again on both sides with the
    /// configuration they already have (as the agent's sync does every 10 s, and on every
    /// change of any server). Such a pass has nothing to change, so it must lose nothing.
    pub fn check_reapply_loses_nothing(&self, count: u64) -> Result<ReapplyReport> {
        const WARM: u64 = u64::MAX - 1;
        const END: u64 = u64::MAX;
        let (a, b) = (&self.a, &self.b);
        let target = SocketAddr::V4(SocketAddrV4::new(b.container, 7003));
        let inbox = b.server.run(|| UdpSocket::bind(target))??;
        inbox.set_read_timeout(Some(Duration::from_secs(10)))?;
        let outbox = a
            .server
            .run(|| UdpSocket::bind(SocketAddrV4::new(a.container, 0)))??;
        let (warm, sent, done) = (
            AtomicBool::new(false),
            AtomicBool::new(false),
            AtomicBool::new(false),
        );
        std::thread::scope(|scope| -> Result<ReapplyReport> {
            let (warm, sent, done, outbox) = (&warm, &sent, &done, &outbox);
            let receiver = scope.spawn(move || -> Result<u64> {
                let mut seen = vec![false; usize::try_from(count)?];
                let mut buf = [0u8; 8];
                loop {
                    let n = inbox
                        .recv(&mut buf)
                        .context("nothing arrived through the tunnel for 10 s")?;
                    ensure!(n == 8, "a datagram of {n} bytes");
                    match u64::from_be_bytes(buf) {
                        WARM => warm.store(true, Ordering::Relaxed),
                        END => break,
                        seq => {
                            if let Some(slot) =
                                usize::try_from(seq).ok().and_then(|i| seen.get_mut(i))
                            {
                                *slot = true;
                            }
                        }
                    }
                }
                done.store(true, Ordering::Relaxed);
                Ok(seen.iter().filter(|s| **s).count() as u64)
            });
            // The first handshake first: packets sent before it are queued, not lost.
            let mut waited = 0;
            while !warm.load(Ordering::Relaxed) {
                ensure!(waited < 500, "the tunnel carried nothing within 10 s");
                outbox.send_to(&WARM.to_be_bytes(), target)?;
                std::thread::sleep(Duration::from_millis(20));
                waited += 1;
            }
            let sender = scope.spawn(move || -> Result<()> {
                for seq in 0..count {
                    outbox.send_to(&seq.to_be_bytes(), target)?;
                    std::thread::sleep(Duration::from_micros(200));
                }
                sent.store(true, Ordering::Relaxed);
                Ok(())
            });
            let mut passes = 0;
            while !sent.load(Ordering::Relaxed) {
                self.configure_side(b, a, true)?;
                self.configure_side(a, b, true)?;
                passes += 2;
            }
            sender.join().map_err(|_| anyhow!("sender panicked"))??;
            // Whatever is still on its way arrives before the end marker (one path, in
            // order); the marker is repeated in case one is lost.
            let mut waited = 0;
            while !done.load(Ordering::Relaxed) && waited < 500 {
                outbox.send_to(&END.to_be_bytes(), target)?;
                std::thread::sleep(Duration::from_millis(20));
                waited += 1;
            }
            let received = receiver
                .join()
                .map_err(|_| anyhow!("receiver panicked"))??;
            Ok(ReapplyReport {
                sent: count,
                received,
                passes,
            })
        })
    }

    /// b trusts a stranger's key instead of a's: a's packets must not get through. The
    /// trusted configuration is restored afterwards.
    pub fn check_wrong_key(&self) -> Result<()> {
        let (a, b) = (&self.a, &self.b);
        self.configure_side(b, a, false)?;
        let result = a.server.run(|| {
            let target = SocketAddr::V4(SocketAddrV4::new(b.container, 7001));
            TcpStream::connect_timeout(&target, Duration::from_secs(3))
        })?;
        self.configure_side(b, a, true)?;
        match result {
            Ok(_) => bail!("a connection got through a peer with the wrong key"),
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => Ok(()),
            Err(e) => bail!("expected a timeout (packets dropped), got {e}"),
        }
    }

    /// Sends `bytes` from a's container address to b's through the tunnel, with full-size
    /// segments, while capturing b's LAN side. Fails unless every byte arrives in order.
    pub fn check_bulk(&self, bytes: usize) -> Result<BulkReport> {
        let (a, b) = (&self.a, &self.b);
        let socket_drops = || -> Result<u64> {
            Ok(a.server.udp_receive_buffer_errors()? + b.server.udp_receive_buffer_errors()?)
        };
        let drops_before = socket_drops()?;
        let stop = AtomicBool::new(false);
        std::thread::scope(|scope| -> Result<BulkReport> {
            let socket = b.server.run(|| sniff::PacketSocket::bind(LAN_IF))??;
            let stop = &stop;
            let sniffer = scope.spawn(move || {
                let (mut frames, mut fragments) = (0, 0);
                sniff::each_frame(&socket, stop, |frame| {
                    frames += 1;
                    if sniff::is_ipv4_fragment(frame) {
                        fragments += 1;
                    }
                });
                (frames, fragments)
            });
            let listener = b.server.run(|| TcpListener::bind((b.container, 7002)))??;
            let sink = scope.spawn(move || -> Result<usize> {
                let (mut stream, _) = listener.accept()?;
                stream.set_read_timeout(Some(Duration::from_secs(30)))?;
                let mut buf = vec![0u8; 1 << 16];
                let (mut got, mut next) = (0usize, 0u8);
                loop {
                    let n = stream.read(&mut buf)?;
                    if n == 0 {
                        return Ok(got);
                    }
                    for byte in &buf[..n] {
                        ensure!(*byte == next, "byte {got} arrived altered");
                        next = next.wrapping_add(1);
                        got += 1;
                    }
                }
            });
            let started = std::time::Instant::now();
            a.server.run(|| -> Result<()> {
                let target = SocketAddr::V4(SocketAddrV4::new(b.container, 7002));
                let mut stream = TcpStream::connect_timeout(&target, Duration::from_secs(10))
                    .context("connecting through the tunnel")?;
                stream.set_write_timeout(Some(Duration::from_secs(30)))?;
                let block: Vec<u8> = (0..=255u8).cycle().take(1 << 16).collect();
                let mut left = bytes;
                while left > 0 {
                    let n = left.min(block.len());
                    stream
                        .write_all(&block[..n])
                        .context("a stall: the tunnel stopped taking bytes")?;
                    left -= n;
                }
                Ok(())
            })??;
            let got = sink.join().map_err(|_| anyhow!("sink thread panicked"))??;
            let elapsed = started.elapsed();
            stop.store(true, Ordering::Relaxed);
            let (frames, fragments) = sniffer.join().map_err(|_| anyhow!("sniffer panicked"))?;
            ensure!(got == bytes, "{got} of {bytes} bytes arrived");
            Ok(BulkReport {
                elapsed,
                frames,
                fragments,
                socket_drops: socket_drops()? - drops_before,
            })
        })
    }

    /// The two servers' namespaces, a then b.
    pub fn servers(&self) -> (&Server, &Server) {
        (&self.a.server, &self.b.server)
    }

    /// b's addresses: on its container subnet (reached from a through the tunnel) and on
    /// the LAN (reached from a over the same veth, in clear).
    pub fn b_addresses(&self) -> (Ipv4Addr, Ipv4Addr) {
        (self.b.container, self.b.lan_addr)
    }

    /// The backend the agent's detection picks inside srv-a.
    pub fn detected_backend(&self) -> Result<Backend> {
        Self::with_netlink(&self.a, async |netlink| {
            Ok(interface::detect_backend(netlink).await)
        })
    }

    /// Runs `f` with an rtnetlink connection inside `side`'s namespace.
    fn with_netlink<T: Send>(
        side: &Side,
        f: impl AsyncFnOnce(&Netlink) -> Result<T> + Send,
    ) -> Result<T> {
        side.server.run(|| -> Result<T> {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async { f(&Netlink::connect()?).await })
        })?
    }

    fn configure_side(&self, me: &Side, peer: &Side, trusted: bool) -> Result<()> {
        let public_key = if trusted {
            peer.key.get_public()
        } else {
            Key::generate_private().get_public()
        };
        let config = InterfaceConfig {
            name: me.wg_name.clone(),
            private_key: me.key.clone(),
            listen_port: WG_PORT,
            address: me.container,
            peers: vec![Peer {
                public_key,
                endpoint: SocketAddr::V4(SocketAddrV4::new(peer.lan_addr, WG_PORT)),
                subnet: (peer.subnet, 24),
            }],
            mtu: self.tunnel_mtu,
        };
        Self::with_netlink(me, async |netlink| {
            Ok(interface::apply(netlink, &config, self.backend).await?)
        })
    }
}

impl Drop for Tunnel {
    fn drop(&mut self) {
        // wireguard-go keeps its namespace alive, so the link goes first: it exits with it.
        for side in [&self.a, &self.b] {
            let _ = Self::with_netlink(side, async |netlink| {
                Ok(interface::remove(netlink, &side.wg_name).await?)
            });
        }
    }
}
