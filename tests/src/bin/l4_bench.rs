//! `cargo xtask bench ingress`, L4 part: a `tcp:` port through ferry's tc path, through
//! ferry's userspace relay, through HAProxy 2.6 in TCP mode (one thread), and a direct
//! connection, in the same run, with the same backend and client (wrk).
//!
//! The topology is made of namespaces, so the tc program has a real interface to sit on:
//! the client (this process, the host namespace) reaches a "server" namespace over a veth
//! pair (`10.252.0.1` to `10.252.0.2`); behind the server, on a bridge, a "container"
//! namespace holds the backend (`10.252.66.2`, the one-thread backend of
//! `ferry-ingress-bench`). Direct means the client connects to the container's address,
//! routed through the server; the proxies listen on the server's address. The tc program
//! is attached to the server's interface only while its own runs are measured, so no other
//! path pays for it.
//!
//! Loads, interleaved per run: a new connection per request, 50 at a time (the connection
//! rate, and the CPU each connection costs the whole machine beyond a direct connection's:
//! a proxy's own process and the kernel's work, wherever it runs); 10 MB downloads over 4
//! connections (throughput).

use std::{
    fs,
    net::{Ipv4Addr, SocketAddrV4, TcpStream},
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use aya::programs::{
    LinkOrder, SchedClassifier, TcAttach, TcAttachType, tc::SchedClassifierLinkId,
};
use ferry_agent::dataplane::{Dataplane, DataplaneConfig, L4Table, L4Target, Protocol, map_dir};
use ferry_ebpf_abi::program_names;
use ferry_tests::{
    agent::Pins,
    cgroup::TestCgroup,
    figures::{flag, median, paired, wrk_figure},
    netns::ip,
};

const SERVER_NS: &str = "fl4b-server";
const CONTAINER_NS: &str = "fl4b-container";
const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 252, 0, 1);
const SERVER: Ipv4Addr = Ipv4Addr::new(10, 252, 0, 2);
const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 252, 66, 1);
const BACKEND: Ipv4Addr = Ipv4Addr::new(10, 252, 66, 2);
const BACKEND_PORT: u16 = 18080;
const RELAY_HTTP_PORT: u16 = 18081;
/// The relay's `tcp:` port: `ferry-ingress-bench ferry` publishes it.
const RELAY_PORT: u16 = 18084;
const HAPROXY_PORT: u16 = 18085;
const TC_PORT: u16 = 18086;
const BIG: f64 = 10.0 * 1024.0 * 1024.0;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let runs: usize = flag(&args, "--runs")?.unwrap_or(5);
    let seconds: u64 = flag(&args, "--seconds")?.unwrap_or(4);
    let topology = Topology::create()?;
    let result = measure(&topology, runs, seconds);
    drop(topology);
    result
}

/// The namespaces and links, removed on drop.
struct Topology;

impl Topology {
    fn create() -> Result<Self> {
        let topology = Self;
        topology.remove();
        ip(&["netns", "add", SERVER_NS])?;
        ip(&["netns", "add", CONTAINER_NS])?;
        ip(&[
            "link",
            "add",
            "fl4b-client",
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            SERVER_NS,
        ])?;
        ip(&["addr", "add", &format!("{CLIENT}/24"), "dev", "fl4b-client"])?;
        ip(&["link", "set", "fl4b-client", "up"])?;
        // The direct path: the container's subnet through the server, as a router would.
        ip(&["route", "add", "10.252.66.0/24", "via", &SERVER.to_string()])?;
        let server = |args: &[&str]| -> Result<()> {
            let mut all = vec!["-n", SERVER_NS];
            all.extend_from_slice(args);
            ip(&all)
        };
        server(&["link", "set", "lo", "up"])?;
        server(&["addr", "add", &format!("{SERVER}/24"), "dev", "eth0"])?;
        server(&["link", "set", "eth0", "up"])?;
        server(&["link", "add", "br0", "type", "bridge"])?;
        server(&["addr", "add", &format!("{GATEWAY}/24"), "dev", "br0"])?;
        server(&["link", "set", "br0", "up"])?;
        server(&[
            "link",
            "add",
            "vbackend",
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            CONTAINER_NS,
        ])?;
        server(&["link", "set", "vbackend", "master", "br0", "up"])?;
        let container = |args: &[&str]| -> Result<()> {
            let mut all = vec!["-n", CONTAINER_NS];
            all.extend_from_slice(args);
            ip(&all)
        };
        container(&["link", "set", "lo", "up"])?;
        container(&["addr", "add", &format!("{BACKEND}/24"), "dev", "eth0"])?;
        container(&["link", "set", "eth0", "up"])?;
        container(&["route", "add", "default", "via", &GATEWAY.to_string()])?;
        sysctl(SERVER_NS, "net.ipv4.ip_forward=1")?;
        Ok(topology)
    }

