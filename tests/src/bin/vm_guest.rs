//! `ferry-vm-guest`: the VM tier's test program, run inside a QEMU guest whose kernel has
//! the WireGuard module. It prints one `ok`/`not ok` line per check and a closing
//! `N passed, M failed` line; its exit code is 0 only if every check passed.
//!
//! Two network namespaces stand in for two servers, joined by a veth pair (their "LAN").
//! Each gets a kernel WireGuard link configured through the agent's netlink verbs, with
//! its own private key; only public keys cross. Traffic between their container subnets
//! must go through the tunnel, and what crosses the LAN must be WireGuard, never plaintext.

use std::{
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream},
    process::ExitCode,
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use anyhow::{Context as _, Result, bail, ensure};
use ferry_agent::mesh::{
    link::Netlink,
    wireguard::{self, Backend, Key, Peer},
};
use ferry_tests::netns::{Server, ip};

const WG_PORT: u16 = 51820;
const MARKER: &[u8] = b"ferry-plaintext-marker-7f3a";

/// One side of the tunnel.
struct Side {
    server: Server,
    lan_if: &'static str,
    lan_addr: Ipv4Addr,
    subnet: Ipv4Addr,
    container: Ipv4Addr,
    key: Key,
}

fn main() -> ExitCode {
    let mut passed = 0;
    let mut failed = 0;
    let mut report = |name: &str, result: Result<()>| match result {
        Ok(()) => {
            passed += 1;
            println!("ok {} - {name}", passed + failed);
        }
        Err(e) => {
            failed += 1;
            println!("not ok {} - {name}: {e:#}", passed + failed);
        }
    };
    match build_sides() {
        Ok((a, b)) => {
            report(
                "wireguard links configured through netlink",
                configure(&a, &b),
            );
            report(
                "traffic between the container subnets crosses the LAN encrypted",
                encrypted_traffic(&a, &b),
            );
            report(
                "a peer with the wrong key gets nothing through",
                wrong_key(&a, &b),
            );
        }
        Err(e) => report("two servers joined by veth", Err(e)),
    }
    println!("{passed} passed, {failed} failed");
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn build_sides() -> Result<(Side, Side)> {
    let a = Side {
        server: Server::create("srv-a", None)?,
        lan_if: "lan-a",
        lan_addr: Ipv4Addr::new(192, 168, 77, 1),
        subnet: Ipv4Addr::new(10, 66, 1, 0),
        container: Ipv4Addr::new(10, 66, 1, 1),
        key: Key::generate_private(),
    };
    let b = Side {
        server: Server::create("srv-b", None)?,
        lan_if: "lan-b",
        lan_addr: Ipv4Addr::new(192, 168, 77, 2),
        subnet: Ipv4Addr::new(10, 66, 2, 0),
        container: Ipv4Addr::new(10, 66, 2, 1),
        key: Key::generate_private(),
    };
    ip(&[
        "link", "add", a.lan_if, "type", "veth", "peer", "name", b.lan_if,
    ])?;
    for side in [&a, &b] {
        ip(&["link", "set", side.lan_if, "netns", side.server.name()])?;
        let n = side.server.name();
        ip(&[
            "-n",
            n,
            "addr",
            "add",
            &format!("{}/24", side.lan_addr),
            "dev",
            side.lan_if,
        ])?;
        ip(&["-n", n, "link", "set", side.lan_if, "up"])?;
    }
    Ok((a, b))
}

/// Configures `me`'s wg0 with `peer` as its only peer (with the peer's real public key, or
/// a stranger's when `trusted` is false).
fn configure_side(me: &Side, peer: &Side, trusted: bool) -> Result<()> {
    let public_key = if trusted {
        peer.key.get_public()
    } else {
        Key::generate_private().get_public()
    };
    let peers = [Peer {
        public_key,
        endpoint: SocketAddr::V4(SocketAddrV4::new(peer.lan_addr, WG_PORT)),
        subnet: (peer.subnet, 24),
    }];
    me.server.run(|| -> Result<()> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(async {
            let netlink = Netlink::connect()?;
            netlink.add_wireguard("wg0").await?;
            wireguard::configure("wg0", &me.key, WG_PORT, &peers, Backend::Kernel)?;
            netlink.add_address("wg0", me.container, 32).await?;
            netlink.set_up("wg0").await?;
            netlink.add_route("wg0", peer.subnet, 24).await?;
            Ok(())
        })
    })?
}

fn configure(a: &Side, b: &Side) -> Result<()> {
    configure_side(a, b, true)?;
    configure_side(b, a, true)?;
    // The verbs must be idempotent: the agent re-applies its whole state after a restart.
    configure_side(a, b, true)
}

/// What the sniffer on a LAN interface saw.
#[derive(Default, Debug)]
struct Capture {
    frames: usize,
    wireguard_frames: usize,
    plaintext_frames: usize,
}

