//! The loop: list this server's assignments, follow the watch, and bring the server in
//! line with each: a wanted generation is settled (built, started, checked; see `settle`)
//! and its status reported; a retired or failed one drains for the period central gave,
//! then each container stops as its service asks and is removed (see `retire`). After
//! every change the server's container list goes to central (see `report`). Central or
//! Docker out of reach ends one follow with a [`ReconcileError`]; the next starts from a
//! fresh listing.
//!
//! A service runs `count` containers here, numbered `0..count` by their `ferry.index`
//! label. A changed count in a wanted generation (a scale) starts the missing ones, which
//! join rotation once they pass their check, and drains the ones numbered past it: they
//! are reported `draining` (out of rotation everywhere) and stop after the assignment's
//! `drain_ms`.

use std::{net::Ipv4Addr, time::Duration};

use ferry_api::{
    client::ClientError,
    types::{Assignment, Desired},
};
use tracing::{info, warn};

use super::{
    WorkloadOptions,
    intent::{Shared, lock},
    report::Reporter,
    retire,
    settle::{self, SettleError, Settler},
};
use crate::{
    containers::{self, ContainerError, Engine, EngineError, NetworkError, ensure_network},
    discovery::Callers,
    membership::{
        follow::{Follower, Update},
        reconnect::Backoff,
        state::Loaded,
    },
};

/// How long the first follow waits for the mesh to choose the container network's MTU.
const MTU_WAIT: Duration = Duration::from_secs(10);

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
    let _mtu = AbortOnDrop(tokio::spawn(super::mtu::keep(options.clone())));
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

/// Why the loop follows central again from a fresh listing: Docker or central out of
/// reach, never a generation's fault (that is reported, see `settle`).
#[derive(Debug, thiserror::Error)]
pub(super) enum ReconcileError {
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    Network(#[from] NetworkError),
    #[error(transparent)]
    Containers(#[from] ContainerError),
    #[error(transparent)]
    Settle(#[from] SettleError),
    #[error("reporting the status of {stack} generation {generation} to central: {source}")]
    Status {
        stack: String,
        generation: u64,
        #[source]
        source: ClientError,
    },
}

async fn follow(
    loaded: &Loaded,
    options: &WorkloadOptions,
    intent: &Shared,
    callers: &Callers,
    follower: &mut Follower<Assignment>,
) -> Result<(), ReconcileError> {
    let me = &loaded.membership;
    let engine = Engine::connect(&options.docker_socket).await?;
    let [a, b, _, _] = options.container_net.octets();
    // The mesh chooses the MTU once it has listed the servers; a mesh that cannot start
    // leaves Docker's default, which the mesh corrects live once it runs.
    let mut mtu = options.mtu.clone();
    let mtu = match tokio::time::timeout(MTU_WAIT, mtu.wait_for(Option::is_some)).await {
        Ok(Ok(chosen)) => *chosen,
        _ => None,
    };
    ensure_network(
        &engine,
        &options.network,
        Ipv4Addr::new(a, b, me.subnet_index, 0),
        mtu,
    )
    .await?;
    let driver = engine.cgroup_driver().await?;
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
    let settler = Settler {
        report: Reporter::new(
            engine,
            loaded.client(),
            me.name.clone(),
            (options.cgroup_root.clone(), options.cgroup2.clone()),
            callers.clone(),
        ),
        options: options.clone(),
        cgroup_parent,
    };
    let report = &settler.report;
    // Before central is asked anything: a restarted agent knows its callers again even
    // while central is unreachable.
    report.local_containers(intent).await;
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
                retire::stop_orphans(report, intent).await?;
                report.report(intent).await;
                let liveness = tokio::spawn(super::liveness::watch(report.clone(), intent.clone()));
                _liveness = Some(AbortOnDrop(liveness));
                listed
            }
            Update::Changes { changes, .. } => changes
                .into_iter()
                .filter_map(|(key, assignment)| match assignment {
                    Some(assignment) => Some(assignment),
                    // A deleted assignment: nothing of it should run.
                    None => forget(intent, &key).map(retire::stop_now),
                })
                .collect(),
        };
        for assignment in pending {
            apply(&settler, intent, assignment).await?;
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
    settler: &Settler,
    intent: &Shared,
    assignment: Assignment,
) -> Result<(), ReconcileError> {
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
            let status = settle::settle(settler, intent, &assignment).await?;
            info!(stack = %assignment.stack, generation = assignment.generation, healthy = status.healthy, "reporting");
            let report = &settler.report;
            report.report(intent).await;
            report
                .client
                .report_status(
                    &report.server,
                    &assignment.stack,
                    assignment.generation,
                    &status,
                )
                .await
                .map_err(|source| ReconcileError::Status {
                    stack: assignment.stack.clone(),
                    generation: assignment.generation,
                    source,
                })?;
            lock(intent).settled.insert(id, assignment.clone());
            retire::drain_surplus(report, intent, &assignment).await;
        }
        Desired::Stop { drain_ms } => {
            tokio::spawn(retire::retire(
                settler.report.clone(),
                intent.clone(),
                assignment,
                Duration::from_millis(drain_ms),
            ));
        }
    }
    Ok(())
}
