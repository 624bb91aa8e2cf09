//! Central's API over real TLS on loopback: joining, tokens and their limits, watches.

mod etcd_member;

use std::time::Duration;

use base64::Engine as _;
use ferry_api::{
    client::{Client, ClientError, Trust},
    types::JoinRequest,
};
use ferry_central::{
    init,
    serve::{self, Running},
    store::{Store as _, sqlite::SqliteStore},
};
use futures_util::StreamExt as _;

struct Central {
    _dir: tempfile::TempDir,
    data_dir: std::path::PathBuf,
    admin: String,
    join: String,
    fingerprint: String,
    running: Option<Running>,
}

impl Central {
    async fn start() -> Self {
        Self::start_with(Default::default()).await
    }

    async fn start_with(overrides: serve::Overrides) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let data_dir = dir.path().join("central");
        let done = init::init(
            &data_dir,
            "https://127.0.0.1:7443",
            "127.0.0.1:0".parse().expect("addr"),
            None,
        )
        .expect("init");
        let running = serve::start(&data_dir, overrides).await.expect("serve");
        Self {
            _dir: dir,
            data_dir,
            admin: done.admin_token,
            join: done.join_token,
            fingerprint: done.ca_fingerprint,
            running: Some(running),
        }
    }

    fn url(&self) -> String {
        let addr = self.running.as_ref().expect("running").local_addr();
        format!("https://127.0.0.1:{}", addr.port())
    }

    fn client(&self, token: &str) -> Client {
        Client::new(
            &self.url(),
            token,
            Trust::Fingerprint(self.fingerprint.clone()),
        )
        .expect("client")
    }

    /// Joins server `name` (key made from `n`) and returns a client with its agent token.
    async fn agent(&self, name: &str, n: u8) -> Client {
        self.agent_with(join_request(name, n)).await
    }

    /// Joins with `request`, returning a client with the agent's token.
    async fn agent_with(&self, request: JoinRequest) -> Client {
        let joined = self.client(&self.join).join(&request).await.expect("join");
        self.client(&joined.agent_token)
    }
}

/// A join request for server `name` with a key made from `n`.
/// The next line of a watch, within 10 s.
async fn next_line<S>(watch: &mut S) -> ferry_api::types::WatchLine
where
    S: futures_util::Stream<
            Item = Result<ferry_api::types::WatchLine, ferry_api::client::ClientError>,
        > + Unpin,
{
    tokio::time::timeout(Duration::from_secs(10), watch.next())
        .await
        .expect("in time")
        .expect("line")
        .expect("ok")
}

fn join_request(name: &str, n: u8) -> JoinRequest {
    JoinRequest {
        name: name.into(),
        wireguard_public_key: wg_key(n),
        wireguard_endpoint: ep(u16::from(n)),
        memory_bytes: None,
    }
}

fn wg_key(n: u8) -> String {
    base64::engine::general_purpose::STANDARD.encode([n; 32])
}

fn status(err: &ClientError) -> u16 {
    match err {
        ClientError::Status { status, .. } => *status,
        other => panic!("expected an HTTP status, got {other}"),
    }
}

#[tokio::test]
async fn a_server_joins_with_the_join_token_and_gets_its_own_subnet_and_credential() {
    let central = Central::start().await;
    let joiner = central.client(&central.join);
    let joined = joiner.join(&join_request("alpha", 1)).await.expect("join");
    assert_eq!(joined.subnet, "10.66.1.0/24");
    assert!(joined.agent_token.starts_with("ferry-agent-"));

    // The CA the client pinned by fingerprint is central's CA, ready to be saved.
    let pinned = joiner.pinned_ca_pem().expect("pinned CA");
    let on_disk = std::fs::read_to_string(central.data_dir.join("tls/ca.pem")).expect("ca.pem");
    let trusted =
        Client::new(&central.url(), &central.admin, Trust::CaPem(pinned)).expect("client");
    let servers = trusted.servers().await.expect("servers");
    assert_eq!(servers.len(), 1);
    let via_disk =
        Client::new(&central.url(), &central.admin, Trust::CaPem(on_disk)).expect("client");
    assert_eq!(via_disk.servers().await.expect("servers")[0].name, "alpha");

    let second = joiner.join(&join_request("bravo", 2)).await.expect("join");
    assert_eq!(second.subnet, "10.66.2.0/24");
    let again = joiner.join(&join_request("alpha", 3)).await.unwrap_err();
    assert_eq!(status(&again), 409, "{again}");
}

