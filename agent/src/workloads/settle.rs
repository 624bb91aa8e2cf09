//! Bringing one wanted generation up on this server: its images first (a build that fails
//! fails the generation before any of its containers starts), then each container adopted,
//! replaced or started as [`plan::settle`] decides, placed in its cgroup and checked.

use std::{collections::BTreeMap, net::Ipv4Addr, time::Duration};

use ferry_api::{
    client::ClientError,
    servicefile::{EnvValue, Service},
    types::{Assignment, StatusReport},
};
use tracing::info;

use super::{
    WorkloadOptions,
    build::BuildError,
    health,
    intent::{Shared, Slot, lock},
    plan::{self, Step},
    progress::Progress,
    report::Reporter,
};
use crate::{
    containers::{self, ContainerError, ContainerSpec, Engine, cgroup::CgroupError},
    discovery::LocalCaller,
};

/// Why a generation failed here. Its text is the status detail central keeps and `ferry
/// deploy` shows, so each names the service and says what to change.
#[derive(Debug, thiserror::Error)]
pub(super) enum Failure {
    #[error("{service}: {source}")]
    Build {
        service: String,
        #[source]
        source: BuildError,
    },
    #[error(
        "{service}: {key} still refers to stack variable {var}; central should have resolved \
         it (is central older than this agent?)"
    )]
    Unresolved {
        service: String,
        key: String,
        var: String,
    },
    #[error("{service}: {source}")]
    Start {
        service: String,
        #[source]
        source: ContainerError,
    },
    #[error("{service}: deploy_command: {source}")]
    DeployCommand {
        service: String,
        #[source]
        source: ContainerError,
    },
    #[error(
        "{service}: deploy_command `{command}` exited with code {code}, so nothing of this \
         generation serves; its last lines:\n{tail}"
    )]
    DeployCommandExit {
        service: String,
        command: String,
        code: i64,
        tail: String,
    },
    #[error("{service}: placing it in its cgroup: {source}; the container is {state}")]
    Cgroup {
        service: String,
        #[source]
        source: CgroupError,
        state: String,
    },
    #[error(
        "{service}: {why}{}; the container is {state}; last log lines:\n{log}",
        loopback_only.as_ref().map(ToString::to_string).unwrap_or_default()
    )]
    Check {
        service: String,
        #[source]
        why: health::CheckError,
        /// Where the app listens instead, when only on loopback: the likely cause.
        loopback_only: Option<LoopbackOnly>,
        state: String,
        log: String,
    },
}

/// What settling needs besides the intent.
pub(super) struct Settler {
    /// Docker and central, and the order reports go in.
    pub(super) report: Reporter,
    /// How this server runs workloads.
    pub(super) options: WorkloadOptions,
    /// What containers are created under, so they start below the data plane's root.
    pub(super) cgroup_parent: Option<String>,
}

/// Why a settle must be tried again: Docker or central out of reach, never the
/// generation's fault.
#[derive(Debug, thiserror::Error)]
pub(super) enum SettleError {
    #[error(transparent)]
    Containers(#[from] ContainerError),
    #[error("fetching source {digest} from central: {source}")]
    Source {
        digest: String,
        #[source]
        source: ClientError,
    },
}

/// An app that listens on loopback only, inside its container: neither the check nor any
/// traffic can reach it.
#[derive(Debug)]
pub(super) struct LoopbackOnly {
    /// The addresses it listens on.
    at: Vec<std::net::SocketAddr>,
    /// The port the service publishes.
    port: u16,
}

impl std::fmt::Display for LoopbackOnly {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let at: Vec<String> = self.at.iter().map(ToString::to_string).collect();
        write!(
            f,
            ": the app listens on {} only, inside its container, where neither the health \
             check nor any traffic can reach it; listen on all addresses (Node: \
             server.listen({}) with no host, or host '0.0.0.0'; since Node 17 'localhost' \
             means ::1)",
            at.join(" and "),
            self.port
        )
    }
}

/// Why a settle stopped.
pub(super) enum Setback {
    /// The generation itself failed: a build, a start or a health check.
    Unhealthy(Box<Failure>),
    /// Central or Docker could not be reached: try again later, report nothing.
    Retry(SettleError),
}

impl<E: Into<SettleError>> From<E> for Setback {
    fn from(e: E) -> Self {
        Self::Retry(e.into())
    }
}

