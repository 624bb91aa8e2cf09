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
        .context("iperf3's report has no end.sum_received.bits_per_second")?;
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
