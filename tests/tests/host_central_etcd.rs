//! Host tier: central on a real three-member etcd cluster (Debian's etcd-server, on
//! loopback). The example stack deploys across two servers while the etcd leader is killed
//! with SIGKILL: the deploy completes on the two members left, nothing is orphaned or
//! doubled, the operator's status shows the dead member and the new leader, and the next
//! deploy works. A second `init` over the same cluster is refused and changes nothing.
//! Two central replicas serve the same cluster: each server's agent prefers a different
//! one, so the generation settles from reports through both, once; the replica the
//! operator and one agent talk to is killed mid-deploy and they carry on with the other.
//! A SQLite central with a running stack moves to etcd with `ferry-central migrate`: the
//! agent follows the etcd-backed central without being touched, and the next deploy works.

use std::{path::Path, process::Command, time::Duration};

use anyhow::{Context as _, Result};
use ferry_api::client::{Client, Trust};
use ferry_tests::{
    agent::workspace_binary,
    central::Central,
    cluster::{Member, Operator, Saw, eventually},
    etcd::EtcdCluster,
    netns::Network,
    unique,
};

/// The example stack's directory.
fn shop() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/shop")
        .to_string_lossy()
        .into_owned()
}

/// Waits until generation `n` of shop serves.
async fn until_serving(admin: &Client, n: u64) -> Result<()> {
    eventually(
        Duration::from_secs(240),
        &format!("generation {n} serving"),
        || async {
            let serving = admin
                .stacks()
                .await
                .map(|s| s.first().and_then(|s| s.serving));
            Ok(Saw(
                matches!(serving, Ok(Some(s)) if s == n),
                format!("{serving:?}"),
            ))
        },
    )
    .await
}

