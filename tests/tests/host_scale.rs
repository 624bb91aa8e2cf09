//! Host tier: a service as several containers. On one server, `web` scaled to 3 spreads
//! 30 requests through the ingress 10/10/10 and 30 connects to its service address
//! 10/10/10, and `web.cloud66.local` names all three; a deploy (keeping the count), a scale
//! up, a scale down and a rollback (restoring the old generation's count) under wrk fail
//! no request; at 40 containers the name's answer over UDP is
//! truncated at a record boundary with TC set, and over TCP lists all 40. On two servers,
//! 5 containers are 3 and 2, and a scale to 2 takes the removed ones out of rotation,
//! lets a request held open on one finish, and stops them.

use std::{
    collections::{BTreeMap, BTreeSet},
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    path::PathBuf,
    time::Duration,
};

use anyhow::{Context as _, Result, ensure};
use ferry_agent::containers::{Engine, FerryContainer};
use ferry_api::records::ServiceRecord;
use ferry_tests::{
    central::Central,
    cluster::{Member, Operator, eventually, service_address},
    http::Conn,
    inside::{exec, http_get, node},
    load::{self, Wrk},
    netns::Network,
    unique,
};

/// `service generation container` as the app says it.
fn who(text: &str) -> (String, String, String) {
    let mut words = text.split_whitespace();
    let mut next = || words.next().unwrap_or_default().to_string();
    (next(), next(), next())
}

/// A stack of `web` (published on port 80 by host name) and `client` (one container to
/// ask from), both the ingress tests' app, written to a fresh directory.
fn write_stack(tag: &str) -> Result<PathBuf> {
    ferry_tests::cluster::site_stack(
        &format!("ferry-test-scale{tag}"),
        "services:\n  web:\n    build_root: app\n    command: node server.js\n    ports: [\"3000:80\"]\n    traffic_matches: [\"web.example.test\"]\n    env_vars:\n      SERVICE: web\n    health:\n      endpoint: /healthz\n      timeout: 30s\n  client:\n    build_root: app\n    command: node server.js\n    ports: [\"3000\"]\n    env_vars:\n      SERVICE: client\n    constraints:\n      max_count: 1\n",
    )
}

/// The running containers of `service` on `member` in generation `generation`.
async fn running(member: &Member, service: &str, generation: u64) -> Result<Vec<FerryContainer>> {
    Ok(member
        .containers()
        .await?
        .into_iter()
        .filter(|c| c.service == service && c.generation == generation && c.running)
        .collect())
}

/// Container hostnames (Docker's 12-digit id) as the app names itself.
fn short(c: &FerryContainer) -> String {
    c.id.chars().take(12).collect()
}

/// How many of 30 requests on one keep-alive connection each container answered.
fn spread_of_requests(front: SocketAddr) -> Result<BTreeMap<String, usize>> {
    let mut conn = Conn::open(front)?;
    let mut counts = BTreeMap::new();
    for _ in 0..30 {
        let response = conn.get("web.example.test", "/")?;
        ensure!(response.status == 200, "status {}", response.status);
        *counts.entry(who(&response.text()).2).or_default() += 1;
    }
    Ok(counts)
}

/// `dig ARGS web.cloud66.local A` in container `id`, all of its output.
async fn dig(engine: &Engine, id: &str, args: &[&str]) -> Result<String> {
    let mut command = vec!["dig", "+time=3", "+tries=2"];
    command.extend_from_slice(args);
    command.extend_from_slice(&["web.cloud66.local", "A"]);
    exec(engine, id, &command).await
}

