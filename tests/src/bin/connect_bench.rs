//! `cargo xtask bench connect`: what a connect to a service address costs when `connect4`
//! steers it, against a direct connect to the backend and against an iptables DNAT rule
//! doing the same steering, in the same run.
//!
//! A namespace of its own holds the backend (10.98.0.1:8080 on its loopback) and the
//! client; the client runs in a cgroup below the data plane's root, so all three paths pay
//! the same connect4 lookup (the direct address and the DNAT address are simply not
//! services). A fourth path connects to the service from a cgroup registered as a
//! container, with the backend's address in its stack: the stack isolation's check runs
//! in full (and allows it) on top of the steering. A fifth path is the receiving side of
//! the isolation: a direct connect to a second backend whose process lives in a registered
//! container's cgroup below the programs' root, so `ferry_isolation` (cgroup_skb/ingress)
//! checks every packet it receives, the client's address being in the same stack. Each
//! connection is opened, carries one byte each way, and is closed with a reset (SO_LINGER
//! 0, so no TIME_WAIT piles up); the client opens them one after another and reports the
//! rate and the per-connection latency. Runs interleave the paths.
//!
//! Modes: `ferry-connect-bench [--runs N] [--connections N]` orchestrates;
//! `ferry-connect-bench client TARGET N` is the client it starts; `ferry-connect-bench
//! backend ADDRESS` is the second backend (it prints `listening` once it is).

use std::{
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream},
    process::Command,
    time::Instant,
};

use anyhow::{Context as _, Result, bail, ensure};
use ferry_agent::dataplane::{Callers, Dataplane, DataplaneConfig, ServiceTable, map_dir};
use ferry_tests::{
    agent::Pins,
    cgroup::TestCgroup,
    figures::{flag, labelled, median, paired},
    netns::{Server, ip},
};

const BACKEND: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 98, 0, 1), 8080);
const SERVICE: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 97, 0, 1), 80);
const DNAT: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 97, 0, 2), 80);
/// The backend in a registered container's cgroup (the receiving side's check runs).
const GUARDED: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 98, 0, 2), 8080);

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("client") => client(&args[1..]),
        Some("backend") => backend(&args[1..]),
        _ => orchestrate(&args),
    }
}

/// One path's figures from one run.
#[derive(Clone, Copy, Debug, Default)]
struct Figures {
    per_second: f64,
    p50_us: f64,
    p99_us: f64,
}

