//! The loop: list this server's assignments, follow the watch, and bring the server in
//! line with each: a wanted generation is built, started, checked and reported; a retired
//! or failed one drains for the period central gave, then each container stops as its
//! service asks and is removed. After every change the server's container list goes to
//! central.
//!
//! A service runs `count` containers here, numbered `0..count` by their `ferry.index`
//! label. A changed count in a wanted generation (a scale) starts the missing ones, which
//! join rotation once they pass their check, and drains the ones numbered past it: they
//! are reported `draining` (out of rotation everywhere) and stop after the assignment's
//! `drain_ms`.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use ferry_api::{
    client::Client,
    servicefile::{EnvValue, Service},
    types::{Assignment, ContainerReport, ContainerState, Desired, StatusReport},
};
use tracing::{info, warn};

use super::{health, progress::Progress};
use crate::{
    containers::{self, ContainerSpec, Engine, cgroup::CgroupError, ensure_network},
    discovery::{Callers, LocalCaller},
    membership::{
        follow::{Follower, Update},
        reconnect::Backoff,
        state::Loaded,
    },
};

/// How this server runs workloads.
#[derive(Clone, Debug)]
pub struct WorkloadOptions {
    /// The Docker Engine's socket.
    pub docker_socket: PathBuf,
    /// The image every service without a Dockerfile is built on, instead of the official
    /// Node image of its Node major.
    pub base_image: Option<String>,
    /// The npm registry builds install from (a mirror), instead of npm's own.
    pub npm_registry: Option<String>,
    /// The Docker network builds run their steps on (the engine's default when None).
    pub build_network: Option<String>,
    /// The Docker network joined by every container (with this server's subnet).
    pub network: String,
    /// The container network's base address (10.66.0.0).
    pub container_net: Ipv4Addr,
    /// The cgroup v2 directory the data plane attaches to; containers get leaves here.
    pub cgroup_root: PathBuf,
    /// Where cgroup v2 is mounted.
    pub cgroup2: PathBuf,
}

/// What this agent knows it is asked to do, shared with its stop tasks.
#[derive(Default)]
pub(super) struct Intent {
    /// The current assignment of every (stack, generation) for this server.
    pub(super) desired: BTreeMap<(String, u64), Assignment>,
    /// Runs that were built, started, checked and reported, as they were assigned then.
    pub(super) settled: BTreeMap<(String, u64), Assignment>,
    /// Containers started (or being started) that have not passed a health check yet:
    /// reported `starting`, so nothing leads to them. By slot: (stack, service,
    /// generation, index).
    pub(super) starting: BTreeSet<Slot>,
    /// Containers a scale-down took out whose drain is under way.
    draining: BTreeSet<String>,
    /// Generations whose containers a stop task is draining or stopping.
    stopping: BTreeSet<(String, u64)>,
    /// Running containers that fail their service's health check (see `liveness`):
    /// reported as unhealthy, so no name or request leads to them.
    pub(super) unhealthy: BTreeSet<String>,
}

/// One container's place: (stack, service, generation it was started for, index).
pub(super) type Slot = (String, String, u64, u32);

impl Intent {
    /// The generations that run container `index` of `service` started for `generation`:
    /// its own while wanted and counted, and later ones it was carried into.
    fn serves(&self, stack: &str, service: &str, generation: u64, index: u32) -> Vec<u64> {
        self.desired
            .values()
            .filter(|a| a.stack == stack && a.state == Desired::Run)
            .filter(|a| index < a.count(service))
            .filter(|a| match a.carried.get(service) {
                Some(origin) => *origin == generation,
                None => a.generation == generation,
            })
            .map(|a| a.generation)
            .collect()
    }

    /// Whether `c` runs past its service's count in a generation still wanted (a
    /// scale-down took it out): it drains, then stops.
    fn surplus(&self, c: &containers::FerryContainer) -> bool {
        let wanted = self
            .desired
            .get(&(c.stack.clone(), c.generation))
            .is_some_and(|a| a.state == Desired::Run);
        c.running
            && wanted
            && self
                .serves(&c.stack, &c.service, c.generation, c.index)
                .is_empty()
    }
}

pub(super) type Shared = Arc<Mutex<Intent>>;

