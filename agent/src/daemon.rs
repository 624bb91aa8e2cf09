//! The long-running agent: start the data plane, report ready, run until told to stop.
//!
//! Stopping the daemon never stops steering: the programs and maps stay pinned, and the next
//! daemon adopts them.

use std::future::Future;

use tracing::info;

use crate::dataplane::{Attachment, Dataplane, DataplaneConfig, LoadError};

/// The line the daemon prints on stdout once its programs are attached; supervisors and
/// tests wait for it.
pub const READY_PREFIX: &str = "ferry-agent ready";

/// Starts the data plane and runs until `shutdown` completes.
pub async fn run(
    config: DataplaneConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), LoadError> {
    let dataplane = Dataplane::start(&config)?;
    let how = match dataplane.attachment() {
        Attachment::Fresh => "attached",
        Attachment::Adopted => "adopted",
    };
    println!(
        "{READY_PREFIX}: connect4 {how} at {}",
        dataplane.link_pin().display()
    );
    shutdown.await;
    info!("shutting down; pinned programs keep steering");
    Ok(())
}
