//! `ferry-demo up`: the story, step by step; see the module above.

use std::{
    net::{SocketAddr, SocketAddrV4, TcpListener},
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use ferry_agent::containers::{Engine, FerryContainer, list};
use ferry_api::client::{Client, Trust};

use super::{
    BPFFS, CENTRAL, CGROUP, DIR, HOST, NETWORK, REGISTRY, RUN, STACK, Shell, State, WG_INTERFACE,
    log_of, say, spawn_kept, wait_for_log,
};
use crate::{
    agent::workspace_binary, central::Printed, cgroup::cgroup2_root, docker, load, node_image,
    registry::Registry,
};

/// How long the old generation drains in the demo: long enough to ask both webs.
const DRAIN: &str = "15s";
/// Where the ingress answers.
const FRONT: SocketAddrV4 = SocketAddrV4::new(std::net::Ipv4Addr::LOCALHOST, 80);

/// Runs the demo from `workspace` (the repository root), leaving it running. A demo left
/// from before is removed first, so running it again gives the same result.
pub async fn up(workspace: &Path) -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the demo loads eBPF programs and runs containers: run it as root");
    }
    if super::State::load()?.is_some() || Path::new(DIR).exists() {
        say("an earlier demo is here; removing it first");
        super::down::down().await?;
    }
    check_free()?;
    for dir in [DIR, RUN] {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {dir}"))?;
    }
    let mut state = State::default();
    state.save()?;
    let result = story(workspace, &mut state).await;
    state.save()?;
    if result.is_err() {
        eprintln!(
            "\nthe demo stopped; what it started is still there (logs in {DIR}/logs): \
             `./x demo down` removes it"
        );
    }
    result
}

/// Refuses to start over something that already listens where the demo will.
fn check_free() -> Result<()> {
    for (port, what) in [
        (FRONT.port(), "the ingress (the example stack's web)"),
        (443, "the ingress's HTTPS port"),
        (CENTRAL.port(), "central"),
        (REGISTRY.port(), "the npm registry the builds use"),
    ] {
        if let Err(e) = TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, port)) {
            bail!(
                "127.0.0.1:{port}, where the demo puts {what}, is taken ({e}); stop what \
                 listens there (`ss -ltnp 'sport = :{port}'` names it) and run the demo again"
            );
        }
    }
    Ok(())
}