pub(super) fn lock(intent: &Shared) -> std::sync::MutexGuard<'_, Intent> {
    // A panicked holder leaves plain data behind; keep going with it.
    intent
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Runs until the task is dropped; failures are logged and retried with backoff.
pub async fn run(loaded: Loaded, options: WorkloadOptions, callers: Callers) {
    let intent = Shared::default();
    let mut follower: Follower<Assignment> = Follower::new(
        loaded.client(),
        ferry_api::keys::desired_of(&loaded.membership.name),
        "workloads",
        Duration::from_millis(500),
    );
    let mut backoff = Backoff::new(Duration::from_millis(500));
    loop {
        backoff.attempt();
        if let Err(e) = follow(&loaded, &options, &intent, &callers, &mut follower).await {
            warn!("workloads: {e}; reconnecting");
        }
        // Whatever failed, the next attempt starts from a fresh listing.
        follower.relist();
        tokio::time::sleep(backoff.wait()).await;
    }
}

/// Everything a settle or a stop task needs to reach Docker and central.
#[derive(Clone)]
pub(super) struct Reach {
    pub(super) engine: Engine,
    /// Held across a listing and its report, so reports reach central in listing order
    /// and a stale one never lands last.
    reporting: Arc<tokio::sync::Mutex<()>>,
    client: Client,
    server: String,
    cgroup_root: PathBuf,
    cgroup2: PathBuf,
    /// What containers are created under, so they start below the data plane's root.
    cgroup_parent: Option<String>,
    callers: Callers,
}

