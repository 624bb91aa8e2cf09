//! `./x bench mesh`: what the WireGuard mesh costs a container-to-container path, against
//! the same path without encryption (plain routing over the same link), in the same run.
//!
//! Two namespaces joined by a veth pair are two servers, their tunnel built by the agent's
//! own mesh verbs (`ferry_tests::tunnel`); b's container-subnet address is reached from a
//! through the tunnel, b's LAN address over the same veth in clear. On this host tier the
//! tunnel is wireguard-go (the kernel has no module); the VM tier runs the kernel's.
//! Figures per run, runs interleaved: throughput (iperf3, one TCP stream, for `--seconds`)
//! and request latency (one byte each way on one connection, `--round-trips` times, the
//! median and p99). Ratios are per run, then the median.
//!
//! Anchors: WireGuard's own figures are 2.5-6 Gbit/s per core on bare metal; measured on
//! this kind of machine, userspace implementations reached ~0.5 Gbit/s against veth's
//! 16.7. Absolute figures drift here; the ratios are the result.
//!
//! `--convergence 10,50`: a real central and that many servers (namespaces on a bridge, a
//! real agent each, wireguard-go, no Docker Engine); then `--joins` more servers join one
//! after another, and for each the time from its join (central has its record) until
//! every other server has it as a WireGuard peer with a route to its subnet: p50 and p99
//! over every (server, join).

use std::{
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, ensure};
use ferry_agent::mesh::wireguard::Backend;
use ferry_tests::{
    figures::{flag, median, paired},
    netns::Server,
    tunnel::Tunnel,
};

const IPERF_PORT: u16 = 5201;
const ECHO_PORT: u16 = 7100;

/// One path's figures from one run.
#[derive(Clone, Copy, Debug, Default)]
struct Figures {
    bits_per_second: f64,
    rtt_p50_us: f64,
    rtt_p99_us: f64,
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Some(i) = args.iter().position(|a| a == "--convergence") {
        let sizes: Vec<usize> = args
            .get(i + 1)
            .context("--convergence needs server counts, e.g. 10,50")?
            .split(',')
            .map(str::parse)
            .collect::<Result<_, _>>()
            .context("--convergence takes server counts, e.g. 10,50")?;
        let joins: usize = flag(&args, "--joins")?.unwrap_or(5);
        return convergence(&sizes, joins);
    }
    let runs: usize = flag(&args, "--runs")?.unwrap_or(5);
    let seconds: u32 = flag(&args, "--seconds")?.unwrap_or(3);
    let round_trips: usize = flag(&args, "--round-trips")?.unwrap_or(5000);
    let backend = if args.iter().any(|a| a == "--kernel") {
        Backend::Kernel
    } else {
        Backend::Userspace
    };
    let tunnel = Tunnel::new("mb", backend)?;
    tunnel.configure()?;
    let (a, b) = tunnel.servers();
    let (through_tunnel, in_clear) = tunnel.b_addresses();
    let _iperf = IperfServer::start(b)?;
    let echo = b.run(|| TcpListener::bind((Ipv4Addr::UNSPECIFIED, ECHO_PORT)))??;
    std::thread::spawn(move || serve_echo(&echo));

    let (mut mesh, mut plain) = (Vec::new(), Vec::new());
    for run in 1..=runs {
        for (path, address, out) in [
            ("mesh", through_tunnel, &mut mesh),
            ("plain", in_clear, &mut plain),
        ] {
            let figures = measure(a, address, seconds, round_trips)
                .with_context(|| format!("run {run}, {path} path to {address}"))?;
            println!(
                "run {run} {path:<5} {:>8.0} Mbit/s  rtt p50 {:>6.1} us  p99 {:>6.1} us",
                figures.bits_per_second / 1e6,
                figures.rtt_p50_us,
                figures.rtt_p99_us
            );
            out.push(figures);
        }
    }
    let kind = match backend {
        Backend::Kernel => "kernel",
        Backend::Userspace => "wireguard_go",
    };
    println!();
    println!(
        "ratio {kind}_throughput_vs_plain_higher_is_better = {:.2}",
        paired(&mesh, &plain, |f| f.bits_per_second)
    );
    println!(
        "ratio {kind}_rtt_p50_vs_plain_lower_is_better = {:.2}",
        paired(&mesh, &plain, |f| f.rtt_p50_us)
    );
    for (name, figures) in [(kind, &mesh), ("plain", &plain)] {
        println!(
            "metric {name}_throughput = {:.0} Mbit/s",
            median(figures.iter().map(|f| f.bits_per_second / 1e6).collect())
        );
        println!(
            "metric {name}_rtt_p50 = {:.1} us",
            median(figures.iter().map(|f| f.rtt_p50_us).collect())
        );
        println!(
            "metric {name}_rtt_p99 = {:.1} us",
            median(figures.iter().map(|f| f.rtt_p99_us).collect())
        );
    }
    Ok(())
}

