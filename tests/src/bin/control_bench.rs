//! `cargo xtask bench control`: how long a write takes to reach every watcher, central
//! against etcd 3.4 in the same run.
//!
//! Central: one server joins; each round deploys a generation of a one-service stack (not
//! timed), then the clock starts and the server reports it healthy, which flips
//! `stacks/bench` to serve it: that flip is the write. etcd: one member on loopback; the
//! write is a put of `bench/serving` through its HTTP/JSON gateway. Both writes are durable
//! before they are acknowledged (central commits with fsync; etcd's raft log does too).
//! Watchers are HTTP/1.1 streams from this one process: central's `GET /v1/watch` over
//! TLS, etcd's `POST /v3/watch`. A round's figure is the time from the start of the write
//! to the moment the last watcher has it; rounds alternate between the two servers.
//!
//! Prints one line per watcher count and ends with `metric ...` and `ratio ...` lines.

use std::{
    collections::BTreeMap,
    io::Write as _,
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use base64::{Engine as _, engine::general_purpose::STANDARD as B64};
use ferry_api::{
    client::{Client, Trust},
    types::{JoinRequest, StatusReport},
};
use ferry_tests::{central::Central, figures::flag};
use futures_util::StreamExt as _;
use tokio::sync::mpsc;

/// What a watcher saw: which server, which value, when.
#[derive(Clone, Copy, Debug)]
struct Seen {
    etcd: bool,
    value: u64,
    at: Instant,
}

#[derive(Clone, Copy, Debug, Default)]
struct Summary {
    p50_ms: f64,
    p99_ms: f64,
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let writes = flag(&args, "--writes")?.unwrap_or(40);
    let counts: Vec<usize> = match args.iter().position(|a| a == "--watchers") {
        Some(i) => args
            .get(i + 1)
            .context("--watchers needs a list such as 10,100,1000")?
            .split(',')
            .map(|n| n.parse().context("--watchers takes numbers"))
            .collect::<Result<_>>()?,
        None => vec![10, 100, 1000],
    };
    raise_fd_limit()?;
    // etcd's plain-HTTP client is built by the same reqwest, which wants a provider chosen.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run(&counts, writes))
}

/// A thousand streams need more descriptors than the usual soft limit of 1024.
fn raise_fd_limit() -> Result<()> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed.
    unsafe {
        ensure!(
            libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0,
            "getrlimit failed"
        );
        limit.rlim_cur = limit.rlim_max.min(65536);
        ensure!(
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0,
            "setrlimit failed"
        );
    }
    Ok(())
}

