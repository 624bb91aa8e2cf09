//! A deploy settling on the real store: servers' reports make a generation serve or fail,
//! and the assignments tell each server what to run, what to drain and what to stop.

mod etcd_member;

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use ferry_api::{
    servicefile::{Service, parse},
    types::{Assignment, Desired, Phase, Server, StatusReport},
};
use ferry_central::{
    deploy::{self, assignment_key},
    state::Stacks,
    store::{Store as _, sqlite::SqliteStore},
};

const DRAIN: Duration = Duration::from_secs(7);

struct Cluster {
    store: Arc<SqliteStore>,
    stacks: Stacks<SqliteStore>,
    _dir: tempfile::TempDir,
}

fn cluster() -> Cluster {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(SqliteStore::open(&dir.path().join("central.db")).expect("store"));
    Cluster {
        stacks: Stacks::new(store.clone()),
        store,
        _dir: dir,
    }
}

fn server(name: &str, index: u8) -> Server {
    Server {
        name: name.into(),
        subnet_index: index,
        wireguard_public_key: String::new(),
        wireguard_endpoint: "192.0.2.1:51820".parse().expect("addr"),
        memory_bytes: None,
        key_requested: 0,
        key_generation: 0,
    }
}

fn services() -> BTreeMap<String, Service> {
    parse("service.yml", "services:\n  web:\n    ports: [\"3000\"]\n")
        .expect("valid")
        .stack
        .services
}

impl Cluster {
    fn deploy(&self) -> u64 {
        self.deploy_services(services())
    }

    /// A generation both servers report healthy, so it serves.
    fn serving_deploy(&self) -> u64 {
        let number = self.deploy();
        self.report("a", number, true);
        self.report("b", number, true);
        number
    }

    /// Records a generation as central's deploy does, carrying kept containers along.
    fn deploy_services(&self, services: BTreeMap<String, Service>) -> u64 {
        let servers = [server("a", 1), server("b", 2)];
        self.stacks
            .create_generation_with("shop", services.clone(), "d1gest", |g| {
                deploy::generation_ops(
                    self.store.as_ref(),
                    &self.stacks,
                    &servers,
                    g,
                    &services,
                    &Default::default(),
                )
            })
            .expect("deploy")
            .number
    }

    fn assignment(&self, server: &str, generation: u64) -> Assignment {
        let kv = self
            .store
            .get(&assignment_key(server, "shop", generation))
            .expect("read")
            .expect("assigned");
        serde_json::from_slice(&kv.value).expect("assignment")
    }

    fn report(&self, server: &str, generation: u64, healthy: bool) -> Phase {
        let report = StatusReport {
            healthy,
            detail: if healthy {
                ""
            } else {
                "web: exited with code 1"
            }
            .into(),
        };
        deploy::record_status(
            self.store.as_ref(),
            &self.stacks,
            (server, "shop", generation),
            &report,
            DRAIN,
        )
        .expect("report")
    }

    fn desired(&self, server: &str, generation: u64) -> Desired {
        self.assignment(server, generation).state
    }
}

#[test]
fn a_generation_serves_when_every_server_is_healthy_and_the_old_one_drains() {
    let c = cluster();
    let first = c.deploy();
    assert_eq!(
        c.report("a", first, true),
        Phase::Deploying,
        "b has not reported"
    );
    assert_eq!(c.report("b", first, true), Phase::Serving);
    assert_eq!(c.desired("a", first), Desired::Run);

    let second = c.deploy();
    c.report("a", second, true);
    assert_eq!(c.desired("a", first), Desired::Run, "1 runs until 2 serves");
    assert_eq!(c.report("b", second, true), Phase::Serving);
    let drain = Desired::Stop { drain_ms: 7000 };
    assert_eq!(
        (c.desired("a", first), c.desired("b", first)),
        (drain, drain)
    );
    assert_eq!(c.desired("a", second), Desired::Run);
}

#[test]
fn one_unhealthy_server_fails_the_generation_and_stops_it_everywhere_at_once() {
    let c = cluster();
    let first = c.serving_deploy();
    let second = c.deploy();
    c.report("a", second, true);
    assert!(
        matches!(c.report("b", second, false), Phase::Failed { reason } if reason == "b: web: exited with code 1")
    );
    let now = Desired::Stop { drain_ms: 0 };
    assert_eq!((c.desired("a", second), c.desired("b", second)), (now, now));
    assert_eq!(c.desired("a", first), Desired::Run, "1 keeps serving");
    assert_eq!(c.stacks.stack("shop").expect("stack").serving, Some(first));
    // A late report changes nothing.
    assert!(matches!(c.report("a", second, true), Phase::Failed { .. }));
}

#[test]
fn rollback_redeploys_the_previous_generation_and_forgets_its_old_reports() {
    let c = cluster();
    let first = c.serving_deploy();
    let second = c.serving_deploy();

    let again = c
        .stacks
        .rollback("shop", |g| deploy::rerun_ops(c.store.as_ref(), g))
        .expect("rollback");
    assert_eq!((again.number, again.phase), (first, Phase::Deploying));
    assert_eq!(c.desired("a", first), Desired::Run);
    assert_eq!(
        c.stacks.stack("shop").expect("stack").serving,
        Some(second),
        "2 serves until 1 is healthy again"
    );
    // The reports of 1's first deploy are gone: one fresh report does not settle it.
    assert_eq!(c.report("a", first, true), Phase::Deploying);
    assert_eq!(c.report("b", first, true), Phase::Serving);
    assert_eq!(c.desired("b", second), Desired::Stop { drain_ms: 7000 });
}

