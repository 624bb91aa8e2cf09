//! The loop: list this server's assignments, follow the watch, settle each new one.

use std::{collections::BTreeSet, net::Ipv4Addr, path::PathBuf, time::Duration};

use ferry_api::{
    client::Client,
    servicefile::{EnvValue, Service},
    types::{Assignment, StatusReport},
};
use futures_util::StreamExt as _;
use tracing::{info, warn};

use super::{context::build_context, health};
use crate::{
    containers::{self, ContainerSpec, Engine, build_image, ensure_network, node_dockerfile},
    membership::state::Loaded,
};

/// How this server runs workloads.
#[derive(Clone, Debug)]
pub struct WorkloadOptions {
    /// The Docker Engine's socket.
    pub docker_socket: PathBuf,
    /// The image a service without a Dockerfile is built on.
    pub base_image: String,
    /// The Docker network joined by every container (with this server's subnet).
    pub network: String,
    /// The container network's base address (10.66.0.0).
    pub container_net: Ipv4Addr,
}

/// Runs until the task is dropped; failures are logged and retried with backoff.
pub async fn run(loaded: Loaded, options: WorkloadOptions) {
    let mut settled: BTreeSet<(String, u64)> = BTreeSet::new();
    let mut backoff = Duration::from_millis(500);
    loop {
        if let Err(e) = follow(&loaded, &options, &mut settled).await {
            warn!("workloads: {e}; retrying in {backoff:?}");
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(30));
    }
}

async fn follow(
    loaded: &Loaded,
    options: &WorkloadOptions,
    settled: &mut BTreeSet<(String, u64)>,
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
    let client = loaded.client().map_err(|e| e.to_string())?;
    let prefix = format!("desired/{}/", me.name);
    let list = client.list(&prefix).await.map_err(|e| e.to_string())?;
    let mut pending: Vec<Assignment> = list
        .items
        .into_iter()
        .filter_map(|item| serde_json::from_value(item.value).ok())
        .collect();
    let mut watch = Box::pin(
        client
            .watch(&prefix, list.revision)
            .await
            .map_err(|e| e.to_string())?,
    );
    loop {
        for assignment in pending.drain(..) {
            let id = (assignment.stack.clone(), assignment.generation);
            if settled.contains(&id) {
                continue;
            }
            let report = settle(&engine, options, &assignment, &client).await;
            info!(stack = %assignment.stack, generation = assignment.generation, healthy = report.healthy, "reporting");
            client
                .report_status(&me.name, &assignment.stack, assignment.generation, &report)
                .await
                .map_err(|e| e.to_string())?;
            settled.insert(id);
        }
        match watch.next().await {
            Some(Ok(line)) => pending.extend(
                line.events
                    .into_iter()
                    .filter_map(|e| e.value)
                    .filter_map(|v| serde_json::from_value(v).ok()),
            ),
            Some(Err(e)) => return Err(e.to_string()),
            None => return Err("central ended the watch".into()),
        }
    }
}

/// Builds, starts and checks every service of `assignment` here.
async fn settle(
    engine: &Engine,
    options: &WorkloadOptions,
    assignment: &Assignment,
    client: &Client,
) -> StatusReport {
    match try_settle(engine, options, assignment, client).await {
        Ok(()) => StatusReport {
            healthy: true,
            detail: String::new(),
        },
        Err(detail) => StatusReport {
            healthy: false,
            detail,
        },
    }
}

async fn try_settle(
    engine: &Engine,
    options: &WorkloadOptions,
    assignment: &Assignment,
    client: &Client,
) -> Result<(), String> {
    let running = containers::list(engine).await.map_err(|e| e.to_string())?;
    let mut source: Option<Vec<u8>> = None;
    for (name, service) in &assignment.services {
        let existing = running.iter().find(|c| {
            c.stack == assignment.stack
                && c.service == *name
                && c.generation == assignment.generation
        });
        let (id, address) = match existing {
            // Started by an earlier agent: adopt it, check it again.
            Some(c) if c.running => (c.id.clone(), c.address),
            _ => {
                if source.is_none() {
                    source = Some(
                        client
                            .source(&assignment.source_digest)
                            .await
                            .map_err(|e| e.to_string())?,
                    );
                }
                let archive = source.as_deref().unwrap_or_default();
                let id =
                    build_and_start(engine, options, assignment, name, service, archive).await?;
                let address = containers::list(engine)
                    .await
                    .map_err(|e| e.to_string())?
                    .into_iter()
                    .find(|c| c.id == id)
                    .and_then(|c| c.address);
                (id, address)
            }
        };
        if let Err(why) = health::check(service, address).await {
            let state = containers::describe_state(engine, &id).await;
            let log = containers::log_tail(engine, &id, 20).await;
            return Err(format!(
                "{name}: {why}; the container is {state}; last log lines:\n{log}"
            ));
        }
    }
    Ok(())
}

async fn build_and_start(
    engine: &Engine,
    options: &WorkloadOptions,
    assignment: &Assignment,
    name: &str,
    service: &Service,
    archive: &[u8],
) -> Result<String, String> {
    let image = match &service.image {
        Some(image) => image.clone(),
        None => {
            let command = service.command.as_deref().unwrap_or("node server.js");
            let generated = node_dockerfile(&options.base_image, command);
            let (context, dockerfile) = build_context(
                archive,
                service.build_root.as_deref(),
                service.dockerfile_path.as_deref(),
                &generated,
            )
            .map_err(|e| format!("{name}: {e}"))?;
            let tag = format!(
                "ferry/{}-{name}:{}",
                assignment.stack, assignment.generation
            );
            build_image(engine, context, &dockerfile, &tag, |line| {
                info!(service = name, "build: {line}")
            })
            .await
            .map_err(|e| format!("{name}: {e}"))?;
            tag
        }
    };
    let mut env = vec![
        format!("FERRY_STACK={}", assignment.stack),
        format!("FERRY_SERVICE={name}"),
        format!("FERRY_GENERATION={}", assignment.generation),
    ];
    for (key, value) in &service.env_vars {
        match value {
            EnvValue::Plain(v) => env.push(format!("{key}={v}")),
            EnvValue::Stack(var) => {
                return Err(format!(
                    "{name}: {key} refers to stack variable {var}, and stack variables are not supported yet"
                ));
            }
        }
    }
    if let Some(port) = service.ports.first() {
        env.push(format!("PORT={}", port.container));
    }
    containers::start(
        engine,
        &ContainerSpec {
            stack: assignment.stack.clone(),
            service: name.into(),
            generation: assignment.generation,
            image,
            env,
            network: options.network.clone(),
        },
    )
    .await
    .map_err(|e| format!("{name}: {e}"))
}