async fn run(counts: &[usize], writes: usize) -> Result<()> {
    let scratch = std::env::temp_dir().join(format!("ferry-bench-control-{}", std::process::id()));
    std::fs::create_dir_all(&scratch)?;
    let etcd = Etcd::start(&scratch.join("etcd"))?;
    let central = Central::start(&scratch.join("central"), "127.0.0.1")?;
    let bench = CentralBench::new(&central).await?;
    let (tx, mut rx) = mpsc::unbounded_channel::<(usize, Seen)>();
    let mut watchers = Vec::new();
    let mut results: BTreeMap<usize, (Summary, Summary, u64, u64)> = BTreeMap::new();
    let mut etcd_value = 0u64;
    for &count in counts {
        // Add watchers up to `count` on each server, then wait for every one to be live.
        let have = watchers.len() / 2;
        let (ready_tx, mut ready_rx) = mpsc::unbounded_channel::<()>();
        for id in have..count {
            watchers.push(tokio::spawn(central_watcher(
                bench.admin.clone(),
                bench.revision,
                id,
                tx.clone(),
                ready_tx.clone(),
            )));
            watchers.push(tokio::spawn(etcd_watcher(
                etcd.url.clone(),
                id,
                tx.clone(),
                ready_tx.clone(),
            )));
            if id % 50 == 49 {
                // Let handshakes finish in waves rather than all at once.
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        drop(ready_tx);
        for _ in 0..(count - have) * 2 {
            tokio::time::timeout(Duration::from_secs(60), ready_rx.recv())
                .await
                .context("watchers did not all connect within 60 s")?
                .context("a watcher failed to connect")?;
        }
        let (mut central_ms, mut etcd_ms) = (Vec::new(), Vec::new());
        for _ in 0..writes {
            let generation = bench.deploy().await?;
            // The deploy also touches the watched key; let that pass before timing.
            tokio::time::sleep(Duration::from_millis(150)).await;
            drain(&mut rx);
            let t0 = Instant::now();
            bench.flip(generation).await?;
            central_ms.push(until_all(&mut rx, count, false, generation, t0).await?);

            etcd_value += 1;
            drain(&mut rx);
            let t0 = Instant::now();
            etcd.put(etcd_value).await?;
            etcd_ms.push(until_all(&mut rx, count, true, etcd_value, t0).await?);
        }
        if args_have("--samples") {
            println!("samples central {count}: {central_ms:.1?}");
            println!("samples etcd {count}: {etcd_ms:.1?}");
        }
        let (c, e) = (summary(&mut central_ms), summary(&mut etcd_ms));
        let (rss_c, rss_e) = (rss_kib(central.pid())?, rss_kib(etcd.child.id())?);
        println!(
            "watchers={count:<5} central all-watchers p50 {:>6.1} ms p99 {:>6.1} ms rss {:>4} MiB | etcd p50 {:>6.1} ms p99 {:>6.1} ms rss {:>4} MiB ({writes} writes each)",
            c.p50_ms,
            c.p99_ms,
            rss_c / 1024,
            e.p50_ms,
            e.p99_ms,
            rss_e / 1024
        );
        std::io::stdout().flush()?;
        results.insert(count, (c, e, rss_c, rss_e));
    }
    for w in &watchers {
        w.abort();
    }
    for (count, (c, e, rss_c, rss_e)) in &results {
        println!(
            "metric flip_p50_{count}_watchers_central = {:.1} ms",
            c.p50_ms
        );
        println!(
            "metric flip_p99_{count}_watchers_central = {:.1} ms",
            c.p99_ms
        );
        println!("metric flip_p50_{count}_watchers_etcd = {:.1} ms", e.p50_ms);
        println!("metric flip_p99_{count}_watchers_etcd = {:.1} ms", e.p99_ms);
        println!(
            "ratio flip_p99_{count}_watchers_vs_etcd_lower_is_better = {:.2}",
            c.p99_ms / e.p99_ms
        );
        println!("metric rss_{count}_watchers_central = {} MiB", rss_c / 1024);
        println!("metric rss_{count}_watchers_etcd = {} MiB", rss_e / 1024);
        println!(
            "ratio rss_{count}_watchers_vs_etcd_lower_is_better = {:.2}",
            *rss_c as f64 / *rss_e as f64
        );
    }
    drop(central);
    drop(etcd);
    let _ = std::fs::remove_dir_all(&scratch);
    Ok(())
}

fn args_have(name: &str) -> bool {
    std::env::args().any(|a| a == name)
}

fn drain(rx: &mut mpsc::UnboundedReceiver<(usize, Seen)>) {
    while rx.try_recv().is_ok() {}
}

/// Waits until `count` distinct watchers of one server saw `value`; returns the time from
/// `t0` to the last of them, in milliseconds.
async fn until_all(
    rx: &mut mpsc::UnboundedReceiver<(usize, Seen)>,
    count: usize,
    etcd: bool,
    value: u64,
    t0: Instant,
) -> Result<f64> {
    let mut seen = vec![false; count];
    let mut left = count;
    let mut last = t0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while left > 0 {
        let (id, s) = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .with_context(|| {
                let who = if etcd { "etcd" } else { "central" };
                format!("{left} of {count} {who} watchers did not see {value} within 30 s")
            })?
            .context("every watcher ended")?;
        if s.etcd == etcd && s.value == value && id < count && !seen[id] {
            seen[id] = true;
            left -= 1;
            last = last.max(s.at);
        }
    }
    Ok(last.duration_since(t0).as_secs_f64() * 1000.0)
}

fn summary(ms: &mut [f64]) -> Summary {
    ms.sort_by(f64::total_cmp);
    let at = |q: f64| ms[((ms.len() as f64 * q).ceil() as usize).clamp(1, ms.len()) - 1];
    Summary {
        p50_ms: at(0.50),
        p99_ms: at(0.99),
    }
}

fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .with_context(|| format!("no VmRSS in /proc/{pid}/status"))
}

/// Central with one joined server and the `bench` stack deployed once.
struct CentralBench {
    admin: Client,
    agent: Client,
    archive: Vec<u8>,
    revision: u64,
}

impl CentralBench {
    async fn new(central: &Central) -> Result<Self> {
        let trust = Trust::Fingerprint(central.ca_fingerprint.clone());
        let admin = Client::new(&central.url, &central.admin_token, trust.clone())?;
        let joiner = Client::new(&central.url, &central.join_token, trust.clone())?;
        let joined = joiner
            .join(&JoinRequest {
                name: "bench".into(),
                wireguard_public_key: B64.encode([7u8; 32]),
                wireguard_endpoint: "127.0.0.1:51820".parse()?,
                memory_bytes: None,
            })
            .await?;
        let agent = Client::new(&central.url, &joined.agent_token, trust)?;
        let mut bench = Self {
            admin,
            agent,
            archive: archive()?,
            revision: 0,
        };
        let first = bench.deploy().await?;
        bench.flip(first).await?;
        bench.revision = bench.admin.list("stacks/bench").await?.revision;
        Ok(bench)
    }

    async fn deploy(&self) -> Result<u64> {
        Ok(self
            .admin
            .deploy("bench", self.archive.clone())
            .await?
            .generation)
    }

    /// The timed write: the only server reports healthy, so central flips to `generation`.
    async fn flip(&self, generation: u64) -> Result<()> {
        let report = StatusReport {
            healthy: true,
            detail: String::new(),
        };
        self.agent
            .report_status("bench", "bench", generation, &report)
            .await?;
        Ok(())
    }
}

fn archive() -> Result<Vec<u8>> {
    let yml = b"services:\n  api:\n    image: bench/api:1\n";
    let mut tar = tar::Builder::new(flate2::write::GzEncoder::new(
        Vec::new(),
        flate2::Compression::fast(),
    ));
    let mut header = tar::Header::new_gnu();
    header.set_size(yml.len() as u64);
    header.set_mode(0o644);
    header.set_cksum();
    tar.append_data(&mut header, "service.yml", &yml[..])?;
    Ok(tar.into_inner()?.finish()?)
}

async fn central_watcher(
    admin: Client,
    after: u64,
    id: usize,
    tx: mpsc::UnboundedSender<(usize, Seen)>,
    ready: mpsc::UnboundedSender<()>,
) -> Result<()> {
    let stream = admin.watch("stacks/bench", after).await?;
    let _ = ready.send(());
    let mut stream = Box::pin(stream);
    while let Some(line) = stream.next().await {
        let at = Instant::now();
        for event in line?.events {
            let serving = event
                .value
                .as_ref()
                .and_then(|v| v.get("serving")?.as_u64());
            if let Some(value) = serving {
                let _ = tx.send((
                    id,
                    Seen {
                        etcd: false,
                        value,
                        at,
                    },
                ));
            }
        }
    }
    Ok(())
}

const ETCD_KEY: &str = "bench/serving";

async fn etcd_watcher(
    url: String,
    id: usize,
    tx: mpsc::UnboundedSender<(usize, Seen)>,
    ready: mpsc::UnboundedSender<()>,
) -> Result<()> {
    let http = reqwest::Client::new();
    let body = serde_json::json!({ "create_request": { "key": B64.encode(ETCD_KEY) } });
    let response = http
        .post(format!("{url}/v3/watch"))
        .body(body.to_string())
        .send()
        .await?
        .error_for_status()?;
    let mut stream = response.bytes_stream();
    let mut buffer = Vec::new();
    while let Some(chunk) = stream.next().await {
        let at = Instant::now();
        buffer.extend_from_slice(&chunk?);
        while let Some(end) = buffer.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buffer.drain(..=end).collect();
            let message: serde_json::Value = match serde_json::from_slice(&line) {
                Ok(m) => m,
                Err(_) => continue,
            };
            let result = &message["result"];
            if result["created"].as_bool() == Some(true) {
                let _ = ready.send(());
            }
            for event in result["events"].as_array().into_iter().flatten() {
                let value = event["kv"]["value"]
                    .as_str()
                    .and_then(|v| B64.decode(v).ok())
                    .and_then(|v| String::from_utf8(v).ok()?.parse().ok());
                if let Some(value) = value {
                    let _ = tx.send((
                        id,
                        Seen {
                            etcd: true,
                            value,
                            at,
                        },
                    ));
                }
            }
        }
    }
    Ok(())
}

