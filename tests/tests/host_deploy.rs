//! Host tier: the deploy journey on one server: a real central, an agent joined to it with
//! its own Docker Engine in the server's namespace; a deploy of the example stack builds
//! and starts its containers, passes their health checks and serves; a broken generation
//! fails, never serves, and its containers go at once; the next good one takes over while
//! the old one drains (answering requests that still reach it), then the old one stops;
//! rollback deploys the old generation again.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddrV4, TcpStream},
    path::Path,
    time::Duration,
};

use anyhow::{Context as _, Result};
use ferry_agent::containers::list;
use ferry_api::client::{Client, Trust};
use ferry_tests::{
    agent::{Agent, AgentPaths, Pins, workspace_binary},
    central::Central,
    cgroup::TestCgroup,
    docker::DockerEngine,
    netns::{Network, ip},
    node_image, unique,
};

/// Runs the real `ferry` CLI with its config at `config`: (success, stdout, stderr).
fn run_ferry(config: &Path, args: &[&str]) -> Result<(bool, String, String)> {
    let out = std::process::Command::new(workspace_binary("ferry", "FERRY_CLI_BIN")?)
        .args(args)
        .env("FERRY_CONFIG", config)
        .output()?;
    Ok((
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    ))
}

/// Polls `check` every 200 ms until it holds or `limit` passes.
async fn eventually<F, Fut>(limit: Duration, what: &str, mut check: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<bool>>,
{
    let deadline = std::time::Instant::now() + limit;
    while !check().await? {
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "{what} did not happen within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}

fn http_get(addr: SocketAddrV4, path: &str) -> std::io::Result<String> {
    let mut stream = TcpStream::connect_timeout(&addr.into(), Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.write_all(format!("GET {path} HTTP/1.0\r\nHost: test\r\n\r\n").as_bytes())?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    Ok(response)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deploy_serves_a_broken_one_never_does_and_the_old_one_drains_then_stops() -> Result<()> {
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
    let (ok, _, err) = central.join(&server, "one", &state_dir)?;
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

    // The operator's journey, with the real CLI: log in, deploy, wait until it serves.
    let cli_config = std::env::temp_dir().join(format!("ferry-test-cli{tag}"));
    let ferry = |args: &[&str]| run_ferry(&cli_config, args);
    let (ok, _, err) = ferry(&[
        "login",
        "--central",
        &central.url,
        "--token",
        &central.admin_token,
        "--ca-fingerprint",
        &central.ca_fingerprint,
    ])?;
    assert!(ok, "{err}");
    let shop = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/shop");
    let (ok, out, err) = ferry(&["deploy", "--stack", "shop", &shop.to_string_lossy()])?;
    assert!(ok, "{out}{err}");
    assert!(
        out.contains("generation 1 of shop recorded")
            && out.contains("generation 1 of shop is serving"),
        "{out}"
    );
    let admin = Client::new(
        &central.url,
        &central.admin_token,
        Trust::Fingerprint(central.ca_fingerprint.clone()),
    )?;
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

    // A generation whose service exits at once fails its check and never serves; the CLI
    // says which container failed and why, and exits non-zero.
    let broken_dir = std::env::temp_dir().join(format!("ferry-test-broken{tag}"));
    std::fs::create_dir_all(broken_dir.join("api"))?;
    std::fs::copy(shop.join("api/server.js"), broken_dir.join("api/server.js"))?;
    std::fs::write(
        broken_dir.join("service.yml"),
        "services:\n  api:\n    build_root: api\n    command: exit 3\n    ports: [\"4000\"]\n    health:\n      endpoint: /healthz\n      timeout: 5s\n",
    )?;
    let (ok, out, err) = ferry(&["deploy", "--stack", "shop", &broken_dir.to_string_lossy()])?;
    assert!(!ok, "{out}");
    assert!(
        err.contains("generation 2 of shop failed and does not serve; generation 1 keeps serving")
            && err.contains("one: api: ")
            && err.contains("exited with code 3"),
        "{err}"
    );
    assert_eq!(
        admin.stacks().await?[0].serving,
        Some(1),
        "generation 1 keeps serving"
    );
    let _ = std::fs::remove_dir_all(&broken_dir);
    let engine = docker.engine();
    eventually(
        Duration::from_secs(30),
        "removal of generation 2's containers",
        || async { Ok(!list(engine).await?.iter().any(|c| c.generation == 2)) },
    )
    .await?;

    // Generation 3 takes over while generation 1 drains: the old api container, never
    // restarted, still answers a request that starts after the flip; then it stops.
    let deploying = {
        let (config, shop) = (cli_config.clone(), shop.clone());
        std::thread::spawn(move || {
            run_ferry(
                &config,
                &["deploy", "--stack", "shop", &shop.to_string_lossy()],
            )
        })
    };
    eventually(Duration::from_secs(180), "generation 3 serving", || async {
        Ok(admin.stacks().await?[0].serving == Some(3))
    })
    .await?;
    let old_api = list(engine)
        .await?
        .into_iter()
        .find(|c| c.id == api.id)
        .context("generation 1's api is gone at the flip; it should drain first")?;
    assert!(
        old_api.running,
        "generation 1's api must run through its drain"
    );
    let response = server.run(|| http_get(SocketAddrV4::new(address, 4000), "/slow?ms=1500"))??;
    assert!(
        response.ends_with("api of generation 1\n"),
        "a request to the draining generation: {response}"
    );
    let (ok, out, err) = deploying
        .join()
        .map_err(|_| anyhow::anyhow!("the deploy thread panicked"))??;
    assert!(ok, "{out}{err}");
    assert!(
        out.contains("generation 3 of shop is serving")
            && out.contains("draining generation 1")
            && out.contains("generation 1 of shop stopped (2 containers removed)")
            && out.contains("one: api running (10.66.1."),
        "{out}"
    );
    let left: Vec<_> = list(engine).await?;
    assert!(
        !left.iter().any(|c| c.generation == 1),
        "generation 1 is gone after its drain: {left:?}"
    );
    assert_eq!(
        left.iter()
            .filter(|c| c.generation == 3 && c.running)
            .count(),
        2
    );

    // Rollback deploys generation 1 again; it serves once healthy and 3 drains.
    let (ok, out, err) = ferry(&["rollback", "--stack", "shop"])?;
    assert!(ok, "{out}{err}");
    assert!(
        out.contains("shop: deploying generation 1 again")
            && out.contains("generation 1 of shop is serving")
            && out.contains("generation 3 of shop stopped (2 containers removed)"),
        "{out}"
    );
    assert_eq!(admin.stacks().await?[0].serving, Some(1));
    let _ = std::fs::remove_dir_all(&cli_config);

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