/// The A records in dig's ANSWER section.
fn answers(dig: &str) -> BTreeSet<Ipv4Addr> {
    dig.lines()
        .filter(|l| !l.starts_with(';'))
        .filter_map(|l| {
            let fields: Vec<&str> = l.split_whitespace().collect();
            match fields.as_slice() {
                [name, _, "IN", "A", address] if name.starts_with("web.cloud66.local") => {
                    address.parse().ok()
                }
                _ => None,
            }
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_server_balances_over_a_services_containers_through_every_path() -> Result<()> {
    let tag = unique("");
    let mut network = Network::new(&format!("fbs{tag}"), 111)?;
    let central_dir = std::env::temp_dir().join(format!("ferry-test-scale1{tag}"));
    let central = Central::start_with_drain(&central_dir, "10.250.111.1", "2s")?;
    let one = Member::join(&mut network, &central, "one", &tag).await?;
    let engine = one.docker.engine();
    let operator = Operator::login(&central, &tag)?;
    let admin = central.admin()?;
    let stack = write_stack(&tag)?;
    let stack_arg = stack.to_string_lossy().into_owned();
    let (ok, out, err) = operator.run(&["deploy", "--stack", "scaled", &stack_arg])?;
    ensure!(ok, "deploy: {out}{err}");

    // One server, web at 3: in place, generation 1, all three on this server.
    let (ok, out, err) = operator.run(&["services", "scale", "--stack", "scaled", "web", "3"])?;
    ensure!(ok, "scale: {out}{err}");
    ensure!(
        out.contains("scaled/web: 3 containers in generation 1 (one: 3)")
            && out.contains("scaled/web: 3 containers serving"),
        "{out}"
    );
    let webs = running(&one, "web", 1).await?;
    ensure!(webs.len() == 3, "{webs:?}");
    let names: BTreeSet<String> = webs.iter().map(short).collect();
    let addresses: BTreeSet<Ipv4Addr> = webs.iter().filter_map(|c| c.address).collect();
    ensure!(addresses.len() == 3, "three addresses: {webs:?}");
    let (ok, out, err) = operator.run(&["services", "list", "--stack", "scaled"])?;
    ensure!(ok && out.contains("one: 3 running"), "{out}{err}");

    // The ingress: 30 requests, 10 to each.
    let front = SocketAddr::V4(SocketAddrV4::new(
        one.server.addr().context("server one has no address")?,
        80,
    ));
    eventually(
        Duration::from_secs(20),
        "three webs behind port 80",
        || async { Ok(spread_of_requests(front).is_ok_and(|c| c.len() == 3)) },
    )
    .await?;
    let counts = spread_of_requests(front)?;
    ensure!(
        counts.keys().cloned().collect::<BTreeSet<_>>() == names
            && counts.values().all(|n| *n == 10),
        "ingress: {counts:?}, containers {names:?}"
    );

    // The service address, from the client container: 30 connects, 10 to each.
    let client = running(&one, "client", 1)
        .await?
        .pop()
        .context("no client container")?;
    let target = service_address(&admin, "scaled", "web", 3000).await?;
    let script = format!(
        "const http = require('http'); const seen = []; \
         const go = () => http.get({{ host: '{ip}', port: {port}, path: '/', agent: false }}, r => {{ \
           let b = ''; r.on('data', c => b += c); r.on('end', () => {{ \
             seen.push(b.trim().split(' ')[2]); \
             if (seen.length < 30) go(); else console.log(seen.join('\\n')); }}); }}) \
           .on('error', e => console.log('error', e.code)); go();",
        ip = target.ip(),
        port = target.port()
    );
    let answered = node(engine, &client.id, &script).await?;
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for line in answered.lines() {
        *counts.entry(line).or_default() += 1;
    }
    ensure!(
        counts
            .keys()
            .map(|s| s.to_string())
            .collect::<BTreeSet<_>>()
            == names
            && counts.values().all(|n| *n == 10),
        "service address: {counts:?}, containers {names:?}"
    );

    // web.cloud66.local: every container's address.
    let short_answer = dig(engine, &client.id, &["+short"]).await?;
    let named: BTreeSet<Ipv4Addr> = short_answer
        .lines()
        .filter_map(|l| l.parse().ok())
        .collect();
    ensure!(
        named == addresses,
        "dig: {short_answer}, containers {addresses:?}"
    );

    // Under load, no request fails: a deploy (3 containers, as before), a scale up and a
    // scale down of the new generation, and a rollback to generation 1 (its 3 again).
    let load = Wrk::start(front, "web.example.test", 8, "600s")?;
    let mut steps = Vec::new();
    let mut counts = Vec::new();
    for args in [
        vec!["deploy", "--stack", "scaled", stack_arg.as_str()],
        vec!["services", "scale", "--stack", "scaled", "web", "4"],
        vec!["services", "scale", "--stack", "scaled", "web", "2"],
    ] {
        steps.push(operator.run(&args)?);
        counts.push(running(&one, "web", 2).await?.len());
    }
    let (rolled_ok, rolled, rolled_err) = operator.run(&["rollback", "--stack", "scaled"])?;
    let summary = load.stop()?;
    println!("wrk across a deploy, two scales and a rollback:\n{summary}");
    for (ok, out, err) in &steps {
        ensure!(ok, "{out}{err}");
    }
    ensure!(rolled_ok, "rollback: {rolled}{rolled_err}");
    ensure!(
        counts == [3, 4, 2],
        "generation 2 ran {counts:?} webs: the deploy keeps 3, then 4, then 2"
    );
    ensure!(
        rolled.contains("generation 1 of scaled is serving")
            && rolled.contains("generation 2 of scaled stopped"),
        "{rolled}"
    );
    ensure!(
        running(&one, "web", 1).await?.len() == 3,
        "rollback restores generation 1's 3 webs"
    );
    load::check(&summary, 100).context("across the deploy, the scales and the rollback")?;

    // Forty containers: over UDP the answer is cut at a record boundary with TC set; over
    // TCP (redirected to the agent like UDP) it holds all forty.
    let (ok, out, err) = operator.run(&["services", "scale", "--stack", "scaled", "web", "40"])?;
    ensure!(
        ok && out.contains("scaled/web: 40 containers serving"),
        "{out}{err}"
    );
    let forty: BTreeSet<Ipv4Addr> = running(&one, "web", 1)
        .await?
        .iter()
        .filter_map(|c| c.address)
        .collect();
    ensure!(forty.len() == 40, "{} webs run", forty.len());
    eventually(
        Duration::from_secs(10),
        "40 webs in web's record",
        || async {
            let items = admin.list("records/scaled/web").await?.items;
            Ok(items.first().is_some_and(|i| {
                serde_json::from_value::<ServiceRecord>(i.value.clone())
                    .is_ok_and(|r| r.pick(Some(1)).len() == 40)
            }))
        },
    )
    .await?;
    let client = running(&one, "client", 1)
        .await?
        .pop()
        .context("no client container")?;
    let udp = dig(engine, &client.id, &["+ignore", "+noedns", "+notcp"]).await?;
    let flags = udp
        .lines()
        .find(|l| l.contains(";; flags:"))
        .with_context(|| format!("no flags in:\n{udp}"))?;
    let cut = answers(&udp);
    ensure!(
        flags
            .split(';')
            .nth(2)
            .is_some_and(|f| f.split_whitespace().any(|w| w == "tc")),
        "TC not set over UDP:\n{udp}"
    );
    ensure!(
        !cut.is_empty() && cut.len() < 40 && cut.is_subset(&forty),
        "over UDP, whole records and fewer than 40:\n{udp}"
    );
    let whole = answers(&dig(engine, &client.id, &["+tcp"]).await?);
    ensure!(whole == forty, "over TCP: {} of 40", whole.len());

    one.clean_up().await;
    drop(central);
    let _ = std::fs::remove_dir_all(&central_dir);
    let _ = std::fs::remove_dir_all(&stack);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_spread_a_service_and_a_scale_down_drains_what_it_removes() -> Result<()> {
    let tag = unique("");
    let mut network = Network::new(&format!("fbt{tag}"), 121)?;
    let central_dir = std::env::temp_dir().join(format!("ferry-test-scale2{tag}"));
    let central = Central::start_with_drain(&central_dir, "10.250.121.1", "8s")?;
    let one = Member::join(&mut network, &central, "one", &tag).await?;
    let two = Member::join(&mut network, &central, "two", &tag).await?;
    let operator = Operator::login(&central, &tag)?;
    let admin = central.admin()?;
    let stack = write_stack(&tag)?;
    let (ok, out, err) =
        operator.run(&["deploy", "--stack", "scaled", &stack.to_string_lossy()])?;
    ensure!(ok, "deploy: {out}{err}");

    // Five over two servers: 3 and 2.
    let (ok, out, err) = operator.run(&["services", "scale", "--stack", "scaled", "web", "5"])?;
    ensure!(
        ok && out.contains("scaled/web: 5 containers in generation 1 (one: 3, two: 2)"),
        "{out}{err}"
    );
    let on_one = running(&one, "web", 1).await?;
    ensure!(on_one.len() == 3, "{on_one:?}");
    ensure!(running(&two, "web", 1).await?.len() == 2);

    // Down to 2: one each stays. A request held open on a container that goes (the
    // highest-numbered on one) finishes; the removed ones leave the records while they
    // still run, then stop.
    let going = on_one
        .iter()
        .max_by_key(|c| c.index)
        .cloned()
        .context("no web on one")?;
    let address = going.address.context("no address")?;
    let target = SocketAddrV4::new(address, 3000);
    // Connected and sent from inside server one; read from here later.
    let mut held = one
        .server
        .run(|| -> std::io::Result<std::net::TcpStream> {
            let mut stream =
                std::net::TcpStream::connect_timeout(&target.into(), Duration::from_secs(2))?;
            stream.set_read_timeout(Some(Duration::from_secs(30)))?;
            stream.write_all(b"GET /slow?ms=5000 HTTP/1.0\r\nHost: test\r\n\r\n")?;
            Ok(stream)
        })??;
    eventually(
        Duration::from_secs(10),
        "the held request arriving",
        || async {
            let seen = one.server.run(|| http_get(target, "/seen"))??;
            Ok(seen.contains("GET /slow"))
        },
    )
    .await?;
    let done = admin.scale("scaled", "web", 2).await?;
    ensure!(
        done.placement == BTreeMap::from([("one".to_string(), 1), ("two".to_string(), 1)]),
        "{done:?}"
    );
    eventually(
        Duration::from_secs(10),
        "the removed containers out of web's record",
        || async {
            let items = admin.list("records/scaled/web").await?.items;
            let in_record = items.first().is_some_and(|i| {
                serde_json::from_value::<ServiceRecord>(i.value.clone())
                    .is_ok_and(|r| r.pick(Some(1)).iter().any(|e| e.address == address))
            });
            Ok(!in_record)
        },
    )
    .await?;
    ensure!(
        running(&one, "web", 1)
            .await?
            .iter()
            .any(|c| c.id == going.id),
        "the removed container must drain before it stops"
    );
    let mut response = String::new();
    held.read_to_string(&mut response)?;
    ensure!(
        response.starts_with("HTTP/1.1 200") && response.contains(&short(&going)),
        "the held request: {response}"
    );
    eventually(
        Duration::from_secs(60),
        "the removed containers stopping",
        || async {
            Ok(running(&one, "web", 1).await?.len() == 1
                && running(&two, "web", 1).await?.len() == 1)
        },
    )
    .await?;
    ensure!(
        !running(&one, "web", 1)
            .await?
            .iter()
            .any(|c| c.id == going.id)
    );

    one.clean_up().await;
    two.clean_up().await;
    drop(central);
    let _ = std::fs::remove_dir_all(&central_dir);
    let _ = std::fs::remove_dir_all(&stack);
    Ok(())
}
