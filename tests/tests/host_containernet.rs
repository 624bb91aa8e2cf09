//! Host tier: ContainerNet across servers over wireguard-go (this kernel has no WireGuard
//! module), on an underlay whose links have a 1400-byte MTU as this machine's `eth0` does.
//! The tunnel and the containers get the underlay's MTU less WireGuard's 60 bytes, and a
//! 10 MB body crosses between containers on two servers intact, with nothing but
//! WireGuard's UDP on the underlay. Then, while containers on two servers talk without
//! pause, a third server joins (nothing fails between the two; the newcomer is reached
//! within seconds), a server's key is rotated (the longest gap is measured), and the third
//! server is removed (its peer entries and routes go everywhere, its token stops working).
//! Forged claims to another server's endpoint or key are refused, and a changed underlay
//! MTU is followed.

use std::{
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, ensure};
use ferry_agent::{
    containers::{Engine, FerryContainer},
    mesh::wireguard::{self, Backend},
};
use ferry_api::{client::ClientError, types::JoinRequest};
use ferry_tests::{
    central::Central,
    cluster::{Member, Operator, Saw, eventually},
    inside::{get_from, node},
    netns::{Network, Server},
    sniff::PacketSocket,
    traffic::{Flow, Watch, download_watched},
    unique,
};

const SUBNET: u8 = 171;
/// The underlay's MTU, as on this machine's own `eth0`.
const UNDERLAY_MTU: u32 = 1400;
/// What the tunnel and the containers must get: 1400 less WireGuard's 60 bytes.
const TUNNEL_MTU: u32 = 1340;
/// The MTU server three's agent is given with `--mesh-mtu`.
const THREE_MTU: u32 = 1320;
/// WireGuard's port on every server (see `Central::join`).
const WIREGUARD_PORT: u16 = 51820;

fn write_stack(tag: &str) -> Result<PathBuf> {
    ferry_tests::cluster::site_stack(
        &format!("ferry-test-containernet{tag}"),
        "services:\n  web:\n    build_root: app\n    command: node server.js\n    ports: [\"3000\"]\n    env_vars:\n      SERVICE: web\n    health:\n      endpoint: /healthz\n      timeout: 30s\n",
    )
}

/// The running `web` containers on `member`.
async fn webs(member: &Member) -> Result<Vec<FerryContainer>> {
    Ok(member
        .containers()
        .await?
        .into_iter()
        .filter(|c| c.service == "web" && c.running)
        .collect())
}

async fn the_web(member: &Member) -> Result<(FerryContainer, SocketAddrV4)> {
    let web = webs(member)
        .await?
        .into_iter()
        .next()
        .context("no web container")?;
    let address = web.address.context("web has no address")?;
    Ok((web, SocketAddrV4::new(address, 3000)))
}

/// The MTU of `interface` in `server`'s namespace (sysfs would show the host's links, so
/// `ip` is asked).
fn link_mtu(server: &Server, interface: &str) -> Result<u32> {
    let out = std::process::Command::new("ip")
        .args(["-n", server.name(), "-o", "link", "show", "dev", interface])
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace()
        .skip_while(|w| *w != "mtu")
        .nth(1)
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("no MTU for {interface} in: {text}"))
}

/// The MTU of a container's `eth0`, read inside it.
async fn container_mtu(engine: &Engine, id: &str) -> Result<u32> {
    let text = node(
        engine,
        id,
        "console.log(require('fs').readFileSync('/sys/class/net/eth0/mtu', 'utf8').trim())",
    )
    .await?;
    Ok(text.parse()?)
}

/// The public keys of `member`'s WireGuard peers, and the routes through its link.
fn mesh_of(member: &Member) -> Result<(Vec<String>, String)> {
    let wg = member.paths.wg_interface.clone();
    let peers = member
        .server
        .run(|| wireguard::peer_stats(&wg, Backend::Userspace))??
        .into_iter()
        .map(|p| p.public_key.to_base64())
        .collect();
    let routes = std::process::Command::new("ip")
        .args(["-n", member.server.name(), "route", "show", "dev", &wg])
        .output()?;
    Ok((peers, String::from_utf8_lossy(&routes.stdout).into_owned()))
}