#[tokio::test]
async fn the_wrong_fingerprint_never_reaches_central() {
    let central = Central::start().await;
    let wrong = Client::new(
        &central.url(),
        &central.admin,
        Trust::Fingerprint(format!("sha256:{}", "0".repeat(64))),
    )
    .expect("client");
    let err = wrong.servers().await.unwrap_err();
    let text = format!("{err:?}");
    assert!(text.contains("no CA with fingerprint"), "{text}");
}

#[tokio::test]
async fn every_token_can_do_only_its_own_job() {
    let central = Central::start().await;
    let agent = central.agent("alpha", 1).await;
    let admin = central.client(&central.admin);

    assert_eq!(
        status(&central.client("").servers().await.unwrap_err()),
        401
    );
    assert_eq!(
        status(
            &central
                .client("ferry-admin-forged")
                .servers()
                .await
                .unwrap_err()
        ),
        401
    );
    assert_eq!(
        status(&central.client(&central.join).servers().await.unwrap_err()),
        403
    );
    assert_eq!(
        status(
            &central
                .client(&central.join)
                .list("servers/")
                .await
                .unwrap_err()
        ),
        403
    );
    assert_eq!(status(&agent.servers().await.unwrap_err()), 403);
    // An agent reads the other servers (for the mesh) and its own desired state only.
    assert_eq!(
        agent.list("servers/").await.expect("servers").items.len(),
        1
    );
    agent
        .list("desired/alpha/")
        .await
        .expect("own desired state");
    let other = agent.list("desired/bravo/").await.unwrap_err();
    assert_eq!(status(&other), 403, "{other}");
    assert_eq!(status(&agent.list("").await.unwrap_err()), 403);
    // Token hashes are never served, even to the admin.
    assert_eq!(status(&admin.list("auth/").await.unwrap_err()), 400);
    let bad_key = central
        .client(&central.join)
        .join(&JoinRequest {
            name: "bravo".into(),
            wireguard_public_key: "not-a-key".into(),
            wireguard_endpoint: ep(200),
            memory_bytes: None,
        })
        .await
        .unwrap_err();
    assert_eq!(status(&bad_key), 400);

    // Removing a server revokes its credential.
    admin.remove_server("alpha").await.expect("remove");
    assert_eq!(status(&agent.list("servers/").await.unwrap_err()), 401);
    assert!(admin.servers().await.expect("servers").is_empty());
}

#[tokio::test]
async fn oversized_and_malformed_requests_are_refused() {
    let central = Central::start().await;
    let http = reqwest_client(&central);
    let url = format!("{}/v1/join", central.url());
    let big = format!(
        "{{\"name\":\"{}\",\"wireguard_public_key\":\"x\"}}",
        "a".repeat(200_000)
    );
    let post = |body: String| {
        http.post(&url)
            .bearer_auth(&central.join)
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    assert_eq!(post(big).await.expect("send").status().as_u16(), 413);
    let cut_off = post("{\"name\":".into()).await.expect("send");
    assert_eq!(cut_off.status().as_u16(), 400);
    let smuggled = "{\"name\":\"x\",\"wireguard_public_key\":\"k\",\"admin\":true}";
    let response = post(smuggled.into()).await.expect("send");
    assert_eq!(
        response.status().as_u16(),
        422,
        "unknown fields are refused"
    );
    let servers = SqliteStore::open(&central.data_dir.join("state.db"))
        .expect("store")
        .list("servers/")
        .expect("list")
        .0;
    assert!(servers.is_empty(), "nothing changed");
}

#[tokio::test]
async fn a_watch_resumes_across_a_central_restart_without_losing_or_repeating() {
    let mut central = Central::start().await;
    let agent = central.agent("alpha", 1).await;
    let start = agent.list("servers/").await.expect("list").revision;
    let mut watch = Box::pin(agent.watch("servers/", start).await.expect("watch"));

    let joiner = central.client(&central.join);
    joiner.join(&join_request("bravo", 2)).await.expect("join");
    let line = next_line(&mut watch).await;
    assert_eq!(line.events.len(), 1);
    assert_eq!(line.events[0].key, "servers/bravo");
    let seen = line.revision;

    // Central goes down; the watch ends; a change is made while it is down.
    let port = central.running.as_ref().expect("running").local_addr();
    central.running = None;
    let ended = tokio::time::timeout(Duration::from_secs(10), watch.next())
        .await
        .expect("in time");
    assert!(
        !matches!(ended, Some(Ok(_))),
        "the stream must end when central stops"
    );
    central.running = Some(
        serve::start(
            &central.data_dir,
            serve::Overrides {
                listen: Some(port),
                ..Default::default()
            },
        )
        .await
        .expect("restart"),
    );
    joiner
        .join(&join_request("charlie", 3))
        .await
        .expect("join");

    let mut watch = Box::pin(agent.watch("servers/", seen).await.expect("resume"));
    let line = next_line(&mut watch).await;
    let keys: Vec<&str> = line.events.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(
        keys,
        ["servers/charlie"],
        "bravo is not repeated, charlie is not lost"
    );
}

fn reqwest_client(central: &Central) -> reqwest::Client {
    // A plain client trusting central's CA, for sending what the typed client never would.
    let ca = std::fs::read(central.data_dir.join("tls/ca.pem")).expect("ca");
    let ca = rustls_pki_types::CertificateDer::from_pem_slice(&ca).expect("pem");
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca).expect("root");
    let tls = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .build()
        .expect("client")
}