/// Builds, starts and checks every service of `assignment` here: the status to report, or
/// Err when the attempt must be made again (nothing was the generation's fault).
pub(super) async fn settle(
    settler: &Settler,
    intent: &Shared,
    assignment: &Assignment,
) -> Result<StatusReport, SettleError> {
    let mut progress: Option<Progress> = None;
    let result = settle_each(settler, intent, assignment, &mut progress).await;
    if let Some(progress) = progress {
        progress.finish();
    }
    match result {
        Ok(()) => Ok(StatusReport {
            healthy: true,
            detail: String::new(),
        }),
        Err(Setback::Unhealthy(failure)) => Ok(StatusReport {
            healthy: false,
            detail: failure.to_string(),
        }),
        Err(Setback::Retry(e)) => Err(e),
    }
}

/// [`settle`]'s work on each service.
async fn settle_each(
    settler: &Settler,
    intent: &Shared,
    assignment: &Assignment,
    progress: &mut Option<Progress>,
) -> Result<(), Setback> {
    let (engine, client) = (&settler.report.engine, &settler.report.client);
    let running = containers::list(engine).await?;
    let plans = plan::settle(assignment, &running);
    let mut source: Option<Vec<u8>> = None;
    let mut images = BTreeMap::new();
    for plan in plans.iter().filter(|p| p.needs_image()) {
        let name = plan.name;
        if source.is_none() {
            let digest = &assignment.source_digest;
            source = Some(
                client
                    .source(digest)
                    .await
                    .map_err(|source| SettleError::Source {
                        digest: digest.clone(),
                        source,
                    })?,
            );
        }
        let archive = source.as_deref().unwrap_or_default();
        let progress = progress_of(progress, &settler.report, assignment);
        let service = &assignment.services[name];
        let image = super::build::image_for(
            engine,
            &settler.options,
            assignment,
            name,
            service,
            archive,
            progress,
        )
        .await
        .map_err(|source| {
            Setback::Unhealthy(Box::new(Failure::Build {
                service: name.into(),
                source,
            }))
        })?;
        images.insert(name, image);
    }
    for plan in &plans {
        let name = plan.name;
        let service = &assignment.services[name];
        let mut started = Vec::with_capacity(plan.steps.len());
        let mut deploy_command_due = assignment.deploy_commands.contains(name);
        for (index, step) in &plan.steps {
            let slot = (
                assignment.stack.clone(),
                name.to_string(),
                assignment.generation,
                *index,
            );
            let (id, address) = match step {
                // Started by an earlier agent or kept from an earlier generation: checked
                // again.
                Step::Adopt(c) => (c.id.clone(), c.address),
                Step::Replace(_) | Step::Start => {
                    if let Step::Replace(dead) = step {
                        containers::stop_and_remove(engine, &dead.id, &[], Duration::ZERO).await?;
                    }
                    // Out of rotation until its check passes (a scale-up of a serving
                    // generation must not send it traffic before).
                    lock(intent).starting.insert(slot.clone());
                    let image = images
                        .get(name)
                        .expect("an image is made for every service with a container to start");
                    let spec = spec_of(settler, assignment, (name, *index), service, image)
                        .map_err(Setback::Unhealthy)?;
                    if std::mem::take(&mut deploy_command_due)
                        && let Some(command) = &service.deploy_command
                    {
                        let progress = progress_of(progress, &settler.report, assignment);
                        deploy_command_run(engine, &spec, command, progress)
                            .await
                            .map_err(Setback::Unhealthy)?;
                    }
                    let id = containers::start(engine, &spec).await.map_err(|source| {
                        Setback::Unhealthy(Box::new(Failure::Start {
                            service: name.into(),
                            source,
                        }))
                    })?;
                    let address = containers::list(engine)
                        .await?
                        .into_iter()
                        .find(|c| c.id == id)
                        .and_then(|c| c.address);
                    (id, address)
                }
            };
            // Its own cgroup before its check, so the data plane knows it as a caller from
            // its first connection on.
            let report = &settler.report;
            match containers::cgroup::place(engine, &id, &report.cgroup_root, &report.cgroup2).await
            {
                Ok(cgroup) => report.callers.register(
                    cgroup,
                    LocalCaller {
                        stack: assignment.stack.clone(),
                        service: name.into(),
                        generation: assignment.generation,
                        address,
                    },
                ),
                // One that already exited fails its check below, with its log.
                Err(CgroupError::NotRunning { .. }) => {}
                Err(source) => {
                    let state = containers::describe_state(engine, &id).await;
                    return Err(Setback::Unhealthy(Box::new(Failure::Cgroup {
                        service: name.into(),
                        source,
                        state,
                    })));
                }
            }
            started.push((slot, id, address));
        }
        check_all(&settler.report, intent, name, service, &started).await?;
    }
    Ok(())
}