#[test]
fn a_service_that_is_not_restarted_on_deploy_keeps_its_container_until_its_spec_changes() {
    let c = cluster();
    let yml = |command: &str| {
        parse(
            "service.yml",
            &format!(
                "services:\n  web:\n    ports: [\"3000\"]\n  cache:\n    command: {command}\n    restart_on_deploy: false\n"
            ),
        )
        .expect("valid")
        .stack
        .services
    };
    let first = c.deploy_services(yml("node cache.js"));
    c.report("a", first, true);
    c.report("b", first, true);
    assert!(
        c.assignment("a", first).carried.is_empty(),
        "nothing to keep yet"
    );

    // Same spec: each server keeps generation 1's cache; web is replaced.
    let second = c.deploy_services(yml("node cache.js"));
    let kept = BTreeMap::from([("cache".to_string(), first)]);
    assert_eq!(c.assignment("a", second).carried, kept);
    assert_eq!(c.assignment("b", second).carried, kept);
    c.report("a", second, true);
    c.report("b", second, true);

    // Kept again: still generation 1's container, carried along.
    let third = c.deploy_services(yml("node cache.js"));
    assert_eq!(c.assignment("a", third).carried, kept);
    c.report("a", third, true);
    c.report("b", third, true);

    // The spec changed: the new command needs a new container.
    let fourth = c.deploy_services(yml("node cache2.js"));
    assert!(c.assignment("a", fourth).carried.is_empty());
}

#[test]
fn two_last_reports_at_once_still_make_the_generation_serve() {
    let c = cluster();
    for _ in 0..30 {
        let number = c.deploy();
        std::thread::scope(|scope| {
            for server in ["a", "b"] {
                let c = &c;
                scope.spawn(move || c.report(server, number, true));
            }
        });
        assert_eq!(
            c.stacks.stack("shop").expect("stack").serving,
            Some(number),
            "generation {number} must serve once both reported"
        );
    }
}

/// Two central replicas over one etcd (a real member), each taking both servers' healthy
/// reports for the same generation at the same moment (an agent that reconnects reports
/// again, to whichever replica answers): the generation flips to serving once, and the one
/// it replaces is told to drain once on each server.
#[test]
fn two_replicas_racing_to_settle_a_generation_settle_it_once() {
    use ferry_central::store::Backend;

    let member = etcd_member::Etcd::start();
    let replica = || {
        let store = Arc::new(Backend::Etcd(Box::new(member.store().expect("connect"))));
        (store.clone(), Stacks::new(store))
    };
    let (a, b) = (replica(), replica());
    let servers = [server("a", 1), server("b", 2)];
    let deploy = |(store, stacks): &(Arc<Backend>, Stacks<Backend>)| {
        stacks
            .create_generation_with("shop", services(), "d1gest", |g| {
                deploy::generation_ops(
                    store.as_ref(),
                    stacks,
                    &servers,
                    g,
                    &services(),
                    &Default::default(),
                )
            })
            .expect("deploy")
            .number
    };
    let healthy = StatusReport {
        healthy: true,
        detail: String::new(),
    };
    let report = |(store, stacks): &(Arc<Backend>, Stacks<Backend>), server: &str, n: u64| {
        deploy::record_status(store.as_ref(), stacks, (server, "shop", n), &healthy, DRAIN)
            .expect("report")
    };
    let first = deploy(&a);
    report(&a, "a", first);
    report(&a, "b", first);
    let second = deploy(&a);
    let before = a.0.revision().expect("revision");

    let start = std::sync::Barrier::new(2);
    std::thread::scope(|scope| {
        for (replica, order) in [(&a, ["a", "b"]), (&b, ["b", "a"])] {
            let start = &start;
            let report = &report;
            scope.spawn(move || {
                start.wait();
                for server in order {
                    report(replica, server, second);
                }
            });
        }
    });

    let stack_changes =
        a.0.changes(&ferry_api::keys::stack("shop"), before, 1000)
            .expect("history");
    let flips = stack_changes
        .iter()
        .filter_map(|e| serde_json::from_slice::<ferry_api::types::Stack>(e.value.as_ref()?).ok())
        .filter(|s| s.serving == Some(second))
        .count();
    assert_eq!(
        flips, 1,
        "the stack flipped to {second} once: {stack_changes:?}"
    );
    for server in ["a", "b"] {
        let drains =
            a.0.changes(&assignment_key(server, "shop", first), before, 1000)
                .expect("history")
                .into_iter()
                .filter_map(|e| serde_json::from_slice::<Assignment>(e.value.as_ref()?).ok())
                .filter(|x| matches!(x.state, Desired::Stop { .. }))
                .count();
        assert_eq!(drains, 1, "{server} told to drain generation {first} once");
    }
}