use rustls_pki_types::pem::PemObject as _;

/// Endpoint number `n`: every server has its own (central refuses a taken one).
fn ep(n: u16) -> std::net::SocketAddr {
    std::net::SocketAddr::from(([192, 0, 2, 1], 20_000 + n))
}

fn archive(service_yml: &str) -> Vec<u8> {
    let mut tar = tar::Builder::new(flate2::write::GzEncoder::new(
        Vec::new(),
        flate2::Compression::fast(),
    ));
    let mut header = tar::Header::new_gnu();
    header.set_size(service_yml.len() as u64);
    header.set_mode(0o644);
    tar.append_data(&mut header, "service.yml", service_yml.as_bytes())
        .expect("append");
    tar.into_inner().expect("tar").finish().expect("gzip")
}

#[tokio::test]
async fn server_reports_settle_a_generation() {
    let central = Central::start().await;
    let one = central.agent("one", 1).await;
    let two = central.agent("two", 2).await;
    let admin = central.client(&central.admin);
    let yml = "services:\n  api:\n    ports: [\"4000\"]\n  worker:\n    constraints:\n      max_count: 1\n";
    let done = admin.deploy("shop", archive(yml)).await.expect("deploy");
    assert_eq!(done.generation, 1);

    // Each server was assigned its share in the same transaction as the generation.
    let mine = one.list("desired/one/").await.expect("assignments");
    let assignment: ferry_api::types::Assignment =
        serde_json::from_value(mine.items[0].value.clone()).expect("assignment");
    assert_eq!(
        assignment.services.keys().collect::<Vec<_>>(),
        ["api", "worker"]
    );
    let theirs: ferry_api::types::Assignment = serde_json::from_value(
        two.list("desired/two/").await.expect("list").items[0]
            .value
            .clone(),
    )
    .expect("assignment");
    assert_eq!(
        theirs.services.keys().collect::<Vec<_>>(),
        ["api"],
        "worker has max_count 1"
    );
    // An agent fetches the source it was assigned, and reports only for itself.
    let source = one.source(&assignment.source_digest).await.expect("source");
    assert_eq!(source, archive(yml));
    let healthy = ferry_api::types::StatusReport {
        healthy: true,
        detail: String::new(),
    };
    let err = one
        .report_status("two", "shop", 1, &healthy)
        .await
        .unwrap_err();
    assert_eq!(status(&err), 403);

    one.report_status("one", "shop", 1, &healthy)
        .await
        .expect("report");
    assert_eq!(
        admin.stacks().await.expect("stacks")[0].serving,
        None,
        "two has not reported yet"
    );
    two.report_status("two", "shop", 1, &healthy)
        .await
        .expect("report");
    assert_eq!(admin.stacks().await.expect("stacks")[0].serving, Some(1));

    // Generation 2 fails on one server: it never serves; 1 keeps serving.
    admin.deploy("shop", archive(yml)).await.expect("deploy");
    let failed = ferry_api::types::StatusReport {
        healthy: false,
        detail: "api: exited with code 3".into(),
    };
    two.report_status("two", "shop", 2, &failed)
        .await
        .expect("report");
    one.report_status("one", "shop", 2, &healthy)
        .await
        .expect("report");
    let stack = &admin.stacks().await.expect("stacks")[0];
    assert_eq!(stack.serving, Some(1));
    let generations = admin.generations("shop").await.expect("generations");
    assert_eq!(
        generations[1].phase,
        ferry_api::types::Phase::Failed {
            reason: "two: api: exited with code 3".into()
        }
    );
    let err = one
        .report_status("one", "shop", 9, &healthy)
        .await
        .unwrap_err();
    assert_eq!(status(&err), 404);
}

