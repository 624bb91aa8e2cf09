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
//! The same again for central on etcd: a three-member cluster on loopback, central's
//! watchers on one replica, then spread over two replicas (the write goes through the
//! first), against etcd itself (the same cluster, its watchers spread over the members,
//! the put sent to the first).
//!
//! Prints one line per watcher count and ends with `metric ...` and `ratio ...` lines.

use std::{
    collections::BTreeMap,
    io::Write as _,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, ensure};
use base64::{Engine as _, engine::general_purpose::STANDARD as B64};
use ferry_api::{
    client::{Client, Trust},
    types::{JoinRequest, StatusReport},
};
use ferry_tests::{central::Central, etcd::EtcdCluster, figures::flag};
use futures_util::StreamExt as _;
use tokio::sync::mpsc;

/// Whose watchers: each round times one of them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Subject {
    /// Central on SQLite.
    Central,
    /// etcd, one member.
    Etcd,
    /// Central on the three-member etcd cluster.
    CentralOnEtcd,
    /// The three-member etcd cluster itself.
    EtcdCluster,
}

/// What a watcher saw: whose, which value, when.
#[derive(Clone, Copy, Debug)]
struct Seen {
    from: Subject,
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
    let tag = std::process::id();
    let etcd = EtcdCluster::start(&format!("bench-one-{tag}"), 1).await?;
    let central = Central::start(&scratch.join("central"), "127.0.0.1")?;
    let bench = CentralBench::new(&central).await?;
    let http = reqwest::Client::new();
    let (tx, mut rx) = mpsc::unbounded_channel::<(usize, Seen)>();
    let mut watchers = Vec::new();
    let mut results: BTreeMap<usize, (Summary, Summary, u64, u64)> = BTreeMap::new();
    let mut etcd_value = 0u64;
    for &count in counts {
        // Add watchers up to `count` on each server.
        let have = watchers.len() / 2;
        watchers.extend(
            pairs(
                have..count,
                (|_| bench.admin.clone(), Subject::Central),
                (|_| etcd.client_url(0), Subject::Etcd),
                bench.revision,
                &tx,
            )
            .await?,
        );
        let (mut central_ms, mut etcd_ms) = (Vec::new(), Vec::new());
        for _ in 0..writes {
            let generation = bench.deploy().await?;
            // The deploy also touches the watched key; let that pass before timing.
            tokio::time::sleep(Duration::from_millis(150)).await;
            drain(&mut rx);
            let t0 = Instant::now();
            bench.flip(generation).await?;
            central_ms.push(until_all(&mut rx, count, Subject::Central, generation, t0).await?);

            etcd_value += 1;
            drain(&mut rx);
            let t0 = Instant::now();
            etcd_put(&http, &etcd.client_url(0), etcd_value).await?;
            etcd_ms.push(until_all(&mut rx, count, Subject::Etcd, etcd_value, t0).await?);
        }
        if args_have("--samples") {
            println!("samples central {count}: {central_ms:.1?}");
            println!("samples etcd {count}: {etcd_ms:.1?}");
        }
        let (c, e) = (summary(&mut central_ms), summary(&mut etcd_ms));
        let etcd_pid = etcd.pid(0).context("etcd is not running")?;
        let (rss_c, rss_e) = (rss_kib(central.pid())?, rss_kib(etcd_pid)?);
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
    drop(watchers);
    drop(central);
    drop(etcd);
    let on_etcd = on_etcd(counts, writes, &scratch, &tx, &mut rx).await?;
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
    for (count, figures) in &on_etcd {
        figures.print(*count);
    }
    let _ = std::fs::remove_dir_all(&scratch);
    Ok(())
}

/// One watcher count's figures for central on etcd.
struct OnEtcd {
    one_replica: Summary,
    two_replicas: Summary,
    cluster: Summary,
    rss_central: u64,
    rss_member: u64,
}

impl OnEtcd {
    fn print(&self, count: usize) {
        let named = [
            ("central_on_etcd", &self.one_replica),
            ("central_on_etcd_two_replicas", &self.two_replicas),
            ("etcd_cluster", &self.cluster),
        ];
        for (name, s) in named {
            println!(
                "metric flip_p50_{count}_watchers_{name} = {:.1} ms",
                s.p50_ms
            );
            println!(
                "metric flip_p99_{count}_watchers_{name} = {:.1} ms",
                s.p99_ms
            );
        }
        for (name, s) in &named[..2] {
            println!(
                "ratio flip_p99_{count}_watchers_{name}_vs_etcd_cluster_lower_is_better = {:.2}",
                s.p99_ms / self.cluster.p99_ms
            );
        }
        println!(
            "metric rss_{count}_watchers_central_on_etcd = {} MiB",
            self.rss_central / 1024
        );
        println!(
            "metric rss_{count}_watchers_etcd_member = {} MiB",
            self.rss_member / 1024
        );
        println!(
            "ratio rss_{count}_watchers_central_on_etcd_vs_etcd_member_lower_is_better = {:.2}",
            self.rss_central as f64 / self.rss_member as f64
        );
    }
}

/// Central on a three-member etcd cluster with two replicas, against the cluster itself:
/// for each count, watchers on the first replica, then spread over both (each set made
/// for its rounds and closed after), and as many on the cluster spread over its members.
async fn on_etcd(
    counts: &[usize],
    writes: usize,
    scratch: &Path,
    tx: &mpsc::UnboundedSender<(usize, Seen)>,
    rx: &mut mpsc::UnboundedReceiver<(usize, Seen)>,
) -> Result<BTreeMap<usize, OnEtcd>> {
    let tag = std::process::id();
    let cluster = EtcdCluster::start(&format!("bench-three-{tag}"), 3).await?;
    let mut central =
        Central::start_on_etcd(&scratch.join("on-etcd"), "127.0.0.1", &cluster.url())?;
    let first = central.url.clone();
    let second = central.add_replica()?;
    let bench = CentralBench::new(&central).await?;
    let trust = Trust::Fingerprint(central.ca_fingerprint.clone());
    let replicas = [
        Client::new(&first, &central.admin_token, trust.clone())?,
        Client::new(&second, &central.admin_token, trust)?,
    ];
    let http = reqwest::Client::new();
    let mut value = 0u64;
    let mut results = BTreeMap::new();
    for &count in counts {
        let mut timed = Vec::new();
        for spread in [1, 2] {
            // Watching from now, as a client that has just listed: a new set of watchers
            // does not read the history of every earlier round first.
            let now = bench.admin.list("stacks/bench").await?.revision;
            let watchers = pairs(
                0..count,
                (|id| replicas[id % spread].clone(), Subject::CentralOnEtcd),
                (
                    |id| cluster.client_url(id % cluster.size()),
                    Subject::EtcdCluster,
                ),
                now,
                tx,
            )
            .await?;
            let (mut central_ms, mut cluster_ms) = (Vec::new(), Vec::new());
            for _ in 0..writes {
                let generation = bench.deploy().await?;
                tokio::time::sleep(Duration::from_millis(150)).await;
                drain(rx);
                let t0 = Instant::now();
                bench.flip(generation).await?;
                central_ms
                    .push(until_all(rx, count, Subject::CentralOnEtcd, generation, t0).await?);
                value += 1;
                drain(rx);
                let t0 = Instant::now();
                etcd_put(&http, &cluster.client_url(0), value).await?;
                cluster_ms.push(until_all(rx, count, Subject::EtcdCluster, value, t0).await?);
            }
            timed.push((summary(&mut central_ms), summary(&mut cluster_ms)));
            for w in &watchers {
                w.abort();
            }
        }
        let member_pids: Vec<u32> = (0..cluster.size()).filter_map(|i| cluster.pid(i)).collect();
        let mut member_rss = 0;
        for pid in &member_pids {
            member_rss += rss_kib(*pid)?;
        }
        let figures = OnEtcd {
            one_replica: timed[0].0,
            two_replicas: timed[1].0,
            // The cluster's watchers are the same in both halves: the worse of the two.
            cluster: if timed[0].1.p99_ms >= timed[1].1.p99_ms {
                timed[0].1
            } else {
                timed[1].1
            },
            rss_central: rss_kib(central.pid())?,
            rss_member: member_rss / member_pids.len().max(1) as u64,
        };
        println!(
            "watchers={count:<5} central on etcd p50 {:>6.1} ms p99 {:>6.1} ms, on two replicas p50 {:>6.1} ms p99 {:>6.1} ms rss {:>4} MiB | etcd cluster p50 {:>6.1} ms p99 {:>6.1} ms rss {:>4} MiB a member ({writes} writes each)",
            figures.one_replica.p50_ms,
            figures.one_replica.p99_ms,
            figures.two_replicas.p50_ms,
            figures.two_replicas.p99_ms,
            figures.rss_central / 1024,
            figures.cluster.p50_ms,
            figures.cluster.p99_ms,
            figures.rss_member / 1024,
        );
        std::io::stdout().flush()?;
        results.insert(count, figures);
    }
    Ok(results)
}

/// Starts a central watcher (through the client `central` gives for its id) and an etcd
/// one (on the member URL `etcd` gives) for each id in `ids`, tagged with their subjects,
/// and waits until every one is live.
async fn pairs(
    ids: std::ops::Range<usize>,
    (central, central_subject): (impl Fn(usize) -> Client, Subject),
    (etcd, etcd_subject): (impl Fn(usize) -> String, Subject),
    after: u64,
    tx: &mpsc::UnboundedSender<(usize, Seen)>,
) -> Result<Vec<tokio::task::JoinHandle<Result<()>>>> {
    let (ready_tx, mut ready_rx) = mpsc::unbounded_channel::<()>();
    let mut watchers = Vec::new();
    for id in ids {
        watchers.push(tokio::spawn(central_watcher(
            central(id),
            after,
            (id, central_subject),
            tx.clone(),
            ready_tx.clone(),
        )));
        watchers.push(tokio::spawn(etcd_watcher(
            etcd(id),
            (id, etcd_subject),
            tx.clone(),
            ready_tx.clone(),
        )));
        if id % 50 == 49 {
            // Let handshakes finish in waves rather than all at once.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    drop(ready_tx);
    for _ in 0..watchers.len() {
        tokio::time::timeout(Duration::from_secs(60), ready_rx.recv())
            .await
            .context("watchers did not all connect within 60 s")?
            .context("a watcher failed to connect")?;
    }
    Ok(watchers)
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
    from: Subject,
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
                format!("{left} of {count} {from:?} watchers did not see {value} within 30 s")
            })?
            .context("every watcher ended")?;
        if s.from == from && s.value == value && id < count && !seen[id] {
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
    (id, from): (usize, Subject),
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
                let _ = tx.send((id, Seen { from, value, at }));
            }
        }
    }
    Ok(())
}

const ETCD_KEY: &str = "bench/serving";

async fn etcd_watcher(
    url: String,
    (id, from): (usize, Subject),
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
                    let _ = tx.send((id, Seen { from, value, at }));
                }
            }
        }
    }
    Ok(())
}

/// Puts `value` at the benchmark's key through the member at `url` (HTTP/JSON gateway).
async fn etcd_put(http: &reqwest::Client, url: &str, value: u64) -> Result<()> {
    let body = serde_json::json!({
        "key": B64.encode(ETCD_KEY),
        "value": B64.encode(value.to_string()),
    });
    http.post(format!("{url}/v3/kv/put"))
        .body(body.to_string())
        .send()
        .await?
        .error_for_status()
        .context("etcd refused the put")?;
    Ok(())
}
