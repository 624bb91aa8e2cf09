//! `ferry-vm-cluster`: one server of the VM tier's cluster, run as a QEMU guest's program
//! (`ferry-vm-cluster one|two`). Each guest is a whole server: its own kernel WireGuard,
//! Docker Engine (the distribution's dockerd), agent and containers, on an underlay link
//! of 1400 bytes to the other guest and nothing else. Server one also serves central and
//! runs the operator's CLI. The guests leave each other notes on a shared board (central's
//! ticket, "deployed", "checked", "done").
//!
//! What is checked, on kernel WireGuard, across the two servers: the mesh (a peer and a
//! route each way, the tunnel at 1400 less 60); containers reaching each other by
//! `.cloud66.local` name, by address and by service address; a 10 MiB body crossing
//! intact with nothing but WireGuard (and central's TLS) on the underlay and no fragment;
//! a second stack and the first refusing each other's containers; during a deploy, each
//! generation reaching its own; two's key rotated under a flow of requests (longest gap
//! measured); two removed (its peer and route gone from one).
//!
//! Prints `ok`/`not ok` lines and `# ` figures (see [`ferry_tests::tap`]).

use std::{
    collections::BTreeSet,
    future::Future,
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    path::{Path, PathBuf},
    process::ExitCode,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, bail, ensure};
use ferry_agent::{
    containers::{Engine, FerryContainer, list},
    mesh::wireguard::{self, Backend},
};
use ferry_api::{
    client::{Client, Trust},
    records::ServiceRecord,
};
use ferry_tests::{
    agent::{Agent, AgentPaths, Pins},
    board::Board,
    central::{Central, JoinTicket},
    cgroup::cgroup2_root,
    cluster::{Operator, Saw, eventually, site_stack},
    docker::DockerEngine,
    inside::{get_from, get_url_from, node},
    netns::ip,
    node_image,
    sniff::PacketSocket,
    tap::Report,
    traffic::{Flow, Watch, download_watched},
};

/// The guests' network card: the underlay.
const UNDERLAY: &str = "eth0";
/// The underlay's MTU, as on this machine's own `eth0`.
const UNDERLAY_MTU: u32 = 1400;
/// What the tunnel and the containers must get: 1400 less WireGuard's 60 bytes (IPv4).
const TUNNEL_MTU: u32 = 1340;
/// WireGuard's port on both servers.
const WIREGUARD_PORT: u16 = 51820;
/// The agent's WireGuard link.
const WG_INTERFACE: &str = "ferry0";
/// Where the host shares the board (see the VM tier's init).
const BOARD: &str = "/run/shared";
/// The stack both servers run.
const STACK: &str = "site";
/// Another stack, which must not reach the first nor be reached by it.
const OTHER: &str = "other";
/// How long retired generations drain: long enough, under TCG, to look at both side by
/// side after the flip.
const DRAIN: &str = "60s";
/// Under TCG everything is many times slower than on the host; waits are sized for it.
const SLOW: Duration = Duration::from_secs(600);

/// Server `role`'s underlay address.
fn address_of(role: &str) -> Ipv4Addr {
    if role == "one" {
        Ipv4Addr::new(10, 77, 0, 1)
    } else {
        Ipv4Addr::new(10, 77, 0, 2)
    }
}

/// What server one posts once central serves: how to join it, and (for two's checks) how
/// to read it as the admin.
#[derive(serde::Serialize, serde::Deserialize)]
struct CentralNote {
    ticket: JoinTicket,
    admin_token: String,
}

/// A note that says only that something happened.
#[derive(serde::Serialize, serde::Deserialize)]
struct Done {}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    let mut report = Report::default();
    let role = std::env::args().nth(1).unwrap_or_default();
    let outcome = match Board::at(Path::new(BOARD)) {
        Ok(board) => {
            let outcome = match role.as_str() {
                "one" | "two" => serve(&mut report, &board, &role).await,
                other => Err(anyhow!("usage: ferry-vm-cluster one|two (got {other:?})")),
            };
            if let Err(e) = &outcome {
                // The other server stops waiting for this one.
                let _ = board.post(&format!("{role}-abandoned"), &format!("{e:#}"));
            }
            outcome
        }
        Err(e) => Err(e),
    };
    if let Err(e) = outcome {
        report.check(&format!("server {role} went through to its end"), Err(e));
    }
    report.finish()
}

