//! WireGuard verbs: keys, listen port and peers of one interface, and its peer statistics.

use std::{io, net::Ipv4Addr, net::SocketAddr, time::SystemTime};

pub use wireguard_control::Key;
use wireguard_control::{
    Backend as WgBackend, Device, DeviceUpdate, InterfaceName, PeerConfigBuilder,
};

/// Which WireGuard implementation carries the traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// The kernel module, configured over generic netlink.
    Kernel,
    /// wireguard-go, configured over its UAPI socket in `/var/run/wireguard`.
    Userspace,
}

impl From<Backend> for WgBackend {
    fn from(backend: Backend) -> Self {
        match backend {
            Backend::Kernel => WgBackend::Kernel,
            Backend::Userspace => WgBackend::Userspace,
        }
    }
}

/// Seconds between keepalives to each peer. 25 s is what WireGuard's documentation gives
/// for keeping a NAT mapping open; setting it on a new peer also makes both
/// implementations send a keepalive at once, so a peer that joined or changed its key has a
/// session before the first packet of a flow needs one (a rotation's gap went from a TCP
/// retransmission, ~1 s, to the time the change takes to arrive).
pub const PERSISTENT_KEEPALIVE_SECS: u16 = 25;

/// Another server as this server's WireGuard sees it.
#[derive(Clone, Debug)]
pub struct Peer {
    /// The peer's public key.
    pub public_key: Key,
    /// Where the peer's WireGuard listens.
    pub endpoint: SocketAddr,
    /// The peer's container subnet: the only addresses accepted from it and routed to it.
    pub subnet: (Ipv4Addr, u8),
}

/// Traffic counters of one peer.
#[derive(Clone, Debug)]
pub struct PeerStats {
    /// The peer's public key.
    pub public_key: Key,
    /// Bytes received from the peer, after decryption.
    pub rx_bytes: u64,
    /// Bytes sent to the peer, before encryption.
    pub tx_bytes: u64,
    /// When the last handshake completed, if one has.
    pub last_handshake: Option<SystemTime>,
}

/// A failed WireGuard configuration call.
#[derive(Debug, thiserror::Error)]
pub enum WireguardError {
    #[error("{name:?} is not a valid interface name: {source}")]
    Name {
        name: String,
        #[source]
        source: io::Error,
    },
    #[error("{action} wireguard interface {name} ({backend:?}): {source}")]
    Call {
        action: &'static str,
        name: String,
        backend: Backend,
        #[source]
        source: io::Error,
    },
}

/// Sets the interface's private key, listen port and exactly `peers`: peers it has that
/// are not wanted are removed, the others are updated in place, so a peer that stays
/// keeps its session (replacing the whole set would drop every session and cost each
/// flow a new handshake whenever any server joins or leaves). Neither implementation
/// touches its sessions when told the private key or port it already has.
pub fn configure(
    name: &str,
    private_key: &Key,
    listen_port: u16,
    peers: &[Peer],
    backend: Backend,
) -> Result<(), WireguardError> {
    let iface = interface_name(name)?;
    // A device that cannot be read yet (wireguard-go before its first start) has none.
    let present: Vec<Key> = Device::get(&iface, backend.into())
        .map(|device| {
            device
                .peers
                .into_iter()
                .map(|p| p.config.public_key)
                .collect()
        })
        .unwrap_or_default();
    let update = DeviceUpdate::new()
        .set_private_key(private_key.clone())
        .set_listen_port(listen_port);
    let update = present
        .iter()
        .filter(|key| !peers.iter().any(|p| &p.public_key == *key))
        .fold(update, |update, key| update.remove_peer_by_key(key));
    let update = peers.iter().fold(update, |update, peer| {
        update.add_peer(
            PeerConfigBuilder::new(&peer.public_key)
                .set_endpoint(peer.endpoint)
                .set_persistent_keepalive_interval(PERSISTENT_KEEPALIVE_SECS)
                .replace_allowed_ips()
                .add_allowed_ip(peer.subnet.0.into(), peer.subnet.1),
        )
    });
    update
        .apply(&iface, backend.into())
        .map_err(|source| WireguardError::Call {
            action: "configure",
            name: name.into(),
            backend,
            source,
        })
}

/// The statistics of every peer of the interface.
pub fn peer_stats(name: &str, backend: Backend) -> Result<Vec<PeerStats>, WireguardError> {
    let iface = interface_name(name)?;
    let device = Device::get(&iface, backend.into()).map_err(|source| WireguardError::Call {
        action: "read",
        name: name.into(),
        backend,
        source,
    })?;
    Ok(device
        .peers
        .into_iter()
        .map(|peer| PeerStats {
            public_key: peer.config.public_key,
            rx_bytes: peer.stats.rx_bytes,
            tx_bytes: peer.stats.tx_bytes,
            last_handshake: peer.stats.last_handshake_time,
        })
        .collect())
}

fn interface_name(name: &str) -> Result<InterfaceName, WireguardError> {
    name.parse().map_err(
        |e: wireguard_control::InvalidInterfaceName| WireguardError::Name {
            name: name.into(),
            source: e.into(),
        },
    )
}
