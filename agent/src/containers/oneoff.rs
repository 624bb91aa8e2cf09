//! One-off containers: a command run to its end in a container of a service's image, with
//! the service's environment and network (a `deploy_command`, such as a database
//! migration). They carry no ferry labels, so nothing takes them for a service's
//! container, and they are removed once they end.

use std::collections::HashMap;

use bollard::query_parameters::{
    LogsOptionsBuilder, RemoveContainerOptionsBuilder, WaitContainerOptions,
};
use futures_util::StreamExt as _;

use super::{ContainerError, ContainerSpec, Engine, running};

/// Runs `spec` (whose `command` is the one-off's) to its end, handing each line it prints
/// to `on_line`; returns its exit code. The container is removed whatever happened.
pub async fn run(
    engine: &Engine,
    spec: &ContainerSpec,
    mut on_line: impl FnMut(&str),
) -> Result<i64, ContainerError> {
    let name = format!("{}-{}-{}-deploy", spec.stack, spec.service, spec.generation);
    let id = running::create_and_start(engine, spec, HashMap::new(), &name).await?;
    let fail = |action| {
        let what = format!("the one-off container {name}");
        move |source| ContainerError::Engine {
            action,
            what,
            source,
        }
    };
    let outcome = async {
        let options = LogsOptionsBuilder::new()
            .stdout(true)
            .stderr(true)
            .follow(true)
            .build();
        let mut logs = engine.docker().logs(&id, Some(options));
        let mut partial = String::new();
        while let Some(chunk) = logs.next().await {
            let chunk = chunk.map_err(fail("follow the logs of"))?;
            partial.push_str(&String::from_utf8_lossy(&chunk.into_bytes()));
            while let Some(end) = partial.find('\n') {
                on_line(partial[..end].trim_end());
                partial.drain(..=end);
            }
        }
        if !partial.trim().is_empty() {
            on_line(partial.trim_end());
        }
        // The log ends with the container; its wait gives the exit code once it is final.
        let mut wait = engine
            .docker()
            .wait_container(&id, None::<WaitContainerOptions>);
        match wait.next().await {
            Some(Ok(done)) => Ok(done.status_code),
            // bollard reports a non-zero exit as an error carrying the code.
            Some(Err(bollard::errors::Error::DockerContainerWaitError { code, .. })) => Ok(code),
            Some(Err(source)) => Err(fail("wait for")(source)),
            None => Ok(-1),
        }
    }
    .await;
    let remove = RemoveContainerOptionsBuilder::new().force(true).build();
    if let Err(e) = engine.docker().remove_container(&id, Some(remove)).await {
        tracing::warn!(container = %id, "removing a one-off container: {e}");
    }
    outcome
}