async fn follow(
    loaded: &Loaded,
    options: &WorkloadOptions,
    intent: &Shared,
    callers: &Callers,
    follower: &mut Follower<Assignment>,
) -> Result<(), String> {
    let me = &loaded.membership;
    let engine = Engine::connect(&options.docker_socket)
        .await
        .map_err(|e| e.to_string())?;
    let [a, b, _, _] = options.container_net.octets();
    ensure_network(
        &engine,
        &options.network,
        Ipv4Addr::new(a, b, me.subnet_index, 0),
    )
    .await
    .map_err(|e| e.to_string())?;
    let client = loaded.client();
    let driver = engine.cgroup_driver().await.map_err(|e| e.to_string())?;
    let cgroup_parent =
        containers::cgroup::parent_for(&options.cgroup_root, &options.cgroup2, driver);
    if cgroup_parent.is_none() && options.cgroup_root != options.cgroup2 {
        warn!(
            root = %options.cgroup_root.display(),
            ?driver,
            "the Docker Engine cannot be told to create containers below the agent's cgroup \
             root; the agent moves their processes there once they run. With the systemd \
             cgroup driver, make the root a slice such as <cgroup2>/ferry.slice"
        );
    }
    let reach = Reach {
        reporting: Arc::default(),
        engine,
        client,
        server: me.name.clone(),
        cgroup_root: options.cgroup_root.clone(),
        cgroup2: options.cgroup2.clone(),
        cgroup_parent,
        callers: callers.clone(),
    };
    // Before central is asked anything: a restarted agent knows its callers again even
    // while central is unreachable.
    local_containers(&reach, intent).await;
    // Ends with this follow (or the next listing): each starts its own.
    let mut _liveness = None;
    loop {
        let pending: Vec<Assignment> = match follower.next().await {
            Update::Snapshot { items, .. } => {
                let listed: Vec<Assignment> = items.into_iter().map(|(_, a)| a).collect();
                lock(intent).desired = listed
                    .iter()
                    .map(|a| ((a.stack.clone(), a.generation), a.clone()))
                    .collect();
                stop_orphans(&reach, intent).await?;
                report_containers(&reach, intent).await;
                let liveness = tokio::spawn(super::liveness::watch(reach.clone(), intent.clone()));
                _liveness = Some(AbortOnDrop(liveness));
                listed
            }
            Update::Changes { changes, .. } => changes
                .into_iter()
                .filter_map(|(key, assignment)| match assignment {
                    Some(assignment) => Some(assignment),
                    // A deleted assignment: nothing of it should run.
                    None => forget(intent, &key).map(|a| Assignment {
                        state: Desired::Stop { drain_ms: 0 },
                        ..a
                    }),
                })
                .collect(),
        };
        for assignment in pending {
            apply(&reach, options, intent, assignment).await?;
        }
    }
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Removes the assignment stored under `key` (`desired/<server>/<stack>/<N>`).
fn forget(intent: &Shared, key: &str) -> Option<Assignment> {
    let (_, stack, generation) =
        ferry_api::keys::per_server_generation(ferry_api::keys::DESIRED, key)?;
    lock(intent)
        .desired
        .remove(&(stack.to_string(), generation))
}

/// Brings this server in line with one assignment.
async fn apply(
    reach: &Reach,
    options: &WorkloadOptions,
    intent: &Shared,
    assignment: Assignment,
) -> Result<(), String> {
    let id = (assignment.stack.clone(), assignment.generation);
    let state = assignment.state;
    let already = {
        let mut intent = lock(intent);
        intent.desired.insert(id.clone(), assignment.clone());
        match state {
            // The same assignment again; a changed one (a scale) is settled anew.
            Desired::Run => intent.settled.get(&id) == Some(&assignment),
            Desired::Stop { .. } => {
                intent.settled.remove(&id);
                !intent.stopping.insert(id.clone())
            }
        }
    };
    if already {
        return Ok(());
    }
    match state {
        Desired::Run => {
            // A setback that is not the generation's fault (central or Docker out of
            // reach) is retried, never reported as unhealthy.
            let report = settle(reach, options, intent, &assignment).await?;
            info!(stack = %assignment.stack, generation = assignment.generation, healthy = report.healthy, "reporting");
            report_containers(reach, intent).await;
            reach
                .client
                .report_status(
                    &reach.server,
                    &assignment.stack,
                    assignment.generation,
                    &report,
                )
                .await
                .map_err(|e| e.to_string())?;
            lock(intent).settled.insert(id, assignment.clone());
            drain_surplus(reach, intent, &assignment).await;
        }
        Desired::Stop { drain_ms } => {
            tokio::spawn(retire(
                reach.clone(),
                intent.clone(),
                assignment,
                Duration::from_millis(drain_ms),
            ));
        }
    }
    Ok(())
}

/// Waits out the drain, then stops the generation's containers, unless it was wanted
/// again meanwhile (a rollback).
async fn retire(reach: Reach, intent: Shared, assignment: Assignment, drain: Duration) {
    let id = (assignment.stack.clone(), assignment.generation);
    info!(stack = %id.0, generation = id.1, ?drain, "draining");
    tokio::time::sleep(drain).await;
    let still_wanted_stopped = {
        let intent = lock(&intent);
        intent
            .desired
            .get(&id)
            .is_none_or(|a| matches!(a.state, Desired::Stop { .. }))
    };
    if still_wanted_stopped {
        stop_generation(&reach, &intent, &assignment).await;
    }
    {
        let mut intent = lock(&intent);
        intent.stopping.remove(&id);
        if still_wanted_stopped {
            intent.starting.retain(|s| (&s.0, s.2) != (&id.0, id.1));
        }
    }
    report_containers(&reach, &intent).await;
}

/// Takes the containers of `assignment`'s stack that run past their count (a
/// scale-down) out of rotation at once, and stops each after the assignment's drain.
async fn drain_surplus(reach: &Reach, intent: &Shared, assignment: &Assignment) {
    let Ok(running) = containers::list(&reach.engine).await else {
        return;
    };
    let surplus: Vec<containers::FerryContainer> = {
        let mut intent = lock(intent);
        let found: Vec<_> = running
            .into_iter()
            .filter(|c| c.stack == assignment.stack && intent.surplus(c))
            .collect();
        found
            .into_iter()
            .filter(|c| intent.draining.insert(c.id.clone()))
            .collect()
    };
    if surplus.is_empty() {
        return;
    }
    // Reported `draining` now: central's records drop them, and with them every path.
    report_containers(reach, intent).await;
    let drain = Duration::from_millis(assignment.drain_ms);
    for c in surplus {
        info!(stack = %c.stack, service = %c.service, generation = c.generation, index = c.index, ?drain, "scaled down; draining");
        let (reach, intent) = (reach.clone(), intent.clone());
        let service = assignment.services.get(&c.service).cloned();
        tokio::spawn(async move {
            tokio::time::sleep(drain).await;
            // Wanted again meanwhile (scaled back up): it stays.
            let still = lock(&intent).surplus(&c);
            if still {
                let steps = service
                    .as_ref()
                    .map(|s| s.pre_stop_sequence.clone())
                    .unwrap_or_default();
                let grace = service
                    .and_then(|s| s.stop_grace)
                    .unwrap_or(containers::DEFAULT_STOP_GRACE);
                match containers::stop_and_remove(&reach.engine, &c.id, &steps, grace).await {
                    Ok(()) => {
                        info!(stack = %c.stack, service = %c.service, index = c.index, "scaled down; stopped and removed")
                    }
                    Err(e) => warn!("stopping {}/{} #{}: {e}", c.stack, c.service, c.index),
                }
            }
            lock(&intent).draining.remove(&c.id);
            report_containers(&reach, &intent).await;
        });
    }
}

/// Stops every container of the assignment's generation, each as its service asks, but
/// those a wanted generation carried along.
async fn stop_generation(reach: &Reach, intent: &Shared, assignment: &Assignment) {
    let running = match containers::list(&reach.engine).await {
        Ok(running) => running,
        Err(e) => {
            warn!("listing containers to stop: {e}");
            return;
        }
    };
    let mine: Vec<_> = {
        let intent = lock(intent);
        running
            .into_iter()
            .filter(|c| c.stack == assignment.stack && c.generation == assignment.generation)
            .filter(|c| {
                intent
                    .serves(&c.stack, &c.service, c.generation, c.index)
                    .is_empty()
            })
            .collect()
    };
    let stops = mine.into_iter().map(|c| {
        let service = assignment.services.get(&c.service);
        let steps = service.map(|s| s.pre_stop_sequence.clone()).unwrap_or_default();
        let grace = service
            .and_then(|s| s.stop_grace)
            .unwrap_or(containers::DEFAULT_STOP_GRACE);
        async move {
            match containers::stop_and_remove(&reach.engine, &c.id, &steps, grace).await {
                Ok(()) => info!(stack = %c.stack, service = %c.service, generation = c.generation, "stopped and removed"),
                Err(e) => warn!("stopping {}/{}: {e}", c.stack, c.service),
            }
        }
    });
    futures_util::future::join_all(stops).await;
}

/// Stops ferry containers that no assignment accounts for (left by a server removal or
/// a lost stop): they would otherwise run forever, unseen.
async fn stop_orphans(reach: &Reach, intent: &Shared) -> Result<(), String> {
    let running = containers::list(&reach.engine)
        .await
        .map_err(|e| e.to_string())?;
    let orphans: BTreeSet<(String, u64)> = {
        let intent = lock(intent);
        running
            .iter()
            .map(|c| (c.stack.clone(), c.generation))
            .filter(|id| !intent.desired.contains_key(id))
            .collect()
    };
    for (stack, generation) in orphans {
        warn!(%stack, generation, "containers with no assignment; stopping them");
        stop_generation(
            reach,
            intent,
            &Assignment {
                stack,
                generation,
                source_digest: String::new(),
                services: BTreeMap::new(),
                counts: BTreeMap::new(),
                drain_ms: 0,
                state: Desired::Stop { drain_ms: 0 },
                carried: BTreeMap::new(),
                deploy_commands: BTreeSet::new(),
                npm: Default::default(),
            },
        )
        .await;
    }
    Ok(())
}

/// Tells central what runs here; a failure is logged, the next report replaces it anyway.
pub(super) async fn report_containers(reach: &Reach, intent: &Shared) {
    let _in_order = reach.reporting.lock().await;
    let Some(report) = local_containers(reach, intent).await else {
        return;
    };
    if let Err(e) = reach.client.report_containers(&reach.server, &report).await {
        warn!("reporting containers to central: {e}");
    }
}

/// What runs here, with each container's cgroup; the callers table is made to match.
async fn local_containers(reach: &Reach, intent: &Shared) -> Option<Vec<ContainerReport>> {
    let running = match containers::list(&reach.engine).await {
        Ok(running) => running,
        Err(e) => {
            warn!("listing containers to report: {e}");
            return None;
        }
    };
    let ids: Vec<String> = running.iter().map(|c| c.id.clone()).collect();
    containers::cgroup::sweep(&reach.cgroup_root, &ids);
    let mut report = Vec::with_capacity(running.len());
    for c in running {
        let cgroup_id = match c.running {
            true => containers::cgroup::current_id(&reach.engine, &c.id, &reach.cgroup2).await,
            false => None,
        };
        let (serves, state) = {
            let intent = lock(intent);
            let slot = (c.stack.clone(), c.service.clone(), c.generation, c.index);
            let state = match (c.running, intent.unhealthy.contains(&c.id)) {
                (false, _) => ContainerState::Stopped,
                (true, true) => ContainerState::Unhealthy,
                (true, false) if intent.starting.contains(&slot) => ContainerState::Starting,
                (true, false) if intent.surplus(&c) => ContainerState::Draining,
                (true, false) => ContainerState::Running,
            };
            (
                intent.serves(&c.stack, &c.service, c.generation, c.index),
                state,
            )
        };
        report.push(ContainerReport {
            serves,
            id: c.id,
            stack: c.stack,
            service: c.service,
            generation: c.generation,
            address: c.address,
            state,
            cgroup_id,
        });
    }
    reach.callers.replace(
        report
            .iter()
            .filter_map(|c| Some((c.cgroup_id?, as_caller(c))))
            .collect(),
    );
    Some(report)
}

/// A container as a caller: the newest generation it runs for.
fn as_caller(c: &ContainerReport) -> LocalCaller {
    LocalCaller {
        stack: c.stack.clone(),
        service: c.service.clone(),
        generation: c.serves.iter().copied().max().unwrap_or(c.generation),
    }
}

/// Why a settle stopped.
enum Setback {
    /// The generation itself failed: a build, a start or a health check.
    Unhealthy(String),
    /// Central or Docker could not be reached: try again later.
    Retry(String),
}

fn retry(e: impl std::fmt::Display) -> Setback {
    Setback::Retry(e.to_string())
}

/// Builds, starts and checks every service of `assignment` here; Err means try again.
async fn settle(
    reach: &Reach,
    options: &WorkloadOptions,
    intent: &Shared,
    assignment: &Assignment,
) -> Result<StatusReport, String> {
    match try_settle(reach, options, intent, assignment).await {
        Ok(()) => Ok(StatusReport {
            healthy: true,
            detail: String::new(),
        }),
        Err(Setback::Unhealthy(detail)) => Ok(StatusReport {
            healthy: false,
            detail,
        }),
        Err(Setback::Retry(why)) => Err(why),
    }
}

async fn try_settle(
    reach: &Reach,
    options: &WorkloadOptions,
    intent: &Shared,
    assignment: &Assignment,
) -> Result<(), Setback> {
    let running = containers::list(&reach.engine).await.map_err(retry)?;
    let mut source: Option<Vec<u8>> = None;
    let mut progress: Option<Progress> = None;
    let result = settle_each(
        reach,
        options,
        intent,
        assignment,
        &running,
        &mut source,
        &mut progress,
    )
    .await;
    if let Some(progress) = progress {
        progress.finish();
    }
    result
}

/// [`try_settle`]'s work on each service.
async fn settle_each(
    reach: &Reach,
    options: &WorkloadOptions,
    intent: &Shared,
    assignment: &Assignment,
    running: &[containers::FerryContainer],
    source: &mut Option<Vec<u8>>,
    progress: &mut Option<Progress>,
) -> Result<(), Setback> {
    let (engine, client) = (&reach.engine, &reach.client);
    // Every image first: a build that fails fails the generation before any of its
    // containers starts.
    let mut images = BTreeMap::new();
    for (name, service) in &assignment.services {
        let all_run = (0..assignment.count(name))
            .all(|i| existing(assignment, running, name, i).is_some_and(|c| c.running));
        if all_run {
            continue;
        }
        if source.is_none() {
            *source = Some(
                client
                    .source(&assignment.source_digest)
                    .await
                    .map_err(retry)?,
            );
        }
        let archive = source.as_deref().unwrap_or_default();
        let progress = progress_of(progress, reach, assignment);
        let image = super::build::image_for(
            engine, options, assignment, name, service, archive, progress,
        )
        .await
        .map_err(|e| Setback::Unhealthy(format!("{name}: {e}")))?;
        images.insert(name.clone(), image);
    }
    for (name, service) in &assignment.services {
        let count = assignment.count(name);
        let mut started = Vec::with_capacity(count as usize);
        let mut deploy_command_due = assignment.deploy_commands.contains(name);
        for index in 0..count {
            let slot = (
                assignment.stack.clone(),
                name.clone(),
                assignment.generation,
                index,
            );
            let existing = existing(assignment, running, name, index);
            let (id, address) = match (existing, images.get(name)) {
                // Started by an earlier agent: adopt it, check it again.
                (Some(c), _) if c.running => (c.id.clone(), c.address),
                (_, Some(image)) => {
                    if let Some(dead) = existing {
                        // Exited before it was checked: replace it rather than keep two.
                        containers::stop_and_remove(engine, &dead.id, &[], Duration::ZERO)
                            .await
                            .map_err(retry)?;
                    }
                    // Out of rotation until its check passes (a scale-up of a serving
                    // generation must not send it traffic before).
                    lock(intent).starting.insert(slot.clone());
                    let progress = progress_of(progress, reach, assignment);
                    let id = start_service(
                        reach,
                        options,
                        assignment,
                        (name, index),
                        service,
                        image.clone(),
                        std::mem::take(&mut deploy_command_due),
                        progress,
                    )
                    .await
                    .map_err(Setback::Unhealthy)?;
                    let address = containers::list(engine)
                        .await
                        .map_err(retry)?
                        .into_iter()
                        .find(|c| c.id == id)
                        .and_then(|c| c.address);
                    (id, address)
                }
                // It was running when the images were made, and has stopped since: next time.
                (_, None) => {
                    return Err(Setback::Retry(format!(
                        "{name}: its container {} stopped while the others were being built",
                        index + 1
                    )));
                }
            };
            // Its own cgroup before its check, so the data plane knows it as a caller from
            // its first connection on.
            match containers::cgroup::place(engine, &id, &options.cgroup_root, &options.cgroup2)
                .await
            {
                Ok(cgroup) => reach.callers.register(
                    cgroup,
                    LocalCaller {
                        stack: assignment.stack.clone(),
                        service: name.clone(),
                        generation: assignment.generation,
                    },
                ),
                // One that already exited fails its check below, with its log.
                Err(CgroupError::NotRunning { .. }) => {}
                Err(e) => {
                    let state = containers::describe_state(engine, &id).await;
                    return Err(Setback::Unhealthy(format!(
                        "{name}: placing it in its cgroup: {e}; the container is {state}"
                    )));
                }
            }
            started.push((slot, id, address));
        }
        // Checked together: forty containers take as long as the slowest, not the sum.
        let checks = started.iter().map(|(slot, id, address)| async move {
            let outcome = check_one(engine, name, service, id, *address).await;
            (slot, outcome)
        });
        let mut failed = None;
        for (slot, outcome) in futures_util::future::join_all(checks).await {
            match outcome {
                Ok(()) => {
                    lock(intent).starting.remove(slot);
                }
                Err(why) => {
                    failed.get_or_insert(why);
                }
            }
        }
        if let Some(why) = failed {
            return Err(Setback::Unhealthy(why));
        }
        if !started.is_empty() {
            // In the records now, not after the last service: a service that requires
            // this one finds it while it starts.
            report_containers(reach, intent).await;
        }
    }
    Ok(())
}

/// Container `id` of service `name` passing its first health check; Err says why not,
/// with its state and last log lines.
async fn check_one(
    engine: &Engine,
    name: &str,
    service: &Service,
    id: &str,
    address: Option<Ipv4Addr>,
) -> Result<(), String> {
    // A container that dies fails its check at once, not when the check's time is up.
    let checked = tokio::select! {
        checked = health::check(service, address) => checked,
        () = containers::until_stopped(engine, id) => {
            Err("it stopped before passing its health check".to_string())
        }
    };
    let Err(mut why) = checked else {
        return Ok(());
    };
    if let Some(port) = service.ports.first().map(|p| p.container)
        && let Some(loopback) = containers::listening::loopback_only(engine, id, port).await
    {
        let at: Vec<String> = loopback.iter().map(ToString::to_string).collect();
        why = format!(
            "{why}: the app listens on {} only, inside its container, where neither \
             the health check nor any traffic can reach it; listen on all addresses \
             (Node: server.listen({port}) with no host, or host '0.0.0.0'; since Node \
             17 'localhost' means ::1)",
            at.join(" and ")
        );
    }
    let state = containers::describe_state(engine, id).await;
    let log = containers::log_tail(engine, id, 20).await;
    Err(format!(
        "{name}: {why}; the container is {state}; last log lines:\n{log}"
    ))
}

/// The generation's progress lines, started on first use.
fn progress_of<'p>(
    progress: &'p mut Option<Progress>,
    reach: &Reach,
    assignment: &Assignment,
) -> &'p Progress {
    progress.get_or_insert_with(|| {
        Progress::start(
            reach.client.clone(),
            reach.server.clone(),
            assignment.stack.clone(),
            assignment.generation,
        )
    })
}