fn encrypted_traffic(a: &Side, b: &Side) -> Result<()> {
    let stop = AtomicBool::new(false);
    let (capture, reply) = std::thread::scope(|scope| -> Result<(Capture, Vec<u8>)> {
        let sniffer = scope.spawn(|| b.server.run(|| sniff(b.lan_if, &stop)));
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
        echo.join()
            .map_err(|_| anyhow::anyhow!("echo thread panicked"))??;
        std::thread::sleep(Duration::from_millis(300));
        stop.store(true, Ordering::Relaxed);
        let capture = sniffer
            .join()
            .map_err(|_| anyhow::anyhow!("sniffer panicked"))???;
        Ok((capture, reply))
    })?;
    ensure!(reply == MARKER, "the echo came back altered: {reply:?}");
    ensure!(
        capture.wireguard_frames > 0,
        "no WireGuard frame crossed the LAN: {capture:?}"
    );
    ensure!(
        capture.plaintext_frames == 0,
        "plaintext crossed the LAN: {capture:?}"
    );
    let stats = a
        .server
        .run(|| wireguard::peer_stats("wg0", Backend::Kernel))??;
    let peer = stats.first().context("wg0 on srv-a has no peer")?;
    ensure!(
        peer.last_handshake.is_some(),
        "no handshake recorded: {peer:?}"
    );
    ensure!(
        peer.tx_bytes > 0 && peer.rx_bytes > 0,
        "no bytes counted: {peer:?}"
    );
    println!(
        "# {} frames on the LAN, {} WireGuard, 0 plaintext; peer tx {} B rx {} B",
        capture.frames, capture.wireguard_frames, peer.tx_bytes, peer.rx_bytes
    );
    Ok(())
}

fn wrong_key(a: &Side, b: &Side) -> Result<()> {
    // srv-b now trusts a stranger instead of srv-a: srv-a's packets fail authentication.
    configure_side(b, a, false)?;
    let result = a.server.run(|| {
        let target = SocketAddr::V4(SocketAddrV4::new(b.container, 7001));
        TcpStream::connect_timeout(&target, Duration::from_secs(3))
    })?;
    // Restore the trusted configuration for anything that runs after.
    configure_side(b, a, true)?;
    match result {
        Ok(_) => bail!("a connection got through a peer with the wrong key"),
        Err(e) if e.kind() == std::io::ErrorKind::TimedOut => Ok(()),
        Err(e) => bail!("expected a timeout (packets dropped), got {e}"),
    }
}

/// Captures frames on `interface` until `stop` is set, classifying each.
fn sniff(interface: &str, stop: &AtomicBool) -> Result<Capture> {
    let protocol = (libc::ETH_P_ALL as u16).to_be();
    // SAFETY: plain socket(2) call.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(protocol)) };
    ensure!(
        fd >= 0,
        "AF_PACKET socket: {}",
        std::io::Error::last_os_error()
    );
    let result = (|| {
        let name = std::ffi::CString::new(interface)?;
        // SAFETY: name is NUL-terminated.
        let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
        ensure!(index != 0, "no interface {interface}");
        // SAFETY: sockaddr_ll is plain data; zero is a valid start.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = protocol;
        addr.sll_ifindex = index as i32;
        // SAFETY: addr is a valid sockaddr_ll of the given size.
        let rc = unsafe {
            libc::bind(
                fd,
                (&raw const addr).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        ensure!(
            rc == 0,
            "bind to {interface}: {}",
            std::io::Error::last_os_error()
        );
        let timeout = libc::timeval {
            tv_sec: 0,
            tv_usec: 100_000,
        };
        // SAFETY: timeout is a valid timeval.
        unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&raw const timeout).cast(),
                std::mem::size_of::<libc::timeval>() as u32,
            )
        };
        let mut capture = Capture::default();
        let mut frame = vec![0u8; 65536];
        while !stop.load(Ordering::Relaxed) {
            // SAFETY: frame is a writable buffer of the given length.
            let n = unsafe { libc::recv(fd, frame.as_mut_ptr().cast(), frame.len(), 0) };
            if n <= 0 {
                continue;
            }
            let frame = &frame[..n as usize];
            capture.frames += 1;
            if frame.windows(MARKER.len()).any(|w| w == MARKER) {
                capture.plaintext_frames += 1;
            }
            if is_wireguard(frame) {
                capture.wireguard_frames += 1;
            }
        }
        Ok(capture)
    })();
    // SAFETY: fd is ours and closed once.
    unsafe { libc::close(fd) };
    result
}

/// An Ethernet frame carrying IPv4 UDP from or to the WireGuard port.
fn is_wireguard(frame: &[u8]) -> bool {
    if frame.len() < 14 + 20 + 8 || frame[12..14] != [0x08, 0x00] {
        return false;
    }
    let ip = &frame[14..];
    let header_len = usize::from(ip[0] & 0x0f) * 4;
    if ip[9] != 17 || ip.len() < header_len + 8 {
        return false;
    }
    let udp = &ip[header_len..];
    let src = u16::from_be_bytes([udp[0], udp[1]]);
    let dst = u16::from_be_bytes([udp[2], udp[3]]);
    src == WG_PORT || dst == WG_PORT
}
