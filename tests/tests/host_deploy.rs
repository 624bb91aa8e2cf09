//! Host tier: the deploy journey on one server: a real central, an agent joined to it with
//! its own Docker Engine in the server's namespace; a deploy of the example stack builds
//! and starts its containers, passes their health checks and serves; a broken generation
//! fails and never serves.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddrV4, TcpStream},
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use ferry_agent::containers::list;
use ferry_api::{
    client::{Client, Trust},
    types::Phase,
};
use ferry_tests::{
    agent::{Agent, AgentPaths, Pins, agent_command_in},
    central::Central,
    cgroup::TestCgroup,
    docker::DockerEngine,
    netns::{Network, ip},
    node_image, unique,
};

/// A source archive: `service_yml` first, then the files under `dir`.
fn archive(service_yml: &str, dir: &Path) -> Result<Vec<u8>> {
    let mut tar = tar::Builder::new(flate2::write::GzEncoder::new(
        Vec::new(),
        flate2::Compression::fast(),
    ));
    let mut header = tar::Header::new_gnu();
    header.set_size(service_yml.len() as u64);
    header.set_mode(0o644);
    tar.append_data(&mut header, "service.yml", service_yml.as_bytes())?;
    for entry in walk(dir)? {
        let relative = entry.strip_prefix(dir)?;
        if relative != Path::new("service.yml") {
            tar.append_path_with_name(&entry, relative)?;
        }
    }
    Ok(tar.into_inner()?.finish()?)
}

fn walk(dir: &Path) -> Result<Vec<std::path::PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            files.extend(walk(&path)?);
        } else {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

fn http_get(addr: SocketAddrV4, path: &str) -> std::io::Result<String> {
    let mut stream = TcpStream::connect_timeout(&addr.into(), Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.write_all(format!("GET {path} HTTP/1.0\r\nHost: test\r\n\r\n").as_bytes())?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    Ok(response)
}

async fn wait_for_phase(
    admin: &Client,
    stack: &str,
    number: u64,
    want: fn(&Phase) -> bool,
) -> Result<Phase> {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let generations = admin.generations(stack).await?;
        if let Some(g) = generations.iter().find(|g| g.number == number)
            && want(&g.phase)
        {
            return Ok(g.phase.clone());
        }
        if Instant::now() > deadline {
            bail!("generation {number} of {stack} never got there: {generations:?}");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deploy_builds_starts_checks_and_serves_and_a_broken_one_never_serves() -> Result<()> {
    let tag = unique("");
    let mut network = Network::new(&format!("fbe{tag}"), 51)?;
    let server = network.server(&format!("fe{tag}"))?;
    let docker = DockerEngine::start("ferry-host-deploy", Some(&server)).await?;
    let base = node_image::ensure(&docker).await?;
    let central_dir = std::env::temp_dir().join(format!("ferry-test-deploy{tag}"));
    let central = Central::start(&central_dir, "10.250.51.1")?;

    let cgroup = TestCgroup::top_level(&format!("ferry-test-e{tag}"))?;
    let pins = Pins::new(&format!("ferry-test-e{tag}"))?;
    let state_dir = std::env::temp_dir().join(format!("ferry-test-e{tag}"));
    let _ = std::fs::remove_dir_all(&state_dir);
    let state = state_dir.to_string_lossy().into_owned();
    let endpoint = format!("{}:51820", server.addr().context("address")?);
    let (ok, _, err) = agent_command_in(
        &[
            "join",
            "--central",
            &central.url,
            "--token",
            &central.join_token,
            "--ca-fingerprint",
            &central.ca_fingerprint,
            "--name",
            "one",
            "--endpoint",
            &endpoint,
            "--state-dir",
            &state,
        ],
        Some(&server),
    )?;
    assert!(ok, "{err}");
    let docker_network = format!("ferry-{tag}");
    let paths = AgentPaths {
        cgroup_root: cgroup.path().to_path_buf(),
        bpffs: pins.path().to_path_buf(),
        state_dir: state_dir.clone(),
        wg_interface: format!("fwe{tag}"),
        extra: vec![
            "--docker-socket".into(),
            docker.socket().to_string_lossy().into_owned(),
            "--base-image".into(),
            base.clone(),
            "--docker-network".into(),
            docker_network.clone(),
        ],
    };
    let _agent = Agent::start_in(&paths, Some(&server))?;

    let admin = Client::new(
        &central.url,
        &central.admin_token,
        Trust::Fingerprint(central.ca_fingerprint.clone()),
    )?;
    let shop = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/shop");
    let service_yml = std::fs::read_to_string(shop.join("service.yml"))?;
    let done = admin.deploy("shop", archive(&service_yml, &shop)?).await?;
    assert_eq!(done.generation, 1);
    wait_for_phase(&admin, "shop", 1, |p| *p == Phase::Serving).await?;
    assert_eq!(admin.stacks().await?[0].serving, Some(1));

    // Both services run, labelled, on the server's subnet, and answer there.
    let running = list(docker.engine()).await?;
    let api = running
        .iter()
        .find(|c| c.stack == "shop" && c.service == "api" && c.generation == 1)
        .context("no api container")?;
    assert!(running.iter().any(|c| c.service == "web" && c.running));
    let address = api.address.context("api has no address")?;
    assert_eq!(address.octets()[..3], [10, 66, 1]);
    let response = server.run(|| http_get(SocketAddrV4::new(address, 4000), "/"))??;
    assert!(response.ends_with("api of generation 1\n"), "{response}");

    // A generation whose service exits at once fails its check and never serves.
    let broken = "services:\n  api:\n    build_root: api\n    command: exit 3\n    ports: [\"4000\"]\n    health:\n      endpoint: /healthz\n      timeout: 5s\n";
    let done = admin.deploy("shop", archive(broken, &shop)?).await?;
    let phase = wait_for_phase(&admin, "shop", done.generation, |p| {
        matches!(p, Phase::Failed { .. })
    })
    .await?;
    let Phase::Failed { reason } = phase else {
        unreachable!("waited for Failed")
    };
    assert!(
        reason.starts_with("one: api: ") && reason.contains("exited with code 3"),
        "{reason}"
    );
    assert_eq!(
        admin.stacks().await?[0].serving,
        Some(1),
        "generation 1 keeps serving"
    );

    let _ = ip(&["-n", server.name(), "link", "del", &paths.wg_interface]);
    let _ = std::fs::remove_dir_all(&state_dir);
    let _ = std::fs::remove_dir_all(&central_dir);
    for c in list(docker.engine()).await? {
        let _ = docker
            .engine()
            .docker()
            .remove_container(
                &c.id,
                Some(
                    bollard::query_parameters::RemoveContainerOptionsBuilder::new()
                        .force(true)
                        .build(),
                ),
            )
            .await;
    }
    let _ = docker
        .engine()
        .docker()
        .remove_network(&docker_network)
        .await;
    Ok(())
}