/// Throughput and round trips from `a` to `address`.
fn measure(a: &Server, address: Ipv4Addr, seconds: u32, round_trips: usize) -> Result<Figures> {
    let mut iperf = Command::new("iperf3");
    iperf.args([
        "-c",
        &address.to_string(),
        "-p",
        &IPERF_PORT.to_string(),
        "-t",
        &seconds.to_string(),
        "-J",
    ]);
    // iperf3 keeps its buffer in a file under TMPDIR; the VM's /tmp is the host's, read-only.
    iperf.env("TMPDIR", "/run");
    a.enter(&mut iperf);
    let out = iperf
        .output()
        .context("running iperf3; install it with `./x setup`")?;
    ensure!(
        out.status.success(),
        "iperf3: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let bits_per_second = report["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .with_context(|| format!("iperf3 measured nothing: {}", report["error"]))?;
    let mut rtts = a.run(|| round_trip(SocketAddrV4::new(address, ECHO_PORT), round_trips))??;
    rtts.sort_by(f64::total_cmp);
    let p99 = rtts[(rtts.len() * 99 / 100).min(rtts.len() - 1)];
    Ok(Figures {
        bits_per_second,
        rtt_p50_us: median(rtts),
        rtt_p99_us: p99,
    })
}

/// `count` one-byte requests and answers on one connection; each round trip in µs.
fn round_trip(target: SocketAddrV4, count: usize) -> Result<Vec<f64>> {
    let mut stream = TcpStream::connect_timeout(&target.into(), Duration::from_secs(5))?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut byte = [0u8; 1];
    let mut out = Vec::with_capacity(count);
    for i in 0..count {
        byte[0] = i as u8;
        let start = Instant::now();
        stream.write_all(&byte)?;
        stream.read_exact(&mut byte)?;
        out.push(start.elapsed().as_secs_f64() * 1e6);
    }
    Ok(out)
}

/// Echoes every byte back, one connection at a time, for as long as the process runs.
fn serve_echo(listener: &TcpListener) {
    for stream in listener.incoming() {
        let Ok(mut stream) = stream else { continue };
        let _ = stream.set_nodelay(true);
        let mut buf = [0u8; 64];
        while let Ok(n) = stream.read(&mut buf) {
            if n == 0 || stream.write_all(&buf[..n]).is_err() {
                break;
            }
        }
    }
}

/// `iperf3 -s` in a namespace, ended on drop.
struct IperfServer(Child);

impl IperfServer {
    fn start(server: &Server) -> Result<Self> {
        let mut cmd = Command::new("iperf3");
        cmd.args(["-s", "-p", &IPERF_PORT.to_string()])
            .env("TMPDIR", "/run")
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        server.enter(&mut cmd);
        let child = cmd
            .spawn()
            .context("starting iperf3; install it with `./x setup`")?;
        // Ready once it accepts; iperf3 says nothing machine-readable before that.
        let deadline = Instant::now() + Duration::from_secs(10);
        while server
            .run(|| TcpStream::connect((Ipv4Addr::LOCALHOST, IPERF_PORT)))?
            .is_err()
        {
            ensure!(
                Instant::now() < deadline,
                "iperf3 -s did not start listening"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(Self(child))
    }
}

impl Drop for IperfServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Servers whose mesh is measured, and the central they joined.
fn convergence(sizes: &[usize], joins: usize) -> Result<()> {
    let mut summary = Vec::new();
    for &size in sizes {
        let samples = converge(size, joins)?;
        let p50 = median(samples.clone());
        let mut sorted = samples;
        sorted.sort_by(f64::total_cmp);
        let p99 = sorted[(sorted.len() * 99 / 100).min(sorted.len() - 1)];
        println!(
            "{size} servers: a joining server a peer with a route on every other after \
             p50 {p50:.0} ms, p99 {p99:.0} ms ({} samples)",
            sorted.len()
        );
        summary.push((size, p50, p99));
    }
    println!();
    for (size, p50, p99) in summary {
        println!("metric convergence_{size}_servers_p50 = {p50:.0} ms");
        println!("metric convergence_{size}_servers_p99 = {p99:.0} ms");
    }
    Ok(())
}

/// The kernel's ARP table, made big enough for `servers` on one link for as long as this
/// lives, then put back. Real servers each have their own table; here every namespace
/// shares the machine's one (its `gc_thresh` limits count entries of every namespace), and
/// each server has an entry for each other server it sends a handshake to: at the default
/// limit of 1024, the 33rd server of 50 found the table full and could not even ARP for
/// central ("neighbor table overflow").
struct NeighbourTable {
    saved: Vec<(&'static str, String)>,
}

impl NeighbourTable {
    const LIMITS: [&'static str; 3] = [
        "/proc/sys/net/ipv4/neigh/default/gc_thresh1",
        "/proc/sys/net/ipv4/neigh/default/gc_thresh2",
        "/proc/sys/net/ipv4/neigh/default/gc_thresh3",
    ];

    fn for_servers(servers: usize) -> Result<Self> {
        // Each server's entries for the others and central, twice over for slack.
        let wanted = 2 * servers * (servers + 1);
        let mut saved = Vec::new();
        for (path, share) in Self::LIMITS.iter().zip([4, 2, 1]) {
            let now = std::fs::read_to_string(path).with_context(|| path.to_string())?;
            let limit = (wanted / share).max(now.trim().parse().unwrap_or(0));
            std::fs::write(path, limit.to_string()).with_context(|| path.to_string())?;
            saved.push((*path, now));
        }
        Ok(Self { saved })
    }
}

impl Drop for NeighbourTable {
    fn drop(&mut self) {
        for (path, value) in &self.saved {
            let _ = std::fs::write(path, value.trim());
        }
    }
}

/// The convergence times (ms) of `joins` servers joining `size` running ones.
fn converge(size: usize, joins: usize) -> Result<Vec<f64>> {
    use ferry_tests::{central::Central, cluster::Bare, netns::Network};
    let _table = NeighbourTable::for_servers(size + joins)?;
    let tag = format!("c{size}");
    let mut network = Network::new(&format!("fmc{size}"), 250)?;
    let dir = std::env::temp_dir().join(format!("ferry-mesh-bench-{size}"));
    let _ = std::fs::remove_dir_all(&dir);
    let central = Central::start(&dir, "10.250.250.1")?;
    let mut servers = Vec::new();
    let mut agents = Vec::new();
    for i in 0..size {
        let name = format!("s{i}");
        let server = Bare::new(&mut network, &tag, &name)?;
        let (ok, out, err) = server.join(&central, &name)?;
        ensure!(ok, "joining {name}: {out}{err}");
        agents.push(server.start_agent()?);
        servers.push(server);
    }
    println!("{size} servers up");
    let mut samples = Vec::new();
    for j in 0..joins {
        let name = format!("n{j}");
        let newcomer = Bare::new(&mut network, &tag, &name)?;
        let (ok, out, err) = newcomer.join(&central, &name)?;
        ensure!(ok, "joining {name}: {out}{err}");
        let joined = Instant::now();
        let key = read_public_key(&newcomer)?;
        let subnet = joined_subnet(&out)?;
        let mut pending: Vec<&Bare> = servers.iter().collect();
        let deadline = joined + Duration::from_secs(60);
        while !pending.is_empty() {
            ensure!(
                Instant::now() < deadline,
                "{} servers never had {name} as a peer with a route",
                pending.len()
            );
            let mut still = Vec::new();
            for server in pending {
                if has_peer(server, &key)? && has_route(server, &subnet)? {
                    samples.push(joined.elapsed().as_secs_f64() * 1e3);
                } else {
                    still.push(server);
                }
            }
            pending = still;
            std::thread::sleep(Duration::from_millis(5));
        }
        agents.push(newcomer.start_agent()?);
        servers.push(newcomer);
    }
    for agent in agents {
        let _ = agent.kill();
    }
    drop(servers);
    drop(central);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(samples)
}

/// The public key of a joined server, from the private key in its state directory.
fn read_public_key(server: &ferry_tests::cluster::Bare) -> Result<String> {
    let text = std::fs::read_to_string(server.paths.state_dir.join("wireguard.key"))?;
    let key = ferry_agent::mesh::wireguard::Key::from_base64(text.trim())
        .map_err(|_| anyhow::anyhow!("unreadable wireguard.key"))?;
    Ok(key.get_public().to_base64())
}

/// The subnet `ferry-agent join` printed ("container subnet 10.66.N.0/24").
fn joined_subnet(printed: &str) -> Result<String> {
    printed
        .split_whitespace()
        .skip_while(|w| *w != "subnet")
        .nth(1)
        .map(|w| w.trim_end_matches(',').to_string())
        .with_context(|| format!("no subnet in: {printed}"))
}

fn has_peer(server: &ferry_tests::cluster::Bare, key: &str) -> Result<bool> {
    // wireguard-go's UAPI socket is not per namespace; before its first start it has none.
    Ok(
        ferry_agent::mesh::wireguard::peer_stats(&server.paths.wg_interface, Backend::Userspace)
            .map(|peers| peers.iter().any(|p| p.public_key.to_base64() == key))
            .unwrap_or(false),
    )
}

fn has_route(server: &ferry_tests::cluster::Bare, subnet: &str) -> Result<bool> {
    let out = Command::new("ip")
        .args(["-n", server.server.name(), "route", "show", subnet])
        .output()?;
    Ok(!out.stdout.is_empty())
}
