//! Traffic between containers as an app makes it, from inside the caller (via Docker's
//! exec): a flow of requests without pause, whose longest gap says how long a change
//! interrupted it, and a download checked byte by byte, watched on the underlay.

use std::{
    net::{Ipv4Addr, SocketAddrV4},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use anyhow::{Context as _, Result};
use ferry_agent::containers::Engine;

use crate::{
    cluster::{Saw, eventually},
    inside::{exec, node},
    sniff::{self, PacketSocket, Underlay},
};

/// Requests from one container to another without pause, each on a new connection, until
/// the file `stop` appears in the caller; then one JSON line: successes, failures by
/// code, and the longest time between two successes (ms). The count of successes so far
/// is kept in the file `progress` (replaced whole, so a reader never finds it empty).
const FLOW: &str = r#"
const http = require('http'), fs = require('fs');
const [host, port, stop, progress] = process.argv.slice(1);
let ok = 0, failed = 0, last = Date.now(), gap = 0; const errors = {};
function next() { setTimeout(one, 20); }
function one() {
  if (fs.existsSync(stop)) return console.log(JSON.stringify({ ok, failed, gap, errors }));
  const req = http.get({ host, port, path: '/', agent: false, timeout: 15000 }, (r) => {
    r.resume();
    r.on('end', () => { ok++; const now = Date.now(); gap = Math.max(gap, now - last); last = now; fs.writeFileSync(progress + '.new', String(ok)); fs.renameSync(progress + '.new', progress); next(); });
  });
  req.on('timeout', () => req.destroy(new Error('timeout')));
  req.on('error', (e) => { failed++; errors[e.code || e.message] = (errors[e.code || e.message] || 0) + 1; next(); });
}
one();
"#;

/// How a [`Flow`] went.
#[derive(Debug, serde::Deserialize)]
pub struct FlowReport {
    /// Requests answered.
    pub ok: u64,
    /// Requests failed.
    pub failed: u64,
    /// The longest time between two answers, in ms.
    pub gap: u64,
    /// Failures by error code.
    pub errors: std::collections::BTreeMap<String, u64>,
}

/// A flow of requests running in a container towards a target.
pub struct Flow {
    engine: Engine,
    id: String,
    stop: String,
    progress: String,
    task: tokio::task::JoinHandle<Result<String>>,
}

impl Flow {
    /// Starts a flow in container `id` towards `target`; `name` tells its files apart.
    pub fn start(engine: &Engine, id: &str, target: SocketAddrV4, name: &str) -> Self {
        let stop = format!("/tmp/stop-{name}");
        let progress = format!("/tmp/progress-{name}");
        let (engine, id) = (engine.clone(), id.to_string());
        let task = {
            let (engine, id) = (engine.clone(), id.clone());
            let (stop, progress) = (stop.clone(), progress.clone());
            tokio::spawn(async move {
                let (host, port) = (target.ip().to_string(), target.port().to_string());
                let command = ["node", "-e", FLOW, &host, &port, &stop, &progress];
                exec(&engine, &id, &command).await
            })
        };
        Self {
            engine,
            id,
            stop,
            progress,
            task,
        }
    }

    /// Successes so far.
    pub async fn successes(&self) -> Result<u64> {
        let script = format!(
            "try {{ console.log(require('fs').readFileSync('{}', 'utf8')) }} catch {{ console.log(0) }}",
            self.progress
        );
        Ok(node(&self.engine, &self.id, &script).await?.parse()?)
    }

    /// Waits until `more` requests succeeded after this call (within `limit`).
    pub async fn goes_on(&self, more: u64, limit: Duration) -> Result<()> {
        let now = self.successes().await?;
        eventually(limit, "the flow going on", || async {
            let seen = self.successes().await?;
            Ok(Saw(seen >= now + more, seen))
        })
        .await
    }

    /// Stops the flow; its report.
    pub async fn stop(self) -> Result<FlowReport> {
        exec(&self.engine, &self.id, &["touch", &self.stop]).await?;
        let out = tokio::time::timeout(Duration::from_secs(60), self.task)
            .await
            .context("the flow did not stop")???;
        serde_json::from_str(out.lines().last().unwrap_or_default())
            .with_context(|| format!("the flow's report: {out}"))
    }
}

/// Downloads `mb` MiB from `target`'s `/download` inside container `id` and checks every
/// byte against the app's pattern; prints `ok BYTES MS`, or what went wrong (a stall shows
/// as `stalled` after 60 s).
const DOWNLOAD: &str = r#"
const http = require('http'), crypto = require('crypto');
const [host, port, mb] = process.argv.slice(1);
const block = crypto.createHash('sha512').update('ferry').digest();
const chunk = Buffer.alloc(1 << 20);
for (let i = 0; i < chunk.length; i += block.length) block.copy(chunk, i);
const want = crypto.createHash('sha256'); for (let i = 0; i < Number(mb); i++) want.update(chunk);
const got = crypto.createHash('sha256'); let bytes = 0; const t = Date.now();
const req = http.get({ host, port, path: '/download?mb=' + mb, timeout: 60000 }, (r) => {
  r.on('data', (d) => { got.update(d); bytes += d.length; });
  r.on('end', () => console.log(got.digest('hex') === want.digest('hex') ? 'ok' : 'corrupt', bytes, Date.now() - t));
});
req.on('timeout', () => { console.log('stalled', bytes); process.exit(0); });
req.on('error', (e) => console.log('error', e.code, bytes));
"#;

/// Where a watched download's frames are seen, and what may cross there.
pub struct Watch<'a> {
    /// A socket bound to the underlay interface.
    pub socket: PacketSocket,
    /// The servers' underlay addresses.
    pub servers: &'a [Ipv4Addr],
    /// WireGuard's UDP port.
    pub wireguard_port: u16,
    /// Central's TCP port when central is on one of the servers (its TLS crosses too).
    pub control_port: Option<u16>,
}

/// Downloads `mb` MiB from `target` inside container `id` (see [`DOWNLOAD`]) while `watch`
/// captures the underlay: the download's line (`ok BYTES MS` when every byte arrived) and
/// what crossed.
pub async fn download_watched(
    engine: &Engine,
    id: &str,
    target: SocketAddrV4,
    mb: u32,
    watch: Watch<'_>,
) -> Result<(String, Underlay)> {
    let stop = Arc::new(AtomicBool::new(false));
    let capture = {
        let stop = stop.clone();
        let servers = watch.servers.to_vec();
        let (wireguard, control) = (watch.wireguard_port, watch.control_port);
        let socket = watch.socket;
        // The app's download pattern: sha512("ferry"), as in the app and DOWNLOAD.
        let marker = <sha2::Sha512 as sha2::Digest>::digest(b"ferry")[..24].to_vec();
        std::thread::spawn(move || {
            sniff::watch_underlay(&socket, &servers, (wireguard, control), &marker, &stop)
        })
    };
    let (host, port, mb) = (
        target.ip().to_string(),
        target.port().to_string(),
        mb.to_string(),
    );
    let download = exec(engine, id, &["node", "-e", DOWNLOAD, &host, &port, &mb]).await;
    stop.store(true, Ordering::Relaxed);
    let seen = capture
        .join()
        .map_err(|_| anyhow::anyhow!("the capture panicked"))?;
    Ok((download?, seen))
}
