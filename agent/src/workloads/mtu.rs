//! Keeps every running container at the mesh's MTU: after the mesh chooses another (the
//! underlay's changed), and every [`RECHECK`] for containers Docker started with the
//! network's older option.

use std::time::Duration;

use tracing::{info, warn};

use super::WorkloadOptions;
use crate::{
    containers::{self, ContainerError, Engine, EngineError},
    mesh::link::{LinkError, Netlink},
};

/// A pass that could not look at the containers at all.
#[derive(Debug, thiserror::Error)]
enum PassError {
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    Link(#[from] LinkError),
    #[error(transparent)]
    List(#[from] ContainerError),
}

/// How often every container is checked when the MTU did not change.
pub const RECHECK: Duration = Duration::from_secs(10);

/// Runs until the task is dropped.
pub async fn keep(options: WorkloadOptions) {
    let mut chosen = options.mtu.clone();
    loop {
        if let Ok(Err(_)) = tokio::time::timeout(RECHECK, chosen.changed()).await {
            // The mesh is gone: nothing will change any more, but new containers may come.
            tokio::time::sleep(RECHECK).await;
        }
        let Some(mtu) = *chosen.borrow_and_update() else {
            continue;
        };
        if let Err(e) = pass(&options, mtu).await {
            warn!("setting containers' MTU: {e}");
        }
    }
}

async fn pass(options: &WorkloadOptions, mtu: u32) -> Result<(), PassError> {
    let engine = Engine::connect(&options.docker_socket).await?;
    let host = Netlink::connect()?;
    for container in containers::list(&engine).await? {
        if !container.running {
            continue;
        }
        match containers::mtu::set(&engine, &host, &container.id, mtu).await {
            Ok(0) => {}
            Ok(changed) => info!(container = %container.id, mtu, changed, "container MTU set"),
            // Stopped meanwhile, or another container's failure: the others go on.
            Err(e) => warn!(container = %container.id, "setting its MTU: {e}"),
        }
    }
    Ok(())
}
