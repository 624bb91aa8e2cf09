//! The agent's heartbeat: every few seconds it tells central its version, its WireGuard
//! link (the backend, and per peer the last handshake and the bytes each way) and how
//! many of ferry's containers run, so `ferry servers list` shows each server as it is and
//! says when one has gone silent.

use std::{
    path::PathBuf,
    sync::{Arc, OnceLock},
    time::{Duration, UNIX_EPOCH},
};

use ferry_api::heartbeat::{Heartbeat, PeerStatus, WireguardStatus};
use tracing::{debug, warn};

use crate::{
    containers::{self, Engine},
    membership::state::Loaded,
    mesh::wireguard::{self, Backend},
};

/// The agent's version, as heartbeats report it.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// How often the agent sends one, by default.
pub const INTERVAL: Duration = Duration::from_secs(10);

/// What the heartbeat looks at.
#[derive(Clone, Debug)]
pub struct HeartbeatOptions {
    /// Seconds between heartbeats.
    pub interval: Duration,
    /// The WireGuard interface of the container network.
    pub wg_interface: String,
    /// The backend the mesh chose, once it has.
    pub backend: Arc<OnceLock<Backend>>,
    /// The Docker Engine, when this agent runs workloads.
    pub docker_socket: Option<PathBuf>,
    /// The path the published L4 ports take, as the ingress decided it.
    pub l4_path: Option<crate::ingress::L4Path>,
    /// The MTU the mesh gave its link, once it has.
    pub mtu: tokio::sync::watch::Receiver<Option<u32>>,
}

/// Sends heartbeats until the task is dropped; a failed one is logged and the next one
/// tries again.
pub async fn run(loaded: Loaded, options: HeartbeatOptions) {
    let mut tick = tokio::time::interval(options.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    // Kept: the connections to central (shared with the followers) and the Docker Engine
    // are reused from beat to beat rather than opened anew every few seconds.
    let client = loaded.client();
    let mut engine = None;
    loop {
        tick.tick().await;
        let beat = heartbeat(&options, &mut engine).await;
        match client.heartbeat(&loaded.membership.name, &beat).await {
            Ok(()) => failing = false,
            // Once per outage, not every beat.
            Err(e) if !failing => {
                warn!("heartbeat to central: {e}");
                failing = true;
            }
            Err(e) => debug!("heartbeat to central: {e}"),
        }
    }
}

/// This server as it is now; `engine` is connected on first use, and again after a
/// failed call.
async fn heartbeat(options: &HeartbeatOptions, engine: &mut Option<Engine>) -> Heartbeat {
    let wireguard = match options.backend.get().copied() {
        Some(backend) => {
            let name = options.wg_interface.clone();
            let peers =
                tokio::task::spawn_blocking(move || wireguard::peer_stats(&name, backend)).await;
            match peers {
                Ok(Ok(peers)) => Some(WireguardStatus {
                    backend: match backend {
                        Backend::Kernel => "kernel",
                        Backend::Userspace => "userspace",
                    }
                    .into(),
                    mtu: *options.mtu.borrow(),
                    peers: peers
                        .into_iter()
                        .map(|p| PeerStatus {
                            public_key: p.public_key.to_base64(),
                            last_handshake_unix: p
                                .last_handshake
                                .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                                .map(|d| d.as_secs()),
                            rx_bytes: p.rx_bytes,
                            tx_bytes: p.tx_bytes,
                        })
                        .collect(),
                }),
                Ok(Err(e)) => {
                    debug!("heartbeat: reading {}: {e}", options.wg_interface);
                    None
                }
                Err(_) => None,
            }
        }
        None => None,
    };
    if engine.is_none()
        && let Some(socket) = &options.docker_socket
    {
        *engine = Engine::connect(socket).await.ok();
    }
    let containers_running = match engine.as_ref() {
        Some(connected) => match containers::list(connected).await {
            Ok(all) => Some(all.iter().filter(|c| c.running).count() as u32),
            Err(_) => {
                *engine = None;
                None
            }
        },
        None => None,
    };
    Heartbeat {
        version: VERSION.into(),
        interval_secs: u32::try_from(options.interval.as_secs().max(1)).unwrap_or(u32::MAX),
        wireguard,
        containers_running,
        l4_path: options.l4_path.as_ref().and_then(|p| p.get()),
    }
}
