//! Host tier: the ingress. Three servers (namespaces, each with its Docker Engine and
//! agent) run a stack of three services sharing host port 80: `shop.example.com` (a
//! container on every server), `*.blog.example` and the default. A client outside the
//! servers (the test, on the bridge) connects to server one's port 80 and sees:
//! requests routed by their own `Host`, even on one keep-alive connection; round-robin
//! counted even over the three shop containers (two of them across the WireGuard mesh);
//! the proxy headers; a WebSocket-style upgrade passed through; HTTPS on port 443 with a
//! certificate per host picked by SNI, over HTTP/2 and HTTP/1.1; every hostile head refused
//! with nothing forwarded a backend could misread; 100 MB up and down intact across a
//! deploy while new requests already reach the new generation; a container that fails its
//! health check or dies taken out of rotation; an agent restarted under load with no
//! connection refused or reset; and the agent's Prometheus figures. The `tcp:` and `udp:`
//! ports (L4) have their own test, `host_l4`.

use std::{
    io::Write as _,
    net::{SocketAddr, SocketAddrV4},
    path::Path,
    sync::{Arc, mpsc},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, ensure};
use ferry_tests::{
    central::Central,
    cluster::{Member, Operator, eventually},
    http::Conn,
    load::{self, Wrk},
    netns::Network,
    unique,
};
use sha2::{Digest as _, Sha256, Sha512};

/// 100 MB, the size the issue asks to move both ways during a deploy.
const BULK_MB: usize = 100;
const MB: usize = 1 << 20;

/// `service generation container` as the app says it.
fn who(text: &str) -> (String, String, String) {
    let mut words = text.split_whitespace();
    let mut next = || words.next().unwrap_or_default().to_string();
    (next(), next(), next())
}

