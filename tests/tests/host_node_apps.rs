//! Host tier: real Node apps as they sit in a git checkout (a lockfile, no node_modules),
//! deployed with a service.yml of ports, host names and a health check, built by the agent
//! against a real npm registry (Verdaccio with the storage setup seeded, on the test
//! network: the server has no route anywhere else).
//!
//! - an Express app: `npm ci`, started by `npm start` under Docker's init, served through
//!   the ingress by host name; a second deploy that changes only app.js reuses the
//!   dependency layer (compared on the images' layers); SIGTERM during a request reaches
//!   node through npm, which finishes the request and exits 0;
//! - a TypeScript app: its `build` script runs `tsc` from devDependencies, and the image
//!   holds no `typescript`;
//! - a pnpm app through corepack, at the version `packageManager` names;
//! - an app that listens on 127.0.0.1 only: the deploy fails with a message that says so.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, SocketAddrV4, TcpStream},
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, Result, ensure};
use bollard::query_parameters::StopContainerOptionsBuilder;
use ferry_agent::containers::{Engine, FerryContainer};
use ferry_tests::{
    central::Central,
    cluster::{Member, Operator},
    http::Conn,
    inside::exec,
    netns::Network,
    unique,
};

const SUBNET: u8 = 101;

fn app(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("apps")
        .join(name)
}

async fn running(member: &Member, stack: &str, generation: u64) -> Result<FerryContainer> {
    member
        .containers()
        .await?
        .into_iter()
        .find(|c| c.stack == stack && c.generation == generation && c.running)
        .with_context(|| format!("no running container of {stack} generation {generation}"))
}

/// `GET path` on the container's port 3000, from the server's namespace.
fn get(member: &Member, c: &FerryContainer, path: &str) -> Result<String> {
    let ip = c.address.context("no address")?;
    let path = path.to_string();
    Ok(member
        .server
        .run(move || ferry_tests::inside::http_get(SocketAddrV4::new(ip, 3000), &path))??)
}

async fn layers(engine: &Engine, image: &str) -> Result<Vec<String>> {
    Ok(engine
        .docker()
        .inspect_image(image)
        .await
        .with_context(|| format!("inspecting {image}"))?
        .root_fs
        .and_then(|r| r.layers)
        .unwrap_or_default())
}

/// Every container the server's engine has, of ferry's or not, running or not.
async fn every_container(engine: &Engine) -> Result<Vec<bollard::models::ContainerSummary>> {
    Ok(engine
        .docker()
        .list_containers(Some(
            bollard::query_parameters::ListContainersOptionsBuilder::new()
                .all(true)
                .build(),
        ))
        .await?)
}

/// Container `id`'s whole log (as the agent reads logs).
async fn logs(engine: &Engine, id: &str) -> Result<String> {
    Ok(ferry_agent::containers::log_tail(engine, id, 100_000).await)
}

/// A copy of `from` with `change` applied to the file `name`.
fn copy_with(from: &Path, to: &Path, name: &str, change: impl Fn(&str) -> String) -> Result<()> {
    let _ = std::fs::remove_dir_all(to);
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let text = std::fs::read_to_string(entry.path())?;
        let text = if entry.file_name() == name {
            change(&text)
        } else {
            text
        };
        std::fs::write(to.join(entry.file_name()), text)?;
    }
    Ok(())
}