fn orchestrate(args: &[String]) -> Result<()> {
    let runs: u64 = flag(args, "--runs")?.unwrap_or(5);
    let connections: u64 = flag(args, "--connections")?.unwrap_or(20_000);
    let ns = Server::create("ferry-connect-bench", None)?;
    let name = ns.name().to_string();
    ip(&["-n", &name, "addr", "add", "10.98.0.1/32", "dev", "lo"])?;
    ip(&["-n", &name, "addr", "add", "10.98.0.2/32", "dev", "lo"])?;
    // The DNAT address needs a route before the rule rewrites it; connect4 needs none.
    ip(&["-n", &name, "route", "add", "10.97.0.0/16", "dev", "lo"])?;
    iptables(
        &name,
        &[
            "-t",
            "nat",
            "-A",
            "OUTPUT",
            "-d",
            &DNAT.ip().to_string(),
            "-p",
            "tcp",
            "--dport",
            &DNAT.port().to_string(),
            "-j",
            "DNAT",
            "--to-destination",
            &BACKEND.to_string(),
        ],
    )?;

    let root = TestCgroup::top_level("ferry-connect-bench")?;
    let client_cgroup = TestCgroup::new(root.path(), "client")?;
    // A registered container's cgroup, whose connects also pass the stack isolation's check.
    let member_cgroup = TestCgroup::new(root.path(), "member")?;
    let pins = Pins::new("ferry-connect-bench")?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let config = DataplaneConfig {
        cgroup_root: root.path().to_path_buf(),
        bpffs: pins.path().to_path_buf(),
    };
    let _dataplane = runtime.block_on(async { Dataplane::start(&config) })?;
    ServiceTable::open(&map_dir(pins.path()))?.set(SERVICE, 0, Callers::Everyone, &[BACKEND])?;
    let stack = ferry_ebpf_abi::stack_id("bench");
    let member_id = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(member_cgroup.path())?);
    ferry_agent::dataplane::CallerTable::open(&map_dir(pins.path()))?.set(member_id, stack, 1)?;
    let mut address_stacks = ferry_agent::dataplane::AddressStacks::open(&map_dir(pins.path()))?;
    address_stacks.set(*BACKEND.ip(), stack)?;
    // The guarded backend and the address its clients come from (a connect to a local
    // address comes from that address): both of the member's stack, so each packet is
    // looked up and allowed.
    address_stacks.set(*GUARDED.ip(), stack)?;

    // The backend: one byte in, one byte out, on a thread inside the namespace.
    let listener = ns.run(|| TcpListener::bind(BACKEND))??;
    std::thread::spawn(move || answer(&listener));

    let exe = std::env::current_exe()?;
    // The guarded backend: a process of its own, placed in the member's cgroup before it
    // opens its socket (a socket belongs to its creator's cgroup).
    let guarded = {
        let mut cmd = Command::new(&exe);
        cmd.args(["backend", &GUARDED.to_string()])
            .stdout(std::process::Stdio::piped());
        ns.enter(&mut cmd);
        place(&mut cmd, member_cgroup.path());
        let mut child = ferry_tests::Running(cmd.spawn().context("starting the guarded backend")?);
        let stdout = child.0.stdout.take().context("the backend's stdout")?;
        let ready = ferry_tests::lines_of(stdout)
            .recv_timeout(std::time::Duration::from_secs(10))
            .context("the guarded backend did not start listening")?;
        ensure!(ready == "listening", "the guarded backend said {ready:?}");
        child
    };
    // The receiving side's check is in the path: with the clients' address in another
    // stack, the guarded backend gets nothing (its SYN dropped), and then it does again.
    address_stacks.set(*GUARDED.ip(), ferry_ebpf_abi::stack_id("another"))?;
    let refused = ns.run(|| {
        TcpStream::connect_timeout(&GUARDED.into(), std::time::Duration::from_millis(500))
    })?;
    ensure!(
        refused.is_err(),
        "a connect from another stack's address reached the guarded backend: the receiving \
         side's check is not in its path"
    );
    address_stacks.set(*GUARDED.ip(), stack)?;
    let paths = [
        ("direct", BACKEND, &client_cgroup),
        ("connect4", SERVICE, &client_cgroup),
        ("iptables", DNAT, &client_cgroup),
        ("isolated", SERVICE, &member_cgroup),
        ("received", GUARDED, &client_cgroup),
    ];
    let mut results: Vec<Vec<Figures>> = vec![Vec::new(); paths.len()];
    for run in 0..runs {
        for (i, (label, target, cgroup)) in paths.iter().enumerate() {
            let mut cmd = Command::new(&exe);
            cmd.args(["client", &target.to_string(), &connections.to_string()]);
            ns.enter(&mut cmd);
            place(&mut cmd, cgroup.path());
            let out = cmd.output().context("running the client")?;
            let text = String::from_utf8_lossy(&out.stdout);
            ensure!(
                out.status.success(),
                "client to {target} failed: {text}{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let figures = parse(&text)?;
            println!(
                "run {run} {label:<9} {:>8.0} connections/s  p50 {:>5.1} us  p99 {:>5.1} us",
                figures.per_second, figures.p50_us, figures.p99_us
            );
            results[i].push(figures);
        }
    }
    let of = |i: usize, f: fn(&Figures) -> f64| median(results[i].iter().map(f).collect());
    println!();
    for (i, (label, _, _)) in paths.iter().enumerate() {
        println!(
            "median {label:<9} {:>8.0} connections/s  p50 {:>5.1} us  p99 {:>5.1} us",
            of(i, |f| f.per_second),
            of(i, |f| f.p50_us),
            of(i, |f| f.p99_us)
        );
    }
    let rate = |i| of(i, |f| f.per_second);
    // Ratios per run, then their median (see the DNS bench).
    let paired = |a: usize, b: usize, f: fn(&Figures) -> f64| paired(&results[a], &results[b], f);
    let by_rate = |f: &Figures| f.per_second;
    println!(
        "ratio connect_rate_vs_direct_higher_is_better = {:.2}",
        paired(1, 0, by_rate)
    );
    println!(
        "ratio connect_rate_vs_iptables_higher_is_better = {:.2}",
        paired(1, 2, by_rate)
    );
    println!(
        "ratio connect_p99_vs_direct_lower_is_better = {:.2}",
        paired(1, 0, |f| f.p99_us)
    );
    println!(
        "ratio isolated_connect_rate_vs_direct_higher_is_better = {:.2}",
        paired(3, 0, by_rate)
    );
    println!(
        "ratio isolated_connect_rate_vs_connect4_higher_is_better = {:.2}",
        paired(3, 1, by_rate)
    );
    println!(
        "ratio received_connect_rate_vs_direct_higher_is_better = {:.2}",
        paired(4, 0, by_rate)
    );
    println!("metric connect4_rate = {:.0} connections/s", rate(1));
    println!("metric connect4_p99 = {:.1} us", of(1, |f| f.p99_us));
    drop(guarded);
    drop(_dataplane);
    let _ = ferry_agent::dataplane::unpin(pins.path());
    Ok(())
}

