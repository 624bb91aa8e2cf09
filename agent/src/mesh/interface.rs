//! One server's WireGuard interface, brought to a desired state with the verbs below it,
//! on the kernel module when the kernel has one and on wireguard-go when it does not.

use std::net::Ipv4Addr;

use tracing::{info, warn};

use super::{
    link::{LinkError, Netlink},
    socket_buffers,
    wireguard::{self, Backend, Key, Peer, WireguardError},
};

/// The desired state of this server's WireGuard interface.
#[derive(Clone, Debug)]
pub struct InterfaceConfig {
    /// Interface name (at most 15 bytes).
    pub name: String,
    /// This server's private key; generated here and never sent anywhere.
    pub private_key: Key,
    /// UDP port WireGuard listens on.
    pub listen_port: u16,
    /// This server's address on the container network (its bridge gateway).
    pub address: Ipv4Addr,
    /// Every other server.
    pub peers: Vec<Peer>,
    /// The link's MTU, bytes (see [`super::mtu`]).
    pub mtu: u32,
}

/// A failed step of bringing the interface up.
#[derive(Debug, thiserror::Error)]
pub enum InterfaceError {
    #[error(transparent)]
    Link(#[from] LinkError),
    #[error(transparent)]
    Wireguard(#[from] WireguardError),
}

/// Which implementation this kernel allows: `Kernel` if a WireGuard link can be created
/// (the kernel loads the module on demand), else `Userspace`.
pub async fn detect_backend(netlink: &Netlink) -> Backend {
    const PROBE: &str = "ferry-wgprobe";
    match netlink.add_wireguard(PROBE).await {
        Ok(_) => {
            if let Err(e) = netlink.delete(PROBE).await {
                warn!("removing the WireGuard probe link {PROBE}: {e}");
            }
            Backend::Kernel
        }
        Err(e) => {
            info!("kernel WireGuard unavailable ({e}); falling back to wireguard-go");
            Backend::Userspace
        }
    }
}

/// Brings the interface to `config`: link, keys and peers, MTU, address, up, a route per
/// peer subnet and none to a subnet no peer has any more. Idempotent, so the agent can
/// re-apply its whole state after a restart or on a timer.
pub async fn apply(
    netlink: &Netlink,
    config: &InterfaceConfig,
    backend: Backend,
) -> Result<(), InterfaceError> {
    if backend == Backend::Kernel {
        netlink.add_wireguard(&config.name).await?;
    }
    // For wireguard-go this also starts the daemon, which creates the TUN link.
    wireguard::configure(
        &config.name,
        &config.private_key,
        config.listen_port,
        &config.peers,
        backend,
    )?;
    if backend == Backend::Userspace {
        match socket_buffers::raise(&config.name, config.listen_port) {
            Ok(0) => {}
            Ok(raised) => info!(
                sockets = raised,
                bytes = socket_buffers::SOCKET_BUFFER,
                "wireguard-go's UDP socket buffers raised"
            ),
            // The tunnel works without; it drops more under load.
            Err(e) => warn!("wireguard-go's UDP socket buffers left as they are: {e}"),
        }
    }
    let index = netlink.index(&config.name).await?;
    netlink.set_mtu(index, config.mtu).await?;
    netlink
        .add_address(&config.name, config.address, 32)
        .await?;
    netlink.set_up(&config.name).await?;
    for peer in &config.peers {
        netlink
            .add_route(&config.name, peer.subnet.0, peer.subnet.1)
            .await?;
    }
    for (dest, prefix) in netlink.routes_through(&config.name).await? {
        if !config.peers.iter().any(|p| p.subnet == (dest, prefix)) {
            netlink.delete_route(&config.name, dest, prefix).await?;
            info!(route = %format!("{dest}/{prefix}"), "route of a server that left removed");
        }
    }
    Ok(())
}

/// The wireguard-go process serving `interface`, known by its arguments
/// (`wireguard-go <interface>`, as the userspace backend starts it), if one runs.
pub fn wireguard_go_serving(interface: &str) -> Option<u32> {
    crate::down::processes(|args| {
        args.first().is_some_and(|a| a.ends_with("wireguard-go"))
            && args.iter().skip(1).any(|a| a == interface)
    })
    .first()
    .copied()
}

/// Removes the interface. wireguard-go notices its TUN link is gone and exits.
pub async fn remove(netlink: &Netlink, name: &str) -> Result<(), InterfaceError> {
    match netlink.delete(name).await {
        Ok(()) | Err(LinkError::NoSuchLink { .. }) => Ok(()),
        Err(e) => Err(e.into()),
    }
}
