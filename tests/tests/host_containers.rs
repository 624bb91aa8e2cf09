//! Host tier: the agent's container verbs on a real Docker Engine inside a server's
//! namespace: the per-server network with its subnet, an image built from the example
//! stack's source with a generated Node Dockerfile, a labelled container that serves (with
//! its volumes and limits), finding it again by its labels, and stopping one the way its
//! service asks (pre-stop signals and waits, then SIGTERM, then removal).

use std::{
    net::{Ipv4Addr, SocketAddrV4},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use ferry_agent::containers::{
    BuildOptions, ContainerSpec, NetworkError, build_image, ensure_network, list, start,
    stop_and_remove,
};
use ferry_api::servicefile::StopStep;
use ferry_tests::{docker::DockerEngine, inside::http_get, netns::Network, node_image, unique};

/// The example api's source as a build context, with a generated Dockerfile.
fn api_context(dockerfile: &str) -> Result<Vec<u8>> {
    let source = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/shop/api");
    let mut tar = tar::Builder::new(Vec::new());
    tar.append_dir_all(".", &source)
        .with_context(|| format!("packing {}", source.display()))?;
    let mut header = tar::Header::new_gnu();
    header.set_size(dockerfile.len() as u64);
    header.set_mode(0o644);
    tar.append_data(&mut header, "Dockerfile.ferry", dockerfile.as_bytes())?;
    Ok(tar.into_inner()?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_built_node_service_runs_on_the_server_network_and_is_found_by_its_labels() -> Result<()>
{
    let tag = unique("");
    let mut network = Network::new(&format!("fbd{tag}"), 41)?;
    let server = network.server(&format!("fd{tag}"))?;
    let docker = DockerEngine::start("ferry-host-containers", Some(&server)).await?;
    let engine = docker.engine();
    let base = node_image::ensure(docker.engine()).await?;

    let net = format!("ferry-{tag}");
    ensure_network(engine, &net, Ipv4Addr::new(10, 66, 7, 0), None).await?;
    ensure_network(engine, &net, Ipv4Addr::new(10, 66, 7, 0), None).await?;
    // No container is attached yet: a new MTU from the mesh makes the network again.
    ensure_network(engine, &net, Ipv4Addr::new(10, 66, 7, 0), Some(1340)).await?;
    let made = engine.docker().inspect_network(&net, None).await?;
    assert_eq!(
        made.options
            .unwrap_or_default()
            .get("com.docker.network.driver.mtu")
            .map(String::as_str),
        Some("1340")
    );
    let clash = ensure_network(engine, &net, Ipv4Addr::new(10, 66, 8, 0), None)
        .await
        .unwrap_err();
    assert!(matches!(clash, NetworkError::Mismatch { .. }), "{clash}");
    assert!(clash.to_string().contains("10.66.8.0/24"), "{clash}");
    // Another network holding the subnet is named, with the way out.
    let taken = ensure_network(
        engine,
        &format!("ferry-other-{tag}"),
        Ipv4Addr::new(10, 66, 7, 0),
        None,
    )
    .await
    .unwrap_err();
    assert!(
        matches!(taken, NetworkError::Taken { .. })
            && taken
                .to_string()
                .contains(&format!("network {net} already uses 10.66.7.0/24")),
        "{taken}"
    );

    let image = format!("ferry-test/shop-api:{tag}");
    let mut lines = Vec::new();
    build_image(
        engine,
        api_context(&format!(
            "FROM {base}\nWORKDIR /app\nCOPY . /app\nCMD [\"node\", \"server.js\"]\n"
        ))?,
        "Dockerfile.ferry",
        &image,
        &BuildOptions::default(),
        |l| lines.push(l.to_string()),
    )
    .await?;
    assert!(
        lines.iter().any(|l| l.contains("COPY . /app")),
        "build progress: {lines:?}"
    );

    // A Dockerfile that fails is reported with the engine's reason.
    let err = build_image(
        engine,
        api_context("FROM ferry/does-not-exist:0\n")?,
        "Dockerfile.ferry",
        "ferry-test/broken:1",
        &BuildOptions::default(),
        |_| {},
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("ferry-test/broken:1"), "{err}");

    let id = start(
        engine,
        &ContainerSpec {
            stack: "shop".into(),
            service: "api".into(),
            generation: 1,
            index: 0,
            image: image.clone(),
            env: vec!["PORT=4000".into(), "FERRY_GENERATION=1".into()],
            network: net.clone(),
            command: None,
            binds: vec![
                format!("ferry-test-data{tag}:/data"),
                "/etc/hostname:/host-name:ro".into(),
            ],
            memory: Some(256 * 1024 * 1024),
            cpu_millis: Some(500),
            cgroup_parent: None,
        },
    )
    .await?;
    // The service's volumes and resource limits are the container's.
    let host = engine
        .docker()
        .inspect_container(&id, None)
        .await?
        .host_config
        .context("no host config")?;
    assert_eq!(host.memory, Some(256 * 1024 * 1024));
    assert_eq!(host.nano_cpus, Some(500_000_000));
    assert_eq!(
        host.binds,
        Some(vec![
            format!("ferry-test-data{tag}:/data"),
            "/etc/hostname:/host-name:ro".into()
        ])
    );

    let found = list(engine).await?;
    let mine = found
        .iter()
        .find(|c| c.id == id)
        .context("the new container is not listed")?;
    assert_eq!(
        (mine.stack.as_str(), mine.service.as_str(), mine.generation),
        ("shop", "api", 1)
    );
    let address = mine.address.context("no address on the ferry network")?;
    assert_eq!(address.octets()[..3], [10, 66, 7], "{address}");

    // The server reaches the container on its ContainerNet address.
    let target = SocketAddrV4::new(address, 4000);
    let deadline = Instant::now() + Duration::from_secs(20);
    let response = loop {
        match server.run(|| http_get(target, "/"))? {
            Ok(response) => break response,
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await
            }
            Err(e) => bail!("the api never answered at {target}: {e}"),
        }
    };
    assert!(
        response.starts_with("HTTP/1.1 200") && response.ends_with("api of generation 1\n"),
        "{response}"
    );

    // Stopping runs the service's pre_stop_sequence first (signals, waits), then SIGTERM,
    // then removes the container. The app logs what it receives to a bind-mounted file.
    let dir = std::env::temp_dir().join(format!("ferry-test-prestop{tag}"));
    std::fs::create_dir_all(&dir)?;
    std::fs::write(
        dir.join("stop.js"),
        "const fs = require('fs'); const t0 = Date.now();\n\
         const log = (m) => fs.appendFileSync('/data/log', `${m} ${Date.now() - t0}\\n`);\n\
         process.on('SIGUSR2', () => log('USR2'));\n\
         process.on('SIGTERM', () => { log('TERM'); process.exit(0); });\n\
         log('up'); setInterval(() => {}, 1000);\n",
    )?;
    let stopper = start(
        engine,
        &ContainerSpec {
            stack: "shop".into(),
            service: "stopper".into(),
            generation: 1,
            index: 0,
            image: image.clone(),
            env: Vec::new(),
            network: net.clone(),
            command: Some("exec node /data/stop.js".into()),
            binds: vec![format!("{}:/data", dir.display())],
            memory: None,
            cpu_millis: None,
            cgroup_parent: None,
        },
    )
    .await?;
    let log = dir.join("log");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .starts_with("up")
    {
        anyhow::ensure!(Instant::now() < deadline, "the stopper never started");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let sequence = [
        StopStep::Signal("USR2".into()),
        StopStep::Wait(Duration::from_millis(600)),
    ];
    stop_and_remove(engine, &stopper, &sequence, Duration::from_secs(5)).await?;
    let lines: Vec<(String, u64)> = std::fs::read_to_string(&log)?
        .lines()
        .filter_map(|l| {
            let (what, at) = l.split_once(' ')?;
            Some((what.to_string(), at.parse().ok()?))
        })
        .collect();
    let names: Vec<&str> = lines.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["up", "USR2", "TERM"], "{lines:?}");
    assert!(
        lines[2].1 - lines[1].1 >= 600,
        "the wait between: {lines:?}"
    );
    assert!(
        !list(engine).await?.iter().any(|c| c.id == stopper),
        "the stopped container is removed"
    );
    let _ = std::fs::remove_dir_all(&dir);

    let docker_api = engine.docker();
    docker_api
        .remove_container(
            &id,
            Some(
                bollard::query_parameters::RemoveContainerOptionsBuilder::new()
                    .force(true)
                    .build(),
            ),
        )
        .await?;
    docker_api.remove_network(&net).await?;
    docker_api
        .remove_volume(
            &format!("ferry-test-data{tag}"),
            None::<bollard::query_parameters::RemoveVolumeOptions>,
        )
        .await?;
    Ok(())
}