/// Containers of `service` per server in generation `generation`, from the assignments.
async fn counts(admin: &Client, service: &str, generation: u64) -> Vec<(String, u32)> {
    let suffix = format!("/shop/{generation:010}");
    let listed = admin.list("desired/").await.expect("assignments");
    listed
        .items
        .into_iter()
        .filter(|i| i.key.ends_with(&suffix))
        .filter_map(|i| {
            let server = i.key.split('/').nth(1)?.to_string();
            let a: ferry_api::types::Assignment = serde_json::from_value(i.value).ok()?;
            Some((server, a.count(service)))
        })
        .filter(|(_, n)| *n > 0)
        .collect()
}

#[tokio::test]
async fn a_scale_changes_the_serving_generation_in_place_within_bounds_and_memory() {
    let central = Central::start().await;
    // One GiB each: room for two 512 MiB containers per server.
    let mut request = join_request("one", 1);
    request.memory_bytes = Some(1 << 30);
    let one = central.agent_with(request).await;
    let mut request = join_request("two", 2);
    request.memory_bytes = Some(1 << 30);
    let two = central.agent_with(request).await;
    let admin = central.client(&central.admin);
    let yml = "services:\n  web:\n    ports: [\"3000\"]\n    constraints:\n      max_count: 8\n  big:\n    constraints:\n      max_count: 1\n      resources:\n        memory: 512M\n";
    admin.deploy("shop", archive(yml)).await.expect("deploy");
    let healthy = ferry_api::types::StatusReport {
        healthy: true,
        detail: String::new(),
    };

    // Nothing serves yet: there is nothing to scale in place.
    let err = admin.scale("shop", "web", 3).await.unwrap_err();
    assert_eq!(status(&err), 409);
    assert!(err.to_string().contains("no serving generation"), "{err}");
    one.report_status("one", "shop", 1, &healthy)
        .await
        .expect("report");
    two.report_status("two", "shop", 1, &healthy)
        .await
        .expect("report");
    assert_eq!(admin.stacks().await.expect("stacks")[0].serving, Some(1));
    assert_eq!(
        counts(&admin, "web", 1).await,
        [("one".into(), 1), ("two".into(), 1)]
    );

    // Five containers over two servers: 3 and 2, in generation 1, no new generation.
    let done = admin.scale("shop", "web", 5).await.expect("scale");
    assert_eq!(done.generation, 1);
    assert_eq!(
        done.placement.into_iter().collect::<Vec<_>>(),
        [("one".into(), 3), ("two".into(), 2)]
    );
    assert_eq!(
        counts(&admin, "web", 1).await,
        [("one".into(), 3), ("two".into(), 2)]
    );
    assert_eq!(admin.stacks().await.expect("stacks")[0].latest, 1);
    // Down to two: one each, the removed ones told to drain for central's drain period.
    admin.scale("shop", "web", 2).await.expect("scale");
    assert_eq!(
        counts(&admin, "web", 1).await,
        [("one".into(), 1), ("two".into(), 1)]
    );
    let mine: ferry_api::types::Assignment = serde_json::from_value(
        one.list("desired/one/").await.expect("list").items[0]
            .value
            .clone(),
    )
    .expect("assignment");
    assert!(mine.drain_ms > 0, "{mine:?}");

    // Refused with the reason, changing nothing: past max_count, an unknown service, and
    // more 512 MiB containers than two 1 GiB servers hold (big runs 1 already, on one).
    for (service, count, code, says) in [
        (
            "web",
            9,
            400,
            "web: 9 containers asked, but its service.yml allows at most 8",
        ),
        (
            "nope",
            1,
            404,
            "stack \"shop\" has no service \"nope\"; it has big, web",
        ),
    ] {
        let err = admin.scale("shop", service, count).await.unwrap_err();
        assert_eq!(status(&err), code);
        assert!(err.to_string().contains(says), "{err}");
    }
    let err = admin.scale("shop", "big", 5).await.unwrap_err();
    assert_eq!(status(&err), 400);
    assert!(
        err.to_string()
            .contains("big: 5 containers asked, but its service.yml allows at most 1"),
        "{err}"
    );
    assert_eq!(
        counts(&admin, "web", 1).await,
        [("one".into(), 1), ("two".into(), 1)]
    );

    // A deploy keeps the scaled count; a count past the servers' memory refuses the deploy.
    admin.scale("shop", "web", 3).await.expect("scale");
    admin.deploy("shop", archive(yml)).await.expect("deploy");
    assert_eq!(
        counts(&admin, "web", 2).await,
        [("one".into(), 2), ("two".into(), 1)]
    );
    // While generation 2 deploys, a scale is refused.
    let err = admin.scale("shop", "web", 4).await.unwrap_err();
    assert_eq!(status(&err), 409);
    assert!(
        err.to_string()
            .contains("generation 2 of shop is deploying"),
        "{err}"
    );
    one.report_status("one", "shop", 2, &healthy)
        .await
        .expect("report");
    two.report_status("two", "shop", 2, &healthy)
        .await
        .expect("report");
    let heavy = yml.replace("max_count: 1\n", "min_count: 5\n");
    let err = admin.deploy("shop", archive(&heavy)).await.unwrap_err();
    assert_eq!(status(&err), 400);
    assert!(
        err.to_string()
            .contains("big: 5 containers with a memory limit of 512 MiB each do not fit: 4 fit"),
        "{err}"
    );
    let stack = &admin.stacks().await.expect("stacks")[0];
    assert_eq!(
        (stack.latest, stack.serving),
        (2, Some(2)),
        "nothing recorded"
    );
}