async fn story(workspace: &Path, state: &mut State) -> Result<()> {
    let bin = |name: &str, env: &str| workspace_binary(name, env);
    let (agent, central, cli) = (
        bin("ferry-agent", "FERRY_AGENT_BIN")?,
        bin("ferry-central", "FERRY_CENTRAL_BIN")?,
        bin("ferry", "FERRY_CLI_BIN")?,
    );
    let bins = cli
        .parent()
        .context("the CLI's directory")?
        .canonicalize()
        .context("finding the CLI's directory")?;

    say("a Docker Engine");
    let engine = docker_engine(state).await?;
    state.save()?;
    println!("  using the engine on {}", engine.socket().display());
    let reference = node_image::reference();
    let had_base = engine.docker().inspect_image(&reference).await.is_ok();
    node_image::ensure(&engine).await?;
    state.imported_base = !had_base;
    state.save()?;
    println!(
        "  base image {reference}: {}",
        if had_base {
            "present"
        } else {
            "made here from the Node distribution (no image registry is reachable)"
        }
    );

    say(&format!(
        "an npm registry for the builds on http://{REGISTRY} (Verdaccio, seeded by setup)"
    ));
    let registry = Registry::serve_kept(REGISTRY, &Path::new(DIR).join("registry"))?;
    if let Some(pid) = registry.detach() {
        state.pids.insert("registry".into(), pid);
    }
    state.save()?;

    say("central, on SQLite, and one server's agent joined to it");
    let url = format!("https://{CENTRAL}");
    let central_dir = Path::new(DIR).join("central");
    let agent_dir = Path::new(DIR).join("agent");
    let config_dir = Path::new(DIR).join("cli");
    let path = format!(
        "{}:{}",
        bins.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let shell = Shell {
        env: vec![
            ("PATH".into(), path),
            ("FERRY_CONFIG".into(), config_dir.to_string_lossy().into()),
            (
                "DOCKER_HOST".into(),
                format!("unix://{}", engine.socket().display()),
            ),
        ],
        dir: workspace.to_path_buf(),
    };
    println!(
        "  (the commands below run with: export PATH={}:$PATH FERRY_CONFIG={} DOCKER_HOST=unix://{})",
        bins.display(),
        config_dir.display(),
        engine.socket().display()
    );
    let printed = shell.run(&format!(
        "ferry-central init --data-dir {} --url {url}",
        central_dir.display()
    ))?;
    let printed = Printed::parse(&printed)?;
    let pid = spawn_kept(
        "central",
        Command::new(&central)
            .args(["serve", "--data-dir"])
            .arg(&central_dir)
            .args(["--listen", &CENTRAL.to_string(), "--drain-period", DRAIN]),
    )?;
    state.pids.insert("central".into(), pid);
    state.save()?;
    wait_for_log(
        "central",
        pid,
        "ferry-central listening on",
        Duration::from_secs(30),
    )?;
    println!(
        "  ferry-central serve --data-dir {} --listen {CENTRAL} --drain-period {DRAIN}   (running; log {})",
        central_dir.display(),
        log_of("central").display()
    );
    shell.run(&format!(
        "ferry-agent join --central {url} --token {} --ca-fingerprint {} --name demo \
         --endpoint 127.0.0.1:51820 --state-dir {}",
        printed.join_token,
        printed.ca_fingerprint,
        agent_dir.display()
    ))?;
    let cgroup_root = cgroup2_root()?.join(CGROUP);
    std::fs::create_dir_all(&cgroup_root)
        .with_context(|| format!("creating {}", cgroup_root.display()))?;
    let registry_url = format!("http://{REGISTRY}");
    let run_args: Vec<String> = [
        "run",
        "--state-dir",
        &agent_dir.to_string_lossy(),
        "--bpffs",
        BPFFS,
        "--cgroup-root",
        &cgroup_root.to_string_lossy(),
        "--docker-socket",
        &engine.socket().to_string_lossy(),
        "--docker-network",
        NETWORK,
        "--wg-interface",
        WG_INTERFACE,
        "--npm-registry",
        &registry_url,
        "--ingress-address",
        "127.0.0.1",
    ]
    .iter()
    .map(ToString::to_string)
    .collect();
    let pid = spawn_kept("agent", Command::new(&agent).args(&run_args))?;
    state.pids.insert("agent".into(), pid);
    state.save()?;
    wait_for_log("agent", pid, "ferry-agent ready", Duration::from_secs(60))?;
    println!(
        "  ferry-agent {}   (running; log {})",
        run_args.join(" "),
        log_of("agent").display()
    );
    shell.run(&format!(
        "ferry login --central {url} --token {} --ca-fingerprint {}",
        printed.admin_token, printed.ca_fingerprint
    ))?;
    let admin = Client::new(
        &url,
        &printed.admin_token,
        Trust::Fingerprint(printed.ca_fingerprint.clone()),
    )?;

    say("deploy the example stack from source: a web (Express, from the registry) and an api");
    shell.run(&format!("ferry deploy --stack {STACK} examples/shop"))?;

    say("the web answers through the ingress, by host name, and asks the api by name");
    wait_until_served(&shell)?;
    let ingress = format!("curl -s -H 'Host: {HOST}' http://{}/", FRONT.ip());
    shell.run(&ingress)?;
    running(&engine, "web", 1).await?;
    let web1_name = format!("{STACK}-web-1-1");
    shell.run(&format!(
        "docker exec {web1_name} getent hosts api.cloud66.local"
    ))?;
    shell.run(&format!(
        "docker exec {web1_name} node -e \"fetch('http://api.cloud66.local:4000/').then(r => r.text()).then(t => console.log(t.trim()))\""
    ))?;

    say("generation 2 deploys while wrk loads the ingress; both run while generation 1 drains");
    let load = load::Wrk::start(SocketAddr::V4(FRONT), HOST, 4, "10m")?;
    println!(
        "  wrk -t2 -c4 -H 'Host: {HOST}' http://{}/   (in the background)",
        FRONT.ip()
    );
    let (tell, told) = std::sync::mpsc::channel();
    let deploying = {
        let shell = shell.clone();
        std::thread::spawn(move || {
            shell.try_run_telling(
                &format!("ferry deploy --stack {STACK} examples/shop"),
                Some(tell),
            )
        })
    };
    // Once the deploy has said that generation 1 drains, both webs run: ask each then, so
    // the story reads in order.
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        match told.recv_timeout(Duration::from_millis(200)) {
            Ok(line) if line.contains("draining generation 1") => break,
            Ok(_) => {}
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) if Instant::now() < deadline => {}
            Err(_) => break,
        }
    }
    let serving = admin
        .stacks()
        .await?
        .iter()
        .find(|s| s.name == STACK)
        .and_then(|s| s.serving);
    if serving != Some(2) {
        eprintln!("  (generation 2 does not serve yet; the drain is not shown)");
    }
    let old = running(&engine, "web", 1).await;
    let new = running(&engine, "web", 2).await;
    if let (Ok(old), Ok(new)) = (&old, &new) {
        say("during the drain, each web reaches the api of its own generation:");
        for web in [old, new] {
            let address = web.address.context("a web without an address")?;
            shell.run(&format!("curl -s http://{address}:3000/"))?;
        }
    }
    let (deployed, output) = deploying
        .join()
        .map_err(|_| anyhow::anyhow!("the deploy's thread panicked"))??;
    let summary = load.stop()?;
    if !deployed {
        bail!("the second deploy failed:\n{output}");
    }
    old?;
    new?;
    let failed = load::failures(&summary);
    let requests = load::requests(&summary).map_or("?".into(), |n| n.to_string());
    say(&format!(
        "wrk during the deploy: {requests} requests, {failed} failed"
    ));
    if failed > 0 {
        bail!("requests failed during the deploy:\n{summary}");
    }

    say("roll back: generation 1 serves again (its image layers are cached: the build is quick)");
    shell.run(&format!("ferry rollback --stack {STACK}"))?;
    shell.run(&ingress)?;

    say("where things are");
    shell.run(&format!("ferry services list --stack {STACK}"))?;
    println!(
        "\n  central       {url}   (log {})\n  \
         the CLI       logged in as admin: export PATH={}:$PATH FERRY_CONFIG={}\n  \
         the shop      {ingress}\n  \
         the agent     log {}; its pins in {BPFFS}, its cgroup {}\n  \
         Docker        export DOCKER_HOST=unix://{}; docker ps --filter label=ferry.stack\n\n\
         The stack keeps running. `./x demo down` removes all of it.",
        log_of("central").display(),
        bins.display(),
        config_dir.display(),
        log_of("agent").display(),
        cgroup_root.display(),
        engine.socket().display(),
    );
    Ok(())
}

