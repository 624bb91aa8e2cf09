//! Starting ferry's containers and finding them again by their labels.

use std::{collections::HashMap, net::Ipv4Addr};

use bollard::{
    models::{
        ContainerCreateBody, ContainerSummaryStateEnum, EndpointSettings, HostConfig,
        HostConfigLogConfig, NetworkingConfig,
    },
    query_parameters::{
        CreateContainerOptionsBuilder, ListContainersOptionsBuilder, LogsOptionsBuilder,
    },
};

use super::Engine;

/// Label naming the stack.
pub const LABEL_STACK: &str = "ferry.stack";
/// Label naming the service.
pub const LABEL_SERVICE: &str = "ferry.service";
/// Label holding the generation.
pub const LABEL_GENERATION: &str = "ferry.generation";
/// Label numbering a service's containers of one generation on one server: `0..count`.
pub const LABEL_INDEX: &str = "ferry.index";

/// Largest json-file log of one container before Docker rotates it.
pub const LOG_MAX_SIZE: &str = "10m";
/// How many rotated log files Docker keeps per container (so at most 30 MB of logs).
pub const LOG_MAX_FILES: &str = "3";
/// How many names with a numeric suffix are tried when a readable name is taken.
const NAME_TRIES: u32 = 20;

/// What to run.
#[derive(Clone, Debug)]
pub struct ContainerSpec {
    /// Stack.
    pub stack: String,
    /// Service.
    pub service: String,
    /// Generation.
    pub generation: u64,
    /// Which of the service's containers on this server it is, from 0.
    pub index: u32,
    /// Image reference.
    pub image: String,
    /// Environment, `NAME=value`.
    pub env: Vec<String>,
    /// The per-server network to join.
    pub network: String,
    /// Run this instead of the image's command (through `sh -c`).
    pub command: Option<String>,
    /// Mounts, `SOURCE:TARGET[:ro]` (a host path or a named volume).
    pub binds: Vec<String>,
    /// Memory limit in bytes.
    pub memory: Option<u64>,
    /// CPU limit in thousandths of a CPU.
    pub cpu_millis: Option<u32>,
    /// The cgroup the engine puts the container under (see [`super::cgroup::parent_for`]).
    pub cgroup_parent: Option<String>,
}

/// A ferry container the engine knows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FerryContainer {
    /// Docker's id.
    pub id: String,
    /// Stack label.
    pub stack: String,
    /// Service label.
    pub service: String,
    /// Generation label.
    pub generation: u64,
    /// Index label (0 for containers started before there were several).
    pub index: u32,
    /// Its address on the ferry network, if it has one.
    pub address: Option<Ipv4Addr>,
    /// Whether it runs.
    pub running: bool,
}

/// Errors starting or listing containers.
#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    #[error("{action} {what}: {source}")]
    Engine {
        action: &'static str,
        what: String,
        #[source]
        source: bollard::errors::Error,
    },
}

/// Creates and starts a container for `spec`; returns its id.
pub async fn start(engine: &Engine, spec: &ContainerSpec) -> Result<String, ContainerError> {
    let labels = HashMap::from([
        (LABEL_STACK.to_string(), spec.stack.clone()),
        (LABEL_SERVICE.to_string(), spec.service.clone()),
        (LABEL_GENERATION.to_string(), spec.generation.to_string()),
        (LABEL_INDEX.to_string(), spec.index.to_string()),
    ]);
    let name = format!(
        "{}-{}-{}-{}",
        spec.stack,
        spec.service,
        spec.generation,
        spec.index + 1
    );
    create_and_start(engine, spec, labels, &name).await
}

/// What a container of `spec` is to the engine (`labels`: how ferry finds it again).
pub(super) fn body(spec: &ContainerSpec, labels: HashMap<String, String>) -> ContainerCreateBody {
    ContainerCreateBody {
        image: Some(spec.image.clone()),
        env: Some(spec.env.clone()),
        labels: Some(labels),
        cmd: spec
            .command
            .as_ref()
            .map(|c| vec!["sh".into(), "-c".into(), c.clone()]),
        host_config: Some(HostConfig {
            network_mode: Some(spec.network.clone()),
            binds: (!spec.binds.is_empty()).then(|| spec.binds.clone()),
            memory: spec.memory.and_then(|m| i64::try_from(m).ok()),
            nano_cpus: spec.cpu_millis.map(|m| i64::from(m) * 1_000_000),
            cgroup_parent: spec.cgroup_parent.clone(),
            // PID 1 is Docker's init (tini): signals reach node, zombies are reaped.
            init: Some(true),
            log_config: Some(HostConfigLogConfig {
                typ: Some("json-file".into()),
                config: Some(HashMap::from([
                    ("max-size".to_string(), LOG_MAX_SIZE.to_string()),
                    ("max-file".to_string(), LOG_MAX_FILES.to_string()),
                ])),
            }),
            ..Default::default()
        }),
        networking_config: Some(NetworkingConfig {
            endpoints_config: Some(HashMap::from([(
                spec.network.clone(),
                EndpointSettings::default(),
            )])),
        }),
        ..Default::default()
    }
}