    fn remove(&self) {
        let _ = ip(&["route", "del", "10.252.66.0/24"]);
        let _ = ip(&["link", "del", "fl4b-client"]);
        let _ = ip(&["netns", "del", SERVER_NS]);
        let _ = ip(&["netns", "del", CONTAINER_NS]);
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        self.remove();
    }
}

fn sysctl(netns: &str, setting: &str) -> Result<()> {
    let status = Command::new("ip")
        .args(["netns", "exec", netns, "sysctl", "-qw", setting])
        .status()
        .context("running sysctl in the server namespace")?;
    ensure!(status.success(), "sysctl {setting} in {netns} failed");
    Ok(())
}

/// A process started in a namespace, SIGTERMed on drop.
struct Server {
    child: Child,
}

impl Server {
    fn start(netns: &str, program: &Path, args: &[&str], what: &str) -> Result<Self> {
        let child = Command::new("ip")
            .args(["netns", "exec", netns])
            .arg(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting {what}; `./x setup` installs the peers"))?;
        Ok(Self { child })
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // SAFETY: kill with a pid we started (`ip netns exec` execs the program in place).
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

/// Waits until `target` answers an HTTP request.
fn answers(target: SocketAddrV4, what: &str) -> Result<()> {
    use std::io::{Read as _, Write as _};
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let attempt = (|| -> std::io::Result<bool> {
            let mut s = TcpStream::connect_timeout(&target.into(), Duration::from_secs(1))?;
            s.set_read_timeout(Some(Duration::from_secs(2)))?;
            s.write_all(b"GET /small HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")?;
            let mut reply = [0u8; 16];
            let n = s.read(&mut reply)?;
            Ok(reply[..n].starts_with(b"HTTP/1.1 200"))
        })();
        if attempt.unwrap_or(false) {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "{what} did not answer on {target}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The tc path: ferry's programs loaded (as the agent loads them) from inside the server
/// namespace, the port steered to the backend; attached only while measured.
struct TcPath {
    program: SchedClassifier,
    reply: SchedClassifier,
    /// The two links while attached.
    links: Option<(SchedClassifierLinkId, SchedClassifierLinkId)>,
    eth0: u32,
    bridge: u32,
    _dataplane: Dataplane,
    _runtime: tokio::runtime::Runtime,
    _pins: Pins,
    _cgroup: TestCgroup,
}

impl TcPath {
    fn start() -> Result<Self> {
        in_server(Self::start_here)
    }

    fn start_here() -> Result<Self> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let cgroup = TestCgroup::top_level("ferry-l4-bench")?;
        let pins = Pins::new("ferry-l4-bench")?;
        let config = DataplaneConfig {
            cgroup_root: cgroup.path().to_path_buf(),
            bpffs: pins.path().to_path_buf(),
        };
        let dataplane = runtime.block_on(async { Dataplane::start(&config) })?;
        let program_pin = |name: &str| -> PathBuf { pins.path().join("programs").join(name) };
        let program = SchedClassifier::from_pin(program_pin(program_names::L4_INGRESS))?;
        let reply = SchedClassifier::from_pin(program_pin(program_names::L4_REPLY))?;
        let index = |name: &str| -> Result<u32> {
            let c = std::ffi::CString::new(name)?;
            // SAFETY: a valid C string.
            let index = unsafe { libc::if_nametoindex(c.as_ptr()) };
            ensure!(index != 0, "no interface {name} in {SERVER_NS}");
            Ok(index)
        };
        let (eth0, bridge) = (index("eth0")?, index("br0")?);
        L4Table::open(&map_dir(pins.path()))?.set(
            Protocol::Tcp,
            TC_PORT,
            GATEWAY,
            &[L4Target {
                address: SocketAddrV4::new(BACKEND, BACKEND_PORT),
                ifindex: bridge,
                remote: false,
            }],
        )?;
        Ok(Self {
            program,
            reply,
            links: None,
            eth0,
            bridge,
            _dataplane: dataplane,
            _runtime: runtime,
            _pins: pins,
            _cgroup: cgroup,
        })
    }

    /// Attaches the programs (from inside the server's namespace, where the interface
    /// indexes mean something): the reply one too, whose tracked flows would otherwise
    /// catch the direct path's replies from the same client ports.
    fn attach(&mut self) -> Result<()> {
        let (program, reply) = (&mut self.program, &mut self.reply);
        let (eth0, bridge) = (self.eth0, self.bridge);
        self.links = Some(in_server(|| {
            Ok((reply.attach(bridge, tcx())?, program.attach(eth0, tcx())?))
        })?);
        Ok(())
    }

    fn detach(&mut self) -> Result<()> {
        if let Some((reply, ingress)) = self.links.take() {
            self.program.detach(ingress)?;
            self.reply.detach(reply)?;
        }
        Ok(())
    }
}

fn tcx() -> TcAttach {
    TcAttach::Tcx {
        attach_type: TcAttachType::Ingress,
        order: LinkOrder::default(),
    }
}

/// Runs `f` with this thread in the server's namespace, then brings it back to the one it
/// was in.
fn in_server<T>(f: impl FnOnce() -> Result<T>) -> Result<T> {
    let home = fs::File::open("/proc/thread-self/ns/net").context("opening this namespace")?;
    let path = Path::new("/run/netns").join(SERVER_NS);
    let server = fs::File::open(&path).with_context(|| format!("opening {}", path.display()))?;
    // SAFETY: setns with a namespace fd we hold; affects this thread only.
    let entered = unsafe { libc::setns(server.as_raw_fd(), libc::CLONE_NEWNET) };
    ensure!(
        entered == 0,
        "setns {SERVER_NS}: {}",
        std::io::Error::last_os_error()
    );
    let result = f();
    // SAFETY: as above.
    let back = unsafe { libc::setns(home.as_raw_fd(), libc::CLONE_NEWNET) };
    ensure!(back == 0, "setns back: {}", std::io::Error::last_os_error());
    result
}

#[derive(Clone, Copy, Debug, Default)]
struct Figures {
    rps: f64,
    mb_per_s: f64,
    /// The whole machine's CPU time per request, microseconds.
    machine_us_per_request: f64,
}

/// Busy jiffies of the whole machine (user, nice, system, irq, softirq, steal).
fn machine_busy() -> Result<u64> {
    let stat = fs::read_to_string("/proc/stat")?;
    let cpu = stat.lines().next().context("empty /proc/stat")?;
    let fields: Vec<u64> = cpu
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    ensure!(fields.len() >= 8, "odd /proc/stat: {cpu}");
    Ok(fields[0] + fields[1] + fields[2] + fields[5] + fields[6] + fields[7])
}

fn wrk(
    target: SocketAddrV4,
    path: &str,
    connections: u32,
    close: bool,
    seconds: u64,
) -> Result<Figures> {
    let before = machine_busy()?;
    let mut cmd = Command::new("wrk");
    cmd.args([
        "-t1",
        "-c",
        &connections.to_string(),
        "-d",
        &format!("{seconds}s"),
    ]);
    if close {
        cmd.args(["-H", "Connection: close"]);
    }
    cmd.arg(format!("http://{target}{path}"));
    let out = cmd
        .output()
        .context("running wrk; `./x setup` installs it")?;
    let after = machine_busy()?;
    let text = String::from_utf8_lossy(&out.stdout);
    ensure!(out.status.success(), "wrk failed:\n{text}");
    ensure!(
        !text.contains("Non-2xx") && !text.contains("Socket errors"),
        "{target}{path}: errors:\n{text}"
    );
    let rps = wrk_figure(&text, "Requests/sec:")?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let requests = (rps * seconds as f64).max(1.0);
    Ok(Figures {
        rps,
        mb_per_s: if path == "/big" { rps * BIG / 1e6 } else { 0.0 },
        machine_us_per_request: (after - before) as f64 / hz * 1e6 / requests,
    })
}

const PATHS: [&str; 4] = ["tc", "relay", "haproxy", "direct"];

fn measure(_topology: &Topology, runs: usize, seconds: u64) -> Result<()> {
    let exe = std::env::current_exe()?;
    let sibling = exe.with_file_name("ferry-ingress-bench");
    ensure!(
        sibling.exists(),
        "{} is missing; `./x bench ingress` builds it",
        sibling.display()
    );
    let work = std::env::temp_dir().join("ferry-l4-bench");
    let _ = fs::remove_dir_all(&work);
    fs::create_dir_all(&work)?;
    let mut tc = TcPath::start()?;
    let backend_port = BACKEND_PORT.to_string();
    let _backend = Server::start(
        CONTAINER_NS,
        &sibling,
        &["backend", &backend_port, &BACKEND.to_string()],
        "the backend",
    )?;
    let relay = Server::start(
        SERVER_NS,
        &sibling,
        &[
            "ferry",
            &RELAY_HTTP_PORT.to_string(),
            &backend_port,
            &SERVER.to_string(),
            &BACKEND.to_string(),
        ],
        "ferry's relay",
    )?;
    let conf = work.join("haproxy.cfg");
    fs::write(
        &conf,
        format!(
            "global\n  nbthread 1\n  maxconn 8192\n\
             defaults\n  mode tcp\n  timeout connect 5s\n  timeout client 60s\n  timeout server 60s\n\
             frontend front\n  bind {SERVER}:{HAPROXY_PORT}\n  default_backend back\n\
             backend back\n  server b {BACKEND}:{BACKEND_PORT}\n"
        ),
    )?;
    let haproxy = Server::start(
        SERVER_NS,
        Path::new("haproxy"),
        &["-db", "-f", &conf.to_string_lossy()],
        "haproxy",
    )?;
    let direct = SocketAddrV4::new(BACKEND, BACKEND_PORT);
    let target = |path: &str| match path {
        "tc" => SocketAddrV4::new(SERVER, TC_PORT),
        "relay" => SocketAddrV4::new(SERVER, RELAY_PORT),
        "haproxy" => SocketAddrV4::new(SERVER, HAPROXY_PORT),
        _ => direct,
    };
    answers(direct, "the backend")?;
    answers(target("relay"), "ferry's relay")?;
    answers(target("haproxy"), "haproxy")?;
    tc.attach()?;
    answers(target("tc"), "the tc path")?;
    tc.detach()?;
    let _servers = (relay, haproxy);

    // results[load][path][run]; load 0: new connections, 1: downloads.
    let mut results = vec![vec![Vec::<Figures>::new(); PATHS.len()]; 2];
    for run in 0..runs {
        for (l, (path, connections, close)) in [("/small", 50, true), ("/big", 4, false)]
            .into_iter()
            .enumerate()
        {
            for (p, name) in PATHS.iter().enumerate() {
                if *name == "tc" {
                    tc.attach()?;
                }
                let figures = wrk(target(name), path, connections, close, seconds);
                if *name == "tc" {
                    tc.detach()?;
                }
                let figures = figures?;
                println!(
                    "run {run} {:<12} {:<8} {:>9.0} req/s {:>7.0} MB/s {:>7.2} us machine CPU/req",
                    if l == 0 {
                        "tcp_connect"
                    } else {
                        "tcp_download"
                    },
                    name,
                    figures.rps,
                    figures.mb_per_s,
                    figures.machine_us_per_request
                );
                results[l][p].push(figures);
            }
        }
    }
    println!();
    let (t, r, h, d) = (0, 1, 2, 3);
    let rps = |f: &Figures| f.rps;
    let mbs = |f: &Figures| f.mb_per_s;
    let ratio = |l: usize, a: usize, b: usize, figure: fn(&Figures) -> f64| {
        paired(&results[l][a], &results[l][b], figure)
    };
    // A proxy's cost per connection: the machine's CPU beyond what a direct connection
    // costs it (the client and the backend are the same on every path), run by run.
    let extra = |p: usize| -> Vec<f64> {
        results[0][p]
            .iter()
            .zip(&results[0][d])
            .map(|(a, b)| (a.machine_us_per_request - b.machine_us_per_request).max(0.0))
            .collect()
    };
    let cpu_ratio = median(
        extra(t)
            .iter()
            .zip(extra(h))
            .map(|(a, b)| if b > 0.0 { a / b } else { f64::NAN })
            .filter(|r| r.is_finite())
            .collect(),
    );
    for (p, name) in PATHS.iter().enumerate() {
        println!(
            "median {name:<8} {:>9.0} conn/s {:>7.0} MB/s {:>7.2} us machine CPU/conn",
            median(results[0][p].iter().map(rps).collect()),
            median(results[1][p].iter().map(mbs).collect()),
            median(
                results[0][p]
                    .iter()
                    .map(|f| f.machine_us_per_request)
                    .collect()
            ),
        );
    }
    let ratios = [
        (
            "tcp_connect_rate_tc_vs_direct_higher_is_better",
            ratio(0, t, d, rps),
        ),
        (
            "tcp_connect_rate_tc_vs_haproxy_higher_is_better",
            ratio(0, t, h, rps),
        ),
        (
            "tcp_connect_rate_relay_vs_direct_higher_is_better",
            ratio(0, r, d, rps),
        ),
        (
            "tcp_connect_rate_relay_vs_haproxy_higher_is_better",
            ratio(0, r, h, rps),
        ),
        (
            "tcp_download_tc_vs_direct_higher_is_better",
            ratio(1, t, d, mbs),
        ),
        (
            "tcp_download_relay_vs_direct_higher_is_better",
            ratio(1, r, d, mbs),
        ),
        (
            "tcp_download_tc_vs_haproxy_higher_is_better",
            ratio(1, t, h, mbs),
        ),
        (
            "tcp_cpu_per_connection_tc_vs_haproxy_lower_is_better",
            cpu_ratio,
        ),
    ];
    for (name, value) in ratios {
        println!("ratio {name} = {value:.2}");
    }
    for (p, name) in [(t, "tc"), (r, "relay"), (h, "haproxy")] {
        println!(
            "metric tcp_cpu_per_connection_{name}_beyond_direct = {:.2} us",
            median(extra(p))
        );
    }
    let of =
        |l: usize, figure: fn(&Figures) -> f64| median(results[l][t].iter().map(figure).collect());
    println!("metric tcp_connect_rate_tc = {:.0} conn/s", of(0, rps));
    println!("metric tcp_download_tc = {:.0} MB/s", of(1, mbs));
    if results.iter().any(|l| l.iter().any(Vec::is_empty)) {
        bail!("no runs");
    }
    Ok(())
}
