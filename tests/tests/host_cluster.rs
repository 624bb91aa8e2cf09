//! Host tier: the example stack across two servers (two namespaces, each with its own
//! Docker Engine and agent) joined to a real central. Central is killed with SIGKILL while
//! the servers build, and an agent after the deploy: no state is lost, no container is
//! orphaned, duplicated or restarted. A web container finds both servers' api containers by
//! name, and its connections to the api's service address alternate between them. The
//! operator reads logs, runs commands and restarts
//! a service through the agents, scales a service, and deploys again; each generation
//! replaces the one before on both servers.

use std::{path::Path, time::Duration};

use anyhow::{Context as _, Result};
use ferry_api::{
    client::{Client, Trust},
    types::Phase,
};
use ferry_tests::{
    central::Central,
    cluster::{Member, Operator, Saw, eventually},
    inside::{exec, node},
    netns::Network,
    unique,
};

/// Docker's start time of each container on `member`, by id.
async fn start_times(member: &Member) -> Result<Vec<(String, String)>> {
    let mut times = Vec::new();
    for c in member.containers().await? {
        let inspect = member
            .docker
            .engine()
            .docker()
            .inspect_container(&c.id, None)
            .await?;
        let started = inspect
            .state
            .and_then(|s| s.started_at)
            .context("no start time")?;
        times.push((c.id, started));
    }
    times.sort();
    Ok(times)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_two_server_deploy_survives_central_and_agent_crashes() -> Result<()> {
    let tag = unique("");
    let mut network = Network::new(&format!("fbc{tag}"), 61)?;
    // The example stack's web installs Express: from the registry on the test network.
    network.serve_registry()?;
    let central_dir = std::env::temp_dir().join(format!("ferry-test-cluster{tag}"));
    let mut central = Central::start(&central_dir, "10.250.61.1")?;
    // Heartbeats every second, so a silent server is called unreachable within seconds.
    let beats = ["--heartbeat-interval-secs".to_string(), "1".to_string()];
    let one = Member::join_with(&mut network, &central, "one", &tag, &beats).await?;
    let mut two = Member::join_with(&mut network, &central, "two", &tag, &beats).await?;
    let operator = Operator::login(&central, &tag)?;
    let admin = Client::new(
        &central.url,
        &central.admin_token,
        Trust::Fingerprint(central.ca_fingerprint.clone()),
    )?;
    let shop = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/shop");
    let shop = shop.to_string_lossy();

    // Record generation 1, then kill central while the servers fetch and build it.
    let (ok, out, err) = operator.run(&["deploy", "--no-wait", "--stack", "shop", &shop])?;
    assert!(
        ok && out.contains("generation 1 of shop recorded"),
        "{out}{err}"
    );
    central.kill_and_restart(Duration::from_secs(2))?;
    eventually(Duration::from_secs(240), "generation 1 serving", || async {
        Ok(admin
            .stacks()
            .await
            .is_ok_and(|s| s.first().and_then(|s| s.serving) == Some(1)))
    })
    .await?;

    // Each server runs one container of each service, on its own subnet.
    let expected = vec![("api".to_string(), 1, true), ("web".to_string(), 1, true)];
    for (member, subnet) in [(&one, 1u8), (&two, 2u8)] {
        assert_eq!(member.inventory().await?, expected);
        for c in member.containers().await? {
            let address = c.address.context("container without an address")?;
            assert_eq!(address.octets()[..3], [10, 66, subnet], "{c:?}");
        }
    }
    // The operator sees the four, reported by their agents.
    eventually(
        Duration::from_secs(30),
        "four containers listed",
        || async {
            let (ok, out, _) = operator.run(&["containers", "list", "--stack", "shop"])?;
            Ok(ok && out.lines().filter(|l| l.contains(" running ")).count() == 4)
        },
    )
    .await?;

    // Discovery across servers: api.cloud66.local names both api containers, and the api's
    // service address spreads a web's connections evenly over them (counted by the peer
    // address each connection really reached).
    let api_ips = {
        let mut ips = Vec::new();
        for member in [&one, &two] {
            for c in member.containers().await? {
                if c.service == "api" {
                    ips.push(c.address.context("api without an address")?.to_string());
                }
            }
        }
        ips.sort();
        ips
    };
    let web_on_one = one
        .containers()
        .await?
        .into_iter()
        .find(|c| c.service == "web")
        .context("no web on one")?;
    let engine = one.docker.engine();
    // The agents' record watches were in their reconnect backoff after central's crash.
    eventually(
        Duration::from_secs(15),
        "api.cloud66.local names both api containers",
        || async {
            let named = exec(
                engine,
                &web_on_one.id,
                &["dig", "+short", "api.cloud66.local"],
            )
            .await?;
            let mut named: Vec<&str> = named.lines().collect();
            named.sort();
            Ok(Saw(named == api_ips, named.join(" ")))
        },
    )
    .await?;
    let address = exec(
        engine,
        &web_on_one.id,
        &["dig", "+short", "api.address.cloud66.local"],
    )
    .await?;
    let counts = node(
        engine,
        &web_on_one.id,
        &format!(
            "const net = require('net'); const counts = {{}}; let left = 40;
             (function next() {{
               if (!left--) return console.log(JSON.stringify(counts));
               const s = net.connect(4000, '{address}', () => {{
                 counts[s.remoteAddress] = (counts[s.remoteAddress] || 0) + 1;
                 s.destroy();
                 next();
               }});
               s.on('error', e => {{ console.log('error', e.code); process.exit(1); }});
             }})();"
        ),
    )
    .await?;
    let counts: std::collections::BTreeMap<String, u32> =
        serde_json::from_str(&counts).with_context(|| format!("counts from node: {counts}"))?;
    assert_eq!(counts.keys().cloned().collect::<Vec<_>>(), api_ips);
    assert!(counts.values().all(|n| *n == 20), "{counts:?}");

    // An agent crash changes nothing in what runs: the new agent adopts its containers.
    let before = start_times(&two).await?;
    let report = ferry_api::keys::containers("two");
    let reported_before = admin.list(&report).await?.revision;
    two.kill_agent()?;
    two.start_agent()?;
    // The new agent has looked at what runs once it reports it: a report newer than the
    // restart.
    eventually(
        Duration::from_secs(30),
        "a container report from two's new agent",
        || async {
            let items = admin.list(&report).await?.items;
            Ok(items.iter().any(|i| i.mod_revision > reported_before))
        },
    )
    .await?;
    assert_eq!(
        start_times(&two).await?,
        before,
        "same containers, not restarted"
    );

    // Operator actions reach a container through its server's agent.
    let api_on_two = two
        .containers()
        .await?
        .into_iter()
        .find(|c| c.service == "api")
        .context("no api on two")?;
    let short = &api_on_two.id[..12];
    let (ok, out, err) = operator.run(&["containers", "logs", short, "--lines", "5"])?;
    assert!(ok && out.contains("api listening on 4000"), "{out}{err}");
    let (ok, out, err) = operator.run(&[
        "containers",
        "exec",
        short,
        "--",
        "node",
        "-e",
        "console.log('generation', process.env.FERRY_GENERATION)",
    ])?;
    assert!(
        ok && out.contains("generation 1\n[exit code 0]"),
        "{out}{err}"
    );
    let (ok, _, err) = operator.run(&["containers", "exec", short, "--", "sh", "-c", "exit 3"])?;
    assert!(!ok && err.contains("[exit code 3]"), "{err}");
    let (ok, out, err) = operator.run(&["services", "list", "--stack", "shop"])?;
    assert!(ok, "{err}");
    let api_row = out
        .lines()
        .find(|l| l.starts_with("api "))
        .context("no api row")?;
    assert!(
        api_row.contains(" 2 ")
            && api_row.contains("one: 1 running")
            && api_row.contains("two: 1 running"),
        "{out}"
    );
    let before = start_times(&two).await?;
    let (ok, out, err) = operator.run(&["services", "restart", "--stack", "shop", "api"])?;
    assert!(ok && out.matches("restarted").count() == 2, "{out}{err}");
    let after = start_times(&two).await?;
    let restarted: Vec<_> = after
        .iter()
        .filter(|(id, t)| before.iter().any(|(i, b)| i == id && b != t))
        .map(|(id, _)| id.clone())
        .collect();
    assert_eq!(
        restarted,
        std::slice::from_ref(&api_on_two.id),
        "only the api restarted on two"
    );

    // Scaling api to one container happens in place: no new generation; the api on two
    // (the last by name among equals) drains and stops, web stays on both.
    let (ok, out, err) = operator.run(&["services", "scale", "--stack", "shop", "api", "1"])?;
    assert!(ok, "{out}{err}");
    assert!(
        out.contains("shop/api: 1 container in generation 1 (one: 1)")
            && out.contains("shop/api: 1 container serving"),
        "{out}"
    );
    assert_eq!(
        one.inventory().await?,
        [("api".to_string(), 1, true), ("web".to_string(), 1, true)]
    );
    assert_eq!(two.inventory().await?, [("web".to_string(), 1, true)]);

    // A deploy replaces every container on both servers, keeping api's count of one;
    // generation 1 drains, stops.
    let (ok, out, err) = operator.run(&["deploy", "--stack", "shop", &shop])?;
    assert!(ok, "{out}{err}");
    for needle in [
        "one: every container passed its health check",
        "two: every container passed its health check",
        "generation 2 of shop is serving",
        "generation 1 of shop stopped (3 containers removed)",
    ] {
        assert!(out.contains(needle), "missing {needle:?} in:\n{out}");
    }
    assert_eq!(
        one.inventory().await?,
        [("api".to_string(), 2, true), ("web".to_string(), 2, true)]
    );
    assert_eq!(two.inventory().await?, [("web".to_string(), 2, true)]);

    // Central lost nothing across its crash: every generation, in order, settled.
    let phases: Vec<(u64, Phase)> = admin
        .generations("shop")
        .await?
        .into_iter()
        .map(|g| (g.number, g.phase))
        .collect();
    assert_eq!(phases, [(1, Phase::Retired), (2, Phase::Serving)]);

    // `ferry servers list`: each server's agent version, its WireGuard backend (wireguard-go
    // here) and its peer by name, its running containers; a server whose agent is gone
    // is unreachable since its last heartbeat.
    let row = |out: &str, name: &str| {
        out.lines()
            .find(|l| l.starts_with(&format!("{name} ")))
            .map(str::to_string)
            .unwrap_or_default()
    };
    let on_one = one.containers().await?.iter().filter(|c| c.running).count();
    let on_two = two.containers().await?.iter().filter(|c| c.running).count();
    let wanted = [("one", "two: ", on_one), ("two", "one: ", on_two)];
    let shows = |out: &str| {
        wanted.iter().all(|(name, peer, containers)| {
            let line = row(out, name);
            line.contains("s ago")
                && line.contains(" userspace ")
                && line.contains(ferry_agent::membership::heartbeat::VERSION)
                && line.contains(peer)
                // CONTAINERS is the column before L4, whose value has a space of its own;
                // columns are at least two spaces apart.
                && line
                    .trim_end()
                    .rsplit_once("  ")
                    .is_some_and(|(before, _l4)| {
                        before.trim_end().ends_with(&format!(" {containers}"))
                    })
        })
    };
    let mut listed = String::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !shows(&listed) {
        assert!(
            std::time::Instant::now() < deadline,
            "servers list does not show version, wireguard-go, the peer and {on_one}/{on_two} \
             containers:\n{listed}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        listed = operator.run(&["servers", "list"])?.1;
    }
    two.kill_agent()?;
    eventually(Duration::from_secs(20), "two called unreachable", || {
        let (_, out, _) =
            operator
                .run(&["servers", "list"])
                .unwrap_or((false, String::new(), String::new()));
        let (one_row, two_row) = (row(&out, "one"), row(&out, "two"));
        async move { Ok(two_row.contains("unreachable since") && !one_row.contains("unreachable")) }
    })
    .await?;

    one.clean_up().await;
    two.clean_up().await;
    drop(central);
    let _ = std::fs::remove_dir_all(&central_dir);
    Ok(())
}