/// Creates a container of `spec` named `name` (a readable name, so `docker ps` on a
/// server means something; when a container not yet removed holds it, `<name>.<n>` with
/// the first free `n` from 2), and starts it; returns its id.
pub(super) async fn create_and_start(
    engine: &Engine,
    spec: &ContainerSpec,
    labels: HashMap<String, String>,
    name: &str,
) -> Result<String, ContainerError> {
    let what = format!(
        "{}/{} generation {}",
        spec.stack, spec.service, spec.generation
    );
    let fail = |action| {
        let what = what.clone();
        move |source| ContainerError::Engine {
            action,
            what,
            source,
        }
    };
    let body = body(spec, labels);
    let docker = engine.docker();
    let mut attempt = 1;
    let created = loop {
        let options = CreateContainerOptionsBuilder::new()
            .name(&match attempt {
                1 => name.to_string(),
                n => format!("{name}.{n}"),
            })
            .build();
        match docker.create_container(Some(options), body.clone()).await {
            Ok(created) => break created,
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 409, ..
            }) if attempt < NAME_TRIES => attempt += 1,
            Err(e) => return Err(fail("create")(e)),
        }
    };
    if let Err(e) = docker.start_container(&created.id, None).await {
        // Created but never started (no address left, a bad mount): not left behind
        // to be counted as a stopped container of the service.
        let force = bollard::query_parameters::RemoveContainerOptionsBuilder::new()
            .force(true)
            .build();
        let _ = docker.remove_container(&created.id, Some(force)).await;
        return Err(fail("start")(e));
    }
    Ok(created.id)
}

/// Every container carrying ferry's labels, running or not.
pub async fn list(engine: &Engine) -> Result<Vec<FerryContainer>, ContainerError> {
    let filters = HashMap::from([("label", vec![LABEL_STACK])]);
    let options = ListContainersOptionsBuilder::new()
        .all(true)
        .filters(&filters)
        .build();
    let summaries = engine
        .docker()
        .list_containers(Some(options))
        .await
        .map_err(|source| ContainerError::Engine {
            action: "list",
            what: "ferry's containers".into(),
            source,
        })?;
    Ok(summaries
        .into_iter()
        .filter_map(|c| {
            let labels = c.labels.unwrap_or_default();
            let address = c
                .network_settings
                .and_then(|n| n.networks)
                .and_then(|networks| networks.into_values().find_map(|e| e.ip_address))
                .and_then(|ip| ip.parse().ok());
            Some(FerryContainer {
                id: c.id?,
                stack: labels.get(LABEL_STACK)?.clone(),
                service: labels.get(LABEL_SERVICE)?.clone(),
                generation: labels.get(LABEL_GENERATION)?.parse().ok()?,
                index: labels
                    .get(LABEL_INDEX)
                    .and_then(|i| i.parse().ok())
                    .unwrap_or(0),
                address,
                running: matches!(c.state, Some(ContainerSummaryStateEnum::RUNNING)),
            })
        })
        .collect())
}

/// The last `lines` lines the container printed, for reports.
pub async fn log_tail(engine: &Engine, id: &str, lines: usize) -> String {
    logs(engine, id, lines, None, false).await
}

/// The last `lines` lines of container `id`'s log written at or after `since` (Unix
/// seconds), each after its RFC 3339 timestamp when `timestamps`.
pub async fn logs(
    engine: &Engine,
    id: &str,
    lines: usize,
    since: Option<i64>,
    timestamps: bool,
) -> String {
    use futures_util::StreamExt as _;
    let mut options = LogsOptionsBuilder::new()
        .stdout(true)
        .stderr(true)
        .timestamps(timestamps)
        .tail(&lines.to_string());
    if let Some(since) = since.and_then(|s| i32::try_from(s).ok()) {
        options = options.since(since);
    }
    let mut stream = engine.docker().logs(id, Some(options.build()));
    let mut out = String::new();
    while let Some(Ok(chunk)) = stream.next().await {
        out.push_str(&String::from_utf8_lossy(&chunk.into_bytes()));
    }
    out.trim_end().to_string()
}

/// "running", or "exited with code N", for reports.
pub async fn describe_state(engine: &Engine, id: &str) -> String {
    match engine.docker().inspect_container(id, None).await {
        Ok(inspect) => match inspect.state {
            Some(state) if state.running == Some(true) => "running".into(),
            Some(state) => format!("exited with code {}", state.exit_code.unwrap_or(-1)),
            None => "in an unknown state".into(),
        },
        Err(e) => format!("not inspectable ({e})"),
    }
}

/// Returns once container `id` no longer runs (or cannot be inspected any more).
pub async fn until_stopped(engine: &Engine, id: &str) {
    loop {
        match engine.docker().inspect_container(id, None).await {
            Ok(inspect) if inspect.state.as_ref().and_then(|s| s.running) == Some(true) => {}
            _ => return,
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
}