/// Runs `work` as the check `name`: its line, and its value or the error that stops the
/// server's run.
async fn step<T>(
    report: &mut Report,
    name: &str,
    work: impl Future<Output = Result<T>>,
) -> Result<T> {
    let started = Instant::now();
    match work.await {
        Ok(value) => {
            report.check(name, Ok(()));
            println!("# {name}: {:.1} s", started.elapsed().as_secs_f64());
            Ok(value)
        }
        Err(e) => {
            report.check(name, Err(anyhow!("{e:#}")));
            Err(anyhow!("stopped at: {name}"))
        }
    }
}

/// A server of the cluster: this guest, its Docker Engine and its agent.
struct ThisServer {
    role: String,
    docker: DockerEngine,
    paths: AgentPaths,
    agent: Option<Agent>,
    _pins: Pins,
}

impl ThisServer {
    /// Raises the underlay (1400 bytes, no route beyond the other server) and starts the
    /// Docker Engine with the Node base image in it.
    async fn prepare(role: &str) -> Result<Self> {
        ip(&["link", "set", "lo", "up"])?;
        ip(&[
            "link",
            "set",
            UNDERLAY,
            "mtu",
            &UNDERLAY_MTU.to_string(),
            "up",
        ])?;
        let address = format!("{}/24", address_of(role));
        ip(&["addr", "add", &address, "dev", UNDERLAY])?;
        let started = Instant::now();
        let docker = start_docker().await?;
        println!(
            "# dockerd answered after {:.1} s",
            started.elapsed().as_secs_f64()
        );
        node_image::ensure(docker.engine()).await?;
        let paths = AgentPaths {
            cgroup_root: cgroup2_root()?,
            bpffs: PathBuf::from("/sys/fs/bpf/ferry"),
            state_dir: PathBuf::from("/var/lib/ferry-agent"),
            wg_interface: WG_INTERFACE.into(),
            extra: vec![
                "--docker-socket".into(),
                docker.socket().to_string_lossy().into_owned(),
                "--docker-network".into(),
                "ferry".into(),
                // Nothing answers there: every name the checks ask is ferry's.
                "--dns-upstream".into(),
                "127.0.0.1:5353".into(),
            ],
        };
        Ok(Self {
            role: role.into(),
            docker,
            paths,
            agent: None,
            _pins: Pins::new("ferry")?,
        })
    }

    /// Joins central with `ticket` (WireGuard on the underlay address) and starts the agent.
    fn join(&mut self, ticket: &JoinTicket) -> Result<()> {
        let endpoint = SocketAddr::from((address_of(&self.role), WIREGUARD_PORT));
        let (ok, out, err) = ticket.join(&self.role, endpoint, &self.paths.state_dir, None)?;
        ensure!(ok, "ferry-agent join: {out}{err}");
        self.agent = Some(Agent::start_in(&self.paths, None)?);
        Ok(())
    }

    fn engine(&self) -> &Engine {
        self.docker.engine()
    }

