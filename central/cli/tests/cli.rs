//! The `ferry` binary against a real central on loopback.

use std::process::{Command, Output};

use base64::Engine as _;
use ferry_api::{
    client::{Client, Trust},
    types::JoinRequest,
};
use ferry_central::{init, serve};

fn ferry(config: &std::path::Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(args)
        .env("FERRY_CONFIG", config)
        .output()
        .expect("run ferry")
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The join request of the server these tests register.
fn web_1() -> JoinRequest {
    JoinRequest {
        name: "web-1".into(),
        wireguard_public_key: base64::engine::general_purpose::STANDARD.encode([7u8; 32]),
        wireguard_endpoint: "192.0.2.10:51820".parse().expect("addr"),
        memory_bytes: None,
    }
}

/// A central serving on loopback, and a config directory not logged in yet.
struct Setup {
    dir: tempfile::TempDir,
    data: std::path::PathBuf,
    done: init::Initialised,
    _running: serve::Running,
    url: String,
    config: std::path::PathBuf,
}

async fn setup() -> Setup {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("central");
    let done = init::init(
        &data,
        "https://127.0.0.1:7443",
        "127.0.0.1:0".parse().expect("addr"),
        None,
    )
    .expect("init");
    let running = serve::start(&data, Default::default())
        .await
        .expect("serve");
    let url = format!("https://127.0.0.1:{}", running.local_addr().port());
    let config = dir.path().join("ferry-config");
    Setup {
        dir,
        data,
        done,
        _running: running,
        url,
        config,
    }
}

impl Setup {
    /// Registers server web-1 with the join token.
    async fn join_web_1(&self) {
        Client::new(
            &self.url,
            &self.done.join_token,
            Trust::Fingerprint(self.done.ca_fingerprint.clone()),
        )
        .expect("client")
        .join(&web_1())
        .await
        .expect("join");
    }

    fn login(&self) -> Output {
        ferry(
            &self.config,
            &[
                "login",
                "--central",
                &self.url,
                "--token",
                &self.done.admin_token,
                "--ca-fingerprint",
                &self.done.ca_fingerprint,
            ],
        )
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_then_list_and_remove_servers() {
    let setup = setup().await;
    let (url, config, done) = (setup.url.clone(), setup.config.clone(), &setup.done);

    // Not logged in yet: the error says what to do.
    let out = ferry(&config, &["servers", "list"]);
    assert!(!out.status.success());
    assert!(
        text(&out).1.contains("run `ferry login` first"),
        "{}",
        text(&out).1
    );

    // A wrong token is checked before anything is saved.
    let out = ferry(
        &config,
        &[
            "login",
            "--central",
            &url,
            "--token",
            "ferry-admin-wrong",
            "--ca-fingerprint",
            &done.ca_fingerprint,
        ],
    );
    assert!(!out.status.success());
    assert!(
        text(&out).1.contains("nothing was saved") && text(&out).1.contains("401"),
        "{}",
        text(&out).1
    );
    assert!(!config.exists());

    let out = setup.login();
    assert!(out.status.success(), "{}", text(&out).1);
    assert!(text(&out).0.contains("logged in") && text(&out).0.contains("0 servers"));

    let joiner = Client::new(
        &url,
        &done.join_token,
        Trust::Fingerprint(done.ca_fingerprint.clone()),
    )
    .expect("client");
    let joined = joiner.join(&web_1()).await.expect("join");

    let out = ferry(&config, &["servers", "list"]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(
        lines[0].starts_with("NAME") && lines[0].contains("SUBNET"),
        "{stdout}"
    );
    assert!(
        lines[1].starts_with("web-1")
            && lines[1].contains("10.66.1.0/24")
            && lines[1].contains("192.0.2.10:51820")
            && lines[1].contains("not since central started"),
        "{stdout}"
    );

    // The agent's heartbeat shows in the list: its version, backend, peers, containers.
    let agent = Client::new(
        &url,
        &joined.agent_token,
        Trust::Fingerprint(done.ca_fingerprint.clone()),
    )
    .expect("client");
    let beat = ferry_api::heartbeat::Heartbeat {
        version: "0.1.0".into(),
        interval_secs: 10,
        wireguard: Some(ferry_api::heartbeat::WireguardStatus {
            backend: "kernel".into(),
            mtu: Some(1420),
            peers: Vec::new(),
        }),
        containers_running: Some(2),
        l4_path: Some("kernel (eth0)".into()),
    };
    agent.heartbeat("web-1", &beat).await.expect("heartbeat");
    let err = agent.heartbeat("web-2", &beat).await.unwrap_err();
    assert!(
        err.to_string().contains("403"),
        "another server's heartbeat: {err}"
    );
    let out = ferry(&config, &["servers", "list"]);
    let (stdout, _) = text(&out);
    let row = stdout.lines().nth(1).unwrap_or_default();
    for shown in [
        "s ago",
        "0.1.0",
        "kernel MTU 1420",
        "initial",
        "none",
        " 2",
        "kernel (eth0)",
    ] {
        assert!(row.contains(shown), "{shown:?} not in {row}");
    }

    let out = ferry(&config, &["servers", "list", "--json"]);
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(listed[0]["server"]["name"], "web-1");
    assert_eq!(listed[0]["heartbeat"]["containers_running"], 2);

    let out = ferry(&config, &["servers", "remove", "web-1"]);
    assert!(out.status.success(), "{}", text(&out).1);
    assert!(text(&out).0.contains("10.66.1.0/24 released"));
    let out = ferry(&config, &["servers", "remove", "web-1"]);
    assert!(!out.status.success());
    assert!(
        text(&out).1.contains("404") && text(&out).1.contains("no server named \"web-1\""),
        "{}",
        text(&out).1
    );
}

#[test]
fn validate_reports_located_problems_and_fails_only_on_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let good = dir.path().join("service.yml");
    std::fs::write(&good, "services:\n  web:\n    ports: [\"3000:80\"]\n    comand: node s.js\n  api:\n    image: node:20\n").expect("write");
    // The source beside it: with the command misspelt, web starts from server.js.
    std::fs::write(dir.path().join("server.js"), "").expect("write");
    let out = ferry(dir.path(), &["validate", &good.to_string_lossy()]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.contains("2 service(s): api, web"), "{stdout}");
    assert!(
        stderr.contains("service.yml:4:13: warning: services.web.comand")
            && stderr.contains("did you mean \"command\""),
        "{stderr}"
    );

    let bad = dir.path().join("bad.yml");
    std::fs::write(&bad, "services:\n  web:\n    ports: [\"http\"]\n").expect("write");
    let out = ferry(dir.path(), &["validate", &bad.to_string_lossy(), "--json"]);
    assert!(!out.status.success());
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(report["valid"], false);
    assert_eq!(report["problems"][0]["line"], 3);
    assert_eq!(report["problems"][0]["path"], "services.web.ports[0]");

    let out = ferry(
        dir.path(),
        &[
            "validate",
            &dir.path().join("missing.yml").to_string_lossy(),
        ],
    );
    assert!(!out.status.success());
    assert!(text(&out).1.contains("missing.yml"), "{}", text(&out).1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_checks_packs_and_records_generations() {
    let setup = setup().await;
    let (data, url, config, done) = (
        setup.data.clone(),
        setup.url.clone(),
        setup.config.clone(),
        &setup.done,
    );
    let out = setup.login();
    assert!(out.status.success(), "{}", text(&out).1);

    // With no server joined there is nowhere to run: refused before the upload.
    let shop = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/shop");
    let shop = shop.to_string_lossy();
    let out = ferry(&config, &["deploy", "--stack", "shop", &shop]);
    assert!(!out.status.success());
    assert!(
        text(&out).1.contains("no server has joined central"),
        "{}",
        text(&out).1
    );
    setup.join_web_1().await;
    for expected in [1, 2] {
        // No agent runs containers here, so don't wait for one (tests/tests/host_deploy.rs
        // waits for a real one).
        let out = ferry(&config, &["deploy", "--no-wait", "--stack", "shop", &shop]);
        let (stdout, stderr) = text(&out);
        assert!(out.status.success(), "{stderr}");
        assert!(
            stdout.contains(&format!(
                "generation {expected} of shop recorded (source sha256:"
            )),
            "{stdout}"
        );
    }
    let admin = Client::new(
        &url,
        &done.admin_token,
        Trust::Fingerprint(done.ca_fingerprint.clone()),
    )
    .expect("client");
    let generations = admin.generations("shop").await.expect("generations");
    assert_eq!(generations.len(), 2);
    assert_eq!(
        generations[1].services.keys().collect::<Vec<_>>(),
        ["api", "web"]
    );
    // The same source twice is one file on disk.
    assert_eq!(generations[0].source_digest, generations[1].source_digest);
    assert_eq!(
        std::fs::read_dir(data.join("sources"))
            .expect("sources")
            .count(),
        1
    );

    let out = ferry(&config, &["stacks", "list"]);
    let stdout = text(&out).0;
    assert!(
        stdout
            .lines()
            .nth(1)
            .is_some_and(|l| l.starts_with("shop") && l.contains(" 2 ")),
        "{stdout}"
    );

    // A bad service.yml is refused here, before anything is uploaded.
    let bad = setup.dir.path().join("bad");
    std::fs::create_dir_all(&bad).expect("mkdir");
    std::fs::write(
        bad.join("service.yml"),
        "services:\n  web:\n    ports: [oops]\n",
    )
    .expect("write");
    let out = ferry(
        &config,
        &["deploy", "--stack", "shop", &bad.to_string_lossy()],
    );
    assert!(!out.status.success());
    assert!(
        text(&out).1.contains("service.yml:3:13"),
        "{}",
        text(&out).1
    );

    // Central checks again: an archive without service.yml, garbage, and an oversized body.
    let err = admin
        .deploy("shop", b"not gzip".to_vec())
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("400") && err.to_string().contains("gzip"),
        "{err}"
    );
    let err = admin.deploy("Shop!", b"x".to_vec()).await.unwrap_err();
    assert!(err.to_string().contains("not a valid stack name"), "{err}");
    let err = admin
        .deploy("shop", vec![0u8; 101 * 1024 * 1024])
        .await
        .unwrap_err();
    assert!(err.to_string().contains("413"), "{err}");
    assert_eq!(
        admin.generations("shop").await.expect("generations").len(),
        2,
        "nothing changed"
    );
}

/// Writes `file` (path, text) in the stack `dir`, runs `ferry validate` on it, which must
/// refuse it; what it said.
fn refusal(config: &std::path::Path, dir: &std::path::Path, file: (&str, &str)) -> String {
    write_tree(dir, &[file]);
    let out = ferry(config, &["validate", &dir.to_string_lossy()]);
    assert!(!out.status.success(), "{}", text(&out).0);
    text(&out).1
}

/// Writes `files` (path, text) under `dir`.
fn write_tree(dir: &std::path::Path, files: &[(&str, &str)]) {
    for (path, text) in files {
        let path = dir.join(path);
        std::fs::create_dir_all(path.parent().expect("a parent")).expect("mkdir");
        std::fs::write(path, text).expect("write");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_plans_node_apps_and_uploads_only_their_source() {
    let setup = setup().await;
    let (data, url, config, done) = (
        setup.data.clone(),
        setup.url.clone(),
        setup.config.clone(),
        &setup.done,
    );
    assert!(setup.login().status.success());
    setup.join_web_1().await;
    let service = "services:\n  web:\n    ports: [\"3000:80\"]\n";

    // A checkout with dependencies installed, history, logs and a secret the
    // .dockerignore names: only the source goes up.
    let app = setup.dir.path().join("app");
    write_tree(
        &app,
        &[
            ("service.yml", service),
            ("package.json", r#"{"scripts":{"start":"node app.js"}}"#),
            ("package-lock.json", "{}"),
            ("app.js", "require('http')"),
            ("lib/util.js", "module.exports = 1"),
            ("node_modules/express/index.js", "x"),
            ("lib/node_modules/x/index.js", "x"),
            (".git/HEAD", "ref: refs/heads/main"),
            ("debug.log", "x"),
            ("config/secrets.json", "{}"),
            (".dockerignore", "*.log\nconfig/secrets.json\n"),
        ],
    );
    let out = ferry(
        &config,
        &["validate", &app.join("service.yml").to_string_lossy()],
    );
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stdout.contains("web: npm ci, then npm start on node:24-bookworm-slim"),
        "{stdout}"
    );
    let out = ferry(
        &config,
        &[
            "deploy",
            "--no-wait",
            "--stack",
            "app",
            &app.to_string_lossy(),
        ],
    );
    assert!(out.status.success(), "{}", text(&out).1);
    let admin = Client::new(
        &url,
        &done.admin_token,
        Trust::Fingerprint(done.ca_fingerprint.clone()),
    )
    .expect("client");
    let generation = &admin.generations("app").await.expect("generations")[0];
    let digest = generation.source_digest.trim_start_matches("sha256:");
    let stored = std::fs::read_dir(data.join("sources"))
        .expect("sources")
        .map(|e| e.expect("entry").path())
        .find(|p| p.to_string_lossy().contains(digest))
        .expect("the uploaded source on central's disk");
    let archive = std::fs::read(stored).expect("read");
    let mut names: Vec<String> = tar::Archive::new(flate2::read::GzDecoder::new(&archive[..]))
        .entries()
        .expect("entries")
        .map(|e| e.expect("entry"))
        .filter(|e| !e.header().entry_type().is_dir())
        .map(|e| e.path().expect("path").to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            ".dockerignore",
            "app.js",
            "lib/util.js",
            "package-lock.json",
            "package.json",
            "service.yml"
        ]
    );

    // An app with nothing to start, or no Node ferry has, is refused before the upload.
    let broken = setup.dir.path().join("broken");
    write_tree(
        &broken,
        &[
            ("service.yml", service),
            ("package.json", r#"{"scripts":{"test":"x"}}"#),
        ],
    );
    let out = ferry(
        &config,
        &[
            "deploy",
            "--no-wait",
            "--stack",
            "app",
            &broken.to_string_lossy(),
        ],
    );
    assert!(!out.status.success());
    let stderr = text(&out).1;
    assert!(
        stderr.contains("web")
            && stderr.contains("nothing to start")
            && stderr.contains("`start` script"),
        "{stderr}"
    );
    let said = refusal(
        &config,
        &broken,
        (
            "package.json",
            r#"{"main":"a.js","engines":{"node":"^16"}}"#,
        ),
    );
    assert!(said.contains("engines.node \"^16\""), "{said}");
    // A build root that is not there, or leads out of the stack, is named where it is set.
    let said = refusal(
        &config,
        &broken,
        (
            "service.yml",
            "services:\n  web:\n    build_root: nothere\n    ports: [\"3000\"]\n",
        ),
    );
    assert!(
        said.contains("services.web.build_root: ") && said.contains("does not exist"),
        "{said}"
    );
    std::os::unix::fs::symlink(&app, broken.join("elsewhere")).expect("symlink");
    let said = refusal(
        &config,
        &broken,
        (
            "service.yml",
            "services:\n  web:\n    build_root: elsewhere\n    ports: [\"3000\"]\n",
        ),
    );
    assert!(said.contains("outside the stack's directory"), "{said}");
    assert_eq!(
        admin.generations("app").await.expect("generations").len(),
        1,
        "nothing was uploaded"
    );
}