#[tokio::test]
async fn stack_variables_resolve_at_deploy_and_a_missing_one_refuses_it() {
    let central = Central::start().await;
    let agent = central.agent("one", 1).await;
    let admin = central.client(&central.admin);
    let yml = "services:\n  api:\n    env_vars:\n      DB_PASSWORD: _env(DB_PASSWORD)\n      MODE: plain\n";

    // Not set yet: the deploy is refused, naming the variable and the command to set it.
    let err = admin.deploy("shop", archive(yml)).await.unwrap_err();
    assert_eq!(status(&err), 409);
    assert!(
        err.to_string().contains(
            "service \"api\": DB_PASSWORD is _env(DB_PASSWORD), and stack \"shop\" has no variable DB_PASSWORD; set it with `ferry env set --stack shop DB_PASSWORD=VALUE`"
        ),
        "{err}"
    );
    assert!(
        admin.stacks().await.expect("stacks").is_empty(),
        "nothing recorded"
    );

    // Bad names and agents are refused; nothing changes.
    let mut bad = ferry_api::types::VariablesChange::default();
    bad.set.insert("1X".into(), "v".into());
    let err = admin.change_variables("shop", &bad).await.unwrap_err();
    assert_eq!(status(&err), 400);
    assert!(
        err.to_string().contains("not a valid variable name"),
        "{err}"
    );
    let mut good = ferry_api::types::VariablesChange::default();
    good.set.insert("DB_PASSWORD".into(), "s3cret".into());
    let err = agent.change_variables("shop", &good).await.unwrap_err();
    assert_eq!(status(&err), 403);
    assert_eq!(status(&agent.variables("shop").await.unwrap_err()), 403);
    assert!(admin.variables("shop").await.expect("read").is_empty());

    // Set: the deploy goes through and the server's assignment carries the value.
    admin.change_variables("shop", &good).await.expect("set");
    admin.deploy("shop", archive(yml)).await.expect("deploy");
    let mine = agent.list("desired/one/").await.expect("assignments");
    let assignment: ferry_api::types::Assignment =
        serde_json::from_value(mine.items[0].value.clone()).expect("assignment");
    use ferry_api::servicefile::EnvValue;
    assert_eq!(
        assignment.services["api"].env_vars["DB_PASSWORD"],
        EnvValue::Plain("s3cret".into())
    );
    assert_eq!(
        assignment.services["api"].env_vars["MODE"],
        EnvValue::Plain("plain".into())
    );
}