/// Checks the containers `started` for service `name` together (forty take as long as the
/// slowest, not the sum); those that pass join rotation.
async fn check_all(
    report: &Reporter,
    intent: &Shared,
    name: &str,
    service: &Service,
    started: &[(Slot, String, Option<Ipv4Addr>)],
) -> Result<(), Setback> {
    let engine = &report.engine;
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
    if let Some(failure) = failed {
        return Err(Setback::Unhealthy(failure));
    }
    if !started.is_empty() {
        // In the records now, not after the last service: a service that requires this
        // one finds it while it starts.
        report.report(intent).await;
    }
    Ok(())
}

/// Container `id` of service `name` passing its first health check; the failure carries
/// its state and last log lines.
async fn check_one(
    engine: &Engine,
    name: &str,
    service: &Service,
    id: &str,
    address: Option<Ipv4Addr>,
) -> Result<(), Box<Failure>> {
    // A container that dies fails its check at once, not when the check's time is up.
    let checked = tokio::select! {
        checked = health::check(service, address) => checked,
        () = containers::until_stopped(engine, id) => {
            Err(health::CheckError::Exited)
        }
    };
    let Err(why) = checked else {
        return Ok(());
    };
    let mut loopback_only = None;
    if let Some(port) = service.ports.first().map(|p| p.container)
        && let Some(at) = containers::listening::loopback_only(engine, id, port).await
    {
        loopback_only = Some(LoopbackOnly { at, port });
    }
    Err(Box::new(Failure::Check {
        service: name.into(),
        why,
        loopback_only,
        state: containers::describe_state(engine, id).await,
        log: containers::log_tail(engine, id, 20).await,
    }))
}

/// The generation's progress lines, started on first use.
fn progress_of<'p>(
    progress: &'p mut Option<Progress>,
    report: &Reporter,
    assignment: &Assignment,
) -> &'p Progress {
    progress.get_or_insert_with(|| {
        Progress::start(
            report.client.clone(),
            report.server.clone(),
            assignment.stack.clone(),
            assignment.generation,
        )
    })
}

/// The container `index` of service `name` runs as, on `image`.
fn spec_of(
    settler: &Settler,
    assignment: &Assignment,
    (name, index): (&str, u32),
    service: &Service,
    image: &str,
) -> Result<ContainerSpec, Box<Failure>> {
    let mut env = vec![
        format!("FERRY_STACK={}", assignment.stack),
        format!("FERRY_SERVICE={name}"),
        format!("FERRY_GENERATION={}", assignment.generation),
    ];
    for (key, value) in &service.env_vars {
        match value {
            EnvValue::Plain(v) => env.push(format!("{key}={v}")),
            // Central resolves every reference when it records the deploy.
            EnvValue::Stack(var) => {
                return Err(Box::new(Failure::Unresolved {
                    service: name.into(),
                    key: key.clone(),
                    var: var.clone(),
                }));
            }
        }
    }
    if let Some(port) = service.ports.first() {
        env.push(format!("PORT={}", port.container));
    }
    Ok(ContainerSpec {
        stack: assignment.stack.clone(),
        service: name.into(),
        generation: assignment.generation,
        index,
        image: image.into(),
        env,
        network: settler.options.network.clone(),
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
        cgroup_parent: settler.cgroup_parent.clone(),
    })
}

/// Runs service `spec`'s `deploy_command` to its end in a one-off container of its image
/// (once per deploy, on one server), showing its output; a failure says how it ended and
/// its last lines.
async fn deploy_command_run(
    engine: &Engine,
    spec: &ContainerSpec,
    command: &str,
    progress: &Progress,
) -> Result<(), Box<Failure>> {
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
    .map_err(|source| {
        Box::new(Failure::DeployCommand {
            service: name.clone(),
            source,
        })
    })?;
    if code != 0 {
        return Err(Box::new(Failure::DeployCommandExit {
            service: name.clone(),
            command: command.into(),
            code,
            tail: tail.joined(),
        }));
    }
    Ok(())
}
