//! Keeping this server's WireGuard interface in step with central: list the servers,
//! apply, then follow the watch. While central is unreachable the interface keeps its
//! last configuration and the agent reconnects with backoff, resuming from the revision it
//! last saw.

use std::{collections::BTreeMap, net::Ipv4Addr, time::Duration};

use ferry_api::{
    Revision,
    client::{Client, ClientError},
    types::Server,
};
use futures_util::StreamExt as _;
use tracing::{info, warn};

use super::{
    interface::{self, InterfaceConfig, InterfaceError},
    link::{LinkError, Netlink},
    wireguard::{Backend, Key, Peer},
};
use crate::membership::{reconnect::Backoff, state::Loaded};

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
    #[error(transparent)]
    Central(#[from] ClientError),
}

const SERVERS: &str = "servers/";

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
    let client = loaded.client()?;
    let mut servers: BTreeMap<String, Server> = BTreeMap::new();
    let mut seen: Option<Revision> = None;
    let mut backoff = Backoff::new(Duration::from_millis(200));
    loop {
        backoff.attempt();
        match follow(
            &client,
            &netlink,
            &loaded,
            &options,
            backend,
            &mut servers,
            &mut seen,
        )
        .await
        {
            Ok(()) => warn!("central ended the watch; reconnecting"),
            Err(e) => warn!("mesh sync: {e}; reconnecting"),
        }
        tokio::time::sleep(backoff.wait()).await;
    }
}

/// Errors of one connection to central.
#[derive(Debug, thiserror::Error)]
enum FollowError {
    #[error(transparent)]
    Central(#[from] ClientError),
    #[error(transparent)]
    Interface(#[from] InterfaceError),
}

async fn follow(
    client: &Client,
    netlink: &Netlink,
    loaded: &Loaded,
    options: &MeshOptions,
    backend: Backend,
    servers: &mut BTreeMap<String, Server>,
    seen: &mut Option<Revision>,
) -> Result<(), FollowError> {
    let after = match *seen {
        Some(revision) => revision,
        None => {
            let list = client.list(SERVERS).await?;
            servers.clear();
            for item in list.items {
                if let Ok(server) = serde_json::from_value::<Server>(item.value) {
                    servers.insert(server.name.clone(), server);
                }
            }
            apply(netlink, loaded, options, backend, servers).await?;
            *seen = Some(list.revision);
            list.revision
        }
    };
    let mut watch = Box::pin(client.watch(SERVERS, after).await?);
    while let Some(line) = watch.next().await {
        let line = match line {
            Ok(line) => line,
            // A compacted revision: forget it and list again on the next connection.
            Err(ClientError::WatchEnded { message, .. }) if message.contains("compacted") => {
                *seen = None;
                return Ok(());
            }
            Err(e) => return Err(e.into()),
        };
        for event in line.events {
            let name = event.key.trim_start_matches(SERVERS).to_string();
            match event.value.map(serde_json::from_value::<Server>) {
                Some(Ok(server)) => {
                    servers.insert(name, server);
                }
                Some(Err(e)) => warn!(key = %event.key, "unreadable server record: {e}"),
                None => {
                    servers.remove(&name);
                }
            }
        }
        apply(netlink, loaded, options, backend, servers).await?;
        *seen = Some(line.revision);
    }
    Ok(())
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