/// Waits until `check(peers' public keys, routes)` holds on every one of `members`.
async fn mesh_shows(
    members: &[&Member],
    what: &str,
    check: impl Fn(&[String], &str) -> bool,
) -> Result<()> {
    for member in members {
        eventually(Duration::from_secs(20), what, || async {
            let (peers, routes) = mesh_of(member)?;
            Ok(Saw(check(&peers, &routes), (peers, routes)))
        })
        .await?;
    }
    Ok(())
}

/// Central's record of server `name`.
async fn record(admin: &ferry_api::client::Client, name: &str) -> Result<ferry_api::types::Server> {
    admin
        .servers()
        .await?
        .into_iter()
        .find(|s| s.name == name)
        .with_context(|| format!("central has no server {name}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containers_talk_across_servers_through_joins_rotations_and_removals() -> Result<()> {
    let tag = unique("");
    let mut network = Network::new(&format!("fcn{tag}"), SUBNET)?.with_mtu(UNDERLAY_MTU)?;
    let central_dir = std::env::temp_dir().join(format!("ferry-test-cnet{tag}"));
    let central = Central::start(&central_dir, &format!("10.250.{SUBNET}.1"))?;
    let one = Member::join(&mut network, &central, "one", &tag).await?;
    let two = Member::join(&mut network, &central, "two", &tag).await?;
    let operator = Operator::login(&central, &tag)?;
    let admin = central.admin()?;
    let stack = write_stack(&tag)?;
    let (ok, out, err) = operator.run(&["deploy", "--stack", "alpha", &stack.to_string_lossy()])?;
    ensure!(ok, "deploy: {out}{err}");
    let (ok, out, err) = operator.run(&["services", "scale", "--stack", "alpha", "web", "2"])?;
    ensure!(ok && out.contains("(one: 1, two: 1)"), "{out}{err}");
    eventually(Duration::from_secs(60), "a web on each server", || async {
        Ok(webs(&one).await?.len() == 1 && webs(&two).await?.len() == 1)
    })
    .await?;
    let (a, _) = the_web(&one).await?;
    let (b, b_at) = the_web(&two).await?;

    // The tunnel, the bridge and the containers all have the underlay's MTU less 60.
    for member in [&one, &two] {
        let wg = &member.paths.wg_interface;
        eventually(Duration::from_secs(20), "the tunnel's MTU", || async {
            let mtu = link_mtu(&member.server, wg)?;
            Ok(Saw(mtu == TUNNEL_MTU, mtu))
        })
        .await?;
    }
    for (member, web) in [(&one, &a), (&two, &b)] {
        let mtu = container_mtu(member.docker.engine(), &web.id).await?;
        ensure!(mtu == TUNNEL_MTU, "a container's eth0 has MTU {mtu}");
    }

    // 10 MB from a container on two to one on one, watched on the underlay.
    let servers: Vec<Ipv4Addr> = [&one, &two]
        .iter()
        .filter_map(|m| m.server.addr())
        .collect();
    let watch = Watch {
        socket: PacketSocket::bind(&network.uplink_of(&two.server))?,
        servers: &servers,
        wireguard_port: WIREGUARD_PORT,
        control_port: None,
    };
    let (download, seen) = download_watched(one.docker.engine(), &a.id, b_at, 10, watch).await?;
    println!(
        "10 MiB across servers over a {UNDERLAY_MTU}-byte underlay: {download}; underlay: {seen:?}"
    );
    ensure!(
        download.starts_with(&format!("ok {}", 10 << 20)),
        "the 10 MiB body: {download}"
    );
    seen.check(1000)?;

    // A server claiming another's endpoint or key through central is refused.
    let (one_record, two_record) = {
        let listed = admin.servers().await?;
        let find = |name: &str| listed.iter().find(|s| s.name == name).cloned();
        (find("one").context("one")?, find("two").context("two")?)
    };
    for (request, names) in [
        (
            JoinRequest {
                name: "forger".into(),
                wireguard_public_key: wireguard::Key::generate_private().get_public().to_base64(),
                wireguard_endpoint: one_record.wireguard_endpoint,
                memory_bytes: None,
            },
            "\"one\" already has WireGuard endpoint",
        ),
        (
            JoinRequest {
                name: "forger".into(),
                wireguard_public_key: two_record.wireguard_public_key.clone(),
                wireguard_endpoint: SocketAddr::from(([10, 250, SUBNET, 99], WIREGUARD_PORT)),
                memory_bytes: None,
            },
            "\"two\" already has this WireGuard public key",
        ),
    ] {
        match admin.join(&request).await {
            Err(ClientError::Status {
                status: 409,
                message,
                ..
            }) if message.contains(names) => {}
            other => anyhow::bail!("a forged join: {other:?}"),
        }
    }
    ensure!(
        admin.servers().await?.len() == 2,
        "a forged join left a server behind"
    );

    // A third server joins while one and two talk.
    let flow = Flow::start(one.docker.engine(), &a.id, b_at, "join");
    flow.goes_on(10, Duration::from_secs(30)).await?;
    let joining = Instant::now();
    // three's operator sets its MTU by hand, as the README's `--mesh-mtu` says.
    let by_hand = ["--mesh-mtu".to_string(), THREE_MTU.to_string()];
    let three = Member::join_with(&mut network, &central, "three", &tag, &by_hand).await?;
    let started = Instant::now();
    let three_record = record(&admin, "three").await?;
    let three_subnet = format!("10.66.{}.0/24", three_record.subnet_index);
    mesh_shows(
        &[&one, &two],
        "three as a peer with a route",
        |peers, routes| {
            peers.contains(&three_record.wireguard_public_key) && routes.contains(&three_subnet)
        },
    )
    .await?;
    println!(
        "three joined: a peer with a route on one and two {:?} after its agent started ({:?} \
         after its Docker Engine started, the join and the agent's start began)",
        started.elapsed(),
        joining.elapsed()
    );
    let (ok, out, err) = operator.run(&["services", "scale", "--stack", "alpha", "web", "3"])?;
    ensure!(ok && out.contains("three: 1"), "{out}{err}");
    eventually(Duration::from_secs(60), "a web on three", || async {
        Ok(webs(&three).await?.len() == 1)
    })
    .await?;
    let (c, c_at) = the_web(&three).await?;
    let running = Instant::now();
    eventually(Duration::from_secs(20), "three's --mesh-mtu", || async {
        let tunnel = link_mtu(&three.server, &three.paths.wg_interface)?;
        let container = container_mtu(three.docker.engine(), &c.id).await?;
        Ok(Saw(
            (tunnel, container) == (THREE_MTU, THREE_MTU),
            (tunnel, container),
        ))
    })
    .await?;
    for (member, web) in [(&one, &a), (&two, &b)] {
        eventually(Duration::from_secs(20), "three's web reached", || async {
            let answer = get_from(member.docker.engine(), &web.id, c_at).await?;
            Ok(Saw(answer.starts_with("web"), answer))
        })
        .await?;
    }
    println!(
        "three's web reached from one and two {:?} after it ran",
        running.elapsed()
    );
    flow.goes_on(10, Duration::from_secs(30)).await?;
    let report = flow.stop().await?;
    println!("one -> two while three joined: {report:?}");
    ensure!(
        report.ok > 20 && report.failed == 0,
        "failures: {:?}",
        report.errors
    );

    // two's key is rotated while one talks to it: at most a handshake's interruption.
    let flow = Flow::start(one.docker.engine(), &a.id, b_at, "rotate");
    flow.goes_on(10, Duration::from_secs(30)).await?;
    let (ok, out, err) = operator.run(&["servers", "rotate-key", "two"])?;
    ensure!(
        ok && out.contains("two now has WireGuard key"),
        "{out}{err}"
    );
    let rotated = record(&admin, "two").await?;
    ensure!(
        rotated.wireguard_public_key != two_record.wireguard_public_key
            && rotated.key_generation == 1,
        "{rotated:?}"
    );
    let saved = std::fs::read_to_string(two.paths.state_dir.join("wireguard.key"))?;
    ensure!(
        wireguard::Key::from_base64(saved.trim())
            .map(|k| k.get_public().to_base64())
            .ok()
            == Some(rotated.wireguard_public_key.clone()),
        "two's saved private key is not the published key's"
    );
    mesh_shows(&[&one, &three], "two's new key as a peer", |peers, _| {
        peers.contains(&rotated.wireguard_public_key)
            && !peers.contains(&two_record.wireguard_public_key)
    })
    .await?;
    flow.goes_on(10, Duration::from_secs(30)).await?;
    let report = flow.stop().await?;
    println!(
        "one -> two across two's key rotation: longest gap {} ms; {report:?}",
        report.gap
    );
    ensure!(
        report.ok > 20 && report.failed == 0,
        "failures: {:?}",
        report.errors
    );
    // At most one handshake's interruption: WireGuard retries a handshake after 5 s.
    ensure!(
        report.gap < 5000,
        "the rotation stopped the flow for {} ms",
        report.gap
    );
    // The operator sees each link's MTU and two's rotation (as the agents' next heartbeats
    // and central's record tell).
    let wanted = [
        ("one", "userspace MTU 1340 "),
        ("two", " rotation 1 "),
        ("three", "userspace MTU 1320 "),
    ];
    eventually(
        Duration::from_secs(30),
        "servers list showing MTUs and the rotation",
        || async {
            let (_, listed, _) = operator.run(&["servers", "list"])?;
            let shown = wanted.iter().all(|(name, what)| {
                listed
                    .lines()
                    .any(|l| l.starts_with(&format!("{name} ")) && l.contains(what))
            });
            Ok(Saw(shown, listed))
        },
    )
    .await?;

    // three leaves: its peer entries and routes go everywhere, its token stops working.
    let token = std::fs::read_to_string(three.paths.state_dir.join("agent.token"))?;
    let removing = Instant::now();
    let (ok, out, err) = operator.run(&["servers", "remove", "three"])?;
    ensure!(ok, "{out}{err}");
    mesh_shows(
        &[&one, &two],
        "three gone as a peer and a route",
        |peers, routes| {
            !peers.contains(&three_record.wireguard_public_key) && !routes.contains(&three_subnet)
        },
    )
    .await?;
    println!(
        "three removed: gone from one's and two's peers and routes {:?} after",
        removing.elapsed()
    );
    match central.client_with(token.trim())?.servers().await {
        Err(ClientError::Status { status: 401, .. }) => {}
        other => anyhow::bail!("a removed server's token: {other:?}"),
    }
    let answer = get_from(one.docker.engine(), &a.id, c_at).await?;
    ensure!(
        answer.starts_with("error"),
        "three's web still answers one: {answer}"
    );

    // one's underlay shrinks to 1300: its tunnel, bridge and containers follow.
    network.set_server_mtu(&one.server, 1300)?;
    eventually(
        Duration::from_secs(30),
        "one's tunnel following its underlay",
        || async {
            let tunnel = link_mtu(&one.server, &one.paths.wg_interface)?;
            let container = container_mtu(one.docker.engine(), &a.id).await?;
            Ok(Saw(
                tunnel == 1240 && container == 1240,
                (tunnel, container),
            ))
        },
    )
    .await?;

    three.clean_up().await;
    one.clean_up().await;
    two.clean_up().await;
    drop(central);
    let _ = std::fs::remove_dir_all(&central_dir);
    let _ = std::fs::remove_dir_all(&stack);
    Ok(())
}

/// `stack`'s running web on `member`, with its address.
async fn web_of(member: &Member, stack: &str) -> Result<(FerryContainer, SocketAddrV4)> {
    let found = member
        .containers()
        .await?
        .into_iter()
        .find(|c| c.stack == stack && c.service == "web" && c.running)
        .with_context(|| format!("no {stack} web"))?;
    let at = SocketAddrV4::new(found.address.context("no address")?, 3000);
    Ok((found, at))
}

/// Connects to `target` from container `id`'s network namespace but from this test's own
/// cgroup, so no connect4 hook of the container runs: only the receiver's checks decide.
async fn connect_beside(
    engine: &Engine,
    id: &str,
    target: SocketAddrV4,
) -> Result<std::io::Result<()>> {
    let pid = ferry_tests::inside::pid(engine, id).await?;
    let namespace = std::fs::File::open(format!("/proc/{pid}/ns/net"))?;
    let thread = std::thread::spawn(move || -> std::io::Result<()> {
        use std::os::fd::AsRawFd as _;
        // SAFETY: a plain syscall on an open fd; it changes this thread only.
        if unsafe { libc::setns(namespace.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        std::net::TcpStream::connect_timeout(&target.into(), Duration::from_secs(3)).map(|_| ())
    });
    thread
        .join()
        .map_err(|_| anyhow::anyhow!("the connecting thread panicked"))
}

/// What a connect from container `id` to `target` gives: `ok`, or the error's code.
async fn connect_from(engine: &Engine, id: &str, target: SocketAddrV4) -> Result<String> {
    let script = format!(
        "const s = require('net').connect({}, '{}', () => {{ console.log('ok'); s.destroy(); }}); \
         s.setTimeout(5000, () => {{ console.log('timeout'); s.destroy(); }}); \
         s.on('error', (e) => console.log(e.code))",
        target.port(),
        target.ip()
    );
    node(engine, id, &script).await
}

/// Waits (up to 20 s, while the agents learn the addresses) until a connect from container
/// `id` to `target` fails with EACCES.
async fn refused_within(engine: &Engine, id: &str, target: SocketAddrV4, what: &str) -> Result<()> {
    eventually(
        Duration::from_secs(20),
        &format!("{what} refused"),
        || async {
            let seen = connect_from(engine, id, target).await?;
            Ok(Saw(seen == "EACCES", seen))
        },
    )
    .await
}

/// What a UDP datagram from container `id` to `target` gives: `sent`, or the error's code.
async fn send_from(engine: &Engine, id: &str, target: SocketAddrV4) -> Result<String> {
    let script = format!(
        "const s = require('dgram').createSocket('udp4'); \
         s.send('x', {}, '{}', (e) => {{ console.log(e ? e.code : 'sent'); s.close(); }})",
        target.port(),
        target.ip()
    );
    node(engine, id, &script).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stacks_reach_their_own_containers_and_never_each_others() -> Result<()> {
    let tag = unique("");
    let subnet = SUBNET + 1;
    let mut network = Network::new(&format!("fci{tag}"), subnet)?;
    let central_dir = std::env::temp_dir().join(format!("ferry-test-cisol{tag}"));
    let central = Central::start(&central_dir, &format!("10.250.{subnet}.1"))?;
    let one = Member::join(&mut network, &central, "one", &tag).await?;
    let two = Member::join(&mut network, &central, "two", &tag).await?;
    let operator = Operator::login(&central, &tag)?;
    let admin = central.admin()?;
    let stack = write_stack(&format!("i{tag}"))?;
    for name in ["alpha", "beta"] {
        let (ok, out, err) =
            operator.run(&["deploy", "--stack", name, &stack.to_string_lossy()])?;
        ensure!(ok, "deploy {name}: {out}{err}");
        let (ok, out, err) = operator.run(&["services", "scale", "--stack", name, "web", "2"])?;
        ensure!(ok && out.contains("(one: 1, two: 1)"), "{out}{err}");
    }
    eventually(
        Duration::from_secs(90),
        "two webs of each stack running",
        || async {
            let mut all = Vec::new();
            for m in [&one, &two] {
                all.extend(webs(m).await?);
            }
            Ok(Saw(all.len() == 4, all.len()))
        },
    )
    .await?;
    let (alpha_one, alpha_one_at) = web_of(&one, "alpha").await?;
    let (_, alpha_two_at) = web_of(&two, "alpha").await?;
    let (beta_one, beta_one_at) = web_of(&one, "beta").await?;
    let (beta_two, beta_two_at) = web_of(&two, "beta").await?;
    let beta_service = ferry_tests::cluster::service_address(&admin, "beta", "web", 3000).await?;
    let alpha_service = ferry_tests::cluster::service_address(&admin, "alpha", "web", 3000).await?;
    // The records of all four reach both agents before the checks count.
    let engine_one = one.docker.engine();
    refused_within(
        engine_one,
        &alpha_one.id,
        beta_two_at,
        "alpha to beta's web on two",
    )
    .await?;

    // Allowed: alpha to alpha, on this server and the other, and through its service address.
    for target in [alpha_one_at, alpha_two_at, alpha_service] {
        let seen = connect_from(engine_one, &alpha_one.id, target).await?;
        ensure!(seen == "ok", "alpha's web to alpha's {target}: {seen}");
    }
    // Refused at once: alpha to beta, on this server and the other, and beta's service
    // address; a datagram too; and beta to alpha the other way.
    for target in [beta_one_at, beta_two_at, beta_service] {
        let seen = connect_from(engine_one, &alpha_one.id, target).await?;
        ensure!(seen == "EACCES", "alpha's web to beta's {target}: {seen}");
    }
    for (to, expected) in [(beta_two_at, "EACCES"), (alpha_two_at, "sent")] {
        let target = SocketAddrV4::new(*to.ip(), 7001);
        let seen = send_from(engine_one, &alpha_one.id, target).await?;
        ensure!(
            seen == expected,
            "a datagram from alpha to {target}: {seen}"
        );
    }
    let seen = connect_from(two.docker.engine(), &beta_two.id, alpha_one_at).await?;
    ensure!(
        seen == "EACCES",
        "beta's web on two to alpha's on one: {seen}"
    );
    let seen = connect_from(engine_one, &beta_one.id, beta_two_at).await?;
    ensure!(seen == "ok", "beta's web on one to beta's on two: {seen}");

    // Past the caller's hooks (a socket in the container's namespace but not its cgroup,
    // as a raw socket would be): the receiving container's program drops it.
    let control = connect_beside(engine_one, &alpha_one.id, alpha_two_at).await?;
    ensure!(
        control.is_ok(),
        "alpha's address to alpha's web: {control:?}"
    );
    for target in [beta_one_at, beta_two_at] {
        match connect_beside(engine_one, &alpha_one.id, target).await? {
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
            other => anyhow::bail!("from alpha's address to beta's {target}: {other:?}"),
        }
    }

    // A container still starting (no health check passed, so no record names it) is
    // isolated from its first moment: gamma's web sleeps before it listens.
    let gamma = ferry_tests::cluster::site_stack(
        &format!("ferry-test-cnet-gamma{tag}"),
        "services:\n  web:\n    build_root: app\n    command: sleep 600; node server.js\n    ports: [\"3000\"]\n    health:\n      endpoint: /healthz\n      timeout: 600s\n",
    )?;
    let _deploying = ferry_tests::Running(
        operator
            .command()?
            .args(["deploy", "--stack", "gamma", &gamma.to_string_lossy()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()?,
    );
    let (host, starting) = {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let mut found = None;
            for member in [&one, &two] {
                if let Some(c) = member
                    .containers()
                    .await?
                    .into_iter()
                    .find(|c| c.stack == "gamma" && c.running && c.address.is_some())
                {
                    found = Some((member, c));
                }
            }
            if let Some(found) = found {
                break found;
            }
            ensure!(Instant::now() < deadline, "gamma's web never ran");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    let starting_at = SocketAddrV4::new(starting.address.context("no address")?, 3000);
    let (alpha_here, alpha_here_at) = web_of(host, "alpha").await?;
    let engine_here = host.docker.engine();
    refused_within(
        engine_here,
        &alpha_here.id,
        starting_at,
        "alpha to gamma's starting web",
    )
    .await?;
    let seen = connect_from(engine_here, &starting.id, alpha_here_at).await?;
    ensure!(seen == "EACCES", "gamma's starting web to alpha's: {seen}");
    let gamma_stack = admin
        .stacks()
        .await?
        .into_iter()
        .find(|s| s.name == "gamma");
    ensure!(
        gamma_stack.as_ref().is_some_and(|s| s.serving.is_none()),
        "gamma was to be still starting: {gamma_stack:?}"
    );

    // Host processes keep access to every container.
    for target in [alpha_one_at, beta_one_at, beta_two_at] {
        let answer = one
            .server
            .run(|| ferry_tests::inside::http_get(target, "/"))??;
        ensure!(
            answer.starts_with("HTTP/1.1 200"),
            "the host to {target}: {answer}"
        );
    }
    // Each refusal on server one was counted.
    let counters =
        ferry_agent::dataplane::Counters::open(&ferry_agent::dataplane::map_dir(&one.paths.bpffs))?;
    let refused = counters.get(ferry_ebpf_abi::Counter::Isolated)?;
    ensure!(refused >= 6, "server one counted {refused} refusals");

    one.clean_up().await;
    two.clean_up().await;
    drop(central);
    let _ = std::fs::remove_dir_all(&central_dir);
    let _ = std::fs::remove_dir_all(&stack);
    let _ = std::fs::remove_dir_all(&gamma);
    Ok(())
}