#[tokio::test]
async fn a_stacks_datasources_become_records_agents_can_read() {
    use ferry_api::{records::ServiceRecord, types::DatasourcesChange};
    let central = Central::start().await;
    let agent = central.agent("one", 1).await;
    let admin = central.client(&central.admin);
    let address: std::net::Ipv4Addr = "10.0.0.5".parse().expect("address");

    // An unknown datasource or no address: refused, naming the choices; nothing changes.
    let mut bad = DatasourcesChange::default();
    bad.set.insert("oracle".into(), vec![address]);
    let err = admin.change_datasources("shop", &bad).await.unwrap_err();
    assert_eq!(status(&err), 400);
    assert!(
        err.to_string()
            .contains("\"oracle\" is not a datasource ferry knows; use one of mysql, postgresql, mongodb, redis"),
        "{err}"
    );
    let mut empty = DatasourcesChange::default();
    empty.set.insert("redis".into(), vec![]);
    assert_eq!(
        status(&admin.change_datasources("shop", &empty).await.unwrap_err()),
        400
    );
    let mut good = DatasourcesChange::default();
    good.set.insert("redis".into(), vec![address]);
    assert_eq!(
        status(&agent.change_datasources("shop", &good).await.unwrap_err()),
        403
    );
    assert!(admin.datasources("shop").await.expect("read").is_empty());

    // Set: a non-versioned record with the address and redis's port, readable by agents.
    admin.change_datasources("shop", &good).await.expect("set");
    let items = agent
        .list("records/shop/redis")
        .await
        .expect("records")
        .items;
    let record: ServiceRecord = serde_json::from_value(items[0].value.clone()).expect("record");
    assert_eq!(record.pick(Some(7)).len(), 1);
    assert_eq!(record.pick(None)[0].address, address);
    assert_eq!(record.ports, vec![6379]);
    assert_eq!(
        record.dns_behaviour,
        ferry_api::servicefile::DnsBehaviour::NonVersioned
    );

    // Unset: the record goes.
    let gone = DatasourcesChange {
        unset: vec!["redis".into()],
        ..DatasourcesChange::default()
    };
    admin
        .change_datasources("shop", &gone)
        .await
        .expect("unset");
    assert!(
        agent
            .list("records/shop/redis")
            .await
            .expect("records")
            .items
            .is_empty()
    );
}

#[tokio::test]
async fn container_actions_are_for_the_admin_and_reach_only_their_own_server() {
    use ferry_api::types::{ActionKind, ActionResult};
    let central = Central::start().await;
    let one = central.agent("one", 1).await;
    central.agent("two", 2).await;
    let admin = central.client(&central.admin);

    // An agent reads its own server's actions only, and answers only for itself.
    assert!(one.list("actions/one/").await.is_ok());
    assert_eq!(status(&one.list("actions/two/").await.unwrap_err()), 403);
    let answer = ActionResult {
        ok: true,
        output: "x".into(),
    };
    let err = one.answer_action("two", "0123", &answer).await.unwrap_err();
    assert_eq!(status(&err), 403);
    let err = one.answer_action("one", "0123", &answer).await.unwrap_err();
    assert_eq!(status(&err), 404, "no such pending action");
    // Agents do not ask for actions.
    let err = one
        .container_action("one", "abcd", &ActionKind::Stop)
        .await
        .unwrap_err();
    assert_eq!(status(&err), 403);

    // The admin's bad requests are refused with what to do.
    let err = admin
        .container_action(
            "one",
            "abcd",
            &ActionKind::Logs {
                lines: 20_000,
                since: None,
                timestamps: false,
            },
        )
        .await
        .unwrap_err();
    assert_eq!(status(&err), 400);
    let err = admin
        .container_action("one", "abcd", &ActionKind::Exec { command: vec![] })
        .await
        .unwrap_err();
    assert_eq!(status(&err), 400);
    let err = admin
        .container_action("one", "abcd", &ActionKind::Restart)
        .await
        .unwrap_err();
    assert_eq!(status(&err), 404);
    assert!(err.to_string().contains("ferry containers list"), "{err}");
    // Nothing was left pending.
    assert!(
        one.list("actions/one/")
            .await
            .expect("list")
            .items
            .is_empty()
    );
}

