//! Keeping this server's WireGuard interface in step with central: list the servers,
//! apply, then follow the watch. While central is unreachable the interface keeps its
//! last configuration and the agent reconnects with backoff, resuming from the revision it
//! last saw.

use std::{collections::BTreeMap, net::Ipv4Addr, time::Duration};

use ferry_api::{keys, types::Server};
use tracing::{info, warn};

use super::{
    interface::{self, InterfaceConfig, InterfaceError},
    link::{LinkError, Netlink},
    wireguard::{Backend, Key, Peer},
};
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
    pub chosen: std::sync::Arc<std::sync::OnceLock<Backend>>,
}

/// Why the mesh could not start at all (later failures are retried, not returned).
#[derive(Debug, thiserror::Error)]
pub enum MeshError {
    #[error(transparent)]
    Link(#[from] LinkError),
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
    let mut servers: BTreeMap<String, Server> = BTreeMap::new();
    loop {
        match follower.next().await {
            Update::Snapshot { items, .. } => {
                servers = items
                    .into_iter()
                    .map(|(_, s)| (s.name.clone(), s))
                    .collect();
            }
            Update::Changes { changes, .. } => {
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
        if let Err(e) = apply(&netlink, &loaded, &options, backend, &servers).await {
            // Listed again, and applied whole, after a wait.
            warn!("mesh sync: {e}; starting over");
            follower.start_over();
        }
    }
}

async fn apply(
    netlink: &Netlink,
    loaded: &Loaded,
    options: &MeshOptions,
    backend: Backend,
    servers: &BTreeMap<String, Server>,
) -> Result<(), InterfaceError> {
    let me = &loaded.membership;
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
    let config = InterfaceConfig {
        name: options.interface.clone(),
        private_key: loaded.private_key.clone(),
        listen_port: me.wireguard_endpoint.port(),
        address: me.gateway(options.container_net),
        peers,
    };
    interface::apply(netlink, &config, backend).await?;
    info!(peers = config.peers.len(), "mesh applied");
    Ok(())
}
