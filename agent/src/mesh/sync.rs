//! Keeping this server's WireGuard interface in step with central: list the servers,
//! apply, then follow the watch, and apply again every [`RECHECK`] so what changed on the
//! server itself (the underlay's MTU, a container that got Docker's MTU, a route someone
//! removed) is corrected too. While central is unreachable the interface keeps its last
//! configuration and the agent reconnects with backoff, resuming from the revision it
//! last saw; nothing is applied before the first listing, so a restart without central
//! never empties the peer set.

use std::{collections::BTreeMap, net::Ipv4Addr, sync::Arc, time::Duration};

use ferry_api::{keys, types::Server};
use tokio::{sync::watch, task::JoinSet};
use tracing::{info, warn};

use super::{
    interface::{self, InterfaceConfig, InterfaceError},
    link::{LinkError, Netlink},
    mtu, rotation,
    wireguard::{Backend, Key, Peer},
};

/// How often the whole state is applied again when nothing changed.
pub const RECHECK: Duration = Duration::from_secs(10);
/// How soon a failed apply is tried again.
const RETRY: Duration = Duration::from_secs(1);
use crate::membership::{
    follow::{Follower, Update},
    state::Loaded,
};

/// How the mesh runs on this server.
#[derive(Clone, Debug)]
pub struct MeshOptions {
    /// The WireGuard interface's name.
    pub interface: String,
    /// The container network's base address (10.66.0.0).
    pub container_net: Ipv4Addr,
    /// Force a backend instead of detecting one.
    pub backend: Option<Backend>,
    /// Where the backend in use is told, once chosen (the heartbeat reports it).
    pub chosen: Arc<std::sync::OnceLock<Backend>>,
    /// The tunnel MTU the operator set (`--mesh-mtu`), bytes, instead of the underlay's
    /// minus WireGuard's overhead.
    pub mtu: Option<u32>,
    /// Where the MTU in use is published, for the container network the workloads create.
    pub mtu_chosen: Arc<watch::Sender<Option<u32>>>,
}

/// Why the mesh could not start at all (later failures are retried, not returned).
#[derive(Debug, thiserror::Error)]
pub enum MeshError {
    #[error(transparent)]
    Link(#[from] LinkError),
}

/// A pass that failed; the next one (after [`RETRY`]) starts over.
#[derive(Debug, thiserror::Error)]
enum PassError {
    #[error(transparent)]
    Interface(#[from] InterfaceError),
    #[error(transparent)]
    Link(#[from] LinkError),
    #[error(transparent)]
    Rotation(#[from] rotation::RotationError),
}

/// Runs until the task is dropped.
pub async fn run(loaded: Loaded, options: MeshOptions) -> Result<(), MeshError> {
    let netlink = Netlink::connect()?;
    let backend = match options.backend {
        Some(backend) => backend,
        None => interface::detect_backend(&netlink).await,
    };
    info!(?backend, interface = %options.interface, "mesh backend");
    let _ = options.chosen.set(backend);
    println!(
        "ferry-agent mesh: {backend:?} WireGuard on {}",
        options.interface
    );
    let mut follower: Follower<Server> = Follower::new(
        loaded.client(),
        keys::SERVERS,
        "mesh sync",
        Duration::from_millis(200),
    );
    // The follower is not cancel-safe (a half-read watch line would be lost), so it runs on
    // its own and hands its updates over a channel the loop can wait on beside a timer.
    let (updates, mut received) = tokio::sync::mpsc::channel(16);
    let mut follow = JoinSet::new();
    follow.spawn(async move {
        loop {
            if updates.send(follower.next().await).await.is_err() {
                return;
            }
        }
    });
    let mut servers: Option<BTreeMap<String, Server>> = None;
    // Changed by key rotation.
    let mut private_key = loaded.private_key.clone();
    let mut wait = RECHECK;
    // Whether the servers changed since the last apply that worked: then it is logged.
    let mut changed = false;
    loop {
        tokio::select! {
            update = received.recv() => match update {
                Some(update) => {
                    fold(&mut servers, update);
                    changed = true;
                }
                None => return Ok(()),
            },
            () = tokio::time::sleep(wait) => {}
        }
        let Some(servers) = &servers else { continue };
        let pass = apply(
            &netlink,
            &loaded,
            &options,
            backend,
            servers,
            &mut private_key,
        );
        wait = match pass.await {
            Ok(()) => {
                if std::mem::take(&mut changed) {
                    info!(servers = servers.len(), "mesh applied");
                }
                RECHECK
            }
            Err(e) => {
                warn!("mesh sync: {e}; trying again");
                RETRY
            }
        };
    }
}

/// Folds one update into the known servers, by name; the first must be a snapshot.
fn fold(servers: &mut Option<BTreeMap<String, Server>>, update: Update<Server>) {
    match update {
        Update::Snapshot { items, .. } => {
            *servers = Some(
                items
                    .into_iter()
                    .map(|(_, s)| (s.name.clone(), s))
                    .collect(),
            );
        }
        Update::Changes { changes, .. } => {
            let Some(servers) = servers else { return };
            for (key, server) in changes {
                let Some(name) = keys::server_of(&key).map(str::to_string) else {
                    continue;
                };
                match server {
                    Some(server) => servers.insert(name, server),
                    None => servers.remove(&name),
                };
            }
        }
    }
}

async fn apply(
    netlink: &Netlink,
    loaded: &Loaded,
    options: &MeshOptions,
    backend: Backend,
    servers: &BTreeMap<String, Server>,
    private_key: &mut Key,
) -> Result<(), PassError> {
    let me = &loaded.membership;
    let rotated = match servers.get(&me.name) {
        Some(record) => rotation::prepare(loaded, record, private_key)?,
        None => None,
    };
    let [a, b, _, _] = options.container_net.octets();
    let peers: Vec<Peer> = servers
        .values()
        .filter(|s| s.name != me.name)
        .filter_map(|s| match Key::from_base64(&s.wireguard_public_key) {
            Ok(public_key) => Some(Peer {
                public_key,
                endpoint: s.wireguard_endpoint,
                subnet: (Ipv4Addr::new(a, b, s.subnet_index, 0), 24),
            }),
            Err(_) => {
                warn!(server = %s.name, "its WireGuard public key is unreadable; skipped");
                None
            }
        })
        .collect();
    let interfaces = netlink.interfaces().await?;
    let endpoints: Vec<_> = peers.iter().map(|p| p.endpoint).collect();
    let (mtu, source) = mtu::choose(
        netlink,
        &interfaces,
        options.mtu,
        me.wireguard_endpoint,
        &endpoints,
    )
    .await?;
    options.mtu_chosen.send_if_modified(|chosen| {
        let changed = *chosen != Some(mtu);
        if changed {
            info!(mtu, ?source, "mesh MTU");
        }
        *chosen = Some(mtu);
        changed
    });
    let config = InterfaceConfig {
        name: options.interface.clone(),
        private_key: private_key.clone(),
        listen_port: me.wireguard_endpoint.port(),
        address: me.gateway(options.container_net),
        peers,
        mtu,
    };
    interface::apply(netlink, &config, backend).await?;
    if let Some(update) = rotated {
        rotation::publish(loaded, &update).await?;
    }
    Ok(())
}
