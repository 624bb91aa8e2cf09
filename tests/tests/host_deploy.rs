//! Host tier: the deploy journey on one server: a real central, an agent joined to it with
//! its own Docker Engine in the server's namespace; a deploy of the example stack builds
//! and starts its containers, passes their health checks and serves; a broken generation
//! fails, never serves, and its containers go at once; the next good one takes over while
//! the old one drains (answering requests that still reach it), then the old one stops;
//! rollback deploys the old generation again.

use std::{net::SocketAddrV4, path::Path, time::Duration};

use anyhow::{Context as _, Result};
use ferry_agent::containers::list;
use ferry_api::client::{Client, Trust};
use ferry_tests::{
    central::Central,
    cgroup::cgroup2_root,
    cluster::{Member, Operator, eventually, service_address},
    inside::{get_from, http_get},
    netns::Network,
    unique,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deploy_serves_a_broken_one_never_does_and_the_old_one_drains_then_stops() -> Result<()> {
    let tag = unique("");
    let mut network = Network::new(&format!("fbe{tag}"), 51)?;
    // The example stack's web installs Express: from the registry on the test network.
    network.serve_registry()?;
    let central_dir = std::env::temp_dir().join(format!("ferry-test-deploy{tag}"));
    let central = Central::start(&central_dir, "10.250.51.1")?;
    let one = Member::join(&mut network, &central, "one", &tag).await?;
    let (server, engine) = (&one.server, one.docker.engine());

    // The operator's journey, with the real CLI: log in, deploy, wait until it serves.
    let operator = Operator::login(&central, &tag)?;
    let ferry = |args: &[&str]| operator.run(args);
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
    let running = list(engine).await?;
    let api = running
        .iter()
        .find(|c| c.stack == "shop" && c.service == "api" && c.generation == 1)
        .context("no api container")?;
    assert!(running.iter().any(|c| c.service == "web" && c.running));
    let address = api.address.context("api has no address")?;
    assert_eq!(address.octets()[..3], [10, 66, 1]);
    let response = server.run(|| http_get(SocketAddrV4::new(address, 4000), "/"))??;
    assert!(response.ends_with("api of generation 1\n"), "{response}");

    // The api's processes sit in a cgroup of their own below the agent's cgroup root
    // (where the data plane attaches), and central has its id.
    let pid = engine
        .docker()
        .inspect_container(&api.id, None)
        .await?
        .state
        .and_then(|s| s.pid)
        .context("api has no pid")?;
    let own = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))?
        .lines()
        .find_map(|l| l.strip_prefix("0::").map(str::to_string))
        .context("no cgroup v2 line")?;
    let own = cgroup2_root()?.join(own.trim_start_matches('/'));
    assert!(
        own.starts_with(&one.paths.cgroup_root) && own.to_string_lossy().contains(&api.id),
        "api's cgroup {} is not its own below {}",
        own.display(),
        one.paths.cgroup_root.display()
    );
    let inode = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&own)?);
    eventually(
        Duration::from_secs(10),
        "the api's cgroup id at central",
        || async {
            let reports = admin.containers().await?;
            Ok(reports.get("one").is_some_and(|cs| {
                cs.iter()
                    .any(|c| c.id == api.id && c.cgroup_id == Some(inode))
            }))
        },
    )
    .await?;

    // The api's service address, from inside the web container: connect4 steers it to
    // the serving generation's api.
    let service_address = service_address(&admin, "shop", "api", 4000).await?;
    let web = running
        .iter()
        .find(|c| c.service == "web")
        .context("no web container")?;
    assert_eq!(
        get_from(engine, &web.id, service_address).await?,
        "api of generation 1"
    );

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
            && err.contains("one: api: it stopped before passing its health check")
            && err.contains("exited with code 3"),
        "{err}"
    );
    assert_eq!(
        admin.stacks().await?[0].serving,
        Some(1),
        "generation 1 keeps serving"
    );
    let _ = std::fs::remove_dir_all(&broken_dir);
    eventually(
        Duration::from_secs(30),
        "removal of generation 2's containers",
        || async { Ok(!list(engine).await?.iter().any(|c| c.generation == 2)) },
    )
    .await?;

    // Generation 3 takes over while generation 1 drains: the old api container, never
    // restarted, still answers a request that starts after the flip; then it stops.
    let deploying = operator.spawn(&["deploy", "--stack", "shop", &shop.to_string_lossy()]);
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

    // The service address follows the flip.
    let web3 = left
        .iter()
        .find(|c| c.service == "web" && c.generation == 3)
        .context("no web of generation 3")?;
    eventually(
        Duration::from_secs(10),
        "the service address on generation 3",
        || async {
            Ok(get_from(engine, &web3.id, service_address).await? == "api of generation 3")
        },
    )
    .await?;

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

    // A service with restart_on_deploy: false keeps its container across a deploy that
    // does not change it; the others are replaced.
    let kept_dir = std::env::temp_dir().join(format!("ferry-test-kept{tag}"));
    for service in ["api", "web"] {
        std::fs::create_dir_all(kept_dir.join(service))?;
        for file in std::fs::read_dir(shop.join(service))? {
            let file = file?;
            std::fs::copy(file.path(), kept_dir.join(service).join(file.file_name()))?;
        }
    }
    std::fs::write(
        kept_dir.join("service.yml"),
        std::fs::read_to_string(shop.join("service.yml"))?.replace(
            "    build_root: api\n",
            "    build_root: api\n    restart_on_deploy: false\n",
        ),
    )?;
    let kept = kept_dir.to_string_lossy();
    let (ok, out, err) = ferry(&["deploy", "--stack", "kept", &kept])?;
    assert!(ok, "{out}{err}");
    let api_of = |containers: &[ferry_agent::containers::FerryContainer]| {
        containers
            .iter()
            .find(|c| c.stack == "kept" && c.service == "api")
            .map(|c| (c.id.clone(), c.generation))
    };
    let before = api_of(&list(engine).await?).context("no api in kept")?;
    let (ok, out, err) = ferry(&["deploy", "--stack", "kept", &kept])?;
    assert!(ok, "{out}{err}");
    assert!(
        out.contains("generation 2 of kept is serving")
            && out.contains(
                "generation 1 of kept stopped (1 containers removed, 1 kept running: restart_on_deploy is false)"
            ),
        "{out}"
    );
    let now = list(engine).await?;
    assert_eq!(
        api_of(&now),
        Some(before),
        "the same api container, started for 1"
    );
    assert!(
        now.iter()
            .any(|c| c.stack == "kept" && c.service == "web" && c.generation == 2),
        "web was replaced: {now:?}"
    );
    let _ = std::fs::remove_dir_all(&kept_dir);
    one.clean_up().await;
    let _ = std::fs::remove_dir_all(&central_dir);
    Ok(())
}