#[tokio::test]
async fn records_follow_container_reports_and_flips_per_generation() {
    use ferry_api::{
        records::ServiceRecord,
        types::{ContainerReport, StatusReport},
    };
    let central = Central::start().await;
    let one = central.agent("one", 1).await;
    let admin = central.client(&central.admin);
    let healthy = StatusReport {
        healthy: true,
        detail: String::new(),
    };
    let container = |id: &str, generation: u64, serves: &[u64], last: u8| ContainerReport {
        id: id.into(),
        stack: "shop".into(),
        service: "api".into(),
        generation,
        serves: serves.to_vec(),
        address: Some(std::net::Ipv4Addr::new(10, 66, 1, last)),
        state: ferry_api::types::ContainerState::Running,
        cgroup_id: Some(u64::from(last)),
    };
    let record = || async {
        let items = one.list("records/shop/").await.expect("records").items;
        assert_eq!(items.len(), 1, "one service, one record: {items:?}");
        serde_json::from_value::<ServiceRecord>(items[0].value.clone()).expect("record")
    };
    let yml = "services:\n  api:\n    ports: [\"4000\"]\n";

    admin.deploy("shop", archive(yml)).await.expect("deploy");
    one.report_containers("one", &[container("a1", 1, &[1], 2)])
        .await
        .expect("report");
    one.report_status("one", "shop", 1, &healthy)
        .await
        .expect("status");
    let r = record().await;
    assert_eq!((r.serving, r.ports.as_slice()), (Some(1), &[4000][..]));
    let address = r.address.expect("a service address");
    assert_eq!(address.octets()[..2], [10, 96], "{address}");
    assert_eq!(r.pick(None)[0].address.octets()[3], 2);

    // Generation 2 starts beside 1: each generation's callers get their own.
    admin.deploy("shop", archive(yml)).await.expect("deploy");
    one.report_containers(
        "one",
        &[container("a1", 1, &[1], 2), container("a2", 2, &[2], 3)],
    )
    .await
    .expect("report");
    let r = record().await;
    assert_eq!(r.pick(Some(1))[0].address.octets()[3], 2);
    assert_eq!(r.pick(Some(2))[0].address.octets()[3], 3);
    assert_eq!(r.pick(None)[0].address.octets()[3], 2, "1 still serves");

    // The flip moves hosts to 2; once 1 is gone, only 2 is left for everyone.
    one.report_status("one", "shop", 2, &healthy)
        .await
        .expect("status");
    assert_eq!(record().await.pick(None)[0].address.octets()[3], 3);
    one.report_containers("one", &[container("a2", 2, &[2], 3)])
        .await
        .expect("report");
    let r = record().await;
    assert_eq!(r.generations.keys().copied().collect::<Vec<_>>(), [2]);
    assert_eq!(
        r.address,
        Some(address),
        "the address stays with the service"
    );
    assert_eq!(r.pick(Some(1))[0].address.octets()[3], 3);

    // A removed server's containers leave the records.
    admin.remove_server("one").await.expect("remove");
    let items = admin.list("records/shop/").await.expect("records").items;
    let r: ServiceRecord = serde_json::from_value(items[0].value.clone()).expect("record");
    assert!(r.pick(None).is_empty(), "{r:?}");
}

/// Central compacts its history on its own (here a window of one revision, looked at every
/// 50 ms): a watch from a revision it no longer has is refused with the machine-readable
/// reason, which the client turns into `Compacted`; listing again, then watching from the
/// listed revision, misses nothing.
#[tokio::test]
async fn a_watch_from_a_compacted_revision_is_told_to_list_again() {
    use ferry_central::store::compaction::Window;

    let central = Central::start_with(serve::Overrides {
        history: Some(Window {
            revisions: 1,
            age: Duration::ZERO,
        }),
        compaction_interval: Some(Duration::from_millis(50)),
        ..Default::default()
    })
    .await;
    let agent = central.agent("alpha", 1).await;
    let joiner = central.client(&central.join);
    for (n, name) in ["bravo", "charlie", "delta"].into_iter().enumerate() {
        joiner
            .join(&join_request(name, n as u8 + 2))
            .await
            .expect("join");
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match agent.watch("servers/", 1).await {
            Err(ferry_api::client::ClientError::Compacted { url }) => {
                assert!(url.ends_with("/v1/watch"), "{url}");
                break;
            }
            Ok(_) if std::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Ok(_) => panic!("revision 1 was never compacted"),
            Err(e) => panic!("expected Compacted, got {e}"),
        }
    }
    let list = agent.list("servers/").await.expect("list again");
    assert_eq!(list.items.len(), 4);
    let mut watch = Box::pin(
        agent
            .watch("servers/", list.revision)
            .await
            .expect("watch from the listed revision"),
    );
    joiner.join(&join_request("echo", 5)).await.expect("join");
    let line = next_line(&mut watch).await;
    assert_eq!(line.events.len(), 1);
    assert_eq!(line.events[0].key, "servers/echo");
}

