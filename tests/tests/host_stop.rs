//! Host tier: what a stopped agent leaves. A stop for a restart (SIGTERM) keeps the DNS
//! listener accepting (its socket keeper holds it) and the WireGuard link up; `ferry-agent
//! down` then closes the listener, ends the keeper and wireguard-go, and says what it
//! left (the pins, the containers); it refuses while the agent runs. An agent killed with
//! SIGKILL that nobody restarts holds its listener only for the keeper's orphan limit
//! (3 s here, 60 s by default): then connections are refused, not left waiting.

use std::{
    io::ErrorKind,
    net::{Ipv4Addr, SocketAddrV4, TcpStream},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use ferry_tests::{
    agent::agent_command_in,
    central::Central,
    cluster::{Member, eventually},
    netns::Server,
    unique,
};

/// The DNS listener of server one: the container network's gateway, port 53.
const LISTENER: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 66, 1, 1), 53);
/// The keepers' orphan limit the agent is given.
const ORPHAN_LIMIT: Duration = Duration::from_secs(3);

/// Whether a TCP connect to the listener from inside `server` is accepted (Ok(true)) or
/// refused (Ok(false)); anything else is an error.
fn accepts(server: &Server) -> Result<bool> {
    server.run(
        || match TcpStream::connect_timeout(&LISTENER.into(), Duration::from_secs(2)) {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == ErrorKind::ConnectionRefused => Ok(false),
            Err(e) => bail!("connecting to {LISTENER}: {e}"),
        },
    )?
}

fn wireguard_go_for(interface: &str) -> bool {
    !ferry_agent::down::processes(|args| {
        args[0].ends_with("wireguard-go") && args.iter().any(|a| a == interface)
    })
    .is_empty()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_keeps_the_listeners_a_stop_closes_them_and_a_crash_only_for_a_while()
-> Result<()> {
    let tag = unique("");
    let mut network = ferry_tests::netns::Network::new(&format!("fbd{tag}"), 131)?;
    let central_dir = std::env::temp_dir().join(format!("ferry-test-stop{tag}"));
    let central = Central::start(&central_dir, "10.250.131.1")?;
    let limit = ORPHAN_LIMIT.as_secs().to_string();
    let more = ["--keeper-orphan-limit-secs".to_string(), limit];
    let mut one = Member::join_with(&mut network, &central, "one", &tag, &more).await?;
    eventually(Duration::from_secs(20), "the DNS listener", || async {
        Ok(accepts(&one.server).unwrap_or(false))
    })
    .await?;
    let interface = one.paths.wg_interface.clone();
    ensure!(
        wireguard_go_for(&interface),
        "wireguard-go runs for {interface}"
    );
    let (state, bpffs) = (
        one.paths.state_dir.to_string_lossy().into_owned(),
        one.paths.bpffs.to_string_lossy().into_owned(),
    );
    let args = [
        "down",
        "--state-dir",
        &state,
        "--wg-interface",
        &interface,
        "--bpffs",
        &bpffs,
    ];
    let down = |server: &Server| agent_command_in(&args, Some(server));

    // While the agent runs, down is refused and changes nothing.
    let (ok, _, err) = down(&one.server)?;
    ensure!(!ok && err.contains("still runs"), "{err}");
    ensure!(
        accepts(&one.server)?,
        "the refused down closed the listener"
    );

    // Stopped as for a restart: the listener still accepts (into its queue), the link
    // stays, as the next agent needs them.
    let status = one.stop_agent()?;
    ensure!(status.success(), "the agent exited with {status}");
    ensure!(
        accepts(&one.server)?,
        "a stopped agent's listener must accept until down"
    );
    ensure!(
        wireguard_go_for(&interface),
        "wireguard-go ends only with down"
    );

    // down: the listener is closed, the keeper and wireguard-go end, what is left is said.
    let (ok, out, err) = down(&one.server)?;
    ensure!(ok, "{out}{err}");
    for said in [
        "closed the listeners kept for a restart: dns-10.66.1.1:53",
        &format!("removed the WireGuard link {interface} (wireguard-go, process "),
        "left: the pinned data plane in",
        "left: ferry's containers",
    ] {
        ensure!(out.contains(said), "down did not say {said:?}:\n{out}");
    }
    ensure!(!accepts(&one.server)?, "the listener accepts after down");
    eventually(Duration::from_secs(5), "wireguard-go ending", || async {
        Ok(!wireguard_go_for(&interface))
    })
    .await?;
    ensure!(
        !link_exists(&one.server, &interface)?,
        "the WireGuard link {interface} is still there"
    );

    // A crash nobody restarts: the listener accepts at first, and is closed once the
    // orphan limit has passed.
    one.start_agent()?;
    // Accepting, and held by a keeper: the keeper takes the socket a moment after the
    // agent binds it, and a crash in between would lose it with the agent.
    let dns_keeper = one
        .paths
        .state_dir
        .join("sockets")
        .join(format!("dns-{LISTENER}"));
    let dns_keeper = dns_keeper.to_string_lossy().into_owned();
    eventually(
        Duration::from_secs(20),
        "the DNS listener again, held by a keeper",
        || async {
            let kept = !ferry_agent::down::processes(|args| {
                args.iter().any(|a| a == "keep-sockets") && args.contains(&dns_keeper)
            })
            .is_empty();
            Ok(kept && accepts(&one.server).unwrap_or(false))
        },
    )
    .await?;
    one.kill_agent()?;
    let killed = Instant::now();
    ensure!(
        accepts(&one.server)?,
        "right after the crash the listener accepts"
    );
    eventually(
        ORPHAN_LIMIT + Duration::from_secs(5),
        "the orphaned listener closing",
        || async { Ok(!accepts(&one.server)?) },
    )
    .await?;
    let after = killed.elapsed();
    ensure!(
        after >= ORPHAN_LIMIT - Duration::from_millis(500),
        "closed {after:?} after the crash, before the orphan limit {ORPHAN_LIMIT:?}"
    );

    one.clean_up().await;
    drop(central);
    let _ = std::fs::remove_dir_all(&central_dir);
    Ok(())
}

/// Whether `interface` exists in `server`'s namespace.
fn link_exists(server: &Server, interface: &str) -> Result<bool> {
    let out = std::process::Command::new("ip")
        .args(["-n", server.name(), "link", "show", interface])
        .output()
        .context("running ip")?;
    Ok(out.status.success())
}
