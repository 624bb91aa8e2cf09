//! `cargo xtask bench ingress`: ferry's ingress against nginx 1.22 and HAProxy 2.6 (one
//! worker each, as ferry's ingress has one thread) and a direct connection, in the same run,
//! with the same backend and the same client (wrk).
//!
//! Loads, each for a few seconds per run, runs interleaved: 100-byte responses with
//! keep-alive at 50 and 200 connections (requests per second, p99 latency, the proxy's CPU
//! time per request from `/proc/PID/stat`), 10 MB downloads and 10 MB uploads (MB/s).
//! The L4 side (`tcp:` ports) is `ferry-l4-bench`, on a topology of namespaces.
//! The backend is one single-threaded process (this binary in `backend` mode) answering
//! `/small` with 100 bytes, `/big` with 10 MB and `POST /upload` by reading the body.
//!
//! Modes: `ferry-ingress-bench [--runs N] [--seconds S]` orchestrates; `ferry-ingress-bench
//! backend PORT [ADDRESS]` and `ferry-ingress-bench ferry PORT BACKEND_PORT [LISTEN
//! BACKEND]` are servers it (and `ferry-l4-bench`) starts.

use std::{
    fs,
    net::{Ipv4Addr, SocketAddrV4, TcpStream},
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use ferry_agent::{
    discovery::Records,
    ingress::{Ingress, IngressOptions},
};
use ferry_api::{
    records::{Endpoint, ServiceRecord},
    servicefile::{DnsBehaviour, LoadBalancing, Port},
};
use ferry_tests::figures::{cpu_ticks, flag, median, paired, wrk_figure};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const BACKEND_PORT: u16 = 18080;
const DIRECT_PORT: u16 = BACKEND_PORT;
const FERRY_PORT: u16 = 18081;
const NGINX_PORT: u16 = 18082;
const HAPROXY_PORT: u16 = 18083;
/// The `tcp:` port the ferry mode publishes too (`ferry-l4-bench` measures it).
const FERRY_TCP_PORT: u16 = 18084;
/// The bulk body size, both ways.
const BIG: usize = 10 * 1024 * 1024;
const SMALL: usize = 100;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("backend") => backend(&args[1..]),
        Some("ferry") => serve_ferry(&args[1..]),
        _ => orchestrate(&args),
    }
}

/// One load's figures for one path.
#[derive(Clone, Debug, Default)]
struct Figures {
    rps: f64,
    p99_us: f64,
    cpu_us_per_request: f64,
    mb_per_s: f64,
}

/// A route under test: the proxy's processes (none for direct) and its port.
struct Route {
    name: &'static str,
    children: Vec<Child>,
    /// The processes whose CPU time is the route's.
    pids: Vec<u32>,
    port: u16,
}