/// The app's download bytes: sha512("ferry") repeated over 1 MiB, that MiB repeated.
fn download_chunk() -> Vec<u8> {
    let block = Sha512::digest(b"ferry");
    block.iter().copied().cycle().take(MB).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingress_routes_balances_and_deploys_without_dropping_anything() -> Result<()> {
    let tag = unique("");
    let mut network = Network::new(&format!("fbi{tag}"), 81)?;
    let central_dir = std::env::temp_dir().join(format!("ferry-test-ingress{tag}"));
    // Long enough for the transfers held open across the flip.
    let central = Central::start_with_drain(&central_dir, "10.250.81.1", "30s")?;
    let mut one = Member::join(&mut network, &central, "one", &tag).await?;
    let two = Member::join(&mut network, &central, "two", &tag).await?;
    let three = Member::join(&mut network, &central, "three", &tag).await?;
    let operator = Operator::login(&central, &tag)?;
    let site = Path::new(env!("CARGO_MANIFEST_DIR")).join("stacks/site");
    let site = site.to_string_lossy().into_owned();
    let (ok, out, err) = operator.run(&["deploy", "--stack", "site", &site])?;
    ensure!(ok, "deploy: {out}{err}");
    let front = SocketAddr::V4(SocketAddrV4::new(
        one.server.addr().context("server one has no address")?,
        80,
    ));

    // The listener appears once the records reach the agent.
    eventually(Duration::from_secs(20), "port 80 answers", || async {
        Ok(Conn::open(front)
            .and_then(|mut c| c.get("shop.example.com", "/"))
            .is_ok_and(|r| r.status == 200))
    })
    .await?;
    // Every shop container is in the records before counting.
    eventually(
        Duration::from_secs(20),
        "three shop containers serve",
        || async {
            let mut c = Conn::open(front)?;
            let mut seen = std::collections::BTreeSet::new();
            for _ in 0..6 {
                seen.insert(who(&c.get("shop.example.com", "/")?.text()).2);
            }
            Ok(seen.len() == 3)
        },
    )
    .await?;

    // A slowloris client starts now and is looked at last.
    let slowloris = std::thread::spawn(move || -> Result<(u16, Duration)> {
        let mut c = Conn::open(front)?;
        let started = Instant::now();
        c.send(b"GET / HTTP/1.1\r\nHost: shop.exa")?;
        std::thread::sleep(Duration::from_secs(2));
        c.send(b"mple.com\r\nX-Slow: ")?;
        let status = c.response().map(|r| r.status).unwrap_or(0);
        Ok((status, started.elapsed()))
    });

    // Routing by host name, per request, on one keep-alive connection.
    let mut c = Conn::open(front)?;
    for host in [
        "shop.example.com",
        "a.blog.example",
        "shop.example.com",
        "deep.er.blog.example",
        "blog.example",
        "unknown.example",
        "SHOP.EXAMPLE.COM:80",
    ] {
        let r = c.get(host, "/")?;
        ensure!(r.status == 200, "{host}: {}", r.status);
        let wanted = match host {
            "shop.example.com" | "SHOP.EXAMPLE.COM:80" => "shop",
            "a.blog.example" | "deep.er.blog.example" => "blog",
            _ => "fallback",
        };
        ensure!(who(&r.text()).0 == wanted, "{host} reached {}", r.text());
    }

    // Round-robin: 30 requests, 10 to each shop container, on this server and the others.
    let mut counts = std::collections::BTreeMap::<String, usize>::new();
    for _ in 0..30 {
        *counts
            .entry(who(&c.get("shop.example.com", "/")?.text()).2)
            .or_default() += 1;
    }
    ensure!(
        counts.len() == 3 && counts.values().all(|n| *n == 10),
        "uneven: {counts:?}"
    );

    // The proxy headers: set by ferry, whatever the client claimed.
    c.send(b"GET /headers HTTP/1.1\r\nHost: shop.example.com\r\nX-Forwarded-For: 203.0.113.9\r\nX-Forwarded-Proto: https\r\n\r\n")?;
    let headers: serde_json::Value = serde_json::from_slice(&c.response()?.body)?;
    ensure!(
        headers["x-forwarded-for"] == "10.250.81.1"
            && headers["x-forwarded-proto"] == "http"
            && headers["x-forwarded-host"] == "shop.example.com",
        "{headers}"
    );

    // An upgrade goes through, then bytes both ways.
    let mut ws = Conn::open(front)?;
    ws.send(
        b"GET /ws HTTP/1.1\r\nHost: a.blog.example\r\nUpgrade: echo\r\nConnection: Upgrade\r\n\r\n",
    )?;
    let (status, _) = ws.head()?;
    ensure!(status == 101, "upgrade answered {status}");
    let greeting = String::from_utf8(ws.some()?)?;
    ensure!(greeting.starts_with("blog 1 "), "{greeting}");
    ws.send(b"ping over the tunnel\n")?;
    let echo = String::from_utf8(ws.exactly(21)?)?;
    ensure!(echo == "ping over the tunnel\n", "{echo:?}");
    drop(ws);

    hostile_heads_are_refused(front)?;

    host_names_and_targets_in_every_spelling(front)?;

    early_answers_close_without_a_reset(front)?;

    https_serves_each_host_its_certificate(front, &operator, &central_dir).await?;

    let (status, waited) = slowloris
        .join()
        .map_err(|_| anyhow::anyhow!("slowloris panicked"))??;
    ensure!(
        status == 408 && waited < Duration::from_secs(15),
        "a head trickling in got {status} after {waited:?}"
    );

    bulk_transfers_survive_a_deploy(front, &operator, &site).await?;

    // The agent's figures, from inside server one (the endpoint is on its loopback).
    let metrics = one.server.run(|| -> Result<String> {
        let mut m = Conn::open("127.0.0.1:9466".parse()?)?;
        Ok(m.get("localhost", "/metrics")?.text())
    })??;
    for wanted in [
        "ferry_ingress_requests_total{service=\"site/shop\"",
        "code=\"2xx\"",
        "ferry_ingress_refused_total{code=\"431\"}",
        "ferry_ingress_refused_total{code=\"400\"}",
        "ferry_ingress_request_duration_seconds_bucket{service=\"site/blog\"",
        "ferry_ingress_response_bytes_total{service=\"site/shop\"",
    ] {
        ensure!(metrics.contains(wanted), "no {wanted} in:\n{metrics}");
    }

    restarted_under_load(front, &mut one)?;

    containers_that_fail_or_die_leave_rotation(front, [&one, &two, &three]).await?;

    for member in [one, two, three] {
        member.clean_up().await;
    }
    drop(central);
    let _ = std::fs::remove_dir_all(&central_dir);
    Ok(())
}

/// Each hostile head gets its refusal and a closed connection, and the backend never sees
/// a request hidden in it (the fallback service has one container, which lists what it saw).
fn hostile_heads_are_refused(front: SocketAddr) -> Result<()> {
    let big = format!(
        "GET / HTTP/1.1\r\nHost: fallback\r\nX-Big: {}\r\n\r\n",
        "a".repeat(20 * 1024)
    );
    let mut many = "GET / HTTP/1.1\r\nHost: fallback\r\n".to_string();
    for i in 0..150 {
        many.push_str(&format!("X-H{i}: {i}\r\n"));
    }
    many.push_str("\r\n");
    let smuggled = "GET /smuggled HTTP/1.1\r\nHost: fallback\r\n\r\n";
    let cases: Vec<(&str, String, u16)> = vec![
        ("an oversized head", big, 431),
        ("150 header lines", many, 431),
        (
            "Content-Length with Transfer-Encoding",
            format!(
                "POST /cl-te HTTP/1.1\r\nHost: fallback\r\nContent-Length: {}\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{smuggled}",
                5 + smuggled.len()
            ),
            400,
        ),
        (
            "two Content-Lengths",
            format!(
                "POST /two-lengths HTTP/1.1\r\nHost: fallback\r\nContent-Length: 0\r\nContent-Length: {}\r\n\r\n{smuggled}",
                smuggled.len()
            ),
            400,
        ),
        (
            "a folded header",
            "GET /folded HTTP/1.1\r\nHost: fallback\r\nX-A: b\r\n c\r\n\r\n".into(),
            400,
        ),
        (
            "a bare LF",
            "GET /bare-lf HTTP/1.1\nHost: fallback\n\n".into(),
            400,
        ),
        (
            "invalid chunked encoding",
            format!(
                "POST /bad-chunks HTTP/1.1\r\nHost: fallback\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{smuggled}"
            ),
            400,
        ),
        (
            "a Transfer-Encoding that is not chunked",
            format!(
                "POST /gzip-te HTTP/1.1\r\nHost: fallback\r\nTransfer-Encoding: gzip\r\n\r\n{smuggled}"
            ),
            400,
        ),
    ];
    for (what, request, status) in &cases {
        let mut c = Conn::open(front)?;
        c.send(request.as_bytes())?;
        let r = c
            .response()
            .with_context(|| format!("{what}: no response"))?;
        ensure!(r.status == *status, "{what}: {} {}", r.status, r.text());
        ensure!(
            r.header("connection") == Some("close"),
            "{what}: not closed"
        );
        // And nothing more comes on that connection.
        ensure!(c.some().is_err(), "{what}: the connection stayed open");
    }
    let seen = Conn::open(front)?.get("fallback", "/seen")?.text();
    ensure!(
        !seen.contains("smuggled"),
        "a hidden request reached the backend:\n{seen}"
    );
    for refused_before_forwarding in ["/cl-te", "/two-lengths", "/folded", "/bare-lf", "/gzip-te"] {
        ensure!(
            !seen.contains(refused_before_forwarding),
            "{refused_before_forwarding} reached the backend:\n{seen}"
        );
    }
    Ok(())
}

/// One name in every spelling reaches one service: case, a trailing root dot, a port, and
/// the authority of an absolute-form request, which the container receives in origin-form
/// with that authority as its `Host`.
fn host_names_and_targets_in_every_spelling(front: SocketAddr) -> Result<()> {
    let mut c = Conn::open(front)?;
    for (host, wanted) in [
        ("shop.example.com.", "shop"),
        ("Shop.Example.Com.", "shop"),
        ("shop.example.com.:80", "shop"),
        ("a.blog.example.", "blog"),
        ("DEEP.er.Blog.Example.:80", "blog"),
        ("blog.example.", "fallback"),
    ] {
        let r = c.get(host, "/")?;
        ensure!(r.status == 200, "{host}: {} {}", r.status, r.text());
        ensure!(who(&r.text()).0 == wanted, "{host} reached {}", r.text());
    }
    // Absolute-form: routed by its authority (whatever Host says), sent in origin-form.
    for (target, host, service, url, sent_host) in [
        (
            "http://shop.example.com/request?id=7",
            "shop.example.com",
            "shop",
            "/request?id=7",
            "shop.example.com",
        ),
        (
            "HTTP://Shop.Example.Com.:80/request",
            "fallback",
            "shop",
            "/request",
            "Shop.Example.Com.:80",
        ),
        (
            "http://a.blog.example?x=1",
            "shop.example.com",
            "blog",
            "/?x=1",
            "a.blog.example",
        ),
    ] {
        c.send(format!("GET {target} HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes())?;
        let r = c.response()?;
        ensure!(r.status == 200, "{target}: {} {}", r.status, r.text());
        if url == "/?x=1" {
            // The blog app answers / with its name.
            ensure!(who(&r.text()).0 == service, "{target} reached {}", r.text());
            continue;
        }
        let seen: serde_json::Value = serde_json::from_slice(&r.body)?;
        ensure!(
            seen["url"] == url && seen["host"] == sent_host,
            "{target} arrived as {seen}"
        );
    }
    let seen = c.get("shop.example.com", "/seen")?.text();
    ensure!(
        !seen.contains("http://") && !seen.contains("HTTP://"),
        "an absolute-form target reached a container:\n{seen}"
    );
    // Targets a reverse proxy does not take: refused, closed, nothing forwarded.
    for (what, request) in [
        (
            "authority-form",
            "CONNECT shop.example.com:443 HTTP/1.1\r\nHost: shop.example.com:443\r\n\r\n",
        ),
        (
            "userinfo",
            "GET http://user:pw@shop.example.com/ HTTP/1.1\r\nHost: shop.example.com\r\n\r\n",
        ),
        (
            "another scheme",
            "GET ftp://shop.example.com/ HTTP/1.1\r\nHost: shop.example.com\r\n\r\n",
        ),
        (
            "an empty label",
            "GET / HTTP/1.1\r\nHost: shop..example.com\r\n\r\n",
        ),
    ] {
        let mut c = Conn::open(front)?;
        c.send(request.as_bytes())?;
        let r = c
            .response()
            .with_context(|| format!("{what}: no response"))?;
        ensure!(r.status == 400, "{what}: {} {}", r.status, r.text());
    }
    Ok(())
}

/// A container that answers before reading the body (413 on /early): the client gets the
/// answer, sends its body as clients do, and the connection then ends with a FIN, not a
/// reset that could destroy the answer; with `Expect: 100-continue` and without.
fn early_answers_close_without_a_reset(front: SocketAddr) -> Result<()> {
    use std::io::Read as _;
    let body = vec![b'x'; 2 * MB];
    for expect in [true, false] {
        let mut c = Conn::open(front)?;
        let head = format!(
            "POST /early HTTP/1.1\r\nHost: shop.example.com\r\nContent-Length: {}\r\n{}\r\n",
            body.len(),
            if expect {
                "Expect: 100-continue\r\n"
            } else {
                ""
            }
        );
        c.send(head.as_bytes())?;
        if !expect {
            // The body follows at once; the answer may come before it is all sent.
            c.send(&body[..64 * 1024])?;
        }
        let r = c.response().context("the early answer")?;
        ensure!(
            r.status == 413,
            "expect {expect}: {} {}",
            r.status,
            r.text()
        );
        // A client that did not wait (or did not understand) sends the rest anyway.
        let rest = if expect {
            &body[..]
        } else {
            &body[64 * 1024..]
        };
        c.send(rest)
            .with_context(|| format!("expect {expect}: sending the body after the answer"))?;
        let mut tail = Vec::new();
        let ended = c.stream.read_to_end(&mut tail);
        ensure!(
            matches!(ended, Ok(0)),
            "expect {expect}: the connection ended with {ended:?} after {} more bytes, not a clean close",
            tail.len()
        );
    }
    Ok(())
}

/// A 100 MB upload and a 100 MB download, each paused mid-way across a deploy's flip,
/// finish intact on the old generation while new requests already reach the new one.
async fn bulk_transfers_survive_a_deploy(
    front: SocketAddr,
    operator: &Operator,
    site: &str,
) -> Result<()> {
    let (up_tx, upload_started) = mpsc::channel::<()>();
    let (down_tx, download_started) = mpsc::channel::<()>();
    let (up_go_tx, up_go) = mpsc::channel::<()>();
    let (down_go_tx, down_go) = mpsc::channel::<()>();
    // Each transfer moves 10 MB, then trickles (64 KB every half second, so no timeout
    // fires however long the deploy takes) until the flip, then moves the rest at once.
    let upload = std::thread::spawn(move || -> Result<(String, String)> {
        let total = BULK_MB * MB;
        let mut c = Conn::open(front)?;
        c.send(
            format!(
                "POST /upload HTTP/1.1\r\nHost: shop.example.com\r\nContent-Length: {total}\r\n\r\n"
            )
            .as_bytes(),
        )?;
        let mut hash = Sha256::new();
        let mut sent = 0;
        let mut send = |c: &mut Conn, sent: &mut usize, len: usize| -> Result<()> {
            let piece: Vec<u8> = (*sent..*sent + len).map(|i| (i % 251) as u8).collect();
            c.stream.write_all(&piece)?;
            hash.update(&piece);
            *sent += len;
            Ok(())
        };
        send(&mut c, &mut sent, 10 * MB)?;
        up_tx.send(())?;
        while up_go.try_recv().is_err() {
            send(&mut c, &mut sent, 64 * 1024)?;
            std::thread::sleep(Duration::from_millis(500));
        }
        while sent < total {
            let len = MB.min(total - sent);
            send(&mut c, &mut sent, len)?;
        }
        let r = c.response()?;
        ensure!(r.status == 200, "upload answered {}", r.status);
        Ok((r.text(), format!("{:x}", hash.finalize())))
    });
    let download = std::thread::spawn(move || -> Result<(String, bool)> {
        let total = BULK_MB * MB;
        let mut c = Conn::open(front)?;
        c.send(
            format!("GET /download?mb={BULK_MB} HTTP/1.1\r\nHost: shop.example.com\r\n\r\n")
                .as_bytes(),
        )?;
        let (status, headers) = c.head()?;
        ensure!(status == 200, "download answered {status}");
        let who = headers
            .iter()
            .find(|(n, _)| n == "x-who")
            .map(|(_, v)| v.clone())
            .unwrap_or_default();
        let chunk = download_chunk();
        let mut intact = true;
        let mut got = 0;
        let mut read = |c: &mut Conn, got: &mut usize, len: usize| -> Result<()> {
            let bytes = c.exactly(len)?;
            intact &= bytes
                .iter()
                .enumerate()
                .all(|(i, b)| *b == chunk[(*got + i) % MB]);
            *got += len;
            Ok(())
        };
        read(&mut c, &mut got, 10 * MB)?;
        down_tx.send(())?;
        while down_go.try_recv().is_err() {
            read(&mut c, &mut got, 64 * 1024)?;
            std::thread::sleep(Duration::from_millis(500));
        }
        while got < total {
            let len = MB.min(total - got);
            read(&mut c, &mut got, len)?;
        }
        Ok((who, intact))
    });
    upload_started.recv_timeout(Duration::from_secs(20))?;
    download_started.recv_timeout(Duration::from_secs(20))?;
    let deploy = operator.spawn(&["deploy", "--stack", "site", site]);
    // New requests reach generation 2 as soon as it serves.
    let flip_deadline = Instant::now() + Duration::from_secs(240);
    loop {
        let answer = Conn::open(front).and_then(|mut c| c.get("shop.example.com", "/"));
        if let Ok(r) = answer {
            ensure!(
                r.status == 200,
                "during the deploy: {} {}",
                r.status,
                r.text()
            );
            if who(&r.text()).1 == "2" {
                break;
            }
        }
        ensure!(Instant::now() < flip_deadline, "generation 2 never served");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    up_go_tx.send(())?;
    down_go_tx.send(())?;
    let (answer, sent_hash) = upload
        .join()
        .map_err(|_| anyhow::anyhow!("upload panicked"))??;
    let (gen_word, got) = {
        let (service, generation, _) = who(&answer);
        (
            format!("{service} {generation}"),
            answer
                .split_whitespace()
                .nth(4)
                .unwrap_or_default()
                .to_string(),
        )
    };
    ensure!(gen_word == "shop 1", "the upload finished on {answer}");
    ensure!(got == sent_hash, "upload hash {got} != {sent_hash}");
    ensure!(
        answer.split_whitespace().nth(3) == Some(&(BULK_MB * MB).to_string()),
        "{answer}"
    );
    let (who_down, intact) = download
        .join()
        .map_err(|_| anyhow::anyhow!("download panicked"))??;
    ensure!(
        who_down.starts_with("shop 1 "),
        "the download came from {who_down}"
    );
    ensure!(intact, "the download's bytes differ");
    let (ok, out, err) = deploy
        .join()
        .map_err(|_| anyhow::anyhow!("deploy panicked"))??;
    ensure!(ok, "second deploy: {out}{err}");
    // After the flip, every new request reaches generation 2.
    let mut c = Conn::open(front)?;
    for _ in 0..12 {
        let r = c.get("shop.example.com", "/")?;
        ensure!(who(&r.text()).1 == "2", "after the flip: {}", r.text());
    }
    Ok(())
}

/// The shop containers that answer 30 requests in a row.
fn answering(front: SocketAddr) -> Result<std::collections::BTreeSet<String>> {
    let mut c = Conn::open(front)?;
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..30 {
        let r = c.get("shop.example.com", "/")?;
        ensure!(r.status == 200, "{} {}", r.status, r.text());
        seen.insert(who(&r.text()).2);
    }
    Ok(seen)
}

/// One shop container starts failing its health check, another is killed: each leaves
/// rotation (measured), and every request meanwhile is answered by a live one.
async fn containers_that_fail_or_die_leave_rotation(
    front: SocketAddr,
    members: [&Member; 3],
) -> Result<()> {
    ensure!(
        answering(front)?.len() == 3,
        "not all three shop containers serve"
    );
    let failing = who(&Conn::open(front)?.get("shop.example.com", "/fail")?.text()).2;
    let started = Instant::now();
    loop {
        if !answering(front)?.contains(&failing) {
            break;
        }
        ensure!(
            started.elapsed() < Duration::from_secs(3),
            "{failing} still in rotation {:?} after failing its health check",
            started.elapsed()
        );
    }
    println!(
        "a container failing its health check left rotation within {:?}",
        started.elapsed()
    );
    let remaining = answering(front)?;
    let victim = remaining
        .iter()
        .next()
        .context("no shop container left")?
        .clone();
    let mut killed = false;
    for member in members {
        for c in member.containers().await? {
            if c.id.starts_with(&victim) {
                member
                    .docker
                    .engine()
                    .docker()
                    .kill_container(
                        &c.id,
                        None::<bollard::query_parameters::KillContainerOptions>,
                    )
                    .await?;
                killed = true;
            }
        }
    }
    ensure!(killed, "no server runs {victim}");
    let started = Instant::now();
    loop {
        // Every request is answered while the dead one leaves.
        if !answering(front)?.contains(&victim) {
            break;
        }
        ensure!(
            started.elapsed() < Duration::from_secs(3),
            "{victim} still in rotation {:?} after it was killed",
            started.elapsed()
        );
    }
    println!(
        "a killed container left rotation within {:?}",
        started.elapsed()
    );
    let left = answering(front)?;
    ensure!(
        left.len() == 1 && !left.contains(&failing) && !left.contains(&victim),
        "{left:?}"
    );
    Ok(())
}

/// wrk keeps 20 connections busy on server one while its agent is restarted: every
/// connection is accepted (the kept socket queues them while no agent accepts), every
/// request answered, none reset.
fn restarted_under_load(front: SocketAddr, one: &mut Member) -> Result<()> {
    let load = Wrk::start(front, "shop.example.com", 20, "10s")?;
    // The restart happens under load: wrk's 20 connections are open.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let open = std::process::Command::new("ip")
            .args([
                "netns",
                "exec",
                one.server.name(),
                "ss",
                "-Htn",
                "state",
                "established",
            ])
            .arg(format!("( sport = :{} )", front.port()))
            .output()?;
        let open = String::from_utf8_lossy(&open.stdout).lines().count();
        if open >= 20 {
            break;
        }
        ensure!(
            std::time::Instant::now() < deadline,
            "only {open} of wrk's connections open"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let status = one.restart_agent()?;
    ensure!(status.success(), "the old agent exited with {status}");
    let summary = load.wait()?;
    println!("wrk across an agent restart:\n{summary}");
    load::check(&summary, 1000).context("across the agent restart")?;
    Ok(())
}

/// curl, as a browser would come: `--resolve` points the name at server one, the
/// certificate is the only one trusted. Returns (exit code, body, HTTP version).
fn curl(
    front: SocketAddr,
    host: &str,
    path: &str,
    trust: &Path,
    http: &str,
) -> Result<(i32, String, String)> {
    let out = std::process::Command::new("curl")
        .args(["-sS", "--max-time", "10", http, "--cacert"])
        .arg(trust)
        .arg("--resolve")
        .arg(format!("{host}:443:{}", front.ip()))
        .args(["-w", "\n%{http_version}"])
        .arg(format!("https://{host}{path}"))
        .output()
        .context("running curl")?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, version) = text.rsplit_once('\n').unwrap_or((&text, ""));
    Ok((
        out.status.code().unwrap_or(-1),
        body.to_string(),
        version.to_string(),
    ))
}

/// Two certificates stored through the CLI (shop's exact name, blog's wildcard): each
/// host gets its own by SNI, over HTTP/2 and HTTP/1.1, a name with none gets no
/// handshake, and the container sees `X-Forwarded-Proto: https`.
async fn https_serves_each_host_its_certificate(
    front: SocketAddr,
    operator: &Operator,
    dir: &Path,
) -> Result<()> {
    let mut trust = Vec::new();
    // shop's name is given as an operator might type it: central stores it canonical.
    for (name, host) in [("shop", "Shop.Example.Com."), ("blog", "*.blog.example")] {
        let canonical = ferry_api::hostname::canonical(host).into_owned();
        let made = rcgen::generate_simple_self_signed(vec![canonical])?;
        let (cert, key) = (
            dir.join(format!("{name}.pem")),
            dir.join(format!("{name}.key")),
        );
        std::fs::write(&cert, made.cert.pem())?;
        std::fs::write(&key, made.signing_key.serialize_pem())?;
        let (ok, out, err) = operator.run(&[
            "certificates",
            "set",
            "--stack",
            "site",
            name,
            "--cert",
            &cert.to_string_lossy(),
            "--key",
            &key.to_string_lossy(),
            "--host",
            host,
        ])?;
        ensure!(ok, "certificates set {name}: {out}{err}");
        trust.push(cert);
    }
    // A certificate that does not fit its name is refused, and nothing changes.
    let (ok, _, err) = operator.run(&[
        "certificates",
        "set",
        "--stack",
        "site",
        "wrong",
        "--cert",
        &trust[0].to_string_lossy(),
        "--key",
        &dir.join("blog.key").to_string_lossy(),
        "--host",
        "shop.example.com",
    ])?;
    ensure!(!ok && err.contains("does not fit"), "{err}");
    eventually(
        Duration::from_secs(10),
        "HTTPS answers for shop",
        || async { Ok(curl(front, "shop.example.com", "/", &trust[0], "--http2")?.0 == 0) },
    )
    .await?;
    for (host, trusted, service) in [
        ("shop.example.com", &trust[0], "shop"),
        ("a.blog.example", &trust[1], "blog"),
    ] {
        for (flag, version) in [("--http2", "2"), ("--http1.1", "1.1")] {
            let (code, body, got) = curl(front, host, "/", trusted, flag)?;
            ensure!(code == 0, "{host} {flag}: curl exit {code}");
            ensure!(who(&body).0 == service, "{host} {flag} reached {body}");
            ensure!(got == version, "{host} {flag} spoke HTTP/{got}");
        }
    }
    // A fully qualified name with its root dot: the same site, its certificate by SNI
    // (which carries no trailing dot) and its route by Host (which does).
    for flag in ["--http2", "--http1.1"] {
        let (code, body, _) = curl(front, "shop.example.com.", "/", &trust[0], flag)?;
        ensure!(code == 0, "shop.example.com. {flag}: curl exit {code}");
        ensure!(
            who(&body).0 == "shop",
            "shop.example.com. {flag} reached {body}"
        );
    }
    let (ok, listed, err) = operator.run(&["certificates", "list", "--stack", "site"])?;
    ensure!(
        ok && listed.contains("shop.example.com") && !listed.contains("Shop."),
        "{listed}{err}"
    );
    // Each certificate only for its own names: blog's is not trusted for shop.
    let (code, _, _) = curl(front, "shop.example.com", "/", &trust[1], "--http2")?;
    ensure!(
        code == 60,
        "shop was served a certificate blog's trusts (curl exit {code})"
    );
    // A name with no certificate: no handshake at all.
    let (code, _, _) = curl(front, "unknown.example", "/", &trust[0], "--http2")?;
    ensure!(code == 35, "a name without a certificate: curl exit {code}");
    https_early_answer_closes_without_a_reset(front, &trust[0])?;
    let (_, headers, _) = curl(front, "shop.example.com", "/headers", &trust[0], "--http2")?;
    let headers: serde_json::Value = serde_json::from_str(&headers)?;
    ensure!(
        headers["x-forwarded-proto"] == "https"
            && headers["x-forwarded-for"] == "10.250.81.1"
            && headers["x-forwarded-host"] == "shop.example.com",
        "{headers}"
    );
    Ok(())
}

/// Over TLS too: a body the container refused unread (413 from /early) is still being sent
/// when the answer arrives; the connection ends with TLS's close_notify and a FIN, not a
/// reset.
fn https_early_answer_closes_without_a_reset(front: SocketAddr, trust: &Path) -> Result<()> {
    use std::io::{Read as _, Write as _};

    use rustls::pki_types::pem::PemObject as _;
    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read(trust)?;
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(&pem) {
        roots.add(cert?)?;
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from("shop.example.com")?;
    let tls = rustls::ClientConnection::new(Arc::new(config), name)?;
    let tcp = std::net::TcpStream::connect_timeout(
        &SocketAddr::new(front.ip(), 443),
        Duration::from_secs(5),
    )?;
    tcp.set_read_timeout(Some(Duration::from_secs(20)))?;
    let mut stream = rustls::StreamOwned::new(tls, tcp);
    let body = vec![b'x'; 2 * MB];
    write!(
        stream,
        "POST /early HTTP/1.1\r\nHost: shop.example.com\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )?;
    stream.write_all(&body[..64 * 1024])?;
    stream.flush()?;
    let mut seen = Vec::new();
    let mut chunk = [0u8; 4096];
    while !String::from_utf8_lossy(&seen).contains("too large") {
        let n = stream
            .read(&mut chunk)
            .context("reading the early answer")?;
        ensure!(
            n > 0,
            "closed before the answer: {}",
            String::from_utf8_lossy(&seen)
        );
        seen.extend_from_slice(&chunk[..n]);
    }
    let answer = String::from_utf8_lossy(&seen).into_owned();
    ensure!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    stream
        .write_all(&body[64 * 1024..])
        .and_then(|()| stream.flush())
        .context("sending the body after the answer over TLS")?;
    let mut tail = Vec::new();
    let ended = stream.read_to_end(&mut tail);
    // A close without close_notify reads as UnexpectedEof in rustls: still a FIN. A
    // reset is what destroys answers.
    ensure!(
        ended
            .as_ref()
            .map_or_else(|e| e.kind() == std::io::ErrorKind::UnexpectedEof, |_| true),
        "the TLS connection ended with {ended:?} after the answer, not a clean close"
    );
    Ok(())
}