/// Has `cmd` move itself into the cgroup at `cgroup` before it runs.
fn place(cmd: &mut Command, cgroup: &std::path::Path) {
    let procs = cgroup.join("cgroup.procs");
    // SAFETY: only a write(2) to a file between fork and exec.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(cmd, move || std::fs::write(&procs, b"0"));
    }
}

/// Listens on ADDRESS, prints `listening`, and answers each connection's byte with one.
fn backend(args: &[String]) -> Result<()> {
    let [address] = args else {
        bail!("usage: ferry-connect-bench backend ADDRESS");
    };
    let address: SocketAddrV4 = address.parse()?;
    let listener = TcpListener::bind(address).with_context(|| format!("binding {address}"))?;
    println!("listening");
    answer(&listener);
    Ok(())
}

/// Answers each connection's byte with one, for ever.
fn answer(listener: &TcpListener) {
    for stream in listener.incoming() {
        let Ok(mut stream) = stream else { continue };
        let mut byte = [0u8; 1];
        if stream.read_exact(&mut byte).is_ok() {
            let _ = stream.write_all(&byte);
        }
    }
}

fn iptables(netns: &str, args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(["netns", "exec", netns, "iptables"])
        .args(args)
        .output()
        .context("running iptables; `./x setup` installs it")?;
    if !out.status.success() {
        bail!(
            "iptables {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

fn parse(text: &str) -> Result<Figures> {
    Ok(Figures {
        per_second: labelled(text, "rate")?,
        p50_us: labelled(text, "p50")?,
        p99_us: labelled(text, "p99")?,
    })
}

/// Opens `N` connections to TARGET one after another; prints `rate R p50 X p99 Y`.
fn client(args: &[String]) -> Result<()> {
    let [target, n] = args else {
        bail!("usage: ferry-connect-bench client TARGET N");
    };
    let target: SocketAddrV4 = target.parse()?;
    let n: usize = n.parse()?;
    let mut samples = Vec::with_capacity(n);
    let start = Instant::now();
    for _ in 0..n {
        let begin = Instant::now();
        let mut stream =
            TcpStream::connect(target).with_context(|| format!("connecting to {target}"))?;
        stream.write_all(b"x")?;
        let mut byte = [0u8; 1];
        stream.read_exact(&mut byte)?;
        samples.push(begin.elapsed().as_secs_f64() * 1e6);
        // A reset instead of a FIN: no TIME_WAIT, so the ports never run out.
        let linger = libc::linger {
            l_onoff: 1,
            l_linger: 0,
        };
        // SAFETY: a valid option value for a valid socket.
        unsafe {
            libc::setsockopt(
                std::os::fd::AsRawFd::as_raw_fd(&stream),
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                (&raw const linger).cast(),
                std::mem::size_of::<libc::linger>() as u32,
            );
        }
    }
    let rate = n as f64 / start.elapsed().as_secs_f64();
    samples.sort_by(f64::total_cmp);
    println!(
        "rate {rate:.0} p50 {:.1} p99 {:.1}",
        samples[n / 2],
        samples[n * 99 / 100]
    );
    Ok(())
}