impl Route {
    fn start(name: &'static str, cmd: Option<&mut Command>, port: u16) -> Result<Self> {
        let mut children = Vec::new();
        if let Some(cmd) = cmd {
            children.push(
                cmd.stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::inherit())
                    .spawn()
                    .with_context(|| format!("starting {name}; `./x setup` installs the peers"))?,
            );
        }
        let path = Self {
            name,
            pids: children.iter().map(Child::id).collect(),
            children,
            port,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while get_once(port, "/small").is_err() {
            ensure!(
                Instant::now() < deadline,
                "{name} did not answer on port {port}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(path)
    }

    /// CPU ticks of the proxy's processes (and their children: nginx's worker).
    fn cpu(&self) -> Result<u64> {
        let mut total = 0;
        for pid in &self.pids {
            total += cpu_ticks(*pid)?;
            let children = format!("/proc/{0}/task/{0}/children", pid);
            for pid in fs::read_to_string(children)
                .unwrap_or_default()
                .split_whitespace()
            {
                total += cpu_ticks(pid.parse()?)?;
            }
        }
        Ok(total)
    }

    fn measure(&self, load: &Load, seconds: u64, work: &Path) -> Result<Figures> {
        let before = self.cpu()?;
        let mut cmd = Command::new("wrk");
        cmd.args([
            "-t1",
            "-c",
            &load.connections.to_string(),
            "-d",
            &format!("{seconds}s"),
            "--latency",
        ]);
        if load.upload {
            let script = work.join("upload.lua");
            fs::write(
                &script,
                format!(
                    "wrk.method = \"POST\"\nwrk.body = string.rep(\"u\", {BIG})\nwrk.headers[\"Content-Type\"] = \"application/octet-stream\"\n"
                ),
            )?;
            cmd.arg("-s").arg(&script);
        }
        cmd.arg(format!("http://127.0.0.1:{}{}", self.port, load.path));
        let out = cmd
            .output()
            .context("running wrk; `./x setup` installs it")?;
        let after = self.cpu()?;
        let text = String::from_utf8_lossy(&out.stdout);
        ensure!(out.status.success(), "wrk failed:\n{text}");
        ensure!(
            !text.contains("Non-2xx") && !text.contains("Socket errors"),
            "{} under {}: errors:\n{text}",
            self.name,
            load.name
        );
        let rps = wrk_figure(&text, "Requests/sec:")?;
        let requests = rps * seconds as f64;
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        let cpu_us = (after - before) as f64 / hz * 1e6;
        let body = if load.path == "/big" || load.upload {
            BIG
        } else {
            SMALL
        };
        Ok(Figures {
            rps,
            p99_us: p99_us(&text)?,
            cpu_us_per_request: cpu_us / requests.max(1.0),
            mb_per_s: rps * body as f64 / 1e6,
        })
    }
}

impl Drop for Route {
    fn drop(&mut self) {
        for child in &mut self.children {
            // nginx's master takes its worker down on SIGTERM (SIGKILL would orphan it).
            // SAFETY: kill with a pid we started.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let _ = child.wait();
        }
    }
}

struct Load {
    name: &'static str,
    path: &'static str,
    connections: u32,
    upload: bool,
}

const LOADS: [Load; 4] = [
    Load {
        name: "small_c50",
        path: "/small",
        connections: 50,
        upload: false,
    },
    Load {
        name: "small_c200",
        path: "/small",
        connections: 200,
        upload: false,
    },
    Load {
        name: "download_10mb",
        path: "/big",
        connections: 4,
        upload: false,
    },
    Load {
        name: "upload_10mb",
        path: "/upload",
        connections: 4,
        upload: true,
    },
];

fn orchestrate(args: &[String]) -> Result<()> {
    let runs: u64 = flag(args, "--runs")?.unwrap_or(5);
    let seconds: u64 = flag(args, "--seconds")?.unwrap_or(4);
    let work = std::env::temp_dir().join("ferry-ingress-bench");
    let _ = fs::remove_dir_all(&work);
    fs::create_dir_all(&work)?;
    let exe = std::env::current_exe()?;
    let _backend = Route::start(
        "backend",
        Some(Command::new(&exe).args(["backend", &BACKEND_PORT.to_string()])),
        BACKEND_PORT,
    )?;
    let direct = Route {
        name: "direct",
        children: Vec::new(),
        pids: Vec::new(),
        port: DIRECT_PORT,
    };
    let ferry = Route::start(
        "ferry",
        Some(Command::new(&exe).args([
            "ferry",
            &FERRY_PORT.to_string(),
            &BACKEND_PORT.to_string(),
        ])),
        FERRY_PORT,
    )?;
    let nginx = Route::start("nginx", Some(&mut nginx_command(&work)?), NGINX_PORT)?;
    let haproxy = Route::start("haproxy", Some(&mut haproxy_command(&work)?), HAPROXY_PORT)?;
    let paths = [&ferry, &nginx, &haproxy, &direct];
    // results[load][path][run]
    let mut results = vec![vec![Vec::<Figures>::new(); paths.len()]; LOADS.len()];
    for run in 0..runs {
        for (l, load) in LOADS.iter().enumerate() {
            // Interleaved, so drift on the shared machine touches every path alike.
            for (p, path) in paths.iter().enumerate() {
                let f = path.measure(load, seconds, &work)?;
                println!(
                    "run {run} {:<14} {:<8} {:>9.0} req/s  p99 {:>7.0} us  {:>6.2} us CPU/req  {:>7.0} MB/s",
                    load.name, path.name, f.rps, f.p99_us, f.cpu_us_per_request, f.mb_per_s
                );
                results[l][p].push(f);
            }
        }
    }
    println!();
    for (l, load) in LOADS.iter().enumerate() {
        for (p, path) in paths.iter().enumerate() {
            let of = |f: fn(&Figures) -> f64| median(results[l][p].iter().map(f).collect());
            println!(
                "median {:<14} {:<8} {:>9.0} req/s  p99 {:>7.0} us  {:>6.2} us CPU/req  {:>7.0} MB/s",
                load.name,
                path.name,
                of(|f| f.rps),
                of(|f| f.p99_us),
                of(|f| f.cpu_us_per_request),
                of(|f| f.mb_per_s)
            );
        }
    }
    let (f, n, h, d) = (0, 1, 2, 3);
    let ratio = |l: usize, a: usize, b: usize, figure: fn(&Figures) -> f64| {
        paired(&results[l][a], &results[l][b], figure)
    };
    let rps = |x: &Figures| x.rps;
    let p99 = |x: &Figures| x.p99_us;
    let cpu = |x: &Figures| x.cpu_us_per_request;
    let mbs = |x: &Figures| x.mb_per_s;
    for (l, c) in [(0, 50), (1, 200)] {
        println!(
            "ratio rps_c{c}_vs_nginx_higher_is_better = {:.2}",
            ratio(l, f, n, rps)
        );
        println!(
            "ratio rps_c{c}_vs_haproxy_higher_is_better = {:.2}",
            ratio(l, f, h, rps)
        );
        println!(
            "ratio rps_c{c}_vs_direct_higher_is_better = {:.2}",
            ratio(l, f, d, rps)
        );
        println!(
            "ratio p99_c{c}_vs_nginx_lower_is_better = {:.2}",
            ratio(l, f, n, p99)
        );
        println!(
            "ratio cpu_per_request_c{c}_vs_nginx_lower_is_better = {:.2}",
            ratio(l, f, n, cpu)
        );
        println!(
            "ratio cpu_per_request_c{c}_vs_haproxy_lower_is_better = {:.2}",
            ratio(l, f, h, cpu)
        );
    }
    for (l, what) in [(2, "download"), (3, "upload")] {
        println!(
            "ratio {what}_mbps_vs_direct_higher_is_better = {:.2}",
            ratio(l, f, d, mbs)
        );
        println!(
            "ratio {what}_mbps_vs_nginx_higher_is_better = {:.2}",
            ratio(l, f, n, mbs)
        );
        println!(
            "ratio {what}_mbps_vs_haproxy_higher_is_better = {:.2}",
            ratio(l, f, h, mbs)
        );
    }
    let of =
        |l: usize, figure: fn(&Figures) -> f64| median(results[l][f].iter().map(figure).collect());
    println!("metric ferry_rps_c50 = {:.0} req/s", of(0, rps));
    println!("metric ferry_p99_c50 = {:.0} us", of(0, p99));
    println!("metric ferry_cpu_per_request_c50 = {:.2} us", of(0, cpu));
    println!("metric ferry_download_10mb = {:.0} MB/s", of(2, mbs));
    println!("metric ferry_upload_10mb = {:.0} MB/s", of(3, mbs));
    Ok(())
}

/// The 99% line of wrk's latency distribution, in microseconds.
fn p99_us(text: &str) -> Result<f64> {
    let value = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("99%"))
        .map(str::trim)
        .with_context(|| format!("wrk printed no 99% latency:\n{text}"))?;
    let (number, scale) = if let Some(v) = value.strip_suffix("us") {
        (v, 1.0)
    } else if let Some(v) = value.strip_suffix("ms") {
        (v, 1e3)
    } else if let Some(v) = value.strip_suffix('s') {
        (v, 1e6)
    } else {
        bail!("odd latency {value}");
    };
    Ok(number.parse::<f64>()? * scale)
}

fn get_once(port: u16, path: &str) -> std::io::Result<()> {
    use std::io::{Read, Write};
    let mut s = TcpStream::connect(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n"
    )?;
    // The status line is enough: the backend keeps connections open whatever is asked.
    let mut reply = [0u8; 64];
    let n = s.read(&mut reply)?;
    if reply[..n].starts_with(b"HTTP/1.1 200") {
        Ok(())
    } else {
        Err(std::io::Error::other(
            String::from_utf8_lossy(&reply[..n]).into_owned(),
        ))
    }
}

fn nginx_command(work: &Path) -> Result<Command> {
    let conf = work.join("nginx.conf");
    fs::create_dir_all(work.join("nginx"))?;
    fs::write(
        &conf,
        format!(
            "daemon off;\nworker_processes 1;\npid {work}/nginx.pid;\nerror_log stderr error;\n\
             events {{ worker_connections 4096; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {work}/nginx;\n  proxy_temp_path {work}/nginx;\n\
               upstream backend {{ server 127.0.0.1:{BACKEND_PORT}; keepalive 256; }}\n\
               server {{\n    listen 127.0.0.1:{NGINX_PORT} backlog=4096;\n    client_max_body_size 0;\n\
                 location / {{\n      proxy_pass http://backend;\n      proxy_http_version 1.1;\n\
                   proxy_set_header Connection \"\";\n      proxy_request_buffering off;\n      proxy_max_temp_file_size 0;\n    }}\n  }}\n}}\n",
            work = work.display()
        ),
    )?;
    let mut cmd = Command::new("nginx");
    cmd.arg("-c").arg(&conf).arg("-p").arg(work);
    Ok(cmd)
}

fn haproxy_command(work: &Path) -> Result<Command> {
    let conf = work.join("haproxy.cfg");
    fs::write(
        &conf,
        format!(
            "global\n  nbthread 1\n  maxconn 8192\n\
             defaults\n  mode http\n  timeout connect 5s\n  timeout client 60s\n  timeout server 60s\n  option http-keep-alive\n\
             frontend front\n  bind 127.0.0.1:{HAPROXY_PORT}\n  default_backend back\n\
             backend back\n  http-reuse always\n  server b 127.0.0.1:{BACKEND_PORT}\n"
        ),
    )?;
    let mut cmd = Command::new("haproxy");
    cmd.arg("-db").arg("-f").arg(&conf);
    Ok(cmd)
}

/// ferry's ingress alone, publishing `PORT` (HTTP) and the `tcp:` port for one service
/// whose one container is the backend, on loopback unless `LISTEN BACKEND` name addresses
/// (the L4 benchmark runs it in a namespace).
fn serve_ferry(args: &[String]) -> Result<()> {
    let (port, backend_port, listen, backend) = match args {
        [port, backend_port] => (port, backend_port, Ipv4Addr::LOCALHOST, Ipv4Addr::LOCALHOST),
        [port, backend_port, listen, backend] => {
            (port, backend_port, listen.parse()?, backend.parse()?)
        }
        _ => bail!("usage: ferry-ingress-bench ferry PORT BACKEND_PORT [LISTEN BACKEND]"),
    };
    let (port, backend_port): (u16, u16) = (port.parse()?, backend_port.parse()?);
    let records = Records::default();
    records.replace([ServiceRecord {
        stack: "bench".into(),
        service: "web".into(),
        address: None,
        serving: Some(1),
        dns_behaviour: DnsBehaviour::Versioned,
        load_balancing: LoadBalancing::RoundRobin,
        ports: vec![backend_port],
        published: vec![
            Port {
                container: backend_port,
                http: Some(port),
                ..Port::default()
            },
            Port {
                container: backend_port,
                tcp: Some(FERRY_TCP_PORT),
                ..Port::default()
            },
        ],
        traffic_matches: Vec::new(),
        generations: [(
            1,
            vec![Endpoint {
                address: backend,
                server: "bench".into(),
                container: "backend".into(),
            }],
        )]
        .into_iter()
        .collect(),
    }]);
    let _ingress = Ingress::start(
        IngressOptions {
            address: listen,
            sockets: None,
            kernel: None,
        },
        records,
        ferry_agent::ingress::Certificates::default(),
    )?;
    loop {
        std::thread::park();
    }
}

/// The shared backend: one thread, keep-alive, `/small`, `/big`, `POST /upload`; on
/// loopback unless an address follows the port.
fn backend(args: &[String]) -> Result<()> {
    let port: u16 = args
        .first()
        .context("usage: backend PORT [ADDRESS]")?
        .parse()?;
    let address: Ipv4Addr = match args.get(1) {
        Some(a) => a.parse()?,
        None => Ipv4Addr::LOCALHOST,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(SocketAddrV4::new(address, port)).await?;
        let big: &'static [u8] = Box::leak(vec![b'b'; BIG].into_boxed_slice());
        loop {
            let (stream, _) = listener.accept().await?;
            tokio::spawn(async move {
                let _ = answer(stream, big).await;
            });
        }
    })
}