async fn network_registry_login(network: &Network) -> Result<String> {
    network
        .registry()
        .context("the network serves no registry")?
        .login()
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_apps_build_from_their_checkout_and_run_as_node_developers_expect() -> Result<()> {
    let tag = unique("");
    let mut network = Network::new(&format!("fbn{tag}"), SUBNET)?;
    network.serve_registry()?;
    let central = Central::start(
        &std::env::temp_dir().join(format!("ferry-test-node-apps{tag}")),
        &format!("10.250.{SUBNET}.1"),
    )?;
    let one = Member::join(&mut network, &central, "one", &tag).await?;
    let operator = Operator::login(&central, &tag)?;
    let engine = one.docker.engine().clone();
    let deploy = |stack: &str, dir: &Path| {
        operator.run(&["deploy", "--stack", stack, &dir.to_string_lossy()])
    };

    // Express: npm ci, npm start, served by host name through the ingress.
    let (ok, out, err) = deploy("express", &app("express"))?;
    assert!(ok, "{out}{err}");
    let web = running(&one, "express", 1).await?;
    let server: SocketAddr = (one.server.addr().context("no address")?, 80).into();
    let answer = one
        .server
        .run(|| Conn::open(server)?.get("express.example.test", "/"))??;
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert!(
        answer.text().starts_with("hello from express 4.")
            && answer.text().contains("generation 1"),
        "{}",
        answer.text()
    );
    let inspect = engine.docker().inspect_container(&web.id, None).await?;
    let command = inspect
        .config
        .and_then(|c| c.cmd)
        .unwrap_or_default()
        .join(" ");
    assert!(
        command.contains("exec npm start"),
        "started by npm start: {command}"
    );
    let host = inspect.host_config.context("no host config")?;
    assert_eq!(host.init, Some(true), "Docker's init is PID 1");
    let log = host.log_config.and_then(|l| l.config).unwrap_or_default();
    assert_eq!(
        log.get("max-size").map(String::as_str),
        Some("10m"),
        "{log:?}"
    );
    assert_eq!(
        inspect.name.as_deref(),
        Some("/express-web-1-1"),
        "a readable name"
    );
    let modules = exec(&engine, &web.id, &["ls", "/app/node_modules"]).await?;
    assert!(modules.contains("express"), "{modules}");

    // A deploy that changes only app.js: the dependency layer is the same layer.
    let changed = std::env::temp_dir().join(format!("ferry-express-changed{tag}"));
    copy_with(&app("express"), &changed, "app.js", |text| {
        text.replace("hello from express", "hello again from express")
    })?;
    let (ok, out, err) = deploy("express", &changed)?;
    assert!(ok, "{out}{err}");
    let (first, second) = (
        layers(&engine, "ferry/express-web:1").await?,
        layers(&engine, "ferry/express-web:2").await?,
    );
    let base = layers(&engine, &ferry_tests::node_image::reference()).await?;
    // The base's layers, /app, node_modules, then the code.
    ensure!(
        first.len() == base.len() + 3
            && second.len() == first.len()
            && first[..base.len()] == base[..],
        "base {} layers, then /app, node_modules and the code: {first:?} / {second:?}",
        base.len()
    );
    assert_eq!(
        first[..first.len() - 1],
        second[..second.len() - 1],
        "the base and node_modules layers are reused"
    );
    assert_ne!(first.last(), second.last(), "the code layer is new");
    let web2 = running(&one, "express", 2).await?;
    assert!(get(&one, &web2, "/")?.contains("hello again from express"));

    // The service's logs, followed as the operator would: each line after its server and
    // container, what the app writes next included.
    let mut follower = operator
        .command()?
        .args([
            "services", "logs", "--stack", "express", "web", "--follow", "--lines", "5",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .context("ferry services logs --follow")?;
    let followed = follower.stdout.take().context("its output")?;
    let followed_lines = ferry_tests::lines_of(followed);
    let seen_in_logs = |wanted: String| -> Result<String> {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let line = followed_lines
                .recv_timeout(left)
                .with_context(|| format!("the followed logs never showed {wanted:?}"))?;
            if line.contains(&wanted) {
                return Ok(line);
            }
        }
    };
    let listening = seen_in_logs(format!("{}] express listening on 3000", &web2.id[..12]))?;
    assert!(listening.starts_with("[one "), "{listening}");

    // SIGTERM during a request, as a stop sends it: npm passes it to node, which finishes
    // the request and exits 0.
    let ip = web2.address.context("no address")?;
    let mut slow = one.server.run(|| -> std::io::Result<TcpStream> {
        let mut s = TcpStream::connect(SocketAddrV4::new(ip, 3000))?;
        s.write_all(b"GET /slow?ms=2000 HTTP/1.0\r\nHost: x\r\n\r\n")?;
        Ok(s)
    })??;
    ferry_tests::cluster::eventually(
        Duration::from_secs(10),
        "the slow request reaches the app",
        || async {
            Ok(logs(&engine, &web2.id)
                .await?
                .contains("slow request of 2000 ms started"))
        },
    )
    .await?;
    engine
        .docker()
        .stop_container(
            &web2.id,
            Some(StopContainerOptionsBuilder::new().t(20).build()),
        )
        .await?;
    let mut answer = String::new();
    slow.read_to_string(&mut answer)?;
    assert!(
        answer.ends_with("slow answer after 2000 ms\n"),
        "the request in flight finished: {answer:?}"
    );
    let state = engine
        .docker()
        .inspect_container(&web2.id, None)
        .await?
        .state
        .context("no state")?;
    assert_eq!(
        state.exit_code,
        Some(0),
        "node exited on its own after SIGTERM"
    );
    let log = logs(&engine, &web2.id).await?;
    assert!(
        log.contains("express: SIGTERM") && log.contains("express: closed"),
        "{log}"
    );
    // The follower saw the request and the stop as they happened.
    seen_in_logs("slow request of 2000 ms started".into())?;
    seen_in_logs("express: closed".into())?;
    let _ = follower.kill();
    let _ = follower.wait();

    // TypeScript: built by its build script with tsc, which the image does not carry.
    let (ok, out, err) = deploy("typescript", &app("typescript"))?;
    assert!(ok, "{out}{err}");
    let api = running(&one, "typescript", 1).await?;
    let answer = get(&one, &api, "/")?;
    assert!(
        answer.contains("compiled from TypeScript, running on Node v24."),
        "{answer}"
    );
    let listing = exec(&engine, &api.id, &["ls", "-a", "/app", "/app/dist"]).await?;
    assert!(listing.contains("server.js"), "{listing}");
    let typescript = exec(&engine, &api.id, &["ls", "/app/node_modules/typescript"]).await;
    assert!(
        typescript.is_err(),
        "typescript is in the image: {typescript:?}"
    );

    // A failing build fails the generation with the build's last lines, before any of its
    // containers starts (a's image was fine, and a never started either).
    let (ok, out, err) = deploy("buildfail", &app("buildfail"))?;
    assert!(!ok, "a failed build let the generation serve: {out}");
    let said = format!("{out}{err}");
    assert!(
        said.contains("b: ") && said.contains("error TS2322: Type string is not assignable"),
        "{said}"
    );
    let started = every_container(&engine)
        .await?
        .into_iter()
        .filter(|c| {
            c.names
                .iter()
                .flatten()
                .any(|n| n.starts_with("/buildfail-"))
        })
        .count();
    assert_eq!(
        started, 0,
        "a container of the failed generation was created"
    );

    // pnpm through corepack.
    let (ok, out, err) = deploy("pnpm", &app("pnpm"))?;
    assert!(ok, "{out}{err}");
    let pnpm = running(&one, "pnpm", 1).await?;
    let answer = get(&one, &pnpm, "/")?;
    assert!(
        answer.ends_with("\r\n\r\ninstalled by pnpm: ms says 2m\n"),
        "{answer}"
    );

    // Listening on 127.0.0.1 only: the deploy fails and says why.
    let (ok, out, err) = deploy("loopback", &app("loopback"))?;
    assert!(!ok, "a deploy whose app cannot be reached succeeded: {out}");
    let said = format!("{out}{err}");
    assert!(
        said.contains("listens on 127.0.0.1:3000 only") && said.contains("0.0.0.0"),
        "{said}"
    );

    // deploy_command: run once before the new generation starts, its output shown by the
    // CLI; it leaves a marker the new containers read. A failing one fails the generation
    // and the old one goes on serving.
    // The volume may hold an earlier run's marker: start without one.
    let _ = engine
        .docker()
        .remove_volume(
            "ferry-test-migrations",
            None::<bollard::query_parameters::RemoveVolumeOptions>,
        )
        .await;
    let (ok, out, err) = deploy("migrate", &app("migrate"))?;
    assert!(ok, "{out}{err}");
    assert!(
        out.contains("one: app: deploy_command: node migrate.js")
            && out.contains("one: app: migration done"),
        "the CLI shows the deploy_command's output: {out}"
    );
    let migrated = running(&one, "migrate", 1).await?;
    let answer = get(&one, &migrated, "/")?;
    assert!(
        answer.ends_with("generation 1 sees: migrated for generation 1\n"),
        "{answer}"
    );
    let failing = std::env::temp_dir().join(format!("ferry-migrate-failing{tag}"));
    copy_with(&app("migrate"), &failing, "service.yml", |text| {
        text.replace("node migrate.js", "node migrate.js --fail")
    })?;
    let (ok, out, err) = deploy("migrate", &failing)?;
    assert!(
        !ok,
        "a failed deploy_command let the generation serve: {out}"
    );
    let said = format!("{out}{err}");
    assert!(
        said.contains("exited with code 2") && said.contains("column \"email\" already exists"),
        "{said}"
    );
    assert!(
        one.containers()
            .await?
            .iter()
            .all(|c| !(c.stack == "migrate" && c.generation == 2 && c.running)),
        "nothing of the failed generation runs"
    );
    let answer = get(&one, &migrated, "/")?;
    assert!(
        answer.contains("generation 1 sees"),
        "generation 1 still serves: {answer}"
    );
    let _ = std::fs::remove_dir_all(failing);

    // A private package: without the stack's token the build cannot read it; with it the
    // app builds, and the token is in no image on the server, nor in any image's history.
    let (ok, out, err) = deploy("private", &app("private"))?;
    assert!(!ok, "a private package was read without a token: {out}");
    let said = format!("{out}{err}");
    assert!(
        said.contains("E401") && said.contains("ferry env set --stack private NPM_TOKEN="),
        "{said}"
    );
    let token = network_registry_login(&network).await?;
    let (ok, out, err) = operator.run(&[
        "env",
        "set",
        "--stack",
        "private",
        &format!("NPM_TOKEN={token}"),
    ])?;
    assert!(ok, "{out}{err}");
    let (ok, out, err) = deploy("private", &app("private"))?;
    assert!(ok, "{out}{err}");
    let private = running(&one, "private", 2).await?;
    let answer = get(&one, &private, "/")?;
    assert!(
        answer.ends_with("hello ferry, from a private package\n"),
        "{answer}"
    );
    let images = engine
        .docker()
        .list_images(Some(
            bollard::query_parameters::ListImagesOptionsBuilder::new()
                .all(true)
                .build(),
        ))
        .await?;
    ensure!(!images.is_empty(), "no images listed");
    for image in &images {
        let inspect = serde_json::to_string(&engine.docker().inspect_image(&image.id).await?)?;
        let history = serde_json::to_string(&engine.docker().image_history(&image.id).await?)?;
        ensure!(
            !inspect.contains(&token) && !history.contains(&token),
            "the npm token is in image {} ({:?})",
            image.id,
            image.repo_tags
        );
    }
    let containers = serde_json::to_string(&every_container(&engine).await?)?;
    ensure!(
        !containers.contains(&token),
        "the npm token is in a container's config"
    );

    let _ = std::fs::remove_dir_all(changed);
    one.clean_up().await;
    Ok(())
}