/// A list names its store; a watch resuming a list of another store (one this central
/// was migrated from) or a revision this store has not reached is told to list again, not
/// resumed in a history it was never part of; the store's own list resumes.
#[tokio::test]
async fn a_watch_resuming_another_stores_list_is_told_to_list_again() {
    let central = Central::start().await;
    let agent = central.agent("alpha", 1).await;
    let list = agent.list("servers/").await.expect("list");
    assert_eq!(
        list.store.len(),
        32,
        "a list names its store: {:?}",
        list.store
    );
    let again = agent.list("servers/").await.expect("list again");
    assert_eq!(again.store, list.store, "the same store, the same identity");
    let told_to_list_again =
        |result: Result<_, ferry_api::client::ClientError>, what: &str| match result {
            Err(ferry_api::client::ClientError::Compacted { .. }) => {}
            Err(e) => panic!("{what}: expected Compacted, got {e}"),
            Ok(_) => panic!("{what}: resumed"),
        };
    let other = "0123456789abcdef0123456789abcdef";
    told_to_list_again(
        agent
            .watch_listed("servers/", list.revision, other)
            .await
            .map(drop),
        "another store's list",
    );
    told_to_list_again(
        agent
            .watch("servers/", list.revision + 1_000)
            .await
            .map(drop),
        "a revision past this store's",
    );
    let mut watch = Box::pin(
        agent
            .watch_listed("servers/", list.revision, &list.store)
            .await
            .expect("this store's list resumes"),
    );
    central
        .client(&central.join)
        .join(&join_request("bravo", 2))
        .await
        .expect("join");
    let line = next_line(&mut watch).await;
    assert_eq!(line.events[0].key, "servers/bravo");
}

/// A central whose etcd does not answer does not start, and says which members it tried;
/// it never panics on the way out (the backend's runtime is let go without waiting).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_central_whose_etcd_does_not_answer_fails_to_start_naming_the_members() {
    let member = etcd_member::Etcd::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let data_dir = dir.path().join("central");
    init::init(
        &data_dir,
        "https://127.0.0.1:7443",
        "127.0.0.1:0".parse().expect("addr"),
        Some(ferry_central::config::StoreConfig {
            etcd: member.url.clone(),
            ca: None,
            cert: None,
            key: None,
        }),
    )
    .expect("init on etcd");
    let members = member.url.trim_start_matches("etcd://").to_string();
    drop(member);
    let err = serve::start(&data_dir, Default::default())
        .await
        .err()
        .expect("no central without its store");
    assert!(err.to_string().contains(&members), "{err}");
}

/// Credentials and the store's identity never leave central, even under the widest
/// prefix an admin may ask for; asked for by name, they are refused.
#[tokio::test]
async fn credentials_never_leave_central_under_any_prefix() {
    let central = Central::start().await;
    let _agent = central.agent("alpha", 1).await;
    let admin = central.client(&central.admin);
    let everything = admin.list("").await.expect("list everything");
    assert!(
        everything.items.iter().any(|i| i.key == "servers/alpha"),
        "the list has the rest"
    );
    let leaked: Vec<&str> = everything
        .items
        .iter()
        .map(|i| i.key.as_str())
        .filter(|k| k.starts_with("auth/") || k.starts_with("sources/"))
        .collect();
    assert!(leaked.is_empty(), "{leaked:?}");
    for prefix in ["auth/", "auth/tokens/", "sources/"] {
        let err = admin.list(prefix).await.expect_err(prefix);
        assert!(
            err.to_string().contains("cannot be read"),
            "{prefix}: {err}"
        );
    }
}

/// A stored value central cannot read is central's own failure: a 500 that names the key,
/// never taken for an empty default (which here would have answered "no such container").
#[tokio::test]
async fn an_unreadable_stored_value_is_a_500_naming_its_key() {
    let central = Central::start().await;
    let _agent = central.agent("alpha", 1).await;
    SqliteStore::open(&central.data_dir.join("state.db"))
        .expect("store")
        .put(&ferry_api::keys::containers("alpha"), b"not json")
        .expect("put");
    let admin = central.client(&central.admin);
    let err = admin
        .container_action("alpha", "abc", &ferry_api::types::ActionKind::Stop)
        .await
        .expect_err("refused");
    match err {
        ferry_api::client::ClientError::Status {
            status, message, ..
        } => {
            assert_eq!(status, 500, "{message}");
            assert!(
                message.contains("containers/alpha") && message.contains("unreadable"),
                "{message}"
            );
        }
        other => panic!("expected a 500, got {other}"),
    }
}