async fn answer(mut stream: tokio::net::TcpStream, big: &'static [u8]) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let mut buf = vec![0u8; 64 * 1024];
    let mut filled = 0;
    loop {
        let end = loop {
            if let Some(i) = buf[..filled].windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            if filled == buf.len() {
                return Ok(());
            }
            let n = stream.read(&mut buf[filled..]).await?;
            if n == 0 {
                return Ok(());
            }
            filled += n;
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
        let path = head.split_whitespace().nth(1).unwrap_or("/").to_string();
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        buf.copy_within(end..filled, 0);
        filled -= end;
        let mut left = length;
        let now = left.min(filled);
        buf.copy_within(now..filled, 0);
        filled -= now;
        left -= now;
        while left > 0 {
            let want = left.min(buf.len());
            let n = stream.read(&mut buf[..want]).await?;
            if n == 0 {
                return Ok(());
            }
            left -= n;
        }
        let body: &[u8] = match path.as_str() {
            "/big" => big,
            _ => &big[..SMALL],
        };
        let close = head.contains("connection: close");
        let reply = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\n{}\r\n",
            body.len(),
            if close { "Connection: close\r\n" } else { "" }
        );
        stream.write_all(reply.as_bytes()).await?;
        stream.write_all(body).await?;
        if close {
            return Ok(());
        }
    }
}
