//! Keeps the container network at the mesh's MTU, its bridge and every running container:
//! after the mesh chooses another (the underlay's changed), and every [`RECHECK`] for
//! containers Docker started with the network's older option.

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
    // The bridge is what this server itself sends into the network through. Docker sets
    // both ends of a pair alike: when every port of the bridge has the MTU, so has every
    // container, and no namespace needs entering.
    if let Some(bridge) = bridge_name(&engine, &options.network).await {
        let interfaces = host.interfaces().await?;
        if let Some(bridge) = interfaces.iter().find(|i| i.name == bridge) {
            if bridge.mtu != mtu {
                host.set_mtu(bridge.index, mtu).await?;
                info!(bridge = %bridge.name, mtu, "container bridge MTU set");
            }
            let mut ports = interfaces.iter().filter(|i| i.master == Some(bridge.index));
            if ports.all(|p| p.mtu == mtu) {
                return Ok(());
            }
        }
    }
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

/// The Linux bridge behind Docker network `network`: its `bridge.name` option, else
/// Docker's `br-` and the first 12 characters of the network's id.
async fn bridge_name(engine: &Engine, network: &str) -> Option<String> {
    let inspect = engine.docker().inspect_network(network, None).await.ok()?;
    if let Some(name) = inspect
        .options
        .as_ref()
        .and_then(|o| o.get("com.docker.network.bridge.name"))
    {
        return Some(name.clone());
    }
    let id = inspect.id?;
    Some(format!("br-{}", id.get(..12)?))
}
