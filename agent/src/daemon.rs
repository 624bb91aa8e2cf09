//! The long-running agent: start the data plane, report ready, keep the mesh in step with
//! central if this server has joined one, run until told to stop.
//!
//! Stopping the daemon never stops steering or the mesh: the programs and maps stay
//! pinned, the WireGuard interface stays configured, and the next daemon adopts them.

use std::{future::Future, path::Path};

use tracing::{error, info};

use crate::{
    dataplane::{Attachment, Dataplane, DataplaneConfig, LoadError},
    discovery::{self, Callers, Records},
    dns::DnsOptions,
    ingress::{Ingress, IngressOptions},
    membership::{heartbeat::HeartbeatOptions, state::Loaded},
    mesh::sync::{self, MeshOptions},
    workloads::{self, WorkloadOptions},
};

/// The line the daemon prints on stdout once its programs are attached; supervisors and
/// tests wait for it.
pub const READY_PREFIX: &str = "ferry-agent ready";

/// How long a stopping agent lets open ingress connections finish.
const INGRESS_FINISH: std::time::Duration = std::time::Duration::from_secs(30);

/// Starts the data plane (and the mesh, given a membership) and runs until `shutdown`.
pub async fn run(
    config: DataplaneConfig,
    mesh: Option<(Loaded, MeshOptions, HeartbeatOptions)>,
    workloads: Option<(Loaded, WorkloadOptions)>,
    dns: Option<DnsOptions>,
    ingress: Option<(IngressOptions, std::net::SocketAddr)>,
    state_dir: &Path,
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
    let snapshot = state_dir.join("records.json");
    let records = Records::from_snapshot(&snapshot);
    let callers = Callers::new(Some(crate::dataplane::map_dir(&config.bpffs)));
    let discovery_task = mesh.as_ref().map(|(loaded, _, _)| {
        tokio::spawn(discovery::run(
            loaded.clone(),
            crate::dataplane::map_dir(&config.bpffs),
            records.clone(),
            snapshot,
        ))
    });
    // Followed whenever this server has joined; HTTPS ports serve what arrives.
    let certificates = crate::ingress::Certificates::default();
    let certificates_task = mesh.as_ref().map(|(loaded, _, _)| {
        tokio::spawn(crate::ingress::follow_certificates(
            loaded.clone(),
            certificates.clone(),
        ))
    });
    let dns_task = dns.map(|options| {
        let (records, callers) = (records.clone(), callers.clone());
        tokio::spawn(async move {
            if let Err(e) = crate::dns::run(options, records, callers).await {
                error!("DNS server stopped: {e}");
            }
        })
    });
    let (ingress, metrics_task) = match ingress {
        Some((options, metrics_listen)) => {
            match Ingress::start(options, records.clone(), certificates.clone()) {
                Ok(ingress) => {
                    let metrics = ingress.metrics();
                    let task = tokio::spawn(async move {
                        if let Err(e) = crate::ingress::serve_metrics(metrics_listen, metrics).await
                        {
                            error!(listen = %metrics_listen, "metrics endpoint stopped: {e}");
                        }
                    });
                    (Some(ingress), Some(task))
                }
                Err(e) => {
                    error!("the ingress did not start: {e}");
                    (None, None)
                }
            }
        }
        None => (None, None),
    };
    let heartbeat_task = mesh.as_ref().map(|(loaded, _, options)| {
        tokio::spawn(crate::membership::heartbeat::run(
            loaded.clone(),
            options.clone(),
        ))
    });
    let mesh_task = mesh.map(|(loaded, options, _)| {
        info!(server = %loaded.membership.name, central = %loaded.membership.central, "joining the mesh");
        tokio::spawn(async move {
            if let Err(e) = sync::run(loaded, options).await {
                error!("the mesh could not start: {e}");
            }
        })
    });
    let action_task = workloads.as_ref().map(|(loaded, options)| {
        tokio::spawn(workloads::actions::run(
            loaded.clone(),
            options.docker_socket.clone(),
        ))
    });
    let workload_task = workloads.map(|(loaded, options)| {
        info!(docker = %options.docker_socket.display(), "running this server's workloads");
        tokio::spawn(workloads::run(loaded, options, callers))
    });
    shutdown.await;
    for task in [
        heartbeat_task,
        mesh_task,
        workload_task,
        action_task,
        discovery_task,
        dns_task,
        metrics_task,
        certificates_task,
    ]
    .into_iter()
    .flatten()
    {
        task.abort();
    }
    if let Some(ingress) = ingress {
        // Records stay as they were: requests in flight finish where they were going.
        ingress.finish(INGRESS_FINISH).await;
    }
    info!("shutting down; pinned programs and the mesh keep working");
    Ok(())
}