/// Waits until each of `members` runs one api and one web of generation `n` and nothing
/// else.
async fn until_only(members: &[&Member], n: u64) -> Result<()> {
    let expected = vec![("api".to_string(), n, true), ("web".to_string(), n, true)];
    for member in members {
        eventually(
            Duration::from_secs(60),
            &format!("only generation {n}"),
            || async {
                let now = member.inventory().await?;
                Ok(Saw(now == expected, now))
            },
        )
        .await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deploy_completes_while_the_etcd_leader_is_killed() -> Result<()> {
    let tag = unique("");
    let mut etcd = EtcdCluster::start(&format!("e{tag}"), 3).await?;
    let store = etcd.url();
    let mut network = Network::new(&format!("fbe{tag}"), 151)?;
    network.serve_registry()?;
    let central_dir = std::env::temp_dir().join(format!("ferry-test-etcd{tag}"));
    let central = Central::start_on_etcd(&central_dir, "10.250.151.1", &store)?;

    // The cluster holds this central's state now: a second init over it is refused, and
    // leaves no data directory behind.
    let second = std::env::temp_dir().join(format!("ferry-test-etcd-second{tag}"));
    let init = Command::new(workspace_binary("ferry-central", "FERRY_CENTRAL_BIN")?)
        .args(["init", "--data-dir"])
        .arg(&second)
        .args(["--url", "https://10.250.151.1:7443", "--store", &store])
        .output()?;
    let said = String::from_utf8_lossy(&init.stderr);
    assert!(!init.status.success(), "a second init succeeded");
    assert!(said.contains("already holds a central's state"), "{said}");
    assert!(
        !second.exists(),
        "the refused init left {}",
        second.display()
    );

    let one = Member::join(&mut network, &central, "one", &tag).await?;
    let two = Member::join(&mut network, &central, "two", &tag).await?;
    let operator = Operator::login(&central, &tag)?;
    let admin = central.admin()?;
    let shop = shop();

    // Record generation 1, then kill the etcd leader while the servers fetch and build.
    let (ok, out, err) = operator.run(&["deploy", "--no-wait", "--stack", "shop", &shop])?;
    assert!(
        ok && out.contains("generation 1 of shop recorded"),
        "{out}{err}"
    );
    let leader = etcd.leader().await?;
    let killed = etcd.name(leader).to_string();
    etcd.kill(leader)?;
    until_serving(&admin, 1).await?;
    let expected = vec![("api".to_string(), 1, true), ("web".to_string(), 1, true)];
    for member in [&one, &two] {
        assert_eq!(member.inventory().await?, expected, "one of each, once");
    }

    // The operator sees the backend, the dead member and a new leader among the others.
    let health = admin.health().await?;
    assert_eq!(health.store.backend, "etcd");
    assert_eq!(health.store.members.len(), 3, "{health:?}");
    let dead = health
        .store
        .members
        .iter()
        .find(|m| m.name == killed)
        .context("the killed member listed")?;
    assert!(!dead.healthy && dead.problem.is_some(), "{dead:?}");
    assert_eq!(
        health.store.members.iter().filter(|m| m.leader).count(),
        1,
        "one leader among the live: {health:?}"
    );
    let status = Command::new(workspace_binary("ferry-central", "FERRY_CENTRAL_BIN")?)
        .args(["status", "--data-dir"])
        .arg(&central_dir)
        .output()?;
    let printed = String::from_utf8_lossy(&status.stdout);
    assert!(
        status.status.success(),
        "{printed}{}",
        String::from_utf8_lossy(&status.stderr)
    );
    assert!(printed.contains("store:    etcd ("), "{printed}");
    assert!(
        printed.contains(&format!("member:   {killed} ")),
        "{printed}"
    );
    assert!(printed.contains("unhealthy"), "{printed}");
    assert!(printed.contains("healthy, leader"), "{printed}");

    // Two of three members are a majority: the next deploy works.
    let (ok, out, err) = operator.run(&["deploy", "--stack", "shop", &shop])?;
    assert!(ok, "{out}{err}");
    until_only(&[&one, &two], 2).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sqlite_central_migrated_to_etcd_keeps_its_stack_and_its_agents() -> Result<()> {
    let tag = unique("");
    let etcd = EtcdCluster::start(&format!("m{tag}"), 3).await?;
    let mut network = Network::new(&format!("fbm{tag}"), 152)?;
    network.serve_registry()?;
    let central_dir = std::env::temp_dir().join(format!("ferry-test-migrate{tag}"));
    let mut central = Central::start(&central_dir, "10.250.152.1")?;
    let one = Member::join(&mut network, &central, "one", &tag).await?;
    let operator = Operator::login(&central, &tag)?;
    let admin = central.admin()?;
    let shop = shop();
    let (ok, out, err) = operator.run(&["deploy", "--stack", "shop", &shop])?;
    assert!(ok, "{out}{err}");
    let sqlite_store = admin.list("stacks/").await?.store;

    // Migrated while central is down; it serves again from the same directory.
    let bin = workspace_binary("ferry-central", "FERRY_CENTRAL_BIN")?;
    let store = etcd.url();
    central.restart_around(|data_dir| {
        let migrate = || {
            Command::new(&bin)
                .args(["migrate", "--data-dir"])
                .arg(data_dir)
                .args(["--to", &store])
                .output()
        };
        let migrated = migrate()?;
        let said = String::from_utf8_lossy(&migrated.stdout);
        anyhow::ensure!(
            migrated.status.success() && said.contains("keys into etcd"),
            "{said}{}",
            String::from_utf8_lossy(&migrated.stderr)
        );
        // Run again, it refuses: the cluster holds a central's state now.
        let again = migrate()?;
        let said = String::from_utf8_lossy(&again.stderr);
        anyhow::ensure!(
            !again.status.success() && said.contains("already keeps its state in etcd"),
            "{said}"
        );
        Ok(())
    })?;
    let health = admin.health().await?;
    assert_eq!(health.store.backend, "etcd", "{health:?}");
    let listed = admin.list("stacks/").await?;
    assert_ne!(listed.store, sqlite_store, "a new store identity");
    let stacks = admin.stacks().await?;
    assert_eq!(
        stacks.first().and_then(|s| s.serving),
        Some(1),
        "{stacks:?}"
    );
    // The same tokens: the operator and the agent carry on with what they have.
    let (ok, out, err) = operator.run(&["deploy", "--stack", "shop", &shop])?;
    assert!(ok, "{out}{err}");
    until_only(&[&one], 2).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_settle_a_generation_once_and_survive_one_killed_mid_deploy() -> Result<()> {
    let tag = unique("");
    let etcd = EtcdCluster::start(&format!("r{tag}"), 3).await?;
    let mut network = Network::new(&format!("fbr{tag}"), 153)?;
    network.serve_registry()?;
    let central_dir = std::env::temp_dir().join(format!("ferry-test-replicas{tag}"));
    let mut central = Central::start_on_etcd(&central_dir, "10.250.153.1", &etcd.url())?;
    let first = central.url.clone();
    let second = central.add_replica()?;
    // One prefers the first replica, two the second: reports reach central through both.
    let one = Member::join(&mut network, &central, "one", &tag).await?;
    let both = central.url.clone();
    central.url = format!("{second},{first}");
    let two = Member::join(&mut network, &central, "two", &tag).await?;
    central.url = both;
    let operator = Operator::login(&central, &tag)?;
    let admin = central.admin()?;
    let shop = shop();

    let (ok, out, err) = operator.run(&["deploy", "--stack", "shop", &shop])?;
    assert!(ok, "{out}{err}");
    let generations = admin.generations("shop").await?;
    assert_eq!(generations.len(), 1, "{generations:?}");
    assert_eq!(
        admin.stacks().await?.first().and_then(|s| s.serving),
        Some(1)
    );
    let expected = vec![("api".to_string(), 1, true), ("web".to_string(), 1, true)];
    for member in [&one, &two] {
        assert_eq!(member.inventory().await?, expected, "one of each, once");
    }
    // Every replica tells both servers' last contact, whichever took their heartbeats.
    for url in [&first, &second] {
        let replica = Client::new(
            url,
            &central.admin_token,
            Trust::Fingerprint(central.ca_fingerprint.clone()),
        )?;
        let status = replica.servers_status().await?;
        assert_eq!(status.len(), 2, "{url}: {status:?}");
        assert!(
            status.iter().all(|s| s.last_contact_unix.is_some()),
            "{url}: {status:?}"
        );
    }

    // The replica the operator and one's agent talk to dies while generation 2 builds.
    let (ok, out, err) = operator.run(&["deploy", "--no-wait", "--stack", "shop", &shop])?;
    assert!(
        ok && out.contains("generation 2 of shop recorded"),
        "{out}{err}"
    );
    central.kill_first()?;
    until_serving(&admin, 2).await?;
    until_only(&[&one, &two], 2).await?;
    // The operator's next commands go to the replica left, which lists what the agents
    // report: the old generation's stop arrives a moment after Docker shows it (an agent
    // whose report met the dead replica sends it again on its next tick).
    eventually(
        Duration::from_secs(20),
        "central lists only generation 2 as running",
        || async {
            let (ok, out, err) = operator.run(&["containers", "list", "--stack", "shop"])?;
            // SERVER STACK SERVICE GENERATION STATE ...: four rows, all generation 2, running.
            let rows: Vec<Vec<&str>> = out
                .lines()
                .skip(1)
                .map(|l| l.split_whitespace().collect())
                .filter(|r: &Vec<&str>| !r.is_empty())
                .collect();
            let listed = ok
                && rows.len() == 4
                && rows
                    .iter()
                    .all(|r| r.get(3) == Some(&"2") && r.get(4) == Some(&"running"));
            Ok(Saw(listed, format!("{out}{err}")))
        },
    )
    .await?;
    Ok(())
}