/// One etcd member on loopback, killed on drop.
struct Etcd {
    child: Child,
    url: String,
    http: reqwest::Client,
    _dir: PathBuf,
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl Etcd {
    fn start(dir: &Path) -> Result<Self> {
        let (client, peer) = (free_port()?, free_port()?);
        let url = format!("http://127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let child = Command::new("etcd")
            .args(["--name", "bench", "--data-dir"])
            .arg(dir)
            .args([
                "--listen-client-urls",
                &url,
                "--advertise-client-urls",
                &url,
            ])
            .args(["--listen-peer-urls", &peer_url])
            .args(["--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &format!("bench={peer_url}")])
            .args(["--log-level", "error", "--logger", "zap"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting etcd (Debian's etcd-server; `./x setup` installs it)")?;
        let etcd = Self {
            child,
            url,
            http: reqwest::Client::new(),
            _dir: dir.to_path_buf(),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let up = std::net::TcpStream::connect(("127.0.0.1", client)).is_ok();
            if up {
                return Ok(etcd);
            }
            if Instant::now() > deadline {
                bail!("etcd did not listen on {} within 30 s", etcd.url);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    async fn put(&self, value: u64) -> Result<()> {
        let body = serde_json::json!({
            "key": B64.encode(ETCD_KEY),
            "value": B64.encode(value.to_string()),
        });
        self.http
            .post(format!("{}/v3/kv/put", self.url))
            .body(body.to_string())
            .send()
            .await?
            .error_for_status()
            .context("etcd refused the put")?;
        Ok(())
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