/// The Docker Engine of this machine if one answers on its usual socket; else the
/// distribution's dockerd, started with a data root of the demo's own.
async fn docker_engine(state: &mut State) -> Result<Engine> {
    for socket in ["/run/docker.sock", "/var/run/docker.sock"] {
        if let Ok(engine) = Engine::connect(Path::new(socket)).await {
            state.docker_socket = Some(engine.socket().to_path_buf());
            return Ok(engine);
        }
    }
    let run = Path::new(RUN).join("docker");
    let data = Path::new(DIR).join("docker");
    for dir in [&run, &data] {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    println!("  no Docker Engine answers here; starting the distribution's dockerd");
    let pid = spawn_kept("dockerd", &mut docker::dockerd(&run, &data))?;
    state.pids.insert("dockerd".into(), pid);
    state.own_dockerd = true;
    let socket: PathBuf = run.join("docker.sock");
    state.docker_socket = Some(socket.clone());
    state.save()?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match Engine::connect(&socket).await {
            Ok(engine) => return Ok(engine),
            Err(e) if Instant::now() > deadline || !ferry_agent::down::alive(pid) => {
                bail!(
                    "the demo's dockerd did not answer on {} ({e}); see {}",
                    socket.display(),
                    log_of("dockerd").display()
                );
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// Waits (quietly) until the ingress serves the stack's host: the agent opens the port
/// once central's records reach it.
fn wait_until_served(shell: &Shell) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let answered = Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "-H"])
            .arg(format!("Host: {HOST}"))
            .arg(format!("http://{FRONT}/"))
            .envs(shell.env.iter().map(|(k, v)| (k, v)))
            .output()
            .context("running curl; `./x setup` installs it")?;
        if answered.stdout == b"200" {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "the ingress did not serve {HOST} on {FRONT} within 30 s; see {}",
                log_of("agent").display()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The running container of `service` of generation `generation`.
async fn running(engine: &Engine, service: &str, generation: u64) -> Result<FerryContainer> {
    list(engine)
        .await?
        .into_iter()
        .find(|c| {
            c.stack == STACK && c.service == service && c.generation == generation && c.running
        })
        .with_context(|| format!("no running {service} of generation {generation}"))
}