/// Container `index` of service `name` this generation uses, if one exists here: a kept
/// one (`restart_on_deploy: false`, checked like a new one), else its own (perhaps left by
/// an earlier agent), a running one first.
fn existing<'a>(
    assignment: &Assignment,
    running: &'a [containers::FerryContainer],
    name: &str,
    index: u32,
) -> Option<&'a containers::FerryContainer> {
    let of = |generation: u64| {
        move |c: &&containers::FerryContainer| {
            c.stack == assignment.stack
                && c.service == name
                && c.generation == generation
                && c.index == index
        }
    };
    let kept = assignment
        .carried
        .get(name)
        .and_then(|origin| running.iter().filter(of(*origin)).find(|c| c.running));
    let own = || {
        let mut own = running.iter().filter(of(assignment.generation));
        let first = own.clone().next();
        own.find(|c| c.running).or(first)
    };
    kept.or_else(own)
}

/// Starts container `index` of service `name` on `image`, after the service's
/// `deploy_command` when `deploy_command` is set (once per deploy, on one server).
#[allow(clippy::too_many_arguments)]
async fn start_service(
    reach: &Reach,
    options: &WorkloadOptions,
    assignment: &Assignment,
    (name, index): (&str, u32),
    service: &Service,
    image: String,
    deploy_command: bool,
    progress: &Progress,
) -> Result<String, String> {
    let engine = &reach.engine;
    let mut env = vec![
        format!("FERRY_STACK={}", assignment.stack),
        format!("FERRY_SERVICE={name}"),
        format!("FERRY_GENERATION={}", assignment.generation),
    ];
    for (key, value) in &service.env_vars {
        match value {
            EnvValue::Plain(v) => env.push(format!("{key}={v}")),
            EnvValue::Stack(var) => {
                // Central resolves every reference when it records the deploy.
                return Err(format!(
                    "{name}: {key} still refers to stack variable {var}; central should have \
                     resolved it (is central older than this agent?)"
                ));
            }
        }
    }
    if let Some(port) = service.ports.first() {
        env.push(format!("PORT={}", port.container));
    }
    let spec = ContainerSpec {
        stack: assignment.stack.clone(),
        service: name.into(),
        generation: assignment.generation,
        index,
        image,
        env,
        network: options.network.clone(),
        // A built image runs the command already; an `image:` service gets it here.
        command: service.image.as_ref().and(service.command.clone()),
        binds: service
            .volumes
            .iter()
            .map(|v| {
                let mode = if v.read_only { ":ro" } else { "" };
                format!("{}:{}{mode}", v.source, v.target)
            })
            .collect(),
        memory: service.constraints.memory,
        cpu_millis: service.constraints.cpu_millis,
        cgroup_parent: reach.cgroup_parent.clone(),
    };
    if let Some(command) = service.deploy_command.as_ref().filter(|_| deploy_command) {
        deploy_command_run(engine, &spec, command, progress).await?;
    }
    containers::start(engine, &spec)
        .await
        .map_err(|e| format!("{name}: {e}"))
}

/// Runs service `spec`'s `deploy_command` to its end in a one-off container of its image,
/// showing its output; a failure says how it ended and its last lines.
async fn deploy_command_run(
    engine: &Engine,
    spec: &ContainerSpec,
    command: &str,
    progress: &Progress,
) -> Result<(), String> {
    let name = &spec.service;
    progress.line(&format!("{name}: deploy_command: {command}"));
    let mut tail = containers::last_lines::LastLines::default();
    let code = containers::oneoff::run(
        engine,
        &ContainerSpec {
            command: Some(command.into()),
            ..spec.clone()
        },
        |line| {
            info!(service = %name, "deploy_command: {line}");
            progress.line(&format!("{name}: {line}"));
            tail.push(line);
        },
    )
    .await
    .map_err(|e| format!("{name}: deploy_command: {e}"))?;
    if code != 0 {
        return Err(format!(
            "{name}: deploy_command `{command}` exited with code {code}, so nothing of this \
             generation serves; its last lines:\n{}",
            tail.joined()
        ));
    }
    Ok(())
}
