//! Stopping a container the way its service asked: the `pre_stop_sequence` (waits and
//! signals, so an app can finish its work), then SIGTERM with `stop_grace` before SIGKILL,
//! then removal.

use std::time::Duration;

use bollard::query_parameters::{
    KillContainerOptionsBuilder, RemoveContainerOptionsBuilder, StopContainerOptionsBuilder,
};
use ferry_api::servicefile::StopStep;
use tracing::info;

use super::{ContainerError, Engine};

/// Docker's own default between SIGTERM and SIGKILL.
pub const DEFAULT_STOP_GRACE: Duration = Duration::from_secs(10);

/// Runs `steps`, stops the container allowing `grace` after SIGTERM, and removes it. A
/// container that is already gone counts as stopped.
pub async fn stop_and_remove(
    engine: &Engine,
    id: &str,
    steps: &[StopStep],
    grace: Duration,
) -> Result<(), ContainerError> {
    let docker = engine.docker();
    let fail = |action| {
        move |source| ContainerError::Engine {
            action,
            what: format!("container {id}"),
            source,
        }
    };
    for step in steps {
        match step {
            StopStep::Wait(wait) => tokio::time::sleep(*wait).await,
            StopStep::Signal(signal) => {
                info!(container = id, signal, "pre-stop signal");
                let options = KillContainerOptionsBuilder::new()
                    .signal(&format!("SIG{signal}"))
                    .build();
                if let Err(e) = docker.kill_container(id, Some(options)).await {
                    if gone(&e) {
                        return Ok(());
                    }
                    return Err(fail("signal")(e));
                }
            }
        }
    }
    let seconds = i32::try_from(grace.as_secs()).unwrap_or(i32::MAX);
    let stop = StopContainerOptionsBuilder::new().t(seconds).build();
    match docker.stop_container(id, Some(stop)).await {
        Ok(()) => {}
        Err(e) if gone(&e) => return Ok(()),
        Err(e) => return Err(fail("stop")(e)),
    }
    let remove = RemoveContainerOptionsBuilder::new().force(true).build();
    match docker.remove_container(id, Some(remove)).await {
        Ok(()) => Ok(()),
        Err(e) if gone(&e) => Ok(()),
        Err(e) => Err(fail("remove")(e)),
    }
}

fn gone(error: &bollard::errors::Error) -> bool {
    matches!(
        error,
        bollard::errors::Error::DockerResponseServerError {
            status_code: 404,
            ..
        }
    )
}
