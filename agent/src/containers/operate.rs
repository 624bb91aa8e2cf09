//! What an operator may do to one running container: run a command in it, restart it,
//! stop it.

use std::time::Duration;

use bollard::{
    exec::{CreateExecOptions, StartExecResults},
    query_parameters::{RestartContainerOptionsBuilder, StopContainerOptionsBuilder},
};
use futures_util::StreamExt as _;

use super::{ContainerError, Engine};

/// How long a command may run before it is abandoned (it keeps running in the container).
pub const EXEC_LIMIT: Duration = Duration::from_secs(60);

fn engine_error(
    action: &'static str,
    id: &str,
) -> impl FnOnce(bollard::errors::Error) -> ContainerError {
    move |source| ContainerError::Engine {
        action,
        what: format!("container {id}"),
        source,
    }
}

/// Runs `command` in container `id` without a terminal; returns its exit code (None when
/// it outlived [`EXEC_LIMIT`]) and what it printed, up to `max_output` bytes.
pub async fn exec(
    engine: &Engine,
    id: &str,
    command: &[String],
    max_output: usize,
) -> Result<(Option<i64>, String), ContainerError> {
    let docker = engine.docker();
    let created = docker
        .create_exec(
            id,
            CreateExecOptions {
                cmd: Some(command.to_vec()),
                attach_stdout: Some(true),
                attach_stderr: Some(true),
                ..Default::default()
            },
        )
        .await
        .map_err(engine_error("exec in", id))?;
    let started = docker
        .start_exec(&created.id, None)
        .await
        .map_err(engine_error("exec in", id))?;
    let mut output = Vec::new();
    if let StartExecResults::Attached {
        output: mut stream, ..
    } = started
    {
        let collect = async {
            while let Some(Ok(chunk)) = stream.next().await {
                let bytes = chunk.into_bytes();
                let room = max_output.saturating_sub(output.len());
                output.extend_from_slice(&bytes[..bytes.len().min(room)]);
            }
        };
        if tokio::time::timeout(EXEC_LIMIT, collect).await.is_err() {
            return Ok((None, String::from_utf8_lossy(&output).into_owned()));
        }
    }
    let inspect = docker
        .inspect_exec(&created.id)
        .await
        .map_err(engine_error("exec in", id))?;
    Ok((
        inspect.exit_code,
        String::from_utf8_lossy(&output).into_owned(),
    ))
}

/// Restarts container `id`, allowing `grace` between SIGTERM and SIGKILL.
pub async fn restart(engine: &Engine, id: &str, grace: Duration) -> Result<(), ContainerError> {
    let options = RestartContainerOptionsBuilder::new()
        .t(i32::try_from(grace.as_secs()).unwrap_or(i32::MAX))
        .build();
    engine
        .docker()
        .restart_container(id, Some(options))
        .await
        .map_err(engine_error("restart", id))
}

/// Stops container `id`, allowing `grace` between SIGTERM and SIGKILL; it is kept.
pub async fn stop(engine: &Engine, id: &str, grace: Duration) -> Result<(), ContainerError> {
    let options = StopContainerOptionsBuilder::new()
        .t(i32::try_from(grace.as_secs()).unwrap_or(i32::MAX))
        .build();
    engine
        .docker()
        .stop_container(id, Some(options))
        .await
        .map_err(engine_error("stop", id))
}
