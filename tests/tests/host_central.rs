//! Host tier: a real central, two servers (namespaces on a test bridge) whose agents join
//! it and build the WireGuard mesh from its watch. This kernel has no WireGuard module, so
//! the agents fall back to wireguard-go, as they would on such a server.

use std::{
    net::SocketAddrV4,
    os::unix::fs::PermissionsExt as _,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use ferry_api::client::{Client, Trust};
use ferry_tests::{
    agent::Agent,
    central::Central,
    cluster::Bare,
    netns::{Network, Server},
    probe::Probe,
    unique,
};

/// Connects from `from` to `to` until a backend answers or `deadline` passes.
fn reach(probe: &Probe, from: &Server, to: SocketAddrV4, within: Duration) -> Result<String> {
    let deadline = Instant::now() + within;
    loop {
        let answer = probe
            .connect(to, 1, |cmd| from.enter(cmd))?
            .pop()
            .unwrap_or_default();
        if !answer.starts_with("error") || Instant::now() > deadline {
            return Ok(answer);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn agents_join_central_and_the_mesh_follows_its_watch() -> Result<()> {
    let tag = unique("");
    let mut network = Network::new(&format!("fbc{tag}"), 31)?;
    let central_dir = std::env::temp_dir().join(format!("ferry-test-central{tag}"));
    let central = Central::start(&central_dir, "10.250.31.1")?;
    let one = Bare::new(&mut network, &tag, "one")?;
    let two = Bare::new(&mut network, &tag, "two")?;

    let (ok, joined, err) = one.join(&central, "one")?;
    assert!(
        ok && joined.contains("container subnet 10.66.1.0/24"),
        "{joined}{err}"
    );
    let (ok, joined, err) = two.join(&central, "two")?;
    assert!(ok && joined.contains("10.66.2.0/24"), "{joined}{err}");
    // A second join of the same server is refused and changes nothing.
    let (ok, _, err) = one.join(&central, "one")?;
    assert!(!ok && err.contains("already joined"), "{err}");

    // The private key stays on its server: mode 0600 there, and central never saw it.
    let key_file = one.paths.state_dir.join("wireguard.key");
    assert_eq!(
        std::fs::metadata(&key_file)?.permissions().mode() & 0o777,
        0o600
    );
    let private = std::fs::read(&key_file)?;
    let db = std::fs::read(central_dir.join("state.db"))?;
    let wal = std::fs::read(central_dir.join("state.db-wal")).unwrap_or_default();
    assert!(
        !db.windows(private.len()).any(|w| w == private)
            && !wal.windows(private.len()).any(|w| w == private)
    );

    let agent_one = Agent::start_in(&one.paths, Some(&one.server))?;
    let _agent_two = Agent::start_in(&two.paths, Some(&two.server))?;

    // A service on server two's container address answers server one through the tunnel.
    let probe = Probe::new(env!("CARGO_BIN_EXE_ferry-probe"));
    let target = SocketAddrV4::new("10.66.2.1".parse()?, 9000);
    let deadline = Instant::now() + Duration::from_secs(30);
    let _backend = loop {
        // The address exists once two's agent has configured its interface.
        match probe.serve(target, "two", |cmd| two.server.enter(cmd)) {
            Ok(backend) => break backend,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(200)),
            Err(e) => return Err(e).context("server two's mesh address never appeared"),
        }
    };
    assert_eq!(
        reach(&probe, &one.server, target, Duration::from_secs(30))?,
        "two"
    );

    // The agent going away leaves the mesh working.
    agent_one.kill()?;
    assert_eq!(
        reach(&probe, &one.server, target, Duration::from_secs(5))?,
        "two"
    );
    let _agent_one = Agent::start_in(&one.paths, Some(&one.server))?;

    // The operator removes server two: server one's agent drops it as a peer.
    let admin = Client::new(
        &central.url,
        &central.admin_token,
        Trust::Fingerprint(central.ca_fingerprint.clone()),
    )?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(admin.remove_server("two"))?;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let answer = probe
            .connect(target, 1, |cmd| one.server.enter(cmd))?
            .pop()
            .unwrap_or_default();
        if answer.starts_with("error") {
            break;
        }
        if Instant::now() > deadline {
            bail!("server two is still reachable 20 s after its removal: {answer}");
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    drop(central);
    let _ = std::fs::remove_dir_all(&central_dir);
    Ok(())
}

/// Runs `ip netns exec <server> ARGS`.
fn inside(server: &Server, args: &[&str]) -> Result<()> {
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", server.name()])
        .args(args)
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// Waits until `log` (the agent's) holds `text`.
fn logged(log: &std::path::Path, text: &str, within: Duration) -> Result<()> {
    let deadline = Instant::now() + within;
    loop {
        let got = std::fs::read_to_string(log).unwrap_or_default();
        if got.contains(text) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the agent never logged {text:?}:\n{got}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Central compacts its history (here keeping one revision, every 100 ms). Server one's
/// agent is cut off from central (a prohibit route, its connections destroyed) while
/// servers two and three join and the revision one had seen is compacted away; once it can
/// reach central again its watch is refused as compacted, it lists again, and both become
/// its WireGuard peers: nothing missed.
#[test]
fn an_agent_cut_off_through_a_compaction_lists_again_and_misses_nothing() -> Result<()> {
    let tag = unique("");
    let mut network = Network::new(&format!("fbk{tag}"), 32)?;
    let central_dir = std::env::temp_dir().join(format!("ferry-test-compact{tag}"));
    let central = Central::start_with_flags(
        &central_dir,
        "10.250.32.1",
        &[
            "--history-revisions",
            "1",
            "--history-age",
            "0s",
            "--compaction-interval",
            "100ms",
        ],
    )?;
    let one = Bare::new(&mut network, &tag, "one")?;
    let two = Bare::new(&mut network, &tag, "two")?;
    let (ok, joined, err) = one.join(&central, "one")?;
    anyhow::ensure!(ok, "{joined}{err}");
    let agent = Agent::start_in(&one.paths, Some(&one.server))?;
    logged(&agent.log, "mesh applied", Duration::from_secs(20))?;

    let admin = Client::new(
        &central.url,
        &central.admin_token,
        Trust::Fingerprint(central.ca_fingerprint.clone()),
    )?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let seen = runtime.block_on(admin.list("servers/"))?.revision;

    // Cut off: a new connection to central is refused at once (a prohibit route), and the
    // open ones (the watches) are destroyed.
    inside(
        &one.server,
        &["ip", "route", "add", "prohibit", "10.250.32.1/32"],
    )?;
    inside(&one.server, &["ss", "-K", "dst", "10.250.32.1"])?;
    let (ok, joined, err) = two.join(&central, "two")?;
    anyhow::ensure!(ok, "{joined}{err}");
    // A third server joins by the API alone (no agent needed): a second revision after the
    // one one saw, so that one is compacted away.
    let joiner = Client::new(
        &central.url,
        &central.join_token,
        Trust::Fingerprint(central.ca_fingerprint.clone()),
    )?;
    use base64::Engine as _;
    runtime.block_on(joiner.join(&ferry_api::types::JoinRequest {
        name: "three".into(),
        wireguard_public_key: base64::engine::general_purpose::STANDARD.encode([3u8; 32]),
        wireguard_endpoint: "10.250.32.9:51820".parse()?,
        memory_bytes: None,
    }))?;
    // One's followers noticed.
    logged(&agent.log, "mesh sync: ", Duration::from_secs(20))?;
    // The revision one saw is no longer in central's history.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match runtime.block_on(admin.watch("servers/", seen)) {
            Err(ferry_api::client::ClientError::Compacted { .. }) => break,
            Ok(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(100)),
            Ok(_) => bail!("revision {seen} was never compacted"),
            Err(e) => return Err(e.into()),
        }
    }

    inside(
        &one.server,
        &["ip", "route", "del", "prohibit", "10.250.32.1/32"],
    )?;
    logged(&agent.log, "listing again", Duration::from_secs(60))?;
    let keys: Vec<String> = runtime
        .block_on(admin.servers())?
        .into_iter()
        .filter(|s| s.name != "one")
        .map(|s| s.wireguard_public_key)
        .collect();
    anyhow::ensure!(keys.len() == 2, "two and three are registered: {keys:?}");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let peers = std::process::Command::new("ip")
            .args(["netns", "exec", one.server.name(), "wg", "show"])
            .arg(&one.paths.wg_interface)
            .arg("peers")
            .output()?;
        let peers = String::from_utf8_lossy(&peers.stdout).into_owned();
        if keys.iter().all(|k| peers.contains(k)) {
            break;
        }
        if Instant::now() > deadline {
            bail!("two and three never became one's peers: {}", peers);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    drop(agent);
    drop(central);
    let _ = std::fs::remove_dir_all(&central_dir);
    Ok(())
}