    /// Prints the end of the agent's log, for a run that failed.
    fn print_log_tail(&self) {
        let Some(agent) = &self.agent else { return };
        let text = std::fs::read_to_string(&agent.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        for line in &lines[lines.len().saturating_sub(40)..] {
            println!("# agent: {line}");
        }
    }

    /// Its running container of `service` in `generation`.
    async fn container(&self, service: &str, generation: u64) -> Result<FerryContainer> {
        list(self.engine())
            .await?
            .into_iter()
            .find(|c| c.service == service && c.generation == generation && c.running)
            .with_context(|| format!("no running {service} of generation {generation} here"))
    }
}

/// The Docker Engine. dockerd gives the containerd it starts 15 s to answer, which two
/// guests booting together under TCG can exceed ("timeout waiting for containerd to
/// start"); the next try, with containerd's files read once, is quicker.
async fn start_docker() -> Result<DockerEngine> {
    let mut tries = 0;
    loop {
        tries += 1;
        match DockerEngine::start("server", None).await {
            Ok(docker) => return Ok(docker),
            Err(e) if tries < 3 && format!("{e:#}").contains("waiting for containerd") => {
                println!("# dockerd's containerd was slow to start (try {tries}); again");
            }
            Err(e) => return Err(e),
        }
    }
}

/// The kernel WireGuard link's peers (public keys) and the routes through it; none before
/// the agent made the link.
fn mesh() -> Result<(Vec<String>, String)> {
    if !Path::new("/sys/class/net").join(WG_INTERFACE).exists() {
        return Ok((Vec::new(), String::new()));
    }
    let peers = wireguard::peer_stats(WG_INTERFACE, Backend::Kernel)?
        .into_iter()
        .map(|p| p.public_key.to_base64())
        .collect();
    let out = std::process::Command::new("ip")
        .args(["route", "show", "dev", WG_INTERFACE])
        .output()?;
    Ok((peers, String::from_utf8_lossy(&out.stdout).into_owned()))
}

/// The MTU of `interface` here.
fn link_mtu(interface: &str) -> Result<u32> {
    let path = format!("/sys/class/net/{interface}/mtu");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    Ok(text.trim().parse()?)
}

/// Waits until the other server is this one's only peer, with a route to its subnet, on
/// a kernel WireGuard link with the tunnel's MTU.
async fn mesh_with(admin: &Client, other: &str) -> Result<()> {
    eventually(SLOW, &format!("{other} in central"), || async {
        let names: Vec<String> = admin.servers().await?.into_iter().map(|s| s.name).collect();
        Ok(Saw(names.iter().any(|n| n == other), names))
    })
    .await?;
    let server = admin
        .servers()
        .await?
        .into_iter()
        .find(|s| s.name == other)
        .with_context(|| format!("central has no {other}"))?;
    let subnet = format!("10.66.{}.0/24", server.subnet_index);
    eventually(
        Duration::from_secs(60),
        "the peer and its route",
        || async {
            let (peers, routes) = mesh()?;
            let holds = peers == [server.wireguard_public_key.clone()] && routes.contains(&subnet);
            Ok(Saw(holds, (peers, routes)))
        },
    )
    .await?;
    let mtu = link_mtu(WG_INTERFACE)?;
    ensure!(
        mtu == TUNNEL_MTU,
        "{WG_INTERFACE} has MTU {mtu}, not {TUNNEL_MTU}"
    );
    // The kernel's own link type, not a TUN device of wireguard-go.
    let out = std::process::Command::new("ip")
        .args(["-d", "-o", "link", "show", "dev", WG_INTERFACE])
        .output()?;
    let details = String::from_utf8_lossy(&out.stdout);
    ensure!(
        details.contains(" wireguard "),
        "{WG_INTERFACE} is not a kernel WireGuard link: {details}"
    );
    Ok(())
}

/// A stack of the site app named `name`, with `services`, two containers each (one per
/// server).
fn write_stack(name: &str, services: &[&str]) -> Result<PathBuf> {
    let service = |name: &str| {
        format!(
            "  {name}:\n    build_root: app\n    command: node server.js\n    ports: [\"3000\"]\n    \
             env_vars:\n      SERVICE: {name}\n    health:\n      endpoint: /healthz\n      \
             timeout: 300s\n    constraints:\n      min_count: 2\n"
        )
    };
    let services: String = services.iter().map(|s| service(s)).collect();
    site_stack(
        &format!("ferry-vm-cluster-{name}"),
        &format!("services:\n{services}"),
    )
}

/// The record of `service` of `stack`.
async fn record_of(admin: &Client, stack: &str, service: &str) -> Result<ServiceRecord> {
    let key = ferry_api::keys::record(stack, service);
    let item = admin
        .list(&key)
        .await?
        .items
        .into_iter()
        .next()
        .with_context(|| format!("no record {key}"))?;
    Ok(serde_json::from_value(item.value)?)
}

/// The record of `service` of [`STACK`].
async fn record(admin: &Client, service: &str) -> Result<ServiceRecord> {
    record_of(admin, STACK, service).await
}

/// The addresses of [`STACK`]'s `service` containers in `generation`, and of the one on
/// `server`.
async fn endpoints(
    admin: &Client,
    service: &str,
    generation: u64,
    server: &str,
) -> Result<(BTreeSet<Ipv4Addr>, Ipv4Addr)> {
    endpoints_of(admin, STACK, service, generation, server).await
}

/// [`endpoints`] of `stack`.
async fn endpoints_of(
    admin: &Client,
    stack: &str,
    service: &str,
    generation: u64,
    server: &str,
) -> Result<(BTreeSet<Ipv4Addr>, Ipv4Addr)> {
    let record = record_of(admin, stack, service).await?;
    let endpoints = record
        .generations
        .get(&generation)
        .with_context(|| format!("{service} has no generation {generation}"))?;
    let on = endpoints
        .iter()
        .find(|e| e.server == server)
        .with_context(|| format!("{service} {generation} has no container on {server}"))?;
    Ok((endpoints.iter().map(|e| e.address).collect(), on.address))
}

/// The addresses `name` resolves to inside container `id` (Node's resolver, through the
/// container's own resolv.conf).
async fn resolve(engine: &Engine, id: &str, name: &str) -> Result<BTreeSet<Ipv4Addr>> {
    let script = format!(
        "require('dns').resolve4('{name}', (e, a) => console.log(e ? 'error ' + e.code : a.join(' ')))"
    );
    let out = node(engine, id, &script).await?;
    out.split_whitespace()
        .map(|a| {
            a.parse()
                .with_context(|| format!("resolving {name}: {out}"))
        })
        .collect()
}

/// The distinct answers of `count` requests to `target` from container `id`, each on a
/// new connection (so each is steered anew).
async fn answers(
    engine: &Engine,
    id: &str,
    target: SocketAddrV4,
    count: u32,
) -> Result<BTreeSet<String>> {
    let script = format!(
        "const http = require('http'); const seen = new Set(); let left = {count};
         const one = () => http.get({{ host: '{}', port: {}, path: '/', agent: false }}, r => {{
           let b = ''; r.on('data', c => b += c);
           r.on('end', () => {{ seen.add(b.trim()); if (--left) one(); else console.log([...seen].join('\\n')); }});
         }}).on('error', e => console.log('error', e.code));
         one();",
        target.ip(),
        target.port()
    );
    Ok(node(engine, id, &script)
        .await?
        .lines()
        .map(str::to_string)
        .collect())
}

/// From `web` (a container of generation `generation` on `here`): `api.cloud66.local`
/// names exactly its generation's apis on both servers; the api on `there` answers at
/// its address and by name; the service address reaches both.
async fn reaches_its_apis(
    here: &ThisServer,
    admin: &Client,
    generation: u64,
    there: &str,
) -> Result<()> {
    let web = here.container("web", generation).await?;
    let (apis, across) = endpoints(admin, "api", generation, there).await?;
    let engine = here.engine();
    let resolved = resolve(engine, &web.id, "api.cloud66.local").await?;
    ensure!(
        resolved == apis,
        "api.cloud66.local from web {generation} on {}: {resolved:?}, not {apis:?}",
        here.role
    );
    let prefix = format!("api {generation} ");
    let direct = get_from(engine, &web.id, SocketAddrV4::new(across, 3000)).await?;
    ensure!(
        direct.starts_with(&prefix),
        "the api on {there} at {across}: {direct}"
    );
    let named = get_url_from(engine, &web.id, "http://api.cloud66.local:3000/").await?;
    ensure!(
        named.starts_with(&prefix),
        "api.cloud66.local:3000: {named}"
    );
    let service = record(admin, "api")
        .await?
        .address
        .context("api has no service address")?;
    let seen = answers(engine, &web.id, SocketAddrV4::new(service, 3000), 6).await?;
    ensure!(
        seen.len() == 2 && seen.iter().all(|a| a.starts_with(&prefix)),
        "the service address {service}:3000 answered {seen:?}, not both apis of generation {generation}"
    );
    let mtu = node(
        engine,
        &web.id,
        "console.log(require('fs').readFileSync('/sys/class/net/eth0/mtu', 'utf8').trim())",
    )
    .await?;
    ensure!(mtu == TUNNEL_MTU.to_string(), "web's eth0 has MTU {mtu}");
    Ok(())
}

/// Site's web on this server (one) and the other stack's api on each server refuse each
/// other, by address and by service address, on this server and across; site's own
/// containers stay reachable (see [`reaches_its_apis`]).
async fn isolated(here: &ThisServer, admin: &Client) -> Result<()> {
    let engine = here.engine();
    let web = here.container("web", 1).await?;
    let (_, other_one) = endpoints_of(admin, OTHER, "api", 1, "one").await?;
    let (_, other_two) = endpoints_of(admin, OTHER, "api", 1, "two").await?;
    let other_service = record_of(admin, OTHER, "api")
        .await?
        .address
        .context("the other api has no service address")?;
    // Both agents learn the other stack's containers from the records; wait for two's.
    eventually(
        Duration::from_secs(60),
        "the other stack isolated from site",
        || async {
            let seen = get_from(engine, &web.id, SocketAddrV4::new(other_two, 3000)).await?;
            Ok(Saw(seen == "error EACCES", seen))
        },
    )
    .await?;
    for target in [other_one, other_service] {
        let seen = get_from(engine, &web.id, SocketAddrV4::new(target, 3000)).await?;
        ensure!(
            seen == "error EACCES",
            "site's web to the other stack's {target}: {seen}"
        );
    }
    let theirs = list(engine)
        .await?
        .into_iter()
        .find(|c| c.stack == OTHER && c.running)
        .context("no container of the other stack on one")?;
    let (_, site_two) = endpoints(admin, "api", 1, "two").await?;
    let seen = get_from(engine, &theirs.id, SocketAddrV4::new(site_two, 3000)).await?;
    ensure!(
        seen == "error EACCES",
        "the other stack's api to site's on two: {seen}"
    );
    let own = get_from(engine, &theirs.id, SocketAddrV4::new(other_two, 3000)).await?;
    ensure!(
        own.starts_with("api 1 "),
        "the other stack's api to its own on two: {own}"
    );
    Ok(())
}

/// Server `role`'s run: the server prepared, then its part, cut short if the other server
/// gives up; the agent's last lines printed if it failed.
async fn serve(report: &mut Report, board: &Board, role: &str) -> Result<()> {
    let other = if role == "one" { "two" } else { "one" };
    let mut here = step(
        report,
        &format!("{role}: underlay up at MTU 1400, Docker Engine up, Node base image in"),
        ThisServer::prepare(role),
    )
    .await?;
    let part = async {
        if role == "one" {
            one_joined(report, board, &mut here).await
        } else {
            two_joined(report, board, &mut here).await
        }
    };
    let outcome = wait_unless_abandoned(board, other, part).await;
    if outcome.is_err() {
        here.print_log_tail();
    }
    outcome
}

async fn one_joined(report: &mut Report, board: &Board, here: &mut ThisServer) -> Result<()> {
    let central = step(report, "one: central serves", async {
        let dir = Path::new("/var/lib/ferry-central");
        let central = Central::start_with_drain(dir, &address_of("one").to_string(), DRAIN)?;
        board.post(
            "central",
            &CentralNote {
                ticket: central.ticket(),
                admin_token: central.admin_token.clone(),
            },
        )?;
        Ok(central)
    })
    .await?;
    let admin = central.admin()?;
    step(report, "one: joined, its agent runs", async {
        here.join(&central.ticket())
    })
    .await?;
    step(
        report,
        "one: two is its kernel WireGuard peer with a route, tunnel MTU 1340",
        mesh_with(&admin, "two"),
    )
    .await?;
    let operator = Operator::login(&central, "vm")?;
    let stack = write_stack(STACK, &["web", "api"])?;
    let stack = stack.to_string_lossy();
    let other = write_stack(OTHER, &["api"])?;
    step(
        report,
        "generation 1 deployed: a web and an api on each server",
        async {
            let (ok, out, err) = ferry(&operator, &["deploy", "--stack", STACK, &stack]).await?;
            ensure!(ok, "deploy: {out}{err}");
            endpoints(&admin, "api", 1, "two").await?;
            endpoints(&admin, "web", 1, "two").await?;
            Ok(())
        },
    )
    .await?;
    board.post("deployed", &Done {})?;
    step(
        report,
        "one's web reaches the apis of both servers by name, address and service address",
        reaches_its_apis(here, &admin, 1, "two"),
    )
    .await?;
    step(
        report,
        "10 MiB from two's api to one's web: intact, only WireGuard on the underlay, unfragmented",
        async {
            let web = here.container("web", 1).await?;
            let (_, across) = endpoints(&admin, "api", 1, "two").await?;
            let servers = [address_of("one"), address_of("two")];
            let central_port = central
                .url
                .rsplit(':')
                .next()
                .and_then(|p| p.parse().ok())
                .context("central's URL has no port")?;
            let watch = Watch {
                socket: PacketSocket::bind(UNDERLAY)?,
                servers: &servers,
                wireguard_port: WIREGUARD_PORT,
                control_port: Some(central_port),
            };
            let target = SocketAddrV4::new(across, 3000);
            let (download, seen) =
                download_watched(here.engine(), &web.id, target, 10, watch).await?;
            println!("# 10 MiB across the servers: {download}; underlay: {seen:?}");
            ensure!(
                download.starts_with(&format!("ok {}", 10 << 20)),
                "the 10 MiB body: {download}"
            );
            seen.check(1000)
        },
    )
    .await?;
    // The other stack comes up while two finishes its checks (not during the capture, which
    // then sees the download's traffic and central's alone).
    let other = other.to_string_lossy().into_owned();
    let other_deploy = ferry(&operator, &["deploy", "--stack", OTHER, &other]);
    step(
        report,
        "two's checks from its side passed",
        board.wait::<Done>("two-checked", SLOW),
    )
    .await?;

    step(
        report,
        "stacks isolated across servers: site and other refuse each other's containers (EACCES)",
        async {
            let (ok, out, err) = other_deploy.await?;
            ensure!(ok, "deploy {OTHER}: {out}{err}");
            isolated(here, &admin).await
        },
    )
    .await?;

    // A deploy: once generation 2 serves, while 1 drains, each generation reaches its own.
    let deploy = ferry(&operator, &["deploy", "--stack", STACK, &stack]);
    step(
        report,
        "generation 2 serves while generation 1 drains",
        async {
            eventually(SLOW, "generation 2 serving", || async {
                let stacks = admin.stacks().await?;
                let serving = stacks
                    .iter()
                    .find(|s| s.name == STACK)
                    .and_then(|s| s.serving);
                Ok(Saw(serving == Some(2), serving))
            })
            .await?;
            here.container("web", 1).await.map(drop)
        },
    )
    .await?;
    for generation in [1, 2] {
        step(
            report,
            &format!("during the deploy, one's web of generation {generation} reaches the apis of generation {generation} on both servers"),
            reaches_its_apis(here, &admin, generation, "two"),
        )
        .await?;
    }

    // Two's key rotated under a flow from one to two.
    step(
        report,
        "two's key rotated under a flow from one's web to two's api: none failed, gap under 5 s",
        async {
            let web = here.container("web", 2).await?;
            let (_, across) = endpoints(&admin, "api", 2, "two").await?;
            let before = admin
                .servers()
                .await?
                .into_iter()
                .find(|s| s.name == "two")
                .context("central has no two")?
                .wireguard_public_key;
            let flow = Flow::start(
                here.engine(),
                &web.id,
                SocketAddrV4::new(across, 3000),
                "rotate",
            );
            flow.goes_on(5, Duration::from_secs(120)).await?;
            let (ok, out, err) = ferry(
                &operator,
                &["servers", "rotate-key", "two", "--wait", "300"],
            )
            .await?;
            ensure!(ok, "rotate-key: {out}{err}");
            eventually(
                Duration::from_secs(120),
                "one's peer with two's new key",
                || async {
                    let (peers, _) = mesh()?;
                    Ok(Saw(peers.len() == 1 && peers[0] != before, peers))
                },
            )
            .await?;
            flow.goes_on(5, Duration::from_secs(120)).await?;
            let flow = flow.stop().await?;
            println!(
                "# two's key rotated under the flow: {} requests, {} failed, longest gap {} ms",
                flow.ok, flow.failed, flow.gap
            );
            ensure!(flow.failed == 0, "failures: {:?}", flow.errors);
            ensure!(
                flow.gap < 5000,
                "the rotation stopped the flow for {} ms",
                flow.gap
            );
            Ok(())
        },
    )
    .await?;
    step(report, "the deploy ends with generation 1 stopped", async {
        let (ok, out, err) = deploy.await?;
        ensure!(
            ok && out.contains("generation 1 of site stopped"),
            "{out}{err}"
        );
        Ok(())
    })
    .await?;

    // Two leaves.
    step(
        report,
        "two removed: its peer and route leave one, its api is out of reach",
        async {
            let web = here.container("web", 2).await?;
            let (_, across) = endpoints(&admin, "api", 2, "two").await?;
            let removing = Instant::now();
            let (ok, out, err) = ferry(&operator, &["servers", "remove", "two"]).await?;
            ensure!(ok, "{out}{err}");
            eventually(
                Duration::from_secs(60),
                "two gone from one's mesh",
                || async {
                    let (peers, routes) = mesh()?;
                    Ok(Saw(
                        peers.is_empty() && routes.trim().is_empty(),
                        (peers, routes),
                    ))
                },
            )
            .await?;
            println!(
                "# two gone from one's peers and routes {:?} after its removal",
                removing.elapsed()
            );
            let answer = get_from(here.engine(), &web.id, SocketAddrV4::new(across, 3000)).await?;
            ensure!(
                answer.starts_with("error"),
                "two's api still answers: {answer}"
            );
            Ok(())
        },
    )
    .await?;
    board.post("done", &Done {})?;
    Ok(())
}

async fn two_joined(report: &mut Report, board: &Board, here: &mut ThisServer) -> Result<()> {
    let note: CentralNote = step(
        report,
        "two: central's ticket posted by one",
        board.wait("central", SLOW),
    )
    .await?;
    let admin = Client::new(
        &note.ticket.url,
        &note.admin_token,
        Trust::Fingerprint(note.ticket.ca_fingerprint.clone()),
    )?;
    step(
        report,
        "two: joined one's central over the underlay, its agent runs",
        async { here.join(&note.ticket) },
    )
    .await?;
    step(
        report,
        "two: one is its kernel WireGuard peer with a route, tunnel MTU 1340",
        mesh_with(&admin, "one"),
    )
    .await?;
    step(
        report,
        "two: generation 1 deployed",
        board.wait::<Done>("deployed", SLOW),
    )
    .await?;
    step(
        report,
        "two's web reaches the apis of both servers by name, address and service address",
        reaches_its_apis(here, &admin, 1, "one"),
    )
    .await?;
    board.post("two-checked", &Done {})?;
    step(
        report,
        "two: one finished",
        board.wait::<Done>("done", SLOW * 2),
    )
    .await?;
    Ok(())
}

/// Runs `ferry ARGS` as `operator` without holding up the runtime (so a wait for the other
/// server's abandonment can cut it short): (success, stdout, stderr). It starts at once,
/// not when awaited.
fn ferry(
    operator: &Operator,
    args: &[&str],
) -> impl Future<Output = Result<(bool, String, String)>> + use<> {
    let running = operator.spawn(args);
    async move {
        tokio::task::spawn_blocking(move || running.join())
            .await?
            .map_err(|_| anyhow!("the thread running ferry panicked"))?
    }
}

/// `work`, unless server `other` gives up first (its `<other>-abandoned` note).
async fn wait_unless_abandoned<T>(
    board: &Board,
    other: &str,
    work: impl Future<Output = Result<T>>,
) -> Result<T> {
    let abandoned = format!("{other}-abandoned");
    tokio::select! {
        value = work => value,
        why = board.wait::<String>(&abandoned, Duration::from_secs(24 * 3600)) => match why {
            Ok(why) => bail!("server {other} gave up: {why}"),
            Err(e) => Err(e),
        },
    }
}
