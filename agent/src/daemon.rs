//! The long-running agent: start the data plane, report ready, keep the mesh in step with
//! central if this server has joined one, run until told to stop.
//!
//! Stopping the daemon never stops steering or the mesh: the programs and maps stay
//! pinned, the WireGuard interface stays configured, and the next daemon adopts them.

use std::{future::Future, path::Path};

use tokio::task::JoinSet;
use tracing::{error, info};

use crate::{
    dataplane::{Attachment, Dataplane, DataplaneConfig, LoadError},
    discovery::{self, Callers, Records},
    dns::{DnsOptions, DnsServer},
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

/// What the daemon runs besides the data plane, once this server has joined a cluster.
/// Workloads come with the DNS server and the ingress that serve them, so neither can be
/// asked for without the other, nor any of them without a membership.
pub struct Joined {
    /// The membership and its credentials.
    pub loaded: Loaded,
    /// The WireGuard mesh.
    pub mesh: MeshOptions,
    /// The heartbeat to central.
    pub heartbeat: HeartbeatOptions,
    /// This server's containers, with DNS and the ingress; None without a Docker Engine.
    pub workloads: Option<Workloads>,
}

/// A joined server's workloads and what serves them.
pub struct Workloads {
    /// How containers run.
    pub options: WorkloadOptions,
    /// The DNS server containers ask.
    pub dns: DnsOptions,
    /// The published host ports.
    pub ingress: IngressOptions,
    /// Where the ingress's Prometheus metrics are served.
    pub metrics_listen: std::net::SocketAddr,
}

/// Starts the data plane (and, given a membership, everything [`Joined`] names) and runs
/// until `shutdown`.
pub async fn run(
    config: DataplaneConfig,
    joined: Option<Joined>,
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
    // Every task ends with the daemon: dropping the set aborts them.
    let mut tasks = JoinSet::new();
    let served = joined.map(|joined| start_joined(&config, joined, state_dir, &mut tasks));
    shutdown.await;
    tasks.abort_all();
    if let Some(Served { dns, ingress }) = served {
        if let Some(ingress) = ingress {
            // Records stay as they were: requests in flight finish where they were going.
            ingress.finish(INGRESS_FINISH).await;
        }
        // Only now: containers' queries are answered while the ingress finishes.
        drop(dns);
    }
    info!("shutting down; pinned programs and the mesh keep working");
    Ok(())
}

/// The servers a joined server's workloads are served by; each stops when dropped.
#[derive(Default)]
struct Served {
    dns: Option<DnsServer>,
    /// None when it did not start (logged).
    ingress: Option<Ingress>,
}

/// Spawns what a joined server runs into `tasks`; returns the servers that serve its
/// workloads.
fn start_joined(
    config: &DataplaneConfig,
    joined: Joined,
    state_dir: &Path,
    tasks: &mut JoinSet<()>,
) -> Served {
    let Joined {
        loaded,
        mesh,
        heartbeat,
        workloads,
    } = joined;
    let map_dir = crate::dataplane::map_dir(&config.bpffs);
    let snapshot = state_dir.join("records.json");
    let records = Records::from_snapshot(&snapshot);
    let callers = Callers::new(Some(map_dir.clone()));
    tasks.spawn(discovery::keep_isolation(
        map_dir.clone(),
        records.clone(),
        callers.clone(),
    ));
    tasks.spawn(discovery::run(
        loaded.clone(),
        map_dir,
        records.clone(),
        snapshot,
    ));
    // Followed whenever this server has joined; HTTPS ports serve what arrives.
    let certificates = crate::ingress::Certificates::default();
    tasks.spawn(crate::ingress::follow_certificates(
        loaded.clone(),
        certificates.clone(),
    ));
    tasks.spawn(crate::membership::heartbeat::run(loaded.clone(), heartbeat));
    info!(server = %loaded.membership.name, central = %loaded.membership.central, "joining the mesh");
    {
        let loaded = loaded.clone();
        tasks.spawn(async move {
            if let Err(e) = sync::run(loaded, mesh).await {
                error!("the mesh could not start: {e}");
            }
        });
    }
    let Some(served) = workloads else {
        return Served::default();
    };
    let dns = DnsServer::start(served.dns, records.clone(), callers.clone());
    let ingress = match Ingress::start(served.ingress, records, certificates) {
        Ok(ingress) => {
            let (metrics, listen) = (ingress.metrics(), served.metrics_listen);
            tasks.spawn(async move {
                if let Err(e) = crate::ingress::serve_metrics(listen, metrics).await {
                    error!(%listen, "metrics endpoint stopped: {e}");
                }
            });
            Some(ingress)
        }
        Err(e) => {
            error!("the ingress did not start: {e}");
            None
        }
    };
    tasks.spawn(workloads::actions::run(
        loaded.clone(),
        served.options.docker_socket.clone(),
    ));
    info!(docker = %served.options.docker_socket.display(), "running this server's workloads");
    tasks.spawn(workloads::run(loaded, served.options, callers));
    Served {
        dns: Some(dns),
        ingress,
    }
}
